#!/usr/bin/env bash
# scripts/install.sh: builds the Debian package (scripts/package.sh → target/debian/p11bridge_VERSION_ARCH.deb) and
# installs it: `apt-get install ./….deb`, i.e. dpkg -i plus the package's dependencies (p11-kit, passwd). Needs a
# Rust toolchain (≥ 1.85) and root, or sudo, for the installation. See README.md, "Install".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
# What the build needs beyond cargo: help2man (the manual page), binutils (strip, objdump), dpkg-deb.
missing=()
command -v help2man >/dev/null || missing+=(help2man)
command -v strip >/dev/null && command -v objdump >/dev/null || missing+=(binutils)
if ((${#missing[@]})); then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
deb=$(bash "$root/scripts/package.sh" | tail -n 1)
# Container images often tell dpkg to drop manual pages and /usr/share/doc (/etc/dpkg/dpkg.cfg.d/): keep ours (the
# manual pages and the example configuration).
keep=()
for p in /usr/share/man/man1/p11bridge.1.gz /usr/share/man/man5/p11bridge.toml.5.gz '/usr/share/doc/p11bridge/*'; do
    keep+=(-o "DPkg::Options::=--path-include=$p")
done
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${keep[@]}" "$deb"
echo "installed $(basename "$deb"): module /usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null ||
    gcc -print-multiarch)/pkcs11/libp11bridge.so, command /usr/bin/p11bridge; next: man p11bridge.toml"
