#!/usr/bin/env bash
# The p11bridge demo: sets up a SoftHSM2 token, builds libp11bridge.so, writes a configuration, and shows a real
# PKCS#11 consumer (pkcs11-tool) listing and signing through the bridge, each signature verified by openssl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$PWD

bash scripts/deps.sh
# shellcheck source=scripts/servers.sh
source scripts/servers.sh
servers_trap
echo "== building libp11bridge.so" >&2
cargo build --release -p p11bridge >&2
so=$root/target/release/libp11bridge.so

demo=$root/target/demo
rm -rf "$demo"
mkdir -p "$demo"
eval "$(bash softhsm-setup.sh "$demo/softhsm")"

echo "== starting an OpenBao dev server with transit keys" >&2
bao_start "$demo/bao"
"$BAO" secrets enable transit >/dev/null
"$BAO" write -f transit/keys/app-signing type=ecdsa-p256 >/dev/null
"$BAO" write -f transit/keys/app-rsa type=rsa-2048 >/dev/null

echo "== starting a KMS emulator (moto + p11bridge's fidelity layer) with one key" >&2
moto_start "$demo/moto"
python3 - "$KMS_ENDPOINT" <<'PY'
import sys, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1")
k = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
kms.create_alias(AliasName="alias/kms-signing", TargetKeyId=k)
PY

export P11BRIDGE_PIN=demo-pin-2468
cat > "$demo/p11bridge.toml" <<TOML
# One unified token over the SoftHSM2 token "upstream", Vault transit and AWS KMS (see README: Configuration).
[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm", "vault", "kms"]

[backend.vault]
kind = "vault-transit"
address = "$BAO_ADDR"
token = "env:BAO_TOKEN"
keys = ["app-signing", "app-rsa"]
cert_cache_dir = "$demo/certs"

[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "$KMS_ENDPOINT"
keys = ["alias/kms-signing"]
cert_cache_dir = "$demo/certs"

[backend.hsm]
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "upstream"
pin = "env:HSM_PIN"
TOML
export P11BRIDGE_CONFIG=$demo/p11bridge.toml

run() { echo; echo "\$ $*"; "$@"; }
tool() { pkcs11-tool --module "$so" --token-label unified "$@"; }

run pkcs11-tool --module "$so" --show-info
run pkcs11-tool --module "$so" --list-slots
run tool --login --pin "$P11BRIDGE_PIN" --list-objects

cd "$demo"
echo "p11bridge demo message" > msg.txt
openssl dgst -sha256 -binary msg.txt > msg.sha256

run tool --read-object --type pubkey --label ec-p256 -o ec.der
openssl pkey -pubin -inform DER -in ec.der -out ec.pem
run tool --login --pin "$P11BRIDGE_PIN" --sign -m ECDSA --id 02 -i msg.sha256 -o ec.sig --signature-format openssl
run openssl pkeyutl -verify -pubin -inkey ec.pem -in msg.sha256 -sigfile ec.sig

run tool --read-object --type pubkey --label rsa-2048 -o rsa.der
openssl pkey -pubin -inform DER -in rsa.der -out rsa.pem
run tool --login --pin "$P11BRIDGE_PIN" --sign -m SHA256-RSA-PKCS-PSS --id 01 -i msg.txt -o rsa.sig
run openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -verify rsa.pem -signature rsa.sig msg.txt

# The Vault key: same consumer, same token, same PIN.
id_of() { tool --login --pin "$P11BRIDGE_PIN" --list-objects 2>/dev/null |
    awk -v l="$1" '$1 == "label:" && $2 == l { f = 1 } f && $1 == "ID:" { print $2; exit }'; }
vid=$(id_of app-signing)
run tool --read-object --type pubkey --id "$vid" -o vault-ec.der
openssl pkey -pubin -inform DER -in vault-ec.der -out vault-ec.pem
run tool --login --pin "$P11BRIDGE_PIN" --sign -m ECDSA --id "$vid" -i msg.sha256 -o vault-ec.sig --signature-format openssl
run openssl pkeyutl -verify -pubin -inkey vault-ec.pem -in msg.sha256 -sigfile vault-ec.sig

# The KMS key: same consumer, same token, same PIN.
kid=$(id_of kms-signing)
run tool --read-object --type pubkey --id "$kid" -o kms-ec.der
openssl pkey -pubin -inform DER -in kms-ec.der -out kms-ec.pem
run tool --login --pin "$P11BRIDGE_PIN" --sign -m ECDSA --id "$kid" -i msg.sha256 -o kms-ec.sig --signature-format openssl
run openssl pkeyutl -verify -pubin -inkey kms-ec.pem -in msg.sha256 -sigfile kms-ec.sig

echo
echo "demo: pkcs11-tool listed and signed through p11bridge with keys in SoftHSM2, Vault transit and AWS KMS;"
echo "      openssl verified every signature."
