"""Torch-free retrieval and zero-shot metrics on numpy similarity matrices.

Retrieval follows the protocol of the remote-sensing retrieval tables (RSICD/RSITMD as reported by
AMFMN, RemoteCLIP, GeoRSCLIP): every image has several (usually 5) captions; image->text counts a
hit at k when *any* of the image's captions is among the top-k texts; text->image counts a hit when
the caption's own image is among the top-k images; ``mR`` is the mean of the six recalls, in percent.

Exact ties (the same caption string on two images, a degenerate model) are broken uniformly at
random and the reported recall is its expectation, so results do not depend on item order and a
constant similarity matrix scores exactly at chance. The same holds for zero-shot accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RETRIEVAL_KS = (1, 5, 10)


class MetricInputError(ValueError):
    """Inputs to a metric function have inconsistent shapes or invalid values."""


def _as_finite_2d(name: str, array: Any) -> np.ndarray:
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim != 2:
        raise MetricInputError(f"{name}: expected a 2-D matrix, got shape {matrix.shape}")
    if matrix.size == 0:
        raise MetricInputError(f"{name}: empty matrix")
    if not np.all(np.isfinite(matrix)):
        raise MetricInputError(f"{name}: contains NaN or infinite values")
    return matrix


def _check_retrieval_inputs(sim: Any, text_to_image: Any) -> tuple[np.ndarray, np.ndarray]:
    matrix = _as_finite_2d("sim", sim)
    n_images, n_texts = matrix.shape
    owners = np.asarray(text_to_image)
    if owners.shape != (n_texts,):
        raise MetricInputError(f"text_to_image: expected shape ({n_texts},) to match sim, got {owners.shape}")
    if not np.issubdtype(owners.dtype, np.integer):
        raise MetricInputError(f"text_to_image: expected integer image indices, got dtype {owners.dtype}")
    if owners.min() < 0 or owners.max() >= n_images:
        raise MetricInputError(f"text_to_image: image indices must lie in [0, {n_images - 1}]")
    captions_per_image = np.bincount(owners, minlength=n_images)
    if np.any(captions_per_image == 0):
        missing = int(np.flatnonzero(captions_per_image == 0)[0])
        raise MetricInputError(f"text_to_image: image {missing} has no caption")
    return matrix, owners.astype(np.int64)


def _tie_counts(sim: np.ndarray, owners: np.ndarray) -> dict[str, np.ndarray]:
    """Per image (i2t) and per text (t2i): wrong items scoring above / equal to the correct one."""
    n_images, n_texts = sim.shape
    is_match = np.zeros((n_images, n_texts), dtype=bool)
    is_match[owners, np.arange(n_texts)] = True
    best = np.where(is_match, sim, -np.inf).max(axis=1, keepdims=True)
    own = sim[owners, np.arange(n_texts)][None, :]
    return {
        "i2t_above": ((sim > best) & ~is_match).sum(axis=1),
        "i2t_tied_wrong": ((sim == best) & ~is_match).sum(axis=1),
        "i2t_tied_right": ((sim == best) & is_match).sum(axis=1),
        "t2i_above": (sim > own).sum(axis=0),
        "t2i_tied_wrong": (sim == own).sum(axis=0) - 1,  # minus the text's own image
    }


def retrieval_ranks(sim: Any, text_to_image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Expected 0-based ranks of the first correct match, per image (i2t) and per text (t2i).

    ``sim[i, t]`` is the similarity of image ``i`` and text ``t``; ``text_to_image[t]`` is the index
    of the image that caption ``t`` describes. Ties are broken uniformly at random; the rank is the
    expectation over that (no tie: the plain rank).
    """
    matrix, owners = _check_retrieval_inputs(sim, text_to_image)
    c = _tie_counts(matrix, owners)
    i2t = c["i2t_above"] + c["i2t_tied_wrong"] / (c["i2t_tied_right"] + 1.0)
    t2i = c["t2i_above"] + c["t2i_tied_wrong"] / 2.0
    return i2t.astype(np.float64), t2i.astype(np.float64)


def retrieval_metrics(sim: Any, text_to_image: Any, ks: Sequence[int] = RETRIEVAL_KS) -> dict[str, float]:
    """Image->text and text->image Recall@k (percent) and ``mR``, the mean of all of them.

    Returns keys ``i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR`` (for the default ``ks``),
    plus ``i2t_median_rank``/``t2i_median_rank`` (1-based) and ``n_images``/``n_texts``.

    Exactly tied scores (e.g. the same caption string on two images, or a degenerate model) are
    broken uniformly at random and the recall is its *expectation*: deterministic, independent of
    item order, and a constant similarity matrix scores exactly at chance.
    """
    matrix, owners = _check_retrieval_inputs(sim, text_to_image)
    c = _tie_counts(matrix, owners)
    result: dict[str, float] = {}
    recalls = []
    for k in ks:
        # i2t: the tie block (tied wrong + tied right captions) is randomly ordered after the
        # strictly better wrong ones; a hit needs a right caption among its first m = k - above slots.
        m = k - c["i2t_above"]
        tied_w, tied_r = c["i2t_tied_wrong"].astype(np.float64), c["i2t_tied_right"].astype(np.float64)
        p_miss = np.ones_like(tied_w)
        for j in range(k):
            step = np.where(j < m, np.clip(tied_w - j, 0, None) / np.maximum(tied_w + tied_r - j, 1), 1.0)
            p_miss = p_miss * step
        hit = np.where(m <= 0, 0.0, 1.0 - p_miss)
        value = 100.0 * float(np.mean(hit))
        result[f"i2t_r{k}"] = value
        recalls.append(value)
    for k in ks:
        hit = np.clip((k - c["t2i_above"]) / (c["t2i_tied_wrong"] + 1.0), 0.0, 1.0)
        value = 100.0 * float(np.mean(hit))
        result[f"t2i_r{k}"] = value
        recalls.append(value)
    # keep the key order i2t..., t2i..., as in the published tables
    i2t_ranks, t2i_ranks = retrieval_ranks(matrix, owners)
    result["mR"] = float(np.mean(recalls))
    result["i2t_median_rank"] = float(np.median(i2t_ranks) + 1)
    result["t2i_median_rank"] = float(np.median(t2i_ranks) + 1)
    result["n_images"] = int(matrix.shape[0])
    result["n_texts"] = int(matrix.shape[1])
    return result


def zero_shot_metrics(logits: Any, labels: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent), per-class accuracy and the confusion matrix.

    ``logits[n, c]`` scores image ``n`` against class ``c``; ``labels[n]`` is the true class index.
    Exact ties are broken uniformly at random and accuracies are their expectation. ``top5`` uses
    ``min(5, n_classes)``. The confusion matrix (true classes as rows, predicted as columns) counts
    the arg-max prediction (first class on a tie).
    """
    scores = _as_finite_2d("logits", logits)
    n_samples, n_classes = scores.shape
    names = [str(name) for name in class_names]
    if len(names) != n_classes:
        raise MetricInputError(f"class_names: {len(names)} names for {n_classes} logit columns")
    truth = np.asarray(labels)
    if truth.shape != (n_samples,):
        raise MetricInputError(f"labels: expected shape ({n_samples},) to match logits, got {truth.shape}")
    if not np.issubdtype(truth.dtype, np.integer):
        raise MetricInputError(f"labels: expected integer class indices, got dtype {truth.dtype}")
    if truth.min() < 0 or truth.max() >= n_classes:
        raise MetricInputError(f"labels: class indices must lie in [0, {n_classes - 1}]")

    true_score = scores[np.arange(n_samples), truth][:, None]
    above = (scores > true_score).sum(axis=1)
    tied_wrong = (scores == true_score).sum(axis=1) - 1
    top5_k = min(5, n_classes)

    def expected_hit(k: int) -> np.ndarray:  # ties broken uniformly at random
        return np.clip((k - above) / (tied_wrong + 1.0), 0.0, 1.0)

    top1_hit = expected_hit(1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (truth, scores.argmax(axis=1)), 1)
    support = np.bincount(truth, minlength=n_classes)
    per_class = {
        name: (100.0 * float(top1_hit[truth == c].mean())) if support[c] else None for c, name in enumerate(names)
    }
    present = [value for value in per_class.values() if value is not None]
    return {
        "top1": 100.0 * float(np.mean(top1_hit)),
        "top5": 100.0 * float(np.mean(expected_hit(top5_k))),
        "top5_k": top5_k,
        "mean_per_class": float(np.mean(present)),
        "per_class": per_class,
        "support": {name: int(support[c]) for c, name in enumerate(names)},
        "confusion": confusion.tolist(),
        "class_names": names,
        "n_samples": int(n_samples),
    }


# ---------------------------------------------------------------- prompt ensembles


def l2_normalize(array: Any, axis: int = -1) -> np.ndarray:
    """Unit-length rows (zero rows stay zero)."""
    values = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(values, axis=axis, keepdims=True)
    return values / np.maximum(norms, 1e-12)


def ensemble_class_embeddings(prompt_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """One unit vector per class: the normalised mean of its normalised prompt embeddings
    (the prompt ensemble of CLIP / open_clip's zero-shot classifier)."""
    rows = [l2_normalize(l2_normalize(emb).mean(axis=0)) for emb in prompt_embeddings]
    return np.stack(rows).astype(np.float32)


# ---------------------------------------------------------------- reporting

RETRIEVAL_COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
RETRIEVAL_HEADERS = ("I→T R@1", "I→T R@5", "I→T R@10", "T→I R@1", "T→I R@5", "T→I R@10", "mR")


def retrieval_markdown(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table, one row per named result (model or dataset)."""
    lines = ["| | " + " | ".join(RETRIEVAL_HEADERS) + " |", "|---" * (len(RETRIEVAL_HEADERS) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[key]:.2f}" for key in RETRIEVAL_COLUMNS) + " |")
    return "\n".join(lines)


def zero_shot_markdown(rows: dict[str, dict[str, Any]], per_class: bool = True) -> str:
    """A markdown table of top-1/top-5/mean per-class accuracy (+ per-class tables)."""
    lines = ["| | top-1 | top-5 | mean per-class |", "|---|---|---|---|"]
    for name, metrics in rows.items():
        lines.append(
            f"| {name} | {metrics['top1']:.2f} | {metrics['top5']:.2f} | {metrics['mean_per_class']:.2f} |"
        )
    if per_class:
        for name, metrics in rows.items():
            lines += ["", f"Per-class accuracy ({name}):", "", "| class | accuracy | images |", "|---|---|---|"]
            for cls, acc in metrics["per_class"].items():
                shown = "–" if acc is None else f"{acc:.1f}"
                lines.append(f"| {cls} | {shown} | {metrics['support'][cls]} |")
    return "\n".join(lines)
