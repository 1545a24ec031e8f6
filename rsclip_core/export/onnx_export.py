"""Export the image and text encoders of a (reparameterized) RSClipModel as two ONNX graphs.

Graph contract (``rsclip_core.spec``): ``image.onnx`` takes ``image`` float32 [N, 3, S, S]
(standardised by the caller with the metadata's mean/std; no mean/std inside the graph),
``text.onnx`` takes ``tokens`` int64 [N, context_length]; both return ``embedding`` float32
[N, D], L2-normalised; the batch axis is dynamic.

Exporter choice (torch 2.14): the TorchScript-based exporter (``dynamo=False``) at opset 17 is
the default. It handles timm FastViT/MobileOne, EfficientNet and the MCt text tower, exports in
seconds and writes IR version 8, which every onnxruntime since 1.14 loads (QGIS installs often
carry an older onnxruntime). The dynamo exporter also works but needs opset 18 / IR 10
(onnxruntime >= 1.16) and is ~5x slower; ``exporter="auto"`` falls back to it only when the
TorchScript exporter fails.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rsclip_core import spec
from rsclip_core.export.errors import ExportError
from rsclip_core.export.wrappers import ImageEncoder, TextEncoder
from rsclip_core.preprocess import standardise

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel

DEFAULT_OPSET = 17
_TMP_OUTPUT = "rsclip_export_output"
DYNAMO_OPSET = 18
Exporter = Literal["auto", "legacy", "dynamo"]

# Initialisers smaller than this stay float32 under fp16 storage (biases, BN leftovers, scalars).
_FP16_MIN_ELEMENTS = 1024


def _image_size(model: RSClipModel) -> int:
    return int(model.preprocess.image_size)


def example_images(model: RSClipModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Standardised random RGB images [batch, 3, S, S] for tracing and parity checks."""
    gen = torch.Generator().manual_seed(seed)
    size = _image_size(model)
    pixels = torch.rand(batch, 3, size, size, generator=gen)
    return torch.from_numpy(standardise(pixels.numpy(), model.preprocess))


def example_tokens(model: RSClipModel, batch: int = 2) -> torch.Tensor:
    """Token ids [batch, context_length] from the model's own tokenizer (realistic SOT/EOT/padding)."""
    from rsclip_core.models import get_tokenizer

    texts = [
        "a satellite image of a dense residential area with many houses.",
        "farmland",
        "an aerial image of an airport with two runways and parked planes next to the terminal.",
        "a river crossing a forest.",
    ]
    texts = [texts[i % len(texts)] for i in range(batch)]
    try:
        tokenizer = get_tokenizer(model.name)
    except (KeyError, ValueError):  # a model built outside the registry: synthesise CLIP-like ids
        return _synthetic_tokens(model, batch)
    return torch.as_tensor(tokenizer(texts), dtype=torch.long)


def _synthetic_tokens(model: RSClipModel, batch: int) -> torch.Tensor:
    """SOT, random ids, EOT (the largest id, as in CLIP's vocabulary), then zero padding."""
    vocab = int(model.config.get("text_cfg", {}).get("vocab_size", 49408))
    ctx = int(model.context_length)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(batch, ctx, dtype=torch.long)
    for row in range(batch):
        length = 3 + (row * 7) % max(1, ctx - 3)
        tokens[row, 0] = vocab - 2
        tokens[row, 1 : length - 1] = torch.randint(1, vocab - 2, (length - 2,), generator=gen)
        tokens[row, length - 1] = vocab - 1
    return tokens


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    path: Path,
    *,
    opset: int,
    exporter: Exporter,
) -> str:
    """Run torch.onnx.export with a dynamic batch axis; returns the exporter that succeeded."""
    module = module.eval()
    errors: list[str] = []
    order = {"auto": ("legacy", "dynamo"), "legacy": ("legacy",), "dynamo": ("dynamo",)}[exporter]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    for kind in order:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # nn.MultiheadAttention's fused inference kernel has no ONNX export
                torch.backends.mha.set_fastpath_enabled(False)
                if kind == "legacy":
                    torch.onnx.export(
                        module,
                        (example,),
                        str(path),
                        dynamo=False,
                        input_names=[input_name],
                        output_names=[spec.EMBEDDING_OUTPUT],
                        dynamic_axes={input_name: {0: "batch"}, spec.EMBEDDING_OUTPUT: {0: "batch"}},
                        opset_version=opset,
                        do_constant_folding=True,
                    )
                else:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    program = torch.onnx.export(
                        module,
                        (example,),
                        None,
                        dynamo=True,
                        input_names=[input_name],
                        # dynamo names intermediates after torch ops ("embedding" for
                        # F.embedding), which would clash with the output name: rename after.
                        output_names=[_TMP_OUTPUT],
                        dynamic_shapes={input_name: {0: batch}},
                        opset_version=max(opset, DYNAMO_OPSET),
                        verbose=False,
                    )
                    if program is None:
                        raise ExportError(f"{path}: torch.onnx.export (dynamo) returned no program")
                    program.save(str(path))
                    graph = onnx.load(str(path))
                    rename_value(graph, spec.EMBEDDING_OUTPUT, f"{spec.EMBEDDING_OUTPUT}__internal")
                    rename_value(graph, _TMP_OUTPUT, spec.EMBEDDING_OUTPUT)
                    onnx.save(graph, str(path))
            return kind
        except Exception as exc:  # noqa: BLE001 - report every exporter's failure together
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    raise ExportError(f"{path.name}: ONNX export failed ({'; '.join(errors)})")


def rename_value(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a value (graph input/output, node input/output, initialiser, value_info) everywhere."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for collection in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in collection:
            if item.name == old:
                item.name = new


def store_weights_fp16(model: onnx.ModelProto, min_elements: int = _FP16_MIN_ELEMENTS) -> onnx.ModelProto:
    """Store large float32 initialisers as float16, each followed by a Cast back to float32.

    Halves the file; onnxruntime constant-folds the casts at session start, so computation
    (and the graph's inputs/outputs) stay float32 and run on any CPU.
    """
    graph = model.graph
    casts = []
    kept = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


def _set_output_shape(model: onnx.ModelProto, embed_dim: int) -> None:
    """Output ``embedding`` is [batch, D] with a static D (the exporter leaves D symbolic at times).

    Tools such as Deepness read the embedding size from the graph's output shape.
    """
    (output,) = model.graph.output
    dims = output.type.tensor_type.shape.dim
    while len(dims) < 2:
        dims.add()
    dims[0].Clear()
    dims[0].dim_param = "batch"
    dims[1].Clear()
    dims[1].dim_value = int(embed_dim)


def cast_int64_argmax(model: onnx.ModelProto) -> int:
    """Feed ArgMax/ArgMin on int64 tensors through a Cast to int32; returns how many were patched.

    CLIP-style text towers pool at ``tokens.argmax(-1)`` (the EOT id is the largest). onnxruntime
    only implements int64 ArgMax since 1.17, and QGIS installs often carry an older one; token ids
    (< 2**31) are exact in int32, so the result is unchanged.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.input})
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    nodes = []
    patched = 0
    for node in model.graph.node:
        if node.op_type in ("ArgMax", "ArgMin") and types.get(node.input[0]) == TensorProto.INT64:
            cast_out = f"{node.input[0]}__int32_{patched}"
            nodes.append(
                helper.make_node("Cast", [node.input[0]], [cast_out], to=TensorProto.INT32, name=f"{node.name}_cast")
            )
            node.input[0] = cast_out
            patched += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return patched


def _finalize(path: Path, props: dict[str, str], doc: str, fp16: bool, embed_dim: int) -> None:
    model = onnx.load(str(path))
    _set_output_shape(model, embed_dim)
    cast_int64_argmax(model)
    if fp16:
        store_weights_fp16(model)
    existing = {p.key for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    model.producer_name = "rsclip"
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    path.write_bytes(buffer.getvalue())


def export_onnx_image(
    model: RSClipModel,
    path: str | Path,
    *,
    metadata_props: dict[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    fp16: bool = False,
) -> Path:
    """Export ``model``'s image encoder (already reparameterized, eval) to ``path``."""
    path = Path(path)
    export_graph(ImageEncoder(model), example_images(model), spec.IMAGE_INPUT, path, opset=opset, exporter=exporter)
    props = {**(metadata_props or {}), "rsclip_graph": "image"}
    doc = (
        f"rsclip {model.name} image encoder: {spec.IMAGE_INPUT} float32 [N,3,{_image_size(model)},"
        f"{_image_size(model)}] RGB standardised with the metadata mean/std -> {spec.EMBEDDING_OUTPUT} "
        f"float32 [N,{model.embed_dim}] L2-normalised"
    )
    _finalize(path, props, doc, fp16, int(model.embed_dim))
    return path


def export_onnx_text(
    model: RSClipModel,
    path: str | Path,
    *,
    metadata_props: dict[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    fp16: bool = False,
) -> Path:
    """Export ``model``'s text encoder (already reparameterized, eval) to ``path``."""
    path = Path(path)
    export_graph(TextEncoder(model), example_tokens(model), spec.TEXT_INPUT, path, opset=opset, exporter=exporter)
    props = {**(metadata_props or {}), "rsclip_graph": "text"}
    doc = (
        f"rsclip {model.name} text encoder: {spec.TEXT_INPUT} int64 [N,{model.context_length}] token ids "
        f"-> {spec.EMBEDDING_OUTPUT} float32 [N,{model.embed_dim}] L2-normalised"
    )
    _finalize(path, props, doc, fp16, int(model.embed_dim))
    return path
