# Sourced by the consumer scripts that need certificates issued by a real CA for keys on the bridge (nginx.sh,
# osslsigncode.sh, jarsigner.sh), after lib.sh. The CA is the OpenBao dev server run.sh started, set up as an operator
# would with the `bao` CLI, once per run (the first script to call pki_setup does it; later ones reuse it):
#   pki      root CA (10 years), "p11bridge consumers root CA"
#   pki_int  intermediate CA (5 years) signed by the root, with two roles:
#            tls-server    CN/SAN localhost, serverAuth, 30 days
#            code-signing  any name, digitalSignature + codeSigning, 1 year (jarsigner warns under six months)
# Files in $PKI: root.pem, int.pem (the intermediate), root.der, int.der; engine.cnf / provider.cnf (OpenSSL
# configurations loading libp11's engine and pkcs11-provider with the bridge), pin.txt.
# Gives: pki_setup, pki_sign ROLE CSR OUT (the leaf, PEM), engine_csr LABEL SUBJECT OUT [SAN] (a CSR signed by the
# key through the bridge, with libp11's engine on the `engine` view slot), ENGINE_SO.
# shellcheck shell=bash

PKI=$WORK/pki
ENGINE_SO=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"/\1/p')/pkcs11.so

# The PEM `bao write -field=certificate` prints, without its trailing newline; a newline added.
bao_pem() { printf '%s\n' "$("$BAO" write -field=certificate "$@")"; }

pki_setup() {
    [[ -s $PKI/ready ]] && return 0
    mkdir -p "$PKI" || return 1
    (
        set -e
        cd "$PKI"
        "$BAO" secrets enable pki
        "$BAO" secrets tune -max-lease-ttl=87600h pki
        bao_pem pki/root/generate/internal common_name="p11bridge consumers root CA" issuer_name=root \
            ttl=87600h >root.pem
        "$BAO" secrets enable -path=pki_int pki
        "$BAO" secrets tune -max-lease-ttl=43800h pki_int
        "$BAO" write -field=csr pki_int/intermediate/generate/internal \
            common_name="p11bridge consumers intermediate CA" >int.csr
        bao_pem pki/root/sign-intermediate csr=@int.csr format=pem ttl=43800h >int.pem
        "$BAO" write pki_int/intermediate/set-signed certificate=@int.pem
        "$BAO" write pki_int/roles/tls-server key_type=any allowed_domains=localhost allow_bare_domains=true \
            allow_localhost=true server_flag=true client_flag=false max_ttl=720h ttl=720h
        "$BAO" write pki_int/roles/code-signing key_type=any allow_any_name=true enforce_hostnames=false \
            server_flag=false client_flag=false code_signing_flag=true key_usage=DigitalSignature \
            max_ttl=8760h ttl=8760h
        OPENSSL_CONF=/dev/null openssl verify -CAfile root.pem int.pem
        openssl x509 -in root.pem -outform DER -out root.der
        openssl x509 -in int.pem -outform DER -out int.der
        printf '%s\n' "$P11BRIDGE_PIN" >pin.txt
        # libp11's engine, initialized when the configuration is loaded (no `init = 0`): nginx takes the engine by
        # its id and loads the key without initializing it itself ("engine routines::not initialised" otherwise).
        cat >engine.cnf <<CNF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE_SO
MODULE_PATH = $SO
CNF
        provider_cnf "$SO" "$PKI/pin.txt" >provider.cnf
    ) >"$PKI/setup.log" 2>&1 || {
        echo "consumers: the OpenBao PKI could not be set up:" >&2
        tail -5 "$PKI/setup.log" >&2
        return 1
    }
    echo ok >"$PKI/ready"
}

# pki_sign ROLE CSR OUT: pki_int signs the CSR (OpenBao checks the CSR's signature first); OUT is the leaf.
pki_sign() {
    local pem
    pem=$(T=30 t "$BAO" write -field=certificate "pki_int/sign/$1" "csr=@$2") && printf '%s\n' "$pem" >"$3"
}

# engine_csr LABEL SUBJECT OUT [SAN]: `openssl req -new` with the key on the bridge (libp11's engine, `engine` slot,
# PIN in the URI); the CSR's own signature is checked by OpenSSL's default provider.
engine_csr() {
    OPENSSL_CONF=$PKI/engine.cnf t openssl req -new -engine pkcs11 -keyform engine \
        -key "pkcs11:token=engine;object=$1;type=private?pin-value=$P11BRIDGE_PIN" -subj "$2" \
        ${4:+-addext "subjectAltName=$4"} -out "$3" &&
        OPENSSL_CONF=/dev/null openssl req -in "$3" -noout -verify
}
