#!/usr/bin/env bash
# The RocketMQ name server and broker the tests use: the crates rocketmq-namesrv and
# rocketmq-broker (crates.io, a Rust implementation speaking RocketMQ's remoting protocol),
# built once and cached.
#
#   scripts/rocketmq-broker.sh install   build both into the cache unless the right version is there
#   scripts/rocketmq-broker.sh path      print the folder holding the two binaries
#   scripts/rocketmq-broker.sh start     install, then run a name server on 127.0.0.1:${NAMESRV_PORT:-9876}
#                                        and a broker on ${BROKER_PORT:-10911} (store in a temp folder)
#
# The integration tests start their own pair on free ports (crate tests/rocketmq); `start` is
# for trying evmesh's RocketMQ features by hand.
set -euo pipefail

VERSION=1.0.0
ROOT="${EVMESH_CACHE:-$HOME/.cache/evmesh-ci}/rocketmq-$VERSION"
BIN="$ROOT/bin"

installed() {
    [ -x "$BIN/rocketmq-namesrv-rust" ] && [ -x "$BIN/rocketmq-broker-rust" ]
}

install() {
    installed && return
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    flock 9
    installed && return
    echo "rocketmq-broker: building rocketmq-namesrv and rocketmq-broker $VERSION from crates.io (about 20 min on 2 cores, once)" >&2
    # One target folder for both: they share most of their dependencies.
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/evmesh-rocketmq-build" cargo install --locked --root "$ROOT" \
        "rocketmq-namesrv@$VERSION" "rocketmq-broker@$VERSION"
}

case "${1:-start}" in
    install) install ;;
    path) echo "$BIN" ;;
    start)
        install
        dir="$(mktemp -d)"
        trap 'kill 0; rm -rf "$dir"' EXIT
        ns="${NAMESRV_PORT:-9876}"
        bp="${BROKER_PORT:-10911}"
        mkdir -p "$dir/home" "$dir/store"
        cat >"$dir/broker.properties" <<PROPS
brokerClusterName=DefaultCluster
brokerName=evmesh
brokerId=0
namesrvAddr=127.0.0.1:$ns
brokerIP1=127.0.0.1
listenPort=$bp
haListenPort=$((bp + 1))
storePathRootDir=$dir/store
mappedFileSizeCommitLog=67108864
autoCreateTopicEnable=true
PROPS
        ROCKETMQ_HOME="$dir/home" "$BIN/rocketmq-namesrv-rust" --listenPort "$ns" \
            --bindAddress 127.0.0.1 --rocketmqHome "$dir/home" &
        sleep 1
        ROCKETMQ_HOME="$dir/home" "$BIN/rocketmq-broker-rust" -c "$dir/broker.properties" &
        echo "rocketmq: name server 127.0.0.1:$ns, broker 127.0.0.1:$bp (Ctrl-C stops both)" >&2
        wait
        ;;
    *) echo "usage: $0 install|path|start" >&2; exit 2 ;;
esac
