# Sourced by every consumer script of tests/consumers/ (run by run.sh, which exports the environment):
#   SO P11BRIDGE_CONFIG P11BRIDGE_PIN WORK RESULTS BACKENDS KEYS ROOT
# Gives: check / na / fail_cell (one matrix cell each), key lookups, and the usual tools.
# shellcheck shell=bash

: "${CONSUMER:?set CONSUMER before sourcing lib.sh}"
LOGS=$WORK/logs
mkdir -p "$LOGS"

record() { # status backend operation reason
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$CONSUMER" "$2" "$3" "${4:-}" >>"$RESULTS"
}

# check BACKEND OPERATION COMMAND...: one cell; the command's output goes to a log, shown (tail) on failure. The
# bridge logs at debug level to a file beside it; a failure's reason names the last call the bridge refused.
check() {
    local backend=$1 op=$2 log reason refused
    shift 2
    log=$LOGS/$CONSUMER.$backend.${op//[^A-Za-z0-9_.-]/_}.log
    rm -f "$log.bridge"
    if P11BRIDGE_LOG=debug P11BRIDGE_LOG_FILE=$log.bridge "$@" >"$log" 2>&1; then
        echo "PASS $CONSUMER $backend $op"
        record pass "$backend" "$op"
    else
        echo "FAIL $CONSUMER $backend $op"
        tail -n 8 "$log" | sed 's/^/    /'
        # The last line of output, without OpenSSL's per-process error prefix (so that the results page is stable).
        reason=$(grep -v '^\s*$' "$log" | tail -n 1 | sed -E 's/^[0-9A-F]{8,16}:error:[0-9A-F]+://' | cut -c1-160)
        refused=$(grep -ahoE 'returned function="C_[A-Za-z]+" rv=CKR_[A-Z_]+' "$log.bridge" 2>/dev/null |
            grep -vE '"C_(GetAttributeValue|FindObjects[A-Za-z]*|GetMechanismInfo)"' | tail -n 1 |
            sed -E 's/returned function="([^"]+)" rv=/\1 → /')
        [[ -n $refused ]] && reason+=" (bridge: $refused)"
        echo "    ${refused:+bridge: $refused}"
        record fail "$backend" "$op" "$reason"
    fi
}

na() { # backend operation reason
    echo "N/A $CONSUMER $1 $2 — $3"
    record n/a "$1" "$2" "$3"
}

# Keys: KEYS is a file of "backend kind label id" lines (kind: rsa ec ed25519 aes rsa-dec; id: CKA_ID in hex).
key_label() { awk -v b="$1" -v k="$2" '$1 == b && $2 == k { print $3; exit }' "$KEYS"; }
key_id() { awk -v b="$1" -v k="$2" '$1 == b && $2 == k { print $4; exit }' "$KEYS"; }
has_key() { [[ -n $(key_label "$1" "$2") ]]; }

# Runs a command with a deadline (default 60 s): every consumer call is bounded.
t() { timeout -k 5 "${T:-60}" "$@"; }

# A free TCP port on 127.0.0.1.
# An OPENSSL_CONF that loads pkcs11-provider over MODULE with the token PIN from PINFILE, on stdout. no-deinit:
# without it, OpenSSL's exit handler finalizes the module after SoftHSM2's own destructors ran, and SoftHSM2 crashes
# in C_CloseSession (the same happens with SoftHSM2 directly).
provider_cnf() { # module pinfile
    cat <<CNF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $PKCS11_PROVIDER
pkcs11-module-path = $1
pkcs11-module-token-pin = file:$2
pkcs11-module-quirks = no-deinit
activate = 1
CNF
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most $2 seconds, default 10) until something listens on 127.0.0.1:$1.
wait_port() {
    local i
    for ((i = 0; i < ${2:-10} * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Waits (at most $3 seconds, default 20) until file $1 has a line matching the regex $2.
wait_line() {
    local i
    for ((i = 0; i < ${3:-20} * 10; i++)); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# An N/A cell standing for every check of a key type the backend does not have.
no_key() { # backend kind
    local why="no $2 key in this backend"
    [[ $1 == kms && $2 == ed25519 ]] && why="the KMS backend has no Ed25519 key spec (RSA and EC P-256/384/521, secp256k1)"
    na "$1" "$2 key: all checks" "$why"
}
