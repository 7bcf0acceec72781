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
# ROUND_RUNS=N: run each target's share in rounds of at most N executions, each a new process (a long-lived
# cryptoki_calls process slows down ten-fold and more as its SoftHSM2 state and ASan's quarantine grow), a row each.
# CORPUS_TAG=T: keep the corpora in corpus-T (cryptoki_calls) / corpus-TARGET-T instead of run.sh's, e.g. to start
# from an empty corpus (short inputs, ~5,000 exec/s) rather than the grown one (long inputs, 150-400 exec/s).
# KEEP_GOING=1: with ROUND_RUNS, a round that ends on a finding is followed by the next one (the finding keeps its
# row, artifact and log) instead of ending the target's share.
# MAX_LEN=N: libFuzzer's -max_len for cryptoki_calls (default: libFuzzer's, growing to 4096 bytes; longer inputs make
# longer call sequences and fewer executions per second).
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

# shellcheck source=lib.sh
source "$here/lib.sh"

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
run_round() { # TARGET RUNS CORPUS
    local t=$1 runs_wanted=$2 corpus=$3
    local bin=$target_dir/$host/release/$t log=$work/campaign-$t.log limit=()
    # The hostile targets' inputs are mostly the backend's script: no slow growth of the input length.
    [[ $t == hostile_* ]] && limit=(-len_control=0 -max_len=2048)
    [[ -n ${MAX_SECONDS:-} ]] && limit+=(-max_total_time="$MAX_SECONDS")
    [[ $t == cryptoki_calls && -n ${MAX_LEN:-} ]] && limit+=(-max_len="$MAX_LEN")
    local before after t0 rc secs runs rate cov ft found
    before=$(ls "$work/artifacts" | grep -c "^$t-" || true)
    t0=$(date +%s)
    (
        unset P11BRIDGE_CONFIG
        exec "$bin" -runs="$runs_wanted" "${limit[@]}" -timeout="${FUZZ_TIMEOUT:-20}" -rss_limit_mb=8192 \
            -print_final_stats=1 -artifact_prefix="$work/artifacts/$t-" "$corpus"
    ) >"$log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    sweep_work_dirs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -aoE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    after=$(ls "$work/artifacts" | grep -c "^$t-" || true)
    found="none"
    if [[ $rc -ne 0 ]] || grep -aqE "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY: .*Sanitizer|ALARM: working on the last Unit" "$log"; then
        found="$((after - before)) artifact(s): $(grep -a -m1 -oE "panicked at [^:]+:[0-9]+|==[0-9]+==ERROR: [A-Za-z]+: [A-Za-z -]+|ALARM: [a-z ]+" "$log" || echo "exit $rc")"
        failed=1
        cp "$log" "$log.finding-$(date +%s)"
    fi
    sum=$((sum + ${runs:-0}))
    last_runs=${runs:-0}
    echo "| $t | ${runs:-0} | $secs | ${rate:-0} | ${cov:-?} | ${ft:-?} | $(ls "$corpus" | wc -l) | $found | $rc |" >>"$results"
}

for t in $targets; do
    share=$((total * ${weights[i]:-1} / wsum))
    i=$((i + 1))
    if [[ $t == cryptoki_calls ]]; then corpus=$work/corpus; else corpus=$work/corpus-$t; fi
    [[ -n ${CORPUS_TAG:-} ]] && corpus=$corpus-$CORPUS_TAG
    [[ $t == cryptoki_calls && -n ${CORPUS_TAG:-} ]] && corpus=$work/corpus-$CORPUS_TAG
    mkdir -p "$corpus"
    left=$share
    while ((left > 0)); do
        round=$left
        [[ -n ${ROUND_RUNS:-} ]] && ((round > ROUND_RUNS)) && round=$ROUND_RUNS
        last_runs=0
        run_round "$t" "$round" "$corpus"
        # A round that stopped short (a finding, MAX_SECONDS, a signal) ends the target's share, unless
        # KEEP_GOING=1: then only its executions count and the next round starts (each finding keeps its row).
        if ((last_runs < round * 9 / 10)); then
            [[ ${KEEP_GOING:-} == 1 && $last_runs -gt 0 ]] || break
            left=$((left - last_runs))
        else
            left=$((left - round))
        fi
    done
done
echo >>"$results"
echo "Total: $sum executions." >>"$results"
cat "$results"
exit $failed
