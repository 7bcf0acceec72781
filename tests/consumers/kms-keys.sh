# Sourced by run.sh when the bridge has the KMS backend, after moto_start: creates the KMS fixture keys in moto
# (RSA-2048 for signing, RSA-2048 for decryption — a KMS key does one or the other —, EC P-256 for signing; AWS
# KMS has no Ed25519 here), tagged so that the backend's discovery (which also finds keys generated through the
# bridge, tagged the same way) selects them; sets kms_config (the [backend.kms] section) and kms_key_lines.
# shellcheck shell=bash
python3 - <<'PY' || return 1
import os
import boto3

kms = boto3.client("kms", endpoint_url=os.environ["KMS_ENDPOINT"], region_name="us-east-1")
for alias, spec, usage in (
    ("kms-rsa-2048", "RSA_2048", "SIGN_VERIFY"),
    ("kms-rsa-2048-dec", "RSA_2048", "ENCRYPT_DECRYPT"),
    ("kms-ec-p256", "ECC_NIST_P256", "SIGN_VERIFY"),
):
    key = kms.create_key(KeySpec=spec, KeyUsage=usage, Tags=[{"TagKey": "p11bridge", "TagValue": "consumers"}])
    kms.create_alias(AliasName="alias/" + alias, TargetKeyId=key["KeyMetadata"]["KeyId"])
PY
# shellcheck disable=SC2034 # used by run.sh
kms_config="
[backend.kms]
kind = \"aws-kms\"
endpoint = \"$KMS_ENDPOINT\"
region = \"us-east-1\"
discover = true
tags = { p11bridge = \"consumers\" }
allow_destroy = true
cert_cache_dir = \"$WORK/certs\"
"
kms_key_lines() {
    local kl
    for kl in rsa:kms-rsa-2048 rsa-dec:kms-rsa-2048-dec ec:kms-ec-p256; do
        echo "kms ${kl%%:*} ${kl#*:} $(id_of "${kl#*:}")"
    done
}
