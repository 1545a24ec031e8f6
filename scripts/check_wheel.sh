#!/usr/bin/env bash
# CI check that the wheel is a working install on its own: build it from the files git sees,
# check its size (< 60 MB), install it with its base dependencies into a fresh venv outside the
# repo, then, from a folder outside the repo, run `rsclip-map info` and a `rsclip-map classify` of
# the bundled sample raster with no -m: the bundled model, classes and sample must come from the
# installed package (rsclip_core.resources), never from a source tree.
# Usage: bash scripts/check_wheel.sh      (PYTHON=python3, MAX_WHEEL_MB=60, KEEP=1 keeps the temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-python3}
max_mb=${MAX_WHEEL_MB:-60}
start=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rsclip-wheel.XXXXXX")
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$tmp"' EXIT; fi
unset PYTHONPATH RSCLIP_MODEL

# 1. the source as git sees it (tracked + untracked, not ignored): no stale build/ or caches inside
mkdir -p "$tmp/src" "$tmp/dist" "$tmp/run"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | tar -xf - -C "$tmp/src"
else
  tar --exclude=./.venv --exclude=./build --exclude=./dist -cf - . | tar -xf - -C "$tmp/src"
fi
"$PY" -m pip wheel -q --no-deps -w "$tmp/dist" "$tmp/src"
wheel=$(ls "$tmp"/dist/rsclip-*.whl)
bytes=$(stat -c %s "$wheel")
mb=$("$PY" -c "print(f'{$bytes / 1e6:.1f}')")
echo "wheel: $(basename "$wheel") $mb MB (limit $max_mb MB)"
if [ "$bytes" -ge $((max_mb * 1000000)) ]; then
  echo "Error: $(basename "$wheel") is $mb MB, over the $max_mb MB limit" >&2
  exit 1
fi
for required in rsclip_core/resources/__init__.py rsclip_core/resources/models/default/rsclip.json \
    rsclip_core/resources/models/default/image.onnx rsclip_core/resources/classes/landcover.yaml \
    rsclip_core/resources/samples/naip_m_4709963_se_14_1_20200831.tif; do
  "$PY" -c "import sys, zipfile; sys.exit('$required' not in zipfile.ZipFile('$wheel').namelist())" \
    || { echo "Error: $(basename "$wheel") lacks $required" >&2; exit 1; }
done

# 2. a fresh venv with the wheel and its real base dependencies
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "$wheel"

# 3. run it from outside the repo: nothing may be found through the source tree
cd "$tmp/run"
installed=$("$tmp/venv/bin/python" -c "import rsclip_core; print(rsclip_core.__file__)")
case "$installed" in
  "$tmp/venv/"*) ;;
  *) echo "Error: rsclip_core imported from $installed, not from the fresh venv" >&2; exit 1 ;;
esac
case "$installed" in
  "$repo/"*) echo "Error: rsclip_core imported from the repo ($installed)" >&2; exit 1 ;;
esac
sample=$("$tmp/venv/bin/python" -c "from rsclip_core.resources import sample_raster; print(sample_raster())")
"$tmp/venv/bin/rsclip-map" info
"$tmp/venv/bin/rsclip-map" classify "$sample" --bands 1,2,3 -o "$tmp/run/landcover.tif" \
  --polygons "$tmp/run/landcover.gpkg" -q
"$tmp/venv/bin/python" - "$tmp/run/landcover.tif" <<'PYEOF'
import sys

import rasterio

with rasterio.open(sys.argv[1]) as ds:
    codes = ds.read(1)
assert codes.size and (codes > 0).any(), "classify wrote an empty land-cover map"
present = len(set(codes.ravel().tolist()) - {0, 255})
print(f"classify: {codes.shape[1]}x{codes.shape[0]} cells, {present} classes present")
PYEOF
echo "wheel check passed in $(( $(date +%s) - start )) s"
