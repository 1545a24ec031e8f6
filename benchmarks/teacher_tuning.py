"""Teacher tuning side by side: locked heads vs CMER Focus-Adapter vs partial fine-tuning (issue #14).

Every variant trains the same way at the same small budget (the first ``--train-images`` RSICD
train images of the tap cache, centre views, ``--epochs`` epochs, batch 256, CLIP loss,
best RSICD-val epoch kept) on the frozen packaged tower's cached taps
(:mod:`rsclip_core.teachers.tuned`), each in its own subprocess so that peak memory (``ru_maxrss``)
and step time are its own; accuracy is RSICD val / test mR and RSSCN7 zero-shot, and with
``--dihedral`` also RSICD-test mR of dihedral-averaged image embeddings (8 transforms per image).

    python benchmarks/teacher_tuning.py --work-dir /work/rsclip-work --dihedral \
        --out benchmarks/results/teacher_tuning.md

The tap and text caches are the tuned-teacher stage's (``training/teachers/tune_teachers.py``):
built here where missing (resumable).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: variant -> (unlock, Focus-Adapter)
VARIANTS = {
    "locked": (0, False),
    "focus-adapter": (0, True),
    "partial-s6": (1, False),
    "partial-s56": (2, False),
    "partial-s6+adapter": (1, True),
}


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune_teachers", REPO / "training" / "teachers" / "tune_teachers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_teachers"] = module
    spec.loader.exec_module(module)
    return module


def _prepare(args: argparse.Namespace):
    """(tune module, splits, text data, zero-shot setup, tap views incl. dihedral test views)."""
    from rsclip_core.teachers.taps import cached_tap_features
    from rsclip_core.workdir import stage_dir

    tt = _tune_module()
    recipe = tt.RECIPES[args.recipe]
    cache = stage_dir("teacher_features", args.work_dir)
    splits = tt.load_splits(args.data, recipe)  # the full caches of the real stage (same keys)
    text = tt.text_data(splits, cache)
    zs = tt.zero_shot_setup(splits.rsscn7, cache) if splits.rsscn7 else None
    t = tt.TeacherRecipe("bench", args.tower, recipe.teachers[0].tune)
    views = tt.tap_views(t, splits, cache, aug_views=0)
    dihedral = []
    if args.dihedral:
        dihedral = [cached_tap_features(splits.test, args.tower, cache, "rsicd-test", dihedral=d) for d in range(1, 8)]
    return tt, splits, text, zs, views, dihedral


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from rsclip_core.evaluate.metrics import retrieval_metrics
    from rsclip_core.teachers.focus_adapter import FocusAdapterConfig
    from rsclip_core.teachers.heads import HeadConfig
    from rsclip_core.teachers.tuned import (
        TapData,
        TuneConfig,
        TunedImageConfig,
        encode_taps,
        encode_text_feats,
        fit_tuned,
    )

    torch.set_num_threads(args.threads)
    tt, splits, text, zs, views, dihedral = _prepare(args)
    n = min(args.train_images, len(splits.train))
    train_view = {k: v[:n] for k, v in views["train"][0].items()}
    owner = text["train"][1]
    keep = owner < n
    data = TapData([train_view], text["train"][0][keep], owner[keep], text["label_feats"], text["image_label"][:n])
    unlock, adapter = VARIANTS[args.worker]
    head = HeadConfig(kind="mlp", hidden=1024, dropout=0.1)
    cfg = TuneConfig(embed_dim=256, image=TunedImageConfig(unlock=unlock, head=head,
                                                           adapter=FocusAdapterConfig() if adapter else None),
                     text_head=HeadConfig(**asdict(head)), epochs=args.epochs, seed=args.seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    heads, info = fit_tuned(args.tower, data, (views["val"], *text["val"]), cfg, log=lambda s: print(s, flush=True))
    train_s = time.time() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emb = tt.embed_teacher(heads, views, text, zs)
    row = tt.score(emb, text, zs)
    if dihedral:
        total = emb["test"][0].copy()
        for view in dihedral:
            total += encode_taps(heads["image"], view)
        img = total / np.linalg.norm(total, axis=1, keepdims=True)
        row["rsicd_test_dihedral"] = retrieval_metrics(img @ encode_text_feats(heads["text"], text["test"][0]).T,
                                                       text["test"][1])
    trainable = sum(p.numel() for p in heads.parameters() if p.requires_grad)
    row.update({"variant": args.worker, "unlock": unlock, "adapter": adapter, "train_images": n,
                "epochs": args.epochs, "best_epoch": info["val"]["epoch"], "train_s": round(train_s, 1),
                "step_time_s": info["step_time_s"], "steps_per_epoch": info["steps_per_epoch"],
                "trainable_params": trainable, "maxrss_mb_before_train": rss_before / 1024,
                "maxrss_mb": rss_after / 1024})
    Path(args.result).write_text(json.dumps(row, indent=2))


def markdown(rows: list[dict], command: str, args: argparse.Namespace) -> str:
    lines = ["# Teacher tuning side by side: locked heads vs Focus-Adapter vs partial fine-tuning", "",
             f"Produced by: `{command}`", "",
             f"Tower `{args.tower}` @224 (frozen below the tuned part; taps cached per view), MiniLM text head,",
             f"the first {rows[0]['train_images'] if rows else '?'} RSICD train images (centre views), {args.epochs} epochs,",
             "batch 256, AdamW one-cycle (heads/adapter lr 1e-3, tuned stages 5e-5, stage 5 x0.5), frozen",
             "BatchNorm statistics, best RSICD-val epoch kept; RSICD test and RSSCN7 only evaluated. Each",
             f"variant ran in its own process, {args.threads} thread(s), on a shared 2-core CPU ({platform.machine()}).",
             "Step time: median train step (batch 256) on cached taps; peak memory: the process's maxrss",
             "after training (includes the memory-mapped cache pages it touched) and its growth during training.", "",
             "| variant | tuned | trainable params | step s | train s | best epoch | val mR | **test mR** | "
             "test mR dihedral | RSSCN7 ZS top-1 | maxrss MB | +MB in training |", "|---" * 12 + "|"]
    for r in rows:
        tuned = {0: "", 1: "stage 6 + conv_head", 2: "stages 5-6 + conv_head"}[r["unlock"]]
        if r["adapter"]:
            tuned = f"{tuned} + Focus-Adapter" if tuned else "Focus-Adapter"
        tuned = tuned or "– (head only)"
        dih = f"{r['rsicd_test_dihedral']['mR']:.2f}" if "rsicd_test_dihedral" in r else "–"
        zs = f"{r['rsscn7_zero_shot']['top1']:.1f}" if "rsscn7_zero_shot" in r else "–"
        lines.append(f"| {r['variant']} | {tuned} | {r['trainable_params'] / 1e6:.2f} M | {r['step_time_s']:.2f} | "
                     f"{r['train_s']:.0f} | {r['best_epoch']} | {r['rsicd_val']['mR']:.2f} | "
                     f"**{r['rsicd_test']['mR']:.2f}** | {dih} | {zs} | {r['maxrss_mb']:.0f} | "
                     f"{r['maxrss_mb'] - r['maxrss_mb_before_train']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--tower", default="efficientnet_lite0")
    ap.add_argument("--recipe", default="default", help="whose data splits/caches (quick: a smoke run)")
    ap.add_argument("--train-images", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--dihedral", action="store_true", help="also score dihedral-averaged test embeddings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    _prepare(args)  # build every cache once, before the timed workers
    rows = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {variant!r} (have {', '.join(VARIANTS)})")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            result = f.name
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, __file__, *passthrough, "--worker", variant, "--result", result]
        print(f"== {variant}", flush=True)
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit(f"variant {variant} failed")
        rows.append(json.loads(Path(result).read_text()))
        os.unlink(result)
    command = "python benchmarks/teacher_tuning.py " + " ".join(passthrough)
    md = markdown(rows, command, args)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
