"""Train-step time of plain CLIP vs reinforced vs online distillation, measured side by side.

The claim of multi-modal reinforced training is that distilling from *stored* teacher outputs costs
about what plain CLIP training costs, while running the teachers live (online distillation) costs
much more. This benchmark times the four step kinds of ``rsclip_core.train`` on the same student,
data and batch, **interleaved round-robin in one process** (so a shared, drifting machine load hits
every kind alike), and prints the ratios:

    plain        mode clip: λ=0, real captions only
    reinforced   stored targets, real + synthetic caption batches (the MobileCLIP recipe)
    reinf-nosyn  stored targets, real captions only
    online       teachers run live on the replayed view and the captions (targets not stored)

    python benchmarks/train_step.py --data /work/cache/reinforced/rsicd-train \
        --model training/ablation/student.json --image-size 96 --out benchmarks/results/train_step.md

Needs a reinforced dataset (``rsclip reinforce``) whose manifest names loadable teachers (for the
online kind); exits with a clear message when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

KINDS = {
    "plain": {"mode": "clip", "lam": 0.0, "synthetic": False},
    "reinforced": {"mode": "reinforced", "lam": 0.7, "synthetic": True},
    "reinf-nosyn": {"mode": "reinforced", "lam": 0.7, "synthetic": False},
    "online": {"mode": "online", "lam": 0.7, "synthetic": True},
}


def _display(model: str) -> str:
    path = Path(model)
    return str(path.relative_to(REPO)) if path.is_absolute() and path.is_relative_to(REPO) else model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="reinforced dataset folder")
    p.add_argument("--model", default=str(REPO / "training" / "ablation" / "student.json"))
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps per kind and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="markdown report (+ .json)")
    args = p.parse_args(argv)
    if not (args.data / "manifest.json").is_file():
        print(f"Error: --data: no reinforced dataset at {args.data} (run `rsclip reinforce` first)", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"Error: --kinds: unknown {unknown} (choose from {', '.join(KINDS)})", file=sys.stderr)
        return 2

    import torch

    from rsclip_core.train.config import TrainConfig
    from rsclip_core.train.trainer import read_log, train

    torch.set_num_threads(args.threads)
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="rsclip-step-bench-") as tmp:
        for r in range(args.rounds):
            for kind in kinds:
                out = Path(tmp) / f"{kind}-{r}"
                cfg = TrainConfig(data=str(args.data), model=args.model, output=str(out), batch_size=args.batch_size,
                                  steps=args.warmup + args.steps, warmup_steps=1, checkpoint_every=10**6,
                                  image_size=args.image_size, seed=r, num_workers=0, **KINDS[kind])
                train(cfg, progress=False)
                times = [rec["step_time"] - rec["data_time"] for rec in read_log(out / "train_log.jsonl")]
                samples[kind] += times[args.warmup:]
                print(f"round {r + 1}/{args.rounds} {kind}: median {statistics.median(times[args.warmup:]):.3f} s/step",
                      file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in samples.items()}
    base = median.get("plain")
    lines = [
        "# Train-step time: plain CLIP vs reinforced vs online distillation (side by side)",
        "",
        f"Command: `python benchmarks/train_step.py --data {args.data} --model {_display(args.model)}"
        + (f" --image-size {args.image_size}" if args.image_size else "") + f" --batch-size {args.batch_size} "
        f"--steps {args.steps} --rounds {args.rounds} --threads {args.threads}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s); shared with other jobs — the kinds are interleaved round-robin so they see the same load. "
        "Step time excludes data loading (reported separately by the trainer).",
        "",
        "| step kind | what runs | median s/step | vs plain |",
        "|---|---|---|---|",
    ]
    what = {
        "plain": "student on images + real captions, CLIP loss",
        "reinforced": "+ synthetic-caption batch, KL to stored teacher similarities (2 batches)",
        "reinf-nosyn": "real captions only, KL to stored teacher similarities",
        "online": "reinforced, but every teacher encodes the view and both caption batches live",
    }
    for kind in kinds:
        ratio = f"{median[kind] / base:.2f}x" if base else "–"
        lines.append(f"| {kind} | {what[kind]} | {median[kind]:.3f} ({len(samples[kind])} steps) | {ratio} |")
    if base and "reinforced" in median:
        lines += ["", f"- reinforced / plain = **{median['reinforced'] / base:.2f}x** (target ≤ 1.15x)"]
    if base and "reinf-nosyn" in median:
        lines.append(f"- reinforced without synthetic captions / plain = **{median['reinf-nosyn'] / base:.2f}x**")
    if "online" in median and "reinforced" in median:
        lines.append(f"- online / reinforced = **{median['online'] / median['reinforced']:.2f}x** "
                     "(what storing the teachers' outputs saves per step)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"median_s": median, "samples_s": samples}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
