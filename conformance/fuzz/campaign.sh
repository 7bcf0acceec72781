#!/usr/bin/env bash
# conformance/fuzz/campaign.sh TOTAL_EXECUTIONS [TARGET...]
#
# The long fuzz campaign, outside CI: builds like run.sh, then runs each target (default: cryptoki_calls
# hostile_vault hostile_kms hostile_upstream) for its share of TOTAL_EXECUTIONS (-runs=, an equal share each;
# SHARES="a:b:c:d" weighs them) — or until MAX_SECONDS per target (default: no limit) — one after the other, keeping
# the corpora of run.sh. Writes a results table (executions, time, exec/s, libFuzzer's final cov:/ft:, corpus size,
# crash artifacts, exit) to target/conformance/fuzz/campaign-results.md and prints it. Exits non-zero if any target
# found something (its log: target/conformance/fuzz/campaign-T.log; its input: artifacts/T-crash-* etc.).
#
# Example: nice -n 10 conformance/fuzz/campaign.sh 10000000     (the documented 10-million-execution campaign)
# FUZZ_TIMEOUT=S (default 20): the per-input timeout; raise it on a loaded machine, where a starved SoftHSM2
# C_Initialize alone can take 20 s (a "timeout" finding that is the machine, not the code).
set -uo pipefail

total=${1:?usage: campaign.sh TOTAL_EXECUTIONS [TARGET...]}
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
targets=${*:-cryptoki_calls hostile_vault hostile_kms hostile_upstream}
export RUSTC_BOOTSTRAP=1

# Build everything (run.sh with FUZZ_TARGETS and no run time would still run; build here the same way).
(cd "$here" && nice -n 10 cargo build --release --manifest-path hostile-module/Cargo.toml \
    --target-dir "$target_dir/hostile-module") || exit 1
export HOSTILE_MODULE=$target_dir/hostile-module/release/libp11bridge_hostile_module.so
for t in $targets; do
    (cd "$here" && nice -n 10 cargo fuzz build -O -a --target-dir "$target_dir" "$t") || exit 1
done

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
results=$work/campaign-results.md
n=$(wc -w <<<"$targets")
IFS=: read -r -a weights <<<"${SHARES:-}"
wsum=0
for ((i = 0; i < n; i++)); do wsum=$((wsum + ${weights[i]:-1})); done
{
    echo "Campaign of $(date -u +%Y-%m-%dT%H:%MZ), $total executions requested, on $(nproc) cores ($(uname -m))."
    echo
    echo "| target | executions | seconds | exec/s | cov | ft | corpus | findings | exit |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|"
} >"$results"
failed=0
i=0
sum=0
for t in $targets; do
    share=$((total * ${weights[i]:-1} / wsum))
    i=$((i + 1))
    bin=$target_dir/$host/release/$t
    if [[ $t == cryptoki_calls ]]; then corpus=$work/corpus; else corpus=$work/corpus-$t; fi
    mkdir -p "$corpus"
    log=$work/campaign-$t.log
    limit=()
    # The hostile targets' inputs are mostly the backend's script: no slow growth of the input length.
    [[ $t == hostile_* ]] && limit=(-len_control=0 -max_len=2048)
    [[ -n ${MAX_SECONDS:-} ]] && limit+=(-max_total_time="$MAX_SECONDS")
    before=$(ls "$work/artifacts" | grep -c "^$t-" || true)
    t0=$(date +%s)
    (
        unset P11BRIDGE_CONFIG
        exec "$bin" -runs="$share" "${limit[@]}" -timeout="${FUZZ_TIMEOUT:-20}" -rss_limit_mb=4096 -print_final_stats=1 \
            -artifact_prefix="$work/artifacts/$t-" "$corpus"
    ) >"$log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    sweep_work_dirs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    after=$(ls "$work/artifacts" | grep -c "^$t-" || true)
    found="none"
    if [[ $rc -ne 0 ]] || grep -qE "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY: .*Sanitizer|ALARM: working on the last Unit" "$log"; then
        found="$((after - before)) artifact(s): $(grep -m1 -oE "panicked at [^:]+:[0-9]+|==[0-9]+==ERROR: [A-Za-z]+: [A-Za-z -]+|ALARM: [a-z ]+" "$log" || echo "exit $rc")"
        failed=1
    fi
    sum=$((sum + ${runs:-0}))
    echo "| $t | ${runs:-0} | $secs | ${rate:-0} | ${cov:-?} | ${ft:-?} | $(ls "$corpus" | wc -l) | $found | $rc |" >>"$results"
done
echo >>"$results"
echo "Total: $sum executions." >>"$results"
cat "$results"
exit $failed
