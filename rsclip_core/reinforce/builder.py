"""Build a reinforced dataset: K replayable augmentations, S synthetic captions and per-teacher
embeddings of every view / real caption / synthetic caption, written as webdataset shards.

Scale and faults:

* Deterministic given the seed: every record draws from its own ``random.Random(f"{seed}/{key}")``,
  and teacher batches never cross a shard, so re-running a shard gives identical bytes.
* ``shard=(i, n)``: global shard ``g`` holds records ``[g*shard_size, (g+1)*shard_size)``; worker
  ``i`` of ``n`` builds the shards with ``g % n == i`` (processes or machines share one folder).
* A shard is written to a temp file and renamed; its ``.skipped.json`` sidecar is written first, so
  a finished ``shard-*.tar`` is the commit marker. A killed build resumes by skipping finished
  shards and redoing the rest: no duplicates, no lost samples.
* Corrupt, truncated or non-RGB images are skipped, counted and listed (sidecars + report).
* Several sources (e.g. RSICD train + an NWPU class-folder subset with scene-label captions) go into
  one dataset through :func:`merge_sources`: keys of the extra sources get their source name as a
  prefix, and the manifest's ``source["sources"]`` lists each one (path, format, records, fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rsclip_core.data.augment import DEFAULT_PRESET, AugmentationConfig, augmentation_preset, reapply, sample_params
from rsclip_core.data.readers import (
    ImageLoadError,
    ImageTextRecord,
    check_unique_keys,
    dataset_fingerprint,
    load_rgb_image,
    sanitize_key,
)
from rsclip_core.prompts import CAPTION_TEMPLATES
from rsclip_core.reinforce.captioners import Captioner, NeighbourCaptioner
from rsclip_core.reinforce.shards import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    Manifest,
    ReinforcedSample,
    ShardFormatError,
    list_shards,
    load_manifest,
    save_manifest,
    write_shard,
)
from rsclip_core.teachers.base import TeacherEnsemble
from rsclip_core.workdir import atomic_write_bytes


class BuildError(ValueError):
    """The reinforced build cannot start or continue (message names the folder / argument)."""


@dataclass
class BuildConfig:
    num_augmentations: int = 5
    num_syn_captions: int = 5
    seed: int = 0
    shard_size: int = 256
    batch_size: int = 16  # records per teacher batch (never crosses a shard)
    allow_convert: bool = False  # convert L/P/RGBA/CMYK images instead of skipping them
    augmentation: AugmentationConfig = field(default_factory=lambda: augmentation_preset(DEFAULT_PRESET))


@dataclass
class BuildResult:
    out_dir: Path
    shards_written: list[str]
    shards_skipped_existing: list[str]
    samples_written: int
    images_skipped: list[dict[str, str]]
    seconds: float

    @property
    def images_per_second(self) -> float:
        n = self.samples_written + len(self.images_skipped)
        return n / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DataSource:
    """One input of a reinforced dataset: its records and how they were read."""

    name: str  # key prefix of its records ("" for the primary source: keys unchanged)
    path: str
    records: list[ImageTextRecord]
    format: str = ""
    splits: list[str] = field(default_factory=list)


def merge_sources(sources: Sequence[DataSource]) -> tuple[list[ImageTextRecord], dict[str, Any]]:
    """All sources' records in order (keys of named sources prefixed ``<name>-``) and the manifest's
    ``source`` entry: the first source's fields at the top level (as single-source datasets record
    them), ``sources`` with one entry per source, ``fingerprint``/``num_records`` over all records."""
    if not sources:
        raise BuildError("no data sources given")
    records: list[ImageTextRecord] = []
    entries = []
    for src in sources:
        if not src.records:
            raise BuildError(f"source {src.name or src.path!r} ({src.path}): no records")
        if src.name and sanitize_key(src.name) != src.name:
            raise BuildError(f"source name {src.name!r}: use letters, digits, '-' and '_' only")
        mine = [dataclasses.replace(r, key=f"{src.name}-{r.key}") if src.name else r for r in src.records]
        entries.append({"name": src.name, "path": src.path, "format": src.format, "splits": list(src.splits),
                        "num_records": len(mine), "fingerprint": dataset_fingerprint(mine)})
        records += mine
    try:
        check_unique_keys(records)
    except ValueError as exc:
        raise BuildError(f"data sources: {exc}") from exc
    first = entries[0]
    source = {"path": first["path"], "format": first["format"], "splits": first["splits"],
              "num_records": len(records), "fingerprint": dataset_fingerprint(records)}
    if len(entries) > 1:
        source["sources"] = entries
    return records, source


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError as exc:
        raise BuildError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise BuildError(f"--shard {spec}: need 0 <= i < n")
    return i, n


class TextEmbeddingCache:
    """text -> per-teacher embedding rows; misses are encoded in one batch per call."""

    def __init__(self, ensemble: TeacherEnsemble) -> None:
        self.ensemble = ensemble
        self.rows: dict[str, dict[str, np.ndarray]] = {}

    def add(self, texts: Sequence[str], embs: dict[str, np.ndarray]) -> None:
        for j, t in enumerate(texts):
            self.rows.setdefault(t, {name: e[j] for name, e in embs.items()})

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        missing = sorted({t for t in texts if t not in self.rows})
        if missing:
            self.add(missing, self.ensemble.encode_texts(missing))
        return {name: np.stack([self.rows[t][name] for t in texts]) if texts else
                np.zeros((0, dim), np.float32)
                for name, dim in ((t.name, t.dim) for t in self.ensemble.teachers)}


def build_caption_bank(
    bank: Sequence[ImageTextRecord],
    ensemble: TeacherEnsemble,
    cache_path: str | Path | None = None,
    batch_size: int = 32,
    allow_convert: bool = False,
    progress: bool = True,
    num_neighbours: int = 10,
    label_captions: int = 1,
    templates: Sequence[str] = CAPTION_TEMPLATES,
    agreement: str = "joint",
    min_agreement: float | None = None,
) -> tuple[NeighbourCaptioner, TextEmbeddingCache]:
    """Embed the bank (centre views + all captions) with the ensemble; cached in ``cache_path`` (npz).

    Unreadable bank images are left out of the bank. Returns the captioner and a text cache
    prefilled with every bank caption's per-teacher embedding.
    """
    from tqdm import tqdm

    from rsclip_core.data.augment import center_view_params

    names = ensemble.names
    cache_path = Path(cache_path) if cache_path else None
    if cache_path is not None and cache_path.exists():
        with np.load(cache_path, allow_pickle=False) as z:
            keys = list(z["keys"])
            img = {n: z[f"image.{n}"] for n in names}
            txt = {n: z[f"text.{n}"] for n in names}
        by_key = {r.key: r for r in bank}
        kept = [by_key[k] for k in keys if k in by_key]
        if len(kept) != len(keys):
            raise BuildError(f"{cache_path}: caption bank cache does not match the bank records; delete it")
    else:
        kept = []
        img_rows: dict[str, list[Any]] = {n: [] for n in names}
        bar = tqdm(total=len(bank), desc="caption bank", unit="img", disable=not progress)
        for b in range(0, len(bank), batch_size):
            views, recs = [], []
            for r in bank[b:b + batch_size]:
                try:
                    im, _ = load_rgb_image(r.image_path, allow_convert=allow_convert)
                except ImageLoadError:
                    continue
                size = max(t.image_size for t in ensemble.teachers)
                views.append(reapply(im, center_view_params(im.width, im.height, size)))
                recs.append(r)
            if views:
                for n, e in ensemble.encode_images(views).items():
                    img_rows[n].append(e)
                kept += recs
            bar.update(min(batch_size, len(bank) - b))
        bar.close()
        img = {n: np.concatenate(v) if v else np.zeros((0, 1), np.float32) for n, v in img_rows.items()}
        captions = [c for r in kept for c in r.captions]
        txt = {n: np.zeros((0, 1), np.float32) for n in names}
        if captions:
            unique = sorted(set(captions))
            enc = ensemble.encode_texts(unique)
            pos = {t: i for i, t in enumerate(unique)}
            rows = [pos[c] for c in captions]
            txt = {n: enc[n][rows] for n in names}
        if cache_path is not None:
            import io

            buf = io.BytesIO()
            np.savez(buf, keys=np.array([r.key for r in kept]),
                     **{f"image.{n}": img[n] for n in names}, **{f"text.{n}": txt[n] for n in names})
            atomic_write_bytes(cache_path, buf.getvalue())
    k = np.sqrt(len(names))
    joint_img = np.concatenate([img[n] for n in names], 1) / k
    joint_txt = np.concatenate([txt[n] for n in names], 1) / k
    captioner = NeighbourCaptioner(kept, joint_img, joint_txt, num_neighbours=num_neighbours,
                                   label_captions=label_captions, templates=templates,
                                   teacher_dims=[img[n].shape[1] for n in names], agreement=agreement,
                                   min_agreement=min_agreement)
    cache = TextEmbeddingCache(ensemble)
    cache.add(captioner.captions, txt)
    return captioner, cache


def _shard_records(records: Sequence[ImageTextRecord], shard_size: int) -> list[Sequence[ImageTextRecord]]:
    return [records[g:g + shard_size] for g in range(0, len(records), shard_size)]


def _reinforce_batch(
    batch: list[tuple[ImageTextRecord, Any, bytes]],
    ensemble: TeacherEnsemble,
    captioner: Captioner,
    text_cache: TextEmbeddingCache,
    cfg: BuildConfig,
) -> list[ReinforcedSample]:
    K, S = cfg.num_augmentations, cfg.num_syn_captions
    rngs = [random.Random(f"{cfg.seed}/{r.key}") for r, _, _ in batch]
    params = [[sample_params(im.width, im.height, rng, cfg.augmentation) for _ in range(K)]
              for (_, im, _), rng in zip(batch, rngs)]
    views = [reapply(im, p) for (_, im, _), ps in zip(batch, params) for p in ps]
    view_embs = ensemble.encode_images(views)
    names = ensemble.names
    joint = np.concatenate([view_embs[n] for n in names], 1) / np.sqrt(len(names))
    samples = []
    for b, ((record, image, data), rng) in enumerate(zip(batch, rngs)):
        query = joint[b * K:(b + 1) * K].mean(0)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        syn = captioner.caption(record, image, S, rng, image_embedding=query)
        ext = _image_ext(data)
        samples.append(ReinforcedSample(
            key=record.key,
            image_bytes=data,
            image_ext=ext,
            captions=list(record.captions),
            syn_captions=syn,
            aug_params=params[b],
            image_emb={n: view_embs[n][b * K:(b + 1) * K] for n in names},
            text_emb=text_cache.get(record.captions),
            syn_text_emb=text_cache.get(syn),
            label=record.label,
            split=record.split,
            source=str(record.image_path),
        ))
    return samples


def _image_ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def build_reinforced_dataset(
    records: Sequence[ImageTextRecord],
    out_dir: str | Path,
    ensemble: TeacherEnsemble,
    captioner: Captioner,
    config: BuildConfig,
    source: dict[str, Any],
    shard: tuple[int, int] = (0, 1),
    text_cache: TextEmbeddingCache | None = None,
    progress: bool = True,
    on_sample: Callable[[int, str], None] | None = None,
) -> BuildResult:
    """Reinforce ``records`` into ``out_dir`` (this worker's shards only); resumable.

    ``source`` is recorded in the manifest (path, format, fingerprint, ...). ``on_sample(shard, key)``
    is called after each sample is produced (progress hooks; tests inject crashes through it).
    """
    from tqdm import tqdm

    records = list(records)
    check_unique_keys(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    worker, n_workers = shard
    groups = _shard_records(records, config.shard_size)
    manifest = Manifest(
        teachers=ensemble.infos(),
        num_augmentations=config.num_augmentations,
        num_syn_captions=config.num_syn_captions,
        captioner=captioner.describe(),
        seed=config.seed,
        source=source,
        shard_size=config.shard_size,
        num_shards=len(groups),
        augmentation=config.augmentation.to_dict(),
    )
    if (out_dir / MANIFEST_NAME).exists():
        existing = load_manifest(out_dir)
        if json.dumps(existing.fingerprint(), sort_keys=True) != json.dumps(manifest.fingerprint(), sort_keys=True):
            raise BuildError(
                f"{out_dir} already holds a reinforced dataset built with other settings "
                "(teachers, K, S, captioner, seed, source or shard size differ); use a new folder"
            )
    else:
        save_manifest(out_dir, manifest)
    mine = [g for g in range(len(groups)) if g % n_workers == worker]
    todo = [g for g in mine if not (out_dir / SHARD_PATTERN.format(g)).exists()]
    done = [SHARD_PATTERN.format(g) for g in mine if g not in todo]
    for g in todo:  # temp files of a killed run
        for stale in out_dir.glob(f".{SHARD_PATTERN.format(g)}.*.tmp"):
            stale.unlink(missing_ok=True)
    text_cache = text_cache or TextEmbeddingCache(ensemble)
    total = sum(len(groups[g]) for g in todo)
    bar = tqdm(total=total, desc=f"reinforce {worker}/{n_workers}", unit="img", disable=not progress)
    t0 = time.time()
    written, skipped_all, n_samples = [], [], 0
    for g in todo:
        skipped: list[dict[str, str]] = []

        def samples(group: Sequence[ImageTextRecord] = groups[g], g: int = g,
                    skipped: list[dict[str, str]] = skipped) -> Iterator[ReinforcedSample]:
            for b in range(0, len(group), config.batch_size):
                batch = []
                for r in group[b:b + config.batch_size]:
                    try:
                        im, data = load_rgb_image(r.image_path, allow_convert=config.allow_convert)
                        batch.append((r, im, data))
                    except ImageLoadError as exc:
                        skipped.append({"key": r.key, "path": str(r.image_path), "reason": str(exc)})
                        bar.update(1)
                if batch:
                    for s in _reinforce_batch(batch, ensemble, captioner, text_cache, config):
                        yield s
                        bar.update(1)
                        if on_sample is not None:
                            on_sample(g, s.key)

        name = SHARD_PATTERN.format(g)
        # all samples are produced before the sidecar + rename, so the sidecar is complete
        produced = list(samples())
        atomic_write_bytes(out_dir / name.replace(".tar", ".skipped.json"),
                           json.dumps({"shard": name, "skipped": skipped}, indent=1).encode())
        n_samples += write_shard(out_dir / name, produced)
        written.append(name)
        skipped_all += skipped
        for s in skipped:
            print(f"skipped {s['reason']}", file=sys.stderr)
    bar.close()
    return BuildResult(out_dir, written, done, n_samples, skipped_all, time.time() - t0)


# --- storage report ------------------------------------------------------------------------------


def storage_report(out_dir: str | Path) -> dict[str, Any]:
    """Bytes per sample split by part (tar members by extension, npz split per teacher and kind),
    sample / shard counts and every skipped image, from the finished shards of ``out_dir``."""
    import io
    import tarfile
    import zipfile

    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    shards = list_shards(out_dir)
    parts: dict[str, int] = {}
    npz_parts: dict[str, int] = {}
    keys: set[str] = set()
    n = 0
    tar_bytes = 0
    for shard in shards:
        tar_bytes += shard.stat().st_size
        try:
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.partition(".")
                    if key not in keys:
                        keys.add(key)
                        n += 1
                    parts[ext] = parts.get(ext, 0) + m.size
                    if ext == "npz":
                        member = tar.extractfile(m)
                        if member is None:  # not a regular file (skipped above): nothing to read
                            continue
                        data = member.read()
                        with zipfile.ZipFile(io.BytesIO(data)) as z:
                            for info in z.infolist():
                                npz_parts[info.filename[:-4]] = npz_parts.get(info.filename[:-4], 0) + info.compress_size
        except tarfile.TarError as exc:
            raise ShardFormatError(f"{shard}: unreadable shard ({exc})") from exc
    skipped = []
    for side in sorted(out_dir.glob("shard-*.skipped.json")):
        if (out_dir / side.name.replace(".skipped.json", ".tar")).exists():
            skipped += json.loads(side.read_text())["skipped"]
    image_parts = {"jpg", "jpeg", "png", "tif", "webp"}
    per = {k: v / n for k, v in sorted(parts.items())} if n else {}
    payload = sum(parts.values())
    beyond = sum(v for k, v in parts.items() if k not in image_parts)
    overhead = tar_bytes - payload
    return {
        "dataset": str(out_dir),
        "samples": n,
        "shards": len(shards),
        "num_shards_expected": manifest.num_shards,
        "teachers": manifest.teacher_dims,
        "K": manifest.num_augmentations,
        "S": manifest.num_syn_captions,
        "captioner": manifest.captioner.get("name"),
        "bytes_per_sample": per,
        "npz_bytes_per_sample": {k: v / n for k, v in sorted(npz_parts.items())} if n else {},
        "tar_overhead_per_sample": overhead / n if n else 0.0,
        "beyond_image_per_sample": (beyond + overhead) / n if n else 0.0,
        "beyond_image_per_sample_kb": (beyond + overhead) / n / 1024 if n else 0.0,
        "total_bytes": tar_bytes,
        "images_skipped": len(skipped),
        "skipped": skipped,
    }


def report_markdown(report: dict[str, Any]) -> str:
    lines = [(f"Reinforced dataset `{report['dataset']}`: {report['samples']} samples in {report['shards']} shards; "
             f"teachers {report['teachers']}, K={report['K']}, S={report['S']}, captioner {report['captioner']}."),
             "", "| part | bytes / sample |", "|---|---|"]
    for k, v in report["bytes_per_sample"].items():
        lines.append(f"| `{k}` | {v:,.0f} |")
    for k, v in report["npz_bytes_per_sample"].items():
        lines.append(f"| `npz: {k}` | {v:,.0f} |")
    lines.append(f"| tar headers/padding | {report['tar_overhead_per_sample']:,.0f} |")
    lines.append(f"| **beyond the image** | **{report['beyond_image_per_sample']:,.0f}** "
                 f"({report['beyond_image_per_sample_kb']:.1f} KiB) |")
    lines.append("")
    lines.append(f"Images skipped: {report['images_skipped']}")
    for s in report["skipped"]:
        lines.append(f"- `{s['key']}`: {s['reason']}")
    return "\n".join(lines)
