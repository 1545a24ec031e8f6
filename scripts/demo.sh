#!/usr/bin/env bash
# The main job on the bundled default model and the bundled 1 m demo scene (what `make demo` runs):
# a zero-shot land-cover map that follows the ground (dense per-location embeddings, COG +
# confidence + polygons), the same map one class per tile for comparison, and four text searches
# whose hits are boxed inside their tiles, in the light, torch-free install. Model and scene ship
# inside the installed package (rsclip_core.resources); $RSCLIP_MODEL, when set, replaces the
# bundled model. Usage: scripts/demo.sh VENV OUT_DIR
set -euo pipefail
venv=${1:-.venv-demo}
out=${2:-out}
cd "$(dirname "$0")/.."
map="$venv/bin/rsclip-map"
raster=$("$venv/bin/python" -c "from rsclip_core.resources import sample_raster; print(sample_raster('berkeley'))")
mkdir -p "$out"
echo "== model"
"$map" info
echo "== zero-shot land cover of $raster (dense: per-location embeddings, 8 cells per tile)"
"$map" classify "$raster" --overwrite --detail dense \
  -o "$out/landcover.tif" --confidence "$out/landcover_confidence.tif" --polygons "$out/landcover.gpkg"
echo "== the same, one class per tile (for comparison)"
"$map" classify "$raster" --overwrite --detail tile -q -o "$out/landcover_tile.tif"
for query in "tennis courts" "a baseball field" "a swimming pool" "a parking lot"; do
  slug=$(echo "$query" | tr ' ' '_')
  echo "== text search: $query"
  "$map" search "$raster" "$query" --top-k 5 --overwrite --templates \
    -o "$out/search_$slug.gpkg" --heatmap "$out/search_${slug}_heat.tif"
done
echo "Outputs in $out/: landcover.tif (+ .gpkg polygons, confidence), landcover_tile.tif, search_*.gpkg (+ heat maps)."
