#!/usr/bin/env bash
# conformance/fuzz/run.sh [SECONDS]
#
# Builds the `cryptoki_calls` fuzz target (cargo fuzz: libFuzzer + AddressSanitizer/LeakSanitizer, release with
# debug assertions; RUSTC_BOOTSTRAP=1 lets cargo-fuzz's nightly flags work on the stable toolchain) and runs it
# for SECONDS (default 60) against p11bridge over a fresh SoftHSM2 token. Exits non-zero on a crash, a hang
# (-timeout), a leak report or a build failure; prints the executions and executions/s.
#
# Needs: cargo install cargo-fuzz. Build products go to $CARGO_TARGET_DIR/fuzz (default <repo>/target/fuzz); a
# first build takes ~9 minutes on 2 shared cores (the sanitized std and every dependency), a rebuild seconds.
# The corpus is kept in target/conformance/fuzz/corpus, crash inputs in target/conformance/fuzz/artifacts.
set -uo pipefail

secs=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz missing (cargo install cargo-fuzz)" >&2; exit 2; }

t0=$(date +%s)
if ! (cd "$here" && nice -n 10 cargo fuzz build -O -a --target-dir "$target_dir" cryptoki_calls); then
    echo "fuzz: build failed" >&2
    exit 1
fi
echo "fuzz: build took $(($(date +%s) - t0)) s"

host=$(rustc -vV | sed -n 's/^host: //p')
bin=$target_dir/$host/release/cryptoki_calls
work=$root/target/conformance/fuzz
mkdir -p "$work/corpus" "$work/artifacts"
log=$work/last-run.log

# The target makes its own token and configuration unless P11BRIDGE_CONFIG is set.
unset P11BRIDGE_CONFIG
"$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1
rc=$?
rm -rf "$root"/target/conformance/fuzz-token-*

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
echo "fuzz: ${runs:-0} executions in ${secs} s (${rate:-0}/s), corpus $(ls "$work/corpus" | wc -l) inputs"
if [[ $rc -ne 0 ]] || grep -qE "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY: .*Sanitizer|ALARM: working on the last Unit" "$log"; then
    echo "fuzz: FAILED (exit $rc); see $log:" >&2
    grep -E -A 30 "ERROR:|==[0-9]+==|ALARM|panicked|SUMMARY" "$log" | head -60 >&2
    exit 1
fi
echo "fuzz: no crash, hang or leak"
