#!/usr/bin/env bash
# Installs, idempotently, what the consumer matrix (tests/consumers/run.sh) needs: the consumers themselves and the
# tools the checks use. Only missing packages are installed; nothing happens when everything is present.
#
# pkcs11-provider (the OpenSSL 3 PKCS#11 provider) is not in Debian 12's main suite, and osslsigncode there is 2.5:
# both come from bookworm-backports (pkcs11-provider 1.0, osslsigncode 2.9). If no apt source offers backports, this
# adds
#     deb http://deb.debian.org/debian bookworm-backports main
# as /etc/apt/sources.list.d/p11bridge-bookworm-backports.list and installs them from there (-t bookworm-backports).
set -euo pipefail

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

# opensc: pkcs11-tool; libengine-pkcs11-openssl: libp11's engine; openssh-*: ssh, ssh-agent, sshd;
# p11-kit + gnutls-bin: p11-kit, p11tool; python3-pykcs11: the seal program; default-jdk-headless: javac, jar,
# jarsigner, keytool; nginx + curl: the TLS server and its client (nginx's service is not used: the test starts its
# own nginx on a loopback port).
need=()
for p in softhsm2 opensc openssl libengine-pkcs11-openssl openssh-client openssh-server p11-kit p11-kit-modules \
    gnutls-bin python3-pykcs11 procps nginx curl; do
    have "$p" || need+=("$p")
done
command -v javac >/dev/null 2>&1 || need+=("openjdk-17-jdk-headless")

updated=0
if ((${#need[@]})); then
    echo "consumers/deps: installing ${need[*]}" >&2
    $SUDO apt-get update -qq >&2
    updated=1
    apt_install "${need[@]}"
fi

# From bookworm-backports: pkcs11-provider (any version), osslsigncode 2.9 (Debian 12's own 2.5 is replaced).
backports=()
have pkcs11-provider || backports+=(pkcs11-provider)
[[ $(dpkg-query -W -f='${Version}' osslsigncode 2>/dev/null) == *bpo12* ]] || backports+=(osslsigncode)
if ((${#backports[@]})); then
    if ! apt-cache policy "${backports[@]}" 2>/dev/null | grep -q 'bookworm-backports'; then
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "consumers/deps: adding bookworm-backports to apt sources" >&2
            echo "deb http://deb.debian.org/debian bookworm-backports main" |
                $SUDO tee /etc/apt/sources.list.d/p11bridge-bookworm-backports.list >/dev/null
        fi
        $SUDO apt-get update -qq >&2
        updated=1
    fi
    ((updated)) || $SUDO apt-get update -qq >&2
    echo "consumers/deps: installing ${backports[*]} (bookworm-backports)" >&2
    apt_install -t bookworm-backports "${backports[@]}" || apt_install "${backports[@]}"
fi
