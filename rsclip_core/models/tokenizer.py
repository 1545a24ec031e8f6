"""Training-time tokenizers (torch) and writing the torch-free ``tokenizer.json`` for exports.

* ``clip-bpe``: open_clip's ``SimpleTokenizer`` (what MobileCLIP/open_clip models train with).
* ``wordpiece``: the Hugging Face fast tokenizer of a local sentence-transformer directory.

:func:`save_inference_tokenizer` writes a ``tokenizers`` file that
``rsclip_core.inference.tokenizer.TextTokenizer`` turns into the same ids (tests check parity).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

import torch

from rsclip_core.models.model import TokenizerSpec

if TYPE_CHECKING:  # pragma: no cover
    from rsclip_core.models.model import RSClipModel

Tokenizer = Callable[[Union[str, Sequence[str]]], torch.Tensor]


class WordPieceTokenizer:
    """Hugging Face fast tokenizer from a local directory, as ``texts -> LongTensor [N, ctx]``."""

    def __init__(self, tokenizer_dir: str | Path, context_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, use_fast=True)
        self.context_length = int(context_length)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return out["input_ids"].long()


def tokenizer_from_spec(spec: TokenizerSpec) -> Tokenizer:
    """The training tokenizer described by ``spec`` (built once per distinct setting)."""
    if spec.kind == "wordpiece" and spec.tokenizer_json is None:
        raise ValueError("wordpiece tokenizer spec has no tokenizer_json")
    source = spec.bpe_vocab if spec.kind == "clip-bpe" else spec.tokenizer_json
    return _cached_tokenizer(spec.kind, str(source), spec.context_length)


@lru_cache(maxsize=16)
def _cached_tokenizer(kind: str, source: str, context_length: int) -> Tokenizer:
    if kind == "clip-bpe":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(bpe_path=source, context_length=context_length)
    if kind == "wordpiece":
        return WordPieceTokenizer(Path(source).parent, context_length)
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def get_tokenizer(name: str) -> Tokenizer:
    """Tokenizer of a registered model: ``callable(list[str]) -> LongTensor [N, context_length]``."""
    from rsclip_core.models.factory import get_model_config, tokenizer_spec

    return tokenizer_from_spec(tokenizer_spec(get_model_config(name)))


def save_inference_tokenizer(model: RSClipModel | TokenizerSpec, path: str | Path) -> dict[str, Any]:
    """Write the torch-free ``tokenizer.json`` for ``model`` to ``path`` (atomically).

    Returns the ``ModelMetadata`` tokenizer fields (``tokenizer_kind``, ``context_length``,
    ``pad_id``, ``sot_id``, ``eot_id``, ``lowercase``) to put next to it.
    """
    from rsclip_core.inference.tokenizer import build_clip_bpe_tokenizer

    spec = model if isinstance(model, TokenizerSpec) else model.tokenizer_spec
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if spec.kind == "clip-bpe":
            if spec.bpe_vocab is None:
                raise ValueError("clip-bpe tokenizer spec has no bpe_vocab file")
            build_clip_bpe_tokenizer(spec.bpe_vocab).save(str(tmp))
        elif spec.kind == "wordpiece":
            if spec.tokenizer_json is None:
                raise ValueError("wordpiece tokenizer spec has no tokenizer_json file")
            shutil.copyfile(spec.tokenizer_json, tmp)
        else:
            raise ValueError(f"unknown tokenizer kind {spec.kind!r}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return spec.metadata_fields()
