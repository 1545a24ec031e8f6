"""Benchmark the reinforced-dataset build with the offline teacher ensemble on this CPU.

Measures (1) single-view encode throughput of each offline teacher, (2) end-to-end reinforcement
throughput (K augmented views + S neighbour/scene-label captions + all embeddings + shard writing)
in images/s, and (3) the storage report (bytes/sample split by part), on real RSICD train images.

    python benchmarks/reinforce.py --teacher ~/.cache/rsclip/teachers/lite2.pt --teacher ~/.cache/rsclip/teachers/lite0.pt \
        --images 64 --bank 256 --out benchmarks/results/reinforce.md

Needs ../shared/data/rsicd and fitted teacher checkpoints (``rsclip teacher fit``); exits with a
clear message when they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", action="append", required=True, help="offline teacher checkpoint (.pt), repeatable")
    p.add_argument("--images", type=int, default=64, help="RSICD train images to reinforce")
    p.add_argument("--bank", type=int, default=256, help="caption-bank images (neighbour captioner)")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("-s", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write a markdown report here (+ .json)")
    args = p.parse_args()

    import torch
    from PIL import Image

    from rsclip_core.data.augment import AugmentationConfig
    from rsclip_core.data.readers import read_karpathy_json
    from rsclip_core.reinforce.builder import (
        BuildConfig,
        build_caption_bank,
        build_reinforced_dataset,
        report_markdown,
        storage_report,
    )
    from rsclip_core.teachers.base import TeacherEnsemble
    from rsclip_core.teachers.offline import OfflineTeacher

    torch.set_num_threads(args.threads)
    rsicd = DATA / "rsicd" / "dataset_rsicd.json"
    if not rsicd.exists():
        sys.exit(f"Error: RSICD not found at {rsicd} (set RSCLIP_SHARED_DATA)")
    for t in args.teacher:
        if not Path(t).is_file():
            sys.exit(f"Error: teacher checkpoint not found: {t} (fit one with `rsclip teacher fit`)")
    train = read_karpathy_json(rsicd, splits=["train"])
    records, bank = train[: args.images], train[: max(args.bank, args.images)]
    names = [Path(t).stem for t in args.teacher]
    ensemble = TeacherEnsemble([OfflineTeacher(t, name=n) for t, n in zip(args.teacher, names)])
    result: dict = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "cores": os.cpu_count(), "load_avg_1min_at_start": os.getloadavg()[0],
                    "teachers": {n: t for n, t in zip(names, args.teacher)}, "K": args.k, "S": args.s,
                    "images": len(records), "bank": len(bank)}

    views = [Image.open(r.image_path).convert("RGB") for r in records[:32]]
    caps = [c for r in records[:32] for c in r.captions]
    per_teacher = {}
    for t in ensemble.teachers:
        t.encode_images(views[:4])
        t0 = time.perf_counter()
        t.encode_images(views)
        img_s = len(views) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        t.encode_texts(caps)
        txt_s = len(caps) / (time.perf_counter() - t0)
        per_teacher[t.name] = {"image_views_per_s": img_s, "captions_per_s": txt_s, "dim": t.dim}
    result["per_teacher"] = per_teacher

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        captioner, cache = build_caption_bank(bank, ensemble, progress=False)
        result["bank_images_per_s"] = len(bank) / (time.perf_counter() - t0)
        cfg = BuildConfig(num_augmentations=args.k, num_syn_captions=args.s, shard_size=32,
                          augmentation=AugmentationConfig(output_size=224))
        t0 = time.perf_counter()
        built = build_reinforced_dataset(records, tmp, ensemble, captioner, cfg,
                                         source={"path": str(rsicd), "splits": ["train"], "limit": args.images},
                                         text_cache=cache, progress=False)
        seconds = time.perf_counter() - t0
        result["reinforce_images_per_s"] = built.samples_written / seconds
        result["reinforce_views_per_s"] = built.samples_written * args.k / seconds
        report = storage_report(tmp)
        result["storage"] = {k: v for k, v in report.items() if k not in ("dataset", "skipped")}
        example = next(iter(__import__("rsclip_core.reinforce.shards", fromlist=["iter_samples"]).iter_samples(tmp)))
        result["example"] = {"key": example.key, "captions": example.captions[:2], "syn_captions": example.syn_captions,
                             "aug_params": example.aug_params[:2]}
        md_report = report_markdown(report).replace(tmp, "<tmp>")

    lines = ["# Reinforcement benchmark (offline teacher ensemble, this CPU)", "",
             f"Command: `python benchmarks/reinforce.py {' '.join(sys.argv[1:])}`", "",
             (f"Machine: {result['cores']} cores ({result['cpu']}), torch threads {args.threads}, shared with other "
             f"jobs (1-min load average at start {result['load_avg_1min_at_start']:.1f}); image towers on "
             "onnxruntime, text tower on PyTorch."), "",
             "| teacher | dim | image views/s (single view) | captions/s |", "|---|---|---|---|"]
    for n, v in per_teacher.items():
        lines.append(f"| {n} | {v['dim']} | {v['image_views_per_s']:.1f} | {v['captions_per_s']:.0f} |")
    lines += ["", (f"- caption bank ({len(bank)} images, centre view, both teachers): "
                  f"{result['bank_images_per_s']:.2f} images/s"),
              (f"- reinforcement, K={args.k} views + S={args.s} captions, both teachers, shard writing: "
              f"**{result['reinforce_images_per_s']:.2f} images/s** ({result['reinforce_views_per_s']:.1f} views/s)"),
              "", "## Storage", "", md_report, "", "## Example sample", "", "```json",
              json.dumps(result["example"], indent=1), "```"]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
