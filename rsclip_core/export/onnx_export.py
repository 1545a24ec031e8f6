"""Export the image and text encoders of a (reparameterized) RSClipModel as two ONNX graphs.

Graph contract (``rsclip_core.spec``): ``image.onnx`` takes ``image`` float32 [N, 3, S, S]
(standardised by the caller with the metadata's mean/std; no mean/std inside the graph),
``text.onnx`` takes ``tokens`` int64 [N, context_length]; both return ``embedding`` float32
[N, D], L2-normalised; the batch axis is dynamic. Where the image tower's embedding is a global
average pool followed by a linear projection, ``image.onnx`` has a second output ``dense``
[N, D, h, w] (:func:`add_dense_output`): the same projection applied at every location of the
pooled feature map, un-normalised, so the L2-normalised spatial mean of ``dense`` is ``embedding``.

Exporter choice (torch 2.14): the TorchScript-based exporter (``dynamo=False``) at opset 17 is
the default. It handles timm FastViT/MobileOne, EfficientNet and the MCt text tower, exports in
seconds and writes IR version 8, which every onnxruntime since 1.14 loads (QGIS installs often
carry an older onnxruntime). The dynamo exporter also works but needs opset 18 / IR 10
(onnxruntime >= 1.16) and is ~5x slower; ``exporter="auto"`` falls back to it only when the
TorchScript exporter fails.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rsclip_core import spec
from rsclip_core.export.errors import ExportError
from rsclip_core.export.wrappers import ImageEncoder, TextEncoder, tracing_mode
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
    for kind in order:
        try:
            with tracing_mode():
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
    raise ExportError(f"{path.name}: ONNX export failed ({'; '.join(errors)})")


def dense_support(model: RSClipModel) -> str | None:
    """``None`` if ``model``'s image embedding is the spatial mean of its dense projection, else why not.

    Checked numerically (forward vs the mean of ``visual.forward_dense``) on an example image, so a
    tower whose head is not a global average pool + linear map (attention pooling, MLP heads) is
    refused even if it has a ``forward_dense``.
    """
    visual = getattr(model, "visual", None)
    if visual is None:
        return f"{type(model).__name__} has no image tower (visual)"
    forward_dense = getattr(visual, "forward_dense", None)
    if not callable(forward_dense):
        return f"image tower {type(visual).__name__} has no per-location projection (forward_dense)"
    images = example_images(model, batch=1)
    with torch.no_grad():
        embedding = model.visual(images)
        dense = cast(torch.Tensor, forward_dense(images))
    if dense.ndim != 4 or dense.shape[:2] != embedding.shape:
        return f"image tower dense output has shape {tuple(dense.shape)}, expected [N, {embedding.shape[1]}, h, w]"
    diff = float((dense.mean(dim=(2, 3)) - embedding).abs().max())
    scale = max(1.0, float(embedding.abs().max()))
    if diff > 1e-4 * scale:
        return f"image tower head is not global average pooling + a linear projection (mean of dense differs by {diff:.2e})"
    return None


def forward_dense(model: RSClipModel, images: torch.Tensor) -> torch.Tensor:
    """The image tower's per-location projection (towers that `dense_support` accepts have it)."""
    return cast(Callable[[torch.Tensor], torch.Tensor], model.visual.forward_dense)(images)


def dense_metadata_fields(model: RSClipModel) -> dict[str, Any]:
    """``ModelMetadata`` dense fields for ``model`` (empty when :func:`dense_support` refuses)."""
    if dense_support(model) is not None:
        return {}
    with torch.no_grad():
        h, w = forward_dense(model, example_images(model, batch=1)).shape[2:]
    return {"dense_output": spec.DENSE_OUTPUT, "dense_stride": _image_size(model) // int(h), "dense_grid": [int(h), int(w)]}


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if name in node.input]


def _constant_like(graph: onnx.GraphProto, name: str) -> bool:
    """``name`` is an initialiser or computed from initialisers/constants only (e.g. an fp16 Cast)."""
    inits = {i.name for i in graph.initializer}
    producers = _producers(graph)
    stack, seen = [name], set()
    while stack:
        value = stack.pop()
        if value in inits or value in seen or value == "":
            continue
        seen.add(value)
        node = producers.get(value)
        if node is None:
            return False
        if node.op_type != "Constant":
            stack.extend(node.input)
    return True


def _is_spatial_mean(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = None
    for attr in node.attribute:
        if attr.name == "axes":
            axes = list(attr.ints)
    if axes is None and len(node.input) > 1:
        inits = {i.name: i for i in graph.initializer}
        producer = _producers(graph).get(node.input[1])
        if node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        elif producer is not None and producer.op_type == "Constant":
            axes = numpy_helper.to_array(producer.attribute[0].t).tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]


def add_dense_output(model: onnx.ModelProto, embed_dim: int, name: str = spec.DENSE_OUTPUT) -> None:
    """Add output ``name`` [N, D, h, w] to an image graph: its projection applied per location (in place).

    Finds the one spatial mean (GlobalAveragePool, or ReduceMean over H and W) whose result goes
    through reshapes into a MatMul/Gemm with a constant weight (and optionally a constant bias
    Add), and applies that weight (and bias) to the un-pooled feature map: Transpose to NHWC,
    MatMul, Add, Transpose back. The weights are shared with the pooled branch, so the file barely
    grows. Raises ExportError when the graph has no such pattern.
    """
    graph = model.graph
    if any(out.name == name for out in graph.output):
        raise ExportError(f"image graph already has an output {name!r}")
    pools = [n for n in graph.node if _is_spatial_mean(graph, n)]
    found: list[tuple[onnx.NodeProto, onnx.NodeProto, str | None]] = []
    for pool in pools:
        value = pool.output[0]
        consumers = _consumers(graph, value)
        while len(consumers) == 1 and consumers[0].op_type in ("Flatten", "Reshape", "Squeeze"):
            value = consumers[0].output[0]
            consumers = _consumers(graph, value)
        if len(consumers) != 1 or consumers[0].op_type not in ("MatMul", "Gemm"):
            continue
        proj = consumers[0]
        if proj.input[0] != value or not _constant_like(graph, proj.input[1]):
            continue
        bias = None
        if proj.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in proj.attribute}
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            if len(proj.input) > 2 and proj.input[2]:
                bias = proj.input[2]
        else:
            after = _consumers(graph, proj.output[0])
            adds = [n for n in after if n.op_type == "Add"]
            if len(after) >= 1 and len(adds) == 1:
                other = [i for i in adds[0].input if i != proj.output[0]]
                if len(other) == 1 and _constant_like(graph, other[0]):
                    bias = other[0]
        found.append((pool, proj, bias))
    if len(found) != 1:
        raise ExportError(
            f"image graph: expected one global average pool feeding a linear projection, found {len(found)} "
            "(dense per-location embeddings need a GAP + linear head)"
        )
    pool, proj, bias = found[0]
    weight = proj.input[1]
    prefix = f"rsclip_{name}"
    nodes = [helper.make_node("Transpose", [pool.input[0]], [f"{prefix}_nhwc"], perm=[0, 2, 3, 1], name=f"{prefix}_nhwc")]
    if proj.op_type == "Gemm" and any(a.name == "transB" and a.i for a in proj.attribute):
        nodes.append(helper.make_node("Transpose", [weight], [f"{prefix}_weight"], perm=[1, 0], name=f"{prefix}_weight"))
        weight = f"{prefix}_weight"
    nodes.append(helper.make_node("MatMul", [f"{prefix}_nhwc", weight], [f"{prefix}_proj"], name=f"{prefix}_proj"))
    projected = f"{prefix}_proj"
    if bias is not None:
        nodes.append(helper.make_node("Add", [projected, bias], [f"{prefix}_bias"], name=f"{prefix}_bias"))
        projected = f"{prefix}_bias"
    nodes.append(helper.make_node("Transpose", [projected], [name], perm=[0, 3, 1, 2], name=f"{prefix}_nchw"))
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", int(embed_dim), "h", "w"]))
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in inferred.graph.output:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            out_dims = graph.output[-1].type.tensor_type.shape.dim
            for axis in (2, 3):
                if len(dims) == 4 and dims[axis].HasField("dim_value"):
                    out_dims[axis].Clear()
                    out_dims[axis].dim_value = dims[axis].dim_value


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
    (output,) = [o for o in model.graph.output if o.name == spec.EMBEDDING_OUTPUT]
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


def _finalize(path: Path, props: dict[str, str], doc: str, fp16: bool, embed_dim: int, dense: bool = False) -> None:
    model = onnx.load(str(path))
    _set_output_shape(model, embed_dim)
    if dense:
        add_dense_output(model, embed_dim)
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
    dense: bool | None = None,
) -> Path:
    """Export ``model``'s image encoder (already reparameterized, eval) to ``path``.

    ``dense``: add the ``dense`` output (:func:`add_dense_output`); ``None`` adds it when
    :func:`dense_support` allows, ``True`` fails with the reason when it does not.
    """
    path = Path(path)
    refusal = dense_support(model) if dense is not False else None
    if dense and refusal:
        raise ExportError(f"dense output: {refusal}")
    with_dense = dense is not False and refusal is None
    export_graph(ImageEncoder(model), example_images(model), spec.IMAGE_INPUT, path, opset=opset, exporter=exporter)
    props = {**(metadata_props or {}), "rsclip_graph": "image"}
    doc = (
        f"rsclip {model.name} image encoder: {spec.IMAGE_INPUT} float32 [N,3,{_image_size(model)},"
        f"{_image_size(model)}] RGB standardised with the metadata mean/std -> {spec.EMBEDDING_OUTPUT} "
        f"float32 [N,{model.embed_dim}] L2-normalised"
    )
    if with_dense:
        doc += f"; {spec.DENSE_OUTPUT} float32 [N,{model.embed_dim},h,w] per-location projection (not normalised)"
    _finalize(path, props, doc, fp16, int(model.embed_dim), dense=with_dense)
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


def add_dense_to_model_dir(model_dir: str | Path) -> spec.ModelMetadata:
    """Give an exported model directory's ``image.onnx`` the ``dense`` output (no torch checkpoint needed).

    Edits the graph (:func:`add_dense_output`), records ``dense_output``/``dense_stride``/
    ``dense_grid`` in ``rsclip.json`` and the graph's ``rsclip`` metadata, then checks the mean
    identity with :func:`rsclip_core.export.parity.check_dense_graph` (1e-4); the original files are
    left untouched if anything fails. Returns the new metadata.
    """
    from rsclip_core.export.parity import check_dense_graph
    from rsclip_core.inference.sessions import onnx_session

    model_dir = Path(model_dir)
    meta = spec.ModelMetadata.read(model_dir)
    image_path = model_dir / spec.IMAGE_ONNX
    graph = onnx.load(str(image_path))
    add_dense_output(graph, meta.embed_dim)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(graph, str(Path(tmp) / spec.IMAGE_ONNX))
        session = onnx_session(Path(tmp) / spec.IMAGE_ONNX)
        probe = np.zeros((1, 3, meta.image_size, meta.image_size), dtype=np.float32)
        h, w = session.run([spec.DENSE_OUTPUT], {spec.IMAGE_INPUT: probe})[0].shape[2:]
        del session
    meta.dense_output = spec.DENSE_OUTPUT
    meta.dense_grid = [int(h), int(w)]
    meta.dense_stride = meta.image_size // int(h)
    meta.source["dense"] = "added to the exported graph by rsclip_core.export.onnx_export.add_dense_output"
    for prop in graph.metadata_props:
        if prop.key == "rsclip":
            prop.value = meta.to_json()
    graph.doc_string += (f"; {spec.DENSE_OUTPUT} float32 [N,{meta.embed_dim},{h},{w}] per-location projection "
                         "(not normalised)")
    onnx.checker.check_model(graph, full_check=True)
    backup = {name: (model_dir / name).read_bytes() for name in (spec.IMAGE_ONNX, spec.METADATA_FILE)}
    buffer = io.BytesIO()
    onnx.save(graph, buffer)
    try:
        image_path.write_bytes(buffer.getvalue())
        (model_dir / spec.METADATA_FILE).write_text(meta.to_json() + "\n", encoding="utf-8")
        check_dense_graph(model_dir)
    except BaseException:
        for name, data in backup.items():
            (model_dir / name).write_bytes(data)
        raise
    return meta
