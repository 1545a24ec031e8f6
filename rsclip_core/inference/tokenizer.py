r"""Torch-free text tokenizer for exported models (numpy + ``tokenizers`` + stdlib only).

Two kinds, matching what the model was trained with:

* ``clip-bpe``: OpenAI CLIP's byte-level BPE (open_clip's ``SimpleTokenizer``), rebuilt as a
  Hugging Face ``tokenizers`` file by :func:`build_clip_bpe_tokenizer`. The text cleaning that
  open_clip does in Python (ftfy when installed, HTML unescape, whitespace collapse, lower case)
  is done here in Python too, so ids are identical to open_clip's.
* ``wordpiece``: a BERT/MiniLM ``tokenizer.json`` used as is (its normaliser lower-cases).

Both produce ``[sot] + tokens + [eot]`` truncated to ``context_length`` (keeping the end token,
as open_clip does) and padded with ``pad_id``.

Known limit: open_clip splits words with the ``regex`` module, this file with ``tokenizers``'
Oniguruma; for code points that one Unicode table has assigned and the other not (new scripts,
or what ftfy produces from some mojibake) the ``\p{L}`` split, and so the ids, may differ. All
54,605 RSICD captions and randomly generated text over assigned code points match exactly.
Without ftfy installed, text is only NFC-normalised (open_clip always runs ftfy).
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rsclip_core.spec import tokenizer_metadata_fields

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

    from rsclip_core.spec import ModelMetadata

CLIP_SOT = "<start_of_text>"
CLIP_EOT = "<end_of_text>"
CLIP_VOCAB_SIZE = 49408
# open_clip's pre-tokenisation pattern (without its special-token alternatives, which are added
# tokens here); applied case-insensitively like open_clip's ``re.IGNORECASE``.
CLIP_SPLIT_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)"""
TOKENIZER_KINDS = ("clip-bpe", "wordpiece")


class TokenizerError(ValueError):
    """A tokenizer file or setting is missing or unusable."""


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_clip_bpe_tokenizer(bpe_vocab_gz: str | Path) -> Tokenizer:
    """Build a ``tokenizers.Tokenizer`` equivalent to open_clip's ``SimpleTokenizer``.

    ``bpe_vocab_gz`` is CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``, shipped by open_clip).
    The vocabulary is built exactly as open_clip builds it: 256 byte symbols, the same with
    ``</w>``, 48,894 merges, then ``<start_of_text>`` and ``<end_of_text>`` (49,408 ids).
    The saved file's normaliser (NFC, whitespace collapse, lower case) approximates open_clip's
    Python cleaning for other consumers; :class:`TextTokenizer` does the exact cleaning itself.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    path = Path(bpe_vocab_gz)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP BPE merges file not found")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    pairs = [line.split() for line in lines[1 : 49152 - 256 - 2 + 1]]
    if len(pairs) != 49152 - 256 - 2 or any(len(m) != 2 for m in pairs):
        raise TokenizerError(f"{path}: not a CLIP BPE merges file (expected 48894 merge pairs)")
    merges = [(m[0], m[1]) for m in pairs]
    byte_symbols = list(bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab_list += [CLIP_SOT, CLIP_EOT]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    model = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    tokenizer.add_special_tokens([AddedToken(CLIP_SOT, normalized=False), AddedToken(CLIP_EOT, normalized=False)])
    sot, eot = vocab[CLIP_SOT], vocab[CLIP_EOT]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_SOT} $A {CLIP_EOT}", special_tokens=[(CLIP_SOT, sot), (CLIP_EOT, eot)]
    )
    return tokenizer


_WHITESPACE = re.compile(r"\s+")


def clip_clean_text(text: str, lowercase: bool = True) -> str:
    """open_clip's ``clean='lower'``: ftfy (if installed), HTML unescape twice, whitespace, lower."""
    try:
        import ftfy  # optional: open_clip always uses it; inference works without it
    except ImportError:  # pragma: no cover - depends on the environment
        text = unicodedata.normalize("NFC", text)
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if lowercase else text


class TextTokenizer:
    """Text -> ``int64 [N, context_length]`` ids, identical to the tokenizer used in training."""

    def __init__(
        self,
        tokenizer_json: str | Path,
        context_length: int,
        kind: str = "clip-bpe",
        pad_id: int = 0,
        sot_id: int | None = None,
        eot_id: int | None = None,
        lowercase: bool = True,
    ) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        if kind not in TOKENIZER_KINDS:
            raise TokenizerError(f"tokenizer kind {kind!r} is not one of {list(TOKENIZER_KINDS)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        if int(context_length) < 2:
            raise TokenizerError(f"context_length must be >= 2, got {context_length}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"{path}: not a valid tokenizers file ({exc})") from exc
        tokenizer.no_truncation()
        tokenizer.no_padding()
        if kind == "clip-bpe":
            tokenizer.normalizer = None  # cleaning is done in Python exactly like open_clip
        self.path = path
        self.kind = kind
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        self.lowercase = bool(lowercase)
        default_sot, default_eot = (CLIP_SOT, CLIP_EOT) if kind == "clip-bpe" else ("[CLS]", "[SEP]")
        self.sot_id = self._special_id(tokenizer, sot_id, default_sot)
        self.eot_id = self._special_id(tokenizer, eot_id, default_eot)
        self._tokenizer = tokenizer

    def _special_id(self, tokenizer: Tokenizer, given: int | None, token: str) -> int:
        if given is not None:
            return int(given)
        found = tokenizer.token_to_id(token)
        if found is None:
            raise TokenizerError(f"{self.path}: has no {token!r} token; pass its id explicitly")
        return int(found)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, metadata: ModelMetadata) -> TextTokenizer:
        """The tokenizer of an exported model directory, configured from its metadata."""
        path = Path(model_dir) / metadata.tokenizer
        if not path.is_file():
            from rsclip_core.spec import ModelDirError

            raise ModelDirError(f"{path}: tokenizer file not found in model directory {model_dir}")
        return cls(
            path,
            metadata.context_length,
            kind=metadata.tokenizer_kind,
            pad_id=metadata.pad_id,
            sot_id=metadata.sot_id,
            eot_id=metadata.eot_id,
            lowercase=metadata.lowercase,
        )

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Ids of one text without start/end tokens and without truncation."""
        return self._encode_batch([text])[0]

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "clip-bpe":
            texts = [clip_clean_text(t, self.lowercase) for t in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [enc.ids for enc in encodings]

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TokenizerError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        body = self.context_length - 2
        for row, ids in enumerate(self._encode_batch(texts)):
            seq = [self.sot_id, *ids[:body], self.eot_id]
            out[row, : len(seq)] = seq
        return out

    def __repr__(self) -> str:
        return f"TextTokenizer({str(self.path)!r}, context_length={self.context_length}, kind={self.kind!r})"

    def describe(self) -> dict[str, Any]:
        """Settings as ``ModelMetadata`` field names (for writing an export's metadata)."""
        return tokenizer_metadata_fields(
            self.kind, self.context_length, self.pad_id, self.sot_id, self.eot_id, self.lowercase
        )
