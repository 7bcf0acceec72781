//! The audit trail: one JSON line per key use, key lifecycle event and login, to an append-only file and/or syslog.
//! Off unless the configuration has an `[audit]` section. Never a secret or any data in it: who, which key, which
//! mechanism, what result, how long.

use cryptoki_sys::*;
use p11bridge_backends::{rv_name, BackendSession, ObjRef};
use serde::Deserialize;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append JSON lines to this file (created if missing, never truncated).
    pub file: Option<PathBuf>,
    /// Also send each line to syslog (facility authpriv).
    #[serde(default)]
    pub syslog: bool,
}

pub struct Audit {
    file: Option<parking_lot::Mutex<std::fs::File>>,
    syslog: bool,
    process: String,
}

/// One event, filled by the core where it happens (`Module::audit` adds the token, the backend's name and the
/// latency).
#[derive(Default)]
pub struct Event<'a> {
    /// What happened: "sign", "login", "new_object", ...
    pub event: &'static str,
    /// The position of the slot's backend that served it.
    pub backend: Option<usize>,
    /// The member of an HA group that ran the operation.
    pub member: Option<&'a str>,
    pub object: Option<&'a ObjectInfo>,
    pub mechanism: Option<CK_MECHANISM_TYPE>,
    pub user: Option<CK_USER_TYPE>,
    pub rv: CK_RV,
}

/// The `CK_RV` the trail records for a call's result.
pub fn rv_of<T>(r: &p11bridge_backends::Result<T>) -> CK_RV {
    r.as_ref().map_or_else(|e| e.rv(), |_| CKR_OK)
}

/// What the trail says about a key: its label and `CKA_ID` (hex).
#[derive(Clone, Debug, Default)]
pub struct ObjectInfo {
    pub label: String,
    pub id: String,
}

impl Audit {
    pub fn open(cfg: &AuditConfig) -> Result<Option<Audit>, String> {
        if cfg.file.is_none() && !cfg.syslog {
            return Ok(None);
        }
        let file = match &cfg.file {
            Some(p) => Some(parking_lot::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("audit.file: {}: {e}", p.display()))?,
            )),
            None => None,
        };
        let process = std::fs::read_to_string("/proc/self/comm")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if cfg.syslog {
            static IDENT: &[u8] = b"p11bridge\0";
            // SAFETY: a static NUL-terminated identity string.
            unsafe {
                libc::openlog(
                    IDENT.as_ptr() as *const libc::c_char,
                    libc::LOG_PID,
                    libc::LOG_AUTHPRIV,
                )
            };
        }
        Ok(Some(Audit {
            file,
            syslog: cfg.syslog,
            process,
        }))
    }

    /// Writes one line: the event `e` on token `token` (served by the backend named `backend`), `latency` long.
    pub fn record(&self, token: &str, backend: Option<&str>, e: &Event, latency: Duration) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = json!({
            "time": rfc3339(now),
            "pid": std::process::id(),
            "process": self.process,
            "event": e.event,
            "token": token,
            "rv": rv_name(e.rv),
            "latency_us": latency.as_micros() as u64,
        });
        if let Some(b) = backend {
            line["backend"] = json!(b);
        }
        if let Some(m) = e.member {
            line["member"] = json!(m);
        }
        if let Some(o) = e.object {
            line["object"] = json!(o.label);
            line["id"] = json!(o.id);
        }
        if let Some(m) = e.mechanism {
            line["mechanism"] = json!(mechanism_name(m));
        }
        if let Some(u) = e.user {
            line["user"] = json!(match u {
                CKU_SO => "so",
                CKU_USER => "user",
                CKU_CONTEXT_SPECIFIC => "context_specific",
                _ => "other",
            });
        }
        let mut text = line.to_string();
        if self.syslog {
            if let Ok(c) = std::ffi::CString::new(text.clone()) {
                // SAFETY: a constant format string and a NUL-terminated argument.
                unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr()) };
            }
        }
        if let Some(f) = &self.file {
            text.push('\n');
            // One write per line on an O_APPEND file: lines of concurrent writers never interleave.
            let _ = f.lock().write_all(text.as_bytes());
        }
    }
}

/// Label and id of an object, read from its backend (no network: remote backends answer from their cache).
pub fn describe(bs: &mut dyn BackendSession, obj: ObjRef) -> ObjectInfo {
    let mut label = [0u8; 256];
    let mut id = [0u8; 256];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_mut_ptr() as *mut std::ffi::c_void,
            ulValueLen: label.len() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_ID,
            pValue: id.as_mut_ptr() as *mut std::ffi::c_void,
            ulValueLen: id.len() as CK_ULONG,
        },
    ];
    let _ = bs.get_attributes(obj, &mut t);
    let len = |a: &CK_ATTRIBUTE| {
        if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
            0
        } else {
            (a.ulValueLen as usize).min(256)
        }
    };
    ObjectInfo {
        label: String::from_utf8_lossy(&label[..len(&t[0])]).into_owned(),
        id: id[..len(&t[1])]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

fn rfc3339(d: Duration) -> String {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// The spec name of common mechanisms (others as hex).
pub fn mechanism_name(m: CK_MECHANISM_TYPE) -> String {
    let n = match m {
        CKM_RSA_PKCS => "CKM_RSA_PKCS",
        CKM_RSA_X_509 => "CKM_RSA_X_509",
        CKM_RSA_PKCS_OAEP => "CKM_RSA_PKCS_OAEP",
        CKM_RSA_PKCS_PSS => "CKM_RSA_PKCS_PSS",
        CKM_SHA1_RSA_PKCS => "CKM_SHA1_RSA_PKCS",
        CKM_SHA256_RSA_PKCS => "CKM_SHA256_RSA_PKCS",
        CKM_SHA384_RSA_PKCS => "CKM_SHA384_RSA_PKCS",
        CKM_SHA512_RSA_PKCS => "CKM_SHA512_RSA_PKCS",
        CKM_SHA256_RSA_PKCS_PSS => "CKM_SHA256_RSA_PKCS_PSS",
        CKM_SHA384_RSA_PKCS_PSS => "CKM_SHA384_RSA_PKCS_PSS",
        CKM_SHA512_RSA_PKCS_PSS => "CKM_SHA512_RSA_PKCS_PSS",
        CKM_ECDSA => "CKM_ECDSA",
        CKM_ECDSA_SHA256 => "CKM_ECDSA_SHA256",
        CKM_ECDSA_SHA384 => "CKM_ECDSA_SHA384",
        CKM_ECDSA_SHA512 => "CKM_ECDSA_SHA512",
        CKM_EDDSA => "CKM_EDDSA",
        CKM_SHA256_HMAC => "CKM_SHA256_HMAC",
        CKM_AES_CBC_PAD => "CKM_AES_CBC_PAD",
        CKM_AES_GCM => "CKM_AES_GCM",
        CKM_AES_KEY_WRAP => "CKM_AES_KEY_WRAP",
        CKM_AES_KEY_GEN => "CKM_AES_KEY_GEN",
        CKM_RSA_PKCS_KEY_PAIR_GEN => "CKM_RSA_PKCS_KEY_PAIR_GEN",
        CKM_EC_KEY_PAIR_GEN => "CKM_EC_KEY_PAIR_GEN",
        CKM_EC_EDWARDS_KEY_PAIR_GEN => "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        CKM_ECDH1_DERIVE => "CKM_ECDH1_DERIVE",
        CKM_SHA256 => "CKM_SHA256",
        m if m == p11bridge_backends::vendor::CKM_P11BRIDGE_VAULT_ENCRYPT => {
            "CKM_P11BRIDGE_VAULT_ENCRYPT"
        }
        m if m == p11bridge_backends::vendor::CKM_P11BRIDGE_KMS_ENCRYPT => {
            "CKM_P11BRIDGE_KMS_ENCRYPT"
        }
        _ => return format!("0x{m:08x}"),
    };
    n.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        use std::time::Duration;
        assert_eq!(
            super::rfc3339(Duration::from_secs(0)),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            super::rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            super::rfc3339(Duration::from_millis(1_795_868_672_500)),
            "2026-11-28T12:24:32.500000Z"
        );
    }
}
