#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: p11-kit 0.24 and GnuTLS 3.7. Registers libp11bridge.so with p11-kit through the repository's
# contrib/p11-kit/p11bridge.module (module path rewritten to the library under test) in a private module directory,
# then: p11-kit list-modules; p11tool --list-all and --test-sign (GnuTLS loads p11-kit's registered modules);
# pkcs11-tool through p11-kit-proxy.so (list, sign, openssl verifies).
#
# p11-kit reads no user configuration when running as root ("skipping user config in program running as root"),
# so as root the private directory is bind-mounted over /usr/share/p11-kit/modules in a private mount namespace
# (unshare -m): nothing on the system changes. As another user it goes to ~/.config/pkcs11/modules (HOME points into
# the work directory).
# shellcheck disable=SC2317 # functions run through check
set -uo pipefail
CONSUMER=p11-kit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir=$WORK/p11-kit
mkdir -p "$dir/modules" "$dir/home/.config/pkcs11/modules"
cd "$dir" || exit 2

sed "s|^module: .*|module: $SO|" "$ROOT/contrib/p11-kit/p11bridge.module" >"$dir/modules/p11bridge.module"
cp "$dir/modules/p11bridge.module" "$dir/home/.config/pkcs11/modules/"
proxy=$(dirname "$(dpkg -L libp11-kit0 2>/dev/null | grep -m1 'libp11-kit.so.0$')")/p11-kit-proxy.so
[[ -e $proxy ]] || proxy=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so

# p11k COMMAND...: runs COMMAND seeing the private module directory (and a deadline).
if (($(id -u) == 0)); then
    p11k() {
        # shellcheck disable=SC2016 # expanded by the inner shell
        timeout -k 5 "${T:-60}" unshare -m sh -c 'mount --bind "$0" /usr/share/p11-kit/modules && exec "$@"' \
            "$dir/modules" "$@"
    }
else
    p11k() { HOME=$dir/home t "$@"; }
fi
export GNUTLS_PIN=$P11BRIDGE_PIN

p11k p11-kit list-modules >list-modules.txt 2>&1
lists_tokens() { grep -q '^p11bridge: ' list-modules.txt && grep -q 'token: unified' list-modules.txt && grep -q 'token: engine' list-modules.txt; }
check token "p11-kit list-modules shows p11bridge and its tokens" lists_tokens

p11k p11tool --list-all --login "pkcs11:token=unified" >list-all.txt 2>&1
listed() { # label: a private key and a certificate with that label
    awk -v l="$1" '/^\tType:/ { type = $0 } /^\tLabel:/ && $2 == l { if (type ~ /Private key/) p = 1; if (type ~ /Certificate/) c = 1 }
        END { exit !(p && c) }' list-all.txt
}
test_sign() { # uri [hash]: sign, verify with the private key's parameters and with the token's public key
    local out
    out=$(p11k p11tool --test-sign ${2:+--hash "$2"} --login "$1" 2>&1)
    echo "$out"
    grep -q 'Verifying against public key in the token... ok' <<<"$out"
}

echo "p11bridge consumer matrix: p11-kit proxy" >msg
proxy_sign() { # backend kind: pkcs11-tool through p11-kit-proxy.so signs, openssl verifies
    local id l
    id=$(key_id "$1" "$2") l=$(key_label "$1" "$2")
    p11k pkcs11-tool --module "$proxy" --token-label unified --read-object --type pubkey --id "$id" -o "$l.der" &&
        openssl pkey -pubin -inform DER -in "$l.der" -out "$l.pem" &&
        case $2 in
            rsa) p11k pkcs11-tool --module "$proxy" --token-label unified --login --pin "$P11BRIDGE_PIN" \
                --sign -m SHA256-RSA-PKCS --id "$id" -i msg -o "$l.sig" ;;
            ec) openssl dgst -sha256 -binary msg >msg.sha256 &&
                p11k pkcs11-tool --module "$proxy" --token-label unified --login --pin "$P11BRIDGE_PIN" \
                    --sign -m ECDSA --id "$id" -i msg.sha256 -o "$l.sig" --signature-format openssl ;;
        esac &&
        openssl dgst -sha256 -verify "$l.pem" -signature "$l.sig" msg
}
p11k pkcs11-tool --module "$proxy" -L >proxy-slots.txt 2>&1
check token "pkcs11-tool --module p11-kit-proxy.so -L shows unified" grep -q 'token label *: unified' proxy-slots.txt

for b in $BACKENDS; do
    for kind in rsa ec ed25519; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        l=$(key_label "$b" "$kind")
        check "$b" "p11tool --list-all: $kind private key and certificate" listed "$l"
        if [[ $kind == ed25519 ]]; then
            # p11tool's default SHA-256 has no Ed25519 signature algorithm; --hash SHA512 selects EdDSA-Ed25519.
            check "$b" "p11tool --test-sign ($kind, --hash SHA512)" test_sign "pkcs11:token=unified;object=$l;type=private" SHA512
        else
            check "$b" "p11tool --test-sign ($kind)" test_sign "pkcs11:token=unified;object=$l;type=private"
            check "$b" "pkcs11-tool via p11-kit-proxy.so: sign ($kind)" proxy_sign "$b" "$kind"
        fi
    done
done

# GnuTLS refuses the proxy as an explicit provider; it loads p11-kit's registered modules itself instead.
if p11k p11tool --provider "$proxy" --list-tokens >provider-proxy.txt 2>&1 && grep -q 'Label: unified' provider-proxy.txt; then
    echo "PASS $CONSUMER token p11tool --provider p11-kit-proxy.so"
    record pass token "p11tool --provider p11-kit-proxy.so"
else
    na token "p11tool --provider p11-kit-proxy.so" \
        "p11-kit refuses to load p11-kit-proxy.so as a module of itself ('$(grep -m1 -o 'PKCS #11 initialization error' provider-proxy.txt)'); GnuTLS uses p11-kit's registered modules without --provider"
fi
exit 0
