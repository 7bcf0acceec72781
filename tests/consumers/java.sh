#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: Java 17 SunPKCS11. Compiles java/P11Consumer.java and runs it with a SunPKCS11 configuration naming
# libp11bridge.so and the unified slot: KeyStore listing (every private key with its certificate), SHA256withRSA,
# RSASSA-PSS, SHA256withECDSA, OAEP and PKCS#1 decryption, each verified (or encrypted) by the JDK's software
# providers.
set -uo pipefail
CONSUMER=java
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$WORK/java
mkdir -p "$dir"
cd "$dir" || exit 2

# SunPKCS11 selects a slot by slotListIndex (or slot id); `unified` is the first slot of the configuration.
cat >p11bridge-java.cfg <<CFG
name = p11bridge
library = $SO
slotListIndex = 0
CFG
check token "javac P11Consumer.java" t javac -d "$dir" "$here/java/P11Consumer.java"

args=()
for b in $BACKENDS; do
    for kind in rsa ec ed25519; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        a="$b:$kind:$(key_label "$b" "$kind")"
        if [[ $kind == rsa ]]; then
            dec=""
            has_key "$b" rsa-dec && dec=$(key_label "$b" rsa-dec)
            # SoftHSM2 2.6.1 does OAEP with SHA-1 only.
            if [[ $b == hsm ]]; then a+=":$dec:SHA-1"; else a+=":$dec:SHA-256"; fi
        fi
        args+=("$a")
    done
done
T=180 t java -cp "$dir" P11Consumer p11bridge-java.cfg "$P11BRIDGE_PIN" "${args[@]}" >java.out 2>java.err
rc=$?
grep '^ENTRY' java.out | sed 's/^/    /'
while IFS=$'\t' read -r _ status backend op reason; do
    case $status in
        pass) echo "PASS $CONSUMER $backend $op" && record pass "$backend" "$op" ;;
        fail) echo "FAIL $CONSUMER $backend $op" && echo "    $reason" && record fail "$backend" "$op" "$reason" ;;
        *) na "$backend" "$op" "$reason" ;;
    esac
done < <(grep '^RESULT' java.out)
if ((rc != 0)); then
    echo "FAIL $CONSUMER token P11Consumer run (exit $rc)"
    tail -5 java.err | sed 's/^/    /'
    record fail token "P11Consumer run" "exit $rc: $(tail -1 java.err)"
fi
exit 0
