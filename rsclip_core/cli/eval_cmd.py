"""``rsclip eval``: retrieval (RS protocol) and zero-shot evaluation of a checkpoint or a model dir."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _read_templates(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    text = path.read_text()
    templates = json.loads(text) if path.suffix == ".json" else [line.strip() for line in text.splitlines()]
    templates = [t for t in templates if t]
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise click.BadParameter(f"{path}: need prompt templates containing '{{}}' (JSON list or one per line)")
    return templates


@click.command("eval")
@click.option("--model", "model_name", default=None, help="Registered model config name (torch path).")
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Trainer checkpoint (model.pt / last.pt) or plain state dict for --model.",
)
@click.option(
    "--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Exported model directory (ONNX, torch-free inference path).",
)
@click.option("--karpathy", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Karpathy-format caption JSON for retrieval.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Image folder of --karpathy (default: <json dir>/images).")
@click.option("--split", default="test", show_default=True, help="Split of --karpathy to evaluate.")
@click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Image-folder dataset (one sub-folder per class) for zero-shot; repeatable.")
@click.option("--templates", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Prompt templates (JSON list or one per line, with '{}'); default: the model's / rsclip's.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Only the first N images of the split / per class (quick checks).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for results.json, results.md and confusion-matrix PNGs.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Torch device (torch path only).")
@click.option("--no-ema", is_flag=True, help="Use the raw weights even if the checkpoint kept an EMA.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(
    model_name: str | None,
    checkpoint: Path | None,
    model_dir: Path | None,
    karpathy: Path | None,
    images: Path | None,
    split: str,
    folders: tuple[Path, ...],
    templates: Path | None,
    limit: int | None,
    output: Path,
    batch_size: int,
    device: str,
    no_ema: bool,
    quiet: bool,
) -> None:
    """Evaluate a model on a Karpathy split (image<->text R@1/5/10, mR) and/or image folders (zero-shot).

    \b
    Torch checkpoint:   rsclip eval --model mobileclip-s0-rs --checkpoint runs/x/model.pt --karpathy rsicd.json -o out
    Exported model dir: rsclip eval --model-dir rsclip_core/resources/models/default --folder my_scenes/ -o out
    """
    from rsclip_core.evaluate import (
        EvalInputError,
        MetricInputError,
        ModelDirEncoder,
        evaluate_retrieval,
        evaluate_zero_shot,
        read_classification_folder,
        read_karpathy_split,
        write_results,
    )
    from rsclip_core.evaluate.metrics import retrieval_markdown, zero_shot_markdown

    if (model_dir is None) == (model_name is None and checkpoint is None):
        raise click.UsageError("give either --model-dir DIR or --model NAME [--checkpoint PT]")
    if karpathy is None and not folders:
        raise click.UsageError("nothing to evaluate: give --karpathy JSON and/or --folder DIR")
    try:
        prompt_templates = _read_templates(templates)
        retrieval_set = None
        if karpathy is not None:
            retrieval_set = read_karpathy_split(karpathy, images or karpathy.parent / "images", split, limit)
        zero_shot_sets = [read_classification_folder(folder, limit) for folder in folders]
        if model_dir is not None:
            from rsclip_core.spec import ModelMetadata

            encoder = ModelDirEncoder.load(model_dir)
            label = str(model_dir)
            default_templates = ModelMetadata.read(model_dir).prompt_templates
        else:
            encoder, label = _torch_encoder(model_name, checkpoint, device, not no_ema)
            from rsclip_core.prompts import ZERO_SHOT_TEMPLATES

            default_templates = list(ZERO_SHOT_TEMPLATES)
        results: dict = {"model": label, "retrieval": {}, "zero_shot": {}}
        if retrieval_set is not None:
            results["retrieval"][retrieval_set.name] = evaluate_retrieval(
                encoder, retrieval_set, batch_size, progress=not quiet
            )
        for dataset in zero_shot_sets:
            results["zero_shot"][dataset.name] = evaluate_zero_shot(
                encoder, dataset, prompt_templates or default_templates, batch_size, progress=not quiet
            )
        write_results(results, output, label)
    except (EvalInputError, MetricInputError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if results["retrieval"]:
        click.echo(retrieval_markdown(results["retrieval"]))
    if results["zero_shot"]:
        click.echo(zero_shot_markdown(results["zero_shot"], per_class=False))
    click.echo(f"results: {output / 'results.json'}, {output / 'results.md'}", err=True)


def _torch_encoder(model_name: str | None, checkpoint: Path | None, device: str, prefer_ema: bool):
    from rsclip_core.evaluate import TorchEncoder
    from rsclip_core.models import get_tokenizer
    from rsclip_core.train.checkpoint import load_trained_model

    model = load_trained_model(model_name, checkpoint, prefer_ema=prefer_ema, device=device)
    label = model.name + (f" ({checkpoint})" if checkpoint else "")
    return TorchEncoder.from_model(model, get_tokenizer(model.name), device=device), label
