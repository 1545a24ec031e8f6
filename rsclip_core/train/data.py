"""Training data from reinforced shards: random access, deterministic order, resumable position.

The trainer needs (a) the same sample order and the same augmentation / caption choices whether a
run is interrupted or not, and (b) disjoint per-rank batches under DDP. So the shards are indexed
once (tar member offsets; only the tiny ``json`` member is read) and read by random access:

* the order of epoch ``e`` is a permutation seeded by ``(seed, e)``; global step ``s`` of that epoch
  takes ``order[s*B*W : (s+1)*B*W]`` and rank ``r`` its ``r``-th slice of ``B``;
* every choice made for sample ``i`` in epoch ``e`` (which of the K stored augmentations, which
  real and which synthetic caption) comes from a ``random.Random`` seeded by ``(seed, e, i)`` —
  independent of worker count, rank count and of where a run was resumed.

The data position in a checkpoint is then just ``(epoch, step in epoch)``.
"""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rsclip_core.data.augment import model_view
from rsclip_core.preprocess import PreprocessConfig, standardise, to_pixels
from rsclip_core.reinforce.shards import ReinforcedSample, ShardFormatError, list_shards, load_manifest


class TrainDataError(ValueError):
    """Training data that cannot be used (the message names the dataset / shard)."""


@dataclass(frozen=True)
class SampleLocation:
    """Where one sample's members lie inside a shard: ``ext -> (offset, size)``."""

    shard: int
    key: str
    members: tuple[tuple[str, int, int], ...]


def index_shards(shards: Sequence[Path]) -> tuple[list[SampleLocation], list[str | None]]:
    """Member offsets of every sample (and its ``split``) by scanning tar headers."""
    locations: list[SampleLocation] = []
    splits: list[str | None] = []
    for shard_id, shard in enumerate(shards):
        try:
            with tarfile.open(shard, mode="r") as tar:
                current_key: str | None = None
                members: list[tuple[str, int, int]] = []
                split: str | None = None
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
                    if current_key is not None and key != current_key:
                        locations.append(SampleLocation(shard_id, current_key, tuple(members)))
                        splits.append(split)
                        members, split = [], None
                    current_key = key
                    members.append((ext, member.offset_data, member.size))
                    if ext == "json":
                        handle = tar.extractfile(member)
                        meta = json.loads(handle.read()) if handle is not None else {}
                        split = meta.get("split")
                if current_key is not None:
                    locations.append(SampleLocation(shard_id, current_key, tuple(members)))
                    splits.append(split)
        except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as exc:
            raise ShardFormatError(f"{shard}: unreadable shard ({exc})") from exc
    return locations, splits


class ShardStore:
    """Random access to the samples of a reinforced dataset (file handles opened lazily, per process)."""

    def __init__(self, dataset_dir: str | Path, allow_test_split: bool = False) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.manifest = load_manifest(self.dataset_dir)
        self.shards = list_shards(self.dataset_dir)
        if not self.shards:
            raise TrainDataError(f"{self.dataset_dir}: no shard-*.tar files")
        self.locations, splits = index_shards(self.shards)
        if not self.locations:
            raise TrainDataError(f"{self.dataset_dir}: the shards hold no samples")
        n_test = sum(1 for s in splits if s == "test")
        if n_test and not allow_test_split:
            raise TrainDataError(
                f"{self.dataset_dir}: {n_test} samples come from the 'test' split; refusing to train on test data"
            )
        self.teachers = [t.name for t in self.manifest.teachers]
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.locations)

    def fingerprint(self) -> str:
        """Identifies the shard set (names, sizes, sample keys): a resumed run must see the same data."""
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(f"{shard.name}:{shard.stat().st_size};".encode())
        for loc in self.locations:
            digest.update(loc.key.encode())
        return digest.hexdigest()[:16]

    def raw(self, index: int) -> dict[str, Any]:
        loc = self.locations[index]
        handle = self._handles.get(loc.shard)
        if handle is None:
            handle = self._handles[loc.shard] = open(self.shards[loc.shard], "rb")  # noqa: SIM115
        sample: dict[str, Any] = {"__key__": loc.key, "__url__": str(self.shards[loc.shard])}
        for ext, offset, size in loc.members:
            handle.seek(offset)
            sample[ext] = handle.read(size)
        return sample

    def __getitem__(self, index: int) -> ReinforcedSample:
        return ReinforcedSample.from_wds(self.raw(index))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen their own handles
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG for every random choice made for sample ``index`` in ``epoch``."""
    return random.Random(f"{seed}:{epoch}:{index}")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of ``epoch`` (a seeded permutation of ``range(n)``)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class ItemConfig:
    """What one training item is made of (``preprocess``: the student's, see :mod:`rsclip_core.preprocess`)."""

    preprocess: PreprocessConfig
    teachers: tuple[str, ...]
    synthetic: bool = True
    stored_embeddings: bool = True  # False in online distillation: teachers embed the view live
    keep_view: bool = False  # also return the uint8 view (online teachers need it)


def build_item(sample: ReinforcedSample, rng: random.Random, cfg: ItemConfig) -> dict[str, Any]:
    """Replay one stored augmentation and pick one real and one synthetic caption (+ their targets)."""
    if not sample.aug_params:
        raise TrainDataError(f"sample {sample.key!r}: no stored augmentations")
    if not sample.captions:
        raise TrainDataError(f"sample {sample.key!r}: no real captions")
    k = rng.randrange(len(sample.aug_params))
    original = sample.image()
    # the stored crop straight at the student's size and interpolation (one resample)
    view = model_view(original, sample.aug_params[k], cfg.preprocess)
    j = rng.randrange(len(sample.captions))
    item: dict[str, Any] = {
        "image": torch.from_numpy(standardise(to_pixels(view), cfg.preprocess)),
        "caption": sample.captions[j],
    }
    if cfg.keep_view:  # online teachers embed the view as stored (their own size and interpolation)
        item["view"] = np.asarray(sample.augmented_view(k, original), dtype=np.uint8)
    s = None
    if cfg.synthetic:
        if not sample.syn_captions:
            raise TrainDataError(f"sample {sample.key!r}: no synthetic captions (train without --synthetic)")
        s = rng.randrange(len(sample.syn_captions))
        item["syn_caption"] = sample.syn_captions[s]
    if cfg.stored_embeddings:
        for name in cfg.teachers:
            try:
                item[f"t_img.{name}"] = torch.from_numpy(sample.image_emb[name][k].copy())
                item[f"t_txt.{name}"] = torch.from_numpy(sample.text_emb[name][j].copy())
                if s is not None:
                    item[f"t_syn.{name}"] = torch.from_numpy(sample.syn_text_emb[name][s].copy())
            except (KeyError, IndexError) as exc:
                raise TrainDataError(f"sample {sample.key!r}: teacher {name!r} embeddings missing ({exc})") from exc
    return item


class ReinforcedTrainSet(torch.utils.data.Dataset):
    """Map-style dataset over a :class:`ShardStore`; indices are ``(epoch, sample index)`` pairs."""

    def __init__(self, store: ShardStore, cfg: ItemConfig, seed: int) -> None:
        self.store, self.cfg, self.seed = store, cfg, seed

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        return build_item(self.store[index], sample_rng(self.seed, epoch, index), self.cfg)


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's batches of ``(epoch, index)`` keys, from a given (epoch, step) onward, forever.

    Batches are dropped at the end of an epoch when fewer than ``batch_size * world_size`` samples remain.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start: tuple[int, int] = (0, 0)
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = n // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise TrainDataError(
                f"{n} samples are fewer than one global batch ({batch_size} x {world_size} ranks)"
            )
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, step = self.start
        global_batch = self.batch_size * self.world_size
        while True:
            order = epoch_order(self.n, self.seed, epoch)
            for s in range(step, self.steps_per_epoch):
                chunk = order[s * global_batch : (s + 1) * global_batch]
                mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                yield [(epoch, int(i)) for i in mine]
            epoch, step = epoch + 1, 0

    def __len__(self) -> int:  # one epoch's worth (the iterator itself never ends)
        return self.steps_per_epoch


def make_collate(tokenizer: Callable[[list[str]], torch.Tensor]) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Stack images/targets and tokenize the captions of a list of items."""

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"image": torch.stack([it["image"] for it in items])}
        batch["captions"] = [it["caption"] for it in items]
        batch["tokens"] = tokenizer(batch["captions"])
        if "syn_caption" in items[0]:
            batch["syn_captions"] = [it["syn_caption"] for it in items]
            batch["syn_tokens"] = tokenizer(batch["syn_captions"])
        if "view" in items[0]:
            batch["views"] = [it["view"] for it in items]
        for key in items[0]:
            if key.startswith(("t_img.", "t_txt.", "t_syn.")):
                batch[key] = torch.stack([it[key] for it in items])
        return batch

    return collate


def decode_view(array: np.ndarray) -> Image.Image:
    """A uint8 HWC view back to PIL (for online teachers)."""
    return Image.fromarray(array)
