"""Core ML export: ``image.mlpackage`` and ``text.mlpackage`` (mlprogram, FP16 compute).

The image encoder takes a ``ct.ImageType`` RGB input scaled by 1/255 with the model's mean/std
baked into the traced module, so an app passes a ``CVPixelBuffer`` of the model's input size
directly. The text encoder takes int32 token ids [N, context_length] (Core ML has no int64
inputs). Both output ``embedding`` float32 [N, D], L2-normalised. Predictions only run on Apple
platforms; on Linux the saved spec can be inspected with
``ct.models.MLModel(path, skip_model_load=True).get_spec()``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rsclip_core import spec
from rsclip_core.export.errors import ExportError
from rsclip_core.export.onnx_export import example_tokens
from rsclip_core.export.wrappers import PixelImageEncoder, TextEncoder, tracing_mode

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel

MAX_TEXT_BATCH = 256


def _import_coremltools():
    try:
        import coremltools as ct
    except ImportError as exc:  # pragma: no cover - coremltools is in the export extra
        raise ExportError("Core ML export needs coremltools: pip install 'rsclip[export]'") from exc
    return ct


def _register_missing_torch_ops() -> None:
    """Teach coremltools' TorchScript frontend ops it lacks (Hugging Face BERT uses ``new_ones``)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY,
        register_torch_op,
    )
    from coremltools.converters.mil.mil.types.type_mapping import builtin_to_string

    if _TORCH_OPS_REGISTRY.get_func("new_ones") is not None:
        return

    @register_torch_op
    def new_ones(context, node):
        # aten::new_ones(self, size, dtype, layout, device, pin_memory): ones shaped `size`
        inputs = torch_ops._get_inputs(context, node)
        like, size = inputs[0], inputs[1]
        dtype = inputs[2] if len(inputs) > 2 else None
        if isinstance(size, list):
            size = mb.concat(values=size, axis=0)
        if size.val is not None:  # static size (the usual case); () means a scalar
            shape = np.asarray(size.val, dtype=np.int32).reshape(-1)
            ones = mb.const(val=np.ones(shape, dtype=np.float32)) if shape.size == 0 else mb.fill(shape=shape, value=1.0)
        else:
            ones = mb.fill(shape=mb.cast(x=size, dtype="int32"), value=1.0)
        if dtype is not None and dtype.val is not None:
            target = torch_ops.NUM_TO_DTYPE_STRING[dtype.val]
        else:
            target = builtin_to_string(like.dtype)
        context.add(torch_ops._cast_to(ones, target, node.name), node.name)


def _describe(mlmodel, metadata: spec.ModelMetadata, props: dict[str, str], graph: str) -> None:
    mlmodel.author = "rsclip"
    mlmodel.license = str(metadata.source.get("license", "")) or "see model source"
    mlmodel.version = str(metadata.format_version)
    mlmodel.short_description = (
        f"rsclip {metadata.model_name} {graph} encoder -> {metadata.embed_dim}-d L2-normalised embedding"
    )
    for key, value in props.items():
        mlmodel.user_defined_metadata[key] = str(value)
    mlmodel.user_defined_metadata["rsclip_graph"] = graph


def export_coreml(
    model: RSClipModel,
    out_dir: str | Path,
    metadata: spec.ModelMetadata,
    *,
    extra_props: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``image.mlpackage`` and ``text.mlpackage`` for a reparameterized model into ``out_dir``."""
    ct = _import_coremltools()
    out_dir = Path(out_dir)
    props = {**metadata.onnx_metadata_props(), **(extra_props or {})}
    size = int(metadata.image_size)
    common = {
        "convert_to": "mlprogram",
        "compute_precision": ct.precision.FLOAT16,
        "minimum_deployment_target": ct.target.iOS16,
    }
    model = model.eval()

    image_module = PixelImageEncoder(model, metadata.mean, metadata.std).eval()
    tokens = example_tokens(model, batch=1).to(torch.int32)
    text_module = TextEncoder(model).eval()
    _register_missing_torch_ops()
    with tracing_mode():
        image_traced = torch.jit.trace(image_module, torch.rand(1, 3, size, size))
        text_traced = torch.jit.trace(text_module, tokens)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image_ml = ct.convert(
                image_traced,
                inputs=[
                    ct.ImageType(
                        name=spec.IMAGE_INPUT,
                        shape=(1, 3, size, size),
                        scale=1.0 / 255.0,
                        bias=[0.0, 0.0, 0.0],
                        color_layout=ct.colorlayout.RGB,
                    )
                ],
                outputs=[ct.TensorType(name=spec.EMBEDDING_OUTPUT, dtype=np.float32)],
                **common,
            )
            text_ml = ct.convert(
                text_traced,
                inputs=[
                    ct.TensorType(
                        name=spec.TEXT_INPUT,
                        shape=(ct.RangeDim(1, MAX_TEXT_BATCH, default=1), int(metadata.context_length)),
                        dtype=np.int32,
                    )
                ],
                outputs=[ct.TensorType(name=spec.EMBEDDING_OUTPUT, dtype=np.float32)],
                **common,
            )
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ExportError(f"Core ML conversion of {metadata.model_name} failed: {type(exc).__name__}: {first}") from exc

    _describe(image_ml, metadata, props, "image")
    image_ml.input_description[spec.IMAGE_INPUT] = (
        f"RGB image {size}x{size}, 0-255 (scaled by 1/255; mean/std applied inside the model)"
    )
    image_ml.output_description[spec.EMBEDDING_OUTPUT] = f"L2-normalised image embedding [1, {metadata.embed_dim}]"
    _describe(text_ml, metadata, props, "text")
    text_ml.input_description[spec.TEXT_INPUT] = (
        f"int32 token ids [N, {metadata.context_length}] from {metadata.tokenizer} (zero-padded)"
    )
    text_ml.output_description[spec.EMBEDDING_OUTPUT] = f"L2-normalised text embedding [N, {metadata.embed_dim}]"

    image_path = out_dir / spec.IMAGE_MLPACKAGE
    text_path = out_dir / spec.TEXT_MLPACKAGE
    image_ml.save(str(image_path))
    text_ml.save(str(text_path))
    return image_path, text_path
