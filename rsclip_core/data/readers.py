"""Readers that turn image-caption datasets into :class:`ImageTextRecord` lists.

Supported inputs:

* Karpathy-format caption JSON as RS caption sets ship it (RSICD, UCM-captions, Sydney-captions,
  RSITMD): ``images[].filename/split/sentences[].raw`` (+ optional ``label`` scene class).
* Image-folder scene-classification sets (one folder per class) with caption templates.
* CSV / Parquet tables of ``(image path, caption[, label][, split])``; several rows per image are
  grouped into one record.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

#: caption templates for scene-classification sets (and the scene-label prior captions)
DEFAULT_CAPTION_TEMPLATES: tuple[str, ...] = (
    "an aerial image of {}.",
    "a satellite photo of {}.",
    "a remote sensing image of {}.",
    "an overhead view of {}.",
    "a top-down aerial view of {}.",
)


class DatasetFormatError(ValueError):
    """A dataset file or folder that cannot be read; the message names the path."""


class ImageLoadError(ValueError):
    """An image that is corrupt, truncated or not RGB; the message names the file and the reason."""


@dataclass
class ImageTextRecord:
    """One image with its human captions (and optional scene label / split)."""

    key: str
    image_path: Path
    captions: list[str]
    label: str | None = None
    split: str | None = None
    extra: dict = field(default_factory=dict)


def sanitize_key(text: str) -> str:
    """A webdataset-safe sample key (no dots or slashes: webdataset splits names at the first dot)."""
    key = re.sub(r"[^0-9A-Za-z_-]+", "_", text).strip("_")
    if not key:
        raise DatasetFormatError(f"cannot build a sample key from {text!r}")
    return key


def class_name_from_folder(folder: str) -> str:
    """Readable class name: ``dRiverLake`` -> ``river lake`` (RSSCN7's letter prefix), ``bare_land`` -> ``bare land``."""
    name = re.sub(r"^[a-z](?=[A-Z])", "", folder)
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return re.sub(r"[_\-]+", " ", name).strip().lower()


def read_karpathy_json(
    json_path: str | Path,
    image_root: str | Path | None = None,
    splits: Sequence[str] | None = None,
) -> list[ImageTextRecord]:
    """Read a Karpathy-format caption JSON; ``image_root`` defaults to ``<json dir>/images`` if present."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"caption JSON not found: {json_path}")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        images = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetFormatError(f"{json_path}: not a Karpathy caption JSON ({exc})") from exc
    if image_root is None:
        image_root = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    image_root = Path(image_root)
    wanted = set(splits) if splits else None
    records: list[ImageTextRecord] = []
    for i, item in enumerate(images):
        try:
            filename = item["filename"]
            captions = [s["raw"].strip() for s in item["sentences"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise DatasetFormatError(f"{json_path}: images[{i}] lacks filename/sentences[].raw") from exc
        split = item.get("split")
        if wanted is not None and split not in wanted:
            continue
        rel = Path(item.get("filepath", "")) / filename
        records.append(
            ImageTextRecord(
                key=sanitize_key(str(rel.with_suffix(""))),
                image_path=image_root / rel,
                captions=[c for c in captions if c],
                label=item.get("label"),
                split=split,
            )
        )
    return records


def read_image_folder(
    root: str | Path,
    templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES,
    class_names: dict[str, str] | None = None,
) -> list[ImageTextRecord]:
    """Read a one-folder-per-class set; captions come from ``templates`` filled with the class name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not templates or any("{}" not in t for t in templates):
        raise DatasetFormatError("every caption template must contain '{}'")
    records: list[ImageTextRecord] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetFormatError(f"{root}: no class folders inside")
    for class_dir in class_dirs:
        name = (class_names or {}).get(class_dir.name, class_name_from_folder(class_dir.name))
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                records.append(
                    ImageTextRecord(
                        key=sanitize_key(f"{class_dir.name}/{path.stem}"),
                        image_path=path,
                        captions=[t.format(name) for t in templates],
                        label=name,
                    )
                )
    return records


def _read_table_rows(path: Path) -> list[dict[str, object]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow ships with the geo stack
            raise DatasetFormatError(f"{path}: reading Parquet needs pyarrow") from exc
        return pq.read_table(path).to_pylist()
    raise DatasetFormatError(f"{path}: unsupported table format (use .csv, .tsv or .parquet)")


def read_table(
    path: str | Path,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = "label",
    split_column: str | None = "split",
    image_root: str | Path | None = None,
) -> list[ImageTextRecord]:
    """Read a CSV/TSV/Parquet table of image paths and captions (relative paths resolve against
    ``image_root``, default the table's folder); rows of the same image become one record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    rows = _read_table_rows(path)
    if rows and (image_column not in rows[0] or caption_column not in rows[0]):
        raise DatasetFormatError(
            f"{path}: needs columns {image_column!r} and {caption_column!r}, has {sorted(rows[0])}"
        )
    root = Path(image_root) if image_root is not None else path.parent
    by_image: dict[str, ImageTextRecord] = {}
    for row in rows:
        image = str(row[image_column])
        caption = str(row[caption_column] or "").strip()
        record = by_image.get(image)
        if record is None:
            image_path = Path(image) if Path(image).is_absolute() else root / image
            label = row.get(label_column) if label_column else None
            split = row.get(split_column) if split_column else None
            record = ImageTextRecord(
                key=sanitize_key(str(Path(image).with_suffix(""))),
                image_path=image_path,
                captions=[],
                label=str(label) if label not in (None, "") else None,
                split=str(split) if split not in (None, "") else None,
            )
            by_image[image] = record
        if caption:
            record.captions.append(caption)
    return list(by_image.values())


def read_dataset(path: str | Path, image_root: str | Path | None = None, splits: Sequence[str] | None = None,
                 templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES) -> list[ImageTextRecord]:
    """Pick the reader from ``path``: ``.json`` Karpathy file, ``.csv/.tsv/.parquet`` table, or a class folder."""
    path = Path(path)
    if path.is_dir():
        records = read_image_folder(path, templates=templates)
    elif path.suffix.lower() == ".json":
        return read_karpathy_json(path, image_root=image_root, splits=splits)
    elif path.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
        records = read_table(path, image_root=image_root)
    elif not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    else:
        raise DatasetFormatError(f"{path}: unknown dataset format (Karpathy .json, .csv/.parquet or a folder)")
    if splits:
        records = [r for r in records if r.split in set(splits)]
    return records


def check_unique_keys(records: Iterable[ImageTextRecord]) -> None:
    """Raise if two records share a sample key."""
    seen: dict[str, Path] = {}
    for r in records:
        if r.key in seen:
            raise DatasetFormatError(f"duplicate sample key {r.key!r}: {seen[r.key]} and {r.image_path}")
        seen[r.key] = r.image_path


def dataset_fingerprint(records: Sequence[ImageTextRecord], hash_image_bytes: bool = True) -> str:
    """sha256 over keys, captions, labels and (by default) the image bytes: identifies the source data."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.key, r.captions, r.label, r.split]).encode())
        if hash_image_bytes:
            try:
                h.update(hashlib.sha256(Path(r.image_path).read_bytes()).digest())
            except OSError:
                h.update(b"<missing>")
    return h.hexdigest()


def load_rgb_image(path: str | Path, allow_convert: bool = False) -> tuple[Image.Image, bytes]:
    """Decode an image fully; returns ``(RGB image, file bytes)``.

    Raises :class:`ImageLoadError` for missing, corrupt or truncated files and for non-RGB modes
    (unless ``allow_convert``, which converts L/LA/P/RGBA/CMYK to RGB).
    """
    import io

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    if img.mode != "RGB":
        if not allow_convert or img.mode not in ("L", "LA", "P", "RGBA", "CMYK"):
            raise ImageLoadError(f"{path}: non-RGB image (mode {img.mode})")
        img = img.convert("RGB")
    return img, data


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes (as stored in a shard) to an RGB PIL image."""
    import io

    img = Image.open(io.BytesIO(data))
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")
