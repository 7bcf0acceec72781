//! p11bridge backends: the one trait the token core talks to, and its implementations.
//!
//! The core sees a [`Backend`] (one per `[backend.NAME]` config section), which offers [`Token`]s (the view the
//! unified slot uses, and for upstream modules one token per upstream slot for mirror slots), which open
//! [`BackendSession`]s. Every method maps onto a PKCS#11 function; semantics, including return codes and the
//! two-call output-buffer convention, are the spec's.

// `up!` calls upstream functions with plain argument expressions (pointers and integers we computed).
#![allow(clippy::macro_metavars_in_unsafe)]

pub mod batch;
pub mod diag;
pub mod digest;
pub mod error;
pub mod health;
pub mod kms;
pub mod pidlock;
pub mod pkcs11;
pub mod pki;
pub mod remote;
pub mod runtime;
pub mod secret;
// Test-only backends (`kind = "test-panic"`, `"test-fake"`, `"test-fake-pkcs11"`): compiled in only with the
// `test-backends` feature, which test builds enable and the Debian package does not.
#[cfg(feature = "test-backends")]
pub mod fake;
pub mod types;
pub mod vault;
pub mod vendor;

pub use error::{rv_name, Error, Result};
pub use pkcs11::ha::{ha_groups, ha_members};
pub use secret::{Secret, SecretRef};
pub use types::*;

use cryptoki_sys::*;
use std::sync::Arc;

/// A configured backend (one `[backend.NAME]` section).
pub trait Backend: Send + Sync {
    /// The name of its config section.
    fn name(&self) -> &str;
    /// The `kind` it was built from (`pkcs11`, `pkcs11-ha`, `aws-kms`, `vault-transit`).
    fn kind(&self) -> &'static str;
    /// The token this backend contributes to a unified slot.
    fn token(&self) -> Result<Arc<dyn Token>>;
    /// One token per upstream slot, for `mirror = "NAME"` slots. Backends that are not PKCS#11 modules return
    /// `CKR_FUNCTION_NOT_SUPPORTED`.
    fn mirror_tokens(&self) -> Result<Vec<Arc<dyn Token>>> {
        Err(Error::with(
            CKR_FUNCTION_NOT_SUPPORTED,
            "only pkcs11 backends can be mirrored",
        ))
    }
    /// The upstream library's `C_GetInfo` (pkcs11 backends), for `library_info = "upstream"`.
    fn library_info(&self) -> Result<CK_INFO> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// Releases everything (called from `C_Finalize`, after every session is closed).
    fn finalize(&self);
}

/// One token as a backend sees it.
pub trait Token: Send + Sync {
    /// Slot description and flags (mirror slots pass the upstream's through).
    fn slot_info(&self) -> Result<CK_SLOT_INFO>;
    /// Token information (mirror slots pass the upstream's through; the unified slot builds its own).
    fn token_info(&self) -> Result<CK_TOKEN_INFO>;
    fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>>;
    fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO>;
    /// `C_InitToken`, passed through (mirror slots only).
    fn init_token(&self, _so_pin: Option<&[u8]>, _label: &[u8; 32]) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// Logs the backend in with the credentials of its configuration (unified slots: after the bridge checked the
    /// caller's PIN). `CKU_USER` or `CKU_SO`.
    fn login_configured(&self, user: CK_USER_TYPE) -> Result<()>;
    /// Ends the login made by [`Token::login_configured`].
    fn logout_configured(&self) -> Result<()>;
    /// Opens a session on this token.
    fn open_session(&self, rw: bool) -> Result<Box<dyn BackendSession>>;
    /// Whether the token has a random number generator.
    fn has_rng(&self) -> bool {
        false
    }
    /// Where this token lives, for people: module path and upstream token, URL(s), region(s).
    fn endpoint(&self) -> String {
        String::new()
    }
    /// `p11bridge check`: logs in with the configured credentials, reads every object, and says what failed in the
    /// backend's own words. Makes network calls; never called by a PKCS#11 function.
    fn check(&self) -> CheckReport {
        default_check(self)
    }
}

/// What `p11bridge check` reports for one backend of one token (`C_P11BRIDGE_Check`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Where the backend is (module and token, URL(s), region(s)).
    pub endpoint: String,
    /// `"ok"`, `"not configured"` (no credentials to log in with), or the failure in the backend's words.
    pub login: String,
    /// Objects found, and how many of them are private and secret keys.
    pub objects: usize,
    pub private_keys: usize,
    pub secret_keys: usize,
    /// Keys named in the configuration (`keys = [...]`) that were found and that were not.
    pub keys_found: Vec<String>,
    pub keys_missing: Vec<String>,
    /// Every failure, in the backend's own words; empty when all is well.
    pub problems: Vec<String>,
    /// How long the check of this backend took.
    pub latency_ms: f64,
    /// Certificates from Vault PKI (`pki = {...}`): one per selected key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pki: Vec<PkiStatus>,
}

/// One key's certificate from Vault PKI, for `p11bridge check`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PkiStatus {
    /// The key's label.
    pub key: String,
    /// Where it is issued: the Vault address(es) and `mount/sign/role`.
    pub vault: String,
    /// The certificate served now (`None`: none issued yet; the key shows its generated certificate or none).
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub expires_in_s: Option<i64>,
    /// How many CA certificates of its chain are served.
    pub chain: usize,
    /// The last failure to issue or renew it, in Vault's words (`None` after a success).
    pub last_error: Option<String>,
}

/// The check every token gets unless it has its own: a login with the configured credentials, then one search.
pub fn default_check(t: &(impl Token + ?Sized)) -> CheckReport {
    let start = std::time::Instant::now();
    let mut r = CheckReport {
        endpoint: t.endpoint(),
        ..Default::default()
    };
    let logged_in = match t.login_configured(CKU_USER) {
        Ok(()) => {
            r.login = "ok".into();
            true
        }
        Err(e) => {
            r.login = e.to_string();
            r.problems.push(format!(
                "login with the configured credentials refused: {e}"
            ));
            false
        }
    };
    let counted = t.open_session(false).and_then(|mut s| {
        let objs = s.find(Template::null())?;
        let mut private = 0;
        let mut secret = 0;
        for o in &objs {
            let mut class: CK_OBJECT_CLASS = CK_UNAVAILABLE_INFORMATION;
            let mut a = [attribute(CKA_CLASS, &mut class)];
            if s.get_attributes(*o, &mut a) == CKR_OK {
                match class {
                    CKO_PRIVATE_KEY => private += 1,
                    CKO_SECRET_KEY => secret += 1,
                    _ => {}
                }
            }
        }
        Ok((objs.len(), private, secret))
    });
    match counted {
        Ok((n, p, s)) => {
            r.objects = n;
            r.private_keys = p;
            r.secret_keys = s;
        }
        Err(e) => r.problems.push(format!("cannot read its objects: {e}")),
    }
    if logged_in {
        let _ = t.logout_configured();
    }
    r.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    r
}

/// A session on one backend token. Methods follow the PKCS#11 functions of the same name; output buffers follow
/// the two-call convention: `Out = None` asks for the length, `Err(Error::buffer_too_small(n))` when it does not fit.
/// Every method returns the `CK_RV` the spec names for its failure.
#[allow(unused_variables)]
pub trait BackendSession: Send {
    /// For a backend with several endpoints (an HA group): the endpoint that ran the last operation, named for the
    /// audit trail.
    fn served_by(&self) -> Option<&str> {
        None
    }
    /// `C_Login` with the caller's PIN (mirror slots).
    fn login(&mut self, user: CK_USER_TYPE, pin: Option<&[u8]>) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// `C_LoginUser` with the caller's user name and PIN (mirror slots).
    fn login_user(&mut self, user: CK_USER_TYPE, pin: Option<&[u8]>, name: &[u8]) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// A `CKU_CONTEXT_SPECIFIC` login with the configured PIN (unified slots, after the bridge checked the caller's).
    fn context_login_configured(&mut self) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// `C_Logout` (mirror slots).
    fn logout(&mut self) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn init_pin(&mut self, pin: Option<&[u8]>) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn set_pin(&mut self, old: Option<&[u8]>, new: Option<&[u8]>) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn get_operation_state(&mut self, out: Out) -> Result<usize> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn set_operation_state(
        &mut self,
        state: &[u8],
        enc_key: Option<ObjRef>,
        auth_key: Option<ObjRef>,
    ) -> Result<()> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }

    // Objects
    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>>;
    /// Fills `template` (caller-owned buffers) by the rules of `C_GetAttributeValue`, returning its `CK_RV`
    /// (`CKR_OK`, `CKR_ATTRIBUTE_SENSITIVE`, `CKR_ATTRIBUTE_TYPE_INVALID`, `CKR_BUFFER_TOO_SMALL`, or an error).
    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV;
    fn set_attributes(&mut self, obj: ObjRef, template: Template) -> Result<()> {
        Err(Error::new(CKR_ACTION_PROHIBITED))
    }
    fn create_object(&mut self, template: Template) -> Result<ObjRef> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn copy_object(&mut self, obj: ObjRef, template: Template) -> Result<ObjRef> {
        Err(Error::new(CKR_ACTION_PROHIBITED))
    }
    fn destroy_object(&mut self, obj: ObjRef) -> Result<()> {
        Err(Error::new(CKR_ACTION_PROHIBITED))
    }
    fn object_size(&mut self, obj: ObjRef) -> Result<CK_ULONG> {
        Err(Error::new(CKR_INFORMATION_SENSITIVE))
    }

    // Cryptographic operations
    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()>;
    /// Single-part encrypt/decrypt/digest/sign/sign-recover/verify-recover.
    fn op_single(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize>;
    /// `*Update`; `out` is used by encrypt and decrypt only (others return 0).
    fn op_update(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize>;
    /// `*Final` for encrypt/decrypt/digest/sign.
    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize>;
    /// `C_Verify`.
    fn verify(&mut self, data: &[u8], signature: &[u8]) -> Result<()>;
    /// `C_VerifyFinal`.
    fn verify_final(&mut self, signature: &[u8]) -> Result<()>;
    /// `C_DigestKey`.
    fn digest_key(&mut self, key: ObjRef) -> Result<()> {
        Err(Error::new(CKR_KEY_INDIGESTIBLE))
    }
    /// The dual-function `*Update` calls.
    fn dual_update(&mut self, kind: DualKind, input: &[u8], out: Out) -> Result<usize> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// Ends the active operation of this kind without a result (`C_SessionCancel`, or `C_*Init` with a NULL
    /// mechanism).
    fn op_cancel(&mut self, kind: OpKind) -> Result<()>;

    // Keys
    fn generate_key(&mut self, mech: &Mechanism, template: Template) -> Result<ObjRef> {
        Err(Error::new(CKR_MECHANISM_INVALID))
    }
    fn generate_key_pair(
        &mut self,
        mech: &Mechanism,
        public: Template,
        private: Template,
    ) -> Result<(ObjRef, ObjRef)> {
        Err(Error::new(CKR_MECHANISM_INVALID))
    }
    fn wrap_key(
        &mut self,
        mech: &Mechanism,
        wrapping: ObjRef,
        key: ObjRef,
        out: Out,
    ) -> Result<usize> {
        Err(Error::new(CKR_MECHANISM_INVALID))
    }
    fn unwrap_key(
        &mut self,
        mech: &Mechanism,
        unwrapping: ObjRef,
        wrapped: &[u8],
        template: Template,
    ) -> Result<ObjRef> {
        Err(Error::new(CKR_MECHANISM_INVALID))
    }
    fn derive_key(&mut self, mech: &Mechanism, base: ObjRef, template: Template) -> Result<ObjRef> {
        Err(Error::new(CKR_MECHANISM_INVALID))
    }

    // Envelope wrapping across backends: a secret key of one backend wrapped under a key of another.
    /// The value of a secret key, to be wrapped by another backend: only for an extractable, readable secret key.
    fn export_value(&mut self, obj: ObjRef) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let mut class: CK_OBJECT_CLASS = 0;
        let mut extractable: CK_BBOOL = CK_FALSE;
        let mut t = [
            attribute(CKA_CLASS, &mut class),
            attribute(CKA_EXTRACTABLE, &mut extractable),
        ];
        match self.get_attributes(obj, &mut t) {
            CKR_OK => {}
            CKR_OBJECT_HANDLE_INVALID => return Err(Error::new(CKR_KEY_HANDLE_INVALID)),
            rv => return Err(Error::new(rv)),
        }
        if class != CKO_SECRET_KEY {
            return Err(Error::with(
                CKR_KEY_NOT_WRAPPABLE,
                "only secret keys are wrapped across backends",
            ));
        }
        if extractable == CK_FALSE {
            return Err(Error::new(CKR_KEY_UNEXTRACTABLE));
        }
        let mut v = [CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        }];
        if self.get_attributes(obj, &mut v) != CKR_OK
            || v[0].ulValueLen == CK_UNAVAILABLE_INFORMATION
        {
            return Err(Error::with(
                CKR_KEY_UNEXTRACTABLE,
                "a sensitive key cannot be wrapped by another backend",
            ));
        }
        // A secret key's value is short; a length beyond that is a broken backend, not an allocation to make.
        if v[0].ulValueLen as u128 > 1 << 16 {
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                format!(
                    "the backend reports a {}-byte key value",
                    v[0].ulValueLen as u128
                ),
            ));
        }
        let mut value = zeroize::Zeroizing::new(vec![0u8; v[0].ulValueLen as usize]);
        v[0].pValue = value.as_mut_ptr() as *mut std::ffi::c_void;
        if self.get_attributes(obj, &mut v) != CKR_OK {
            return Err(Error::new(CKR_KEY_UNEXTRACTABLE));
        }
        value.truncate(v[0].ulValueLen as usize);
        Ok(value)
    }
    /// Wraps `value` (another backend's key) under one of this backend's keys.
    fn wrap_value(
        &mut self,
        mech: &Mechanism,
        wrapping: ObjRef,
        value: &[u8],
        out: Out,
    ) -> Result<usize> {
        Err(Error::with(
            CKR_KEY_NOT_WRAPPABLE,
            "this backend does not wrap other backends' keys",
        ))
    }
    /// Unwraps a key value with one of this backend's keys, for another backend to import.
    fn unwrap_value(
        &mut self,
        mech: &Mechanism,
        unwrapping: ObjRef,
        wrapped: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        Err(Error::with(
            CKR_MECHANISM_INVALID,
            "this backend does not unwrap keys for other backends",
        ))
    }

    // Random numbers
    fn seed_random(&mut self, seed: &[u8]) -> Result<()> {
        Err(Error::new(CKR_RANDOM_SEED_NOT_SUPPORTED))
    }
    fn generate_random(&mut self, out: &mut [u8]) -> Result<()> {
        Err(Error::new(CKR_RANDOM_NO_RNG))
    }
}

/// Builds the backend of one `[backend.NAME]` section, with every `[backend.*]` section of the file at hand (a
/// `pkcs11-ha` group builds its members from the sections it names). This is the one place that knows every
/// concrete backend. Errors name the key (`backend.NAME.KEY`) and the problem.
pub fn build_with(
    name: &str,
    section: &toml::Table,
    all: &std::collections::BTreeMap<String, toml::Table>,
    ctx: &BuildContext,
) -> Result<Arc<dyn Backend>> {
    let kind = section
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            Error::with(
                CKR_GENERAL_ERROR,
                format!(
                    "backend.{name}.kind: missing (\"pkcs11\", \"pkcs11-ha\", \"aws-kms\" or \"vault-transit\")"
                ),
            )
        })?;
    match kind {
        "pkcs11" => Ok(Arc::new(
            pkcs11::UpstreamBackend::from_config(name, section, ctx)?.with_pki(section, all, ctx)?,
        )),
        "pkcs11-ha" => Ok(Arc::new(pkcs11::ha::HaBackend::from_config(
            name, section, all, ctx,
        )?)),
        "aws-kms" => {
            runtime::set_cant_create_threads(ctx.cant_create_threads);
            let svc = kms::Kms::new(kms::KmsService::from_config(name, section, ctx)?);
            let pki = remote_pki(name, "aws-kms", section, all, ctx)?;
            let host = remote::hostcache::HostCache::of_section(name, "aws-kms", section)?;
            Ok(Arc::new(remote::RemoteBackend::new(
                name,
                "aws-kms",
                Arc::new(svc),
                pki,
                host,
            )))
        }
        "vault-transit" => {
            runtime::set_cant_create_threads(ctx.cant_create_threads);
            let svc = vault::Vault::new(vault::VaultService::from_config(name, section, ctx)?);
            let pki = remote_pki(name, "vault-transit", section, all, ctx)?;
            let host = remote::hostcache::HostCache::of_section(name, "vault-transit", section)?;
            Ok(Arc::new(remote::RemoteBackend::new(
                name,
                "vault-transit",
                Arc::new(svc),
                pki,
                host,
            )))
        }
        // Tests only: compiled in with the `test-backends` feature, and even then unknown unless
        // P11BRIDGE_ENABLE_TEST_BACKENDS=1.
        #[cfg(feature = "test-backends")]
        "test-panic" if fake::enabled() => {
            Ok(Arc::new(fake::panic::PanicBackend::from_config(name, section)?))
        }
        #[cfg(feature = "test-backends")]
        "test-fake" if fake::enabled() => Ok(Arc::new(fake::remote::build(name, section)?)),
        #[cfg(feature = "test-backends")]
        "test-fake-pkcs11" if fake::enabled() => {
            Ok(Arc::new(fake::upstream::build(name, section)?))
        }
        other => Err(Error::with(
            CKR_GENERAL_ERROR,
            format!(
                "backend.{name}.kind: unknown kind \"{other}\" (expected \"pkcs11\", \"pkcs11-ha\", \"aws-kms\" or \"vault-transit\")"
            ),
        )),
    }
}

/// The `pki = {...}` of a remote backend's section (its certificate cache: `cert_cache_dir`).
fn remote_pki(
    name: &str,
    kind: &'static str,
    section: &toml::Table,
    all: &std::collections::BTreeMap<String, toml::Table>,
    ctx: &BuildContext,
) -> Result<Option<Arc<pki::Pki>>> {
    let cache = section
        .get("cert_cache_dir")
        .and_then(|v| v.as_str())
        .map(std::path::PathBuf::from);
    let cache = remote::cert::CertSource::new(kind, cache, None).cache_dir;
    pki::Pki::from_section(name, kind, section, all, ctx, cache)
}

/// Reads a `[backend.NAME]` section into a backend's config struct; errors name the section and the problem.
pub fn parse_section<T: serde::de::DeserializeOwned>(
    name: &str,
    section: &toml::Table,
) -> Result<T> {
    toml::Value::Table(section.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            Error::with(
                CKR_GENERAL_ERROR,
                format!("backend.{name}: {}", e.message()),
            )
        })
}

/// What the application told `C_Initialize` that backends must honour.
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    /// `CKF_LIBRARY_CANT_CREATE_OS_THREADS` was set.
    pub cant_create_threads: bool,
}

/// The process id, to detect that we are running in a child after `fork()`.
pub fn current_pid() -> u32 {
    std::process::id()
}
