//! Certificates from Vault PKI for the upstream token's keys (`pki = {...}` in a `kind = "pkcs11"` section): the
//! PKI host of an upstream token (see `crate::pki`).
//!
//! The issued certificate and its CA chain are stored **in the upstream token** as token objects: the certificate
//! with the key's `CKA_ID` and label (the previous certificates with that `CKA_ID` are destroyed once the new one is
//! there), each CA certificate once (`CKA_CERTIFICATE_CATEGORY` authority, `CKA_TRUSTED` false). The bridge passes
//! the token's objects through, so they are served like every other object of the HSM, to every application of the
//! HSM too (with or without the bridge), and survive restarts in the token itself; the cache directory keeps a copy
//! (the expiry and the last failure, for renewal and `check`).
//!
//! The key signs its request in the HSM, which needs the upstream token logged in: the bridge never logs the HSM in
//! by itself for this (that would show its private objects to sessions that did not log in), so keys are certified
//! and renewed while the token is logged in (an application logged in to the unified token, as a server is).

use super::{Configured, Lib};
use crate::pki::{Host, Issued, Pki, PkiKey};
use crate::remote::mech::SignRequest;
use crate::remote::{Curve, KeyMaterial};
use crate::{up, Error, Result};
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::ptr::null_mut;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the list of the token's keys is reused before it is read again.
const KEYS_TTL: Duration = Duration::from_secs(30);

pub struct HsmPki {
    pub(super) backend: String,
    pub(super) lib: Arc<Lib>,
    pub(super) slot: CK_SLOT_ID,
    pub(super) configured: Arc<Configured>,
    pub(super) pki: Arc<Pki>,
    keys: Mutex<Option<(Instant, Vec<Selected>)>>,
    /// Keys whose cached certificate was found in (or put back into) the token by this process.
    present: Mutex<Vec<String>>,
}

/// A selected key and its `CKA_ID`.
type Selected = (PkiKey, Vec<u8>);

/// One upstream session, closed when dropped.
struct Sess<'a> {
    lib: &'a Lib,
    h: CK_SESSION_HANDLE,
}

impl Drop for Sess<'_> {
    fn drop(&mut self) {
        up!(self.lib.f(), C_CloseSession(self.h));
    }
}

fn attr(t: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: t,
        pValue: v.as_ptr() as *mut std::ffi::c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

fn ul(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sess<'_> {
    fn find(&self, template: &[CK_ATTRIBUTE]) -> Result<Vec<CK_OBJECT_HANDLE>> {
        super::find_all(
            self.lib,
            self.h,
            template.as_ptr() as *mut CK_ATTRIBUTE,
            template.len() as CK_ULONG,
        )
    }

    /// One attribute's bytes (`None`: absent or unreadable).
    fn get(&self, o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
        let f = self.lib.f();
        let mut a = CK_ATTRIBUTE {
            type_: t,
            pValue: null_mut(),
            ulValueLen: 0,
        };
        if up!(f, C_GetAttributeValue(self.h, o, &mut a, 1)) != CKR_OK
            || a.ulValueLen == CK_UNAVAILABLE_INFORMATION
            || a.ulValueLen > 1 << 20
        {
            return None;
        }
        let mut v = vec![0u8; a.ulValueLen as usize];
        a.pValue = v.as_mut_ptr() as *mut std::ffi::c_void;
        if up!(f, C_GetAttributeValue(self.h, o, &mut a, 1)) != CKR_OK {
            return None;
        }
        v.truncate(a.ulValueLen as usize);
        Some(v)
    }

    fn get_ulong(&self, o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        let v = self.get(o, t)?;
        Some(CK_ULONG::from_ne_bytes(v.try_into().ok()?))
    }

    fn create(&self, template: &[CK_ATTRIBUTE]) -> Result<CK_OBJECT_HANDLE> {
        let mut h: CK_OBJECT_HANDLE = 0;
        Error::check(up!(
            self.lib.f(),
            C_CreateObject(
                self.h,
                template.as_ptr() as *mut CK_ATTRIBUTE,
                template.len() as CK_ULONG,
                &mut h
            )
        ))?;
        Ok(h)
    }
}

/// The key material of a public key object (RSA, EC on a named curve, Ed25519).
fn material(s: &Sess, o: CK_OBJECT_HANDLE) -> Option<KeyMaterial> {
    match s.get_ulong(o, CKA_KEY_TYPE)? {
        CKK_RSA => Some(KeyMaterial::Rsa {
            modulus: s.get(o, CKA_MODULUS)?,
            exponent: s.get(o, CKA_PUBLIC_EXPONENT)?,
        }),
        CKK_EC => {
            let curve = Curve::from_params(&s.get(o, CKA_EC_PARAMS)?)?;
            let p = s.get(o, CKA_EC_POINT)?;
            let point = crate::remote::der::unwrap_octets(&p)
                .map(<[u8]>::to_vec)
                .unwrap_or(p);
            Some(KeyMaterial::Ec { curve, point })
        }
        CKK_EC_EDWARDS => {
            let p = s.get(o, CKA_EC_POINT)?;
            let point = crate::remote::der::unwrap_octets(&p)
                .map(<[u8]>::to_vec)
                .unwrap_or(p);
            Some(KeyMaterial::Ed25519 {
                point: point.try_into().ok()?,
            })
        }
        _ => None,
    }
}

impl HsmPki {
    pub(super) fn new(
        backend: &str,
        lib: Arc<Lib>,
        slot: CK_SLOT_ID,
        configured: Arc<Configured>,
        pki: Arc<Pki>,
    ) -> HsmPki {
        HsmPki {
            backend: backend.to_string(),
            lib,
            slot,
            configured,
            pki,
            keys: Mutex::new(None),
            present: Mutex::new(Vec::new()),
        }
    }

    /// Whether the bridge holds a login of the upstream token (an application is logged in to the unified token).
    fn logged_in(&self) -> bool {
        self.configured.anchor.lock().logins > 0
    }

    fn session(&self, rw: bool) -> Result<Sess<'_>> {
        let h = super::open_upstream_session(&self.lib, self.slot, rw)?;
        Ok(Sess { lib: &self.lib, h })
    }

    /// The token's signing keys the configuration selects, with their `CKA_ID`: private keys with `CKA_SIGN` (seen
    /// while logged in), their material from the public key of the same `CKA_ID`.
    pub(super) fn scan(&self) -> Result<Vec<Selected>> {
        let s = self.session(false)?;
        let class = ul(CKO_PRIVATE_KEY);
        let yes = [CK_TRUE];
        let privs = s.find(&[attr(CKA_CLASS, &class), attr(CKA_SIGN, &yes)])?;
        let pubclass = ul(CKO_PUBLIC_KEY);
        let mut out = Vec::new();
        for k in privs {
            let Some(id) = s.get(k, CKA_ID).filter(|i| !i.is_empty()) else {
                continue;
            };
            let label = s
                .get(k, CKA_LABEL)
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let public = s.find(&[attr(CKA_CLASS, &pubclass), attr(CKA_ID, &id)])?;
            let Some(m) = public.first().and_then(|p| material(&s, *p)) else {
                continue;
            };
            let name = hex(&id);
            if self.pki.selects(&name, &label, true, &m) {
                out.push((
                    PkiKey {
                        name,
                        label,
                        material: m,
                    },
                    id,
                ));
            }
        }
        Ok(out)
    }

    fn id_of(&self, key: &PkiKey) -> Option<Vec<u8>> {
        self.keys
            .lock()
            .as_ref()
            .and_then(|(_, v)| v.iter().find(|(k, _)| k.name == key.name))
            .map(|(_, id)| id.clone())
    }

    /// Puts a certificate and its chain into the token (see the module's comment).
    fn store(&self, key: &PkiKey, id: &[u8], issued: &Issued) -> Result<()> {
        let s = self.session(true)?;
        let cert = ul(CKO_CERTIFICATE);
        let x509 = ul(CKC_X_509);
        let yes = [CK_TRUE];
        let no = [CK_FALSE];
        for ca in &issued.chain {
            if !s
                .find(&[attr(CKA_CLASS, &cert), attr(CKA_VALUE, ca)])?
                .is_empty()
            {
                continue;
            }
            let Some(c) = crate::remote::cert::parse(ca) else {
                continue;
            };
            let label = crate::pki::csr::facts(ca)
                .and_then(|f| f.common_name)
                .unwrap_or_else(|| "CA certificate".into());
            let authority = ul(CK_CERTIFICATE_CATEGORY_AUTHORITY);
            s.create(&[
                attr(CKA_CLASS, &cert),
                attr(CKA_CERTIFICATE_TYPE, &x509),
                attr(CKA_TOKEN, &yes),
                attr(CKA_PRIVATE, &no),
                attr(CKA_TRUSTED, &no),
                attr(CKA_CERTIFICATE_CATEGORY, &authority),
                attr(CKA_LABEL, label.as_bytes()),
                attr(CKA_SUBJECT, &c.subject),
                attr(CKA_ISSUER, &c.issuer),
                attr(CKA_SERIAL_NUMBER, &c.serial),
                attr(CKA_VALUE, ca),
            ])
            .map_err(|e| {
                Error::with(
                    e.rv(),
                    format!("storing a CA certificate in the token: {e}"),
                )
            })?;
        }
        let leaf = &issued.leaf;
        let user = ul(CK_CERTIFICATE_CATEGORY_TOKEN_USER);
        let new = s
            .create(&[
                attr(CKA_CLASS, &cert),
                attr(CKA_CERTIFICATE_TYPE, &x509),
                attr(CKA_TOKEN, &yes),
                attr(CKA_PRIVATE, &no),
                attr(CKA_CERTIFICATE_CATEGORY, &user),
                attr(CKA_ID, id),
                attr(CKA_LABEL, key.label.as_bytes()),
                attr(CKA_SUBJECT, &leaf.subject),
                attr(CKA_ISSUER, &leaf.issuer),
                attr(CKA_SERIAL_NUMBER, &leaf.serial),
                attr(CKA_VALUE, &leaf.der),
            ])
            .map_err(|e| {
                Error::with(e.rv(), format!("storing the certificate in the token: {e}"))
            })?;
        // The previous certificates of the key go.
        for old in s.find(&[attr(CKA_CLASS, &cert), attr(CKA_ID, id)])? {
            if old != new
                && s.get_ulong(old, CKA_CERTIFICATE_CATEGORY)
                    != Some(CK_CERTIFICATE_CATEGORY_AUTHORITY)
            {
                let rv = up!(self.lib.f(), C_DestroyObject(s.h, old));
                if rv != CKR_OK {
                    tracing::warn!(backend = %self.backend, key = %key.label, rv = %crate::rv_name(rv), "cannot remove the previous certificate");
                }
            }
        }
        Ok(())
    }
}

impl Host for HsmPki {
    fn pki(&self) -> Option<&Arc<Pki>> {
        Some(&self.pki)
    }

    fn pki_keys(&self) -> Vec<PkiKey> {
        // Only while logged in: the key must sign in the HSM.
        if !self.logged_in() {
            return Vec::new();
        }
        let fresh = self
            .keys
            .lock()
            .as_ref()
            .is_some_and(|(t, _)| t.elapsed() < KEYS_TTL);
        if !fresh {
            match self.scan() {
                Ok(v) => *self.keys.lock() = Some((Instant::now(), v)),
                Err(e) => {
                    // Said once per cause, like the other PKI failures: without the list no HSM key is certified.
                    crate::diag::notice(&format!(
                        "backend \"{}\" (pkcs11): cannot list the token's signing keys for Vault PKI {}: {e}; no \
                         certificate is issued or renewed for its keys until it can; retrying",
                        self.backend,
                        self.pki.endpoint()
                    ));
                    return Vec::new();
                }
            }
        }
        let keys: Vec<Selected> = self
            .keys
            .lock()
            .as_ref()
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        // A certificate in the cache that the token lacks (deleted, another token) is put back: no request.
        for (k, id) in &keys {
            if self.present.lock().contains(&k.name) {
                continue;
            }
            if let Some(i) = self.pki.current(k) {
                let there = self.session(false).ok().is_some_and(|s| {
                    let cert = ul(CKO_CERTIFICATE);
                    s.find(&[attr(CKA_CLASS, &cert), attr(CKA_VALUE, &i.leaf.der)])
                        .is_ok_and(|v| !v.is_empty())
                });
                if there || self.store(k, id, &i).is_ok() {
                    self.present.lock().push(k.name.clone());
                }
            }
        }
        keys.into_iter().map(|(k, _)| k).collect()
    }

    fn pki_sign(&self, key: &PkiKey, req: &SignRequest) -> Result<Vec<u8>> {
        let id = self
            .id_of(key)
            .ok_or_else(|| Error::with(CKR_KEY_HANDLE_INVALID, "the key is gone"))?;
        let s = self.session(false)?;
        let class = ul(CKO_PRIVATE_KEY);
        let k = *s
            .find(&[attr(CKA_CLASS, &class), attr(CKA_ID, &id)])?
            .first()
            .ok_or_else(|| {
                Error::with(
                    CKR_USER_NOT_LOGGED_IN,
                    "the private key is not visible (the token is not logged in)",
                )
            })?;
        let (mech, input) = match req {
            SignRequest::Rsa { hash, digest, .. } => {
                (CKM_RSA_PKCS, crate::digest::digest_info(*hash, digest))
            }
            SignRequest::Ecdsa { digest, .. } => (CKM_ECDSA, digest.clone()),
            SignRequest::Eddsa { message } => (CKM_EDDSA, message.to_vec()),
        };
        let mut m = CK_MECHANISM {
            mechanism: mech,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let f = self.lib.f();
        Error::check(up!(f, C_SignInit(s.h, &mut m, k)))?;
        let mut out = vec![0u8; 1024];
        let mut n = out.len() as CK_ULONG;
        Error::check(up!(
            f,
            C_Sign(
                s.h,
                input.as_ptr() as *mut u8,
                input.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        ))?;
        out.truncate((n as usize).min(1024));
        Ok(out)
    }

    fn pki_installed(&self, key: &PkiKey, issued: &Arc<Issued>) -> Result<()> {
        let id = self
            .id_of(key)
            .ok_or_else(|| Error::with(CKR_KEY_HANDLE_INVALID, "the key is gone"))?;
        self.store(key, &id, issued)?;
        let mut p = self.present.lock();
        if !p.contains(&key.name) {
            p.push(key.name.clone());
        }
        Ok(())
    }
}
