//! Object search, attributes and object management, routed to the backend that holds each object.

use super::audit;
use super::slot::Slot;
use super::Module;
use cryptoki_sys::*;
use p11bridge_backends::vendor::{is_bridge_attribute, is_vendor_attribute, CKA_P11BRIDGE_BACKEND};
use p11bridge_backends::{combine_attr_rv, fill_attr, Error, Result, Template};

/// A template on its way to a backend: the caller's own when it holds none of p11bridge's attributes (the common
/// case: no copy, NULL stays NULL), else a copy without them (the values stay the caller's).
pub(super) enum BackendTemplate<'a> {
    Same(Template<'a>),
    Stripped(Vec<CK_ATTRIBUTE>),
}

impl<'a> BackendTemplate<'a> {
    pub(super) fn new(t: Template<'a>) -> Self {
        if t.raw().iter().any(|a| is_bridge_attribute(a.type_)) {
            BackendTemplate::Stripped(t.without(|a| !is_bridge_attribute(a.type_)))
        } else {
            BackendTemplate::Same(t)
        }
    }

    pub(super) fn get(&self) -> Template<'_> {
        match self {
            BackendTemplate::Same(t) => *t,
            // SAFETY: the same caller-owned attribute values as the original template.
            BackendTemplate::Stripped(v) => unsafe { Template::from_raw(v) },
        }
    }
}

/// Which backend a template names with `CKA_P11BRIDGE_BACKEND`, if any (never on a mirror, which passes the
/// attribute to its upstream).
pub(crate) fn named_backend(slot: &Slot, t: Template) -> Result<Option<usize>> {
    if !slot.bridge_attributes() {
        return Ok(None);
    }
    let Some(name) = t.value(CKA_P11BRIDGE_BACKEND)? else {
        return Ok(None);
    };
    slot.backends
        .iter()
        .position(|m| m.name.as_bytes() == name)
        .map(Some)
        .ok_or_else(|| {
            Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                format!(
                    "CKA_P11BRIDGE_BACKEND names no backend of this token: {}",
                    String::from_utf8_lossy(name)
                ),
            )
        })
}

/// Whether an object made from this template is a session object (`CKA_TOKEN` false or absent).
pub(super) fn is_session_object(t: Template) -> bool {
    !matches!(t.bool_value(CKA_TOKEN), Ok(Some(true)))
}

/// Whether an existing object is a `CKK_EC` key (for the checks of [`super::keycheck`]); `None` if it cannot be
/// read.
fn object_is_ec(
    bs: &mut dyn p11bridge_backends::BackendSession,
    o: p11bridge_backends::ObjRef,
) -> Option<bool> {
    let mut kt: CK_KEY_TYPE = CK_UNAVAILABLE_INFORMATION;
    let mut t = [p11bridge_backends::attribute(CKA_KEY_TYPE, &mut kt)];
    (bs.get_attributes(o, &mut t) == CKR_OK).then_some(kt == CKK_EC)
}

/// Whether an object belongs to a filtered view: keys by type, everything by label.
fn in_view(
    u: &super::slot::Unified,
    bs: &mut dyn p11bridge_backends::BackendSession,
    o: p11bridge_backends::ObjRef,
) -> bool {
    let mut class: CK_OBJECT_CLASS = CK_UNAVAILABLE_INFORMATION;
    let mut kt: CK_KEY_TYPE = CK_UNAVAILABLE_INFORMATION;
    let mut t = [
        p11bridge_backends::attribute(CKA_CLASS, &mut class),
        p11bridge_backends::attribute(CKA_KEY_TYPE, &mut kt),
    ];
    let _ = bs.get_attributes(o, &mut t);
    let is_key = matches!(class, CKO_PRIVATE_KEY | CKO_PUBLIC_KEY | CKO_SECRET_KEY);
    if is_key && !u.key_types.is_empty() && !u.key_types.contains(&kt) {
        return false;
    }
    if u.labels.is_empty() {
        return true;
    }
    let mut buf = [0u8; 256];
    let mut l = [p11bridge_backends::attribute(CKA_LABEL, &mut buf[..])];
    if bs.get_attributes(o, &mut l) != CKR_OK {
        return false;
    }
    let label = String::from_utf8_lossy(&buf[..(l[0].ulValueLen as usize).min(buf.len())]);
    u.labels.iter().any(|p| super::slot::glob(p, &label))
}

impl Module {
    /// `C_FindObjectsInit`: the search runs now on every backend of the slot; `C_FindObjects` hands out the results.
    pub fn find_init(&self, h: CK_SESSION_HANDLE, template: Template) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        if inner.find.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        let mut handles = Vec::new();
        if let Some(pos) = slot.upstream() {
            handles = inner
                .backend(slot, s.rw, pos)?
                .find(template)?
                .into_iter()
                .map(|o| o as CK_OBJECT_HANDLE)
                .collect();
        } else {
            let only = named_backend(slot, template)?;
            let for_backend = BackendTemplate::new(template);
            let t = for_backend.get();
            let mut first_err = None;
            let mut any_ok = false;
            for pos in 0..slot.backends.len() {
                if only.is_some_and(|o| o != pos) {
                    continue;
                }
                match inner.backend(slot, s.rw, pos).and_then(|bs| bs.find(t)) {
                    Ok(mut found) => {
                        any_ok = true;
                        if let Some(view) = slot.view() {
                            let bs = inner.backend(slot, s.rw, pos)?;
                            found.retain(|o| in_view(view, bs, *o));
                        }
                        handles.extend(found.into_iter().map(|o| slot.handles.intern((pos, o))));
                    }
                    Err(e) => {
                        // Never silent: the application sees fewer objects, the person sees why.
                        slot.backend_trouble(
                            &slot.backends[pos],
                            &format!("cannot list its keys: {e}"),
                            "its keys are not on token",
                        );
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let (false, Some(e)) = (any_ok, first_err) {
                return Err(e);
            }
        }
        inner.find = Some(super::session::Find { handles, pos: 0 });
        Ok(())
    }

    /// `C_FindObjects`.
    pub fn find_next(&self, h: CK_SESSION_HANDLE, out: &mut [CK_OBJECT_HANDLE]) -> Result<usize> {
        let s = self.session(h)?;
        let mut inner = s.lock();
        let f = inner
            .find
            .as_mut()
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        let n = out.len().min(f.handles.len() - f.pos);
        out[..n].copy_from_slice(&f.handles[f.pos..f.pos + n]);
        f.pos += n;
        Ok(n)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let s = self.session(h)?;
        let mut inner = s.lock();
        inner
            .find
            .take()
            .map(|_| ())
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// `C_GetAttributeValue`. Returns the spec's `CK_RV`, which may be `CKR_ATTRIBUTE_SENSITIVE`,
    /// `CKR_ATTRIBUTE_TYPE_INVALID` or `CKR_BUFFER_TOO_SMALL` with the rest of the template filled.
    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        template: &mut [CK_ATTRIBUTE],
    ) -> Result<CK_RV> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, o) = slot.handles.locate(obj, CKR_OBJECT_HANDLE_INVALID)?;
        let mut inner = s.lock();
        let bs = inner.backend(slot, s.rw, pos)?;
        let ours =
            slot.bridge_attributes() && template.iter().any(|a| is_bridge_attribute(a.type_));
        if !ours {
            return Ok(bs.get_attributes(o, template));
        }
        let mut sub: Vec<CK_ATTRIBUTE> = template
            .iter()
            .filter(|a| !is_bridge_attribute(a.type_))
            .copied()
            .collect();
        let mut rv = if sub.is_empty() {
            CKR_OK
        } else {
            bs.get_attributes(o, &mut sub)
        };
        if !matches!(
            rv,
            CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL
        ) {
            return Ok(rv);
        }
        let mut it = sub.into_iter();
        for a in template.iter_mut() {
            if !is_bridge_attribute(a.type_) {
                if let Some(b) = it.next() {
                    a.ulValueLen = b.ulValueLen;
                }
                continue;
            }
            // The one attribute the core answers: CKA_P11BRIDGE_BACKEND.
            rv = combine_attr_rv(rv, fill_attr(a, slot.backends[pos].name.as_bytes()));
        }
        Ok(rv)
    }

    /// `C_SetAttributeValue`.
    pub fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        t: Template,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, o) = slot.handles.locate(obj, CKR_OBJECT_HANDLE_INVALID)?;
        if slot.bridge_attributes() && t.raw().iter().any(|a| is_vendor_attribute(a.type_)) {
            return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY));
        }
        let mut inner = s.lock();
        let bs = inner.backend(slot, s.rw, pos)?;
        if super::keycheck::touches_ec(&t) {
            super::keycheck::check(&t, object_is_ec(bs, o))?;
        }
        bs.set_attributes(o, t)
    }

    /// `C_CreateObject`: on the backend the template names, else the slot's default.
    pub fn create_object(&self, h: CK_SESSION_HANDLE, t: Template) -> Result<CK_OBJECT_HANDLE> {
        let (s, slot) = self.session_slot(h)?;
        let pos = self.target_backend(slot, &[t])?;
        super::keycheck::check(&t, None)?;
        let for_backend = BackendTemplate::new(t);
        let st = for_backend.get();
        let mut inner = s.lock();
        let o = inner.backend(slot, s.rw, pos)?.create_object(st)?;
        Ok(self.adopt(slot, &mut inner, pos, o, is_session_object(t)))
    }

    /// `C_CopyObject`: on the backend that holds the original.
    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        t: Template,
    ) -> Result<CK_OBJECT_HANDLE> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, o) = slot.handles.locate(obj, CKR_OBJECT_HANDLE_INVALID)?;
        if named_backend(slot, t)?.is_some_and(|p| p != pos) {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                "an object cannot be copied to another backend",
            ));
        }
        let for_backend = BackendTemplate::new(t);
        let st = for_backend.get();
        let mut inner = s.lock();
        let bs = inner.backend(slot, s.rw, pos)?;
        if super::keycheck::touches_ec(&t) {
            super::keycheck::check(&t, object_is_ec(bs, o))?;
        }
        let n = bs.copy_object(o, st)?;
        // A copy is a session object only if the template says so (else it inherits CKA_TOKEN).
        let session = matches!(t.bool_value(CKA_TOKEN), Ok(Some(false)));
        Ok(self.adopt(slot, &mut inner, pos, n, session))
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, o) = slot.handles.locate(obj, CKR_OBJECT_HANDLE_INVALID)?;
        let mut inner = s.lock();
        let started = std::time::Instant::now();
        let info = self.audit.as_ref().and_then(|_| {
            inner
                .backend(slot, s.rw, pos)
                .ok()
                .map(|bs| audit::describe(bs, o))
        });
        let r = inner.backend(slot, s.rw, pos)?.destroy_object(o);
        if let Some(info) = &info {
            let event = audit::Event {
                event: "destroy_object",
                backend: Some(pos),
                object: Some(info),
                rv: audit::rv_of(&r),
                ..Default::default()
            };
            self.audit(slot, &event, started);
        }
        r?;
        slot.handles.forget(obj);
        inner.session_objects.retain(|x| *x != obj);
        Ok(())
    }

    /// `C_GetObjectSize`.
    pub fn object_size(&self, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> Result<CK_ULONG> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, o) = slot.handles.locate(obj, CKR_OBJECT_HANDLE_INVALID)?;
        let mut inner = s.lock();
        let r = inner.backend(slot, s.rw, pos)?.object_size(o);
        r
    }

    /// The bridge handle of an object a backend just made; session objects of a unified slot are remembered so
    /// that their handles are forgotten when the session closes.
    pub(super) fn adopt(
        &self,
        slot: &Slot,
        inner: &mut super::session::Inner,
        pos: usize,
        obj: p11bridge_backends::ObjRef,
        session_object: bool,
    ) -> CK_OBJECT_HANDLE {
        if self.audit.is_some() {
            if let Ok(bs) = inner.backend(slot, false, pos) {
                let info = audit::describe(bs, obj);
                let event = audit::Event {
                    event: "new_object",
                    backend: Some(pos),
                    object: Some(&info),
                    rv: CKR_OK,
                    ..Default::default()
                };
                self.audit(slot, &event, std::time::Instant::now());
            }
        }
        let handle = slot.handles.intern((pos, obj));
        // Forgotten when the session closes (a mirror slot's handles are the upstream's: what the core remembers of
        // the object goes with it; a unified slot's handle goes too).
        if session_object {
            inner.session_objects.push(handle);
        }
        handle
    }

    /// The backend new objects go to: named by `CKA_P11BRIDGE_BACKEND` in any of the templates, else the default.
    pub(super) fn target_backend(&self, slot: &Slot, templates: &[Template]) -> Result<usize> {
        let mut chosen = None;
        for t in templates {
            if let Some(p) = named_backend(slot, *t)? {
                if chosen.is_some_and(|c| c != p) {
                    return Err(Error::with(
                        CKR_TEMPLATE_INCONSISTENT,
                        "the templates name different backends",
                    ));
                }
                chosen = Some(p);
            }
        }
        Ok(chosen.unwrap_or(slot.default_backend()))
    }
}
