"""A tuned teacher exported as a bundled-model candidate: what shipping its shape would give.

The tuned Lite0 teacher (EfficientNet-Lite0 @224 px with the Focus-Adapter + the locked all-MiniLM-L6-v2 with
a fitted head, ``training/teachers/tune_teachers.py``) is under the image speed bar (Lite0 @224 px: 9.7x
ViT-B-32 at batch 1, ``training/results/resolution_sweep_latency.md``) and its text tower is pretrained
on sentences, not learned from RSICD's captions alone. This script exports a teacher checkpoint into a model
directory per text storage format and measures each the way the pipeline measures shipped files: RSICD val +
test and RSSCN7 on the ONNX files (torch-free ``ModelDirEncoder``), sizes, image latency round-robin next
to ViT-B-32 and the shipped default, text latency; plus the pipeline's ship gate against the shipped model
(reported only: nothing is copied). Writes ``training/results/teacher_as_model.{md,json}``. Usage:

    python training/default_model/teacher_as_model.py lite0-tuned --teacher-recipe default+mpnet [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "training" / "results" / "teacher_as_model.md"
FORMATS = {  # label: export_model keywords; the default model's text.onnx limit is the 50 MB model directory
    "fp16 image + dynamic int8 text": {"fp16": True, "quantize": "int8-text"},
    "fp16 image + int8 token embedding, fp16 MatMuls": {"fp16": True, "quantize": "int8-embedding"},
}


def _pipeline() -> Any:
    """``pipeline.py`` beside this file (its paths, evaluation, latency and ship gate)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import pipeline

    return pipeline


def _slug(label: str) -> str:
    return label.replace(" + ", "_").replace(", ", "_").replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", help="a tuned teacher: <work-dir>/teachers/<teacher>.pt (tune_teachers.py)")
    p.add_argument("--teacher-recipe", default="default", help="pipeline.py --teacher-recipe: its runs folder "
                   "holds the evaluation cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    pipeline = _pipeline()
    args = pipeline.parse_args(["--threads", str(a.threads), "--teacher-recipe", a.teacher_recipe])
    ckpt = args.teachers / f"{a.teacher}.pt"
    if not ckpt.is_file():
        print(f"Error: teacher: {ckpt} not found (train it with training/teachers/tune_teachers.py)", file=sys.stderr)
        return 2
    if not (args.output / "rsclip.json").is_file():
        print(f"Error: --output: no model in {args.output} to compare with", file=sys.stderr)
        return 2
    import torch

    from rsclip_core.export import export_model
    from rsclip_core.teachers.offline import load_teacher_checkpoint, offline_teacher_name

    torch.set_num_threads(a.threads)
    payload, _ = load_teacher_checkpoint(ckpt)
    model_name = offline_teacher_name(payload["image_tower"], payload["text_tower"])
    classes = REPO / "rsclip_core" / "resources" / "classes" / "landcover.yaml"
    shipped = pipeline.measure_model_dir(args, args.output)
    rows: dict[str, dict[str, Any]] = {}
    graphs = {"shipped default": (args.output / "image.onnx", int(pipeline.read_json(args.output / "rsclip.json")
                                                                  ["image_size"]))}
    for label, kw in FORMATS.items():
        out = args.work / "teacher_as_model" / a.teacher / _slug(label)
        if not (out / "rsclip.json").is_file():
            export_model(model_name, out, checkpoint=ckpt, classes=classes, resolution_m=1.0, overwrite=True,
                         log=pipeline.log, **kw)
        measured = pipeline.measure_model_dir(args, out)
        ship, reason = pipeline.ship_decision(shipped, measured)
        rows[label] = {"dir": str(out), "eval": measured, "sizes": pipeline.dir_sizes(out),
                       "text_latency_ms_per_caption": pipeline.text_latency(out, threads=1),
                       "gate": {"would_ship": ship, "reason": reason}}
        graphs[label] = (out / "image.onnx", int(pipeline.read_json(out / "rsclip.json")["image_size"]))
        pipeline.log(f"{label}: val {measured['rsicd_val']['mR']:.2f} test {measured['rsicd_test']['mR']:.2f} "
                     f"RSSCN7 {measured['rsscn7']['top1']:.2f}; {reason}")
    graphs[pipeline.REFERENCE] = pipeline.reference_image_graph(args)
    pipeline.log(f"image latency next to {pipeline.REFERENCE} (1 thread, round-robin)")
    latency = pipeline.image_latency(graphs, threads=1, rounds=9)
    shipped_row = {"dir": str(args.output), "eval": shipped, "sizes": pipeline.dir_sizes(args.output),
                   "text_latency_ms_per_caption": pipeline.text_latency(args.output, threads=1)}
    command = "python training/default_model/teacher_as_model.py " + " ".join(argv if argv is not None else sys.argv[1:])
    teacher_torch = payload.get("val", {})
    write_results(a.results, command.strip(), a.teacher, model_name, teacher_torch, shipped_row, rows, latency,
                  pipeline.REFERENCE)
    print(f"wrote {a.results}")
    return 0


def write_results(path: Path, command: str, teacher: str, model_name: str, teacher_val: dict[str, Any],
                  shipped: dict[str, Any], rows: dict[str, dict[str, Any]], latency: dict[str, dict[str, float]],
                  reference: str) -> None:
    """``path`` (.md) and its .json: one row per export next to the shipped default, every number from ``rows``."""
    ref = latency[reference]["b1"]

    def line(label: str, row: dict[str, Any], lat: dict[str, float], gate: str) -> str:
        e = row["eval"]
        mb = sum(row["sizes"].values()) / 1e6
        return (f"| {label} | {e['rsicd_val']['mR']:.2f} | **{e['rsicd_test']['mR']:.2f}** | {e['rsscn7']['top1']:.2f} | "
                f"{mb:.1f} | {lat['b1']:.1f} ({ref / lat['b1']:.1f}x) | {lat['b16']:.1f} | "
                f"{row['text_latency_ms_per_caption']:.2f} | {gate} |")

    lines = [f"# Tuned teacher `{teacher}` exported as a bundled-model candidate", "",
             f"Produced by: `{command}` (model `{model_name}`; ONNX through the torch-free `ModelDirEncoder`; "
             f"latency: 1 thread, round-robin, median ms/img).", "",
             f"Torch val mR of the checkpoint (tune_teachers' selection): {teacher_val.get('mR', float('nan')):.2f}.", "",
             "| model directory | RSICD val mR | **test mR** | RSSCN7 top-1 | MB | image ms b1 (vs ViT-B-32) | "
             "image ms/img b16 | text ms/caption | pipeline ship gate vs the shipped default |",
             "|---|---|---|---|---|---|---|---|---|",
             line(f"shipped default (`{shipped['eval'].get('model_name')}`)", shipped, latency["shipped default"], "–")]
    lines += [line(f"`{teacher}`, {label}", row, latency[label], ("would ship: " if row["gate"]["would_ship"] else
                                                                  "would not ship: ") + row["gate"]["reason"])
              for label, row in rows.items()]
    lines += ["", f"{reference} image encoder: {ref:.1f} ms at batch 1 in the same rounds.",
              "Nothing was copied into the model directory: the gate is reported only (see the notes of issue 14)."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps({"command": command, "teacher": teacher, "model": model_name,
                                                     "teacher_torch_val": teacher_val, "shipped": shipped,
                                                     "exports": rows, "image_latency_ms": latency}, indent=1) + "\n",
                                         encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
