"""Reinforced-dataset shards: the on-disk format, the writer and the reader.

A reinforced dataset is a folder::

    manifest.json                 # Manifest: teachers + dims, K, S, captioner, seed, source hash
    shard-000000.tar              # webdataset tar shards, one sample per image
    shard-000000.skipped.json     # images of that shard that were skipped (corrupt / non-RGB)
    ...

Each sample (webdataset members share the key ``<key>``; names follow ml-mobileclip's DataCompDR
where sensible):

================  ==========================================================================
member            content
================  ==========================================================================
``jpg``/``png``   the original image file bytes (augmentations replay on the decoded original)
``json``          ``{"captions": [...real captions], "label": str|null, "split": str|null, "source": path}``
``txt``           the first real caption (so plain open_clip webdataset loaders also work)
``syn.json``      ``{"syn_text": [...S synthetic captions]}``
``paug.json``     ``{"param_aug": [...K augmentation parameter dicts]}`` (see ``rsclip_core.data.augment``)
``npz``           bf16 embeddings stored as ``uint16`` bit patterns, per teacher ``t`` (manifest order):
                  ``image_emb.<t>`` [K, D_t] (one per augmented view, same order as ``param_aug``),
                  ``text_emb.<t>`` [C, D_t] (real captions), ``syn_text_emb.<t>`` [S, D_t]
================  ==========================================================================

The one data type handed from reader to trainer is :class:`ReinforcedSample`. Read with
:func:`iter_samples` (plain iteration over shard files) or plug :func:`ReinforcedSample.from_wds`
into your own ``webdataset`` pipeline (shuffling, DataLoader workers, node splitting)::

    import webdataset as wds
    from rsclip_core.reinforce.shards import ReinforcedSample, list_shards, load_manifest
    manifest = load_manifest(dataset_dir)
    ds = wds.WebDataset([str(p) for p in list_shards(dataset_dir)], shardshuffle=100).shuffle(1000)
    ds = ds.map(ReinforcedSample.from_wds)
    for s in ds:
        k = rng.randrange(len(s.aug_params))
        view = s.augmented_view(k)                      # PIL image, bit-identical to the stored view
        target = s.image_emb["teacher-effnetlite2-minilm"][k]   # float32 [D]
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from rsclip_core.teachers.base import TeacherInfo
from rsclip_core.workdir import atomic_target, atomic_write_bytes

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SHARD_PATTERN = "shard-{:06d}.tar"
EMBEDDING_KINDS = ("image_emb", "text_emb", "syn_text_emb")


class ShardFormatError(ValueError):
    """A shard or manifest that does not follow the reinforced-dataset format."""


# --- bf16 <-> uint16 (numpy has no bfloat16) -----------------------------------------------------


def float_to_bf16_bits(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round-to-nearest-even) and return the bit patterns as uint16."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    bits = a.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# --- the data type handed to the trainer ---------------------------------------------------------


@dataclass
class ReinforcedSample:
    """One reinforced image: original bytes, captions, augmentation params and teacher embeddings.

    Embedding dicts map teacher name -> float32 array; rows of ``image_emb[t]`` follow
    ``aug_params``, rows of ``text_emb[t]`` follow ``captions``, rows of ``syn_text_emb[t]`` follow
    ``syn_captions``. Embeddings are L2-normalised by the teacher (then rounded to bf16).
    """

    key: str
    image_bytes: bytes
    image_ext: str
    captions: list[str]
    syn_captions: list[str]
    aug_params: list[dict[str, Any]]
    image_emb: dict[str, np.ndarray]
    text_emb: dict[str, np.ndarray]
    syn_text_emb: dict[str, np.ndarray]
    label: str | None = None
    split: str | None = None
    source: str | None = None

    def image(self):  # -> PIL.Image.Image
        """The original image, decoded to RGB."""
        from rsclip_core.data.readers import decode_rgb

        return decode_rgb(self.image_bytes)

    def augmented_view(self, k: int, image=None):  # -> PIL.Image.Image
        """The k-th stored augmentation replayed on the original (pass ``image`` to skip decoding)."""
        from rsclip_core.data.augment import reapply

        return reapply(self.image() if image is None else image, self.aug_params[k])

    @property
    def teachers(self) -> list[str]:
        return list(self.image_emb)

    # -- (de)serialisation --
    def to_wds(self) -> dict[str, Any]:
        """The webdataset sample dict (member name -> bytes)."""
        arrays: dict[str, np.ndarray] = {}
        for kind in EMBEDDING_KINDS:
            for teacher, emb in getattr(self, kind).items():
                arrays[f"{kind}.{teacher}"] = float_to_bf16_bits(emb)
        buf = io.BytesIO()
        np.savez_compressed(buf, **cast(dict[str, Any], arrays))
        meta = {"captions": self.captions, "label": self.label, "split": self.split, "source": self.source}
        return {
            "__key__": self.key,
            self.image_ext: self.image_bytes,
            "json": json.dumps(meta, ensure_ascii=False).encode(),
            "txt": (self.captions[0] if self.captions else "").encode(),
            "syn.json": json.dumps({"syn_text": self.syn_captions}, ensure_ascii=False).encode(),
            "paug.json": json.dumps({"param_aug": self.aug_params}, separators=(",", ":")).encode(),
            "npz": buf.getvalue(),
        }

    @classmethod
    def from_wds(cls, sample: dict[str, Any]) -> ReinforcedSample:
        """Build from a raw (undecoded) webdataset sample dict."""
        key = sample.get("__key__", "?")
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp", "tif", "tiff") if e in sample), None)
        missing = [m for m in ("json", "syn.json", "paug.json", "npz") if m not in sample]
        if image_ext is None or missing:
            raise ShardFormatError(
                f"sample {key!r} in {sample.get('__url__', '?')}: missing {missing or ['image']}"
            )
        meta = json.loads(_as_bytes(sample["json"]))
        embs: dict[str, dict[str, np.ndarray]] = {k: {} for k in EMBEDDING_KINDS}
        with np.load(io.BytesIO(_as_bytes(sample["npz"]))) as npz:
            for name in npz.files:
                kind, _, teacher = name.partition(".")
                if kind in embs:
                    embs[kind][teacher] = bf16_bits_to_float(npz[name])
        return cls(
            key=key,
            image_bytes=_as_bytes(sample[image_ext]),
            image_ext=image_ext,
            captions=list(meta.get("captions", [])),
            syn_captions=list(json.loads(_as_bytes(sample["syn.json"]))["syn_text"]),
            aug_params=list(json.loads(_as_bytes(sample["paug.json"]))["param_aug"]),
            image_emb=embs["image_emb"],
            text_emb=embs["text_emb"],
            syn_text_emb=embs["syn_text_emb"],
            label=meta.get("label"),
            split=meta.get("split"),
            source=meta.get("source"),
        )


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise ShardFormatError(f"expected raw bytes in a sample member, got {type(value).__name__} (do not .decode())")


# --- manifest ------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """Dataset-level facts, identical for every ``--shard i/n`` worker (written atomically by each)."""

    teachers: list[TeacherInfo]
    num_augmentations: int
    num_syn_captions: int
    captioner: dict[str, Any]
    seed: int
    source: dict[str, Any]  # {"path", "format", "fingerprint" (sha256), "num_records", "splits"}
    shard_size: int
    num_shards: int
    augmentation: dict[str, Any]
    embedding_dtype: str = "bfloat16 (stored as uint16 bit patterns in npz)"
    format_version: int = FORMAT_VERSION
    created_by: str = "rsclip reinforce"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def teacher_dims(self) -> dict[str, int]:
        return {t.name: t.dim for t in self.teachers}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["teachers"] = [TeacherInfo(**t) for t in data["teachers"]]
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that must match for a resumed / parallel build to extend this dataset."""
        d = self.to_dict()
        return {k: d[k] for k in ("teachers", "num_augmentations", "num_syn_captions", "captioner", "seed",
                                  "source", "shard_size", "num_shards", "augmentation", "format_version")}


def save_manifest(directory: str | Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(path, json.dumps(manifest.to_dict(), indent=2).encode())
    return path


def load_manifest(directory: str | Path) -> Manifest:
    """Read ``<directory>/manifest.json``."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"not a reinforced dataset (no {MANIFEST_NAME}): {directory}")
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ShardFormatError(f"{path}: invalid manifest ({exc})") from exc


def list_shards(directory: str | Path) -> list[Path]:
    """Completed shard files of a dataset, sorted (temp files of an interrupted build are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"reinforced dataset folder not found: {directory}")
    return sorted(p for p in directory.glob("shard-*.tar") if not p.name.startswith("."))


# --- writing -------------------------------------------------------------------------------------


def write_shard(path: str | Path, samples: Iterable[ReinforcedSample]) -> int:
    """Write ``samples`` to a tar shard atomically (temp file, fsync, rename); returns the count.

    Members get a fixed mtime/uid so the same samples give byte-identical shards.
    """
    count = 0
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                for name, data in _members(sample.to_wds()):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = 0
                    info.mode = 0o644
                    info.uname = info.gname = "rsclip"
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        f.flush()
        os.fsync(f.fileno())
    return count


def _members(wds_sample: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    key = wds_sample["__key__"]
    if "." in key or "/" in key:
        raise ShardFormatError(f"sample key {key!r} must not contain '.' or '/'")
    for ext, data in wds_sample.items():
        if ext != "__key__":
            yield f"{key}.{ext}", data


# --- reading -------------------------------------------------------------------------------------


def iter_raw_samples(shard_paths: Sequence[str | Path]) -> Iterator[dict[str, Any]]:
    """Group tar members of the given shards into raw webdataset-style sample dicts (in order)."""
    for shard in shard_paths:
        current: dict[str, Any] = {}
        try:
            with tarfile.open(shard, mode="r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    if current and current["__key__"] != key:
                        yield current
                        current = {}
                    if not current:
                        current = {"__key__": key, "__url__": str(shard)}
                    f = tar.extractfile(member)
                    current[ext] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ShardFormatError(f"{shard}: unreadable shard ({exc})") from exc
        if current:
            yield current


def iter_samples(source: str | Path | Sequence[str | Path]) -> Iterator[ReinforcedSample]:
    """Iterate :class:`ReinforcedSample` s from a dataset folder or a list of shard files (in order)."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        shards: Sequence[str | Path] = list_shards(source)
    elif isinstance(source, (str, Path)):
        shards = [source]
    else:
        shards = list(source)
    for raw in iter_raw_samples(shards):
        yield ReinforcedSample.from_wds(raw)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
