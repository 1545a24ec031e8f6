"""``export_model``: a registered model or checkpoint -> an exported model directory.

Steps: load (registry name + optional checkpoint, or a ready ``RSClipModel``), reparameterize a
copy and check it against the train-time model, export ``image.onnx`` and ``text.onnx``, write
``tokenizer.json``, ``rsclip.json`` and optional ``classes.json`` / Core ML packages, check the
graphs with onnxruntime against torch, and only then move the finished directory into place
(temp dir + rename, so a failed export never leaves a half-written model directory behind).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, cast

from torch import nn

from rsclip_core import spec
from rsclip_core.export.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassesFileError,
    ExportError,
    OutputExistsError,
    ParityError,
    UnknownModelError,
)
from rsclip_core.export.onnx_export import (
    DEFAULT_OPSET,
    Exporter,
    dense_metadata_fields,
    export_onnx_image,
    export_onnx_text,
)
from rsclip_core.export.parity import DEFAULT_ATOL, DEFAULT_MIN_COSINE, check_parity, check_reparam_parity

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel

ClassesArg = Union[str, Path, Sequence[Any], None]
Log = Callable[[str], None]

# fp16 weight storage rounds every weight to ~3 significant digits: parity is checked looser.
FP16_ATOL = 2e-2
FP16_MIN_COSINE = 0.999
# int8 graphs cannot meet 1e-4; below this mean fp32-vs-int8 cosine the quantization is broken.
MIN_INT8_MEAN_COSINE = 0.9


def _silent(_: str) -> None:
    pass


def load_model(name: str, checkpoint: str | Path | None = None) -> RSClipModel:
    """``create_model(name, checkpoint)`` with one-line errors for the usual mistakes."""
    from rsclip_core.models import CheckpointError, create_model, list_models

    names = list_models()
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise CheckpointNotFoundError(f"{checkpoint}: checkpoint not found")
    if name.startswith("open_clip:"):  # open_clip architecture + public checkpoint (models.open_clip_model)
        from rsclip_core.models import ModelConfigError

        try:
            return create_model(name, checkpoint=checkpoint)
        except ModelConfigError as exc:
            raise UnknownModelError(_first_line(exc, limit=400)) from exc
        except CheckpointError as exc:
            raise CheckpointMismatchError(_first_line(exc, limit=400)) from exc
    if name not in names:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(names)}")
    if checkpoint is not None and name.startswith("teacher-"):
        from rsclip_core.teachers.base import TeacherError
        from rsclip_core.teachers.heads import is_teacher_checkpoint
        from rsclip_core.teachers.offline import load_offline_teacher

        if is_teacher_checkpoint(checkpoint):  # heads fitted by `rsclip teacher fit` on the packaged towers
            try:
                return load_offline_teacher(checkpoint, name)
            except TeacherError as exc:
                raise CheckpointMismatchError(_first_line(exc, limit=400)) from exc
    try:
        # A checkpoint replaces every weight: never load the towers' pretrained weights first.
        return create_model(name, checkpoint=checkpoint, pretrained_towers=False)
    except CheckpointError as exc:  # already "<path>: ..." (wrong architecture, unreadable file)
        raise CheckpointMismatchError(_first_line(exc, limit=400)) from exc
    except (RuntimeError, KeyError, ValueError, TypeError, OSError) as exc:
        if checkpoint is not None:
            raise CheckpointMismatchError(
                f"{checkpoint}: cannot load into model {name!r} ({_first_line(exc)})"
            ) from exc
        raise ExportError(f"cannot build model {name!r}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_classes(classes: ClassesArg) -> list[dict[str, Any]] | None:
    """Validate default land-cover classes: a class file (.json/.yaml) or an already-parsed list.

    Parsed by ``rsclip_core.inference.landcover`` (the reader of ``classes.json``), so whatever
    it accepts is accepted here: entries are names or ``{name, prompts, color}`` objects.
    Returns the canonical ``[{name, prompts, color}]`` list that goes into ``classes.json``.
    """
    if classes is None:
        return None
    from rsclip_core.inference.errors import RsclipInputError
    from rsclip_core.inference.landcover import load_classes as read_class_file
    from rsclip_core.inference.landcover import parse_classes

    try:
        if isinstance(classes, (str, Path)):
            if not Path(classes).is_file():
                raise ClassesFileError(f"{classes}: classes file not found")
            parsed = read_class_file(classes)
        else:
            parsed = parse_classes(list(classes), "classes")
    except (RsclipInputError, FileNotFoundError) as exc:
        raise ClassesFileError(str(exc)) from exc
    return [c.to_dict() for c in parsed]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_metadata(
    model: RSClipModel,
    *,
    tokenizer_fields: dict[str, Any],
    resolution_m: float | None = None,
    has_classes: bool = False,
    source: dict[str, Any] | None = None,
) -> spec.ModelMetadata:
    """``ModelMetadata`` for an RSClipModel; ``logit_scale`` is stored exponentiated (multiplier)."""
    fields = {k: v for k, v in tokenizer_fields.items() if k in spec.ModelMetadata.__dataclass_fields__}
    fields.pop("context_length", None)
    return spec.ModelMetadata(
        model_name=str(model.name),
        embed_dim=int(model.embed_dim),
        **spec.ModelMetadata.preprocess_fields(model.preprocess),
        context_length=int(model.context_length),
        logit_scale=float(model.logit_scale.detach().exp().item()),
        default_classes=spec.CLASSES_FILE if has_classes else None,
        resolution_m=None if resolution_m is None else float(resolution_m),
        source=dict(source or {}),
        **dense_metadata_fields(model),
        **fields,
    )


def write_tokenizer(model: RSClipModel, path: Path) -> dict[str, Any]:
    """Write the inference ``tokenizer.json`` of ``model``; returns its ``ModelMetadata`` fields."""
    from rsclip_core.inference.tokenizer import TextTokenizer
    from rsclip_core.models.tokenizer import save_inference_tokenizer

    result = save_inference_tokenizer(model, path)
    if isinstance(result, dict):
        return dict(result)
    if hasattr(result, "describe"):
        return dict(result.describe())
    # Fall back to what the saved file itself says about its special tokens.
    kind = "clip-bpe" if model.config.get("tokenizer", {}).get("kind", "clip-bpe") == "clip-bpe" else "wordpiece"
    return TextTokenizer(path, int(model.context_length), kind=kind).describe()


def export_model(
    model_or_name: str | nn.Module,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    coreml: bool = False,
    coreml_field: bool = False,
    fp16: bool = False,
    classes: ClassesArg = None,
    resolution_m: float | None = None,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    quantize: str = "none",
    calibration_images: str | Path | Sequence[str | Path] | None = None,
    log: Log | None = None,
) -> Path:
    """Export a model to an rsclip model directory (``rsclip_core.spec``); returns its path.

    ``model_or_name``: a registered model name (loaded with ``checkpoint`` if given) or an
    ``RSClipModel`` instance (not modified: a copy is reparameterized). ``fp16`` stores the ONNX
    weights as float16 (half the size; compute stays float32). ``classes``: default land-cover
    classes (JSON file or list) written as ``classes.json``. ``resolution_m``: ground resolution
    the model expects (m/px), a tiling hint for inference and QGIS tools. ``quantize``:
    ``"int8-embedding"`` stores only the text graph's token-embedding table as int8 (MatMuls fp32),
    ``"int8-text"`` stores the text graph dynamically int8-quantized, ``"int8"`` also the image
    graph (static QDQ int8, calibrated on ``calibration_images``: a folder or a list of image
    files); ``fp16`` then only applies to graphs that stay float (see ``rsclip_core.export.quantize``).
    ``coreml_field`` adds the phone field bundle (``rsclip_core.export.coreml_field``: image -> class
    probabilities + embedding, FP16 and int8) for ``classes`` or the default class list; implies ``coreml``.
    """
    from rsclip_core.export.quantize import check_mode, list_calibration_images, quantization_source

    say = log or _silent
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir}: already exists (use overwrite=True / --overwrite to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / spec.METADATA_FILE).is_file():
        # overwrite replaces the whole directory: never do that to something that is not a model dir
        raise OutputExistsError(
            f"{out_dir}: exists and is not an rsclip model directory (no {spec.METADATA_FILE}); not replacing it"
        )
    if resolution_m is not None and not float(resolution_m) > 0:
        raise ExportError(f"resolution must be > 0 m/px, got {resolution_m}")
    class_data = load_classes(classes)
    check_mode(quantize)
    calibration: list[Path] = []
    if quantize == "int8":
        if calibration_images is None:
            raise ExportError("quantize='int8' needs calibration_images (--calibration-images DIR)")
        if isinstance(calibration_images, (str, Path)):
            calibration = list_calibration_images(calibration_images)
        else:
            calibration = [Path(p) for p in calibration_images]
    fp16_image = fp16 and quantize != "int8"
    fp16_text = fp16 and quantize == "none"

    if isinstance(model_or_name, str):
        train_model = load_model(model_or_name, checkpoint)
        say(f"loaded {model_or_name}" + (f" from {checkpoint}" if checkpoint else " (random init: no checkpoint given)"))
    elif isinstance(model_or_name, nn.Module):
        if checkpoint is not None:
            raise ExportError("checkpoint= is only used with a model name, not a model instance")
        train_model = cast("RSClipModel", copy.deepcopy(model_or_name))  # exported through its RSClipModel API
    else:
        raise ExportError(f"model_or_name must be a model name or an RSClipModel, got {type(model_or_name).__name__}")
    train_model.eval()

    say("reparameterizing")
    model = copy.deepcopy(train_model).reparameterize()
    model.eval()
    reparam_report = check_reparam_parity(train_model, model)
    say(f"  {reparam_report.summary()}")
    del train_model

    source: dict[str, Any] = {"exporter": f"rsclip {_rsclip_version()}", "opset": opset}
    source.update(getattr(model, "source_info", {}))  # open_clip models: architecture, entry, licence, layout
    if checkpoint is not None:
        source["checkpoint"] = Path(checkpoint).name
        source["checkpoint_sha256"] = _sha256(Path(checkpoint))
    if fp16_image or fp16_text:
        source["onnx_weights"] = "float16" if fp16_image and fp16_text else (
            "float16 (image graph)" if fp16_image else "float16 (text graph)")
    if quantize != "none":
        source["quantization"] = quantization_source(quantize, len(calibration))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tokenizer_fields = write_tokenizer(model, tmp / spec.TOKENIZER_FILE)
        metadata = build_metadata(
            model,
            tokenizer_fields=tokenizer_fields,
            resolution_m=resolution_m,
            has_classes=class_data is not None,
            source=source,
        )
        props = metadata.onnx_metadata_props()
        if class_data is not None:
            props["rsclip_classes"] = json.dumps({"classes": class_data}, ensure_ascii=False)
        say(f"exporting {spec.IMAGE_ONNX}")
        export_onnx_image(model, tmp / spec.IMAGE_ONNX, metadata_props=props, opset=opset, exporter=exporter,
                           fp16=fp16_image)
        say(f"exporting {spec.TEXT_ONNX}")
        export_onnx_text(model, tmp / spec.TEXT_ONNX, metadata_props=props, opset=opset, exporter=exporter,
                          fp16=fp16_text)
        (tmp / spec.METADATA_FILE).write_text(metadata.to_json() + "\n", encoding="utf-8")
        if class_data is not None:
            classes_json = json.dumps({"classes": class_data}, indent=2, ensure_ascii=False) + "\n"
            (tmp / spec.CLASSES_FILE).write_text(classes_json, encoding="utf-8")

        atol, min_cos = (FP16_ATOL, FP16_MIN_COSINE) if fp16_image or fp16_text else (DEFAULT_ATOL, DEFAULT_MIN_COSINE)
        report = check_parity(model, tmp, atol=atol, min_cosine=min_cos)
        say(f"  {report.summary()}")
        if quantize != "none":
            _quantize_checked(tmp, quantize, calibration, class_data, say)
        if coreml or coreml_field:
            from rsclip_core.export.coreml import export_coreml

            say(f"exporting {spec.IMAGE_MLPACKAGE} and {spec.TEXT_MLPACKAGE} (Core ML, FP16)")
            extra = {"rsclip_classes": props["rsclip_classes"]} if class_data is not None else None
            export_coreml(model, tmp, metadata, extra_props=extra)
        if coreml_field:
            from rsclip_core.export.coreml_field import export_field_bundle

            say("exporting the Core ML field bundle (image -> class probabilities + embedding)")
            sizes = export_field_bundle(model, tmp, metadata, class_data or _default_classes())
            say("  " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes.items()))
        _apply_umask(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out_dir}")
    return out_dir


def _quantize_checked(model_dir: Path, mode: str, calibration: Sequence[Path],
                      class_data: list[dict[str, Any]] | None, say: Log) -> None:
    """Quantize ``model_dir``'s graphs in place; report fp32-vs-int8 parity, fail if it is broken."""
    from rsclip_core.export.quantize import PARITY_TEXTS, quantization_report, quantize_model_dir

    reference = Path(tempfile.mkdtemp(prefix=".fp32-", dir=model_dir.parent))
    try:
        for name in (spec.IMAGE_ONNX, spec.TEXT_ONNX, spec.TOKENIZER_FILE, spec.METADATA_FILE):
            shutil.copyfile(model_dir / name, reference / name)
        say(f"quantizing ({mode})")
        quantize_model_dir(model_dir, mode, calibration)
        texts = list(PARITY_TEXTS) + [p for c in class_data or [] for p in c.get("prompts", [])[:2]]
        images = list(calibration)[:: max(1, len(calibration) // 64)] or _synthetic_images(reference)
        for row in quantization_report(reference, model_dir, images, texts):
            say(f"  {row.summary()}")
            if row.mean_cosine < MIN_INT8_MEAN_COSINE:
                raise ParityError(f"int8 {row.which} graph is broken: {row.summary()}")
    finally:
        shutil.rmtree(reference, ignore_errors=True)


def _default_classes() -> list[dict[str, Any]]:
    """The packaged default land-cover classes (what ``rsclip-map`` uses without --classes)."""
    from rsclip_core.inference.landcover import load_classes as read_class_file

    return [c.to_dict() for c in read_class_file()]


def _synthetic_images(folder: Path) -> list[Path]:
    """A few smooth random PNGs (text-only quantization has no calibration images to compare on)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        small = rng.uniform(0, 255, size=(8, 8, 3)).astype("uint8")
        path = folder / f"{i}.png"
        Image.fromarray(small).resize((96, 96), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths


def _apply_umask(root: Path) -> None:
    """mkdtemp/mkstemp create private entries; give the model directory the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move finished ``src`` to ``dst``; an existing ``dst`` is only removed once ``src`` is in place."""
    if not dst.exists():
        src.rename(dst)
        return
    backup = dst.with_name(f".{dst.name}.old-{src.name.rsplit('.', 2)[-2]}")
    dst.rename(backup)
    try:
        src.rename(dst)
    except BaseException:
        backup.rename(dst)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _rsclip_version() -> str:
    try:
        from importlib.metadata import version

        return version("rsclip")
    except Exception:  # noqa: BLE001 - not installed (source checkout)
        return "dev"
