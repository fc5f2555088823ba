#!/usr/bin/env bash
# The Kafka-protocol broker the tests use: tansu (crates.io), built once and cached.
#
#   scripts/kafka-broker.sh install   build tansu into the cache unless the right version is there
#   scripts/kafka-broker.sh path      print the cached binary's path
#   scripts/kafka-broker.sh start     install, then run a broker on 127.0.0.1:${PORT:-9092}
#                                     (in-memory storage: it forgets everything when stopped)
#
# The integration tests start their own brokers on free ports with the cached binary
# (or $TANSU_BIN); `start` is for trying evmesh's Kafka features by hand.
set -euo pipefail

VERSION=0.6.0
FEATURES=dynostore,postgres
ROOT="${EVMESH_CACHE:-$HOME/.cache/evmesh-ci}/tansu-$VERSION"
BIN="$ROOT/bin/tansu"

installed() {
    [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "tansu $VERSION"
}

install() {
    installed && return
    # One build at a time (tests started in parallel may all ask for it).
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    flock 9
    installed && return
    echo "kafka-broker: building tansu $VERSION from crates.io (about 20-25 min on 2 cores, once)" >&2
    cargo install tansu --version "$VERSION" --locked --no-default-features \
        --features "$FEATURES" --root "$ROOT"
}

case "${1:-start}" in
    install) install ;;
    path) echo "$BIN" ;;
    start)
        install
        url="tcp://127.0.0.1:${PORT:-9092}"
        exec "$BIN" broker --listener-url "$url" --advertised-listener-url "$url" \
            --storage-engine memory://tansu/
        ;;
    *) echo "usage: $0 install|path|start" >&2; exit 2 ;;
esac
