"""A tiny, hand-built model directory for tests and benchmarks (needs ``onnx``, not torch).

The image encoder embeds a tile's mean colour (global average pool -> linear -> L2 norm) and
the text encoder embeds colour words to the matching direction (embedding lookup -> mean ->
linear -> L2 norm), so "red"/"green"/"blue" queries and classes are answerable exactly: an
end-to-end check of tiling, preprocessing, search and land cover with known ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from rsclip_core import spec

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
# word -> RGB direction of the embedding space (other words embed to zero and only dilute)
COLOR_WORDS: Dict[str, Sequence[float]] = {
    "red": (1, 0, 0), "bare": (1, 0, 0), "soil": (1, 0, 0), "desert": (1, 0, 0), "roofs": (1, 0, 0),
    "green": (0, 1, 0), "forest": (0, 1, 0), "grass": (0, 1, 0), "vegetation": (0, 1, 0), "trees": (0, 1, 0),
    "blue": (0, 0, 1), "water": (0, 0, 1), "lake": (0, 0, 1), "river": (0, 0, 1), "sea": (0, 0, 1),
    "white": (1, 1, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1), "magenta": (1, 0, 1),
}
EXTRA_WORDS = ["a", "an", "of", "image", "satellite", "aerial", "remote", "sensing", "photograph",
               "top-down", "view", "the", "and", "."]


def _save(model: "object", path: Path) -> None:
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


def image_graph(image_size: int, embed_dim: int) -> "object":
    """``image`` [N, 3, S, S] -> mean colour -> [N, D] (first three dims = RGB, plus a bias)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((3, embed_dim), dtype=np.float32)
    weight[0, 0] = weight[1, 1] = weight[2, 2] = 1.0
    bias = np.zeros(embed_dim, dtype=np.float32)
    bias[3 % embed_dim] = 0.05  # keeps black tiles off the zero vector
    nodes = [
        helper.make_node("GlobalAveragePool", [spec.IMAGE_INPUT], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["feat"]),
        *_normalize_nodes("feat", spec.EMBEDDING_OUTPUT),
    ]
    graph = helper.make_graph(
        nodes, "toy_image",
        [helper.make_tensor_value_info(spec.IMAGE_INPUT, TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info(spec.EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", embed_dim])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def text_graph(vocab: Dict[str, int], context_length: int, embed_dim: int) -> "object":
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


def write_toy_tokenizer(path: Path) -> Dict[str, int]:
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
                    classes: Optional[list] = None) -> Path:
    """Write a complete model directory (rsclip.json, image.onnx, text.onnx, tokenizer.json)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_toy_tokenizer(model_dir / spec.TOKENIZER_FILE)
    _save(image_graph(image_size, embed_dim), model_dir / spec.IMAGE_ONNX)
    _save(text_graph(vocab, context_length, embed_dim), model_dir / spec.TEXT_ONNX)
    meta = spec.ModelMetadata(
        model_name=model_name, embed_dim=embed_dim, image_size=image_size, mean=list(mean), std=list(std),
        context_length=context_length, logit_scale=logit_scale, interpolation=interpolation,
        tokenizer_kind="wordpiece", pad_id=vocab["[PAD]"], sot_id=vocab["[CLS]"], eot_id=vocab["[SEP]"],
        source={"kind": "toy model for tests (rsclip_core.inference.toy_model)"},
    )
    if classes is not None:
        (model_dir / spec.CLASSES_FILE).write_text(json.dumps({"classes": classes}, indent=2))
        meta.default_classes = spec.CLASSES_FILE
    (model_dir / spec.METADATA_FILE).write_text(meta.to_json())
    return model_dir
