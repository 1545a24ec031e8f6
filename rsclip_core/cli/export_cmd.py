"""``rsclip export``: reparameterize a registered model (+ checkpoint) and write a model directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("model_name")
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Model directory to create (image.onnx, text.onnx, tokenizer.json, rsclip.json, ...).",
)
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Trained checkpoint (.pt) of MODEL_NAME; without it the towers are randomly initialised.",
)
@click.option(
    "--entry", default=None, metavar="NAME",
    help="Checkpoint entry for an open_clip:ARCH model (e.g. remoteclip, mobileclip2-s0; see docs/checkpoints.md): "
    "preprocessing, QuickGELU, licence of the checkpoint file.",
)
@click.option("--coreml", is_flag=True, help="Also write image.mlpackage and text.mlpackage (Core ML, FP16).")
@click.option(
    "--coreml-field", is_flag=True,
    help="Also write the phone field bundle field.mlpackage + field-int8.mlpackage (image -> probabilities of "
    "--classes (default: the packaged classes) + embedding); implies --coreml for the text encoder.",
)
@click.option("--fp16", is_flag=True, help="Store ONNX weights as float16 (half size; compute stays float32).")
@click.option(
    "--classes", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="JSON/YAML file of default land-cover classes (name, prompts, color) -> classes.json.",
)
@click.option(
    "--resolution", "resolution_m", type=float, default=None, metavar="M",
    help="Ground resolution the model was trained at, in metres per pixel (tiling hint).",
)
@click.option(
    "--quantize", type=click.Choice(["none", "int8-embedding", "int8-text", "int8"]), default="none", show_default=True,
    help="int8-embedding: int8 token-embedding table only; int8-text: dynamic int8 text graph; "
         "int8: also a static QDQ int8 image graph (needs --calibration-images).",
)
@click.option(
    "--calibration-images", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
    help="Folder of images (e.g. training images, never test) to calibrate the int8 image graph on.",
)
@click.option("--opset", type=click.IntRange(17, 21), default=17, show_default=True, help="ONNX opset.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only after a successful export).")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors.")
def export(
    model_name: str,
    output: Path,
    checkpoint: Path | None,
    entry: str | None,
    coreml: bool,
    coreml_field: bool,
    fp16: bool,
    classes: Path | None,
    resolution_m: float | None,
    quantize: str,
    calibration_images: Path | None,
    opset: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Export MODEL_NAME (see `rsclip models`) as ONNX (+ Core ML) into a model directory.

    MODEL_NAME may also be open_clip:ARCH (any open_clip architecture) with --checkpoint FILE in any
    public layout (plain state dict, open_clip training checkpoint, OpenAI TorchScript, ml-mobileclip)
    and --entry NAME for its preprocessing (see docs/checkpoints.md).

    The model is reparameterized first and every graph is checked against torch
    (onnxruntime, max |diff| <= 1e-4, cosine >= 0.9999) before OUTPUT is written.
    """
    from rsclip_core.export import ExportError, export_model

    if entry:
        if not model_name.startswith("open_clip:") or "@" in model_name:
            raise click.BadParameter("--entry needs MODEL_NAME open_clip:ARCH (without @ENTRY)", param_hint="--entry")
        model_name = f"{model_name}@{entry}"
    log = None if quiet else (lambda message: click.echo(message, err=True))
    try:
        path = export_model(
            model_name,
            output,
            checkpoint=checkpoint,
            coreml=coreml,
            coreml_field=coreml_field,
            fp16=fp16,
            classes=classes,
            resolution_m=resolution_m,
            overwrite=overwrite,
            opset=opset,
            quantize=quantize,
            calibration_images=calibration_images,
            log=log,
        )
    except (ExportError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))
