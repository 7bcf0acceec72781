//! The enumeration rows: N KMS keys and N transit keys, the first `C_FindObjects` by class after `C_Initialize` (cold,
//! every key read; with and without generated certificates cached on disk) and repeated ones by label (warm), with
//! the backend requests each made, against a sequential direct client issuing the requests the search needs; then,
//! with the host-wide key cache, the first search by label of a process (the listing and the matching key only), of
//! a second process (nothing), and of N processes starting at once.

use crate::kms::direct_kms_enum;
use crate::pkcs11::{call, find_class, find_label, initialize, ok, session, slot_by_label, Module};
use crate::servers::{create_kms_keys, Servers};
use crate::table::{diff, fmt_counts, print_enum, EnumRow};
use crate::vault::{CountingProxy, Http};
use crate::Bench;
use cryptoki_sys::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens a session on the token "enum" of a freshly initialized bridge (configuration `config`).
fn reinit(bridge: &'static Module, config: &Path) -> CK_SESSION_HANDLE {
    std::env::set_var("P11BRIDGE_CONFIG", config);
    ok(call!(bridge, C_Finalize(std::ptr::null_mut())), "finalize");
    initialize(bridge);
    let slot = slot_by_label(bridge, "enum");
    session(bridge, slot, "bench-pin")
}

pub fn rows(b: &Bench, servers: &Servers, kc: &aws_sdk_kms::Client) {
    let (bridge, dir, moto, krt) = (b.bridge, &servers.dir, &servers.moto, b.runtime);
    let (addr, token, n) = (servers.bao_addr, servers.bao_token, b.opts.enum_keys);
    // Setup (not timed): n KMS keys with aliases, n transit keys, a proxy to count Vault's requests.
    let t = Instant::now();
    create_kms_keys(moto, "enum-", n);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut h = Http::connect(addr);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = h.post(
                        &format!("/v1/transit/keys/enum-{i:04}"),
                        token,
                        r#"{"type":"ecdsa-p256"}"#,
                    );
                    assert!(!r.contains("errors"), "{r}");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Vault's requests are counted by a proxy in front of it (OpenBao enables audit devices from its config only).
    let proxy = CountingProxy::start(addr);
    let paddr: &'static str = Box::leak(proxy.url.clone().into_boxed_str());
    eprintln!(
        "(setup: {n} KMS keys and {n} transit keys created in {:.1} s)",
        t.elapsed().as_secs_f64()
    );

    println!(
        "| {:<58} | {:>10} | backend requests |",
        "enumeration", "ms"
    );
    println!("|{}|{}|{}|", "-".repeat(60), "-".repeat(12), "-".repeat(20));
    let warm_iters = if b.opts.mode == "smoke" { 20 } else { 200 };
    let label = "enum-0007";
    let label = if n > 7 { label } else { "enum-0000" };
    for backend in ["kms", "vault"] {
        let certs = dir.join(format!("enum-certs-{backend}"));
        let section = if backend == "kms" {
            format!(
                "[backend.kms]\nkind = \"aws-kms\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\ndiscover = true\ncert_cache_dir = \"{}\"\nkey_cache = false\n",
                moto.url,
                certs.display()
            )
        } else {
            format!(
                "[backend.vault]\nkind = \"vault-transit\"\naddress = \"{paddr}\"\ntoken = \"env:BENCH_BAO_TOKEN\"\ndiscover = true\nprefix = \"enum-\"\ncert_cache_dir = \"{}\"\nkey_cache = false\n",
                certs.display()
            )
        };
        let slot = format!("[[slot]]\nlabel = \"enum\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"{backend}\"]\n\n");
        let config = dir.join(format!("enum-{backend}.toml"));
        std::fs::write(&config, format!("{slot}{section}")).unwrap();
        let counts = || {
            if backend == "kms" {
                moto.stats()
            } else {
                proxy.counts()
            }
        };
        let what = if backend == "kms" {
            "KMS"
        } else {
            "Vault transit"
        };
        for (pass, note) in [
            (0, "cold, certificates generated"),
            (1, "cold, certificates cached on disk"),
        ] {
            let s = reinit(bridge, &config);
            if backend == "kms" {
                moto.reset();
            }
            let before = counts();
            let t = Instant::now();
            let found = find_class(bridge, s, CKO_PRIVATE_KEY);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(found >= 1, "{backend}: found {found} private keys");
            let req = diff(&counts(), &before);
            print_enum(&EnumRow {
                name: format!("{what} {n} keys: first C_FindObjects by class ({note})"),
                ms,
                requests: fmt_counts(&req),
            });
            if pass == 1 {
                let before = counts();
                let mut worst = Duration::ZERO;
                let t = Instant::now();
                for _ in 0..warm_iters {
                    let t1 = Instant::now();
                    find_label(bridge, s, label);
                    worst = worst.max(t1.elapsed());
                }
                let avg = t.elapsed().as_secs_f64() * 1e3 / warm_iters as f64;
                let req = diff(&counts(), &before);
                print_enum(&EnumRow {
                    name: format!(
                        "{what} {n} keys: warm C_FindObjects (mean of {warm_iters}; max {:.2} ms)",
                        worst.as_secs_f64() * 1e3
                    ),
                    ms: avg,
                    requests: fmt_counts(&req),
                });
            }
        }
        // The sequential direct client issuing the requests the search needs.
        if backend == "kms" {
            moto.reset();
        }
        let before = counts();
        let t = Instant::now();
        if backend == "kms" {
            krt.block_on(direct_kms_enum(kc.clone()));
        } else {
            let mut h = Http::connect(paddr);
            let list = h.request("LIST", "/v1/transit/keys", token, "");
            let v: serde_json::Value = serde_json::from_str(&list).expect("list");
            for k in v
                .pointer("/data/keys")
                .and_then(|k| k.as_array())
                .expect("keys")
            {
                let k = k.as_str().unwrap_or("");
                if k.starts_with("enum-") {
                    let r = h.request("GET", &format!("/v1/transit/keys/{k}"), token, "");
                    assert!(r.contains("public_key"));
                }
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let req = diff(&counts(), &before);
        print_enum(&EnumRow {
            name: format!("{what} {n} keys: direct sequential client, same requests"),
            ms,
            requests: fmt_counts(&req),
        });

        // The host-wide key cache (`key_cache = true`, the default), in a cache folder of its own (certificates
        // already generated: copied from the rows above).
        let host_certs = dir.join(format!("enum-host-{backend}"));
        let _ = std::fs::remove_dir_all(&host_certs);
        copy_dir(&certs, &host_certs);
        let cached = section
            .replace(
                &certs.display().to_string(),
                &host_certs.display().to_string(),
            )
            .replace("key_cache = false\n", "");
        let config = dir.join(format!("enum-host-{backend}.toml"));
        std::fs::write(&config, format!("{slot}{cached}")).unwrap();
        for note in [
            "first process, host key cache cold",
            "second process on the host, host key cache warm",
        ] {
            let s = reinit(bridge, &config);
            if backend == "kms" {
                moto.reset();
            }
            let before = counts();
            let t = Instant::now();
            let found = find_label(bridge, s, label);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(found >= 2, "{backend}: {label} found {found} objects");
            print_enum(&EnumRow {
                name: format!("{what} {n} keys: first C_FindObjects by label ({note})"),
                ms,
                requests: fmt_counts(&diff(&counts(), &before)),
            });
        }

        // A fleet: processes starting at once, each loading the module, C_Initialize, one search (by label: the
        // listing and one key; by class: every key); the host key cache cold when they start (a folder of its own),
        // so one of them asks the service and the others wait for its result.
        let procs = if b.opts.mode == "smoke" { 10 } else { 100 };
        for (by, arg) in [("label", label), ("class", "--class")] {
            let fleet_certs = dir.join(format!("enum-fleet-{backend}-{by}"));
            let _ = std::fs::remove_dir_all(&fleet_certs);
            copy_dir(&certs, &fleet_certs);
            let fleet = section
                .replace(
                    &certs.display().to_string(),
                    &fleet_certs.display().to_string(),
                )
                .replace("key_cache = false\n", "");
            let config = dir.join(format!("enum-fleet-{backend}-{by}.toml"));
            std::fs::write(&config, format!("{slot}{fleet}")).unwrap();
            if backend == "kms" {
                moto.reset();
            }
            let before = counts();
            let exe = std::env::current_exe().expect("the bench's own path");
            let t = Instant::now();
            let children: Vec<_> = (0..procs)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .arg("--search-child")
                        .arg(&servers.so)
                        .arg(&config)
                        .arg(arg)
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .expect("spawn a search process")
                })
                .collect();
            let mut failed = 0;
            for c in children {
                let out = c.wait_with_output().expect("a search process");
                let found: usize = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if !out.status.success() || found < 1 {
                    failed += 1;
                }
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let req = diff(&counts(), &before);
            let total: u64 = req.iter().map(|(_, v)| *v).sum();
            print_enum(&EnumRow {
                name: format!(
                    "{what} {n} keys: {procs} processes starting at once, search by {by} (wall time; {total} requests in all{})",
                    if failed > 0 {
                        format!("; {failed} FAILED")
                    } else {
                        String::new()
                    }
                ),
                ms,
                requests: fmt_counts(&req),
            });
        }
    }
}

/// Copies the files of a folder (generated certificates) into a new one.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

/// One process of the fleet rows (`--search-child SO CONFIG LABEL`, or `--class` for a search of the private keys):
/// loads the module, `C_Initialize`, logs in on the token "enum", searches and prints how many objects it found.
pub fn search_child(so: &Path, config: &Path, label: &str) {
    std::env::set_var("P11BRIDGE_CONFIG", config);
    let m = crate::pkcs11::load(so);
    initialize(&m);
    let slot = slot_by_label(&m, "enum");
    let s = session(&m, slot, "bench-pin");
    let found = if label == "--class" {
        find_class(&m, s, CKO_PRIVATE_KEY)
    } else {
        find_label(&m, s, label)
    };
    println!("{found}");
}
