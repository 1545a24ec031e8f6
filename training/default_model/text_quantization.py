"""Accuracy of one trained run's ONNX files per storage format: which export the pipeline ships.

Exports the run three ways — fp32, fp16 weights in both graphs, fp16 image + dynamic int8 text (the
export before this measurement) — and evaluates each on RSICD **val** and RSSCN7 through the torch-free
path (``ModelDirEncoder``), next to the run's torch numbers (``<run>/eval.json``). Writes
``training/results/text_quantization.{md,json}``. Usage (after the pipeline's train stage):

    python training/default_model/text_quantization.py effnetlite0-mct-s-long-kd [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "training" / "results" / "text_quantization.md"
FORMATS = {  # label: export_model keywords
    "fp16 image + dynamic int8 text": {"fp16": True, "quantize": "int8-text"},
    "fp16 image + int8 token embedding, fp32 MatMuls": {"fp16": True, "quantize": "int8-embedding"},
    "fp16 image + fp16 text": {"fp16": True, "quantize": "none"},
    "fp32": {"fp16": False, "quantize": "none"},
}


def _pipeline():
    """``pipeline.py`` beside this file (its candidates, paths and evaluation)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import pipeline

    return pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a pipeline candidate with a trained <work>/<run>/model.pt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    pipeline = _pipeline()
    if a.run not in pipeline.CANDIDATES:
        print(f"Error: run: unknown candidate {a.run!r} (choose from {', '.join(pipeline.CANDIDATES)})", file=sys.stderr)
        return 2
    args = pipeline.parse_args(["--threads", str(a.threads), "--candidates", a.run])
    args.overrides = {}
    ckpt = args.work / a.run / "model.pt"
    if not ckpt.is_file():
        print(f"Error: run: {ckpt} not found (train it first: pipeline.py --stages train --candidates {a.run})",
              file=sys.stderr)
        return 2
    import torch

    from rsclip_core.evaluate import ModelDirEncoder
    from rsclip_core.export import export_model

    torch.set_num_threads(a.threads)
    model = pipeline.CANDIDATES[a.run].config(args).model
    rows: dict[str, dict[str, float]] = {}
    for label, kw in FORMATS.items():
        out = args.work / "text_quantization" / a.run / label.replace(" + ", "_").replace(" ", "-")
        if not (out / "rsclip.json").is_file():
            export_model(model, out, checkpoint=ckpt, overwrite=True, **kw)
        r = pipeline.evaluate_encoder(args, ModelDirEncoder.load(out, threads=a.threads), splits=("val",))
        rows[label] = {"val_mR": r["rsicd_val"]["mR"], "rsscn7_top1": r["rsscn7"]["top1"],
                       "onnx_bytes": sum(f.stat().st_size for f in out.glob("*.onnx"))}
        print(label, rows[label], flush=True)
    torch_eval = pipeline.read_json(args.work / a.run / "eval.json") if (args.work / a.run / "eval.json").is_file() else None
    command = "python training/default_model/text_quantization.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# `{a.run}`: RSICD val / RSSCN7 of its ONNX files per storage format", "",
             f"Produced by: `{command.strip()}` (ONNX through the torch-free `ModelDirEncoder`, "
             f"{a.threads} threads).", "",
             "| format | image.onnx + text.onnx bytes | RSICD val mR | RSSCN7 top-1 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['onnx_bytes']:,} | {v['val_mR']:.2f} | {v['rsscn7_top1']:.2f} |" for k, v in rows.items()]
    if torch_eval:
        lines.append(f"| torch weights (`{a.run}/eval.json`) | | {torch_eval['rsicd_val']['mR']:.2f} | "
                     f"{torch_eval['rsscn7']['top1']:.2f} |")
    lines += ["", "The pipeline's export stage ships `RELEASE_QUANTIZE` (`pipeline.py`): fp16 image, int8 token embedding."]
    a.results.write_text("\n".join(lines) + "\n", encoding="utf-8")
    a.results.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "run": a.run, "formats": rows,
                                                          "torch": torch_eval and {"val_mR": torch_eval["rsicd_val"]["mR"],
                                                                                   "rsscn7_top1": torch_eval["rsscn7"]["top1"]}},
                                                         indent=1) + "\n", encoding="utf-8")
    print(f"wrote {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
