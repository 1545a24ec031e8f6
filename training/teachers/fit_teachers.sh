#!/usr/bin/env bash
# Fit and evaluate the two offline teachers (locked packaged towers + fitted heads) on RSICD.
# Features are cached under $CACHE (resumable); checkpoints go to $OUT (outside the repo). Both default into
# the work dir (rsclip_core.workdir): $RSCLIP_WORK_DIR, else ~/.cache/rsclip.
set -euo pipefail
DATA=${RSCLIP_SHARED_DATA:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data}
WORK=${RSCLIP_WORK_DIR:-$HOME/.cache/rsclip}
CACHE=${CACHE:-$WORK/teacher_features}
OUT=${OUT:-$WORK/teachers}
export RSCLIP_CACHE=${RSCLIP_CACHE:-$(dirname "$CACHE")}
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
