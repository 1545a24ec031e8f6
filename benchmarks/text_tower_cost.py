"""Caption-feature cost of the offline teachers' text towers side by side: MiniLM vs mpnet (issue #14).

Both sentence-transformers towers (:func:`rsclip_core.teachers.towers.load_text_tower`: the packaged
all-MiniLM-L6-v2, and all-mpnet-base-v2 assembled by ``training/teachers/fetch_mpnet.py``) encode the
same sample of RSICD captions the way the feature cache does
(:func:`~rsclip_core.teachers.towers.encode_texts_with_tower`, batch 256), round-robin (each round runs
every tower once), so drifting load on a shared machine affects them alike. Reported: parameters,
feature width, load time, median seconds per caption and the ratio to MiniLM.

    python benchmarks/text_tower_cost.py --work-dir /work/rsclip-work --threads 1 --captions 512 --rounds 3

Writes benchmarks/results/text_tower_cost.{md,json} (with the command that produced them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "text_tower_cost.md"
DATA = REPO.parent / "shared" / "data"
TOWERS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2")


def caption_sample(data_root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct RSICD train captions drawn with ``seed``."""
    from rsclip_core.data.readers import read_karpathy_json

    records = read_karpathy_json(data_root / "rsicd" / "dataset_rsicd.json", splits=["train"])
    captions = sorted({c for r in records for c in r.captions})
    rng = np.random.default_rng(seed)
    return [captions[i] for i in rng.choice(len(captions), size=min(n, len(captions)), replace=False)]


def measure(captions: list[str], rounds: int, work_dir: Path | None) -> dict[str, dict[str, float]]:
    """Per tower: params (M), dim, load s, median s / caption over ``rounds`` round-robin passes."""
    from rsclip_core.teachers.towers import encode_texts_with_tower, load_text_tower

    import sentence_transformers  # noqa: F401 - imported once up front, not inside the first load time

    towers, rows = {}, {}
    for name in TOWERS:
        t0 = time.perf_counter()
        towers[name] = load_text_tower(name, work_dir)
        rows[name] = {"load_s": time.perf_counter() - t0,
                      "params_m": sum(p.numel() for p in towers[name].parameters()) / 1e6}
        encode_texts_with_tower(towers[name], captions[:32])  # warm-up
    times: dict[str, list[float]] = {n: [] for n in TOWERS}
    for _ in range(rounds):
        for name in TOWERS:
            t0 = time.perf_counter()
            feats = encode_texts_with_tower(towers[name], captions)
            times[name].append(time.perf_counter() - t0)
            rows[name]["dim"] = int(feats.shape[1])
    for name in TOWERS:
        rows[name]["s_per_caption"] = float(np.median(times[name])) / len(captions)
        rows[name]["captions_per_s"] = 1.0 / rows[name]["s_per_caption"]
        rows[name]["vs_minilm"] = rows[name]["s_per_caption"] / (float(np.median(times[TOWERS[0]])) / len(captions))
    return rows


def results_markdown(rows: dict[str, dict[str, float]], command: str, n: int, rounds: int, threads: int) -> str:
    lines = ["# Text-tower cost: all-MiniLM-L6-v2 vs all-mpnet-base-v2 caption features", "",
             f"Produced by: `{command}`", "",
             f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {threads} torch thread(s), "
             f"{n} distinct RSICD train captions, batch 256, median of {rounds} round-robin passes "
             f"(shared machine: absolute times include its load; the ratio is the comparable number).", "",
             "| text tower | params (M) | dim | load s | ms / caption | captions / s | × MiniLM |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params_m']:.1f} | {r['dim']} | {r['load_s']:.1f} | "
                     f"{1000 * r['s_per_caption']:.2f} | {r['captions_per_s']:.0f} | {r['vs_minilm']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=Path, default=None, help="work-file root (default $RSCLIP_WORK_DIR)")
    ap.add_argument("--data", type=Path, default=DATA, help="shared data root (rsicd/)")
    ap.add_argument("--captions", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from rsclip_core.workdir import atomic_write_bytes

    torch.set_num_threads(args.threads)
    captions = caption_sample(args.data, args.captions)
    rows = measure(captions, args.rounds, args.work_dir)
    command = "python benchmarks/text_tower_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = results_markdown(rows, command, len(captions), args.rounds, args.threads)
    print(md, flush=True)
    if not args.no_write:
        atomic_write_bytes(args.out, md.encode())
        atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(
            {"command": command, "captions": len(captions), "rounds": args.rounds, "threads": args.threads,
             "rows": rows}, indent=2).encode())
    return rows


if __name__ == "__main__":
    main()
