# Sourced by run.sh. Upstream HSM keys come without certificates; consumers that pair keys with certificates
# (SunPKCS11's KeyStore, p11-kit's trust views, TLS servers) need one, as an operator would install it. Each fixture
# key gets a self-signed certificate made with the HSM's own module (OpenSSL's pkcs11-provider over SoftHSM2
# directly, not through the bridge), stored beside its key through the bridge (C_CreateObject on the unified token,
# whose default backend is the HSM).
# shellcheck shell=bash
hsm_certs() {
    local d=$WORK/hsm-certs kind label id
    mkdir -p "$d"
    printf '%s\n' "$HSM_PIN" >"$d/pin"
    provider_cnf "$SOFTHSM_MODULE" "$d/pin" >"$d/openssl.cnf"
    for kind in rsa ec ed25519; do
        label=$(key_label hsm "$kind") id=$(key_id hsm "$kind")
        if ! OPENSSL_CONF=$d/openssl.cnf timeout 60 openssl req -x509 -new -days 3650 -subj "/O=p11bridge/CN=$label" \
            -key "pkcs11:token=upstream;object=$label;type=private" -out "$d/$label.pem" ||
            ! openssl x509 -in "$d/$label.pem" -outform DER -out "$d/$label.der" ||
            ! timeout 60 pkcs11-tool --module "$SO" --token-label unified --login --pin "$P11BRIDGE_PIN" \
                --write-object "$d/$label.der" --type cert --id "$id" --label "$label" >/dev/null; then
            echo "consumers: no certificate for the HSM key $label" >&2
            return 1
        fi
    done
}
hsm_certs >"$WORK/hsm-certs.log" 2>&1 || { cat "$WORK/hsm-certs.log" >&2; false; }
