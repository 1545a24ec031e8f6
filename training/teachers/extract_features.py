"""Cache locked-tower features for fitting the offline teachers (resumable; run with nice).

    nice -n 10 python training/teachers/extract_features.py --towers efficientnet_lite2,efficientnet_lite0 \
        --aug-views 2 --work-dir ~/.cache/rsclip

Order: centre views of RSICD train/val/test + RSSCN7 for every tower, then the augmented train
views, then the caption/prompt text features. Killing and re-running continues where it stopped.
Features go to ``--cache``, else ``<work dir>/teacher_features`` (work dir: ``--work-dir``, else
``$RSCLIP_WORK_DIR``, else ``~/.cache/rsclip``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from rsclip_core.data.readers import read_image_folder, read_karpathy_json
from rsclip_core.teachers.fit import cached_image_features, cached_text_features
from rsclip_core.workdir import stage_dir

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--towers", default="efficientnet_lite2,efficientnet_lite0")
    p.add_argument("--aug-views", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cache", default=None, help="feature cache (default: <work dir>/teacher_features)")
    p.add_argument("--work-dir", default=None, help="work-file root (default: $RSCLIP_WORK_DIR, else ~/.cache/rsclip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-images", type=int, default=800, help="RSICD val images used for model selection")
    args = p.parse_args()
    args.cache = args.cache or stage_dir("teacher_features", args.work_dir)
    torch.set_num_threads(args.threads)
    rsicd = DATA / "rsicd" / "dataset_rsicd.json"
    if not rsicd.exists():
        sys.exit(f"Error: RSICD not found at {rsicd}")
    splits = {s: read_karpathy_json(rsicd, splits=[s]) for s in ("train", "val", "test")}
    splits["val"] = splits["val"][: args.val_images]
    rsscn7 = read_image_folder(DATA / "rsscn7")
    texts = sorted({c for recs in splits.values() for r in recs for c in r.captions})
    cached_text_features(texts, args.cache)
    towers = args.towers.split(",")
    for tower in towers:
        for name, recs in [("rsicd-train", splits["train"]), ("rsicd-test", splits["test"]),
                           ("rsscn7", rsscn7), ("rsicd-val", splits["val"])]:
            cached_image_features(recs, tower, args.cache, name, view=0, image_size=args.image_size)
    for view in range(1, args.aug_views + 1):
        for tower in towers:
            cached_image_features(splits["train"], tower, args.cache, "rsicd-train", view=view,
                                  image_size=args.image_size)
    print("done", flush=True)


if __name__ == "__main__":
    main()
