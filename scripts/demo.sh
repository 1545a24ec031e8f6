#!/usr/bin/env bash
# The main job on the bundled default model and the bundled sample raster (what `make demo` runs):
# a zero-shot land-cover map (COG + confidence + polygons) and a text search, in the light,
# torch-free install. Both resources ship inside the installed package (rsclip_core.resources);
# $RSCLIP_MODEL, when set, replaces the bundled model. Usage: scripts/demo.sh VENV OUT_DIR
set -euo pipefail
venv=${1:-.venv-demo}
out=${2:-out}
cd "$(dirname "$0")/.."
map="$venv/bin/rsclip-map"
raster=$("$venv/bin/python" -c "from rsclip_core.resources import sample_raster; print(sample_raster())")
mkdir -p "$out"
echo "== model"
"$map" info
echo "== zero-shot land cover of $raster"
"$map" classify "$raster" --bands 1,2,3 --overwrite \
  -o "$out/landcover.tif" --confidence "$out/landcover_confidence.tif" --polygons "$out/landcover.gpkg"
echo "== text search"
"$map" search "$raster" "a lake" --bands 1,2,3 --top-k 10 --overwrite \
  -o "$out/search_lake.gpkg" --heatmap "$out/search_lake_heat.tif"
echo "Outputs in $out/: landcover.tif (+ .gpkg polygons, confidence), search_lake.gpkg (+ heat map)."
