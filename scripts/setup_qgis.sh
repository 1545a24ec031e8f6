#!/usr/bin/env bash
# Set up what the QGIS plugin tests need on a Debian 12 machine, idempotently (fast when done):
#   1. Debian's QGIS 3.22 + its Python bindings + GDAL bindings + pip + rasterio (built on the same
#      GDAL as QGIS) -- apt, only for packages not yet installed;
#   2. the plugin's runtime dependencies (onnxruntime, tokenizers, shapely 2, geopandas, pyogrio)
#      through the plugin's own guarded installer (qgis_plugin/deps.py: numpy pinned to what QGIS
#      ships, pyproj pinned to Debian's (same PROJ as QGIS), Debian's own packages preferred),
#      installed into build/qgis-deps/py3XX ($RSCLIP_QGIS_DEPS_DIR; a user's install goes to the
#      QGIS profile, <profile>/rsclip/deps/py3XX) -- the code path a user triggers from the dock,
#      so CI exercises it for real;
#   3. the test tools (pytest, pytest-qgis<3) into build/qgis-testdeps with the same installer.
# Usage: bash scripts/setup_qgis.sh        (root or sudo for the apt step)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
TESTDEPS=build/qgis-testdeps
export RSCLIP_QGIS_DEPS_DIR="${RSCLIP_QGIS_DEPS_DIR:-$(pwd)/build/qgis-deps/$($PY -c 'import sys; print("py%d%d" % sys.version_info[:2])')}"
start=$(date +%s)

APT_PACKAGES=(qgis python3-qgis python3-gdal python3-pip python3-rasterio python3-pyproj python3-yaml xvfb xauth)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup_qgis: apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Plugin runtime dependencies (no pip call at all when everything is already there).
QT_QPA_PLATFORM=offscreen $PY -m qgis_plugin.deps

# Test tools, kept out of the plugin's folder and out of the system site-packages.
if ! PYTHONPATH="$TESTDEPS" $PY -c "import pytest_qgis, pytest" 2>/dev/null; then
    $PY -m qgis_plugin.deps --target "$TESTDEPS" --extra-only "pytest>=7" "pytest-qgis<3"
fi
echo "setup_qgis: ready in $(( $(date +%s) - start )) s ($(QT_QPA_PLATFORM=offscreen $PY -c 'from qgis.core import Qgis; print("QGIS", Qgis.QGIS_VERSION)'))"
