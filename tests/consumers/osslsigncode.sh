#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: osslsigncode 2.9 (bookworm-backports), Authenticode signing of a Windows PE file with the key on the
# bridge. osslsigncode 2.9 reaches PKCS#11 keys only through libp11's OpenSSL engine (-pkcs11engine, -pkcs11module;
# provider support came in 2.10), so keys are taken from the `engine` view slot. For each backend's RSA and EC key:
# a CSR signed by the key through the bridge, a code-signing certificate issued by OpenBao's PKI (pki.sh, role
# `code-signing`), `osslsigncode sign` of a minimal PE32 (signers/mkpe.py writes it: 1 KiB, `xor eax, eax; ret`)
# with the chain (leaf + intermediate) in the signature, then `osslsigncode verify -CAfile root.pem`.
# shellcheck disable=SC2317 # functions run through check
set -uo pipefail
CONSUMER=osslsigncode
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=pki.sh
source "$here/pki.sh"
dir=$WORK/osslsigncode
mkdir -p "$dir"
cd "$dir" || exit 2

command -v osslsigncode >/dev/null || {
    na token "all checks" "osslsigncode is not installed (tests/consumers/deps.sh installs it from bookworm-backports)"
    exit 0
}
check token "OpenBao PKI: root pki, intermediate pki_int, roles (bao CLI)" pki_setup
[[ -s $PKI/ready ]] || exit 0
check token "a minimal PE32 executable (signers/mkpe.py)" python3 "$here/signers/mkpe.py" app.exe

issue() { # label: key → CSR (engine) → pki_int/sign/code-signing → chain (leaf + intermediate)
    rm -f "$1.csr" "$1.pem" "$1.chain.pem"
    engine_csr "$1" "/O=p11bridge consumers/CN=$1 code signing" "$1.csr" &&
        pki_sign code-signing "$1.csr" "$1.pem" &&
        cat "$1.pem" "$PKI/int.pem" >"$1.chain.pem" &&
        OPENSSL_CONF=/dev/null openssl verify -CAfile "$PKI/root.pem" -untrusted "$PKI/int.pem" "$1.pem" &&
        openssl x509 -in "$1.pem" -noout -ext extendedKeyUsage | grep -q 'Code Signing' # (no -purpose codesign in 3.0)
}

sign() { # label: the PIN is the key's "password" (-pass); -h sha256
    rm -f "$1.signed.exe"
    [[ -s $1.chain.pem ]] || { echo "no certificate for $1"; return 1; }
    t osslsigncode sign -pkcs11engine "$ENGINE_SO" -pkcs11module "$SO" -certs "$1.chain.pem" \
        -key "pkcs11:token=engine;object=$1;type=private" -pass "$P11BRIDGE_PIN" -h sha256 \
        -n "p11bridge consumer matrix" -in app.exe -out "$1.signed.exe" && [[ -s $1.signed.exe ]]
}

verify() { # label: the signature, the chain up to the PKI root, and the signer
    [[ -s $1.signed.exe ]] || { echo "no signed file for $1"; return 1; }
    OPENSSL_CONF=/dev/null t osslsigncode verify -CAfile "$PKI/root.pem" -in "$1.signed.exe" >"$1.verify.log" 2>&1
    local rc=$?
    grep -E 'Subject:|Signature verification|verified signatures|Succeeded|Failed' "$1.verify.log"
    ((rc == 0)) && grep -q 'Signature verification: ok' "$1.verify.log" &&
        grep -q "Subject: .*CN=$1 code signing" "$1.verify.log" && grep -q 'Number of verified signatures: 1' "$1.verify.log"
}

tampered() { # label: a signed file with one byte of its code changed no longer verifies
    [[ -s $1.signed.exe ]] || { echo "no signed file for $1"; return 1; }
    cp "$1.signed.exe" "$1.tampered.exe" && printf '\x90' | dd of="$1.tampered.exe" bs=1 seek=$((0x200)) conv=notrunc 2>/dev/null
    if OPENSSL_CONF=/dev/null t osslsigncode verify -CAfile "$PKI/root.pem" -in "$1.tampered.exe" >"$1.tampered.log" 2>&1; then
        echo "osslsigncode verify accepted a modified file"
        return 1
    fi
    grep -m1 -E 'MISMATCH|Failed' "$1.tampered.log"
}

for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        l=$(key_label "$b" "$kind")
        check "$b" "CSR signed through the engine, code-signing certificate from OpenBao pki_int ($kind)" issue "$l"
        check "$b" "osslsigncode sign PE32 -pkcs11engine -pkcs11module ($kind)" sign "$l"
        check "$b" "osslsigncode verify -CAfile root ($kind)" verify "$l"
        check "$b" "osslsigncode verify rejects the file with one byte changed ($kind)" tampered "$l"
    done
    if has_key "$b" ed25519; then
        na "$b" "all (ed25519)" "libp11 0.4.12 (the engine osslsigncode 2.9 uses) has no Ed25519"
    else
        no_key "$b" ed25519
    fi
done
exit 0
