#!/usr/bin/env bash
# Interim default model (resources/models/default): the best fitted offline teacher (by RSICD *val* mR),
# exported with float16 image weights and a dynamic int8 text graph (MiniLM's fp32 graph alone is 93 MB),
# then measured on the shipped files themselves. (Static int8 for the image graph, calibrated on these
# RSICD train images, kept only cosine ~0.81 to fp32, see MODEL_CARD.md, so it is not shipped.) Reproduces every number in
# resources/models/MODEL_CARD.md. Run from the repo root with the dev venv active; HF_HUB_OFFLINE-safe.
# Needs: the teacher checkpoint from training/teachers/fit_teachers.sh and the data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DATA=${DATA:-/work/shared/data}
TEACHER=${TEACHER:-/work/cache/teachers/lite0.pt}      # val mR 30.73 (lite2: 28.05) -> lite0
CALIB=${CALIB:-/work/cache/calib_rsicd_train}          # 256 RSICD *train* images (links)
OUT=${OUT:-resources/models/default}
RES=${RES:-out/interim_default}
mkdir -p "$RES"

# 1. calibration images: 256 evenly spaced RSICD train images (never val/test)
python - "$DATA" "$CALIB" <<'PY'
import json, os, sys
data, calib = sys.argv[1], sys.argv[2]
os.makedirs(calib, exist_ok=True)
train = sorted(x["filename"] for x in json.load(open(f"{data}/rsicd/dataset_rsicd.json"))["images"] if x["split"] == "train")
for name in train[:: len(train) // 256][:256]:
    link = os.path.join(calib, name)
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(f"{data}/rsicd/images/{name}"), link)
PY

# 2. export + int8 text quantization (prints the fp32-vs-int8 parity report of the text graph)
nice -n 10 rsclip export teacher-effnetlite0-minilm --checkpoint "$TEACHER" -o "$OUT" --overwrite \
  --classes resources/classes/landcover.yaml --resolution 1.0 \
  --quantize int8-text --fp16 2>&1 | tee "$RES/export.log"

# 3. measured on the shipped files: RSICD test retrieval, RSSCN7 zero-shot
nice -n 10 rsclip eval --model-dir "$OUT" --karpathy "$DATA/rsicd/dataset_rsicd.json" \
  --images "$DATA/rsicd/images" --split test --folder "$DATA/rsscn7" -o "$RES/eval" -q 2>&1 | tee "$RES/eval.log"

# 4. CPU latency per image (onnxruntime, 1 thread, batch 1 and 16) and file sizes
nice -n 10 python - "$OUT" "$CALIB" <<'PY' | tee "$RES/latency.txt"
import sys, time
from pathlib import Path
import numpy as np
from rsclip_core.inference import load_model
from rsclip_core.export.quantize import list_calibration_images, preprocess_images
model = load_model(sys.argv[1], threads=1)
x = preprocess_images(list_calibration_images(sys.argv[2], limit=16), model.metadata)
sess = model.image_session
for batch in (1, 16):
    xb = x[:batch]
    sess.run(None, {"image": xb})  # warm-up
    times = []
    for _ in range(max(3, 48 // batch)):
        t0 = time.perf_counter(); sess.run(None, {"image": xb}); times.append(time.perf_counter() - t0)
    print(f"image encoder, 1 thread, batch {batch}: {1000 * np.median(times) / batch:.1f} ms/image (median of {len(times)})")
t0 = time.perf_counter(); model.encode_text(["a satellite image of a lake."] * 16); dt = time.perf_counter() - t0
print(f"text encoder, 1 thread, batch 16: {1000 * dt / 16:.1f} ms/caption")
PY
du -b "$OUT"/* | tee "$RES/sizes.txt"

# 5. demo on the bundled sample + the README pictures (docs/img/demo_*.png)
bash scripts/demo.sh .venv out/demo
nice -n 10 python scripts/render_demo.py out/demo --out-dir docs/img
