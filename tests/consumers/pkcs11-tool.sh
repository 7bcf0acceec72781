#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: pkcs11-tool (OpenSC 0.23). -L, -M, -O; for each backend's RSA-2048, EC P-256 and Ed25519 key: read the
# public key and the certificate, sign with every mechanism the key supports (openssl verifies each signature, and
# pkcs11-tool --verify through the bridge), OAEP-decrypt what openssl encrypted, and --keypairgen on the unified
# token (the slot's default backend set to each backend in turn), the new key signing and then deleted.
# shellcheck disable=SC2317 # functions run through check
set -uo pipefail
CONSUMER=pkcs11-tool
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir=$WORK/pkcs11-tool
mkdir -p "$dir"
cd "$dir" || exit 2

tool() { t pkcs11-tool --module "$SO" --token-label "${TOKEN:-unified}" --login --pin "$P11BRIDGE_PIN" "$@"; }
sslv() { OPENSSL_CONF=/dev/null openssl "$@"; } # openssl's default provider only

echo "p11bridge consumer matrix: pkcs11-tool" >msg
for h in sha1 sha256 sha384 sha512; do sslv dgst -"$h" -binary msg >"msg.$h"; done

t pkcs11-tool --module "$SO" -L >slots.txt 2>&1
check token "-L lists unified and engine" grep -q 'token label *: engine' slots.txt
tool -M >mechs.txt 2>&1
check token "-M lists mechanisms" grep -q 'ECDSA' mechs.txt
tool -O >objects.txt 2>&1

# --- per backend, per key ------------------------------------------------------------------------------------------
has_objects() { # label: private key, public key and certificate listed
    awk -v l="$1" '/Object;/ { kind = $1 } $1 == "label:" && $2 == l { seen[kind] = 1 }
        END { exit !(seen["Private"] && seen["Public"] && seen["Certificate"]) }' objects.txt
}
# pkcs11-tool 0.23 exports EC public keys with a use-after-free (read_object() hands EVP_PKEY_fromdata a group name
# from OSSL_PARAMs it already freed; valgrind shows it), so about one run in five fails with "cannot create EVP_PKEY"
# whatever the module answers. That one read is retried (each try a new process); nothing else is.
retry_read() { # command... : up to 4 tries
    local try
    for try in 1 2 3 4; do "$@" && return 0; done
    return 1
}
pubkey() { # label id → label.pub.pem (from the public key object)
    retry_read tool --read-object --type pubkey --id "$2" -o "$1.pub.der" && sslv pkey -pubin -inform DER -in "$1.pub.der" -out "$1.pub.pem"
}
cert() { # label id → label.crt.pem, its public key label.certpub.pem
    tool --read-object --type cert --id "$2" -o "$1.crt.der" &&
        sslv x509 -inform DER -in "$1.crt.der" -out "$1.crt.pem" &&
        sslv x509 -in "$1.crt.pem" -noout -pubkey -out "$1.certpub.pem"
}
same_pub() { cmp <(sslv pkey -pubin -in "$1.pub.pem" -outform DER) <(sslv pkey -pubin -in "$1.certpub.pem" -outform DER); }

digest_info() { # hash → DER DigestInfo prefix + digest
    case $1 in
        sha1) printf '\x30\x21\x30\x09\x06\x05\x2b\x0e\x03\x02\x1a\x05\x00\x04\x14' ;;
        sha256) printf '\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20' ;;
        sha384) printf '\x30\x41\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x02\x05\x00\x04\x30' ;;
        sha512) printf '\x30\x51\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x03\x05\x00\x04\x40' ;;
    esac
    cat "msg.$1"
}
# sign_rsa label id mech: sign, verify with openssl (from the public key) and with pkcs11-tool --verify
sign_rsa() {
    local l=$1 id=$2 m=$3 h in=msg pss=() tv=()
    h=${m%%-*} h=${h,,}
    case $m in
        RSA-PKCS) h=sha256 in=di.sha256 && digest_info sha256 >"$in" ;;
        RSA-PKCS-PSS) h=sha256 in=msg.sha256 tv=(--hash-algorithm SHA256 --mgf MGF1-SHA256) ;;
    esac
    [[ $m == *PSS ]] && pss=(-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest)
    tool --sign -m "$m" "${tv[@]}" --id "$id" -i "$in" -o "$l.$m.sig" &&
        sslv dgst -"$h" "${pss[@]}" -verify "$l.pub.pem" -signature "$l.$m.sig" msg &&
        tool --verify -m "$m" "${tv[@]}" --id "$id" -i "$in" --signature-file "$l.$m.sig"
}
sign_ec() {
    local l=$1 id=$2 m=$3 h in=msg
    if [[ $m == ECDSA ]]; then h=sha256 in=msg.sha256; else h=${m#ECDSA-} h=${h,,}; fi
    tool --sign -m "$m" --id "$id" -i "$in" -o "$l.$m.sig" --signature-format openssl &&
        sslv dgst -"$h" -verify "$l.pub.pem" -signature "$l.$m.sig" msg &&
        tool --verify -m "$m" --id "$id" -i "$in" --signature-file "$l.$m.sig" --signature-format openssl
}
sign_ed() {
    tool --sign -m EDDSA --id "$2" -i msg -o "$1.sig" &&
        sslv pkeyutl -verify -pubin -inkey "$1.certpub.pem" -rawin -in msg -sigfile "$1.sig" &&
        tool --verify -m EDDSA --id "$2" -i msg --signature-file "$1.sig"
}
oaep() { # label id hash
    local H=${3^^}
    H=${H/SHA1/SHA-1}
    local M=MGF1-${3^^}
    sslv pkeyutl -encrypt -pubin -inkey "$1.pub.pem" -pkeyopt rsa_padding_mode:oaep -pkeyopt "rsa_oaep_md:$3" \
        -pkeyopt "rsa_mgf1_md:$3" -in msg -out "$1.oaep" &&
        tool --decrypt -m RSA-PKCS-OAEP --hash-algorithm "$H" --mgf "$M" --id "$2" -i "$1.oaep" -o "$1.dec" &&
        cmp msg "$1.dec"
}
pkcs1_decrypt() {
    sslv pkeyutl -encrypt -pubin -inkey "$1.pub.pem" -in msg -out "$1.pkcs1" &&
        tool --decrypt -m RSA-PKCS --id "$2" -i "$1.pkcs1" -o "$1.dec1" && cmp msg "$1.dec1"
}

for b in $BACKENDS; do
    for kind in rsa ec ed25519; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        l=$(key_label "$b" "$kind") id=$(key_id "$b" "$kind")
        check "$b" "-O lists $kind private, public, certificate" has_objects "$l"
        check "$b" "--read-object cert ($kind)" cert "$l" "$id"
        if [[ $kind == ed25519 ]]; then
            na "$b" "--read-object pubkey ($kind)" "pkcs11-tool 0.23 writes Ed25519 public keys in a form openssl cannot read (same with SoftHSM2 directly)"
        else
            check "$b" "--read-object pubkey ($kind)" pubkey "$l" "$id"
            check "$b" "certificate carries the public key ($kind)" same_pub "$l"
        fi
        case $kind in
            rsa)
                for m in RSA-PKCS SHA1-RSA-PKCS SHA256-RSA-PKCS SHA384-RSA-PKCS SHA512-RSA-PKCS RSA-PKCS-PSS \
                    SHA256-RSA-PKCS-PSS SHA384-RSA-PKCS-PSS SHA512-RSA-PKCS-PSS; do
                    if [[ $b == kms && $m == SHA1-* ]]; then
                        na "$b" "--sign/--verify $m" "AWS KMS signs SHA-256/384/512 digests only"
                    else
                        check "$b" "--sign/--verify $m" sign_rsa "$l" "$id" "$m"
                    fi
                done
                case $b in
                    hsm)
                        check "$b" "--decrypt RSA-PKCS-OAEP" oaep "$l" "$id" sha1
                        check "$b" "--decrypt RSA-PKCS" pkcs1_decrypt "$l" "$id"
                        ;;
                    *)
                        na "$b" "--decrypt RSA-PKCS" "$b has no PKCS#1 v1.5 decryption (OAEP only)"
                        if has_key "$b" rsa-dec; then
                            ld=$(key_label "$b" rsa-dec) idd=$(key_id "$b" rsa-dec)
                            pubkey "$ld" "$idd" >/dev/null 2>&1
                            check "$b" "--decrypt RSA-PKCS-OAEP" oaep "$ld" "$idd" sha256
                        else
                            check "$b" "--decrypt RSA-PKCS-OAEP" oaep "$l" "$id" sha256
                        fi
                        ;;
                esac
                ;;
            ec)
                for m in ECDSA ECDSA-SHA256 ECDSA-SHA384 ECDSA-SHA512; do
                    # SoftHSM 2.6.1 has no CKM_ECDSA_SHA*: the bridge hashes and signs with CKM_ECDSA (emulation).
                    if [[ $b == kms && $m != ECDSA && $m != ECDSA-SHA256 ]]; then
                        na "$b" "--sign/--verify $m" "AWS KMS pairs P-256 with SHA-256 only"
                    else
                        check "$b" "--sign/--verify $m" sign_ec "$l" "$id" "$m"
                    fi
                done
                ;;
            ed25519) check "$b" "--sign/--verify EDDSA" sign_ed "$l" "$id" ;;
        esac
    done
done

# --- key generation on the unified token, the slot's default backend being each backend in turn -----------------
# The CKA_ID of the object labelled $1 in a pkcs11-tool -O listing on stdin.
id_by_label() { awk -v l="$1" '/Object;/ { lab = ""; id = "" } $1 == "label:" { lab = $2 } $1 == "ID:" { id = $2 }
    lab == l && id != "" { print id; exit }'; }
keygen() { # backend key-type label (pkcs11-tool 0.23 selects keys by --id only, so the new key is given one)
    local cfg=$WORK/p11bridge.default-$1.toml rc ty nid
    gen() { P11BRIDGE_CONFIG=$cfg tool "$@"; }
    gen --keypairgen --key-type "$2" --label "$3" --id "$(openssl rand -hex 8)" --usage-sign >"gen.$3.txt" &&
        gen -O >"gen.$3.objects" && nid=$(id_by_label "$3" <"gen.$3.objects") && [[ -n $nid ]] &&
        retry_read gen --read-object --type pubkey --id "$nid" -o "$3.der" &&
        sslv pkey -pubin -inform DER -in "$3.der" -out "$3.pem" &&
        case $2 in
            rsa:*) gen --sign -m SHA256-RSA-PKCS --id "$nid" -i msg -o "$3.sig" &&
                sslv dgst -sha256 -verify "$3.pem" -signature "$3.sig" msg ;;
            *) gen --sign -m ECDSA --id "$nid" -i msg.sha256 -o "$3.sig" --signature-format openssl &&
                sslv dgst -sha256 -verify "$3.pem" -signature "$3.sig" msg ;;
        esac
    rc=$?
    # Remove the new key again, so that later consumers see the fixture only.
    if [[ -n ${nid:-} ]]; then
        for ty in privkey pubkey cert; do
            gen --delete-object --type "$ty" --id "$nid" >/dev/null 2>&1
        done
    fi
    return "$rc"
}
gen_label() { echo "$1-gen-$2-$$"; } # later processes find created keys by created_prefix / created_alias_prefix
for b in $BACKENDS; do
    check "$b" "--keypairgen rsa:2048 (unified token, default backend)" keygen "$b" rsa:2048 "$(gen_label "$b" rsa)"
    check "$b" "--keypairgen EC:prime256v1 (unified token, default backend)" keygen "$b" EC:prime256v1 "$(gen_label "$b" ec)"
done
exit 0
