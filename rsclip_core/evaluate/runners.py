"""Evaluation runners: read a dataset, embed it with any ``Encoder``, score it, write reports.

Datasets are read by ``rsclip_core.data.readers`` (torch-free, PIL only to decode images), so
``rsclip eval --model-dir`` works on the light inference install.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rsclip_core.data.readers import (
    DatasetFormatError,
    karpathy_dataset_name,
    read_karpathy_json,
    scan_class_folders,
)
from rsclip_core.evaluate.encoders import Encoder, EvalInputError
from rsclip_core.evaluate.metrics import (
    ensemble_class_embeddings,
    retrieval_markdown,
    retrieval_metrics,
    zero_shot_markdown,
    zero_shot_metrics,
)
from rsclip_core.preprocess import load_images
from rsclip_core.prompts import ZERO_SHOT_TEMPLATES, fill_prompts
from rsclip_core.workdir import atomic_write_text

@dataclass
class RetrievalSet:
    """Images, their captions (flattened) and which image each caption belongs to."""

    name: str
    image_paths: list[Path]
    captions: list[str]
    text_to_image: np.ndarray  # int64 [n_captions]


@dataclass
class ClassificationSet:
    """Image files, integer labels and the class names (folder names and cleaned text)."""

    name: str
    image_paths: list[Path]
    labels: np.ndarray  # int64 [n_images]
    folder_names: list[str]
    class_names: list[str]


def read_karpathy_split(
    json_path: str | Path, images_dir: str | Path | None = None, split: str = "test", limit: int | None = None
) -> RetrievalSet:
    """A Karpathy-format split as a ``RetrievalSet`` (read by ``rsclip_core.data.readers``).

    Images without captions are left out; ``limit`` keeps the first ``limit`` images of the split
    (with all their captions); every listed image must exist.
    """
    records = read_karpathy_json(json_path, images_dir, splits=[split], check_images=True)
    records = [r for r in records if r.captions][:limit]
    if not records:
        raise DatasetFormatError(f"{json_path}: no captioned images in split {split!r}")
    captions = [c for r in records for c in r.captions]
    owners = [i for i, r in enumerate(records) for _ in r.captions]
    name = f"{karpathy_dataset_name(json_path)}-{split}"
    return RetrievalSet(name, [r.image_path for r in records], captions, np.asarray(owners, dtype=np.int64))


def read_classification_folder(root: str | Path, limit_per_class: int | None = None) -> ClassificationSet:
    """An image-folder dataset (one sub-folder per class, read by ``rsclip_core.data.readers``) with
    cleaned class names, as a ``ClassificationSet``."""
    classes = scan_class_folders(root, limit_per_class)
    paths = [path for c in classes for path in c.images]
    labels = [index for index, c in enumerate(classes) for _ in c.images]
    return ClassificationSet(Path(root).name, paths, np.asarray(labels, dtype=np.int64),
                             [c.folder for c in classes], [c.name for c in classes])


def embed_image_files(
    encoder: Encoder, paths: Sequence[Path], batch_size: int = 64, progress: bool = True, desc: str = "images"
) -> np.ndarray:
    """L2-normalised embeddings of image files, batch by batch."""
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress):
        chunks.append(encoder.encode_images(load_images(paths[start : start + batch_size], encoder.preprocess)))
    return np.concatenate(chunks).astype(np.float32)


def embed_texts(
    encoder: Encoder, texts: Sequence[str], batch_size: int = 256, progress: bool = True, desc: str = "texts"
) -> np.ndarray:
    """L2-normalised embeddings of strings, batch by batch."""
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
        chunks.append(encoder.encode_text(list(texts[start : start + batch_size])))
    return np.concatenate(chunks).astype(np.float32)


def evaluate_retrieval(
    encoder: Encoder, dataset: RetrievalSet, batch_size: int = 64, progress: bool = True
) -> dict[str, Any]:
    """Image<->text retrieval metrics (RS protocol) of ``encoder`` on ``dataset``."""
    image_emb = embed_image_files(encoder, dataset.image_paths, batch_size, progress, f"{dataset.name} images")
    text_emb = embed_texts(encoder, dataset.captions, max(batch_size, 128), progress, f"{dataset.name} captions")
    result: dict[str, Any] = retrieval_metrics(image_emb @ text_emb.T, dataset.text_to_image)
    result["dataset"] = dataset.name
    return result


def zero_shot_classifier(
    encoder: Encoder, class_names: Sequence[str], templates: Sequence[str] = ZERO_SHOT_TEMPLATES
) -> np.ndarray:
    """[n_classes, D] unit vectors: each class's prompt-ensemble embedding."""
    per_class = [encoder.encode_text(fill_prompts(name, templates)) for name in class_names]
    return ensemble_class_embeddings(per_class)


def evaluate_zero_shot(
    encoder: Encoder,
    dataset: ClassificationSet,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot classification metrics of ``encoder`` on an image-folder dataset."""
    classifier = zero_shot_classifier(encoder, dataset.class_names, templates)
    image_emb = embed_image_files(encoder, dataset.image_paths, batch_size, progress, f"{dataset.name} images")
    result = zero_shot_metrics(image_emb @ classifier.T, dataset.labels, dataset.class_names)
    result["dataset"] = dataset.name
    result["templates"] = list(templates)
    return result


# ---------------------------------------------------------------- reports


def save_confusion_matrix(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """A row-normalised confusion-matrix PNG (matplotlib, Agg backend) of a zero-shot result."""
    try:
        import matplotlib
    except ImportError as exc:
        raise EvalInputError("the confusion-matrix plot needs matplotlib: pip install 'rsclip[eval]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(result["confusion"], dtype=np.float64)
    names = result["class_names"]
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5)), dpi=120)
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    color = "white" if rows[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title or f"{result.get('dataset', '')} zero-shot: top-1 {result['top1']:.1f}%", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def results_markdown(results: dict[str, Any], model_label: str) -> str:
    """Markdown for a ``{"retrieval": {...}, "zero_shot": {...}}`` results dict."""
    parts = [f"# Evaluation of {model_label}", ""]
    retrieval = results.get("retrieval", {})
    if retrieval:
        parts += ["## Retrieval (RS protocol, %)", "", retrieval_markdown(retrieval), ""]
    zero_shot = results.get("zero_shot", {})
    if zero_shot:
        parts += ["## Zero-shot classification (%)", "", zero_shot_markdown(zero_shot), ""]
    return "\n".join(parts)


def write_results(results: dict[str, Any], out_dir: str | Path, model_label: str) -> dict[str, Path]:
    """``results.json`` + ``results.md`` + one confusion-matrix PNG per zero-shot dataset."""
    out_dir = Path(out_dir)
    written = {}
    for name, result in results.get("zero_shot", {}).items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        written[f"confusion_{name}"] = save_confusion_matrix(result, out_dir / f"confusion_{safe}.png")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results, model_label))
    written["json"] = out_dir / "results.json"
    written["markdown"] = out_dir / "results.md"
    return written
