#!/usr/bin/env bash
# Run the QGIS plugin tests (tests/qgis) headless in Debian's python3 with real QGIS 3.22.
# Needs scripts/setup_qgis.sh first, and the dev venv (.venv) to write the tiny ONNX test model
# (QGIS's Python has no onnx; the model dir itself only needs onnxruntime to run).
# Usage: bash scripts/test_qgis.sh [pytest args...]      e.g. -k search -x, or tests/qgis/test_dock.py
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PY=/usr/bin/python3
VENV_PY="${VENV_PY:-$REPO/.venv/bin/python}"
MODEL_DIR="$REPO/build/qgis-test-model"
DENSE_MODEL_DIR="$REPO/build/qgis-test-model-dense"  # the same with a 'dense' image output (4 x 4 cells)

# The tiny model (rsclip_core.inference.toy_model): rewritten when the generator changes.
stamp="$MODEL_DIR/.generator-sha"
want="$(sha256sum rsclip_core/inference/toy_model.py rsclip_core/spec.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    if [ ! -x "$VENV_PY" ]; then
        echo "test_qgis: $VENV_PY not found: run 'make setup-dev' (or set VENV_PY to a Python with onnx)" >&2
        exit 2
    fi
    rm -rf "$MODEL_DIR" "$DENSE_MODEL_DIR"
    "$VENV_PY" -c "import sys; from rsclip_core.inference.toy_model import write_toy_model; write_toy_model(sys.argv[1]); write_toy_model(sys.argv[2], dense_grid=4)" "$MODEL_DIR" "$DENSE_MODEL_DIR"
    echo "$want" > "$stamp"
fi

export QT_QPA_PLATFORM=offscreen
# The plugin's dependencies as scripts/setup_qgis.sh installed them (not the user's QGIS profile).
export RSCLIP_QGIS_DEPS_DIR="${RSCLIP_QGIS_DEPS_DIR:-$REPO/build/qgis-deps/$($PY -c 'import sys; print("py%d%d" % sys.version_info[:2])')}"
export RSCLIP_QGIS_TEST_MODEL="${RSCLIP_QGIS_TEST_MODEL:-$MODEL_DIR}"  # a real model dir for the screenshot
export RSCLIP_QGIS_TEST_DENSE_MODEL="${RSCLIP_QGIS_TEST_DENSE_MODEL:-$DENSE_MODEL_DIR}"
export PYTHONPATH="$REPO/build/qgis-testdeps:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# -p no:cacheprovider: the repo's pytest config (addopts -m 'not ... qgis') is not for this suite.
exec "$PY" -m pytest -c tests/qgis/pytest.ini --rootdir "$REPO" -p no:cacheprovider "$@"
