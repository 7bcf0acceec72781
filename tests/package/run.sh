#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/package/run.sh: the Debian package, as a user gets it. Needs root (dpkg -i) and a Debian system.
#
#  1. builds it (scripts/package.sh) and installs it with dpkg -i;
#  2. starts SoftHSM2, OpenBao (on 127.0.0.1:8200, as the example configuration says) and moto, and installs the
#     packaged example configuration as /etc/p11bridge/p11bridge.toml unchanged (only its env: secrets are given, in
#     /etc/p11bridge/p11bridge.env, plus SOFTHSM2_CONF and AWS_ENDPOINT_URL_KMS to reach the test servers);
#  3. with no --module, no P11BRIDGE_MODULE, no P11BRIDGE_CONFIG and no path into the build tree: `p11bridge check`
#     and `list`, `p11-kit list-modules`, pkcs11-tool signing with the packaged module, GnuTLS `p11tool
#     --list-tokens` through p11-kit, `man -w p11bridge` and `man -w p11bridge.toml`;
#  4. the service layout (tests/package/service.sh): the packaged socket and service units run without systemd by
#     tests/package/socket-unit.py; pkcs11-tool and openssl sign through p11-kit-client.so with keys of the three
#     backends while the client's environment holds no backend credential; a user outside p11bridge-users is
#     refused; killing the service mid-loop costs the client an error, not a hang;
#  4b. the blocks of docs/consumers.md marked `sh tested`, as written (tests/package/docs.sh);
#  5. dpkg -r: nothing left but /etc/p11bridge and the audit trail; dpkg --purge: nothing left.
# Each check prints PASS/FAIL; the last line is "package: N passed, M failed". PACKAGE_KEEP=1 keeps the work
# directory and leaves the package installed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$here/../.." && pwd)
[[ $(id -u) -eq 0 ]] || { echo "package: needs root (dpkg -i)" >&2; exit 2; }
# shellcheck source=../../scripts/servers.sh
source "$ROOT/scripts/servers.sh"

WORK=$(mktemp -d /tmp/p11bridge-package.XXXXXX)
chmod 0755 "$WORK" # the service user reads the SoftHSM2 token below it
export WORK
passed=0 failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
# check NAME COMMAND...: runs it, output to a log shown on failure.
check() {
    local name=$1 log
    shift
    log=$WORK/logs/${name//[^A-Za-z0-9_.-]/_}.log
    mkdir -p "$WORK/logs"
    if "$@" >"$log" 2>&1; then pass "$name"; else
        fail "$name"
        tail -n 15 "$log" | sed 's/^/    /'
    fi
}
log() { printf 'package: %s\n' "$*" >&2; }

# dpkg refuses to wait for its lock (another apt-get on the machine): retry for a minute while that is the cause.
dpkg_() {
    local i
    for i in $(seq 1 60); do
        dpkg "$@" 2>"$WORK/dpkg.err" && return 0
        if ! grep -q 'lock' "$WORK/dpkg.err"; then
            cat "$WORK/dpkg.err" >&2
            return 1
        fi
        sleep 1
    done
    cat "$WORK/dpkg.err" >&2
    return 1
}

cleanup() {
    [[ -n ${SERVICE_PID:-} ]] && kill -TERM -- "-$SERVICE_PID" 2>/dev/null
    [[ -n ${SOCK:-} ]] && rm -f "$SOCK" && rmdir "$(dirname "$SOCK")" 2>/dev/null
    servers_cleanup
    userdel -r p11bridge-outsider >/dev/null 2>&1
    userdel -r p11bridge-app >/dev/null 2>&1
    if [[ -n ${PACKAGE_KEEP:-} ]]; then
        echo "work directory kept: $WORK; the package stays installed" >&2
    else
        dpkg-query -W p11bridge >/dev/null 2>&1 && dpkg_ --purge p11bridge >/dev/null 2>&1
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
MODULE=/usr/lib/$MULTIARCH/pkcs11/libp11bridge.so
export MODULE

# --- 1. build and install ------------------------------------------------------------------------------------------
start=$SECONDS
deb=$(bash "$ROOT/scripts/package.sh" 2>"$WORK/package.log" | tail -n 1)
if [[ ! -f $deb ]]; then
    tail -n 30 "$WORK/package.log" >&2
    fail "build: scripts/package.sh"
    echo "package: $passed passed, $failed failed"
    exit 1
fi
pass "build: $(basename "$deb") ($((SECONDS - start)) s)"
dpkg-query -W p11bridge >/dev/null 2>&1 && dpkg_ --purge p11bridge >/dev/null
# Debian's container images drop manual pages and documentation (/etc/dpkg/dpkg.cfg.d/docker or excludes:
# `path-exclude /usr/share/man/*`, `path-exclude /usr/share/doc/*`): include ours again (command-line options come
# after the configuration files, so they win), so that the checks below test the package, not the image's policy.
# PACKAGE_SIMULATE_EXCLUDES=1 adds those excludes on the command line first, to test this on any machine.
if grep -Eqs '^path-exclude[= ]+/usr/share/(man|doc)' /etc/dpkg/dpkg.cfg.d/*; then
    log "this system excludes /usr/share/man or /usr/share/doc from packages; re-including p11bridge's files"
fi
include=()
[[ -n ${PACKAGE_SIMULATE_EXCLUDES:-} ]] && include+=(--path-exclude='/usr/share/man/*' --path-exclude='/usr/share/doc/*')
include+=(--path-include='/usr/share/man/man1/p11bridge.1.gz' --path-include='/usr/share/man/man5/p11bridge.toml.5.gz'
    --path-include='/usr/share/doc/p11bridge/*')
check "install: dpkg -i" dpkg_ "${include[@]}" -i "$deb"
dpkg -L p11bridge | sort >"$WORK/files.txt"
check "install: module at $MODULE" test -f "$MODULE"
check "install: p11-kit module file" grep -qx 'module: libp11bridge.so' /usr/share/p11-kit/modules/p11bridge.module
check "install: no test-only backend in the module" bash -c "! grep -q P11BRIDGE_ENABLE_TEST_BACKENDS $MODULE"
check "install: user p11bridge, group p11bridge-users" bash -c 'id p11bridge && getent group p11bridge-users'
check "install: /etc/p11bridge is root:p11bridge 0750" bash -c '[[ $(stat -c %U:%G:%a /etc/p11bridge) == root:p11bridge:750 ]]'
if command -v systemd-analyze >/dev/null; then # (package systemd; CI containers may not have it)
    check "install: systemd-analyze verify the units" \
        systemd-analyze verify /lib/systemd/system/p11bridge.socket /lib/systemd/system/p11bridge@.service
fi

# --- 2. servers and the example configuration ----------------------------------------------------------------------
eval "$(bash "$ROOT/softhsm-setup.sh" "$WORK/softhsm" 2>"$WORK/softhsm-setup.log")" ||
    { cat "$WORK/softhsm-setup.log" >&2; exit 2; }
chown -R p11bridge:p11bridge "$WORK/softhsm" # the service reads (and locks) the token as p11bridge
# The example says address = "http://127.0.0.1:8200": use that port when it is free (and its cluster port 8201).
example=/usr/share/doc/p11bridge/examples/p11bridge.toml
port_free() { python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $1))" 2>/dev/null; }
if port_free 8200 && port_free 8201; then
    bao_start "$WORK/bao" 8200 || exit 2
    install -m 0640 -g p11bridge "$example" /etc/p11bridge/p11bridge.toml
    check "example config installed unchanged" cmp "$example" /etc/p11bridge/p11bridge.toml
else
    log "127.0.0.1:8200 is taken: OpenBao on a free port, and the example's address changed to it"
    bao_start "$WORK/bao" || exit 2
    sed "s|http://127.0.0.1:8200|$BAO_ADDR|" "$example" | install -m 0640 -g p11bridge /dev/stdin /etc/p11bridge/p11bridge.toml
fi
"$BAO" secrets enable transit >/dev/null && "$BAO" write -f transit/keys/app-signing type=ecdsa-p256 >/dev/null ||
    { fail "OpenBao transit key"; exit 1; }
moto_start "$WORK/moto" || exit 2
python3 - <<'PY' || { fail "moto KMS key"; exit 1; }
import os, boto3
kms = boto3.client("kms", endpoint_url=os.environ["KMS_ENDPOINT"], region_name="us-east-1")
key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
kms.create_alias(AliasName="alias/app-kms-signing", TargetKeyId=key["KeyMetadata"]["KeyId"])
PY
# The secrets the example's env: references name, as the service gets them (EnvironmentFile=).
P11BRIDGE_PIN=package-pin-1357
cat >/etc/p11bridge/p11bridge.env <<EOF
P11BRIDGE_PIN=$P11BRIDGE_PIN
HSM_PIN=1234
VAULT_TOKEN=$BAO_TOKEN
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_ENDPOINT_URL_KMS=$KMS_ENDPOINT
AWS_EC2_METADATA_DISABLED=true
SOFTHSM2_CONF=$SOFTHSM2_CONF
EOF
chgrp p11bridge /etc/p11bridge/p11bridge.env && chmod 0640 /etc/p11bridge/p11bridge.env
# From here on no variable of this shell points at a server or holds a secret: every command gets exactly the
# environment it is given (as_p11bridge: the service user with the env file, as the README tells an operator).
SECRET_VALUES=("$P11BRIDGE_PIN" "$BAO_TOKEN" "$AWS_SECRET_ACCESS_KEY")
export SECRET_VALUES_FILE=$WORK/secret-values
printf '%s\n' "${SECRET_VALUES[@]}" >"$SECRET_VALUES_FILE"
unset P11BRIDGE_CONFIG P11BRIDGE_MODULE VAULT_TOKEN BAO_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY SOFTHSM2_CONF
as_p11bridge() {
    (cd / && runuser -u p11bridge -- env -i PATH=/usr/bin:/bin HOME=/var/lib/p11bridge \
        sh -c 'set -a; . /etc/p11bridge/p11bridge.env; set +a; exec "$@"' sh "$@")
}
export -f as_p11bridge

# --- 3. the installed module and command, with no path into the build tree ----------------------------------------
check "p11bridge check (no --module, no --config)" as_p11bridge p11bridge check
as_p11bridge p11bridge list >"$WORK/list.txt" 2>&1
three_backends() { # FILE: a `p11bridge list` output showing the keys of the three backends and the view
    grep -q 'token=unified;object=rsa-2048' "$1" && grep -q 'token=unified;object=app-signing' "$1" &&
        grep -q 'token=unified;object=app-kms-signing' "$1" && grep -q 'token=apps;object=app-kms-signing' "$1" &&
        ! grep -q 'token=apps;object=rsa-2048' "$1"
}
check "p11bridge list (no --module, no --config): keys of the three backends" three_backends "$WORK/list.txt"
if grep -q 'cannot load' "$WORK/list.txt"; then
    # A command that does not look for the module where the package puts it: say whether the rest would pass.
    log "p11bridge does not find $MODULE by itself (the two checks above); with --module $MODULE:"
    as_p11bridge p11bridge --module "$MODULE" check >&2 && log "  check: OK"
    as_p11bridge p11bridge --module "$MODULE" list >"$WORK/list-module.txt" 2>&1
    three_backends "$WORK/list-module.txt" && log "  list: keys of the three backends: OK"
fi
check "p11-kit list-modules shows p11bridge" \
    as_p11bridge sh -c 'p11-kit list-modules >/tmp/p11kit-$$.txt; grep -A3 "^p11bridge:" /tmp/p11kit-$$.txt | grep -q "libp11bridge.so"; r=$?; rm -f /tmp/p11kit-$$.txt; exit $r'
echo "package test" >"$WORK/msg"
chmod 0644 "$WORK/msg"
check "pkcs11-tool --module $MODULE: ECDSA-SHA256 with the HSM's EC key, openssl verifies" as_p11bridge sh -c "
    pkcs11-tool --module $MODULE --token-label unified --login --pin \"\$P11BRIDGE_PIN\" -m ECDSA-SHA256 --id 02 \
        --signature-format openssl --sign -i $WORK/msg -o /tmp/pkg-sig-\$\$ &&
    pkcs11-tool --module $MODULE --token-label unified --read-object --type pubkey --id 02 -o /tmp/pkg-pub-\$\$ &&
    openssl dgst -sha256 -verify /tmp/pkg-pub-\$\$ -keyform DER -signature /tmp/pkg-sig-\$\$ $WORK/msg; r=\$?
    rm -f /tmp/pkg-sig-\$\$ /tmp/pkg-pub-\$\$; exit \$r"
check "GnuTLS p11tool --list-tokens (p11-kit) shows the unified token" \
    as_p11bridge sh -c 'p11tool --list-tokens | grep -q "token=unified"'
check "man -w p11bridge" man -w p11bridge
check "man -w p11bridge.toml" man -w p11bridge.toml
check "man -w p11bridge.toml finds section 5" bash -c 'man -w 5 p11bridge.toml | grep -q man5/p11bridge.toml.5'
check "man pages render without groff warnings" bash -c '
    w=$(for p in p11bridge "5 p11bridge.toml"; do MANWIDTH=100 man --warnings $p 2>&1 >/dev/null; done); echo "$w"; [[ -z $w ]]'

# --- 4. the service behind p11-kit's RPC ---------------------------------------------------------------------------
# shellcheck source=service.sh
source "$here/service.sh"

# --- 4b. docs/consumers.md, as written (replaces /etc/p11bridge/p11bridge.toml with the page's configuration) -----
# shellcheck source=docs.sh
source "$here/docs.sh"

# --- 4c. installing again (the upgrade path: prerm upgrade, postinst configure) keeps the configuration -----------
cp /etc/p11bridge/p11bridge.toml "$WORK/config-before"
check "dpkg -i again (upgrade path)" dpkg_ "${include[@]}" -i "$deb"
check "dpkg -i again: configuration and its permissions kept" bash -c "
    cmp $WORK/config-before /etc/p11bridge/p11bridge.toml &&
    [[ \$(stat -c %U:%G:%a /etc/p11bridge /etc/p11bridge/p11bridge.env) == \$'root:p11bridge:750\nroot:p11bridge:640' ]]"

# --- 5. remove, purge ----------------------------------------------------------------------------------------------
if [[ -z ${PACKAGE_KEEP:-} ]]; then
    check "dpkg -r" dpkg_ -r p11bridge
    left=$(while read -r f; do [[ ! -d $f ]] && [[ -e $f || -L $f ]] && echo "$f"; done <"$WORK/files.txt")
    check "dpkg -r: no file of the package left" test -z "$left"
    [[ -n $left ]] && echo "$left" | sed 's/^/    left: /'
    check "dpkg -r: the configuration stays" test -f /etc/p11bridge/p11bridge.toml -a -f /etc/p11bridge/p11bridge.env
    check "dpkg -r: state removed (cache), the audit trail stays" \
        bash -c '[[ ! -e /var/lib/p11bridge && -s /var/log/p11bridge/audit.jsonl ]]'
    check "dpkg --purge" dpkg_ --purge p11bridge
    check "dpkg --purge: /etc/p11bridge, /var/lib/p11bridge, /var/log/p11bridge gone" \
        bash -c '[[ ! -e /etc/p11bridge && ! -e /var/lib/p11bridge && ! -e /var/log/p11bridge ]]'
    check "dpkg --purge: the package is unknown to dpkg" bash -c '! dpkg-query -W p11bridge'
fi

echo "package: $passed passed, $failed failed ($((SECONDS - start)) s)"
((failed == 0))
