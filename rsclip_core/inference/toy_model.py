"""A tiny, hand-built model directory for tests and benchmarks (needs ``onnx``, not torch).

The image encoder embeds a tile's mean colour (global average pool -> linear -> L2 norm) and
the text encoder embeds colour words to the matching direction (embedding lookup -> mean ->
linear -> L2 norm), so "red"/"green"/"blue" queries and classes are answerable exactly: an
end-to-end check of tiling, preprocessing, search and land cover with known ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsclip_core import spec

if TYPE_CHECKING:
    import onnx

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
# word -> RGB direction of the embedding space (other words embed to zero and only dilute)
COLOR_WORDS: dict[str, Sequence[float]] = {
    "red": (1, 0, 0), "bare": (1, 0, 0), "soil": (1, 0, 0), "desert": (1, 0, 0), "roofs": (1, 0, 0),
    "green": (0, 1, 0), "forest": (0, 1, 0), "grass": (0, 1, 0), "vegetation": (0, 1, 0), "trees": (0, 1, 0),
    "blue": (0, 0, 1), "water": (0, 0, 1), "lake": (0, 0, 1), "river": (0, 0, 1), "sea": (0, 0, 1),
    "white": (1, 1, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1), "magenta": (1, 0, 1),
}
EXTRA_WORDS = ["a", "an", "of", "image", "satellite", "aerial", "remote", "sensing", "photograph",
               "top-down", "view", "the", "and", "."]


def _save(model: onnx.ModelProto, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _normalize_nodes(src: str, dst: str) -> list:
    from onnx import helper

    return [
        helper.make_node("ReduceL2", [src], [f"{src}_norm"], axes=[1], keepdims=1),
        helper.make_node("Max", [f"{src}_norm", "eps"], [f"{src}_safe"]),
        helper.make_node("Div", [src, f"{src}_safe"], [dst]),
    ]


def image_graph(image_size: int, embed_dim: int, dense_grid: int | None = None) -> onnx.ModelProto:
    """``image`` [N, 3, S, S] -> mean colour -> [N, D] (first three dims = RGB, plus a bias).

    With ``dense_grid`` g the colour is first averaged over g x g cells (the "feature map") and the
    graph also outputs ``dense`` [N, D, g, g]: the projection of every cell (un-normalised), as
    exported rsclip image graphs do (``rsclip_core.spec``).
    """
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((3, embed_dim), dtype=np.float32)
    weight[0, 0] = weight[1, 1] = weight[2, 2] = 1.0
    bias = np.zeros(embed_dim, dtype=np.float32)
    bias[3 % embed_dim] = 0.05  # keeps black tiles off the zero vector
    features = spec.IMAGE_INPUT
    dense_nodes: list = []
    outputs = [helper.make_tensor_value_info(spec.EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", embed_dim])]
    if dense_grid is not None:
        if image_size % int(dense_grid):
            raise ValueError(f"dense_grid {dense_grid} does not divide image_size {image_size}")
        cell = image_size // int(dense_grid)
        features = "cells"
        dense_nodes = [
            helper.make_node("AveragePool", [spec.IMAGE_INPUT], ["cells"], kernel_shape=[cell, cell],
                             strides=[cell, cell]),
            helper.make_node("Transpose", ["cells"], ["cells_nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", ["cells_nhwc", "w"], ["cells_proj"]),
            helper.make_node("Add", ["cells_proj", "b"], ["cells_feat"]),
            helper.make_node("Transpose", ["cells_feat"], [spec.DENSE_OUTPUT], perm=[0, 3, 1, 2]),
        ]
        outputs.append(helper.make_tensor_value_info(spec.DENSE_OUTPUT, TensorProto.FLOAT,
                                                     ["batch", embed_dim, dense_grid, dense_grid]))
    nodes = [
        *dense_nodes,
        helper.make_node("GlobalAveragePool", [features], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["feat"]),
        *_normalize_nodes("feat", spec.EMBEDDING_OUTPUT),
    ]
    graph = helper.make_graph(
        nodes, "toy_image",
        [helper.make_tensor_value_info(spec.IMAGE_INPUT, TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        outputs,
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def text_graph(vocab: dict[str, int], context_length: int, embed_dim: int) -> onnx.ModelProto:
    """``tokens`` [N, ctx] -> mean of word vectors -> [N, D]."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.zeros((len(vocab), embed_dim), dtype=np.float32)
    for word, rgb in COLOR_WORDS.items():
        table[vocab[word], :3] = rgb
    nodes = [
        helper.make_node("Gather", ["table", spec.TEXT_INPUT], ["vectors"], axis=0),
        helper.make_node("ReduceMean", ["vectors"], ["mean"], axes=[1], keepdims=0),
        *_normalize_nodes("mean", spec.EMBEDDING_OUTPUT),
    ]
    graph = helper.make_graph(
        nodes, "toy_text",
        [helper.make_tensor_value_info(spec.TEXT_INPUT, TensorProto.INT64, ["batch", context_length])],
        [helper.make_tensor_value_info(spec.EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", embed_dim])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_toy_tokenizer(path: Path) -> dict[str, int]:
    """A word-level ``tokenizer.json`` (lower-cased, whitespace/punctuation split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = SPECIAL_TOKENS + sorted(set(COLOR_WORDS) | set(EXTRA_WORDS))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return vocab


def write_toy_model(model_dir: str | Path, *, image_size: int = 32, context_length: int = 16,
                    embed_dim: int = 8, mean: Sequence[float] = (0.0, 0.0, 0.0),
                    std: Sequence[float] = (1.0, 1.0, 1.0), logit_scale: float = 100.0,
                    interpolation: str = "bilinear", model_name: str = "toy-colour",
                    classes: list | None = None, dense_grid: int | None = None) -> Path:
    """Write a complete model directory (rsclip.json, image.onnx, text.onnx, tokenizer.json).

    ``dense_grid`` g adds the ``dense`` image output on a g x g grid (see `image_graph`).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_toy_tokenizer(model_dir / spec.TOKENIZER_FILE)
    _save(image_graph(image_size, embed_dim, dense_grid), model_dir / spec.IMAGE_ONNX)
    _save(text_graph(vocab, context_length, embed_dim), model_dir / spec.TEXT_ONNX)
    meta = spec.ModelMetadata(
        model_name=model_name, embed_dim=embed_dim, image_size=image_size, mean=list(mean), std=list(std),
        context_length=context_length, logit_scale=logit_scale, interpolation=interpolation,
        tokenizer_kind="wordpiece", pad_id=vocab["[PAD]"], sot_id=vocab["[CLS]"], eot_id=vocab["[SEP]"],
        source={"kind": "toy model for tests (rsclip_core.inference.toy_model)"},
    )
    if dense_grid is not None:
        meta.dense_output = spec.DENSE_OUTPUT
        meta.dense_grid = [int(dense_grid), int(dense_grid)]
        meta.dense_stride = image_size // int(dense_grid)
    if classes is not None:
        (model_dir / spec.CLASSES_FILE).write_text(json.dumps({"classes": classes}, indent=2))
        meta.default_classes = spec.CLASSES_FILE
    (model_dir / spec.METADATA_FILE).write_text(meta.to_json())
    return model_dir


def write_color_raster(path: str | Path, width: int = 256, height: int = 256, *, dtype: str = "uint8",
                       crs: str | None = "EPSG:32633", transform: object | None = None,
                       nodata: float | None = None, alpha: bool = False, count: int | None = None,
                       seed: int = 0, tiled: bool = True) -> Path:
    """A raster whose quadrants are red (top-left), green (top-right), blue (bottom-left) and
    yellow (bottom-right), with mild noise; values scaled to the dtype's typical range.

    ``alpha`` adds a 4th alpha band (0 on the left 1/8 of the raster); ``nodata`` sets the
    nodata value and writes it on the bottom 1/8 rows; ``count`` > 3 adds extra (NIR-like) bands.
    """
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    rgb = np.zeros((3, height, width), dtype=np.float64)
    h2, w2 = height // 2, width // 2
    rgb[0, :h2, :w2] = 0.8
    rgb[1, :h2, w2:] = 0.8
    rgb[2, h2:, :w2] = 0.8
    rgb[0:2, h2:, w2:] = 0.8
    rgb += rng.uniform(0.0, 0.15, rgb.shape)
    bands = [rgb[i] for i in range(3)]
    for _ in range(max(0, (count or 3) - 3)):
        bands.append(rng.uniform(0.0, 1.0, (height, width)))
    data = np.stack(bands)
    if np.dtype(dtype) == np.uint8:
        data = np.round(data * 250.0)
    elif np.dtype(dtype) == np.uint16:
        data = np.round(1000.0 + data * 12000.0)  # reflectance-like 16-bit range
    else:
        data = data * 0.3  # float reflectance
    data = data.astype(dtype)
    if nodata is not None:
        data[:, height - height // 8:, :] = nodata
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": data.shape[0] + int(alpha),
        "dtype": dtype, "crs": crs,
        "transform": transform if transform is not None else from_origin(500000.0, 6000000.0, 1.0, 1.0),
        "nodata": nodata,
    }
    if data.shape[0] > 3 and not alpha:
        profile["photometric"] = "MINISBLACK"  # like NAIP RGBN (GDAL would call band 4 alpha)
    if tiled and width >= 16 and height >= 16:
        profile.update(tiled=True, blockxsize=16 * max(1, min(width, 256) // 16),
                       blockysize=16 * max(1, min(height, 256) // 16))
    path = Path(path)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, list(range(1, data.shape[0] + 1)))
        if alpha:
            a = np.full((height, width), np.iinfo(np.uint8).max if dtype == "uint8" else 65535, dtype=dtype)
            a[:, : width // 8] = 0
            dst.write(a, data.shape[0] + 1)
            from rasterio.enums import ColorInterp

            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path
