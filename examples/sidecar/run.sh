#!/usr/bin/env bash
# Runs the example on one machine: a webhook receiver for billing and one for the local audit,
# the upstream evmesh, the application's sidecar, then the application. Ctrl-C stops everything.
#   examples/sidecar/run.sh [N]      (EVMESH: the evmesh binary, default target/release/evmesh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
EVMESH="${EVMESH:-$here/../../target/release/evmesh}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

receiver() { # PORT NAME
    python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        print(sys.argv[2], self.headers["ce-id"], flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$1" "$2" &
}
receiver 20180 billing
receiver 20181 local-audit
"$EVMESH" serve --config "$here/upstream.yaml" --data-dir "$work/upstream" &
"$EVMESH" serve --profile sidecar --upstream http://127.0.0.1:20105 \
    --config "$here/sidecar.yaml" --data-dir "$work/sidecar" &
until curl -sf http://127.0.0.1:10106/readyz >/dev/null && curl -sf http://127.0.0.1:20106/readyz >/dev/null; do
    sleep 0.1
done
"$here/app.sh" "${1:-20}"
sleep 2
