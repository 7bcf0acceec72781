#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: OpenSSL 3 — pkcs11-provider (bookworm-backports) on the full `unified` slot, and libp11's engine
# (libengine-pkcs11-openssl 0.4.12) on the `engine` view slot (no Ed25519 keys: libp11 0.4.12 cannot enumerate the
# private keys of a token holding one). Keys addressed by RFC 7512 URIs. For each backend's keys: dgst -sign,
# pkeyutl -sign, pkeyutl -decrypt (OAEP), req -x509 (a CA certificate), and a TLS handshake (s_server with the key,
# s_client verifying the chain against the generated certificate). Every result is checked by OpenSSL's default
# provider alone (OPENSSL_CONF=/dev/null).
# shellcheck disable=SC2317 # functions run through check
set -uo pipefail
CONSUMER=openssl
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir=$WORK/openssl
mkdir -p "$dir"
cd "$dir" || exit 2

sslv() { OPENSSL_CONF=/dev/null openssl "$@"; }
printf '%s\n' "$P11BRIDGE_PIN" >pin.txt

# The provider: module path and the token PIN (from a file) in the provider section (lib.sh).
provider_cnf "$SO" "$dir/pin.txt" >provider.cnf
engine_so=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"/\1/p')/pkcs11.so
cat >engine.cnf <<CNF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $engine_so
MODULE_PATH = $SO
init = 0
CNF
prov() { OPENSSL_CONF=$dir/provider.cnf t openssl "$@"; }
eng() { OPENSSL_CONF=$dir/engine.cnf t openssl "$@"; }
puri() { echo "pkcs11:token=unified;object=$1;type=$2"; }
euri() { echo "pkcs11:token=engine;object=$1;type=$2?pin-value=$P11BRIDGE_PIN"; }
ekey() { echo -engine pkcs11 -keyform engine; }

echo "p11bridge consumer matrix: openssl" >msg
sslv dgst -sha256 -binary msg >msg.sha256
sslv dgst -sha1 -binary msg >msg.sha1

# --- helpers: $1 = label, $2 = kind, $3 = p (provider) or e (engine) -----------------------------------------------
pub() { # the public key, read through the consumer, must equal the one in the bridge's certificate
    if [[ $3 == p ]]; then
        prov pkey -pubin -in "$(puri "$1" public)" -out "$1.$3.pub.pem"
    else
        # shellcheck disable=SC2046
        eng pkey $(ekey | sed 's/-keyform/-inform/') -pubin -in "$(euri "$1" public)" -out "$1.$3.pub.pem"
    fi
}
dgst_sign() {
    if [[ $2 == ed25519 ]]; then
        prov pkeyutl -sign -rawin -inkey "$(puri "$1" private)" -in msg -out "$1.$3.dgst.sig" &&
            sslv pkeyutl -verify -pubin -inkey "$1.$3.pub.pem" -rawin -in msg -sigfile "$1.$3.dgst.sig"
        return
    fi
    if [[ $3 == p ]]; then
        prov dgst -sha256 -sign "$(puri "$1" private)" -out "$1.$3.dgst.sig" msg
    else
        # shellcheck disable=SC2046
        eng dgst -sha256 $(ekey) -sign "$(euri "$1" private)" -out "$1.$3.dgst.sig" msg
    fi && sslv dgst -sha256 -verify "$1.$3.pub.pem" -signature "$1.$3.dgst.sig" msg
}
direct_dgst_sign() {
    OPENSSL_CONF=$WORK/hsm-certs/openssl.cnf t openssl dgst -sha256 -sign "pkcs11:token=upstream;object=$1;type=private" \
        -out "$1.direct.sig" msg && sslv dgst -sha256 -verify "$1.p.pub.pem" -signature "$1.direct.sig" msg
}
pkeyutl_sign() { # $4: extra -pkeyopt (PSS)
    local opts=(-pkeyopt digest:sha256) vopts=(-pkeyopt digest:sha256)
    [[ ${4:-} == pss ]] && opts+=(-pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32) &&
        vopts+=(-pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32)
    if [[ $3 == p ]]; then
        prov pkeyutl -sign -inkey "$(puri "$1" private)" "${opts[@]}" -in msg.sha256 -out "$1.$3.pk${4:-}.sig"
    else
        # shellcheck disable=SC2046
        eng pkeyutl -sign $(ekey) -inkey "$(euri "$1" private)" "${opts[@]}" -in msg.sha256 -out "$1.$3.pk${4:-}.sig"
    fi && sslv pkeyutl -verify -pubin -inkey "$1.$3.pub.pem" "${vopts[@]}" -in msg.sha256 -sigfile "$1.$3.pk${4:-}.sig"
}
oaep() { # $4: hash
    local o=(-pkeyopt rsa_padding_mode:oaep -pkeyopt "rsa_oaep_md:$4" -pkeyopt "rsa_mgf1_md:$4")
    sslv pkeyutl -encrypt -pubin -inkey "$1.$3.pub.pem" "${o[@]}" -in msg -out "$1.$3.oaep" &&
        if [[ $3 == p ]]; then
            prov pkeyutl -decrypt -inkey "$(puri "$1" private)" "${o[@]}" -in "$1.$3.oaep" -out "$1.$3.dec"
        else
            # shellcheck disable=SC2046
            eng pkeyutl -decrypt $(ekey) -inkey "$(euri "$1" private)" "${o[@]}" -in "$1.$3.oaep" -out "$1.$3.dec"
        fi && cmp msg "$1.$3.dec"
}
ca_cert() { # a CA certificate made with the key; the default provider checks its signature and CA:TRUE
    local subj=(-subj "/O=p11bridge consumers/CN=$1" -addext "basicConstraints=critical,CA:TRUE"
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -addext "subjectAltName=DNS:localhost")
    if [[ $3 == p ]]; then
        prov req -x509 -new -days 30 "${subj[@]}" -key "$(puri "$1" private)" -out "$1.$3.ca.pem"
    else
        # shellcheck disable=SC2046
        eng req -x509 -new -days 30 "${subj[@]}" $(ekey) -key "$(euri "$1" private)" -out "$1.$3.ca.pem"
    fi && sslv verify -CAfile "$1.$3.ca.pem" "$1.$3.ca.pem" &&
        sslv x509 -in "$1.$3.ca.pem" -noout -ext basicConstraints | grep -q 'CA:TRUE' &&
        cmp <(sslv x509 -in "$1.$3.ca.pem" -noout -pubkey) "$1.$3.pub.pem"
}
tls() { # s_server with the key and its CA certificate; s_client verifies the chain and fetches a page
    local port pid rc cert=$1.$3.ca.pem host=localhost
    if [[ ! -s $cert ]]; then # req -x509 failed: use the key's certificate from the token instead
        cert=$1.$3.token.pem host=$1
        prov x509 -in "$(puri "$1" cert)" -out "$cert" || return 1
    fi
    port=$(free_port)
    rm -f "$1.$3.server.log" "$1.$3.client.log"
    if [[ $3 == p ]]; then
        OPENSSL_CONF=$dir/provider.cnf timeout 60 openssl s_server -accept "127.0.0.1:$port" -naccept 1 -www \
            -key "$(puri "$1" private)" -cert "$cert" >"$1.$3.server.log" 2>&1 &
    else
        # shellcheck disable=SC2046
        OPENSSL_CONF=$dir/engine.cnf timeout 60 openssl s_server -accept "127.0.0.1:$port" -naccept 1 -www \
            $(ekey) -key "$(euri "$1" private)" -cert "$cert" >"$1.$3.server.log" 2>&1 &
    fi
    pid=$!
    if wait_line "$1.$3.server.log" "^ACCEPT" 20; then
        printf 'GET / HTTP/1.0\r\n\r\n' | OPENSSL_CONF=/dev/null timeout 30 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
            -CAfile "$cert" -verify_return_error -verify_hostname "$host" -ign_eof >"$1.$3.client.log" 2>&1
        rc=$?
    else
        echo "s_server did not listen"
        rc=1
    fi
    wait "$pid" 2>/dev/null
    cat "$1.$3.server.log"
    grep -E 'Verify return code|Protocol|Cipher is|^HTTP' "$1.$3.client.log"
    ((rc == 0)) && grep -q 'Verify return code: 0 (ok)' "$1.$3.client.log" && grep -q '^HTTP/1.0 200' "$1.$3.client.log" &&
        return 0
    echo "handshake failed: $(grep -h -m1 -o 'SSL routines:[^:]*:[^:]*' "$1.$3.server.log" "$1.$3.client.log" | head -1)"
    return 1
}

# --- the engine on the full slot: the quirk the view slot exists for ------------------------------------------------
if eng pkey -engine pkcs11 -inform engine -in "pkcs11:token=unified;object=rsa-2048;type=private?pin-value=$P11BRIDGE_PIN" \
    -noout >engine-unified.log 2>&1; then
    echo "PASS $CONSUMER token engine loads keys of the full unified slot"
    record pass token "engine: keys of the full unified slot (holds Ed25519)"
else
    na token "engine: keys of the full unified slot (holds Ed25519)" \
        "libp11 0.4.12 finds no private key on a token holding an Ed25519 key (confirmed: '$(grep -o 'object not found' engine-unified.log | head -1)'); it uses the engine view slot"
fi

for b in $BACKENDS; do
    for kind in rsa ec ed25519; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        l=$(key_label "$b" "$kind")
        [[ $kind == rsa ]] && has_key "$b" rsa-dec && ld=$(key_label "$b" rsa-dec) || ld=$l
        for c in p e; do
            if [[ $c == p ]]; then who=provider; else who=engine; fi
            if [[ $c == e && $kind == ed25519 ]]; then
                na "$b" "$who: all ($kind)" "libp11 0.4.12 has no Ed25519; the engine view slot hides these keys"
                continue
            fi
            check "$b" "$who: read public key ($kind)" pub "$l" "$kind" "$c"
            check "$b" "$who: dgst -sign ($kind)" dgst_sign "$l" "$kind" "$c"
            if [[ $b == hsm && $c == p && $kind == ec ]]; then
                # Reference: the same command with SoftHSM2's module directly (the HSM's own configuration).
                check "$b" "provider: dgst -sign (ec), SoftHSM2 directly, for reference" direct_dgst_sign "$l"
            fi
            if [[ $kind != ed25519 ]]; then
                check "$b" "$who: pkeyutl -sign ($kind)" pkeyutl_sign "$l" "$kind" "$c"
            fi
            if [[ $kind == rsa ]]; then
                check "$b" "$who: pkeyutl -sign PSS (rsa)" pkeyutl_sign "$l" "$kind" "$c" pss
                if [[ $b == hsm ]]; then
                    check "$b" "$who: pkeyutl -decrypt OAEP (rsa)" oaep "$ld" "$kind" "$c" sha1
                else
                    [[ $ld != "$l" ]] && pub "$ld" "$kind" "$c" >/dev/null 2>&1
                    check "$b" "$who: pkeyutl -decrypt OAEP (rsa)" oaep "$ld" "$kind" "$c" sha256
                fi
            fi
            check "$b" "$who: req -x509 CA certificate ($kind)" ca_cert "$l" "$kind" "$c"
            check "$b" "$who: TLS s_server ↔ s_client verifies ($kind)" tls "$l" "$kind" "$c"
        done
    done
done
exit 0
