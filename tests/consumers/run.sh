#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/consumers/run.sh BRIDGE_SO [CONSUMER...]
#
# The consumer matrix: real PKCS#11 consumers (pkcs11-tool, OpenSSL engine and provider, Java SunPKCS11, OpenSSH,
# p11-kit/GnuTLS, the Vault/OpenBao pkcs11 seal's call sequence; nginx, jarsigner and osslsigncode with certificates
# issued by OpenBao's PKI, pki.sh) against p11bridge's unified token, with keys in
# each backend: the upstream HSM (SoftHSM2), Vault transit (an OpenBao dev server) and AWS KMS (moto + the fidelity
# layer) when the bridge has the KMS backend. One environment is set up, then each consumer script runs in turn
# (all of them, or those named). Every check prints PASS/FAIL/N/A; docs/consumers-results.md is written from the
# run; the last line is "N passed, M failed".
#
# Environment: CONSUMERS_KEEP=1 keeps the work directory; CONSUMERS_NO_DOC=1 does not rewrite the results page.
set -uo pipefail
[[ $# -ge 1 ]] || { sed -n '3,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
SO=$(realpath "$1")
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$here/../.." && pwd)
export SO ROOT
# shellcheck source=../../scripts/servers.sh
source "$ROOT/scripts/servers.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11bridge-consumers.XXXXXX")
export WORK
cleanup() {
    servers_cleanup
    if [[ -n ${CONSUMERS_KEEP:-} ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
start=$SECONDS

consumers=(pkcs11-tool openssl java openssh p11-kit vault-seal nginx osslsigncode jarsigner)
(($#)) && consumers=("$@")

log() { printf 'consumers: %s\n' "$*" >&2; }

# --- backends ------------------------------------------------------------------------------------------------------
eval "$(bash "$ROOT/softhsm-setup.sh" "$WORK/softhsm" 2>"$WORK/softhsm-setup.log")" ||
    { cat "$WORK/softhsm-setup.log" >&2; exit 2; }

log "starting OpenBao"
bao_start "$WORK/bao" || exit 2
"$BAO" secrets enable transit >/dev/null || exit 2
for kv in vault-rsa-2048:rsa-2048 vault-ec-p256:ecdsa-p256 vault-ed25519:ed25519; do
    "$BAO" write -f "transit/keys/${kv%%:*}" "type=${kv#*:}" >/dev/null || exit 2
done

# The KMS column exists when the bridge was built with the KMS backend.
BACKENDS="hsm vault"
if grep -q 'aws-kms' "$SO" 2>/dev/null && [[ -f $ROOT/tests/kms/moto_fidelity.py ]]; then
    BACKENDS="hsm vault kms"
fi
export BACKENDS

kms_config=""
if [[ $BACKENDS == *kms* ]]; then
    log "starting moto (KMS)"
    moto_start "$WORK/moto" || exit 2
    # shellcheck source=kms-keys.sh
    source "$here/kms-keys.sh" || exit 2
fi

export P11BRIDGE_PIN=consumer-pin-2468
read -ra backend_array <<<"$BACKENDS"
backend_list=$(printf '"%s", ' "${backend_array[@]}")
backend_list="[${backend_list%, }]"
write_config() { # file [default_backend]
    cat >"$1" <<TOML
# Written by tests/consumers/run.sh: one unified token over every backend, and a view of the same keys without
# Ed25519 for libp11's OpenSSL engine (libp11 0.4.12 cannot enumerate private keys when an Ed25519 key is present).
[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = $backend_list
${2:+default_backend = \"$2\"}

[[slot]]
label = "engine"
user_pin = "env:P11BRIDGE_PIN"
backends = $backend_list
key_types = ["rsa", "ec"]

[backend.hsm]
kind = "pkcs11"
module = "$SOFTHSM_MODULE"
token_label = "upstream"
pin = "env:HSM_PIN"

[backend.vault]
kind = "vault-transit"
address = "$BAO_ADDR"
token = "env:BAO_TOKEN"
discover = true
prefix = "vault-"
allow_destroy = true
cert_cache_dir = "$WORK/certs"
$kms_config
TOML
}
write_config "$WORK/p11bridge.toml"
for b in $BACKENDS; do write_config "$WORK/p11bridge.default-$b.toml" "$b"; done
export P11BRIDGE_CONFIG=$WORK/p11bridge.toml

# --- the key table -------------------------------------------------------------------------------------------------
KEYS=$WORK/keys.txt
export KEYS
timeout 60 pkcs11-tool --module "$SO" --token-label unified --login --pin "$P11BRIDGE_PIN" -O >"$WORK/objects.txt" 2>&1 ||
    { log "pkcs11-tool -O failed:"; cat "$WORK/objects.txt" >&2; exit 2; }
id_of() { awk -v l="$1" '$1 == "label:" && $2 == l { f = 1 } f && $1 == "ID:" { print $2; exit }' "$WORK/objects.txt"; }
{
    for kl in rsa:rsa-2048 ec:ec-p256 ed25519:ed25519 aes:aes-256; do
        echo "hsm ${kl%%:*} ${kl#*:} $(id_of "${kl#*:}")"
    done
    for kl in rsa:vault-rsa-2048 ec:vault-ec-p256 ed25519:vault-ed25519; do
        echo "vault ${kl%%:*} ${kl#*:} $(id_of "${kl#*:}")"
    done
    [[ $BACKENDS == *kms* ]] && kms_key_lines
} >"$KEYS"
awk 'NF != 4 { bad = 1; print "consumers: no key for: " $0 > "/dev/stderr" } END { exit bad }' "$KEYS" || exit 2

PKCS11_PROVIDER=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"/\1/p')/pkcs11.so
export PKCS11_PROVIDER

# Upstream HSM keys have no certificate; consumers that pair keys with certificates (SunPKCS11's KeyStore) need one.
# Each is self-signed by its key through the bridge (OpenSSL's pkcs11-provider) and stored next to it.
CONSUMER=setup
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=hsm-certs.sh
source "$here/hsm-certs.sh" || exit 2

# --- consumers -----------------------------------------------------------------------------------------------------
RESULTS=$WORK/results.tsv
: >"$RESULTS"
export RESULTS
for c in "${consumers[@]}"; do
    echo "== $c"
    timeout -k 10 900 bash "$here/$c.sh" || log "$c.sh ended with status $?"
done

passed=$(grep -c '^pass' "$RESULTS")
failed=$(grep -c '^fail' "$RESULTS")
nas=$(grep -c '^n/a' "$RESULTS")
elapsed=$((SECONDS - start))
if [[ -z ${CONSUMERS_NO_DOC:-} ]]; then
    python3 "$here/results.py" "$RESULTS" "$BACKENDS" "$elapsed" >"$ROOT/docs/consumers-results.md" &&
        log "wrote docs/consumers-results.md"
fi
echo "$passed passed, $failed failed ($nas not applicable; ${elapsed}s)"
((failed == 0))
