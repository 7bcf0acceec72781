#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Consumer: nginx 1.22 (Debian 12, OpenSSL 3.0) serving TLS with its private key on the bridge, through libp11's
# OpenSSL engine (`ssl_certificate_key "engine:pkcs11:<RFC 7512 URI>"`; the `store:` form for providers came with
# nginx 1.29.3). For each backend's RSA and EC key: a CSR signed by the key through the bridge, the certificate issued
# by OpenBao's PKI (pki.sh: root `pki`, intermediate `pki_int`, role `tls-server`), nginx started here on a loopback
# port (master + one worker, its own prefix, pid and error log), then `curl --cacert root.pem` and
# `openssl s_client -verify_return_error -CAfile root.pem`, both verifying the chain up to the PKI root; nginx is
# stopped afterwards. curl's request is the worker's first handshake: the worker re-initializes the bridge after
# fork inside it.
# shellcheck disable=SC2317 # functions run through check and trap
set -uo pipefail
CONSUMER=nginx
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=pki.sh
source "$here/pki.sh"
dir=$WORK/nginx
mkdir -p "$dir"
cd "$dir" || exit 2

NGINX=$(command -v nginx || echo /usr/sbin/nginx) # /usr/sbin is not in every user's PATH
[[ -x $NGINX ]] || {
    na token "all checks" "nginx is not installed (tests/consumers/deps.sh installs it)"
    exit 0
}
check token "OpenBao PKI: root pki, intermediate pki_int, roles (bao CLI)" pki_setup
[[ -s $PKI/ready ]] || exit 0

# nginx gives its workers an empty environment but for the variables named by `env`: the bridge, re-initialized in
# the worker after fork, needs its configuration and the secrets that configuration names.
env_lines() {
    local v
    for v in P11BRIDGE_CONFIG P11BRIDGE_PIN HSM_PIN SOFTHSM2_CONF BAO_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
        AWS_DEFAULT_REGION AWS_EC2_METADATA_DISABLED OPENSSL_CONF; do
        [[ -n ${!v:-} ]] && echo "env $v;"
    done
}

issue() { # label kind: key → CSR (engine) → pki_int/sign/tls-server → fullchain
    rm -f "$1.csr" "$1.pem" "$1.fullchain.pem"
    engine_csr "$1" "/O=p11bridge consumers/CN=localhost" "$1.csr" "DNS:localhost" &&
        pki_sign tls-server "$1.csr" "$1.pem" &&
        cat "$1.pem" "$PKI/int.pem" >"$1.fullchain.pem" &&
        OPENSSL_CONF=/dev/null openssl verify -CAfile "$PKI/root.pem" -untrusted "$PKI/int.pem" "$1.pem"
}

pid=""
stop_nginx() {
    [[ -n $pid ]] || return 0
    kill -QUIT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    pid=""
}
trap stop_nginx EXIT

serve() { # label: start nginx with the key, wait for the port, curl through the PKI root
    local p=$dir/$1
    stop_nginx
    rm -rf "$p" && mkdir -p "$p/logs" || return 1
    [[ -s $1.fullchain.pem ]] || { echo "no certificate for $1"; return 1; }
    port=$(free_port)
    {
        echo "daemon off;"
        [[ $(id -u) -eq 0 ]] && echo "user root;" # the worker must read the work directory (0700) and the config
        cat <<CONF
worker_processes 1;
pid $p/nginx.pid;
error_log $p/error.log info;
$(env_lines)
events { worker_connections 16; }
http {
    access_log $p/access.log;
    client_body_temp_path $p/client_body;
    proxy_temp_path $p/proxy;
    fastcgi_temp_path $p/fastcgi;
    uwsgi_temp_path $p/uwsgi;
    scgi_temp_path $p/scgi;
    server {
        listen 127.0.0.1:$port ssl;
        server_name localhost;
        ssl_certificate $dir/$1.fullchain.pem;
        ssl_certificate_key "engine:pkcs11:pkcs11:token=engine;object=$1;type=private?pin-value=$P11BRIDGE_PIN";
        location / { return 200 "p11bridge nginx $1\n"; }
    }
}
CONF
    } >"$p/nginx.conf"
    OPENSSL_CONF=$PKI/engine.cnf timeout -k 5 300 "$NGINX" -p "$p" -c "$p/nginx.conf" -e "$p/error.log" \
        >"$p/stderr.log" 2>&1 &
    pid=$!
    if ! wait_port "$port" 20; then
        echo "nginx did not listen:"
        cat "$p/stderr.log"
        tail -5 "$p/error.log"
        return 1
    fi
    t curl -sS --max-time 30 --cacert "$PKI/root.pem" "https://localhost:$port/" >"$p/curl.out" 2>&1
    local rc=$?
    cat "$p/curl.out"
    grep -v '\[notice\]' "$p/error.log" | tail -5
    ((rc == 0)) && grep -qx "p11bridge nginx $1" "$p/curl.out"
}

s_client() { # label: a second client, OpenSSL's, against the running nginx
    [[ -n $pid ]] || { echo "nginx is not running"; return 1; }
    printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' | OPENSSL_CONF=/dev/null timeout 30 openssl s_client \
        -connect "127.0.0.1:$port" -servername localhost -CAfile "$PKI/root.pem" -verify_return_error \
        -verify_hostname localhost -ign_eof >"$1.s_client.log" 2>&1
    local rc=$?
    grep -E 'Verify return code|Protocol|Cipher is|^depth|^HTTP' "$1.s_client.log"
    ((rc == 0)) && grep -q 'Verify return code: 0 (ok)' "$1.s_client.log" && grep -q "p11bridge nginx $1" "$1.s_client.log"
}

for b in $BACKENDS; do
    for kind in rsa ec; do
        has_key "$b" "$kind" || { no_key "$b" "$kind"; continue; }
        l=$(key_label "$b" "$kind")
        check "$b" "CSR signed through the engine, certificate from OpenBao pki_int ($kind)" issue "$l"
        check "$b" "nginx serves HTTPS with the key; curl --cacert root verifies ($kind)" serve "$l"
        check "$b" "openssl s_client -verify_return_error against nginx ($kind)" s_client "$l"
        stop_nginx
    done
    if has_key "$b" ed25519; then
        na "$b" "all (ed25519)" "libp11 0.4.12 (the engine nginx 1.22 uses) has no Ed25519"
    else
        no_key "$b" ed25519
    fi
done
exit 0
