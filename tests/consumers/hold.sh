env | grep -E '^(SO|ROOT|WORK|KEYS|RESULTS|BACKENDS|P11BRIDGE|HSM|SOFTHSM|BAO|VAULT|KMS|AWS)' | sed 's/^/export /' > /tmp/consumers-env.sh
sleep 3000
