#!/usr/bin/env bash
# Shared by run.sh and campaign.sh (sourced; needs $root).

# Leaks inside the upstream module's OpenSSL are SoftHSM2's, not the bridge's (lsan.supp says why).
export LSAN_OPTIONS="suppressions=$root/conformance/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

# The targets' per-process work directories (a SoftHSM2 token, a hostile backend's configuration) end in the pid;
# remove those whose process is gone — never another run's (a campaign beside CI's run lost its configuration so).
sweep_work_dirs() {
    local d
    for d in "$root"/target/conformance/fuzz-token-* "${TMPDIR:-/tmp}"/p11bridge-hostile-*; do
        [[ -e $d ]] || continue
        kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
    done
}

