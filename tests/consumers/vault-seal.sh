#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: the Vault/OpenBao `seal "pkcs11"` wrapper. The HSM-enabled builds cannot be installed here (OpenBao's
# pkcs11 seal is an external cgo plugin no registry ships; Vault's is Enterprise-only), so vault-seal/seal.py replays
# go-kms-wrapping's pkcs11 call sequence with PyKCS11: token by label, RW session, login, C_FindObjects on label +
# key type + CKA_ENCRYPT/CKA_DECRYPT expecting exactly one match, C_GenerateRandom for the IV, CKM_AES_GCM with that
# IV and a 128-bit tag, or CKM_RSA_PKCS_OAEP with SHA-256. A 32-byte root key is encrypted in one process and
# decrypted in another (as across a Vault restart).
# shellcheck disable=SC2317 # functions run through check
set -uo pipefail
CONSUMER=vault-seal
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$WORK/vault-seal
mkdir -p "$dir"
cd "$dir" || exit 2

# PyKCS11 is Debian's python3-pykcs11: use the system interpreter.
py=/usr/bin/python3
seal() { t "$py" "$here/vault-seal/seal.py" "$1" "$SO" unified "$P11BRIDGE_PIN" "${@:2}"; }
round_trip() { # key-label mechanism
    local blob=$dir/$1.$2.json want got
    want=$(seal encrypt "$1" "$2" "$blob") && got=$(seal decrypt "$1" "$2" "$blob") &&
        [[ ${#want} == 64 && $want == "$got" ]] && echo "root key $want: decrypted equal"
}

for b in $BACKENDS; do
    if [[ $b == hsm ]]; then
        check "$b" "seal: CKM_AES_GCM encrypt + decrypt root key (AES-256)" round_trip "$(key_label hsm aes)" aes-gcm
        na "$b" "seal: CKM_RSA_PKCS_OAEP SHA-256 encrypt + decrypt root key (RSA-2048)" "SoftHSM2 2.6.1 does OAEP with SHA-1 only (CKR_ARGUMENTS_BAD, the same directly); use CKM_AES_GCM"
    else
        na "$b" "seal: CKM_AES_GCM encrypt + decrypt root key (AES-256)" \
            "$b chooses its own nonce (CKM_P11BRIDGE_${b^^}_ENCRYPT); no CKM_AES_GCM with a caller IV: use RSA-OAEP"
        dl=$(key_label "$b" rsa)
        has_key "$b" rsa-dec && dl=$(key_label "$b" rsa-dec)
        check "$b" "seal: CKM_RSA_PKCS_OAEP SHA-256 encrypt + decrypt root key (RSA-2048)" round_trip "$dl" rsa-oaep
    fi
done
exit 0
