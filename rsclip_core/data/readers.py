"""Dataset formats: read image-caption and scene-classification datasets into :class:`ImageTextRecord` lists.

The one reader layer of rsclip, used by reinforcement/training (``rsclip_core.data``) and by
evaluation (``rsclip_core.evaluate`` builds its retrieval / zero-shot sets from these records).
Torch-free and PIL-free at import (PIL is imported only to decode images), so ``rsclip eval
--model-dir`` runs on the light install.

Supported inputs:

* Karpathy-format caption JSON as RS caption sets ship it (RSICD, UCM-captions, Sydney-captions,
  RSITMD): ``images[].filename/split/sentences[].raw`` (+ optional ``filepath``, ``label``).
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
from typing import TYPE_CHECKING, Any

from rsclip_core.prompts import CAPTION_TEMPLATES

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


class DatasetFormatError(ValueError):
    """A dataset file or folder that cannot be read; the message names the path."""


class DatasetNotFoundError(DatasetFormatError, FileNotFoundError):
    """A dataset file, folder or listed image that does not exist; the message names it."""


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


@dataclass
class ClassFolder:
    """One class of an image-folder dataset: folder name, cleaned class name, image files (sorted)."""

    folder: str
    name: str
    images: list[Path]


def sanitize_key(text: str) -> str:
    """A webdataset-safe sample key (no dots or slashes: webdataset splits names at the first dot)."""
    key = re.sub(r"[^0-9A-Za-z_-]+", "_", text).strip("_")
    if not key:
        raise DatasetFormatError(f"cannot build a sample key from {text!r}")
    return key


# ---------------------------------------------------------------- class names

_LETTER_PREFIX = re.compile(r"^([a-z])(?=[A-Z])")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def clean_class_name(name: str, drop_letter_prefix: bool = True) -> str:
    """A folder or label name as natural text: ``"dRiverLake"`` -> ``"river lake"``,
    ``"storage_tanks"`` -> ``"storage tanks"``, ``"BaseballDiamond"`` -> ``"baseball diamond"``.

    ``drop_letter_prefix`` removes RSSCN7's ordering prefix (one lower-case letter directly followed
    by an upper-case one: ``aGrass``, ``gParking``).
    """
    text = str(name).strip()
    if drop_letter_prefix:
        text = _LETTER_PREFIX.sub("", text)
    text = _CAMEL_BOUNDARY.sub(" ", text)
    text = re.sub(r"[_\-\s]+", " ", text)
    return text.strip().lower()


def clean_class_names(names: Sequence[str]) -> list[str]:
    """Clean a dataset's class names; RSSCN7-style letter prefixes are dropped only when *every*
    name carries one (so a lone ``"eForest"`` in some other dataset is not mangled by accident)."""
    all_prefixed = bool(names) and all(_LETTER_PREFIX.match(str(name).strip()) for name in names)
    return [clean_class_name(name, drop_letter_prefix=all_prefixed) for name in names]


# ---------------------------------------------------------------- Karpathy JSON


def _load_karpathy(json_path: Path) -> tuple[dict[str, Any], list[Any]]:
    if not json_path.is_file():
        raise DatasetNotFoundError(f"{json_path}: caption JSON not found")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        images = data["images"]
        if not isinstance(images, list):
            raise TypeError("'images' is not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DatasetFormatError(f"{json_path}: not a Karpathy caption JSON ({exc})") from exc
    return data, images


def karpathy_dataset_name(json_path: str | Path) -> str:
    """The JSON's ``dataset`` field (``"rsicd"``), else the file's stem."""
    json_path = Path(json_path)
    data, _images = _load_karpathy(json_path)
    return str(data.get("dataset") or json_path.stem)


def read_karpathy_json(
    json_path: str | Path,
    image_root: str | Path | None = None,
    splits: Sequence[str] | None = None,
    check_images: bool = False,
) -> list[ImageTextRecord]:
    """Read a Karpathy-format caption JSON; ``image_root`` defaults to ``<json dir>/images`` if present.

    With ``splits`` only those splits are read (an error lists the available ones when none
    matches); ``check_images`` raises for a listed image file that does not exist.
    """
    json_path = Path(json_path)
    _data, images = _load_karpathy(json_path)
    if image_root is None:
        image_root = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    image_root = Path(image_root)
    if check_images and not image_root.is_dir():
        raise DatasetNotFoundError(f"{image_root}: images folder not found")
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
        if check_images and not (image_root / rel).is_file():
            raise DatasetNotFoundError(f"{image_root / rel}: image listed in {json_path} not found")
        records.append(
            ImageTextRecord(
                key=sanitize_key(str(rel.with_suffix(""))),
                image_path=image_root / rel,
                captions=[c for c in captions if c],
                label=item.get("label"),
                split=split,
            )
        )
    if wanted is not None and not records:
        available = ", ".join(sorted({str(item.get("split")) for item in images if isinstance(item, dict)}))
        asked = ", ".join(repr(s) for s in splits or ())
        raise DatasetFormatError(f"{json_path}: no images in split {asked} (splits: {available})")
    return records


# ---------------------------------------------------------------- class folders


def scan_class_folders(root: str | Path, limit_per_class: int | None = None) -> list[ClassFolder]:
    """The class sub-folders of an image-folder dataset (sorted, hidden ones skipped) with their
    image files and cleaned class names; ``limit_per_class`` keeps the first N images of each."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: image folder dataset not found")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetFormatError(f"{root}: no class sub-folders inside")
    classes = []
    for folder, name in zip(folders, clean_class_names(folders)):
        files = sorted(
            p for p in (root / folder).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        classes.append(ClassFolder(folder, name, files[:limit_per_class] if limit_per_class is not None else files))
    if not any(c.images for c in classes):
        raise DatasetFormatError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return classes


def read_image_folder(
    root: str | Path,
    templates: Sequence[str] = CAPTION_TEMPLATES,
    class_names: dict[str, str] | None = None,
    limit_per_class: int | None = None,
) -> list[ImageTextRecord]:
    """Read a one-folder-per-class set; captions come from ``templates`` filled with the class name
    (``class_names`` maps folder names to other class names)."""
    from rsclip_core.prompts import PromptTemplateError, fill_prompts

    try:
        fill_prompts("x", templates)
    except PromptTemplateError as exc:
        raise DatasetFormatError(f"caption {exc}") from exc
    records: list[ImageTextRecord] = []
    for cls in scan_class_folders(root, limit_per_class):
        name = (class_names or {}).get(cls.folder, cls.name)
        captions = fill_prompts(name, templates)
        for path in cls.images:
            records.append(
                ImageTextRecord(
                    key=sanitize_key(f"{cls.folder}/{path.stem}"),
                    image_path=path,
                    captions=list(captions),
                    label=name,
                )
            )
    return records


# ---------------------------------------------------------------- tables


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
        raise DatasetNotFoundError(f"{path}: table not found")
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
                 templates: Sequence[str] = CAPTION_TEMPLATES) -> list[ImageTextRecord]:
    """Pick the reader from ``path``: ``.json`` Karpathy file, ``.csv/.tsv/.parquet`` table, or a class folder."""
    path = Path(path)
    if path.is_dir():
        records = read_image_folder(path, templates=templates)
    elif path.suffix.lower() == ".json":
        return read_karpathy_json(path, image_root=image_root, splits=splits)
    elif path.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
        records = read_table(path, image_root=image_root)
    elif not path.exists():
        raise DatasetNotFoundError(f"{path}: dataset not found")
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


# ---------------------------------------------------------------- image decoding (PIL, imported here only)


def load_rgb_image(path: str | Path, allow_convert: bool = False) -> tuple[Image.Image, bytes]:
    """Decode an image fully; returns ``(RGB image, file bytes)``.

    Raises :class:`ImageLoadError` for missing, corrupt or truncated files and for non-RGB modes
    (unless ``allow_convert``, which converts L/LA/P/RGBA/CMYK to RGB).
    """
    import io

    from PIL import Image, ImageFile

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
        return img.convert("RGB"), data
    return img, data


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes (as stored in a shard) to an RGB PIL image."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")
