#!/usr/bin/env bash
# scripts/package.sh: builds the Debian package → target/debian/p11bridge_VERSION_ARCH.deb (path printed last).
#
# Plain dpkg-deb, no cargo-deb: nothing to install or build besides what the tests need already, and exact control
# of the multiarch paths and the maintainer scripts. Layout (ARCH triplet from dpkg-architecture / gcc):
#   /usr/lib/<triplet>/pkcs11/libp11bridge.so           the module (p11-kit's module directory)
#   /usr/share/p11-kit/modules/p11bridge.module         its p11-kit registration (module: libp11bridge.so)
#   /usr/bin/p11bridge                                  the command
#   /usr/share/man/man1/p11bridge.1.gz                  generated from the command's own --help (help2man)
#   /usr/share/man/man5/p11bridge.toml.5.gz             docs/p11bridge.toml.5
#   /usr/share/doc/p11bridge/examples/p11bridge.toml    the example configuration (+ p11bridge.env)
#   /lib/systemd/system/p11bridge.socket, p11bridge@.service   the module as a service behind p11-kit's RPC
#   /usr/include/p11bridge/p11bridge.h                  vendor constants for C consumers
# The module is built WITHOUT the test-only feature `test-backends` and copied at once (a later `cargo test` with
# the feature rebuilds target/release/libp11bridge.so with it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { printf 'package: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (a Debian system is needed)"
command -v help2man >/dev/null || die "help2man not found (scripts/deps.sh installs it)"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $version ]] || die "no version in Cargo.toml [workspace.package]"
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || true)
[[ -n $multiarch ]] || die "cannot tell the multiarch triplet (install dpkg-dev or gcc)"
libdir=/usr/lib/$multiarch/pkcs11

log "building p11bridge $version ($arch, $multiarch) without test-only backends"
cargo build --release -p p11bridge -p p11bridge-cli >&2

out=$root/target/debian
stage=$out/p11bridge_${version}_$arch
rm -rf "$stage"
umask 022
mkdir -p "$stage/DEBIAN"

# Copy the build's outputs first, before anything can rebuild them.
install -D -m 0644 target/release/libp11bridge.so "$stage$libdir/libp11bridge.so"
install -D -m 0755 target/release/p11bridge "$stage/usr/bin/p11bridge"
if grep -q P11BRIDGE_ENABLE_TEST_BACKENDS "$stage$libdir/libp11bridge.so"; then
    die "libp11bridge.so contains the test-only backend (built with the test-backends feature)"
fi
strip --strip-unneeded "$stage$libdir/libp11bridge.so" "$stage/usr/bin/p11bridge"

# p11-kit registration: a relative module name resolves in p11-kit's module directory ($libdir).
install -D -m 0644 contrib/p11-kit/p11bridge.module "$stage/usr/share/p11-kit/modules/p11bridge.module"
grep -q '^module: libp11bridge.so$' "$stage/usr/share/p11-kit/modules/p11bridge.module" ||
    die "contrib/p11-kit/p11bridge.module must say 'module: libp11bridge.so'"

# The service: p11-kit's RPC server end per connection, as the user p11bridge.
for u in p11bridge.socket p11bridge@.service; do
    install -D -m 0644 "packaging/systemd/$u" "$stage/lib/systemd/system/$u"
done
sed -i "s|@MODULE@|$libdir/libp11bridge.so|" "$stage/lib/systemd/system/p11bridge@.service"

install -D -m 0644 include/p11bridge.h "$stage/usr/include/p11bridge/p11bridge.h"

# Manual pages. p11bridge(1) from the command itself: its --help and every subcommand's --help.
man1=$stage/usr/share/man/man1
man5=$stage/usr/share/man/man5
mkdir -p "$man1" "$man5"
bin=$stage/usr/bin/p11bridge
h2m=$(mktemp)
trap 'rm -f "$h2m"' EXIT
# Every subcommand's --help, nested ones too ("p11bridge cert import"), as a COMMANDS section.
subcommands() { # WORDS...: the subcommands `p11bridge WORDS... --help` lists
    # A subcommand's line starts with two spaces; deeper-indented lines continue a wrapped description.
    "$bin" "$@" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && /^  [^ ]/ { print $1 }' | grep -vx help || true
}
command_help() { # WORDS...
    local sub
    for sub in $(subcommands "$@"); do
        echo ".SS \"p11bridge $* $sub\"" | sed 's/  */ /g'
        echo ".nf"
        "$bin" "$@" "$sub" --help | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
        echo ".fi"
        command_help "$@" "$sub"
    done
}
{
    echo "[COMMANDS]"
    command_help
    cat packaging/p11bridge.1.h2m
} >"$h2m"
help2man --no-info --section 1 --name "check, list and use p11bridge's unified PKCS#11 token" \
    --include "$h2m" --output "$man1/p11bridge.1" "$bin"
sed "s/@VERSION@/$version/" docs/p11bridge.toml.5 >"$man5/p11bridge.toml.5"
gzip -9n "$man1/p11bridge.1" "$man5/p11bridge.toml.5"

# Documentation and the example configuration.
doc=$stage/usr/share/doc/p11bridge
install -D -m 0644 packaging/p11bridge.toml "$doc/examples/p11bridge.toml"
install -D -m 0644 packaging/p11bridge.env "$doc/examples/p11bridge.env"
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
gzip -9nc README.md >"$doc/README.md.gz"
gzip -9nc docs/consumers.md >"$doc/consumers.md.gz"
chmod 0644 "$doc"/*.gz

# Maintainer scripts and control file.
for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
glibc=$(objdump -T "$stage$libdir/libp11bridge.so" "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' |
    sort -uV | tail -n 1)
depends="libc6 (>= $glibc), libgcc-s1"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"

deb=$out/p11bridge_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
log "built $deb"
echo "$deb"
