//! Group objects: the same (`CKA_ID`, class) on every member, resolved on each member lazily and cached per member
//! epoch; objects of one member only are homed there.

use super::*;

/// A group object: the same (`CKA_ID`, class) on every member, or an object of one member only.
pub(super) enum GroupObject {
    Shared {
        id: Vec<u8>,
        class: CK_OBJECT_CLASS,
        /// Per member: (epoch, handle) once resolved.
        handles: Vec<Option<(u64, CK_OBJECT_HANDLE)>>,
    },
    Home {
        member: usize,
        epoch: u64,
        handle: CK_OBJECT_HANDLE,
    },
}

#[derive(Default)]
pub(super) struct Objects {
    pub(super) list: Vec<GroupObject>,
    pub(super) shared: HashMap<(Vec<u8>, CK_OBJECT_CLASS), ObjRef>,
    pub(super) home: HashMap<(usize, u64, CK_OBJECT_HANDLE), ObjRef>,
}

impl Group {
    pub(super) fn intern_shared(
        &self,
        id: Vec<u8>,
        class: CK_OBJECT_CLASS,
        m: usize,
        h: CK_OBJECT_HANDLE,
    ) -> ObjRef {
        let epoch = self.members[m].epoch.load(SeqCst);
        let mut o = self.objects.write();
        if let Some(r) = o.shared.get(&(id.clone(), class)).copied() {
            if let Some(GroupObject::Shared { handles, .. }) = o.list.get_mut(r as usize) {
                handles[m] = Some((epoch, h));
            }
            return r;
        }
        let r = o.list.len() as ObjRef;
        let mut handles = vec![None; self.members.len()];
        handles[m] = Some((epoch, h));
        o.list.push(GroupObject::Shared {
            id: id.clone(),
            class,
            handles,
        });
        o.shared.insert((id, class), r);
        r
    }

    pub(super) fn intern_home(&self, m: usize, h: CK_OBJECT_HANDLE) -> ObjRef {
        let epoch = self.members[m].epoch.load(SeqCst);
        let mut o = self.objects.write();
        if let Some(r) = o.home.get(&(m, epoch, h)) {
            return *r;
        }
        let r = o.list.len() as ObjRef;
        o.list.push(GroupObject::Home {
            member: m,
            epoch,
            handle: h,
        });
        o.home.insert((m, epoch, h), r);
        r
    }

    /// Forgets the cached handles of the shared objects among `keys` on member `m`; whether there were any.
    pub(super) fn forget_cached(&self, keys: &[ObjRef], m: usize) -> bool {
        let mut o = self.objects.write();
        let mut any = false;
        for k in keys {
            if let Some(GroupObject::Shared { handles, .. }) = o.list.get_mut(*k as usize) {
                if let Some(h) = handles.get_mut(m) {
                    any |= h.take().is_some();
                }
            }
        }
        any
    }

    /// The member an object lives on, if it is homed.
    pub(super) fn home_of(&self, r: ObjRef) -> Result<Option<usize>> {
        match self.objects.read().list.get(r as usize) {
            Some(GroupObject::Home { member, .. }) => Ok(Some(*member)),
            Some(GroupObject::Shared { .. }) => Ok(None),
            None => Err(Error::new(CKR_OBJECT_HANDLE_INVALID)),
        }
    }

    /// The object's handle on member `m` (searching it there the first time); `None` if `m` does not hold it.
    pub(super) fn resolve(
        &self,
        r: ObjRef,
        m: usize,
        bs: &mut dyn BackendSession,
    ) -> Result<Option<CK_OBJECT_HANDLE>> {
        let epoch = self.members[m].epoch.load(SeqCst);
        let (mut id, class) = match self.objects.read().list.get(r as usize) {
            None => return Err(Error::new(CKR_OBJECT_HANDLE_INVALID)),
            Some(GroupObject::Home {
                member,
                epoch: e,
                handle,
            }) => {
                return Ok((*member == m && *e == epoch).then_some(*handle));
            }
            Some(GroupObject::Shared { id, class, handles }) => {
                match handles.get(m).copied().flatten() {
                    Some((e, h)) if e == epoch => return Ok(Some(h)),
                    _ => (id.clone(), *class),
                }
            }
        };
        let mut class_v = class;
        let mut token: CK_BBOOL = CK_TRUE;
        let t = [
            attribute(CKA_CLASS, &mut class_v),
            attribute(CKA_ID, &mut id[..]),
            attribute(CKA_TOKEN, &mut token),
        ];
        // SAFETY: the attribute values above live until the search returns.
        let found = bs.find(unsafe { Template::from_raw(&t) })?;
        let Some(h) = found.first().map(|h| *h as CK_OBJECT_HANDLE) else {
            return Ok(None);
        };
        if let Some(GroupObject::Shared { handles, .. }) =
            self.objects.write().list.get_mut(r as usize)
        {
            handles[m] = Some((epoch, h));
        }
        Ok(Some(h))
    }
}

/// The handles of `keys` on member `i`; `None` if it does not hold one of them.
pub(super) fn resolve_all(
    g: &Group,
    keys: &[ObjRef],
    i: usize,
    bs: &mut dyn BackendSession,
) -> Result<Option<Vec<CK_OBJECT_HANDLE>>> {
    let mut hs = Vec::with_capacity(keys.len());
    for k in keys {
        match g.resolve(*k, i, bs)? {
            Some(h) => hs.push(h),
            None => return Ok(None),
        }
    }
    Ok(Some(hs))
}

/// Interns what a search on member `i` found: token objects with a `CKA_ID` as group objects, the rest homed on `i`.
pub(super) fn intern_found(
    g: &Group,
    i: usize,
    bs: &mut dyn BackendSession,
    found: Vec<ObjRef>,
) -> Result<Vec<ObjRef>> {
    let logged_in = g.logged_in();
    let mut out = Vec::with_capacity(found.len());
    for o in found {
        let mut class: CK_OBJECT_CLASS = 0;
        let mut token: CK_BBOOL = CK_FALSE;
        let mut id = [0u8; 256];
        let mut t = [
            attribute(CKA_CLASS, &mut class),
            attribute(CKA_TOKEN, &mut token),
            attribute(CKA_ID, &mut id[..]),
        ];
        let rv = bs.get_attributes(o, &mut t);
        if is_member_failure(rv, logged_in) {
            return Err(Error::new(rv));
        }
        let id_len = t[2].ulValueLen;
        let shared = rv == CKR_OK
            && token == CK_TRUE
            && id_len != CK_UNAVAILABLE_INFORMATION
            && id_len > 0
            && (id_len as usize) <= id.len();
        let h = o as CK_OBJECT_HANDLE;
        out.push(if shared {
            g.intern_shared(id[..id_len as usize].to_vec(), class, i, h)
        } else {
            g.intern_home(i, h)
        });
    }
    Ok(out)
}
