//! A session on the group: member sessions opened on first use, operations routed to a healthy member (round-robin
//! at each `C_*Init`) and failed over when a member fails, single-part operations replayed on another member.

use super::*;

pub(super) struct MemberSession {
    pub(super) bs: Box<dyn BackendSession>,
    pub(super) epoch: u64,
    pub(super) reinit: u64,
}

/// A mechanism kept to replay an operation's init on another member: only when its parameter holds no pointers
/// (none, or a plain struct/bytes of the mechanisms listed in [`replayable`]).
#[derive(Clone)]
pub(super) struct SavedMech {
    pub(super) mech: CK_MECHANISM_TYPE,
    pub(super) param: Vec<u8>,
}

pub(super) fn replayable(m: &Mechanism) -> Option<SavedMech> {
    let p = m.param_bytes();
    let ok = p.is_empty()
        || matches!(
            m.mech_type(),
            CKM_RSA_PKCS_PSS
                | CKM_SHA1_RSA_PKCS_PSS
                | CKM_SHA224_RSA_PKCS_PSS
                | CKM_SHA256_RSA_PKCS_PSS
                | CKM_SHA384_RSA_PKCS_PSS
                | CKM_SHA512_RSA_PKCS_PSS
                | CKM_AES_CBC
                | CKM_AES_CBC_PAD
        );
    ok.then(|| SavedMech {
        mech: m.mech_type(),
        param: p.to_vec(),
    })
}

impl SavedMech {
    pub(super) fn get(&self) -> Result<Mechanism<'_>> {
        let raw = CK_MECHANISM {
            mechanism: self.mech,
            pParameter: if self.param.is_empty() {
                std::ptr::null_mut()
            } else {
                self.param.as_ptr() as *mut std::ffi::c_void
            },
            ulParameterLen: self.param.len() as CK_ULONG,
        };
        // SAFETY: the parameter bytes live as long as `self`.
        unsafe { Mechanism::from_raw(raw) }
    }
}

#[derive(Clone)]
pub(super) struct OpState {
    pub(super) member: usize,
    pub(super) mech: Option<SavedMech>,
    pub(super) key: Option<ObjRef>,
    /// An `*Update` went through: the operation cannot move to another member.
    pub(super) multi: bool,
}

pub struct HaSession {
    pub(super) g: Arc<Group>,
    pub(super) rw: bool,
    pub(super) sess: Vec<Option<MemberSession>>,
    pub(super) ops: ActiveOps<OpState>,
    /// The member this session's own objects (session objects, objects it creates) live on.
    pub(super) home: Option<usize>,
    pub(super) last_op: Option<usize>,
}

impl Drop for HaSession {
    fn drop(&mut self) {
        for i in 0..self.sess.len() {
            self.discard(i);
        }
    }
}

impl HaSession {
    /// Drops the session on member `i`: closed normally, or forgotten if its module was re-initialized since.
    pub(super) fn discard(&mut self, i: usize) {
        if let Some(s) = self.sess[i].take() {
            if s.reinit != self.g.members[i].reinit.load(SeqCst) {
                std::mem::forget(s.bs);
            }
        }
    }

    pub(super) fn member_session(&mut self, i: usize) -> Result<&mut dyn BackendSession> {
        let g = self.g.clone();
        let m = &g.members[i];
        let epoch = m.epoch.load(SeqCst);
        if self.sess[i].as_ref().is_some_and(|s| s.epoch != epoch) {
            self.discard(i);
        }
        if self.sess[i].is_none() {
            let bs = m.token()?.open_session(self.rw)?;
            self.sess[i] = Some(MemberSession {
                bs,
                epoch,
                reinit: m.reinit.load(SeqCst),
            });
        }
        match self.sess[i].as_mut() {
            Some(s) => Ok(s.bs.as_mut()),
            None => Err(Error::new(CKR_GENERAL_ERROR)),
        }
    }

    /// A member failed this call: count it, and drop our session there.
    pub(super) fn member_failed(&mut self, i: usize, e: &Error) {
        tracing::warn!(target: T, group = %self.g.name, member = %self.g.members[i].name, error = %e, "member failed a call");
        self.g.failed(&self.g.members[i], e);
        self.discard(i);
    }

    /// Runs `f` on the first usable member that holds every key in `keys`, from `start`, failing over on member
    /// failures. A key homed on one member pins the call to it. Returns the member used and `f`'s result.
    pub(super) fn run<R>(
        &mut self,
        keys: &[ObjRef],
        start: usize,
        mut f: impl FnMut(&mut dyn BackendSession, &[CK_OBJECT_HANDLE]) -> Result<R>,
    ) -> Result<(usize, R)> {
        let mut pinned = None;
        for k in keys {
            if let Some(h) = self.g.home_of(*k)? {
                if pinned.is_some_and(|p| p != h) {
                    return Err(Error::with(
                        CKR_KEY_HANDLE_INVALID,
                        "the keys live on different members of the HA group",
                    ));
                }
                pinned = Some(h);
            }
        }
        let logged_in = self.g.logged_in();
        let mut first_err: Option<Error> = None;
        let mut missing = false;
        let group = self.g.clone();
        for i in group.walk(start, move |i| pinned.is_none_or(|p| p == i)) {
            let g = self.g.clone();
            let bs = match self.member_session(i) {
                Ok(bs) => bs,
                Err(e) => {
                    if is_member_failure(e.rv(), logged_in) {
                        self.member_failed(i, &e);
                        first_err.get_or_insert(e);
                        continue;
                    }
                    return Err(e);
                }
            };
            let mut r = None;
            // A cached handle the member no longer knows (the key was re-created there out of band) is looked up
            // again, once.
            for attempt in 0..2 {
                let hs = match resolve_all(&g, keys, i, bs) {
                    Ok(Some(hs)) => hs,
                    Ok(None) => break,
                    Err(e) => {
                        r = Some(Err(e));
                        break;
                    }
                };
                g.members[i].routed.fetch_add(1, SeqCst);
                let out = f(bs, &hs);
                let stale = matches!(&out, Err(e) if matches!(e.rv(), CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID));
                r = Some(out);
                if !(stale && attempt == 0 && g.forget_cached(keys, i)) {
                    break;
                }
            }
            let Some(r) = r else {
                // This member does not hold the key: not its fault, try the next.
                missing = true;
                continue;
            };
            match r {
                Ok(v) => return Ok((i, v)),
                Err(e) if is_member_failure(e.rv(), logged_in) => {
                    self.member_failed(i, &e);
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = first_err {
            tracing::warn!(target: T, group = %self.g.name, error = %e, "no member of the HA group could serve the call");
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                "no member of the HA group is available",
            ));
        }
        if missing {
            return Err(Error::with(
                CKR_KEY_HANDLE_INVALID,
                "no available member holds the key",
            ));
        }
        Err(Error::with(
            CKR_DEVICE_ERROR,
            "no member of the HA group is available",
        ))
    }

    /// Where this session's own objects go: its home member, chosen (round-robin among healthy ones) on first use.
    pub(super) fn home(&mut self) -> Result<usize> {
        if let Some(h) = self.home {
            // A home member that is down is replaced (the objects made there are gone with it anyway).
            if self.g.healthy(h) {
                return Ok(h);
            }
        }
        let start = self.g.next_rr();
        let h = self.g.walk(start, |_| true).next().ok_or_else(|| {
            Error::with(CKR_DEVICE_ERROR, "no member of the HA group is available")
        })?;
        self.home = Some(h);
        Ok(h)
    }

    /// The running operation's state.
    pub(super) fn op(&self, kind: OpKind) -> Result<OpState> {
        self.ops
            .get(kind)
            .cloned()
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// A call on the member running `kind`'s operation that cannot move: a member failure ends it with
    /// `CKR_DEVICE_ERROR` (the next `C_*Init` goes to a healthy member).
    pub(super) fn on_op_member<R>(
        &mut self,
        kind: OpKind,
        f: impl FnOnce(&mut dyn BackendSession) -> Result<R>,
    ) -> Result<R> {
        let st = self.op(kind)?;
        let logged_in = self.g.logged_in();
        let r = self.member_session(st.member).and_then(f);
        if let Err(e) = &r {
            if is_member_failure(e.rv(), logged_in) {
                self.member_failed(st.member, e);
                self.ops.clear(kind);
                return Err(Error::with(
                    CKR_DEVICE_ERROR,
                    "the HA member running this operation failed",
                ));
            }
        }
        r
    }

    /// A single-part call that may be replayed on another member (init + call) when its member fails.
    pub(super) fn single<R>(
        &mut self,
        kind: OpKind,
        mut f: impl FnMut(&mut dyn BackendSession) -> Result<R>,
    ) -> Result<R> {
        let st = self.op(kind)?;
        let logged_in = self.g.logged_in();
        let r = self.member_session(st.member).and_then(&mut f);
        let e = match r {
            Err(e) if is_member_failure(e.rv(), logged_in) => e,
            r => return r,
        };
        self.member_failed(st.member, &e);
        let (Some(saved), false) = (st.mech.clone(), st.multi) else {
            self.ops.clear(kind);
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                "the HA member running this operation failed",
            ));
        };
        let keys: Vec<ObjRef> = st.key.into_iter().collect();
        let start = (st.member + 1) % self.g.members.len();
        let r = self.run(&keys, start, |bs, hs| {
            let m = saved.get()?;
            bs.op_init(kind, &m, hs.first().copied().map(|h| h as ObjRef))?;
            f(bs)
        });
        match r {
            Ok((i, v)) => {
                tracing::info!(target: T, group = %self.g.name, from = %self.g.members[st.member].name,
                    to = %self.g.members[i].name, "operation failed over");
                if let Some(o) = self.ops.get_mut(kind) {
                    o.member = i;
                }
                self.last_op = Some(i);
                Ok(v)
            }
            Err(e) => {
                self.ops.clear(kind);
                Err(e)
            }
        }
    }

    /// Refuses token objects: the bridge does not replicate keys across the group's members.
    pub(super) fn no_token_objects(templates: &[&Template]) -> Result<()> {
        if templates
            .iter()
            .any(|t| matches!(t.bool_value(CKA_TOKEN), Ok(Some(true))))
        {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                "an HA group does not create token objects (keys are not replicated across members): provision them on every member",
            ));
        }
        Ok(())
    }

    /// Refuses changes to group objects (they would make the members differ).
    pub(super) fn homed(&self, obj: ObjRef) -> Result<usize> {
        self.g.home_of(obj)?.ok_or_else(|| {
            Error::with(
                CKR_ACTION_PROHIBITED,
                "objects shared by the HA group's members are not changed through the bridge",
            )
        })
    }

    /// Runs an object-making call on the session's home member.
    pub(super) fn at_home<R>(
        &mut self,
        keys: &[ObjRef],
        f: impl FnMut(&mut dyn BackendSession, &[CK_OBJECT_HANDLE]) -> Result<R>,
    ) -> Result<(usize, R)> {
        // A key that lives on one member decides (it must be where the new object is made); else the home member,
        // where shared keys are resolved.
        let mut pinned = None;
        for k in keys {
            if let Some(kh) = self.g.home_of(*k)? {
                if pinned.is_some_and(|p| p != kh) {
                    return Err(Error::with(
                        CKR_KEY_HANDLE_INVALID,
                        "the keys live on different members of the HA group",
                    ));
                }
                pinned = Some(kh);
            }
        }
        let h = match pinned {
            Some(kh) => {
                if self.home.is_none() {
                    self.home = Some(kh);
                }
                kh
            }
            None => self.home()?,
        };
        let r = self.run_pinned(h, keys, f);
        if r.is_err() && !self.g.healthy(h) {
            // The home member is down: the next object goes elsewhere.
            self.home = None;
        }
        r
    }

    pub(super) fn run_pinned<R>(
        &mut self,
        i: usize,
        keys: &[ObjRef],
        mut f: impl FnMut(&mut dyn BackendSession, &[CK_OBJECT_HANDLE]) -> Result<R>,
    ) -> Result<(usize, R)> {
        let logged_in = self.g.logged_in();
        let g = self.g.clone();
        if !g.usable(i, true) {
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                "the HA group member holding this object is down",
            ));
        }
        let r = (|| {
            let bs = self.member_session(i)?;
            let mut hs = Vec::new();
            for k in keys {
                hs.push(g.resolve(*k, i, bs)?.ok_or_else(|| {
                    Error::with(CKR_KEY_HANDLE_INVALID, "the member does not hold the key")
                })?);
            }
            g.members[i].routed.fetch_add(1, SeqCst);
            f(bs, &hs)
        })();
        if let Err(e) = &r {
            if is_member_failure(e.rv(), logged_in) {
                self.member_failed(i, e);
            }
        }
        r.map(|v| (i, v))
    }

    pub(super) fn routed(&self, what: &str, kind: Option<OpKind>, i: usize) {
        tracing::debug!(target: T, group = %self.g.name, member = %self.g.members[i].name, op = what, kind = ?kind, "routed");
    }
}

impl BackendSession for HaSession {
    fn served_by(&self) -> Option<&str> {
        self.last_op.map(|i| self.g.members[i].name.as_str())
    }
    fn context_login_configured(&mut self) -> Result<()> {
        let i = self
            .last_op
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        self.member_session(i)?.context_login_configured()
    }

    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>> {
        // Session objects live on the home member: search there first when there is one. A member that fails while
        // its results are read is skipped by a second attempt.
        let mut last = None;
        for _ in 0..2 {
            let start = self.home.unwrap_or_else(|| self.g.next_rr());
            let (i, found) = self.run(&[], start, |bs, _| bs.find(template))?;
            self.routed("find", None, i);
            let g = self.g.clone();
            let bs = self.member_session(i)?;
            match intern_found(&g, i, bs, found) {
                Err(e) if is_member_failure(e.rv(), g.logged_in()) => {
                    self.member_failed(i, &e);
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.unwrap_or(Error::new(CKR_DEVICE_ERROR)))
    }
    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV {
        let logged_in = self.g.logged_in();
        let start = self.home.unwrap_or(0);
        let r = self.run(&[obj], start, |bs, hs| {
            let rv = bs.get_attributes(hs[0] as ObjRef, template);
            if is_member_failure(rv, logged_in) {
                Err(Error::new(rv))
            } else {
                Ok(rv)
            }
        });
        match r {
            Ok((_, rv)) => rv,
            Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => CKR_OBJECT_HANDLE_INVALID,
            Err(e) => e.rv(),
        }
    }
    fn set_attributes(&mut self, obj: ObjRef, template: Template) -> Result<()> {
        let h = self.homed(obj)?;
        self.run_pinned(h, &[obj], |bs, hs| {
            bs.set_attributes(hs[0] as ObjRef, template)
        })
        .map(|_| ())
    }
    fn create_object(&mut self, template: Template) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[], |bs, _| bs.create_object(template))?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn copy_object(&mut self, obj: ObjRef, template: Template) -> Result<ObjRef> {
        // A copy inherits CKA_TOKEN unless the template says false.
        if !matches!(template.bool_value(CKA_TOKEN), Ok(Some(false))) {
            let mut token: CK_BBOOL = CK_FALSE;
            let mut t = [attribute(CKA_TOKEN, &mut token)];
            let rv = self.get_attributes(obj, &mut t);
            if rv != CKR_OK {
                return Err(Error::new(rv));
            }
            if token == CK_TRUE {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    "an HA group does not create token objects: copy with CKA_TOKEN = FALSE",
                ));
            }
        }
        let (i, o) = self.at_home(&[obj], |bs, hs| bs.copy_object(hs[0] as ObjRef, template))?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn destroy_object(&mut self, obj: ObjRef) -> Result<()> {
        let h = self.homed(obj)?;
        self.run_pinned(h, &[obj], |bs, hs| bs.destroy_object(hs[0] as ObjRef))
            .map(|_| ())
    }
    fn object_size(&mut self, obj: ObjRef) -> Result<CK_ULONG> {
        let start = self.home.unwrap_or(0);
        self.run(&[obj], start, |bs, hs| bs.object_size(hs[0] as ObjRef))
            .map(|(_, v)| v)
    }

    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()> {
        let keys: Vec<ObjRef> = key.into_iter().collect();
        let start = self.g.next_rr();
        let (i, ()) = self.run(&keys, start, |bs, hs| {
            let k = hs.first().map(|h| *h as ObjRef);
            match bs.op_init(kind, mech, k) {
                // An operation the upstream kept after an error (it moved on to another member meanwhile).
                Err(e) if e.rv() == CKR_OPERATION_ACTIVE => {
                    bs.op_cancel(kind)?;
                    bs.op_init(kind, mech, k)
                }
                r => r,
            }
        })?;
        self.routed("init", Some(kind), i);
        self.ops.set(
            kind,
            OpState {
                member: i,
                mech: replayable(mech),
                key,
                multi: false,
            },
        );
        self.last_op = Some(i);
        Ok(())
    }
    fn op_single(&mut self, kind: OpKind, input: &[u8], mut out: Out) -> Result<usize> {
        self.single(kind, |bs| bs.op_single(kind, input, out.as_deref_mut()))
    }
    fn op_update(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        if let Some(o) = self.ops.get_mut(kind) {
            o.multi = true;
        }
        self.on_op_member(kind, |bs| bs.op_update(kind, input, out))
    }
    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize> {
        self.on_op_member(kind, |bs| bs.op_final(kind, out))
    }
    fn verify(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        self.single(OpKind::Verify, |bs| bs.verify(data, signature))
    }
    fn verify_final(&mut self, signature: &[u8]) -> Result<()> {
        self.on_op_member(OpKind::Verify, |bs| bs.verify_final(signature))
    }
    fn digest_key(&mut self, key: ObjRef) -> Result<()> {
        let st = self.op(OpKind::Digest)?;
        if let Some(o) = self.ops.get_mut(OpKind::Digest) {
            o.multi = true;
        }
        let g = self.g.clone();
        self.on_op_member(OpKind::Digest, |bs| {
            let h = g
                .resolve(key, st.member, bs)?
                .ok_or(Error::new(CKR_KEY_HANDLE_INVALID))?;
            bs.digest_key(h as ObjRef)
        })
    }
    fn dual_update(&mut self, kind: DualKind, input: &[u8], out: Out) -> Result<usize> {
        let (a, b) = kind.ops();
        for k in [a, b] {
            if let Some(o) = self.ops.get_mut(k) {
                o.multi = true;
            }
        }
        let (sa, sb) = (self.op(a)?, self.op(b)?);
        if sa.member != sb.member {
            return Err(Error::with(
                CKR_OPERATION_NOT_INITIALIZED,
                "the two operations run on different members of the HA group",
            ));
        }
        self.on_op_member(a, |bs| bs.dual_update(kind, input, out))
    }
    fn op_cancel(&mut self, kind: OpKind) -> Result<()> {
        let Some(st) = self.ops.take(kind) else {
            return Ok(());
        };
        if let Ok(bs) = self.member_session(st.member) {
            let _ = bs.op_cancel(kind);
        }
        Ok(())
    }

    fn generate_key(&mut self, mech: &Mechanism, template: Template) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[], |bs, _| bs.generate_key(mech, template))?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn generate_key_pair(
        &mut self,
        mech: &Mechanism,
        public: Template,
        private: Template,
    ) -> Result<(ObjRef, ObjRef)> {
        Self::no_token_objects(&[&public, &private])?;
        let (i, (p, s)) = self.at_home(&[], |bs, _| bs.generate_key_pair(mech, public, private))?;
        Ok((
            self.g.intern_home(i, p as CK_OBJECT_HANDLE),
            self.g.intern_home(i, s as CK_OBJECT_HANDLE),
        ))
    }
    fn wrap_key(
        &mut self,
        mech: &Mechanism,
        wrapping: ObjRef,
        key: ObjRef,
        mut out: Out,
    ) -> Result<usize> {
        let start = self.home.unwrap_or_else(|| self.g.next_rr());
        self.run(&[wrapping, key], start, |bs, hs| {
            bs.wrap_key(mech, hs[0] as ObjRef, hs[1] as ObjRef, out.as_deref_mut())
        })
        .map(|(_, v)| v)
    }
    fn unwrap_key(
        &mut self,
        mech: &Mechanism,
        unwrapping: ObjRef,
        wrapped: &[u8],
        template: Template,
    ) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[unwrapping], |bs, hs| {
            bs.unwrap_key(mech, hs[0] as ObjRef, wrapped, template)
        })?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn derive_key(&mut self, mech: &Mechanism, base: ObjRef, template: Template) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[base], |bs, hs| {
            bs.derive_key(mech, hs[0] as ObjRef, template)
        })?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn seed_random(&mut self, seed: &[u8]) -> Result<()> {
        let start = self.g.next_rr();
        self.run(&[], start, |bs, _| bs.seed_random(seed))
            .map(|_| ())
    }
    fn generate_random(&mut self, out: &mut [u8]) -> Result<()> {
        let start = self.g.next_rr();
        let (i, ()) = self.run(&[], start, |bs, _| bs.generate_random(out))?;
        self.routed("random", None, i);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pointer_free_parameters_are_replayed() {
        assert!(replayable(&Mechanism::simple(CKM_SHA256_RSA_PKCS)).is_some());
        let mut pss = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        };
        let m = Mechanism::with_param(CKM_SHA256_RSA_PKCS_PSS, &mut pss);
        let saved = replayable(&m).expect("PSS parameters hold no pointers");
        let again = saved.get().unwrap();
        assert_eq!(again.param::<CK_RSA_PKCS_PSS_PARAMS>().unwrap().sLen, 32);
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: std::ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        assert!(replayable(&Mechanism::with_param(CKM_RSA_PKCS_OAEP, &mut oaep)).is_none());
    }
}
