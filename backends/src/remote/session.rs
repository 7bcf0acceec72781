//! One `BackendSession` for every remote service: search and attributes from the key cache, operations with the
//! spec's two-call convention (a length query never reaches the network; a result that did not fit is kept for the
//! retry), multi-part input hashed or buffered locally, and verification/public-key encryption done locally.

use super::mech::{self, Hash, Hasher, RsaPad, SignRequest};
use super::{
    attribute, objects_of, AttrValue, KeyMaterial, RemoteKey, Shared, CLASS_PRIVATE, CLASS_PUBLIC,
    CLASS_SECRET,
};
use super::{Curve, GenerateKind, GenerateSpec, ED25519_PARAMS};
use crate::{
    fill_attr, vendor, ActiveOps, BackendSession, Error, Mechanism, ObjRef, OpKind, Out, Result,
    Template,
};
use cryptoki_sys::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zeroize::Zeroizing;

enum Input {
    Buffer(Zeroizing<Vec<u8>>),
    Hash(Box<Hasher>),
}

struct Op {
    mech: CK_MECHANISM_TYPE,
    /// Parsed parameters: PSS (hash, salt), OAEP hash, or a vendor mechanism's context.
    pss: Option<(Hash, usize)>,
    oaep: Option<Hash>,
    context: Vec<u8>,
    key: Arc<RemoteKey>,
    input: Input,
    /// A result computed for a buffer that was too small, handed out on the retry.
    result: Option<Zeroizing<Vec<u8>>>,
    /// Whether `*Update` was called: then only `*Final` may finish the operation.
    updated: bool,
}

pub struct RemoteSession {
    shared: Arc<Shared>,
    /// The token's login state.
    login: Arc<AtomicBool>,
    ops: ActiveOps<Op>,
}

impl RemoteSession {
    pub fn new(shared: Arc<Shared>, login: Arc<AtomicBool>) -> Self {
        RemoteSession {
            shared,
            login,
            ops: Default::default(),
        }
    }

    fn logged_in(&self) -> bool {
        self.login.load(Ordering::Acquire)
    }

    fn op(&mut self, kind: OpKind) -> Result<&mut Op> {
        self.ops
            .get_mut(kind)
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))
    }
}

/// Whether a mechanism hashes its input itself (multi-part input is hashed as it comes).
fn hashing(mech: CK_MECHANISM_TYPE) -> Option<Hash> {
    match mech {
        CKM_SHA_1_HMAC | CKM_SHA224_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC => {
            None
        }
        m => mech::mechanism_hash(m),
    }
}

fn is_hmac(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mech,
        CKM_SHA_1_HMAC | CKM_SHA224_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC
    )
}

/// What to ask the service to sign (or to verify locally) for this operation and its complete input.
fn sign_request(op: &Op, data: SignInput) -> Result<SignRequest> {
    let m = op.mech;
    Ok(match (&op.key.material, data) {
        (KeyMaterial::Rsa { .. }, SignInput::Digest(d)) => {
            let hash = mech::mechanism_hash(m).ok_or(Error::new(CKR_MECHANISM_INVALID))?;
            let pad = match op.pss {
                Some((_, salt)) => RsaPad::Pss(salt),
                None => RsaPad::Pkcs1,
            };
            SignRequest::Rsa {
                hash,
                pad,
                digest: d,
            }
        }
        (KeyMaterial::Rsa { .. }, SignInput::Raw(input)) if m == CKM_RSA_PKCS => {
            let (hash, digest) = mech::parse_digest_info(input)?;
            SignRequest::Rsa {
                hash,
                pad: RsaPad::Pkcs1,
                digest: digest.to_vec(),
            }
        }
        (KeyMaterial::Rsa { .. }, SignInput::Raw(input)) if m == CKM_RSA_PKCS_PSS => {
            let (hash, salt) = op.pss.ok_or(Error::new(CKR_MECHANISM_PARAM_INVALID))?;
            if input.len() != hash.len() {
                return Err(Error::with(
                    CKR_DATA_LEN_RANGE,
                    "PSS input must be a digest of the parameter hash",
                ));
            }
            SignRequest::Rsa {
                hash,
                pad: RsaPad::Pss(salt),
                digest: input.to_vec(),
            }
        }
        (KeyMaterial::Ec { .. }, SignInput::Digest(d)) => SignRequest::Ecdsa {
            hash: mech::mechanism_hash(m).ok_or(Error::new(CKR_MECHANISM_INVALID))?,
            digest: d,
        },
        (KeyMaterial::Ec { .. }, SignInput::Raw(input)) if m == CKM_ECDSA => SignRequest::Ecdsa {
            hash: Hash::from_len(input.len()).ok_or_else(|| {
                Error::with(
                    CKR_DATA_LEN_RANGE,
                    "CKM_ECDSA input must be a SHA-1/SHA-2 digest",
                )
            })?,
            digest: input.to_vec(),
        },
        (KeyMaterial::Ed25519 { .. }, SignInput::Raw(input)) if m == CKM_EDDSA => {
            SignRequest::Eddsa {
                message: Zeroizing::new(input.to_vec()),
            }
        }
        _ => return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT)),
    })
}

enum SignInput<'a> {
    Digest(Vec<u8>),
    Raw(&'a [u8]),
}

/// The complete input of an operation: the digest for hash-and-sign mechanisms, else the buffered bytes.
fn take_input(op: &mut Op, last: &[u8]) -> (Option<Vec<u8>>, Zeroizing<Vec<u8>>) {
    match std::mem::replace(&mut op.input, Input::Buffer(Zeroizing::new(Vec::new()))) {
        Input::Hash(mut h) => {
            h.update(last);
            (Some(h.finish()), Zeroizing::new(Vec::new()))
        }
        Input::Buffer(mut b) => {
            b.extend_from_slice(last);
            (None, b)
        }
    }
}

/// Copies a result into the caller's buffer, or keeps it for the retry.
fn deliver(op: &mut Op, result: Zeroizing<Vec<u8>>, out: &mut [u8]) -> Result<usize> {
    if result.len() > out.len() {
        let n = result.len();
        op.result = Some(result);
        return Err(Error::buffer_too_small(n));
    }
    out[..result.len()].copy_from_slice(&result);
    Ok(result.len())
}

impl RemoteSession {
    /// The output length an operation will need (no network): exact for signatures and MACs, an upper bound for
    /// decryption and the services' own ciphertexts.
    fn out_len(&self, op: &Op, kind: OpKind, in_len: usize) -> usize {
        if let Some(r) = &op.result {
            return r.len();
        }
        let k = &op.key;
        match kind {
            OpKind::Sign if is_hmac(op.mech) => mech::mechanism_hash(op.mech).map_or(0, Hash::len),
            OpKind::Sign => mech::signature_len(&k.material),
            OpKind::Encrypt if op.mech == CKM_RSA_PKCS_OAEP => mech::signature_len(&k.material),
            OpKind::Encrypt => self.shared.service.encrypt_len(k, op.mech, in_len),
            OpKind::Decrypt if op.mech == CKM_RSA_PKCS_OAEP => mech::signature_len(&k.material),
            OpKind::Decrypt => in_len,
            _ => 0,
        }
    }

    /// Runs the operation on its complete input (the network call, for sign/decrypt/MAC/encrypt).
    fn compute(&self, op: &mut Op, kind: OpKind, last: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (digest, buf) = take_input(op, last);
        let svc = &self.shared.service;
        let k = op.key.clone();
        Ok(match kind {
            OpKind::Sign if is_hmac(op.mech) => {
                let h = mech::mechanism_hash(op.mech).ok_or(Error::new(CKR_MECHANISM_INVALID))?;
                Zeroizing::new(svc.mac(&k, h, &buf)?)
            }
            OpKind::Sign => {
                let req = match digest {
                    Some(d) => sign_request(op, SignInput::Digest(d))?,
                    None => sign_request(op, SignInput::Raw(&buf))?,
                };
                Zeroizing::new(svc.sign(&k, &req)?)
            }
            OpKind::Decrypt if op.mech == CKM_RSA_PKCS_OAEP => {
                svc.decrypt_oaep(&k, op.oaep.unwrap_or(Hash::Sha1), &buf)?
            }
            OpKind::Decrypt => svc.decrypt(&k, op.mech, &buf, &op.context)?,
            OpKind::Encrypt if op.mech == CKM_RSA_PKCS_OAEP => Zeroizing::new(
                mech::oaep_encrypt_local(&k.material, op.oaep.unwrap_or(Hash::Sha1), &buf)?,
            ),
            OpKind::Encrypt => Zeroizing::new(svc.encrypt(&k, op.mech, &buf, &op.context)?),
            _ => return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED)),
        })
    }

    fn finish(&mut self, kind: OpKind, last: &[u8], out: Out) -> Result<usize> {
        let Some(mut op) = self.ops.take(kind) else {
            return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED));
        };
        let need = self.out_len(
            &op,
            kind,
            match &op.input {
                Input::Buffer(b) => b.len() + last.len(),
                Input::Hash(_) => last.len(),
            },
        );
        let Some(out) = out else {
            // A length query: answered from what we know, the operation stays active.
            self.ops.set(kind, op);
            return Ok(need);
        };
        if let Some(r) = op.result.take() {
            let r = deliver(&mut op, r, out);
            if matches!(&r, Err(e) if e.rv() == CKR_BUFFER_TOO_SMALL) {
                self.ops.set(kind, op);
            }
            return r;
        }
        let exact = matches!(kind, OpKind::Sign)
            || (kind == OpKind::Encrypt && op.mech == CKM_RSA_PKCS_OAEP);
        if exact && out.len() < need {
            self.ops.set(kind, op);
            return Err(Error::buffer_too_small(need));
        }
        let key = op.key.clone();
        let result = self.compute(&mut op, kind, last).map_err(|e| {
            let what = match kind {
                OpKind::Sign => "signing",
                OpKind::Decrypt => "decryption",
                OpKind::Encrypt => "encryption",
                _ => "the operation",
            };
            self.shared.op_failed(what, &key.label, e)
        })?;
        let r = deliver(&mut op, result, out);
        if matches!(&r, Err(e) if e.rv() == CKR_BUFFER_TOO_SMALL) {
            self.ops.set(kind, op);
        }
        r
    }

    /// A single-part call after an update ends the operation with an error (see
    /// [`OpKind::single_part_after_update`]).
    fn refuse_single_after_update(&mut self, kind: OpKind) -> Result<()> {
        if self.ops.get(kind).is_some_and(|op| op.updated) {
            self.ops.clear(kind);
            return Err(kind.single_part_after_update());
        }
        Ok(())
    }

    fn verify_all(&mut self, last: &[u8], signature: &[u8]) -> Result<()> {
        let Some(mut op) = self.ops.take(OpKind::Verify) else {
            return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED));
        };
        let (digest, buf) = take_input(&mut op, last);
        if is_hmac(op.mech) {
            let h = mech::mechanism_hash(op.mech).ok_or(Error::new(CKR_MECHANISM_INVALID))?;
            if signature.len() != h.len() {
                return Err(Error::new(CKR_SIGNATURE_LEN_RANGE));
            }
            return self
                .shared
                .service
                .verify_mac(&op.key, h, &buf, signature)
                .map_err(|e| self.shared.op_failed("MAC verification", &op.key.label, e));
        }
        let req = match digest {
            Some(d) => sign_request(&op, SignInput::Digest(d))?,
            None => sign_request(&op, SignInput::Raw(&buf))?,
        };
        mech::verify_local(&op.key.material, &req, signature)
    }
}

/// Fills `template` from one attribute function, by the rules of `C_GetAttributeValue`.
fn fill_all(
    template: &mut [CK_ATTRIBUTE],
    value: impl Fn(CK_ATTRIBUTE_TYPE) -> AttrValue,
) -> CK_RV {
    let mut rv = CKR_OK;
    for a in template.iter_mut() {
        let r = match value(a.type_) {
            AttrValue::Value(v) => fill_attr(a, &v),
            AttrValue::Sensitive => {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                CKR_ATTRIBUTE_SENSITIVE
            }
            AttrValue::Invalid => {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                CKR_ATTRIBUTE_TYPE_INVALID
            }
        };
        rv = crate::combine_attr_rv(rv, r);
    }
    rv
}

impl BackendSession for RemoteSession {
    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>> {
        let logged_in = self.logged_in();
        let mut out = Vec::new();
        // A search by label or id reads only the listed keys it may find.
        let wanted = |t: CK_ATTRIBUTE_TYPE| {
            template
                .raw()
                .iter()
                .find(|a| a.type_ == t)
                .map(|a| crate::attr_bytes(a).unwrap_or(&[]))
        };
        for (n, k) in self.shared.keys_for(wanted(CKA_LABEL), wanted(CKA_ID))? {
            for class in objects_of(&k) {
                let private = class == CLASS_PRIVATE || class == CLASS_SECRET;
                if private && !logged_in {
                    continue;
                }
                let matches = template.raw().iter().all(|a| {
                    let want = crate::attr_bytes(a).unwrap_or(&[]);
                    matches!(attribute(&self.shared.name, &k, class, a.type_), AttrValue::Value(v) if v == want)
                });
                if matches {
                    out.push((n << 2) | class);
                }
            }
        }
        // The CA certificates of certificates from Vault PKI (public objects).
        if let Some(pki) = &self.shared.pki {
            for (i, der) in pki.authorities() {
                let matches = template.raw().iter().all(|a| {
                    let want = crate::attr_bytes(a).unwrap_or(&[]);
                    matches!(super::authority_attribute(&self.shared.name, &der, a.type_), AttrValue::Value(v) if v == want)
                });
                if matches {
                    out.push(super::AUTHORITY | i as ObjRef);
                }
            }
        }
        Ok(out)
    }

    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV {
        if obj & super::AUTHORITY != 0 {
            let der = self
                .shared
                .pki
                .as_ref()
                .and_then(|p| p.authority((obj & !super::AUTHORITY) as usize));
            let Some(der) = der else {
                return CKR_OBJECT_HANDLE_INVALID;
            };
            return fill_all(template, |t| {
                super::authority_attribute(&self.shared.name, &der, t)
            });
        }
        let Ok((k, class)) = self.shared.key(obj) else {
            return CKR_OBJECT_HANDLE_INVALID;
        };
        let private = class == CLASS_PRIVATE || class == CLASS_SECRET;
        if private && !self.logged_in() {
            return CKR_OBJECT_HANDLE_INVALID;
        }
        fill_all(template, |t| attribute(&self.shared.name, &k, class, t))
    }

    fn object_size(&mut self, obj: ObjRef) -> Result<CK_ULONG> {
        self.shared.key(obj)?;
        Err(Error::new(CKR_INFORMATION_SENSITIVE))
    }

    /// `C_CreateObject`: only an X.509 certificate (token object) for one of the backend's key pairs, named by
    /// its `CKA_ID`; it must carry the key's public key, and is kept where every later process finds it.
    fn create_object(&mut self, t: Template) -> Result<ObjRef> {
        if t.ulong_value(CKA_CLASS)? != Some(CKO_CERTIFICATE) {
            return Err(Error::with(
                CKR_FUNCTION_NOT_SUPPORTED,
                format!(
                    "backend \"{}\" creates certificates of its keys only (keys: C_GenerateKeyPair / C_GenerateKey)",
                    self.shared.name
                ),
            ));
        }
        if !self.logged_in() {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        if let Some(ty) = t.ulong_value(CKA_CERTIFICATE_TYPE)? {
            if ty != CKC_X_509 {
                return Err(Error::with(
                    CKR_ATTRIBUTE_VALUE_INVALID,
                    "CKA_CERTIFICATE_TYPE: only CKC_X_509",
                ));
            }
        }
        if t.bool_value(CKA_TOKEN)? != Some(true) {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                "a certificate of a remote key is a token object (CKA_TOKEN true)",
            ));
        }
        let id = t.value(CKA_ID)?.ok_or_else(|| {
            Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                "CKA_ID names the key the certificate belongs to",
            )
        })?;
        let der = t.value(CKA_VALUE)?.ok_or_else(|| {
            Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                "CKA_VALUE holds the DER certificate",
            )
        })?;
        let key = self
            .shared
            .keys()?
            .into_iter()
            .map(|(_, k)| k)
            .find(|k| k.id == id && !k.material.is_secret())
            .ok_or_else(|| {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                Error::with(
                    CKR_ATTRIBUTE_VALUE_INVALID,
                    format!(
                        "no key pair of backend \"{}\" has CKA_ID {hex}",
                        self.shared.name
                    ),
                )
            })?;
        // Under the host cache's lock: no other process writes keys it read before the import after the file is
        // gone.
        let _lock = self.shared.host_lock();
        let cert = self.shared.service.import_certificate(&key, der)?;
        tracing::info!(backend = %self.shared.name, key = %key.name, "certificate imported");
        let r = self
            .shared
            .set_cert(&key.name, cert)
            .ok_or(Error::new(CKR_GENERAL_ERROR));
        self.shared.forget_host_cache();
        r
    }

    fn destroy_object(&mut self, obj: ObjRef) -> Result<()> {
        if obj & super::AUTHORITY != 0 {
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                "a CA certificate from Vault PKI goes with the certificates it issued",
            ));
        }
        let (k, class) = self.shared.key(obj)?;
        if !k.destroyable {
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                "allow_destroy is not set for this backend",
            ));
        }
        if !self.logged_in() {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        if class == CLASS_PUBLIC || class == super::CLASS_CERT {
            // The public half and the certificate go with the key; alone they cannot be removed.
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                "destroy the private key to delete a remote key",
            ));
        }
        self.shared
            .service
            .destroy(&k)
            .map_err(|e| self.shared.op_failed("deletion", &k.label, e))?;
        let _ = self.shared.refresh_now();
        Ok(())
    }

    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()> {
        let m = mech.mech_type();
        if !self.shared.mechanisms.contains(&m) {
            return Err(Error::new(CKR_MECHANISM_INVALID));
        }
        let Some(obj) = key else {
            // Digests are not offered by remote backends.
            return Err(Error::new(CKR_MECHANISM_INVALID));
        };
        let (k, class) = self
            .shared
            .key(obj)
            .map_err(|_| Error::new(CKR_KEY_HANDLE_INVALID))?;
        let private = class == CLASS_PRIVATE || class == CLASS_SECRET;
        if private && !self.logged_in() {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        if !k.mechanisms.contains(&m) {
            return Err(Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!("key {} does not do mechanism {m:#x}", k.label),
            ));
        }
        let u = k.usage;
        let allowed = match (kind, class) {
            (OpKind::Sign, CLASS_PRIVATE) | (OpKind::Sign, CLASS_SECRET) => u.sign,
            (OpKind::Verify, CLASS_PUBLIC) | (OpKind::Verify, CLASS_SECRET) => u.sign,
            (OpKind::Decrypt, CLASS_PRIVATE) => u.decrypt,
            (OpKind::Encrypt, CLASS_PUBLIC) => u.decrypt,
            (OpKind::Decrypt, CLASS_SECRET) | (OpKind::Encrypt, CLASS_SECRET) => u.encrypt,
            _ => false,
        };
        if !allowed {
            return Err(Error::new(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        let pss = match m {
            CKM_RSA_PKCS_PSS
            | CKM_SHA1_RSA_PKCS_PSS
            | CKM_SHA224_RSA_PKCS_PSS
            | CKM_SHA256_RSA_PKCS_PSS
            | CKM_SHA384_RSA_PKCS_PSS
            | CKM_SHA512_RSA_PKCS_PSS => Some(mech::pss_params(mech)?),
            _ => None,
        };
        let oaep = (m == CKM_RSA_PKCS_OAEP)
            .then(|| mech::oaep_params(mech))
            .transpose()?;
        self.shared.service.check_init(kind, &k, m, pss, oaep)?;
        let context =
            if m == vendor::CKM_P11BRIDGE_VAULT_ENCRYPT || m == vendor::CKM_P11BRIDGE_KMS_ENCRYPT {
                mech.param_bytes().to_vec()
            } else {
                Vec::new()
            };
        let input = match hashing(m) {
            Some(h) => Input::Hash(Box::new(Hasher::new(h))),
            None => Input::Buffer(Zeroizing::new(Vec::new())),
        };
        self.ops.set(
            kind,
            Op {
                mech: m,
                pss,
                oaep,
                context,
                key: k,
                input,
                result: None,
                updated: false,
            },
        );
        Ok(())
    }

    fn op_single(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        match kind {
            OpKind::Sign | OpKind::Encrypt | OpKind::Decrypt => {
                self.refuse_single_after_update(kind)?;
                self.finish(kind, input, out)
            }
            _ => Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED)),
        }
    }

    fn op_update(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        let op = self.op(kind)?;
        if op.result.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        op.updated = true;
        match &mut op.input {
            Input::Hash(h) => h.update(input),
            Input::Buffer(b) => b.extend_from_slice(input),
        }
        // Encryption and decryption by remote services are single-shot: output comes at Final.
        let _ = out;
        Ok(0)
    }

    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize> {
        match kind {
            OpKind::Sign | OpKind::Encrypt | OpKind::Decrypt => self.finish(kind, &[], out),
            _ => Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED)),
        }
    }

    fn verify(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        self.refuse_single_after_update(OpKind::Verify)?;
        self.verify_all(data, signature)
    }

    fn verify_final(&mut self, signature: &[u8]) -> Result<()> {
        self.verify_all(&[], signature)
    }

    fn op_cancel(&mut self, kind: OpKind) -> Result<()> {
        self.ops.clear(kind);
        Ok(())
    }

    fn generate_key_pair(
        &mut self,
        mech: &Mechanism,
        public: Template,
        private: Template,
    ) -> Result<(ObjRef, ObjRef)> {
        let material = match mech.mech_type() {
            CKM_RSA_PKCS_KEY_PAIR_GEN => GenerateKind::Rsa {
                bits: public
                    .ulong_value(CKA_MODULUS_BITS)?
                    .ok_or(Error::new(CKR_TEMPLATE_INCOMPLETE))? as usize,
            },
            CKM_EC_KEY_PAIR_GEN => {
                let p = public
                    .value(CKA_EC_PARAMS)?
                    .ok_or(Error::new(CKR_TEMPLATE_INCOMPLETE))?;
                GenerateKind::Ec {
                    curve: Curve::from_params(p).ok_or(Error::new(CKR_CURVE_NOT_SUPPORTED))?,
                }
            }
            CKM_EC_EDWARDS_KEY_PAIR_GEN => {
                // RFC 8410 OID, or the printable string "edwards25519" some tools send.
                match public.value(CKA_EC_PARAMS)? {
                    None => {}
                    Some(p) if p == ED25519_PARAMS || p == b"\x13\x0cedwards25519" => {}
                    Some(_) => return Err(Error::new(CKR_CURVE_NOT_SUPPORTED)),
                }
                GenerateKind::Ed25519
            }
            _ => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        let sign = private.bool_value(CKA_SIGN)?.unwrap_or(true);
        let decrypt = private.bool_value(CKA_DECRYPT)?.unwrap_or(false);
        let name = self.create(material, &[private, public], sign, decrypt)?;
        let r = |class| {
            self.shared
                .obj_ref(&name, class)
                .ok_or(Error::new(CKR_GENERAL_ERROR))
        };
        Ok((r(CLASS_PUBLIC)?, r(CLASS_PRIVATE)?))
    }

    fn generate_key(&mut self, mech: &Mechanism, template: Template) -> Result<ObjRef> {
        let bytes = template.ulong_value(CKA_VALUE_LEN)?;
        let material = match mech.mech_type() {
            CKM_AES_KEY_GEN => GenerateKind::Aes {
                bits: bytes.ok_or(Error::new(CKR_TEMPLATE_INCOMPLETE))? as usize * 8,
            },
            CKM_GENERIC_SECRET_KEY_GEN => GenerateKind::Hmac {
                bits: bytes.unwrap_or(32) as usize * 8,
            },
            _ => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        let name = self.create(material, &[template], true, false)?;
        self.shared
            .obj_ref(&name, CLASS_SECRET)
            .ok_or(Error::new(CKR_GENERAL_ERROR))
    }

    fn wrap_value(
        &mut self,
        mech: &Mechanism,
        wrapping: ObjRef,
        value: &[u8],
        out: Out,
    ) -> Result<usize> {
        let k = self.envelope_key(mech, wrapping, CKR_WRAPPING_KEY_HANDLE_INVALID)?;
        let need = self
            .shared
            .service
            .encrypt_len(&k, mech.mech_type(), value.len());
        let Some(out) = out else {
            return Ok(need);
        };
        if out.len() < need {
            return Err(Error::buffer_too_small(need));
        }
        let ct = self
            .shared
            .service
            .encrypt(&k, mech.mech_type(), value, mech.param_bytes())?;
        if ct.len() > out.len() {
            return Err(Error::buffer_too_small(ct.len()));
        }
        out[..ct.len()].copy_from_slice(&ct);
        Ok(ct.len())
    }

    fn unwrap_value(
        &mut self,
        mech: &Mechanism,
        unwrapping: ObjRef,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let k = self.envelope_key(mech, unwrapping, CKR_UNWRAPPING_KEY_HANDLE_INVALID)?;
        self.shared
            .service
            .decrypt(&k, mech.mech_type(), wrapped, mech.param_bytes())
            .map_err(|e| match e.rv() {
                CKR_ENCRYPTED_DATA_INVALID => Error::with(
                    CKR_WRAPPED_KEY_INVALID,
                    e.cause().unwrap_or("not a wrapped key").to_string(),
                ),
                _ => e,
            })
    }

    fn generate_random(&mut self, out: &mut [u8]) -> Result<()> {
        let r = self.shared.service.random(out.len())?;
        if r.len() != out.len() {
            return Err(Error::new(CKR_DEVICE_ERROR));
        }
        out.copy_from_slice(&r);
        Ok(())
    }
}

impl RemoteSession {
    /// The secret key that wraps or unwraps with the service's own encryption mechanism.
    fn envelope_key(
        &self,
        mech: &Mechanism,
        obj: ObjRef,
        invalid: CK_RV,
    ) -> Result<Arc<RemoteKey>> {
        let m = mech.mech_type();
        if m != vendor::CKM_P11BRIDGE_VAULT_ENCRYPT && m != vendor::CKM_P11BRIDGE_KMS_ENCRYPT {
            return Err(Error::new(CKR_MECHANISM_INVALID));
        }
        let (k, class) = self.shared.key(obj).map_err(|_| Error::new(invalid))?;
        if !self.logged_in() {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        if class != CLASS_SECRET || !k.mechanisms.contains(&m) {
            return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT));
        }
        if !k.usage.encrypt {
            return Err(Error::new(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        Ok(k)
    }

    /// Creates a key in the service from PKCS#11 templates (always a token object, never extractable), and reads
    /// the keys again so that its objects exist.
    fn create(
        &mut self,
        material: GenerateKind,
        templates: &[Template],
        sign: bool,
        decrypt: bool,
    ) -> Result<String> {
        if !self.logged_in() {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        for t in templates {
            if t.bool_value(CKA_TOKEN)? == Some(false) {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    "remote keys are token objects (CKA_TOKEN must not be false)",
                ));
            }
            if t.bool_value(CKA_EXTRACTABLE)? == Some(true) {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    "remote keys are never extractable",
                ));
            }
        }
        let label = templates
            .iter()
            .find_map(|t| t.value(CKA_LABEL).ok().flatten())
            .ok_or_else(|| {
                Error::with(
                    CKR_TEMPLATE_INCOMPLETE,
                    "CKA_LABEL names the new remote key",
                )
            })?;
        let spec = GenerateSpec {
            label: String::from_utf8_lossy(label).into_owned(),
            material,
            sign,
            decrypt,
        };
        let name = self
            .shared
            .service
            .generate(&spec)
            .map_err(|e| self.shared.op_failed("creation", &spec.label, e))?;
        self.shared.refresh_now()?;
        Ok(name)
    }
}
