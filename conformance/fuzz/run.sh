#!/usr/bin/env bash
# conformance/fuzz/run.sh [SECONDS [HOSTILE_SECONDS]]
#
# Builds the fuzz targets (cargo fuzz: libFuzzer + AddressSanitizer/LeakSanitizer, release with debug assertions;
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz's nightly flags work on the stable toolchain) and the hostile PKCS#11 module
# (conformance/fuzz/hostile-module), then runs, time-boxed:
#   cryptoki_calls    SECONDS (default 60)          Cryptoki call sequences against the bridge over SoftHSM2
#   hostile_vault     HOSTILE_SECONDS (default 40)  a Vault whose every answer is mutated by the input
#   hostile_kms       HOSTILE_SECONDS               an AWS KMS (JSON 1.1) whose every answer is mutated
#   hostile_upstream  HOSTILE_SECONDS               an upstream PKCS#11 module whose every answer is scripted
# Exits non-zero on a crash (a panic anywhere: libfuzzer-sys aborts on it even where the module would catch it), a
# canary or length finding (an assertion of the target), a hang (-timeout), a leak report or a build failure;
# prints the executions and executions/s of each target.
#
# FUZZ_TARGETS="a b" restricts the targets run. Needs: cargo install cargo-fuzz. Build products go to
# $CARGO_TARGET_DIR/fuzz (default <repo>/target/fuzz); a first build takes ~10 minutes on 2 shared cores (the
# sanitized std and every dependency), a rebuild seconds. Corpora are kept in target/conformance/fuzz/corpus[-T],
# crash inputs in target/conformance/fuzz/artifacts. The long campaign outside CI: conformance/fuzz/campaign.sh.
set -uo pipefail

secs=${1:-60}
hsecs=${2:-40}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
targets=${FUZZ_TARGETS:-cryptoki_calls hostile_vault hostile_kms hostile_upstream}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz missing (cargo install cargo-fuzz)" >&2; exit 2; }

t0=$(date +%s)
if ! (cd "$here" && nice -n 10 cargo build --release --manifest-path hostile-module/Cargo.toml \
    --target-dir "$target_dir/hostile-module"); then
    echo "fuzz: build of the hostile module failed" >&2
    exit 1
fi
export HOSTILE_MODULE=$target_dir/hostile-module/release/libp11bridge_hostile_module.so
for t in $targets; do
    if ! (cd "$here" && nice -n 10 cargo fuzz build -O -a --target-dir "$target_dir" "$t"); then
        echo "fuzz: build of $t failed" >&2
        exit 1
    fi
done
echo "fuzz: build took $(($(date +%s) - t0)) s"

# The targets' per-process work directories (a SoftHSM2 token, a hostile backend's configuration) end in the pid;
# remove those whose process is gone — never another run's (a campaign beside CI's run lost its configuration so).
sweep_work_dirs() {
    local d
    for d in "$root"/target/conformance/fuzz-token-* "${TMPDIR:-/tmp}"/p11bridge-hostile-*; do
        [[ -e $d ]] || continue
        kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
    done
}

host=$(rustc -vV | sed -n 's/^host: //p')
work=$root/target/conformance/fuzz
mkdir -p "$work/artifacts"
failed=0
for t in $targets; do
    bin=$target_dir/$host/release/$t
    if [[ $t == cryptoki_calls ]]; then
        corpus=$work/corpus
        s=$secs
    else
        corpus=$work/corpus-$t
        s=$hsecs
    fi
    mkdir -p "$corpus"
    # The hostile targets' inputs are mostly the backend's script: no slow growth of the input length.
    extra=()
    [[ $t == hostile_* ]] && extra=(-len_control=0 -max_len=2048)
    log=$work/last-run-$t.log
    [[ $t == cryptoki_calls ]] && log=$work/last-run.log
    # cryptoki_calls makes its own token and configuration unless P11BRIDGE_CONFIG is set; the hostile targets
    # always write their own.
    (
        unset P11BRIDGE_CONFIG
        exec "$bin" -max_total_time="$s" "${extra[@]}" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
            -artifact_prefix="$work/artifacts/$t-" "$corpus"
    ) >"$log" 2>&1
    rc=$?
    sweep_work_dirs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    echo "fuzz: $t: ${runs:-0} executions in ${s} s (${rate:-0}/s), ${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) inputs"
    if [[ $rc -ne 0 ]] || grep -qE "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY: .*Sanitizer|ALARM: working on the last Unit" "$log"; then
        echo "fuzz: $t FAILED (exit $rc); see $log:" >&2
        grep -vE '^#[0-9]+|NEW_FUNC|^p11bridge: ' "$log" | grep -E -A 30 "ERROR:|==[0-9]+==|ALARM|panicked|SUMMARY" | head -60 >&2
        failed=1
    fi
done
[[ $failed -eq 0 ]] || exit 1
echo "fuzz: no crash, hang, leak or finding"
