//! The markdown tables the bench prints: bridge-vs-direct rows, enumeration rows, request counts.

use crate::measure::Stats;
use std::time::Duration;

/// One bridge-vs-direct row: the same work, measured both ways.
pub struct Row {
    pub name: String,
    pub threads: usize,
    pub direct: Stats,
    pub bridge: Stats,
}

impl Row {
    pub fn new(name: &str, threads: usize) -> Row {
        Row {
            name: name.to_string(),
            threads,
            direct: Stats::default(),
            bridge: Stats::default(),
        }
    }
}

pub fn print_row(r: &mut Row) {
    let (dr, br) = (r.direct.rate(), r.bridge.rate());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (d50, d99, b50, b99) = (
        r.direct.pct(0.5),
        r.direct.pct(0.99),
        r.bridge.pct(0.5),
        r.bridge.pct(0.99),
    );
    println!(
        "| {:<34} | {:>3} | {:>10.0} | {:>10.0} | {:>5.3} | {:>9.1} / {:>9.1} | {:>9.1} / {:>9.1} | {:>+8.2} |",
        r.name,
        r.threads,
        dr,
        br,
        br / dr.max(1e-9),
        us(d50),
        us(d99),
        us(b50),
        us(b99),
        us(b50) - us(d50),
    );
}

/// The header of the bridge-vs-direct table.
pub fn header() {
    println!(
        "| {:<34} | {:>3} | {:>10} | {:>10} | {:>5} | {:>21} | {:>21} | {:>8} |",
        "row",
        "thr",
        "direct/s",
        "bridge/s",
        "ratio",
        "direct p50 / p99 µs",
        "bridge p50 / p99 µs",
        "Δp50 µs"
    );
    println!("|{}|", ["-"; 8].map(|_| "----------").join("|"));
}

pub struct EnumRow {
    pub name: String,
    pub ms: f64,
    pub requests: String,
}

pub fn print_enum(r: &EnumRow) {
    println!("| {:<58} | {:>10.2} | {} |", r.name, r.ms, r.requests);
}

/// Request counts as `TOTAL (what N, …)`.
pub fn fmt_counts(v: &[(String, u64)]) -> String {
    let total: u64 = v.iter().map(|x| x.1).sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = v.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// The counts in `after` beyond those in `before`.
pub fn diff(after: &[(String, u64)], before: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let b = before.iter().find(|x| &x.0 == k).map_or(0, |x| x.1);
            (*n > b).then(|| (k.clone(), n - b))
        })
        .collect()
}
