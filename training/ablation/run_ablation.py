"""The ablation that checks the MobileCLIP claim on RSICD: reinforced training learns more per step.

Same student, same steps, same seed and batch, same replayed augmentations; only the objective differs.
Each variant is a recipe in ``training/recipes/ablation/`` (``base.yaml`` + one file per variant):

    clip        plain CLIP (lambda = 0, real captions only)
    kd1         reinforced, lambda = 1.0, real + synthetic captions
    kd07        reinforced, lambda = 0.7, real + synthetic captions
    kd1-nosyn   reinforced, lambda = 1.0, real captions only (no synthetic captions)
    kd1-tau100  reinforced, lambda = 1.0, teachers sharpened to tau = 100

then evaluates each on RSICD test (image<->text R@1/5/10, mR) and RSSCN7 zero-shot (top-1), and
times a short online-distillation run (``online-timing.yaml``, teachers live) against the stored-target run.
Every stage is resumable: re-running skips finished runs/evaluations and resumes interrupted ones.

    python training/ablation/run_ablation.py --data "$RSCLIP_WORK_DIR/reinforced/rsicd-train"
    python training/ablation/run_ablation.py --data ... --set steps=100 --set batch_size=16   # every variant

Writes runs + per-run JSON under ``<--work-dir>/ablation`` and the summary table to training/results/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core.train.config import (
    TrainConfig,
    TrainConfigError,
    build_config,
    load_recipe,
    parse_assignments,
    recipe_description,
)
from rsclip_core.workdir import WORK_DIR_ENV, stage_dir

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = Path(os.environ.get("RSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RECIPES = REPO / "training" / "recipes" / "ablation"
VARIANTS = ("clip", "kd1", "kd07", "kd1-nosyn", "kd1-tau100")  # recipes RECIPES/<name>.yaml, in table order
ONLINE_RECIPE = "online-timing"
STAGE = "ablation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="reinforced RSICD *train* shards (rsclip reinforce)")
    p.add_argument("--rsicd", type=Path, default=DEFAULT_DATA_ROOT / "rsicd" / "dataset_rsicd.json")
    p.add_argument("--rsicd-images", type=Path, default=None, help="default: <json dir>/images")
    p.add_argument("--rsscn7", type=Path, default=DEFAULT_DATA_ROOT / "rsscn7")
    p.add_argument("--rsscn7-per-class", type=int, default=None, help="limit RSSCN7 images per class")
    p.add_argument("--recipes", type=Path, default=RECIPES, help="folder of the variant recipes (<variant>.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig value for every variant, over the recipes (repeatable), e.g. steps=100")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 is fastest on a CPU shared with other jobs)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--online-steps", type=int, default=None,
                   help=f"steps of the online-distillation timing run (0: skip; default: {ONLINE_RECIPE}.yaml's)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help=f"work-file root (default: ${WORK_DIR_ENV} or ~/.cache/rsclip); runs go to <work-dir>/{STAGE}")
    p.add_argument("--results", type=Path, default=REPO / "training" / "results" / "ablation.md")
    p.add_argument("--eval-batch-size", type=int, default=128)
    args = p.parse_args(argv)
    args.work = stage_dir(STAGE, args.work_dir)
    return args


def variant_config(args: argparse.Namespace, name: str, **extra: Any) -> TrainConfig:
    """The resolved TrainConfig of one variant: its recipe, then ``--set``, then data/output (and ``extra``)."""
    overrides = {**parse_assignments(args.overrides), "data": str(args.data), "output": str(args.work / name), **extra}
    return build_config(args.recipes / f"{name}.yaml", overrides).resolved()


def train_variant(name: str, cfg: TrainConfig) -> Path:
    """Train (or resume / skip) one variant; returns the final weights."""
    from rsclip_core.train.trainer import FINAL_WEIGHTS, LAST_CHECKPOINT, train

    out = Path(cfg.output)
    final = out / FINAL_WEIGHTS
    if final.is_file():
        print(f"[{name}] already trained: {final}", flush=True)
        return final
    resume = (out / LAST_CHECKPOINT).is_file()
    print(f"[{name}] {'resuming' if resume else 'training'} {cfg.steps} steps -> {out}", flush=True)
    return train(cfg, resume=resume).final_weights


def step_time_stats(log_file: Path, skip: int = 3) -> dict[str, float]:
    """Median / mean step and data time of a run (the first ``skip`` steps include warm-up)."""
    from rsclip_core.train.trainer import read_log

    records = read_log(log_file)[skip:] or read_log(log_file)
    times = np.array([r["step_time"] for r in records])
    data = np.array([r["data_time"] for r in records])
    return {"median_step_s": float(np.median(times)), "mean_step_s": float(times.mean()),
            "median_data_s": float(np.median(data)), "n_steps": len(records)}


def evaluate_variant(args: argparse.Namespace, name: str, cfg: TrainConfig, weights: Path) -> dict[str, Any]:
    """RSICD test retrieval + RSSCN7 zero-shot of one trained variant (cached in ``out/eval.json``)."""
    cache = Path(cfg.output) / "eval.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from rsclip_core.evaluate import (
        TorchEncoder,
        evaluate_retrieval,
        evaluate_zero_shot,
        read_classification_folder,
        read_karpathy_split,
    )
    from rsclip_core.workdir import atomic_write_text
    from rsclip_core.models import get_tokenizer
    from rsclip_core.train.checkpoint import load_trained_model

    model = load_trained_model(cfg.model, weights)
    encoder = TorchEncoder.from_model(model, get_tokenizer(cfg.model))
    t0 = time.perf_counter()
    rsicd = read_karpathy_split(args.rsicd, args.rsicd_images or args.rsicd.parent / "images", "test")
    retrieval = evaluate_retrieval(encoder, rsicd, args.eval_batch_size)
    zero_shot = evaluate_zero_shot(encoder, read_classification_folder(args.rsscn7, args.rsscn7_per_class),
                                   batch_size=args.eval_batch_size)
    result = {"variant": name, "retrieval": retrieval, "zero_shot": zero_shot,
              "eval_seconds": time.perf_counter() - t0}
    atomic_write_text(cache, json.dumps(result, indent=2) + "\n")
    return result


def _scales_text(args: argparse.Namespace) -> str:
    """The tau_k the reinforced variants actually used (each run's config.json records them)."""
    seen = {}
    for name in VARIANTS:
        cfg_file = args.work / name / "train_config.json"
        if cfg_file.is_file() and json.loads(cfg_file.read_text()).get("mode") != "clip":
            cfg = json.loads(cfg_file.read_text())
            scales = cfg.get("teacher_logit_scales") or {}
            seen[name] = (", ".join(f"{k} {v:.1f}" for k, v in sorted(scales.items()))
                          or f"all {cfg.get('teacher_logit_scale')}")
    return "; ".join(f"{k}: {v}" for k, v in seen.items()) or "default"


def write_table(args: argparse.Namespace, rows: dict[str, dict[str, Any]], timing: dict[str, Any]) -> str:
    """The markdown table of the evaluated variants (settings quoted from the first variant's resolved recipe)."""
    from rsclip_core.workdir import atomic_write_text
    from rsclip_core.reinforce.shards import load_manifest
    from rsclip_core.train.data import ShardStore

    labels = {name: recipe_description(args.recipes / f"{name}.yaml") for name in rows}
    cfg = variant_config(args, next(iter(rows)))
    manifest = load_manifest(args.data)
    store = ShardStore(args.data)
    n = len(store)
    store.close()
    lines = [
        "# Ablation: plain CLIP vs multi-modal reinforced training on RSICD",
        "",
        "Generated by `training/ablation/run_ablation.py` (numbers below are measured, not edited).",
        "",
        (f"- student: `{Path(cfg.model).stem}` at {cfg.image_size} px; {cfg.steps} steps x batch {cfg.batch_size} "
        f"(= {cfg.steps * cfg.batch_size / n:.2f} epochs of {n} RSICD train images); AdamW lr {cfg.lr}, "
        f"warmup {cfg.warmup_steps}, cosine; seed {cfg.seed}; same replayed augmentations for every variant "
        f"(recipes `{_display(args.recipes)}`)"),
        (f"- reinforced data: `{args.data}`: K={manifest.num_augmentations} stored augmentations, "
        f"S={manifest.num_syn_captions} synthetic captions ({manifest.captioner.get('kind', manifest.captioner)}), "
        f"teachers {', '.join(f'`{t.name}` ({t.dim}-d)' for t in manifest.teachers)}, teacher logit scale "
        f"{_scales_text(args)}"),
        ("- evaluation: RSICD test (1,093 images / 5,465 captions, RS protocol), RSSCN7 zero-shot "
        f"({'all images' if args.rsscn7_per_class is None else f'{args.rsscn7_per_class} per class'}, "
        "rsclip's default prompt ensemble)"),
        f"- machine: {timing.get('machine', '')}",
        "",
        "| variant | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | RSICD mR | RSSCN7 top-1 | median step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        r = row["retrieval"]
        lines.append(
            f"| {labels[name]} | {r['i2t_r1']:.2f} | {r['i2t_r5']:.2f} | {r['i2t_r10']:.2f} | "
            f"{r['t2i_r1']:.2f} | {r['t2i_r5']:.2f} | {r['t2i_r10']:.2f} | **{r['mR']:.2f}** | "
            f"{row['zero_shot']['top1']:.2f} | {row['timing']['median_step_s']:.3f} |"
        )
    lines.append("")
    if "clip" in rows:
        base = rows["clip"]["retrieval"]["mR"]
        for name in rows:
            if name != "clip" and base > 0:
                lines.append(f"- {labels[name]}: mR = {rows[name]['retrieval']['mR'] / base:.2f}x plain CLIP "
                             "(target >= 1.5x)")
        for name in ("kd1", "kd1-nosyn"):
            if name in rows:
                ratio = rows[name]["timing"]["median_step_s"] / rows["clip"]["timing"]["median_step_s"]
                lines.append(f"- train-step time {labels[name]} / plain CLIP: {ratio:.2f}x (target <= 1.15x)")
    if timing.get("online"):
        lines.append(
            f"- online distillation (teachers run live, {timing['online']['n_steps']} timed steps): "
            f"{timing['online']['median_step_s']:.3f} s/step = {timing['online_vs_reinforced']:.2f}x the stored-target "
            "reinforced step"
        )
    elif timing.get("online_error"):
        lines.append(f"- online distillation not timed: {timing['online_error']}")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.results, text)
    atomic_write_text(args.work / "ablation.json", json.dumps({"rows": rows, "timing": timing}, indent=2) + "\n")
    return text


def _display(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    try:
        configs = {name: variant_config(args, name) for name in names if name in VARIANTS}
    except TrainConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    for name in names:
        if name not in VARIANTS:
            print(f"Error: --variants: unknown {name!r} (choose from {', '.join(VARIANTS)})", file=sys.stderr)
            return 2
    for path, what in ((args.data, "--data (reinforced RSICD train shards)"), (args.rsicd, "--rsicd"),
                       (args.rsscn7, "--rsscn7")):
        if not path.exists():
            print(f"Error: {what} not found: {path}", file=sys.stderr)
            return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for name, cfg in configs.items():
        weights = train_variant(name, cfg)
        row = evaluate_variant(args, name, cfg, weights)
        row["timing"] = step_time_stats(Path(cfg.output) / "train_log.jsonl")
        rows[name] = row
        print(f"[{name}] mR {row['retrieval']['mR']:.2f}  RSSCN7 top-1 {row['zero_shot']['top1']:.2f}  "
              f"step {row['timing']['median_step_s']:.3f}s", flush=True)
    import platform

    timing: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
                                         "(shared with other jobs: step times are indicative)"}
    online_steps = args.online_steps or load_recipe(args.recipes / f"{ONLINE_RECIPE}.yaml")["steps"]
    online = variant_config(args, ONLINE_RECIPE, steps=online_steps)  # --set steps=... is for the variants
    if args.online_steps != 0 and "kd1" in rows:
        try:
            train_variant("online", online)
            timing["online"] = step_time_stats(Path(online.output) / "train_log.jsonl")
            # compare with the same number of early steps of the stored-target run
            stored = step_time_stats(Path(configs["kd1"].output) / "train_log.jsonl")
            timing["online_vs_reinforced"] = timing["online"]["median_step_s"] / stored["median_step_s"]
        except Exception as exc:  # noqa: BLE001 - report why online timing is missing, keep the table
            timing["online_error"] = f"{type(exc).__name__}: {exc}"
    print(write_table(args, rows, timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
