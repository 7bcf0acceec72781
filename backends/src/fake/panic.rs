//! `kind = "test-panic"`: a backend for tests only, whose one key panics inside the operations its configuration
//! names. It proves panic containment: the caller gets `CKR_GENERAL_ERROR`, the process lives on, and the module
//! stays usable (see `tests/tests/panic.rs`).
//!
//! Compiled in and accepted under the same two gates as the other fakes (see [`super`]).
//!
//! ```toml
//! [backend.boom]
//! kind = "test-panic"
//! label = "panic-key"          # CKA_LABEL of its one key (a CKK_EC private key that signs with CKM_ECDSA)
//! panic_in = ["sign_init", "sign", "verify_init", "verify", "find", "get_attribute", "login", "open_session"]
//! ```
//! `find` panics for a search whose template asks for its label (other searches pass it by), `get_attribute` and
//! the operations for its key, `login` in the unified token's login of its members, `open_session` when a bridge
//! session first uses it.

use super::{Script, ScriptConfig};
use crate::{
    fill_attr, Backend, BackendSession, Error, Mechanism, ObjRef, OpKind, Out, Result, Template,
    Token,
};
use cryptoki_sys::*;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[allow(dead_code)]
    kind: String,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default)]
    panic_in: Vec<String>,
}

fn default_label() -> String {
    "panic-key".into()
}

const OPS: &[&str] = &[
    "sign_init",
    "sign",
    "verify_init",
    "verify",
    "find",
    "get_attribute",
    "login",
    "open_session",
];

struct Shared {
    label: String,
    /// Only panics are configured (no `fail`): `enter` panics or succeeds.
    script: Arc<Script>,
}

impl Shared {
    fn maybe_panic(&self, op: &str) {
        // Never an error: this kind's configuration has no `fail` key.
        let _ = self.script.enter(op);
    }
}

pub struct PanicBackend {
    name: String,
    shared: Arc<Shared>,
}

impl PanicBackend {
    pub fn from_config(name: &str, section: &toml::Table) -> Result<Self> {
        let cfg: Config = crate::parse_section(name, section)?;
        let script = ScriptConfig::panicking_in(cfg.panic_in).install(name, OPS)?;
        Ok(PanicBackend {
            name: name.to_string(),
            shared: Arc::new(Shared {
                label: cfg.label,
                script,
            }),
        })
    }
}

impl Backend for PanicBackend {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "test-panic"
    }
    fn token(&self) -> Result<Arc<dyn Token>> {
        Ok(Arc::new(PanicToken(self.shared.clone())))
    }
    fn finalize(&self) {}
}

struct PanicToken(Arc<Shared>);

impl Token for PanicToken {
    fn slot_info(&self) -> Result<CK_SLOT_INFO> {
        Ok(super::slot_info("test-panic"))
    }
    fn token_info(&self) -> Result<CK_TOKEN_INFO> {
        Ok(super::token_info(
            "test-panic",
            "test-panic",
            CKF_TOKEN_INITIALIZED,
        ))
    }
    fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>> {
        Ok(vec![CKM_ECDSA])
    }
    fn mechanism_info(&self, _mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        Ok(CK_MECHANISM_INFO {
            ulMinKeySize: 256,
            ulMaxKeySize: 256,
            flags: CKF_SIGN | CKF_VERIFY,
        })
    }
    fn login_configured(&self, _user: CK_USER_TYPE) -> Result<()> {
        self.0.maybe_panic("login");
        Ok(())
    }
    fn logout_configured(&self) -> Result<()> {
        Ok(())
    }
    fn open_session(&self, _rw: bool) -> Result<Box<dyn BackendSession>> {
        self.0.maybe_panic("open_session");
        Ok(Box::new(PanicSession {
            shared: self.0.clone(),
            op: None,
        }))
    }
}

/// The one object's handle.
const KEY: ObjRef = 1;

struct PanicSession {
    shared: Arc<Shared>,
    op: Option<OpKind>,
}

impl PanicSession {
    fn attr(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
        Some(match ty {
            CKA_CLASS => CKO_PRIVATE_KEY.to_ne_bytes().to_vec(),
            CKA_KEY_TYPE => CKK_EC.to_ne_bytes().to_vec(),
            CKA_LABEL => self.shared.label.as_bytes().to_vec(),
            CKA_SIGN | CKA_TOKEN => vec![CK_TRUE],
            CKA_PRIVATE => vec![CK_FALSE],
            _ => return None,
        })
    }
    fn key(&self, obj: ObjRef) -> Result<()> {
        if obj == KEY {
            Ok(())
        } else {
            Err(Error::new(CKR_OBJECT_HANDLE_INVALID))
        }
    }
}

impl BackendSession for PanicSession {
    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>> {
        if template.value(CKA_LABEL)? == Some(self.shared.label.as_bytes()) {
            self.shared.maybe_panic("find");
        }
        for a in template.raw() {
            let want = crate::attr_bytes(a)?;
            if self.attr(a.type_).as_deref() != Some(want) {
                return Ok(vec![]);
            }
        }
        Ok(vec![KEY])
    }
    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV {
        if obj != KEY {
            return CKR_OBJECT_HANDLE_INVALID;
        }
        self.shared.maybe_panic("get_attribute");
        let mut rv = CKR_OK;
        for a in template.iter_mut() {
            let r = match self.attr(a.type_) {
                Some(v) => fill_attr(a, &v),
                None => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    CKR_ATTRIBUTE_TYPE_INVALID
                }
            };
            rv = crate::combine_attr_rv(rv, r);
        }
        rv
    }
    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()> {
        self.key(key.unwrap_or(0))
            .map_err(|_| Error::new(CKR_KEY_HANDLE_INVALID))?;
        if mech.mech_type() != CKM_ECDSA {
            return Err(Error::new(CKR_MECHANISM_INVALID));
        }
        match kind {
            OpKind::Sign => self.shared.maybe_panic("sign_init"),
            OpKind::Verify => self.shared.maybe_panic("verify_init"),
            _ => return Err(Error::new(CKR_KEY_FUNCTION_NOT_PERMITTED)),
        }
        if self.op.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        self.op = Some(kind);
        Ok(())
    }
    fn op_single(&mut self, kind: OpKind, _input: &[u8], out: Out) -> Result<usize> {
        if self.op != Some(kind) {
            return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED));
        }
        self.shared.maybe_panic("sign");
        match out {
            None => Ok(64),
            Some(b) if b.len() < 64 => Err(Error::buffer_too_small(64)),
            Some(b) => {
                b[..64].fill(0x5a);
                self.op = None;
                Ok(64)
            }
        }
    }
    fn op_update(&mut self, kind: OpKind, input: &[u8], _out: Out) -> Result<usize> {
        self.op_single(kind, input, None).map(|_| 0)
    }
    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize> {
        self.op_single(kind, &[], out)
    }
    fn verify(&mut self, _data: &[u8], _signature: &[u8]) -> Result<()> {
        self.op = None;
        self.shared.maybe_panic("verify");
        Err(Error::new(CKR_SIGNATURE_INVALID))
    }
    fn verify_final(&mut self, signature: &[u8]) -> Result<()> {
        self.verify(&[], signature)
    }
    fn op_cancel(&mut self, _kind: OpKind) -> Result<()> {
        self.op = None;
        Ok(())
    }
}
