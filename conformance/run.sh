#!/usr/bin/env bash
# conformance/run.sh [--fuzz-seconds N] [--skip-fuzz]
#
# The conformance harness, end to end:
#   1. builds p11bridge and the harness (release), snapshots libp11bridge.so into target/conformance/
#      (a shared CARGO_TARGET_DIR may be rebuilt by others meanwhile);
#   2. matrix   — the spec matrix against SoftHSM2 and the bridge (conformance/justified.toml);
#   3. stress   — 16 threads, concurrent C_Finalize, watchdog 120 s;
#   4. fuzz     — conformance/fuzz/run.sh (60 s by default; the first build of the sanitized target takes ~9 min);
#   5. faults   — the TCP fault proxy between the bridge and an OpenBao dev server (`bao` on PATH or BAO_BIN), and
#                 between the bridge and moto's KMS behind tests/kms/moto_fidelity.py (requests counted there).
# Prints each part's result and a final `N passed, M failed` (the sum of the parts' rows/checks; a part that
# cannot run counts as one failure). Exits non-zero if anything failed.
#
# Environment: CARGO_TARGET_DIR (default <repo>/target).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
export CARGO_TARGET_DIR=$target
fuzz_secs=60
skip_fuzz=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --fuzz-seconds) fuzz_secs=$2; shift 2 ;;
        --skip-fuzz) skip_fuzz=1; shift ;;
        *) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
    esac
done

t_start=$(date +%s)
out=$root/target/conformance
mkdir -p "$out"

echo "== build"
if ! (cd "$root" && nice -n 10 cargo build --release -p p11bridge -p p11bridge-conformance); then
    echo "build failed"
    echo "0 passed, 1 failed"
    exit 1
fi
cp "$target/release/libp11bridge.so" "$out/libp11bridge.so"
if ! head -c 4096 "$target/release/libp11bridge.d" | grep -q "$root/pkcs11-module/"; then
    echo "warning: $target/release/libp11bridge.so was not built from $root (a shared target dir rebuilt by another tree?)"
fi
export P11BRIDGE_SO=$out/libp11bridge.so
bin=$target/release

total_pass=0 total_fail=0
summary=()
# part NAME LOG COMMAND...: runs a part, takes its last "N passed, M failed" line (or its exit status).
part() {
    local name=$1 log=$2 rc=0 t0 line p f
    shift 2
    echo "== $name"
    t0=$(date +%s)
    "$@" >"$log" 2>&1 || rc=$?
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
    if [[ -n $line ]]; then
        p=${line%% passed*}
        f=${line#*, }
        f=${f%% failed*}
    elif [[ $rc == 0 ]]; then
        p=1 f=0
    else
        p=0 f=1
    fi
    [[ $rc == 0 || $f -gt 0 ]] || f=1
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    summary+=("$(printf '%-8s %6s passed, %4s failed, exit %s, %4s s  (%s)' "$name" "$p" "$f" "$rc" $(($(date +%s) - t0)) "$log")")
    tail -n "${TAIL:-4}" "$log" | sed 's/^/   /'
}

TAIL=14 part matrix "$out/matrix.log" "$bin/matrix"
TAIL=3 part stress "$out/stress.log" "$bin/stress"
if [[ $skip_fuzz == 0 ]]; then
    TAIL=3 part fuzz "$out/fuzz.log" "$here/fuzz/run.sh" "$fuzz_secs"
fi
TAIL=26 part faults "$out/faults.log" "$bin/faults"

echo
echo "== summary ($(($(date +%s) - t_start)) s)"
printf '%s\n' "${summary[@]}"
echo "$total_pass passed, $total_fail failed"
[[ $total_fail -eq 0 ]]
