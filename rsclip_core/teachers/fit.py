"""LiT-style fitting of the offline teachers on cached locked-tower features.

The towers (:mod:`rsclip_core.teachers.towers`) stay locked: their features are computed once per
image *view* (the centre view plus a few replayable augmented views, "feature augmentation") and per
caption, cached on disk in resumable chunks, and only the projection heads (linear or residual MLP)
and the temperature are trained with the symmetric CLIP loss. Model selection uses a validation
split (RSICD ``val``); test data is only ever *evaluated*.

The fitted heads are saved with :func:`rsclip_core.teachers.heads.save_teacher_checkpoint` (format
``rsclip-offline-teacher/1``: head weights plus the tower names, image size, embed dim, head and fit
configs and the validation metrics); :func:`rsclip_core.teachers.offline.load_offline_teacher` turns
such a file into the registered ``teacher-*`` model, for reinforcement and export alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rsclip_core.data.augment import AugmentationConfig, center_view_params, reapply, sample_params
from rsclip_core.data.readers import ImageTextRecord, load_rgb_image
from rsclip_core.teachers.heads import HeadConfig, TeacherFitError, build_head
from rsclip_core.workdir import atomic_write_bytes

#: feature-augmentation views (replayable): geometric only + mild colour, no RandAugment
FEATURE_AUG = AugmentationConfig(
    scale=(0.5, 1.0), randaugment_p=0.0, color_jitter=(0.2, 0.2, 0.2, 0.0), color_jitter_p=0.5
)


# --- feature cache -------------------------------------------------------------------------------


def view_params(record: ImageTextRecord, view: int, width: int, height: int, image_size: int,
                seed: int = 0) -> dict[str, Any]:
    """View 0 is the centre view; view j > 0 a seeded replayable augmentation of the record."""
    if view == 0:
        return center_view_params(width, height, image_size)
    cfg = AugmentationConfig(**{**asdict(FEATURE_AUG), "output_size": image_size})
    rng = random.Random(f"{seed}/{record.key}/{view}")
    return sample_params(width, height, rng, cfg)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def cached_image_features(
    records: Sequence[ImageTextRecord],
    tower_name: str,
    cache_dir: str | Path,
    name: str,
    view: int = 0,
    image_size: int = 224,
    batch_size: int = 32,
    chunk_size: int = 256,
    progress: bool = True,
    tower: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """float16 [N, C] pooled tower features of ``records`` (one view), cached under ``cache_dir``.

    The tower runs through onnxruntime (:class:`~rsclip_core.teachers.towers.OnnxImageTower`).
    Work is saved per chunk of ``chunk_size`` images (atomic writes), so a killed run resumes.
    Unreadable images get a zero row (and are reported on stderr).
    """
    import sys

    import torch
    from tqdm import tqdm

    from rsclip_core.teachers.towers import OnnxImageTower, images_to_tensor, tower_preprocess

    cache = Path(cache_dir) / f"{tower_name}-{image_size}"
    cache.mkdir(parents=True, exist_ok=True)
    keys_hash = hashlib.sha256("\n".join(r.key for r in records).encode()).hexdigest()[:12]
    final = cache / f"{name}-v{view}-{keys_hash}.npy"
    if final.exists():
        return np.load(final)
    n_chunks = math.ceil(len(records) / chunk_size)
    chunk_paths = [cache / f".{final.stem}.chunk{c:04d}.npy" for c in range(n_chunks)]
    model = tower
    preprocess = tower_preprocess(image_size)
    bar = tqdm(total=len(records), desc=f"{tower_name} {name} v{view}", unit="img", disable=not progress)
    for c, chunk_path in enumerate(chunk_paths):
        chunk = records[c * chunk_size:(c + 1) * chunk_size]
        if chunk_path.exists():
            bar.update(len(chunk))
            continue
        if model is None:
            model = OnnxImageTower(tower_name, cache_dir=Path(cache_dir).parent)
        feats = []
        for b in range(0, len(chunk), batch_size):
            views: list[Any] = []
            ok: list[bool] = []
            for r in chunk[b:b + batch_size]:
                try:
                    img, _ = load_rgb_image(r.image_path, allow_convert=True)
                    views.append(reapply(img, view_params(r, view, img.width, img.height, image_size)))
                    ok.append(True)
                except ValueError as exc:
                    print(f"warning: {exc}", file=sys.stderr)
                    views.append(None)
                    ok.append(False)
            good = [v for v in views if v is not None]
            f: np.ndarray = np.zeros((0, 1), np.float32)
            if good:
                with torch.inference_mode():
                    f = np.asarray(model(images_to_tensor(good, preprocess)), dtype=np.float32)
            out = np.zeros((len(views), f.shape[1] if good else getattr(model, "num_features", 1)), np.float16)
            if good:
                out[np.array(ok)] = f.astype(np.float16)
            feats.append(out)
            bar.update(len(views))
        atomic_write_bytes(chunk_path, _npy_bytes(np.concatenate(feats)))
    bar.close()
    array = np.concatenate([np.load(p) for p in chunk_paths]) if chunk_paths else np.zeros((0, 1), np.float16)
    atomic_write_bytes(final, _npy_bytes(array))
    for p in chunk_paths:
        p.unlink(missing_ok=True)
    return array


def cached_text_features(texts: Sequence[str], cache_dir: str | Path, tower_name: str = "all-MiniLM-L6-v2",
                         progress: bool = True) -> np.ndarray:
    """float32 [N, 384] MiniLM features of ``texts``; a text->row store under ``cache_dir`` grows as needed."""
    import fcntl

    from rsclip_core.teachers.towers import encode_texts_with_tower, load_text_tower

    cache = Path(cache_dir) / tower_name
    cache.mkdir(parents=True, exist_ok=True)
    index_path, feats_path = cache / "texts.json", cache / "features.npy"
    with open(cache / ".lock", "w") as lock:  # texts.json + features.npy change together
        fcntl.flock(lock, fcntl.LOCK_EX)
        known: list[str] = json.loads(index_path.read_text()) if index_path.exists() else []
        feats = np.load(feats_path) if feats_path.exists() and known else np.zeros((0, 384), np.float32)
        if len(known) != len(feats):
            raise TeacherFitError(f"{cache}: texts.json and features.npy disagree; delete the folder")
        row = {t: i for i, t in enumerate(known)}
        missing = sorted({t for t in texts if t not in row})
        if missing:
            tower = load_text_tower(tower_name)
            new = []
            step = 4096
            for i in range(0, len(missing), step):
                new.append(encode_texts_with_tower(tower, missing[i:i + step]))
                if progress:
                    print(f"text features: {min(i + step, len(missing))}/{len(missing)}", flush=True)
            feats = np.concatenate([feats, *new]).astype(np.float32)
            known = known + missing
            atomic_write_bytes(feats_path, _npy_bytes(feats))
            atomic_write_bytes(index_path, json.dumps(known).encode())
            row = {t: i for i, t in enumerate(known)}
    return feats[[row[t] for t in texts]]


# --- heads and fitting ---------------------------------------------------------------------------


@dataclass
class FitConfig:
    embed_dim: int = 256
    image_head: HeadConfig = field(default_factory=HeadConfig)
    text_head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    init_temperature: float = 0.07
    label_caption_prob: float = 0.1  # replace the caption by a scene-label template caption
    feature_noise: float = 0.0
    seed: int = 0


@dataclass
class FitData:
    """Cached features for fitting: image views [V][N, C], caption features [M, 384], owners."""

    image_views: list[np.ndarray]
    caption_feats: np.ndarray
    caption_owner: np.ndarray  # [M] image index of each caption
    label_feats: np.ndarray | None = None  # [L, T, 384] label-prompt features (T templates)
    image_label: np.ndarray | None = None  # [N] index into label_feats or -1


@dataclass
class EvalData:
    image_feats: np.ndarray
    caption_feats: np.ndarray
    caption_owner: np.ndarray


def encode_with_heads(heads: Any, feats: np.ndarray, which: str) -> np.ndarray:
    import torch

    head = heads[which]
    head.eval()
    with torch.inference_mode():
        out = head(torch.from_numpy(np.asarray(feats, dtype=np.float32)))
        out = torch.nn.functional.normalize(out, dim=-1)
    return out.numpy()


def retrieval_from_features(heads: Any, data: EvalData) -> dict[str, float]:
    from rsclip_core.evaluate.metrics import retrieval_metrics

    img = encode_with_heads(heads, data.image_feats, "image")
    txt = encode_with_heads(heads, data.caption_feats, "text")
    return retrieval_metrics(img @ txt.T, data.caption_owner.astype(np.int64))


def fit_heads(
    data: FitData,
    val: EvalData,
    cfg: FitConfig,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """Train image/text heads + temperature with the CLIP loss; keep the best-val-mR state."""
    import copy

    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    img_dim = data.image_views[0].shape[1]
    txt_dim = data.caption_feats.shape[1]
    heads = nn.ModuleDict({
        "image": build_head(img_dim, cfg.embed_dim, cfg.image_head),
        "text": build_head(txt_dim, cfg.embed_dim, cfg.text_head),
    })
    logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
    params = list(heads.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    views = torch.from_numpy(np.stack([v.astype(np.float32) for v in data.image_views]))  # [V, N, C]
    caps = torch.from_numpy(data.caption_feats.astype(np.float32))
    n = views.shape[1]
    owner = np.asarray(data.caption_owner, dtype=np.int64)
    order = np.argsort(owner, kind="stable")  # caption rows grouped by image
    count = np.bincount(owner, minlength=n)
    if (count == 0).any():
        raise TeacherFitError(f"image {int(np.flatnonzero(count == 0)[0])} has no caption")
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    # identical caption texts (RSICD repeats many) are positives for every image that has them
    text_id = np.unique(data.caption_feats, axis=0, return_inverse=True)[1].reshape(-1)
    labels = torch.from_numpy(data.label_feats.astype(np.float32)) if data.label_feats is not None else None
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    best: dict[str, Any] = {"mR": -1.0}
    best_state = None
    history = []
    t0 = time.time()
    for epoch in range(cfg.epochs):
        heads.train()
        perm = rng.permutation(n)
        losses = []
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            v = rng.integers(0, views.shape[0], size=len(idx))
            x = views[torch.from_numpy(v), torch.from_numpy(idx)]
            cap_rows = order[first[idx] + (rng.random(len(idx)) * count[idx]).astype(np.int64)]
            t = caps[torch.from_numpy(cap_rows)]
            if labels is not None and data.image_label is not None and cfg.label_caption_prob > 0:
                use = (rng.random(len(idx)) < cfg.label_caption_prob) & (data.image_label[idx] >= 0)
                if use.any():
                    t = t.clone()
                    tmpl = rng.integers(0, labels.shape[1], size=int(use.sum()))
                    t[torch.from_numpy(use)] = labels[data.image_label[idx][use], tmpl]
            if cfg.feature_noise > 0:
                x = x + cfg.feature_noise * torch.randn_like(x) * x.std()
            zi = nn.functional.normalize(heads["image"](x), dim=-1)
            zt = nn.functional.normalize(heads["text"](t), dim=-1)
            logits = logit_scale.exp().clamp(max=100) * zi @ zt.T
            # a caption text drawn for several images in the batch is a multi-positive: soft targets
            tid = text_id[cap_rows]
            same = torch.from_numpy(tid[:, None] == tid[None, :]).float()
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                          + torch.sum(-target * logits.log_softmax(0).T, 1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        metrics = retrieval_from_features(heads, val)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_mR": metrics["mR"],
                        "temperature": float(1 / logit_scale.detach().exp())})
        if metrics["mR"] > best["mR"]:
            best = {**metrics, "epoch": epoch + 1}
            best_state = copy.deepcopy(heads.state_dict()), float(logit_scale.detach())
        log(f"epoch {epoch + 1:3d} loss {np.mean(losses):.4f} val mR {metrics['mR']:.2f} "
            f"(best {best['mR']:.2f} @ {best['epoch']}) T={float(1 / logit_scale.detach().exp()):.4f} {time.time() - t0:.0f}s")
    assert best_state is not None
    heads.load_state_dict(best_state[0])
    heads.eval()
    return heads, {"val": best, "history": history, "logit_scale": best_state[1]}
