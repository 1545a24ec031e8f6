"""Core ML field bundle: image -> class probabilities + embedding in ONE mlpackage, for a phone.

``field.mlpackage`` holds the image encoder (RGB ``ImageType`` input, mean/std baked in, as
``image.mlpackage``), the default classes' text embeddings as a constant and a zero-shot head
(``softmax(logit_scale * embedding @ classes.T)``), so an app classifies a camera frame with one
prediction and no tokenizer. Free-text queries use ``text.mlpackage`` (written next to it).

Two variants: ``field.mlpackage`` (FP16 compute and weights) and ``field-int8.mlpackage`` (weights
linearly quantized to int8 with ``coremltools.optimize``; about half the FP16 size). The class
names, their order and the prompts are stored in the metadata (``rsclip_field_classes``). The
class embeddings come from the exported ONNX model directory through
``rsclip_core.inference.landcover.class_text_embeddings`` (the prompt ensemble ``rsclip-map``
uses), so the phone's probabilities are the desktop's. Predictions only run on Apple platforms.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rsclip_core import spec
from rsclip_core.export.errors import ExportError
from rsclip_core.export.wrappers import PixelImageEncoder, tracing_mode

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel

FIELD_MLPACKAGE = "field.mlpackage"
FIELD_INT8_MLPACKAGE = "field-int8.mlpackage"
PROBABILITIES_OUTPUT = "probabilities"


class ZeroShotFieldModel(nn.Module):
    """RGB [1, 3, S, S] in [0, 1] -> (class probabilities [1, K], L2-normalised embedding [1, D])."""

    class_embeddings: torch.Tensor

    def __init__(self, model: RSClipModel, mean: Sequence[float], std: Sequence[float],
                 class_embeddings: np.ndarray, logit_scale: float, logit_bias: float = 0.0) -> None:
        super().__init__()
        self.encoder = PixelImageEncoder(model, mean, std)
        self.register_buffer("class_embeddings", torch.as_tensor(np.asarray(class_embeddings, np.float32)))
        self.logit_scale = float(logit_scale)
        self.logit_bias = float(logit_bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(image)
        logits = self.logit_scale * embedding @ self.class_embeddings.t() + self.logit_bias
        return torch.softmax(logits, dim=-1), embedding


def package_size(path: Path) -> int:
    """Bytes of a saved package (a directory)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export_field_bundle(
    model: RSClipModel,
    model_dir: str | Path,
    metadata: spec.ModelMetadata,
    classes: list[dict[str, Any]],
    *,
    int8: bool = True,
) -> dict[str, int]:
    """Write ``field.mlpackage`` (+ ``field-int8.mlpackage``) into an exported ``model_dir``; returns sizes.

    ``model_dir`` must already hold the ONNX graphs (class embeddings are computed from them).
    """
    from rsclip_core.export.coreml import _describe, _import_coremltools
    from rsclip_core.inference import load_model
    from rsclip_core.inference.landcover import class_text_embeddings, parse_classes

    ct = _import_coremltools()
    model_dir = Path(model_dir)
    if not classes:
        raise ExportError("the Core ML field bundle needs classes (--classes FILE, or the default class list)")
    parsed = parse_classes(list(classes), "classes")
    class_emb = class_text_embeddings(load_model(model_dir), parsed)
    bias = getattr(model, "logit_bias", None)
    field = ZeroShotFieldModel(model.eval(), metadata.mean, metadata.std, class_emb, metadata.logit_scale,
                               0.0 if bias is None else float(bias.detach().reshape(-1)[0])).eval()
    size = int(metadata.image_size)
    with tracing_mode():
        traced = torch.jit.trace(field, torch.rand(1, 3, size, size))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mlmodel = ct.convert(
                traced,
                inputs=[ct.ImageType(name=spec.IMAGE_INPUT, shape=(1, 3, size, size), scale=1.0 / 255.0,
                                     bias=[0.0, 0.0, 0.0], color_layout=ct.colorlayout.RGB)],
                outputs=[ct.TensorType(name=PROBABILITIES_OUTPUT, dtype=np.float32),
                         ct.TensorType(name=spec.EMBEDDING_OUTPUT, dtype=np.float32)],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16,
                minimum_deployment_target=ct.target.iOS16,
            )
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ExportError(f"Core ML field bundle of {metadata.model_name} failed: {type(exc).__name__}: {first}") from exc

    names = [c.name for c in parsed]
    class_meta = json.dumps([{"name": c.name, "prompts": list(c.prompts)} for c in parsed], ensure_ascii=False)
    props = {**metadata.onnx_metadata_props(), "rsclip_field_classes": class_meta}
    sizes: dict[str, int] = {}
    variants: list[tuple[str, Any, str]] = [(FIELD_MLPACKAGE, mlmodel, "fp16")]
    if int8:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variants.append((FIELD_INT8_MLPACKAGE, linear_quantize_weights(mlmodel, config), "int8 weights"))
    for filename, package, weights in variants:
        _describe(package, metadata, props, "field")
        package.short_description = (
            f"rsclip {metadata.model_name} field classifier ({weights}): image -> probabilities over "
            f"{len(names)} classes + {metadata.embed_dim}-d embedding"
        )
        package.user_defined_metadata["rsclip_field_weights"] = weights
        package.input_description[spec.IMAGE_INPUT] = (
            f"RGB image {size}x{size}, 0-255 (scaled by 1/255; mean/std applied inside the model)")
        package.output_description[PROBABILITIES_OUTPUT] = (
            f"softmax class probabilities [1, {len(names)}] in the order of rsclip_field_classes: {', '.join(names)}")
        package.output_description[spec.EMBEDDING_OUTPUT] = f"L2-normalised image embedding [1, {metadata.embed_dim}]"
        path = model_dir / filename
        package.save(str(path))
        sizes[filename] = package_size(path)
    return sizes
