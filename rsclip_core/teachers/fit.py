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
import io
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


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (for atomic cache writes)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def cached_view_arrays(
    records: Sequence[ImageTextRecord],
    cache: Path,
    stem: str,
    compute: Callable[[list[Any]], dict[str, np.ndarray]],
    view: int = 0,
    image_size: int = 224,
    batch_size: int = 32,
    chunk_size: int = 256,
    progress: bool = True,
    desc: str = "",
    transform: Callable[[Any], Any] | None = None,
) -> dict[str, np.ndarray]:
    """float16 arrays (one per output of ``compute``) of ``records``' view ``view``, cached in ``cache``.

    ``compute`` maps a batch of PIL views to float arrays keyed by output name (first axis: the
    batch); ``transform`` (e.g. a dihedral transform) is applied to each view first. Work is saved per chunk of ``chunk_size`` images (atomic ``.npz`` writes), so a killed
    run resumes where it stopped; the finished arrays are ``<stem>.<key>.npy`` (read memory-mapped).
    Unreadable images get zero rows (and are reported on stderr).
    """
    import sys

    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    done = cache / f"{stem}.keys.json"
    if done.exists():
        return {k: np.load(cache / f"{stem}.{k}.npy", mmap_mode="r") for k in json.loads(done.read_text())}
    n_chunks = math.ceil(len(records) / chunk_size)
    chunk_paths = [cache / f".{stem}.chunk{c:04d}.npz" for c in range(n_chunks)]
    bar = tqdm(total=len(records), desc=desc or stem, unit="img", disable=not progress)
    for c, chunk_path in enumerate(chunk_paths):
        chunk = records[c * chunk_size:(c + 1) * chunk_size]
        if chunk_path.exists():
            bar.update(len(chunk))
            continue
        parts: dict[str, list[np.ndarray]] = {}
        for b in range(0, len(chunk), batch_size):
            views: list[Any] = []
            ok: list[bool] = []
            ok_idx: np.ndarray
            for r in chunk[b:b + batch_size]:
                try:
                    img, _ = load_rgb_image(r.image_path, allow_convert=True)
                    v = reapply(img, view_params(r, view, img.width, img.height, image_size))
                    views.append(transform(v) if transform is not None else v)
                    ok.append(True)
                except ValueError as exc:
                    print(f"warning: {exc}", file=sys.stderr)
                    ok.append(False)
            if not views:  # a whole batch unreadable: borrow shapes from a black view
                from PIL import Image

                views, ok_idx = [Image.new("RGB", (image_size, image_size))], np.zeros(0, np.int64)
            else:
                ok_idx = np.flatnonzero(ok)
            out = compute(views)
            for k, values in out.items():
                arr = np.asarray(values, dtype=np.float32)
                full = np.zeros((len(ok), *arr.shape[1:]), np.float16)
                full[ok_idx] = arr[:len(ok_idx)].astype(np.float16)
                parts.setdefault(k, []).append(full)
            bar.update(len(ok))
        buf = io.BytesIO()
        np.savez(buf, **{k: np.concatenate(v) for k, v in parts.items()})
        atomic_write_bytes(chunk_path, buf.getvalue())
    bar.close()
    arrays: dict[str, list[np.ndarray]] = {}
    for p in chunk_paths:
        with np.load(p) as z:
            for k in z.files:
                arrays.setdefault(k, []).append(z[k])
    keys = sorted(arrays)
    for k in keys:
        atomic_write_bytes(cache / f"{stem}.{k}.npy", npy_bytes(np.concatenate(arrays[k])))
    atomic_write_bytes(done, json.dumps(keys).encode())
    for p in chunk_paths:
        p.unlink(missing_ok=True)
    return {k: np.load(cache / f"{stem}.{k}.npy", mmap_mode="r") for k in keys}


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

    The tower runs through onnxruntime (:class:`~rsclip_core.teachers.towers.OnnxImageTower`);
    resumable chunks as :func:`cached_view_arrays`.
    """
    import torch

    from rsclip_core.teachers.towers import OnnxImageTower, images_to_tensor, tower_preprocess

    cache = Path(cache_dir) / f"{tower_name}-{image_size}"
    keys_hash = hashlib.sha256("\n".join(r.key for r in records).encode()).hexdigest()[:12]
    stem = f"{name}-v{view}-{keys_hash}"
    legacy = cache / f"{stem}.npy"  # caches written before the chunk helper was shared
    if legacy.exists():
        return np.load(legacy)
    preprocess = tower_preprocess(image_size)
    model: list[Any] = [tower]

    def compute(views: list[Any]) -> dict[str, np.ndarray]:
        if model[0] is None:
            model[0] = OnnxImageTower(tower_name, cache_dir=Path(cache_dir).parent)
        with torch.inference_mode():
            return {"features": np.asarray(model[0](images_to_tensor(views, preprocess)), dtype=np.float32)}

    return np.asarray(cached_view_arrays(records, cache, stem, compute, view, image_size, batch_size, chunk_size,
                                         progress, f"{tower_name} {name} v{view}")["features"])


def cached_text_features(texts: Sequence[str], cache_dir: str | Path, tower_name: str = "all-MiniLM-L6-v2",
                         progress: bool = True) -> np.ndarray:
    """float32 [N, D] text-tower features of ``texts`` (MiniLM: 384, mpnet: 768); a text->row store
    under ``cache_dir/<tower>`` grows as needed."""
    import fcntl

    from rsclip_core.teachers.towers import encode_texts_with_tower, load_text_tower

    cache = Path(cache_dir) / tower_name
    cache.mkdir(parents=True, exist_ok=True)
    index_path, feats_path = cache / "texts.json", cache / "features.npy"
    with open(cache / ".lock", "w") as lock:  # texts.json + features.npy change together
        fcntl.flock(lock, fcntl.LOCK_EX)
        known: list[str] = json.loads(index_path.read_text()) if index_path.exists() else []
        feats = np.load(feats_path) if feats_path.exists() and known else None
        if feats is not None and len(known) != len(feats):
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
            feats = np.concatenate([*([feats] if feats is not None else []), *new]).astype(np.float32)
            known = known + missing
            atomic_write_bytes(feats_path, npy_bytes(feats))
            atomic_write_bytes(index_path, json.dumps(known).encode())
            row = {t: i for i, t in enumerate(known)}
    if feats is None:  # no texts asked, none stored
        return np.zeros((0, 0), np.float32)
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


def multi_positive_clip_loss(zi: Any, zt: Any, logit_scale: Any, text_ids: np.ndarray) -> Any:
    """Symmetric CLIP loss of normalised image/text rows; rows whose caption text is identical
    (``text_ids`` equal; RSICD repeats many) are all positives (soft targets)."""
    import torch

    logits = logit_scale.exp().clamp(max=100) * zi @ zt.T
    same = torch.from_numpy(text_ids[:, None] == text_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.log_softmax(0).T, 1).mean())


@dataclass
class CaptionDraw:
    """One batch's caption choice: a caption row per image, replaced by a label template where
    ``use_label`` (``label_rows`` / ``template``: one entry per replaced image)."""

    caption_rows: np.ndarray
    use_label: np.ndarray
    label_rows: np.ndarray
    template: np.ndarray


class CaptionSampler:
    """One training caption per image of a batch, shared by every teacher fit (heads and tuned tops).

    Captions are grouped by the image that owns them; a batch draws one of each image's captions and,
    with probability ``label_caption_prob``, replaces it by a scene-label template caption. Identical
    caption texts (RSICD repeats many) share an id, so the loss treats them as positives of each other.
    """

    def __init__(self, caption_feats: np.ndarray, caption_owner: np.ndarray, n_images: int,
                 label_feats: np.ndarray | None = None, image_label: np.ndarray | None = None,
                 label_caption_prob: float = 0.0) -> None:
        import torch

        owner = np.asarray(caption_owner, dtype=np.int64)
        self.order = np.argsort(owner, kind="stable")  # caption rows grouped by image
        self.count = np.bincount(owner, minlength=n_images)
        if (self.count == 0).any():
            raise TeacherFitError(f"image {int(np.flatnonzero(self.count == 0)[0])} has no caption")
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.text_id = np.unique(caption_feats, axis=0, return_inverse=True)[1].reshape(-1)
        self.caps = torch.from_numpy(np.asarray(caption_feats, np.float32))
        self.labels = torch.from_numpy(label_feats.astype(np.float32)) if label_feats is not None else None
        self.image_label = image_label
        self.label_caption_prob = label_caption_prob

    def draw(self, idx: np.ndarray, rng: np.random.Generator) -> CaptionDraw:
        """Which caption each image of batch ``idx`` gets (a caption row or a label template)."""
        cap_rows = self.order[self.first[idx] + (rng.random(len(idx)) * self.count[idx]).astype(np.int64)]
        use = np.zeros(len(idx), bool)
        label_rows: np.ndarray = np.zeros(0, np.int64)
        template: np.ndarray = np.zeros(0, np.int64)
        if self.labels is not None and self.image_label is not None and self.label_caption_prob > 0:
            use = (rng.random(len(idx)) < self.label_caption_prob) & (self.image_label[idx] >= 0)
            if use.any():
                template = rng.integers(0, self.labels.shape[1], size=int(use.sum()))
                label_rows = self.image_label[idx][use]
            else:
                use = np.zeros(len(idx), bool)
        return CaptionDraw(cap_rows, use, label_rows, template)

    @staticmethod
    def gather(draw: CaptionDraw, caps: Any, labels: Any = None) -> Any:
        """Rows of ``caps`` ``[M, C]`` (and ``labels`` ``[L, templates, C]``) as ``draw`` chose them:
        the same draw gathers the text features of any tower, or a teacher's caption embeddings."""
        import torch

        t = caps[torch.from_numpy(draw.caption_rows)]
        if draw.use_label.any():
            t = t.clone()
            t[torch.from_numpy(draw.use_label)] = labels[draw.label_rows, draw.template]
        return t

    def sample(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[Any, np.ndarray]:
        """(caption features ``[B, C]`` for images ``idx``, their text ids for the multi-positive loss)."""
        t, text_ids, _ = self.sample_with_draw(idx, rng)
        return t, text_ids

    def sample_with_draw(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[Any, np.ndarray, CaptionDraw]:
        """:meth:`sample` plus the draw, to gather the same captions' rows elsewhere."""
        d = self.draw(idx, rng)
        return self.gather(d, self.caps, self.labels), self.text_id[d.caption_rows], d


class BestEpoch:
    """Keeps the state of the epoch with the best validation mR and logs one line per epoch."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.best: dict[str, Any] = {"mR": -1.0}
        self.state: tuple[dict[str, Any], float] | None = None
        self.history: list[dict[str, Any]] = []
        self.t0 = time.time()

    def update(self, epoch: int, losses: Sequence[float], metrics: dict[str, float], modules: Any,
               logit_scale: Any) -> None:
        """Record epoch ``epoch`` (1-based); snapshot ``modules`` + temperature if it is the best so far."""
        import copy

        temp = float(1 / logit_scale.detach().exp())
        self.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_mR": metrics["mR"],
                             "temperature": temp})
        if metrics["mR"] > self.best["mR"]:
            self.best = {**metrics, "epoch": epoch}
            self.state = copy.deepcopy(modules.state_dict()), float(logit_scale.detach())
        self.log(f"epoch {epoch:3d} loss {np.mean(losses):.4f} val mR {metrics['mR']:.2f} "
                 f"(best {self.best['mR']:.2f} @ {self.best['epoch']}) T={temp:.4f} {time.time() - self.t0:.0f}s")

    def restore(self, modules: Any) -> float:
        """Load the best state into ``modules`` (eval mode); returns its logit scale."""
        assert self.state is not None, "no epoch was recorded"
        modules.load_state_dict(self.state[0])
        modules.eval()
        return self.state[1]


def fit_heads(
    data: FitData,
    val: EvalData,
    cfg: FitConfig,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """Train image/text heads + temperature with the CLIP loss; keep the best-val-mR state."""
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
    n = views.shape[1]
    captions = CaptionSampler(data.caption_feats, data.caption_owner, n, data.label_feats, data.image_label,
                              cfg.label_caption_prob)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    tracker = BestEpoch(log)
    for epoch in range(cfg.epochs):
        heads.train()
        perm = rng.permutation(n)
        losses = []
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            v = rng.integers(0, views.shape[0], size=len(idx))
            x = views[torch.from_numpy(v), torch.from_numpy(idx)]
            t, text_ids = captions.sample(idx, rng)
            if cfg.feature_noise > 0:
                x = x + cfg.feature_noise * torch.randn_like(x) * x.std()
            zi = nn.functional.normalize(heads["image"](x), dim=-1)
            zt = nn.functional.normalize(heads["text"](t), dim=-1)
            loss = multi_positive_clip_loss(zi, zt, logit_scale, text_ids)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        tracker.update(epoch + 1, losses, retrieval_from_features(heads, val), heads, logit_scale)
    scale = tracker.restore(heads)
    return heads, {"val": tracker.best, "history": tracker.history, "logit_scale": scale}
