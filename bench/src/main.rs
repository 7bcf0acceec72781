//! p11bridge-bench: the bridge against the same work done without it, in one process, interleaved.
//!
//! `cargo run --release -p p11bridge-bench -- --all` (full), `--quick` (fewer rounds) or `--smoke` (a few iterations
//! and 20 keys, for CI) prints markdown tables; it starts its own servers (SoftHSM2 token, OpenBao dev server,
//! moto behind the KMS fidelity layer) and stops them when it exits:
//! - pass-through over SoftHSM2: the bridge's unified token vs SoftHSM2's own function list (same process, same
//!   token, both through raw PKCS#11 calls), 1 and 2 threads on separate sessions;
//! - Vault transit (an OpenBao dev server started here): `C_Sign` through the bridge vs the same transit request
//!   sent directly over a kept-alive HTTP/1.1 connection per thread, 1, 8 and 32 threads;
//! - AWS KMS (moto): `C_Sign` ECDSA P-256 through the bridge vs a direct `Sign` to the same endpoint (a lean
//!   SigV4-signed blocking client, or aws-sdk-kms with `--kms-baseline sdk`), 1 and 8 threads;
//! - enumeration of N KMS keys and N transit keys: the first `C_FindObjects` by class after `C_Initialize` (cold,
//!   with and without generated certificates cached on disk) and repeated ones (warm), with the backend requests each
//!   made, against a sequential direct client issuing the requests the search needs; with the host-wide key cache,
//!   the first search by label of a process and of a second process, and 100 processes (smoke: 10) starting at once
//!   searching by label and by class (requests counted at the servers);
//! - footprint: `C_Initialize` time, RSS after initialize (all three backends configured), size of the `.so`.
//!
//! The `.so` under test is copied to a private directory first (`--so PATH` to choose it; default
//! `target/release/libp11bridge.so`), so a concurrent build cannot swap it mid-run.
//!
//! Rounds alternate direct and bridge so that drift of the machine hits both. Nothing here is asserted: targets
//! are read off the table.
//!
//! Layout: [`opts`] (command line), [`servers`] (the environment: token, OpenBao, moto, configuration,
//! footprint), [`pkcs11`] (raw calls), [`measure`] (timed rounds), [`table`] (the printed tables), and one module
//! per section: [`hsm`], [`vault`], [`kms`], [`enumeration`].

mod enumeration;
mod hsm;
mod kms;
mod lean;
mod measure;
mod opts;
mod pkcs11;
mod servers;
mod table;
mod vault;

use cryptoki_sys::*;
use measure::{round, Stats};
use opts::Opts;
use pkcs11::{call, initialize, load, ok, run_op, session, slot_by_label, Module, Op};
use std::path::Path;
use std::sync::Arc;

/// What every section runs against: both modules initialized, their slots, and the direct clients' runtime.
pub struct Bench {
    pub opts: Opts,
    /// SoftHSM2's own function list, and its token "upstream".
    pub direct: &'static Module,
    pub direct_slot: CK_SLOT_ID,
    /// The bridge, and its token "unified".
    pub bridge: &'static Module,
    pub bridge_slot: CK_SLOT_ID,
    /// The direct clients' runtime (reqwest for Vault, aws-sdk-kms for KMS): a multi-thread runtime like the
    /// bridge's, driven by each benchmark thread with block_on.
    pub runtime: &'static tokio::runtime::Runtime,
}

/// The user PINs of the direct token and of the bridge's.
const DIRECT_PIN: &str = "1234";
const BRIDGE_PIN: &str = "bench-pin";

impl Bench {
    /// A round of `iters` operations on each of `threads` threads, each on its own logged-in session of `m`'s
    /// `slot`; `pick` chooses the operation (once per thread, not timed).
    pub fn op_round(
        &self,
        (m, slot, pin): (&'static Module, CK_SLOT_ID, &'static str),
        pick: impl Fn(&'static Module, CK_SESSION_HANDLE) -> Op + Send + Sync + 'static,
        threads: usize,
        iters: usize,
    ) -> Stats {
        type Setup = (&'static Module, CK_SESSION_HANDLE, Op);
        let setup: Arc<dyn Fn(usize) -> Setup + Send + Sync> = Arc::new(move |_| {
            let s = session(m, slot, pin);
            (m, s, pick(m, s))
        });
        let work: Arc<dyn Fn(&mut Setup) + Send + Sync> =
            Arc::new(|st: &mut Setup| run_op(st.0, st.1, st.2));
        round(threads, iters, setup, work)
    }

    /// The direct side of [`Bench::op_round`]: SoftHSM2's token.
    pub fn direct_side(&self) -> (&'static Module, CK_SLOT_ID, &'static str) {
        (self.direct, self.direct_slot, DIRECT_PIN)
    }

    /// The bridge side of [`Bench::op_round`]: the unified token.
    pub fn bridge_side(&self) -> (&'static Module, CK_SLOT_ID, &'static str) {
        (self.bridge, self.bridge_slot, BRIDGE_PIN)
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--footprint-child") {
        servers::footprint_child(Path::new(&args[2]));
        return;
    }
    if let (Some("--search-child"), Some(so), Some(config), Some(label)) = (
        args.get(1).map(String::as_str),
        args.get(2),
        args.get(3),
        args.get(4),
    ) {
        enumeration::search_child(Path::new(so), Path::new(config), label);
        return;
    }
    let opts = Opts::parse(&args);
    let servers = servers::start(&opts);
    // Footprint first, in a fresh process.
    let footprint = servers::footprint(&servers.so);

    let direct: &'static Module = Box::leak(Box::new(load(Path::new(
        p11bridge_testkit::softhsm::SOFTHSM,
    ))));
    let bridge: &'static Module = Box::leak(Box::new(load(&servers.so)));
    initialize(direct);
    initialize(bridge);
    let b = Bench {
        direct_slot: slot_by_label(direct, "upstream"),
        bridge_slot: slot_by_label(bridge, "unified"),
        direct,
        bridge,
        runtime: Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
        )),
        opts,
    };

    println!(
        "p11bridge-bench ({} mode): bridge vs direct, same process, rounds interleaved; {} × {}; load average at start {}",
        b.opts.mode,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        load_average()
    );
    println!();
    table::header();
    if b.opts.want("hsm") {
        hsm::rows(&b);
    }
    if b.opts.want("vault") {
        if args.iter().any(|a| a == "--vault-batch-probe") {
            vault::batch_probe(&b, servers.bao_addr, servers.bao_token);
        }
        vault::rows(&b, servers.bao_addr, servers.bao_token);
    }
    let kms_client = kms::kms_client(b.runtime, &servers.moto.url);
    if b.opts.want("kms") {
        let url: &'static str = Box::leak(servers.moto.url.clone().into_boxed_str());
        kms::rows(&b, &kms_client, url);
    }
    println!(
        "(direct = SoftHSM2's own function list; {} to OpenBao; {} to the same moto endpoint)",
        match b.opts.vault_baseline {
            opts::VaultBaseline::Raw =>
                "a hand-written HTTP/1.1 exchange on a kept-alive blocking socket per thread",
            opts::VaultBaseline::Reqwest =>
                "a reqwest client per thread (one kept-alive connection each) on a 2-worker tokio runtime",
            opts::VaultBaseline::Lean =>
                "a blocking ureq client per thread (one kept-alive connection each)",
        },
        if b.opts.kms_sdk_baseline {
            "aws-sdk-kms with the bridge's HTTPS client"
        } else {
            "the same Sign request SigV4-signed (aws-sigv4) and sent by a blocking ureq client per thread"
        }
    );

    println!();
    if b.opts.want("enum") {
        enumeration::rows(&b, &servers, &kms_client);
    }

    println!();
    let size = std::fs::metadata(&servers.so).map(|m| m.len()).unwrap_or(0);
    if let [init_us, rss_before, rss_after] = footprint[..] {
        println!(
            "footprint: C_Initialize {init_us} µs (SoftHSM2 + Vault + KMS configured; remote backends connect lazily), RSS {rss_before} KiB → {rss_after} KiB after C_Initialize (+{:.1} MiB), libp11bridge.so {:.1} MiB",
            rss_after.saturating_sub(rss_before) as f64 / 1024.0,
            size as f64 / 1048576.0
        );
    }
    println!("load average at end: {}", load_average());
    ok(call!(bridge, C_Finalize(std::ptr::null_mut())), "finalize");
    // A run that got here leaves nothing behind (a failed one keeps its server logs for a look).
    let _ = std::fs::remove_dir_all(&servers.dir);
}
