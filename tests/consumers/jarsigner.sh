#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: jarsigner (JDK 17) through SunPKCS11, with the SunPKCS11 configuration of java.sh. SunPKCS11's KeyStore
# shows a private key only with a certificate object of the same CKA_ID, and builds the chain from the token's
# certificates, so for each signing key (RSA and EC of each backend): a CSR signed by the key through the bridge
# (pkcs11-provider), a code-signing certificate from OpenBao's PKI (pki.sh, role `code-signing`), `p11bridge cert
# import` of it, and the intermediate and root CA certificates written to the token once. Then `jarsigner` signs a jar
# made here with `jar`, and `jarsigner -verify -strict` with a truststore holding only the PKI root must say
# "jar verified." with no chain warning.
#
# This consumer runs with its own bridge configuration (run.sh's, with two changes) so that the certificates it
# installs are seen by no other consumer: the upstream HSM backend uses a second SoftHSM2 token, "signers", where
# the HSM signing keys are generated (`p11bridge keygen`; the fixture keys already have self-signed certificates), and
# the Vault and KMS backends keep imported certificates in their own `cert_store_dir`.
# shellcheck disable=SC2317 # functions run through check
set -uo pipefail
CONSUMER=jarsigner
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=pki.sh
source "$here/pki.sh"
dir=$WORK/jarsigner
mkdir -p "$dir"
cd "$dir" || exit 2
CLI=$(dirname "$SO")/p11bridge

command -v jarsigner >/dev/null || {
    na token "all checks" "jarsigner is not installed (a JDK: tests/consumers/deps.sh)"
    exit 0
}
check token "OpenBao PKI: root pki, intermediate pki_int, roles (bao CLI)" pki_setup
[[ -s $PKI/ready ]] || exit 0

# --- this consumer's bridge configuration and HSM token -------------------------------------------------------------
own_config() { # run.sh's configuration with the HSM on token "signers" and a cert_store_dir per remote backend
    sed -e 's/^token_label = "upstream"$/token_label = "signers"/' \
        -e "s|^cert_cache_dir = .*|&\ncert_store_dir = \"$dir/imported\"|" "$P11BRIDGE_CONFIG" >p11bridge.toml &&
        grep -q '^token_label = "signers"$' p11bridge.toml &&
        [[ $(grep -c '^cert_store_dir = ' p11bridge.toml) -eq $(wc -w <<<"${BACKENDS/hsm/}") ]] && cat p11bridge.toml
}
check token "this consumer's bridge configuration (HSM token \"signers\", own cert_store_dir)" own_config
export P11BRIDGE_CONFIG=$dir/p11bridge.toml
signers_token() {
    softhsm2-util --show-slots | grep -qE 'Label: +signers *$' && return 0
    softhsm2-util --init-token --free --label signers --pin "$HSM_PIN" --so-pin "${UPSTREAM_SO_PIN:-12345678}"
}
check token "SoftHSM2 token \"signers\" for this consumer (softhsm2-util --init-token)" signers_token

# The SunPKCS11 configuration of java.sh: the library and the first slot (`unified`).
cat >p11bridge-java.cfg <<CFG
name = p11bridge
library = $SO
slotListIndex = 0
CFG
jks=(-keystore NONE -storetype PKCS11 -addprovider SunPKCS11 -providerArg "$dir/p11bridge-java.cfg")

signer() { # backend kind → the key's label (HSM: generated on the signers token, once)
    if [[ $1 != hsm ]]; then
        key_label "$1" "$2"
        return
    fi
    local l=hsm-signer-$2 type=rsa2048
    [[ $2 == ec ]] && type=p256
    if ! grep -qx "$l" hsm-keys.txt 2>/dev/null; then
        t "$CLI" keygen --backend hsm --type "$type" --label "$l" >&2 || return 1
        echo "$l" >>hsm-keys.txt
    fi
    echo "$l"
}

issue() { # label: CSR (pkcs11-provider) → pki_int/sign/code-signing → p11bridge cert import
    rm -f "$1.csr" "$1.pem"
    OPENSSL_CONF=$PKI/provider.cnf t openssl req -new -key "pkcs11:token=unified;object=$1;type=private" \
        -subj "/O=p11bridge consumers/CN=$1 code signing" -out "$1.csr" &&
        OPENSSL_CONF=/dev/null openssl req -in "$1.csr" -noout -verify &&
        pki_sign code-signing "$1.csr" "$1.pem" &&
        t "$CLI" cert import --uri "pkcs11:token=unified;object=$1;type=private" --cert "$1.pem"
}

ca_certs() { # the intermediate and the root, as certificate objects without a key (the slot's default backend: HSM)
    local c
    for c in int:consumers-intermediate-ca root:consumers-root-ca; do
        t pkcs11-tool --module "$SO" --token-label unified --login --pin "$P11BRIDGE_PIN" \
            --write-object "$PKI/${c%%:*}.der" --type cert --label "${c#*:}" || return 1
    done
}

chain() { # label: keytool's view of the entry: a private key whose chain is leaf → intermediate → root
    awk -v a="$1" '/^Alias name: /{ p = ($3 == a) } p' keytool-list.txt >"$1.keytool.txt"
    grep -E 'Entry type|chain length|Owner:' "$1.keytool.txt"
    grep -q 'Entry type: PrivateKeyEntry' "$1.keytool.txt" && grep -q 'Certificate chain length: 3' "$1.keytool.txt" &&
        grep -q "Owner: CN=$1 code signing" "$1.keytool.txt"
}

sign() { # label
    rm -f "app-$1.jar"
    T=120 t jarsigner "${jks[@]}" -storepass "$P11BRIDGE_PIN" -signedjar "app-$1.jar" app.jar "$1" &&
        [[ -s app-$1.jar ]]
}

verify() { # label: -strict makes every chain, key usage or trust problem an error; the output is checked as well
    [[ -s app-$1.jar ]] || { echo "no signed jar for $1"; return 1; }
    T=120 t jarsigner -verify -strict -verbose:summary -keystore "$PKI/trust.p12" -storepass changeit "app-$1.jar" \
        >"$1.verify.log" 2>&1
    local rc=$?
    cat "$1.verify.log"
    ((rc == 0)) && grep -qx 'jar verified.' "$1.verify.log" && grep -qF "Signed by \"CN=$1 code signing" "$1.verify.log" &&
        ! grep -qiE 'not validated|unknown|invalid|unsigned|not signed|self-signed' "$1.verify.log"
}

tampered() { # label: a class replaced after signing makes -verify fail
    [[ -s app-$1.jar ]] || { echo "no signed jar for $1"; return 1; }
    rm -rf tampered && mkdir -p tampered/p && cp "app-$1.jar" tampered/app.jar &&
        printf 'changed' >tampered/p/Hello.class && (cd tampered && jar --update --file app.jar p/Hello.class) || return 1
    if T=120 t jarsigner -verify -strict -keystore "$PKI/trust.p12" -storepass changeit tampered/app.jar \
        >"$1.tampered.log" 2>&1; then
        echo "jarsigner -verify accepted a modified jar"
        return 1
    fi
    grep -m1 -iE 'digest|SecurityException' "$1.tampered.log"
}

make_jar() {
    mkdir -p classes &&
        printf 'package p;\npublic class Hello { public static void main(String[] a) { System.out.println("hello"); } }\n' \
            >Hello.java && T=120 t javac -d classes Hello.java && T=120 t jar --create --file app.jar -C classes .
}

if [[ ! -x $CLI ]]; then
    na token "all checks" "no p11bridge command beside $SO (cargo build --release -p p11bridge-cli)"
    exit 0
fi
check token "CA certificates (intermediate, root) written to the token (pkcs11-tool --write-object)" ca_certs
# A jar to sign, made here; the truststore for verification holds the PKI root only.
check token "a jar to sign (javac, jar --create)" make_jar
[[ -s $PKI/trust.p12 ]] || keytool -importcert -noprompt -alias consumers-root -file "$PKI/root.pem" \
    -keystore "$PKI/trust.p12" -storetype PKCS12 -storepass changeit >/dev/null 2>&1

labels=()
for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        l=$(signer "$b" "$kind" 2>"$LOGS/$CONSUMER.$b.$kind.keygen.log")
        if [[ -z $l ]]; then
            echo "FAIL $CONSUMER $b p11bridge keygen ($kind)"
            record fail "$b" "p11bridge keygen ($kind)" "$(tail -1 "$LOGS/$CONSUMER.$b.$kind.keygen.log")"
            continue
        fi
        check "$b" "CSR through the bridge, code-signing certificate from OpenBao pki_int, p11bridge cert import ($kind)" \
            issue "$l"
        labels+=("$b:$kind:$l")
    done
    if has_key "$b" ed25519; then
        na "$b" "all (ed25519)" "JDK 17's SunPKCS11 has no EdDSA keys (KeyStore.getKey: unknown key type)"
    else
        no_key "$b" ed25519
    fi
done

T=120 t keytool -list -v "${jks[@]}" -storepass "$P11BRIDGE_PIN" >keytool-list.txt 2>&1
for e in "${labels[@]}"; do
    IFS=: read -r b kind l <<<"$e"
    check "$b" "KeyStore entry with the chain leaf → intermediate → root (keytool -list) ($kind)" chain "$l"
    check "$b" "jarsigner signs a jar with the key ($kind)" sign "$l"
    check "$b" "jarsigner -verify -strict, truststore = PKI root: jar verified ($kind)" verify "$l"
done
# One modified jar is enough to show that -verify checks what it says.
if ((${#labels[@]})); then
    IFS=: read -r b kind l <<<"${labels[0]}"
    check "$b" "jarsigner -verify -strict rejects a jar modified after signing ($kind)" tampered "$l"
fi
exit 0
