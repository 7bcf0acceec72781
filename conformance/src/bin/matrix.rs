//! `matrix [--only bridge|softhsm] [--softhsm PATH] [--bridge PATH] [--justified FILE]`: the spec matrix against
//! SoftHSM2 directly and the bridge over the same SoftHSM2 token; prints `row | spec | softhsm | bridge`, the
//! differences, and `N passed, M failed` (bridge rows against the spec; a row the bridge fails is excused only by
//! `conformance/justified.toml`). Exits non-zero on an unjustified failure.

use p11bridge_conformance::cases::{self, Row};
use p11bridge_conformance::{env, runner};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        runner::child_main(&args[1..]);
    }
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let softhsm = PathBuf::from(opt("--softhsm").unwrap_or_else(|| env::SOFTHSM.into()));
    let bridge = opt("--bridge")
        .map(PathBuf::from)
        .unwrap_or_else(env::bridge_so);
    let justified_path = opt("--justified")
        .map(PathBuf::from)
        .unwrap_or_else(|| env::repo_root().join("conformance/justified.toml"));
    let only = opt("--only");
    assert!(
        bridge.exists(),
        "{} missing: cargo build --release -p p11bridge",
        bridge.display()
    );

    let dir = env::repo_root().join(format!("target/conformance/matrix-{}", std::process::id()));
    env::setup(&dir, &[], "");

    let t0 = std::time::Instant::now();
    let sh: Vec<Row> = if only.as_deref() != Some("bridge") {
        runner::run_column(&softhsm, runner::kind_of(&cases::softhsm_target()))
    } else {
        vec![]
    };
    let t1 = t0.elapsed();
    let br: Vec<Row> = if only.as_deref() != Some("softhsm") {
        runner::run_column(&bridge, runner::kind_of(&cases::bridge_target()))
    } else {
        vec![]
    };
    let t2 = t0.elapsed() - t1;
    let justified = load_justified(&justified_path);
    let why = |id: &str| -> Option<&String> {
        justified.get(id).or_else(|| {
            justified
                .iter()
                .find(|(k, _)| k.ends_with('*') && id.starts_with(&k[..k.len() - 1]))
                .map(|(_, v)| v)
        })
    };

    // Rows in order: the bridge's, then any only SoftHSM has.
    let mut order: Vec<String> = br.iter().map(|r| r.id.clone()).collect();
    let bmap: HashMap<&str, &Row> = br.iter().map(|r| (r.id.as_str(), r)).collect();
    let smap: HashMap<&str, &Row> = sh.iter().map(|r| (r.id.as_str(), r)).collect();
    for r in &sh {
        if !bmap.contains_key(r.id.as_str()) {
            order.push(r.id.clone());
        }
    }
    let w = order.iter().map(|s| s.len()).max().unwrap_or(10).min(110);
    println!(
        "{:w$} | {:40} | {:28} | {:28}",
        "row", "spec", "softhsm", "bridge"
    );
    println!("{}", "-".repeat(w + 104));
    let (mut sh_pass, mut sh_n, mut br_pass, mut br_n, mut failed) = (0, 0, 0, 0, 0);
    let mut diffs = vec![];
    let mut failures = vec![];
    for id in &order {
        let s = smap.get(id.as_str());
        let b = bmap.get(id.as_str());
        let spec = b.or(s).map(|r| r.spec.as_str()).unwrap_or("");
        let cell = |r: Option<&&Row>| match r {
            None => "-".to_string(),
            Some(r) if r.pass => r.got.clone(),
            Some(r) => format!("{} ✗", r.got),
        };
        println!("{id:w$} | {spec:40} | {:28} | {:28}", cell(s), cell(b));
        if let Some(s) = s {
            sh_n += 1;
            sh_pass += s.pass as usize;
        }
        if let Some(b) = b {
            br_n += 1;
            if b.pass {
                br_pass += 1;
            } else if why(id).is_none() {
                failed += 1;
                failures.push(format!("{id}: spec {spec}, bridge {}", b.got));
            }
        }
        let sg = s.map(|r| r.got.as_str()).unwrap_or("-");
        let bg = b.map(|r| r.got.as_str()).unwrap_or("-");
        // Rows only one module has ("-") or that do not apply to one ("n/a") are no differences.
        if only.is_none() && sg != bg && ![sg, bg].iter().any(|g| *g == "n/a" || *g == "-") {
            let reason = match why(id) {
                Some(r) => format!("justified: {r}"),
                None if b.is_some_and(|b| b.pass) => "UNJUSTIFIED (the bridge follows the spec, SoftHSM does not: add to justified.toml)".to_string(),
                None => "BRIDGE BUG".to_string(),
            };
            diffs.push(format!(
                "{id}\n    spec {spec} | softhsm {sg} | bridge {bg}\n    {reason}"
            ));
        }
    }
    println!();
    println!(
        "softhsm column: {sh_pass}/{sh_n} rows as the spec says ({:.1} s)",
        t1.as_secs_f64()
    );
    println!(
        "bridge column:  {br_pass}/{br_n} rows as the spec says ({:.1} s)",
        t2.as_secs_f64()
    );
    println!(
        "\n{} differences between SoftHSM2 and the bridge:",
        diffs.len()
    );
    for d in &diffs {
        println!("  {d}");
    }
    let unjustified_diffs = diffs.iter().filter(|d| d.contains("UNJUSTIFIED")).count();
    if !failures.is_empty() {
        println!("\nbridge rows failing the spec without a justification:");
        for f in &failures {
            println!("  {f}");
        }
    }
    if unjustified_diffs > 0 {
        println!(
            "\n{unjustified_diffs} differences without a justification (bridge follows the spec)"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} passed, {} failed", br_n - failed, failed);
    std::process::exit(if failed > 0 { 1 } else { 0 });
}

fn load_justified(p: &std::path::Path) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        justified: BTreeMap<String, String>,
    }
    match std::fs::read_to_string(p) {
        Ok(s) => {
            toml::from_str::<File>(&s)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .justified
        }
        Err(_) => BTreeMap::new(),
    }
}
