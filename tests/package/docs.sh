# Sourced by tests/package/run.sh while the package is installed and the servers run: the commands of
# docs/consumers.md, as written, so that the page cannot go stale. Its configuration block (the first ```toml block
# after "## The configuration") becomes /etc/p11bridge/p11bridge.toml; the keys it names are made in OpenBao and
# moto; every block fenced as ```sh tested is run by bash (-e, -o pipefail) in a fresh directory with a fresh HOME
# and an environment of the configuration's secrets plus SOFTHSM2_CONF and AWS_ENDPOINT_URL_KMS (the test
# servers), as the page says. One check per block, named by its line in the page.
# shellcheck shell=bash

DOC=$ROOT/docs/consumers.md
D=$WORK/docs
mkdir -p "$D"

# The keys the page's configuration and commands name.
for kv in vault-rsa-2048:rsa-2048 vault-ec-p256:ecdsa-p256 vault-ed25519:ed25519; do
    "$BAO" write -f "transit/keys/${kv%%:*}" "type=${kv#*:}" >/dev/null || fail "docs: OpenBao key ${kv%%:*}"
done
AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing python3 - <<'PY' || fail "docs: moto keys"
import os, boto3
kms = boto3.client("kms", endpoint_url=os.environ["KMS_ENDPOINT"], region_name="us-east-1")
for alias, spec in (("kms-rsa-2048", "RSA_2048"), ("kms-ec-p256", "ECC_NIST_P256")):
    key = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")
    kms.create_alias(AliasName="alias/" + alias, TargetKeyId=key["KeyMetadata"]["KeyId"])
PY

awk '/^## The configuration/ { c = 1 } c && /^```toml$/ { f = 1; next } f && /^```$/ { exit } f { print }' "$DOC" \
    >"$D/p11bridge.toml"
check "docs: the configuration block of docs/consumers.md is valid" \
    as_p11bridge p11bridge --module "$MODULE" --config "$D/p11bridge.toml" check
install -m 0640 -g p11bridge "$D/p11bridge.toml" /etc/p11bridge/p11bridge.toml

# Each tested block, to its own file: block-LINE.sh.
awk -v d="$D" '
    /^```sh tested$/ { n = NR; f = d "/block-" NR ".sh"; printf "" > f; next }
    n && /^```$/ { close(f); n = 0; next }
    n { print >> f }' "$DOC"
blocks=("$D"/block-*.sh)
check "docs: docs/consumers.md has tested blocks" test -e "${blocks[0]}"
for b in "${blocks[@]}"; do
    line=${b##*/block-}
    line=${line%.sh}
    mkdir -p "$D/run-$line/home"
    heading=$(awk -v l="$line" 'NR < l && /^#+ / { h = $0 } NR == l { print h; exit }' "$DOC")
    check "docs: docs/consumers.md:$line, $heading" \
        bash -c 'cd "$1" && exec env -i PATH=/usr/bin:/bin HOME="$1/home" $(cat /etc/p11bridge/p11bridge.env) \
            timeout 120 bash -e -o pipefail "$2"' sh "$D/run-$line" "$b"
done
