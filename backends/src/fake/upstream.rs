//! `kind = "test-fake-pkcs11"`: an in-memory token at the `Backend`/`Token`/`BackendSession` level, standing in for
//! an upstream PKCS#11 module (options: see [`super`]). It holds objects made through it (session objects end
//! with their session), keeps its own login state with user and SO PINs (mirror slots pass `C_Login` through to
//! it), and runs `CKM_SHA256` digests and `CKM_SHA256_HMAC` signatures in software with the spec's two-call
//! convention. Mechanisms: `CKM_SHA256`, `CKM_SHA256_HMAC`, `CKM_AES_KEY_GEN`, `CKM_GENERIC_SECRET_KEY_GEN`.

use super::{Script, ScriptConfig};
use crate::{
    fill_attr, Backend, BackendSession, Error, Mechanism, ObjRef, OpKind, Out, Result, Template,
    Token,
};
use cryptoki_sys::*;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The operations a script can name for this kind.
const OPS: &[&str] = &[
    "login",
    "open_session",
    "find",
    "get_attribute",
    "create",
    "generate",
    "destroy",
    "digest",
    "sign",
    "verify",
];

const MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_SHA256,
    CKM_SHA256_HMAC,
    CKM_AES_KEY_GEN,
    CKM_GENERIC_SECRET_KEY_GEN,
];

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[allow(dead_code)]
    kind: String,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default = "default_user_pin")]
    user_pin: String,
    #[serde(default = "default_so_pin")]
    so_pin: String,
    #[serde(default)]
    secret_keys: Vec<SecretKeyConfig>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SecretKeyConfig {
    label: String,
    #[serde(default = "default_bytes")]
    bytes: usize,
    #[serde(default)]
    extractable: bool,
    #[serde(default = "yes")]
    sensitive: bool,
}

fn default_label() -> String {
    "fake-upstream".into()
}
fn default_user_pin() -> String {
    "1234".into()
}
fn default_so_pin() -> String {
    "12345678".into()
}
fn default_bytes() -> usize {
    32
}
fn yes() -> bool {
    true
}

/// One object: its attributes, and the session that owns it if it is a session object.
struct Object {
    attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
    owner: Option<u64>,
}

impl Object {
    fn flag(&self, t: CK_ATTRIBUTE_TYPE) -> bool {
        self.attrs
            .get(&t)
            .is_some_and(|v| v.first() == Some(&CK_TRUE))
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<ObjRef, Object>,
    next_object: ObjRef,
    next_session: u64,
    user: Option<CK_USER_TYPE>,
    ro_sessions: usize,
}

impl State {
    /// The object behind `obj` if this token's login state shows it (private objects only to a user login).
    fn visible(&self, obj: ObjRef) -> Option<&Object> {
        self.objects
            .get(&obj)
            .filter(|o| !o.flag(CKA_PRIVATE) || self.user == Some(CKU_USER))
    }
}

struct Shared {
    label: String,
    user_pin: Zeroizing<String>,
    so_pin: Zeroizing<String>,
    script: Arc<Script>,
    state: Mutex<State>,
}

impl Shared {
    fn add(&self, attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, owner: Option<u64>) -> ObjRef {
        let mut st = self.state.lock();
        st.next_object += 1;
        let h = st.next_object;
        st.objects.insert(h, Object { attrs, owner });
        h
    }
}

fn ul(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn b(v: bool) -> Vec<u8> {
    vec![if v { CK_TRUE } else { CK_FALSE }]
}

/// The attributes of a new secret key with these defaults, the template's values winning.
fn secret_key_attrs(
    key_type: CK_KEY_TYPE,
    value: &[u8],
    template: Template,
) -> Result<BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>> {
    let mut attrs = BTreeMap::from([
        (CKA_CLASS, ul(CKO_SECRET_KEY)),
        (CKA_KEY_TYPE, ul(key_type)),
        (CKA_TOKEN, b(false)),
        (CKA_PRIVATE, b(true)),
        (CKA_SENSITIVE, b(false)),
        (CKA_EXTRACTABLE, b(true)),
        (CKA_SIGN, b(true)),
        (CKA_VERIFY, b(true)),
        (CKA_LABEL, vec![]),
        (CKA_ID, vec![]),
    ]);
    for a in template.raw() {
        attrs.insert(a.type_, crate::attr_bytes(a)?.to_vec());
    }
    attrs.insert(CKA_VALUE, value.to_vec());
    attrs.insert(CKA_VALUE_LEN, ul(value.len() as CK_ULONG));
    Ok(attrs)
}

/// The fake upstream backend.
pub struct FakeUpstream {
    name: String,
    token: Arc<FakeToken>,
}

/// Builds `kind = "test-fake-pkcs11"` from its section.
pub fn build(name: &str, section: &toml::Table) -> Result<FakeUpstream> {
    let mut section = section.clone();
    let script = ScriptConfig::take_from(name, &mut section)?.install(name, OPS)?;
    let cfg: Config = crate::parse_section(name, &section)?;
    let shared = Arc::new(Shared {
        label: cfg.label,
        user_pin: Zeroizing::new(cfg.user_pin),
        so_pin: Zeroizing::new(cfg.so_pin),
        script,
        state: Mutex::new(State::default()),
    });
    for k in &cfg.secret_keys {
        let value = Sha256::digest(format!("p11bridge fake upstream key: {}", k.label));
        let value: Vec<u8> = value.iter().cycle().take(k.bytes).copied().collect();
        let mut attrs = secret_key_attrs(CKK_AES, &value, Template::null())?;
        attrs.insert(CKA_LABEL, k.label.as_bytes().to_vec());
        attrs.insert(CKA_TOKEN, b(true));
        attrs.insert(CKA_EXTRACTABLE, b(k.extractable));
        attrs.insert(CKA_SENSITIVE, b(k.sensitive));
        shared.add(attrs, None);
    }
    Ok(FakeUpstream {
        name: name.to_string(),
        token: Arc::new(FakeToken(shared)),
    })
}

impl Backend for FakeUpstream {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "test-fake-pkcs11"
    }
    fn token(&self) -> Result<Arc<dyn Token>> {
        Ok(self.token.clone())
    }
    fn mirror_tokens(&self) -> Result<Vec<Arc<dyn Token>>> {
        Ok(vec![self.token.clone()])
    }
    fn finalize(&self) {}
}

struct FakeToken(Arc<Shared>);

impl Token for FakeToken {
    fn slot_info(&self) -> Result<CK_SLOT_INFO> {
        Ok(super::slot_info("fake upstream slot"))
    }
    fn token_info(&self) -> Result<CK_TOKEN_INFO> {
        let mut ti = super::token_info(
            &self.0.label,
            "test-fake-pkcs11",
            CKF_TOKEN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED,
        );
        ti.ulMaxPinLen = 64;
        ti.ulMinPinLen = 4;
        Ok(ti)
    }
    fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>> {
        Ok(MECHANISMS.to_vec())
    }
    fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        let flags = match mech {
            CKM_SHA256 => CKF_DIGEST,
            CKM_SHA256_HMAC => CKF_SIGN | CKF_VERIFY,
            CKM_AES_KEY_GEN | CKM_GENERIC_SECRET_KEY_GEN => CKF_GENERATE,
            _ => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        Ok(CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 64,
            flags,
        })
    }
    fn login_configured(&self, user: CK_USER_TYPE) -> Result<()> {
        self.0.script.enter("login")?;
        self.0.state.lock().user = Some(user);
        Ok(())
    }
    fn logout_configured(&self) -> Result<()> {
        self.0.state.lock().user = None;
        Ok(())
    }
    fn open_session(&self, rw: bool) -> Result<Box<dyn BackendSession>> {
        self.0.script.enter("open_session")?;
        let mut st = self.0.state.lock();
        st.next_session += 1;
        if !rw {
            st.ro_sessions += 1;
        }
        Ok(Box::new(FakeSession {
            shared: self.0.clone(),
            id: st.next_session,
            rw,
            ops: BTreeMap::new(),
        }))
    }
}

/// An active digest or HMAC operation.
struct ActiveOp {
    key: Option<Zeroizing<Vec<u8>>>,
    data: Zeroizing<Vec<u8>>,
}

struct FakeSession {
    shared: Arc<Shared>,
    id: u64,
    rw: bool,
    ops: BTreeMap<u8, ActiveOp>,
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.objects.retain(|_, o| o.owner != Some(self.id));
        if !self.rw {
            st.ro_sessions = st.ro_sessions.saturating_sub(1);
        }
    }
}

impl FakeSession {
    /// Stores a new object made from `attrs` (a session object unless `CKA_TOKEN` is true).
    fn store(&self, attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>) -> Result<ObjRef> {
        let token = attrs
            .get(&CKA_TOKEN)
            .is_some_and(|v| v.first() == Some(&CK_TRUE));
        let private = attrs
            .get(&CKA_PRIVATE)
            .is_some_and(|v| v.first() == Some(&CK_TRUE));
        if token && !self.rw {
            return Err(Error::new(CKR_SESSION_READ_ONLY));
        }
        if private && self.shared.state.lock().user != Some(CKU_USER) {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        Ok(self.shared.add(attrs, (!token).then_some(self.id)))
    }

    /// Runs the digest or HMAC over everything given: the result, 32 bytes.
    fn compute(op: &ActiveOp) -> Result<Vec<u8>> {
        use hmac::Mac;
        match &op.key {
            None => Ok(Sha256::digest(&*op.data).to_vec()),
            Some(k) => {
                let mut m = <hmac::SimpleHmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(k)
                    .map_err(|_| Error::new(CKR_KEY_SIZE_RANGE))?;
                m.update(&op.data);
                Ok(m.finalize().into_bytes().to_vec())
            }
        }
    }

    /// Ends (or, for a length query or a short buffer, keeps) an operation with its whole input.
    fn finish(&mut self, kind: OpKind, last: &[u8], out: Out) -> Result<usize> {
        let k = kind as u8;
        let op = self
            .ops
            .get_mut(&k)
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        let Some(out) = out else {
            return Ok(32);
        };
        if out.len() < 32 {
            return Err(Error::buffer_too_small(32));
        }
        op.data.extend_from_slice(last);
        let r = Self::compute(op);
        self.ops.remove(&k);
        let r = r?;
        out[..32].copy_from_slice(&r);
        Ok(32)
    }

    fn op_name(kind: OpKind) -> &'static str {
        match kind {
            OpKind::Digest => "digest",
            OpKind::Verify => "verify",
            _ => "sign",
        }
    }
}

impl BackendSession for FakeSession {
    fn login(&mut self, user: CK_USER_TYPE, pin: Option<&[u8]>) -> Result<()> {
        self.shared.script.enter("login")?;
        let mut st = self.shared.state.lock();
        let expected = match user {
            CKU_USER => &self.shared.user_pin,
            CKU_SO => &self.shared.so_pin,
            CKU_CONTEXT_SPECIFIC if st.user.is_some() => return Ok(()),
            CKU_CONTEXT_SPECIFIC => return Err(Error::new(CKR_USER_NOT_LOGGED_IN)),
            _ => return Err(Error::new(CKR_USER_TYPE_INVALID)),
        };
        match st.user {
            Some(u) if u == user => return Err(Error::new(CKR_USER_ALREADY_LOGGED_IN)),
            Some(_) => return Err(Error::new(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
            None => {}
        }
        if user == CKU_SO && st.ro_sessions > 0 {
            return Err(Error::new(CKR_SESSION_READ_ONLY_EXISTS));
        }
        if pin != Some(expected.as_bytes()) {
            return Err(Error::new(CKR_PIN_INCORRECT));
        }
        st.user = Some(user);
        Ok(())
    }

    fn logout(&mut self) -> Result<()> {
        let mut st = self.shared.state.lock();
        st.user
            .take()
            .map(|_| ())
            .ok_or(Error::new(CKR_USER_NOT_LOGGED_IN))
    }

    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>> {
        self.shared.script.enter("find")?;
        let want: Vec<(CK_ATTRIBUTE_TYPE, &[u8])> = template
            .raw()
            .iter()
            .map(|a| Ok((a.type_, crate::attr_bytes(a)?)))
            .collect::<Result<_>>()?;
        let st = self.shared.state.lock();
        let matches = |o: &Object| {
            want.iter()
                .all(|(t, v)| o.attrs.get(t).map(Vec::as_slice) == Some(*v))
        };
        Ok(st
            .objects
            .keys()
            .copied()
            .filter(|h| st.visible(*h).is_some_and(matches))
            .collect())
    }

    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV {
        if let Err(e) = self.shared.script.enter("get_attribute") {
            return e.rv();
        }
        let st = self.shared.state.lock();
        let Some(o) = st.visible(obj) else {
            return CKR_OBJECT_HANDLE_INVALID;
        };
        let hidden = o.flag(CKA_SENSITIVE) || !o.flag(CKA_EXTRACTABLE);
        let mut rv = CKR_OK;
        for a in template.iter_mut() {
            let r = match o.attrs.get(&a.type_) {
                Some(_) if a.type_ == CKA_VALUE && hidden => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    CKR_ATTRIBUTE_SENSITIVE
                }
                Some(v) => fill_attr(a, v),
                None => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    CKR_ATTRIBUTE_TYPE_INVALID
                }
            };
            rv = crate::combine_attr_rv(rv, r);
        }
        rv
    }

    fn create_object(&mut self, template: Template) -> Result<ObjRef> {
        self.shared.script.enter("create")?;
        let class = template
            .ulong_value(CKA_CLASS)?
            .ok_or(Error::new(CKR_TEMPLATE_INCOMPLETE))?;
        let attrs = if class == CKO_SECRET_KEY {
            let value = template
                .value(CKA_VALUE)?
                .ok_or(Error::new(CKR_TEMPLATE_INCOMPLETE))?;
            let key_type = template
                .ulong_value(CKA_KEY_TYPE)?
                .unwrap_or(CKK_GENERIC_SECRET);
            secret_key_attrs(key_type, value, template)?
        } else {
            let mut attrs = BTreeMap::from([(CKA_TOKEN, b(false)), (CKA_PRIVATE, b(false))]);
            for a in template.raw() {
                attrs.insert(a.type_, crate::attr_bytes(a)?.to_vec());
            }
            attrs
        };
        self.store(attrs)
    }

    fn destroy_object(&mut self, obj: ObjRef) -> Result<()> {
        self.shared.script.enter("destroy")?;
        let token = {
            let st = self.shared.state.lock();
            st.visible(obj)
                .ok_or(Error::new(CKR_OBJECT_HANDLE_INVALID))?
                .flag(CKA_TOKEN)
        };
        if token && !self.rw {
            return Err(Error::new(CKR_SESSION_READ_ONLY));
        }
        self.shared.state.lock().objects.remove(&obj);
        Ok(())
    }

    fn generate_key(&mut self, mech: &Mechanism, template: Template) -> Result<ObjRef> {
        self.shared.script.enter("generate")?;
        let key_type = match mech.mech_type() {
            CKM_AES_KEY_GEN => CKK_AES,
            CKM_GENERIC_SECRET_KEY_GEN => CKK_GENERIC_SECRET,
            _ => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        let len = template
            .ulong_value(CKA_VALUE_LEN)?
            .ok_or(Error::new(CKR_TEMPLATE_INCOMPLETE))? as usize;
        if key_type == CKK_AES && ![16, 24, 32].contains(&len) || len == 0 || len > 64 {
            return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        let mut value = Zeroizing::new(vec![0u8; len]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut value);
        let attrs = secret_key_attrs(key_type, &value, template)?;
        self.store(attrs)
    }

    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()> {
        if self.ops.contains_key(&(kind as u8)) {
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        let op = match (kind, mech.mech_type(), key) {
            (OpKind::Digest, CKM_SHA256, None) => ActiveOp {
                key: None,
                data: Zeroizing::new(Vec::new()),
            },
            (OpKind::Sign | OpKind::Verify, CKM_SHA256_HMAC, Some(k)) => {
                let st = self.shared.state.lock();
                let o = st.visible(k).ok_or(Error::new(CKR_KEY_HANDLE_INVALID))?;
                let allowed = if kind == OpKind::Sign {
                    CKA_SIGN
                } else {
                    CKA_VERIFY
                };
                if !o.flag(allowed) {
                    return Err(Error::new(CKR_KEY_FUNCTION_NOT_PERMITTED));
                }
                let value = o
                    .attrs
                    .get(&CKA_VALUE)
                    .ok_or(Error::new(CKR_KEY_TYPE_INCONSISTENT))?;
                ActiveOp {
                    key: Some(Zeroizing::new(value.clone())),
                    data: Zeroizing::new(Vec::new()),
                }
            }
            _ => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        self.ops.insert(kind as u8, op);
        Ok(())
    }

    fn op_single(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        let r = self.shared.script.enter(Self::op_name(kind));
        if let Err(e) = r {
            self.ops.remove(&(kind as u8));
            return Err(e);
        }
        self.finish(kind, input, out)
    }

    fn op_update(&mut self, kind: OpKind, input: &[u8], _out: Out) -> Result<usize> {
        let op = self
            .ops
            .get_mut(&(kind as u8))
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        op.data.extend_from_slice(input);
        Ok(0)
    }

    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize> {
        self.op_single(kind, &[], out)
    }

    fn verify(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        let mut op = self
            .ops
            .remove(&(OpKind::Verify as u8))
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        self.shared.script.enter("verify")?;
        op.data.extend_from_slice(data);
        let expected = Self::compute(&op)?;
        if signature.len() != expected.len() {
            return Err(Error::new(CKR_SIGNATURE_LEN_RANGE));
        }
        let same = expected
            .iter()
            .zip(signature)
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
        same.then_some(()).ok_or(Error::new(CKR_SIGNATURE_INVALID))
    }

    fn verify_final(&mut self, signature: &[u8]) -> Result<()> {
        self.verify(&[], signature)
    }

    fn op_cancel(&mut self, kind: OpKind) -> Result<()> {
        self.ops.remove(&(kind as u8));
        Ok(())
    }
}
