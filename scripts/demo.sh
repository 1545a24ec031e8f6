#!/usr/bin/env bash
# The main job on the bundled default model and the bundled sample raster (what `make demo` runs):
# a zero-shot land-cover map (COG + confidence + polygons) and a text search, in the light,
# torch-free install. Usage: scripts/demo.sh VENV OUT_DIR
set -euo pipefail
venv=${1:-.venv-demo}
out=${2:-out}
cd "$(dirname "$0")/.."
map="$venv/bin/rsclip-map"
raster=resources/samples/naip_m_4709963_se_14_1_20200831.tif
model=${RSCLIP_MODEL:-resources/models/default}
if [ ! -f "$model/rsclip.json" ]; then
  echo "Error: no model at $model (set RSCLIP_MODEL to an exported model directory)" >&2
  exit 2
fi
mkdir -p "$out"
echo "== model"
"$map" info "$model"
echo "== zero-shot land cover of $raster"
"$map" classify "$raster" -m "$model" --bands 1,2,3 --overwrite \
  -o "$out/landcover.tif" --confidence "$out/landcover_confidence.tif" --polygons "$out/landcover.gpkg"
echo "== text search"
"$map" search "$raster" "a lake" -m "$model" --bands 1,2,3 --top-k 10 --overwrite \
  -o "$out/search_lake.gpkg" --heatmap "$out/search_lake_heat.tif"
echo "Outputs in $out/: landcover.tif (+ .gpkg polygons, confidence), search_lake.gpkg (+ heat map)."
