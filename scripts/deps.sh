#!/usr/bin/env bash
# System packages evmesh's build needs beyond Rust and a C compiler: librdkafka is built from
# source (rdkafka's cmake-build feature), which needs cmake, libcurl and OpenSSL headers.
# Installs only what is missing (apt; root or sudo).
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
for p in libcurl4-openssl-dev libssl-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "deps: installing ${missing[*]} from apt" >&2
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"
fi
