"""Evaluation runners: read a dataset, embed it with any ``Encoder``, score it, write reports.

Torch-free (the readers here only parse JSON and list folders), so ``rsclip eval --model-dir``
works on the light inference install.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rsclip_core.evaluate.encoders import Encoder, EvalInputError
from rsclip_core.evaluate.metrics import (
    build_prompts,
    clean_class_names,
    ensemble_class_embeddings,
    retrieval_markdown,
    retrieval_metrics,
    zero_shot_markdown,
    zero_shot_metrics,
)
from rsclip_core.preprocess import load_images
from rsclip_core.spec import DEFAULT_PROMPT_TEMPLATES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


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
    json_path: str | Path, images_dir: str | Path, split: str = "test", limit: int | None = None
) -> RetrievalSet:
    """A Karpathy-format split (``images[].filename/split/sentences[].raw``) as a ``RetrievalSet``.

    ``limit`` keeps the first ``limit`` images of the split (with all their captions).
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    if not json_path.is_file():
        raise EvalInputError(f"{json_path}: Karpathy JSON not found")
    if not images_dir.is_dir():
        raise EvalInputError(f"{images_dir}: images folder not found")
    try:
        data = json.loads(json_path.read_text())
        entries = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EvalInputError(f"{json_path}: not a Karpathy-format JSON ({exc})") from exc
    paths: list[Path] = []
    captions: list[str] = []
    owners: list[int] = []
    for entry in entries:
        if entry.get("split") != split:
            continue
        if limit is not None and len(paths) >= limit:
            break
        texts = [s["raw"].strip() for s in entry.get("sentences", []) if s.get("raw", "").strip()]
        if not texts:
            continue
        path = images_dir / entry["filename"]
        if not path.is_file():
            raise EvalInputError(f"{path}: image listed in {json_path} not found")
        owners.extend([len(paths)] * len(texts))
        captions.extend(texts)
        paths.append(path)
    if not paths:
        available = sorted({str(e.get("split")) for e in entries})
        raise EvalInputError(f"{json_path}: no images in split {split!r} (splits: {', '.join(available)})")
    name = f"{data.get('dataset', json_path.stem)}-{split}"
    return RetrievalSet(name, paths, captions, np.asarray(owners, dtype=np.int64))


def read_image_folder(root: str | Path, limit_per_class: int | None = None) -> ClassificationSet:
    """An image-folder dataset (one sub-folder per class) with cleaned class names."""
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"{root}: image folder dataset not found")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EvalInputError(f"{root}: no class sub-folders")
    paths: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(folders):
        files = sorted(
            p for p in (root / folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if limit_per_class is not None:
            files = files[:limit_per_class]
        paths.extend(files)
        labels.extend([index] * len(files))
    if not paths:
        raise EvalInputError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return ClassificationSet(root.name, paths, np.asarray(labels, dtype=np.int64), folders, clean_class_names(folders))


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
    encoder: Encoder, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_PROMPT_TEMPLATES
) -> np.ndarray:
    """[n_classes, D] unit vectors: each class's prompt-ensemble embedding."""
    per_class = [encoder.encode_text(build_prompts(name, templates)) for name in class_names]
    return ensemble_class_embeddings(per_class)


def evaluate_zero_shot(
    encoder: Encoder,
    dataset: ClassificationSet,
    templates: Sequence[str] = DEFAULT_PROMPT_TEMPLATES,
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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
