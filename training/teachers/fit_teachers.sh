#!/usr/bin/env bash
# Fit and evaluate the two offline teachers (locked packaged towers + fitted heads) on RSICD.
# Work files go below $RSCLIP_WORK_DIR (default ~/.cache/rsclip, as rsclip_core.workdir): features
# are cached under $CACHE (default <work dir>/teacher_features, resumable; the image towers' ONNX
# exports under <work dir>/towers); checkpoints go to $OUT (default <work dir>/teachers).
set -euo pipefail
DATA=${RSCLIP_SHARED_DATA:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data}
export RSCLIP_WORK_DIR=${RSCLIP_WORK_DIR:-$HOME/.cache/rsclip}
CACHE=${CACHE:-$RSCLIP_WORK_DIR/teacher_features}
OUT=${OUT:-$RSCLIP_WORK_DIR/teachers}
HEAD_ARGS=${HEAD_ARGS:-"--head mlp --hidden 1024 --dropout 0.1 --epochs 40 --label-caption-prob 0.1"}

nice -n 10 python "$(dirname "$0")/extract_features.py" --towers efficientnet_lite2,efficientnet_lite0 \
    --aug-views "${AUG_VIEWS:-0}" --cache "$CACHE"
for spec in efficientnet_lite2:512 efficientnet_lite0:256; do
  tower=${spec%%:*}
  rsclip teacher fit --image-tower "$tower" --embed-dim "${spec##*:}" --rsicd "$DATA/rsicd/dataset_rsicd.json" --cache "$CACHE" \
      --aug-views "${AUG_VIEWS:-0}" $HEAD_ARGS --out "$OUT/${tower#efficientnet_}.pt"
done
rsclip teacher eval "$OUT/lite2.pt" "$OUT/lite0.pt" --rsicd "$DATA/rsicd/dataset_rsicd.json" \
    --rsscn7 "$DATA/rsscn7" --cache "$CACHE" --out "$(dirname "$0")/../results/teachers.md"
