#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: OpenSSH 9.2. ssh-keygen -D lists the token's keys; ssh -I logs in with each backend's key to an sshd
# started here on a loopback port (authorized_keys holding just that key); ssh-add -s loads the keys into an
# ssh-agent started here (module path allowed with -P), and ssh logs in through the agent. The PIN comes from
# SSH_ASKPASS (SSH_ASKPASS_REQUIRE=force).
# shellcheck disable=SC2317 # functions run through check and trap
set -uo pipefail
CONSUMER=openssh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir=$WORK/openssh
mkdir -p "$dir"
cd "$dir" || exit 2

# --- the keys, as OpenSSH public keys (from the public key objects, converted by ssh-keygen) -----------------------
for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" || continue
        l=$(key_label "$b" "$kind")
        t pkcs11-tool --module "$SO" --token-label unified --read-object --type pubkey --id "$(key_id "$b" "$kind")" \
            -o "$l.der" >/dev/null 2>&1 &&
            openssl pkey -pubin -inform DER -in "$l.der" -out "$l.pem" 2>/dev/null &&
            ssh-keygen -i -m PKCS8 -f "$l.pem" | awk '{ print $1, $2 }' >"$l.ssh"
    done
done

t ssh-keygen -D "$SO" >listed.txt 2>keygen-D.err
listed() { grep -qF -- "$(cat "$1.ssh")" listed.txt; }
for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" && check "$b" "ssh-keygen -D lists the $kind key" listed "$(key_label "$b" "$kind")"
    done
    if has_key "$b" ed25519; then
        na "$b" "ssh-keygen -D lists the ed25519 key" \
            "OpenSSH 9.2's PKCS#11 support has no Ed25519 ($(grep -m1 -o 'skipping unsupported key type' keygen-D.err))"
    else
        no_key "$b" ed25519
    fi
done

# --- sshd on a loopback port -----------------------------------------------------------------------------------------
port=$(free_port)
rm -f "$dir/host_key" "$dir/host_key.pub"
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
mkdir -p /run/sshd # sshd's privilege separation directory
cat >sshd_config <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
# A client offers every key of the token in turn; the default 6 attempts run out before the last ones.
MaxAuthTries 30
CFG
: >authorized_keys
timeout -k 5 600 /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>sshd.log &
sshd_pid=$!
agent_pid=""
cleanup_ssh() {
    kill "$sshd_pid" 2>/dev/null
    [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup_ssh EXIT
wait_port "$port" 10 || { echo "sshd did not start"; cat sshd.log; }
echo "127.0.0.1 $(awk '{ print $1, $2 }' host_key.pub)" | sed "s/^127.0.0.1/[127.0.0.1]:$port/" >known_hosts

printf '#!/bin/sh\necho "%s"\n' "$P11BRIDGE_PIN" >askpass.sh
chmod 700 askpass.sh
export SSH_ASKPASS=$dir/askpass.sh SSH_ASKPASS_REQUIRE=force DISPLAY=:0
sshopts=(-F /dev/null -p "$port" -o UserKnownHostsFile="$dir/known_hosts" -o StrictHostKeyChecking=yes
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o ConnectTimeout=10 -o BatchMode=no)
# (IdentitiesOnly=yes would leave the PKCS#11 keys out.)
login_with_module() { # label: authorized_keys holds only this key
    cp "$1.ssh" authorized_keys
    t ssh "${sshopts[@]}" -o IdentityAgent=none -I "$SO" "$(id -un)@127.0.0.1" \
        "echo logged-in-with-$1" </dev/null | grep -qx "logged-in-with-$1"
}
for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" && check "$b" "ssh -I: login with the $kind key" login_with_module "$(key_label "$b" "$kind")"
    done
done

# --- ssh-agent + ssh-add -s -------------------------------------------------------------------------------------------
sock=$dir/agent.sock
timeout -k 5 600 ssh-agent -D -a "$sock" -P "$(dirname "$SO")/*" >agent.log 2>&1 &
agent_pid=$!
wait_line agent.log 'SSH_AUTH_SOCK' 10
export SSH_AUTH_SOCK=$sock
check token "ssh-add -s loads the token's keys" t ssh-add -s "$SO" </dev/null
ssh-add -L >agent-keys.txt 2>&1
in_agent() { grep -qF -- "$(cat "$1.ssh")" agent-keys.txt; }
login_with_agent() {
    cp "$1.ssh" authorized_keys
    t ssh "${sshopts[@]}" -o IdentityAgent="$sock" "$(id -un)@127.0.0.1" "echo agent-login-with-$1" </dev/null |
        grep -qx "agent-login-with-$1"
}
for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" || continue
        l=$(key_label "$b" "$kind")
        check "$b" "ssh-add -L shows the $kind key" in_agent "$l"
        check "$b" "ssh via ssh-agent: login with the $kind key" login_with_agent "$l"
    done
    if has_key "$b" ed25519; then
        na "$b" "ssh -I / ssh-agent with the ed25519 key" "OpenSSH 9.2's PKCS#11 support has no Ed25519"
    fi
done
t ssh-add -e "$SO" >/dev/null 2>&1
exit 0
