//! `C_P11BRIDGE_Check`: every backend of every slot checked now, as JSON for `p11bridge check`.

use super::module;
use p11bridge_backends::{CheckReport, Result};
use serde::Serialize;

#[derive(Serialize)]
struct Report {
    config: String,
    ok: bool,
    slots: Vec<SlotReport>,
}

#[derive(Serialize)]
struct SlotReport {
    slot: u64,
    /// "unified" or "mirror".
    kind: &'static str,
    token: String,
    /// The user PIN reference of a unified slot: whether it can be read now.
    user_pin: Option<PinReport>,
    so_pin: Option<PinReport>,
    backends: Vec<BackendReport>,
}

#[derive(Serialize)]
struct PinReport {
    reference: String,
    /// `None` when it can be read; else why not.
    problem: Option<String>,
}

#[derive(Serialize)]
struct BackendReport {
    name: String,
    kind: &'static str,
    ok: bool,
    #[serde(flatten)]
    report: CheckReport,
}

/// Runs the checks; the JSON text.
pub fn report() -> Result<String> {
    let m = module()?;
    let mut ok = true;
    let mut slots = Vec::new();
    for slot in &m.slots {
        let token = slot
            .token_info()
            .map(|t| String::from_utf8_lossy(&t.label).trim_end().to_string())
            .unwrap_or_default();
        let kind = slot.kind_name();
        let (user_pin, so_pin) = slot.pin_statuses();
        let pins_ok = [&user_pin, &so_pin]
            .iter()
            .all(|p| p.as_ref().is_none_or(|(_, problem)| problem.is_none()));
        ok &= pins_ok;
        let mut backends = Vec::new();
        for backend in &slot.backends {
            let report = match slot.upstream() {
                None => backend.token.check(),
                // A mirror slot logs in with the caller's PIN: the check reads what is public.
                Some(_) => {
                    let start = std::time::Instant::now();
                    let mut r = CheckReport {
                        endpoint: backend.token.endpoint(),
                        login: "by the application (mirror slot)".into(),
                        ..Default::default()
                    };
                    if let Err(e) = backend.token.token_info() {
                        r.problems.push(format!("token not available: {e}"));
                    }
                    r.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
                    r
                }
            };
            let b_ok = report.problems.is_empty();
            ok &= b_ok;
            backends.push(BackendReport {
                name: backend.name.clone(),
                kind: backend.kind,
                ok: b_ok,
                report,
            });
        }
        let pin = |p: Option<(String, Option<String>)>| {
            p.map(|(reference, problem)| PinReport { reference, problem })
        };
        slots.push(SlotReport {
            slot: slot.id,
            kind,
            token,
            user_pin: pin(user_pin),
            so_pin: pin(so_pin),
            backends,
        });
    }
    let r = Report {
        config: super::config::config_path().display().to_string(),
        ok,
        slots,
    };
    serde_json::to_string(&r).map_err(|e| {
        p11bridge_backends::Error::with(cryptoki_sys::CKR_GENERAL_ERROR, e.to_string())
    })
}
