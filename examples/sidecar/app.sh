#!/usr/bin/env bash
# The application: publishes N orders to its sidecar (binary mode), one request each, and
# exits non-zero if the sidecar refused any.
set -euo pipefail
N="${1:-100}"
SIDECAR="${EVMESH_URL:-http://127.0.0.1:10105}"
for i in $(seq 1 "$N"); do
    curl -sf -o /dev/null "$SIDECAR/topics/orders" \
        -H 'ce-specversion: 1.0' -H "ce-id: order-$i" -H 'ce-source: /shop' \
        -H 'ce-type: com.example.order.created' -H 'content-type: application/json' \
        -d "{\"order\": $i}"
done
echo "app: published $N orders"
