#!/usr/bin/env bash
# System packages evmesh's build and tests need beyond Rust and a C compiler, installed from apt
# only when missing (root or sudo): OpenSSL headers and pkg-config for librdkafka's TLS (it is
# built from source by rdkafka, with its own configure script), and Node.js for the tests that
# deliver to a receiver of another stack.
set -euo pipefail
missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v make >/dev/null 2>&1 || missing+=(make)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "deps: installing ${missing[*]} from apt" >&2
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"
fi
