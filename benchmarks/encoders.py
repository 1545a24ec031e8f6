#!/usr/bin/env python
"""Image/text encoder size and CPU speed: rsclip students vs open_clip peers, side by side.

For every registered (non-tiny) student and the peers ViT-B-32, MobileCLIP-S1, MobileCLIP-S2,
MobileCLIP2-S0, MobileCLIP2-S2, MobileCLIP2-B and ViT-L-14 (open_clip architectures built through
``open_clip:ARCH`` as ``rsclip export`` does, random init: speed does not depend on the weights) this measures

* parameters of the image and the text tower (incl. projections),
* image-encoder GFLOPs at the model's own input size and at 224 px
  (``torch.utils.flop_counter.FlopCounterMode``; 1 multiply-add = 2 FLOPs),
* image-encoder latency at 224 px (``--native-size``: each model at its own input size, the
  speed bar of the default-model selection), ms/image, batch 1 and batch 16: the exported ONNX
  graph in onnxruntime (CPU) and eager torch (``--onnx-only``: ONNX alone); after warm-up, median
  over ``--repeats`` runs,
* each model's image-encoder throughput relative to ViT-B-32 in the same run,
* with ``--int8 NAME ...``: the same students' image graphs statically int8-quantized
  (``rsclip_core.export.quantize``, QDQ, per-channel weights; calibrated on smooth random images,
  enough for timing), timed as extra rows ``NAME int8`` in the same rounds (onnxruntime only).

Students and MobileCLIP are reparameterized before timing. Writes a markdown table to
``benchmarks/results/encoders.md`` (command, date, CPU, threads, load) and prints it.

    python benchmarks/encoders.py                 # full run
    python benchmarks/encoders.py --threads 1 --int8 effnetlite0-mct mobileclip-s0-rs   # + int8 rows
    nice -n 10 python benchmarks/encoders.py --repeats 2 --warmup 1 --no-write   # quick look
    python benchmarks/encoders.py --threads 1 --native-size --onnx-only --peers ViT-B-32 \
        --models effnetlite0-mct-s effnetlite0-mct-s-160 ... --out training/results/resolution_sweep_latency.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "encoders.md"
PEERS = ("ViT-B-32", "MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-B",
         "ViT-L-14")
REFERENCE = "ViT-B-32"
TARGET_RATIO = 8.0
BENCH_SIZE = 224


@dataclass
class Row:
    name: str
    kind: str  # student | peer
    image_size: int
    image_params: float = 0.0
    text_params: float = 0.0
    gflops_native: float = 0.0
    gflops_224: float = 0.0
    timed_size: int = BENCH_SIZE  # input side the latency was measured at
    onnx_ms: dict[int, float] = field(default_factory=dict)
    torch_ms: dict[int, float] = field(default_factory=dict)
    note: str = ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def count_params(module: Any) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def load_student(name: str) -> tuple[Any, Any, Any, int]:
    """(model, image tower, text tower, input size) of a registered student, reparameterized."""
    from rsclip_core.models import create_model

    model = create_model(name, pretrained_towers=False).eval()
    model = model.reparameterize().eval()
    return model, model.visual, model.text, int(model.preprocess.image_size)


def load_peer(name: str) -> tuple[Any, Any, Any, int]:
    """(model, image tower, text tower, input size) of an open_clip architecture, random init, built and
    reparameterized through rsclip's open_clip path (``open_clip:ARCH``, what ``rsclip export`` exports)."""
    from rsclip_core.models import create_model

    model = create_model(f"open_clip:{name}").reparameterize().eval()
    return model, model.visual, model.text, int(model.preprocess.image_size)


def image_flops(encoder: Any, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Grad mode on: under no_grad nn.MultiheadAttention takes its fused fast path, whose
    # projections FlopCounterMode does not see (ViT-B-32 would be under-counted by ~1/3).
    with torch.enable_grad(), counter:
        encoder(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def timing_session(path: Path, threads: int) -> Any:
    """A CPU onnxruntime session for latency timing: ``threads`` intra-op threads, no spinning
    (idle workers would otherwise spin and steal the CPU from the other timings)."""
    from rsclip_core.inference.sessions import onnx_session

    return onnx_session(path, threads=threads, allow_spinning=False)


@dataclass
class Prepared:
    """A model ready to time: its row (sizes filled in), eager image encoder and ONNX session."""

    row: Row
    encoder: Any  # None: ONNX-only row (int8)
    session: Any


def prepare(
    name: str, kind: str, loader: Callable[[str], tuple[Any, Any, Any, int]], args: argparse.Namespace, tmp: Path
) -> Prepared:
    """Load, count parameters and FLOPs, export the image encoder to ONNX and open a session."""
    import torch

    from rsclip_core.export.onnx_export import export_graph
    from rsclip_core.export.wrappers import ImageEncoder

    model, visual, text, size = loader(name)
    row = Row(name, kind, size, count_params(visual), count_params(text))
    encoder = ImageEncoder(model).eval()
    row.gflops_native = image_flops(encoder, size)
    row.gflops_224 = row.gflops_native if size == BENCH_SIZE else image_flops(encoder, BENCH_SIZE)
    if hasattr(model, "text"):
        model.text = None  # only the image encoder is timed: free the text tower's memory
    row.timed_size = size if args.native_size else BENCH_SIZE
    path = tmp / f"{name}.onnx"
    export_graph(encoder, torch.rand(2, 3, row.timed_size, row.timed_size), "image", path, opset=17, exporter="auto")
    return Prepared(row, None if args.onnx_only else encoder, timing_session(path, args.threads))


class RandomImageReader:
    """Calibration batches of smooth random images, standardised like the students' inputs."""

    def __init__(self, batches: int = 4, batch_size: int = 8, seed: int = 0, size: int = BENCH_SIZE) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        low = rng.uniform(-1.5, 1.5, size=(batches * batch_size, 3, 7, 7)).astype(np.float32)
        full = np.kron(low, np.ones((1, 1, -(-size // 7), -(-size // 7)), np.float32))[:, :, :size, :size]
        self.batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
        self.index = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {"image": self.batches[self.index - 1]}


def prepare_int8(item: Prepared, args: argparse.Namespace, tmp: Path) -> Prepared:
    """An ONNX-only row: ``item``'s image graph, static QDQ int8."""

    from rsclip_core.export.quantize import quantize_image_graph_with_reader

    src = tmp / f"{item.row.name}.onnx"
    dst = tmp / f"{item.row.name}.int8.onnx"
    quantize_image_graph_with_reader(src, dst, RandomImageReader(size=item.row.timed_size))
    row = Row(f"{item.row.name} int8", item.row.kind, item.row.image_size, item.row.image_params,
              item.row.text_params, item.row.gflops_native, item.row.gflops_224, timed_size=item.row.timed_size,
              note="static int8 (QDQ)")
    return Prepared(row, None, timing_session(dst, args.threads))


def time_round_robin(prepared: list[Prepared], args: argparse.Namespace) -> None:
    """Median ms/img per model and cell, interleaving the models in every repetition.

    On a shared machine the load drifts; timing all models in the same rounds keeps their
    ratios (what this benchmark is about) comparable.
    """
    import numpy as np
    import torch

    sizes = {item.row.timed_size for item in prepared}
    inputs = {(s, b): np.random.default_rng(0).random((b, 3, s, s), dtype=np.float32) for s in sizes for b in args.batches}
    samples: dict[tuple[str, str, int], list[float]] = {}

    def run_once(item: Prepared, engine: str, batch: int) -> float:
        x = inputs[(item.row.timed_size, batch)]
        start = time.perf_counter()
        if engine == "onnx":
            item.session.run(None, {"image": x})
        else:
            with torch.inference_mode():
                item.encoder(torch.from_numpy(x))
        return (time.perf_counter() - start) * 1000.0 / batch

    cells = [(engine, batch) for batch in args.batches for engine in ("onnx", "torch")]
    for round_index in range(args.warmup + args.repeats):
        warm = round_index < args.warmup
        print(f"  {'warm-up' if warm else 'round'} {round_index + 1}/{args.warmup + args.repeats}", file=sys.stderr, flush=True)
        for item in prepared:
            for engine, batch in cells:
                if engine == "torch" and item.encoder is None:
                    continue
                ms = run_once(item, engine, batch)
                if not warm:
                    samples.setdefault((item.row.name, engine, batch), []).append(ms)
    for item in prepared:
        for batch in args.batches:
            item.row.onnx_ms[batch] = statistics.median(samples[(item.row.name, "onnx", batch)])
            if item.encoder is not None:
                item.row.torch_ms[batch] = statistics.median(samples[(item.row.name, "torch", batch)])


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def fmt_ms(values: dict[int, float], batch: int) -> str:
    return fmt(values[batch]) if batch in values else "–"


def render(rows: list[Row], args: argparse.Namespace, meta: dict[str, Any], default: str | None) -> str:
    ref = next((r for r in rows if r.name == REFERENCE), None)
    b_small, b_large = min(args.batches), max(args.batches)
    head = (
        "| model | kind | input px (timed) | image params (M) | text params (M) | image GFLOPs @input | GFLOPs @224 "
        f"| ONNX ms/img b{b_small} | ONNX ms/img b{b_large} | torch ms/img b{b_small} | torch ms/img b{b_large} "
        f"| speed vs {REFERENCE} (ONNX b{b_small} / b{b_large}) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        ratio = "–"
        if ref is not None:
            ratio = f"{ref.onnx_ms[b_small] / r.onnx_ms[b_small]:.1f}× / {ref.onnx_ms[b_large] / r.onnx_ms[b_large]:.1f}×"
        name = f"**{r.name}** (default)" if r.name == default else r.name
        lines.append(
            f"| {name} | {r.kind} | {r.image_size} ({r.timed_size}) | {fmt(r.image_params)} | {fmt(r.text_params)} "
            f"| {fmt(r.gflops_native, 2)} | {fmt(r.gflops_224, 2)} | {fmt(r.onnx_ms[b_small])} | {fmt(r.onnx_ms[b_large])} "
            f"| {fmt_ms(r.torch_ms, b_small)} | {fmt_ms(r.torch_ms, b_large)} | {ratio} |"
        )
    verdict = ""
    target = next((r for r in rows if r.name == default), None)
    if ref is not None and target is not None:
        ratio_large = ref.onnx_ms[b_large] / target.onnx_ms[b_large]
        ratio_small = ref.onnx_ms[b_small] / target.onnx_ms[b_small]
        met = ratio_large >= TARGET_RATIO
        verdict = (
            f"**Target** (default student `{default}` image encoder ≥ {TARGET_RATIO:g}× the throughput of "
            f"{REFERENCE}, ONNX on this CPU): **{'met' if met else 'not met'}** — "
            f"{ratio_large:.1f}× at batch {b_large}, {ratio_small:.1f}× at batch {b_small} "
            f"(FLOP ratio @224: {ref.gflops_224 / target.gflops_224:.1f}×)."
        )
        quantized = next((r for r in rows if r.name == f"{default} int8"), None)
        if quantized is not None:
            q_large = ref.onnx_ms[b_large] / quantized.onnx_ms[b_large]
            q_small = ref.onnx_ms[b_small] / quantized.onnx_ms[b_small]
            verdict += (
                f" With a static int8 image graph: {q_large:.1f}× at batch {b_large}, {q_small:.1f}× at batch "
                f"{b_small} ({'met' if q_large >= TARGET_RATIO else 'not met'})."
            )
    body = [
        "# Encoder benchmark: students vs open_clip peers (CPU)",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        (
            f"- CPU: {meta['cpu']} ({meta['logical_cpus']} logical CPUs visible), threads: {args.threads} "
            "(onnxruntime intra-op and torch)"
        ),
        f"- load average before / after: {meta['load_before']} / {meta['load_after']}"
        + (" — the machine was shared with other jobs during this run" if meta["busy"] else ""),
        f"- software: {meta['software']}",
        (
            f"- timing: image encoder at {'its own input size' if args.native_size else f'{BENCH_SIZE}×{BENCH_SIZE}'}"
            f"{', ONNX only' if args.onnx_only else ''}, {args.warmup} warm-up + median of "
            f"{args.repeats} rounds; every round times every model and cell in turn (so load drift hits all "
            "models alike); ms/img = batch latency / batch size; all models random-init, students and "
            "MobileCLIP reparameterized; ONNX = opset 17 graph incl. L2 normalisation, onnxruntime CPU EP "
            "(ORT_ENABLE_ALL, no thread spinning)."
        ),
        "- GFLOPs from `torch.utils.flop_counter` (1 multiply-add = 2 FLOPs), image encoder only.",
        *([
            ("- `NAME int8` rows: the same image graph after `rsclip_core.export.quantize` static QDQ int8 "
             "(Conv/MatMul/Gemm except the first 6 convs, per-channel int8 weights, uint8 activations, MinMax calibration on random "
             "images: timing only, says nothing about accuracy), onnxruntime only, same rounds.")
        ] if args.int8 else []),
        "",
        *lines,
        "",
    ]
    if verdict:
        body += [verdict, ""]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="students (default: all registered, non-tiny)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), help="open_clip architectures")
    parser.add_argument("--default", default=None, help="the student the 8x target applies to")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batches", type=int, nargs=2, default=[1, 16], metavar=("SMALL", "LARGE"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--native-size", action="store_true",
                        help="time each image encoder at its own input size (default: all at 224 px)")
    parser.add_argument("--onnx-only", action="store_true", help="time the ONNX graphs only (no eager torch)")
    parser.add_argument("--int8", nargs="*", default=[], metavar="STUDENT",
                        help="also time these students' image graphs statically int8-quantized (ONNX rows)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    if args.models is None:
        from rsclip_core.models import list_models

        students = [m for m in list_models() if not m.startswith(("tiny", "teacher"))]
    else:
        students = args.models
    default = args.default or _default_student(students)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    if os.nice(0) > 0:
        command = f"nice -n {os.nice(0)} " + command
    load_before = os.getloadavg()
    rows: list[Row] = []
    jobs = [(n, "peer", load_peer) for n in args.peers] + [(n, "student", load_student) for n in students]
    with tempfile.TemporaryDirectory(prefix="rsclip-bench-") as tmp:
        prepared = []
        for number, (name, kind, loader) in enumerate(jobs, start=1):
            print(f"[{number}/{len(jobs)}] preparing {name} ...", file=sys.stderr, flush=True)
            prepared.append(prepare(name, kind, loader, args, Path(tmp)))
            if kind == "student" and name in args.int8:
                print(f"      quantizing {name} (static int8) ...", file=sys.stderr, flush=True)
                prepared.append(prepare_int8(prepared[-1], args, Path(tmp)))
        print("timing (models interleaved in every round) ...", file=sys.stderr, flush=True)
        time_round_robin(prepared, args)
        rows = [item.row for item in prepared]
        del prepared
    load_after = os.getloadavg()
    import onnxruntime
    import open_clip
    import timm

    meta = {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": str(os.cpu_count()),
        "load_before": " ".join(f"{v:.2f}" for v in load_before),
        "load_after": " ".join(f"{v:.2f}" for v in load_after),
        "busy": max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1),
        "software": (
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, timm {timm.__version__}, "
            f"open_clip {open_clip.__version__}, Python {platform.python_version()}"
        ),
    }
    text = render(rows, args, meta, default)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".md.tmp")
        tmp_out.write_text(text)
        tmp_out.replace(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _default_student(students: list[str]) -> str | None:
    """The registry's ``DEFAULT_MODEL`` if it defines one, else the MobileCLIP-S0-style student."""
    try:
        from rsclip_core.models import DEFAULT_MODEL  # type: ignore[attr-defined]

        return str(DEFAULT_MODEL)
    except ImportError:
        preferred = "mobileclip-s0-rs"
        return preferred if preferred in students else (students[0] if students else None)


if __name__ == "__main__":
    raise SystemExit(main())
