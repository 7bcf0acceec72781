# Sourced by tests/package/run.sh once the package is installed and /etc/p11bridge holds the example configuration
# and its secrets: the recommended production layout, p11bridge as a service behind p11-kit's RPC.
#
# The packaged units (/lib/systemd/system/p11bridge.socket, p11bridge@.service) are run by socket-unit.py the way
# systemd runs them (no systemd in CI). An application user in p11bridge-users signs through p11-kit-client.so with
# pkcs11-tool and with OpenSSL's pkcs11-provider, with keys of the three backends, its environment holding only
# PATH, HOME and P11_KIT_SERVER_ADDRESS (the bridge's token PIN is an argument / a PIN file, no backend credential
# anywhere in its reach); a user outside the group is refused; the service killed and started again mid-loop costs
# the client an error, not a hang, and the next call works.
# shellcheck shell=bash

SOCK_UNIT=/lib/systemd/system/p11bridge.socket
SVC_UNIT=/lib/systemd/system/p11bridge@.service
SOCK=$(sed -n 's/^ListenStream=//p' "$SOCK_UNIT")
CLIENT=/usr/lib/$MULTIARCH/pkcs11/p11-kit-client.so
PY=/usr/bin/python3 # Debian's, with python3-pykcs11

start_service() {
    : >"$WORK/service.out"
    setsid python3 "$here/socket-unit.py" "$SOCK_UNIT" "$SVC_UNIT" >>"$WORK/service.out" 2>>"$WORK/service.log" &
    SERVICE_PID=$!
    local i
    for i in $(seq 1 100); do
        grep -q READY "$WORK/service.out" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "socket-unit.py did not start:" >&2
    cat "$WORK/service.log" >&2
    return 1
}
stop_service() { # SIGKILL to the listener and every instance (one process group), as a crash or `systemctl kill`
    kill -KILL -- "-$SERVICE_PID" 2>/dev/null
    wait "$SERVICE_PID" 2>/dev/null
    SERVICE_PID=
}

useradd --create-home --groups p11bridge-users p11bridge-app
useradd --create-home p11bridge-outsider
APP_HOME=/home/p11bridge-app
# The application's whole environment: no PIN, no token, no AWS credential, no path to a configuration.
as_app() {
    (cd "$APP_HOME" && runuser -u p11bridge-app -- env -i PATH=/usr/bin:/bin HOME="$APP_HOME" \
        P11_KIT_SERVER_ADDRESS="unix:path=$SOCK" "$@")
}
# The token PIN, given to the applications the way they take it: an argument (pkcs11-tool) or a PIN file.
install -m 0600 -o p11bridge-app /dev/null "$APP_HOME/pin"
printf '%s\n' "$P11BRIDGE_PIN" >"$APP_HOME/pin"
cp "$WORK/msg" "$APP_HOME/msg" && chown p11bridge-app "$APP_HOME/msg"

if ! start_service; then
    fail "service: socket-unit.py starts the packaged units"
    return 0
fi
check "service: socket is p11bridge:p11bridge-users 0660" \
    bash -c "[[ \$(stat -c %U:%G:%a $SOCK) == p11bridge:p11bridge-users:660 ]]"

check "service: the application's environment holds no credential" as_app sh -c '
    env | grep -E "PIN|TOKEN|AWS|SOFTHSM|P11BRIDGE|VAULT" && exit 1
    env | grep -qF -f "$0" && exit 1
    ! cat /etc/p11bridge/p11bridge.env 2>/dev/null && ! cat /etc/p11bridge/p11bridge.toml 2>/dev/null' \
    "$SECRET_VALUES_FILE"
as_app pkcs11-tool --module "$CLIENT" -L >"$WORK/client-L.txt" 2>&1
check "service: pkcs11-tool -L through p11-kit-client.so shows the unified token" grep -q 'token label *: unified' "$WORK/client-L.txt"
as_app pkcs11-tool --module "$CLIENT" --token-label unified --login --pin "$P11BRIDGE_PIN" -O >"$WORK/client-O.txt" 2>&1
id_of() { awk -v l="$1" '$1 == "label:" && $2 == l { f = 1 } f && $1 == "ID:" { print $2; exit }' "$WORK/client-O.txt"; }

# One EC P-256 key per backend: the HSM's ec-p256, Vault's app-signing, KMS's app-kms-signing. Hash, then
# CKM_ECDSA: p11-kit 0.24's RPC (Debian 12) does not carry CKM_ECDSA_SHA224..512 (the client answers
# CKR_MECHANISM_INVALID before the service sees the call); OpenSSL's provider hashes by itself.
openssl dgst -sha256 -binary "$APP_HOME/msg" >"$APP_HOME/msg.sha256"
for kb in hsm:ec-p256 vault:app-signing kms:app-kms-signing; do
    b=${kb%%:*} label=${kb#*:} id=$(id_of "${kb#*:}")
    if [[ -z $id ]]; then
        fail "service: $b key $label listed through the client"
        continue
    fi
    # The public key (pkcs11-tool 0.23 sometimes fails reading EC public keys; see docs/consumers.md: retried).
    check "service: pkcs11-tool signs with the $b key ($label), openssl verifies" as_app sh -c "
        for i in 1 2 3; do
            pkcs11-tool --module $CLIENT --token-label unified --read-object --type pubkey --id $id -o $b.pub.der \
                && break
        done
        pkcs11-tool --module $CLIENT --token-label unified --login --pin \"\$(cat pin)\" -m ECDSA --id $id \
            --signature-format openssl --sign -i msg.sha256 -o $b.sig &&
        openssl dgst -sha256 -verify $b.pub.der -keyform DER -signature $b.sig msg"
done

# OpenSSL 3 with pkcs11-provider, loading p11-kit-client.so.
provider=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"/\1/p')/pkcs11.so
cat >"$APP_HOME/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $provider
pkcs11-module-path = $CLIENT
pkcs11-module-token-pin = file:$APP_HOME/pin
activate = 1
EOF
chown p11bridge-app "$APP_HOME/openssl.cnf"
for kb in hsm:ec-p256 vault:app-signing kms:app-kms-signing; do
    b=${kb%%:*} label=${kb#*:}
    check "service: openssl (pkcs11-provider) signs with the $b key ($label), openssl verifies" as_app sh -c "
        OPENSSL_CONF=$APP_HOME/openssl.cnf openssl dgst -sha256 \
            -sign 'pkcs11:token=unified;object=$label;type=private' -out $b.ossl.sig msg &&
        openssl dgst -sha256 -verify $b.pub.der -keyform DER -signature $b.ossl.sig msg"
done

# A user outside p11bridge-users cannot open the socket.
runuser -u p11bridge-outsider -- env -i PATH=/usr/bin:/bin HOME=/home/p11bridge-outsider \
    P11_KIT_SERVER_ADDRESS="unix:path=$SOCK" pkcs11-tool --module "$CLIENT" -L >"$WORK/outsider.txt" 2>&1
check "service: a user outside p11bridge-users is refused" bash -c "
    ! grep -q unified $WORK/outsider.txt &&
    runuser -u p11bridge-outsider -- python3 -c '
import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(\"$SOCK\")
except PermissionError:
    sys.exit(0)
sys.exit(\"connected\")'"
sed 's/^/    outsider: /' "$WORK/outsider.txt" | head -n 3

# The service killed mid-loop and started again: one long-lived client signing in a loop (the HSM and Vault keys in
# turn) sees its call fail within a deadline, not hang; it initializes again, as a PKCS#11 application does after
# losing its device, and the next call works. Then separate pkcs11-tool processes across a second restart.
cat >"$APP_HOME/loop.py" <<'EOF'
import hashlib, sys, time, PyKCS11
lib, pin, ids = sys.argv[1], sys.argv[2], [bytes.fromhex(i) for i in sys.argv[3:]]
def open_():
    p = PyKCS11.PyKCS11Lib(); p.load(lib)
    slot = [s for s in p.getSlotList(tokenPresent=True) if p.getTokenInfo(s).label.strip() == "unified"][0]
    s = p.openSession(slot); s.login(pin)
    keys = [s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, i)])[0] for i in ids]
    return p, s, keys
p, s, keys = open_()
old = []  # initialized libraries are kept: dropping one would C_Finalize the shared module again
ok = errors = ok_after = 0
deadline = time.time() + 40
while time.time() < deadline:
    t = time.time()
    try:
        s.sign(keys[ok % len(keys)], hashlib.sha256(b"loop").digest(), PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
        ok += 1
        ok_after += 1 if errors else 0
        print(f"ok {time.time() - t:.3f}", flush=True)
        if ok_after >= 10:
            break
    except PyKCS11.PyKCS11Error as e:
        errors += 1
        print(f"error {time.time() - t:.3f} {e}", flush=True)
        # After the error: initialize again (a new connection), until the service answers.
        while time.time() < deadline:
            try:
                p.lib.C_Finalize()
                old.append(p)
                p, s, keys = open_()
                break
            except Exception as e2:
                print(f"reinit failed: {e2}", flush=True)
                time.sleep(0.2)
print(f"done ok={ok} errors={errors}", flush=True)
EOF
chown p11bridge-app "$APP_HOME/loop.py"
: >"$WORK/loop.txt"
as_app "$PY" loop.py "$CLIENT" "$P11BRIDGE_PIN" "$(id_of ec-p256)" "$(id_of app-signing)" >>"$WORK/loop.txt" 2>&1 &
loop_pid=$!
# Kill the service once the loop has made 10 signatures; start it again half a second later.
for _ in $(seq 1 300); do
    [[ $(grep -c '^ok' "$WORK/loop.txt") -ge 10 ]] && break
    sleep 0.1
done
stop_service
sleep 0.5
start_service
wait "$loop_pid"
tail -n 1 "$WORK/loop.txt" | sed 's/^/    loop: /'
grep '^error' "$WORK/loop.txt" | head -n 2 | sed 's/^/    loop: /'
check "service: killed mid-loop: the long-lived client's call fails (within 5 s), then it signs again" bash -c "
    grep -q '^done ok=.* errors=[1-9]' $WORK/loop.txt &&
    awk '\$1 == \"error\" && \$2 > 5 { exit 1 }' $WORK/loop.txt &&
    [[ \$(sed -n '/^error/,\$p' $WORK/loop.txt | grep -c '^ok') -ge 10 ]]"

# Separate processes (pkcs11-tool, each under a 20 s deadline) in a loop while the service is killed and started
# again half a second later: the calls meanwhile fail at once; once it is back, the next call signs.
: >"$WORK/tool-loop.txt"
(
    i=0 failures=0 after=0 end=$((SECONDS + 40))
    while ((SECONDS < end && after < 3)); do
        i=$((i + 1))
        t0=$EPOCHREALTIME
        as_app timeout 20 pkcs11-tool --module "$CLIENT" --token-label unified --login --pin "$P11BRIDGE_PIN" \
            -m ECDSA --id "$(id_of app-signing)" --sign -i msg.sha256 -o /dev/null >"$WORK/tool-call.log" 2>&1
        rc=$?
        ((rc)) && cp "$WORK/tool-call.log" "$WORK/tool-call.failed.log"
        ((rc)) && failures=$((failures + 1))
        ((rc == 0 && failures)) && after=$((after + 1))
        echo "$i $rc $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')"
    done >>"$WORK/tool-loop.txt"
) &
tool_pid=$!
for _ in $(seq 1 300); do
    [[ $(wc -l <"$WORK/tool-loop.txt") -ge 4 ]] && break
    sleep 0.1
done
stop_service
sleep 0.5
start_service
wait "$tool_pid"
awk '{ printf "%s%s:%s/%ss", (NR > 1 ? ", " : "    pkcs11-tool loop (call:status/seconds): "), $1, $2, $3 } END { print "" }' \
    "$WORK/tool-loop.txt" | cut -c 1-400
sed 's/^/    last failed call: /' "$WORK/tool-call.failed.log" 2>/dev/null | tail -n 3
check "service: killed mid-loop: pkcs11-tool calls fail (none hangs), the next ones sign" bash -c "
    awk '\$2 != 0 { f++ } \$2 == 124 || \$3 > 10 { hang++ } END { exit !(f > 0 && !hang) }' $WORK/tool-loop.txt &&
    [[ \$(tail -n 3 $WORK/tool-loop.txt | awk '\$2 == 0' | wc -l) -eq 3 ]] ||
    { echo service log:; tail -n 5 $WORK/service.log; ls -l $SOCK; ps -eo pid,pgid,user,args | grep -E 'socket-unit|p11-kit-remote' | grep -v grep; exit 1; }"

stop_service
