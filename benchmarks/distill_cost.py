#!/usr/bin/env python
"""CPU / GPU cost of the recipe "distil RemoteCLIP ViT-L-14 + GeoRSCLIP ViT-H-14 into MobileCLIP2-S0 on RSICD".

Per-image costs: FLOPs of every model from ``torch.utils.flop_counter`` (models built on the meta
device: no memory, no compute), and CPU seconds **measured** for the models in ``--measure``
(random init, through ``open_clip:ARCH``: teachers forward only, the student forward + backward).
Unmeasured CPU costs are extrapolated from FLOPs at the measured models' seconds per GFLOP; GPU
costs are FLOPs at an assumed effective throughput (``--gpu-tflops``; nothing is measured on a GPU).

    nice python benchmarks/distill_cost.py --measure MobileCLIP2-S0 ViT-L-14
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

TEACHERS = ("ViT-L-14", "ViT-H-14")
STUDENT = "MobileCLIP2-S0"
CAPTION = "an aerial image of many buildings and green trees beside a road with cars"


def _flops(fn: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:  # grad mode: no fused MHA fast path (it hides its projections)
        fn()
    return counter.get_total_flops() / 1e9


def model_flops(arch: str) -> tuple[float, float, int]:
    """(image GFLOPs per image at the native size, text GFLOPs per caption, image size), meta device."""
    import torch

    from rsclip_core.models import get_tokenizer
    from rsclip_core.models.open_clip_model import build_open_clip_model

    name = f"open_clip:{arch}"
    with torch.device("meta"):
        model = build_open_clip_model(name, device="meta").eval()
    size = int(model.preprocess.image_size)
    tokens = get_tokenizer(name)([CAPTION]).to("meta")
    image = _flops(lambda: model.encode_image(torch.empty(1, 3, size, size, device="meta")))
    text = _flops(lambda: model.encode_text(tokens))
    return image, text, size


def measure_cpu(arch: str, train: bool, repeats: int = 3, batch: int = 2) -> float:
    """Measured CPU seconds per (image + one caption): forward, or forward + backward when ``train``."""
    import torch

    from rsclip_core.models import create_model, get_tokenizer

    name = f"open_clip:{arch}"
    model = create_model(name)
    model.train(train)
    size = int(model.preprocess.image_size)
    images = torch.randn(batch, 3, size, size)
    tokens = get_tokenizer(name)([CAPTION] * batch)

    def step() -> None:
        if train:
            img, txt, scale = model(images, tokens)
            (scale * img @ txt.t()).logsumexp(1).mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model.encode_image(images)
                model.encode_text(tokens)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", nargs="*", default=[STUDENT], help="architectures to time on this CPU")
    parser.add_argument("--images", type=int, default=8734, help="RSICD train images (Karpathy split)")
    parser.add_argument("--captions", type=int, default=5, help="real captions per image")
    parser.add_argument("-k", "--augmentations", type=int, default=5, help="augmented views per image (reinforce)")
    parser.add_argument("-s", "--syn-captions", type=int, default=5, help="synthetic captions per image")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-tflops", type=float, default=200.0,
                        help="assumed effective GPU throughput (H100/H200 bf16 at ~20-30%% of peak)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, Any]] = {}
    for arch in (*TEACHERS, STUDENT):
        image, text, size = model_flops(arch)
        rows[arch] = {"image_gflops": image, "text_gflops": text, "size": size}
    s_per_gflop = []
    for arch in args.measure:
        train = arch == STUDENT
        seconds = measure_cpu(arch, train)
        flops = rows[arch]["image_gflops"] + rows[arch]["text_gflops"]
        flops *= 3 if train else 1  # backward ~2x forward
        rows[arch]["cpu_s"] = seconds
        rows[arch]["measured"] = True
        s_per_gflop.append(seconds / flops)
    rate = statistics.median(s_per_gflop) if s_per_gflop else None
    print(f"threads {args.threads}; CPU s/GFLOP (measured models) {rate:.4f}" if rate else "no CPU measurement")
    for arch, row in rows.items():
        factor = 3 if arch == STUDENT else 1
        flops = factor * (row["image_gflops"] + row["text_gflops"])
        if "cpu_s" not in row and rate:
            row["cpu_s"] = flops * rate
        row["gpu_s"] = flops / (args.gpu_tflops * 1e3)
        kind = "measured" if row.get("measured") else "from FLOPs"
        print(f"{arch:16s} {row['size']}px image {row['image_gflops']:7.1f} GFLOPs, text {row['text_gflops']:5.2f} "
              f"GFLOPs/caption; {'train (fwd+bwd)' if factor == 3 else 'forward'} CPU {row['cpu_s']:.3f} s "
              f"per image+caption ({kind})")
    views = args.images * args.augmentations
    texts = args.images * (args.captions + args.syn_captions)
    reinforce_gflops = sum(views * rows[t]["image_gflops"] + texts * rows[t]["text_gflops"] for t in TEACHERS)
    reinforce_cpu_h = sum(
        rows[t]["cpu_s"] * (views * rows[t]["image_gflops"] + texts * rows[t]["text_gflops"])
        / (rows[t]["image_gflops"] + rows[t]["text_gflops"]) for t in TEACHERS) / 3600
    student = rows[STUDENT]
    samples = args.steps * args.batch_size
    # a reinforced step: one view + one real + one synthetic caption per sample (batch_size each)
    train_gflops = 3 * samples * (student["image_gflops"] + 2 * student["text_gflops"])
    train_cpu_h = student["cpu_s"] * samples * (student["image_gflops"] + 2 * student["text_gflops"]) / (
        student["image_gflops"] + student["text_gflops"]) / 3600
    print(f"reinforce: {views} teacher views + {texts} captions per teacher: {reinforce_gflops / 1e6:.1f} PFLOP; "
          f"CPU ~{reinforce_cpu_h:.0f} core-h at {args.threads} thread(s); GPU ~{reinforce_gflops / (args.gpu_tflops * 1e3) / 3600:.2f} h")
    print(f"train: {args.steps} steps x {args.batch_size}: {train_gflops / 1e6:.1f} PFLOP; CPU ~{train_cpu_h:.0f} "
          f"core-h; GPU ~{train_gflops / (args.gpu_tflops * 1e3) / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
