#!/usr/bin/env bash
# The OpenTelemetry collector the tracing test exports to: Rotel, a collector written in Rust,
# whose OTLP receivers (gRPC and HTTP, protobuf and JSON) decode requests strictly. Its binary
# (rotel-agent) ships inside the PyPI package rotel (0.0.1a15), fetched once with pip and
# cached.
#
#   scripts/otel-collector.sh install   fetch it into the cache unless it is there
#   scripts/otel-collector.sh path      print the cached binary's path
#
# The tests use $OTEL_COLLECTOR_BIN (scripts/test.sh sets it).
set -euo pipefail

PACKAGE=rotel==0.0.1a15
ROOT="${EVMESH_CACHE:-$HOME/.cache/evmesh-ci}/rotel-0.0.1a15"
BIN="$ROOT/rotel-agent"

installed() {
    [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1
}

install() {
    installed && return
    mkdir -p "$ROOT"
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "otel-collector: fetching $PACKAGE from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$PACKAGE"
    python3 - "$tmp" "$BIN.part" <<'PY'
import glob, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
with open(out, "wb") as f:
    f.write(wheel.read("rotel/rotel-agent"))
PY
    chmod +x "$BIN.part"
    mv "$BIN.part" "$BIN"
    installed || { echo "otel-collector: $BIN does not run" >&2; exit 1; }
}

case "${1:-install}" in
    install) install ;;
    path) echo "$BIN" ;;
    *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
