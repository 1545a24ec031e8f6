"""The training loop: plain CLIP, reinforced (stored teacher embeddings) and online distillation.

One code path for the three modes, so their step times and learning curves compare fairly:

* ``clip``       lambda = 0, real captions only (what you would do without a reinforced dataset);
* ``reinforced`` replay one stored augmentation per image, one real + one synthetic caption per
                 image, targets = the teachers' stored embeddings (MobileCLIP's DataCompDR recipe);
* ``online``     the same, but the teachers embed the replayed view and the captions live, every step
                 (what storing the knowledge saves).

Per micro-batch: one forward through the (DDP-wrapped) model on the images and the real + synthetic
captions, ``loss = L(real batch) + L(synthetic batch)`` with ``L`` from :mod:`.loss`, embeddings
gathered across ranks (open_clip style: no gradient through other ranks' copies). AdamW, linear
warmup + cosine, gradient accumulation, bf16 autocast where the device supports it, gradient
clipping, optional EMA (timm ``ModelEmaV3``), optional negative-recycling queue. Checkpoints hold
everything needed for ``resume=True`` to continue the same run bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from rsclip_core.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_torch_save,
    read_checkpoint,
    rng_state,
    set_rng_state,
)
from rsclip_core.train.data import (
    ItemConfig,
    ReinforcedTrainSet,
    ResumableBatchSampler,
    ShardStore,
    TrainDataError,
    make_collate,
)
from rsclip_core.train.loss import NegativeQueue, reinforced_loss

MODES = ("clip", "reinforced", "online")
LOG_FILE = "train_log.jsonl"
LAST_CHECKPOINT = "last.pt"
FINAL_WEIGHTS = "model.pt"
CONFIG_FILE = "train_config.json"


class TrainConfigError(ValueError):
    """An invalid training configuration (message names the option)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    data: str  # reinforced dataset folder (manifest.json + shard-*.tar)
    model: str  # registered student config name
    output: str  # run folder: checkpoints, JSONL log, config
    mode: str = "reinforced"  # clip | reinforced | online
    lam: float = 1.0  # weight of the distillation term (ignored in mode clip: 0)
    synthetic: bool | None = None  # synthetic-caption batch (default: on unless mode clip)
    teachers: list[str] | None = None  # subset of the manifest's teachers (default: all)
    teacher_logit_scale: float | None = None  # tau_k for every teacher without its own entry below;
    # None: each teacher's own learned scale (manifest), 100 (CLIP's) where none is recorded
    teacher_logit_scales: dict[str, float] = field(default_factory=dict)
    online_teacher_specs: list[str] | None = None  # mode online: teacher specs (default: from the manifest)
    batch_size: int = 32  # per rank and micro-batch
    accum_steps: int = 1
    steps: int = 1000  # optimizer steps
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    precision: str = "auto"  # auto (bf16 on GPUs that support it, else fp32) | fp32 | bf16
    ema_decay: float | None = None
    queue_size: int = 0  # recycled negatives per batch kind (0 = off)
    image_size: int | None = None  # train at another resolution than the model config's
    init_checkpoint: str | None = None  # start from these weights
    pretrained_towers: bool = True
    seed: int = 0
    num_workers: int = 0
    log_every: int = 1
    checkpoint_every: int = 100
    device: str = "auto"
    distributed_gather: bool = True

    def resolved(self) -> TrainConfig:
        """Check values and fill mode-dependent defaults."""
        cfg = dataclasses.replace(self)
        if cfg.mode not in MODES:
            raise TrainConfigError(f"--mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
        if cfg.mode == "clip":
            cfg.lam = 0.0
        if cfg.synthetic is None:
            cfg.synthetic = cfg.mode != "clip"
        if not 0.0 <= cfg.lam <= 1.0:
            raise TrainConfigError(f"--lam: must lie in [0, 1], got {cfg.lam}")
        if cfg.mode != "clip" and cfg.lam == 0.0:
            raise TrainConfigError("--lam 0 means no distillation: use --mode clip")
        for name, value, low in (
            ("--batch-size", cfg.batch_size, 2),
            ("--accum-steps", cfg.accum_steps, 1),
            ("--steps", cfg.steps, 1),
            ("--log-every", cfg.log_every, 1),
            ("--checkpoint-every", cfg.checkpoint_every, 1),
        ):
            if value < low:
                raise TrainConfigError(f"{name}: must be >= {low}, got {value}")
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise TrainConfigError(f"--precision: {cfg.precision!r} is not auto, fp32 or bf16")
        if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
            raise TrainConfigError(f"--ema-decay: must lie in (0, 1), got {cfg.ema_decay}")
        if cfg.queue_size < 0:
            raise TrainConfigError(f"--queue-size: must be >= 0, got {cfg.queue_size}")
        cfg.betas = tuple(cfg.betas)  # type: ignore[assignment]
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class OnlineTeacher(Protocol):
    """A teacher run live (mode ``online``), the ``rsclip_core.reinforce.teachers.Teacher`` protocol:
    PIL views and caption strings -> L2-normalised float32 numpy ``[N, dim]``."""

    name: str

    def encode_images(self, images: Sequence[Any]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    output: Path
    step: int
    last_checkpoint: Path | None
    final_weights: Path | None
    log_file: Path
    seconds: float
    mean_step_time: float


class _Dist:
    """Rank / world size, and the helpers that are no-ops without torch.distributed."""

    def __init__(self) -> None:
        self.enabled = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' tensors concatenated; this rank's slice keeps its autograd graph."""
        if not self.enabled or self.world == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.detach().contiguous())
        parts[self.rank] = tensor
        return torch.cat(parts, dim=0)

    def all_objects(self, obj: Any) -> list[Any]:
        if not self.enabled or self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled and self.world > 1:
            dist.barrier()


def init_distributed_from_env(device: str = "cpu") -> bool:
    """Initialise the default process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(requested)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device supports it (``auto``: CUDA with bf16 only), else None."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


DEFAULT_TEACHER_LOGIT_SCALE = 100.0  # CLIP's learned scale, MobileCLIP's tau for CLIP teachers


def resolve_teacher_scales(cfg: TrainConfig, infos: Sequence[Any], names: Sequence[str]) -> dict[str, float]:
    """tau_k per teacher: its ``NAME=VALUE`` entry, else ``teacher_logit_scale``, else the teacher's own
    learned scale (manifest; read from an offline-teacher checkpoint for datasets built before the field
    existed), else 100. Sharpening a soft teacher to 100 would turn its similarities into near one-hot
    targets and drop the relational knowledge distillation is for."""
    by_name = {info.name: info for info in infos}
    scales = {}
    for name in names:
        if name in cfg.teacher_logit_scales:
            scales[name] = float(cfg.teacher_logit_scales[name])
        elif cfg.teacher_logit_scale is not None:
            scales[name] = float(cfg.teacher_logit_scale)
        else:
            scales[name] = _recorded_teacher_scale(by_name.get(name)) or DEFAULT_TEACHER_LOGIT_SCALE
    return scales


def _recorded_teacher_scale(info: Any) -> float | None:
    if info is None:
        return None
    if getattr(info, "logit_scale", None):
        return float(info.logit_scale)
    if info.kind == "offline" and info.checkpoint and Path(info.checkpoint).is_file():
        from rsclip_core.reinforce.teachers import offline_logit_scale

        return offline_logit_scale(torch.load(info.checkpoint, map_location="cpu", weights_only=True))
    return None


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms, embeddings' gains or the logit scale)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "logit_scale" in name or "bias" in name or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _truncate_log(path: Path, keep_through_step: int) -> None:
    """Drop log lines of steps after the checkpoint a run resumes from (they will be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= keep_through_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The JSONL step log of a run."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: torch.nn.Module | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    online_teachers: Sequence[OnlineTeacher] | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run (or with ``resume=True`` continue) a training run described by ``config``.

    ``model``/``tokenizer`` default to ``create_model(config.model)``/``get_tokenizer(config.model)``;
    ``online_teachers`` default to the manifest's teachers (mode ``online`` only).
    ``stop_after_steps`` ends this invocation early *without* a final checkpoint, as a killed process
    would (for tests of ``resume``).
    """
    cfg = config.resolved()
    ddp = _Dist()
    device = resolve_device(cfg.device)
    out = Path(cfg.output)
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
    ddp.barrier()

    ckpt_path = out / LAST_CHECKPOINT
    resume_state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint yet); run without --resume")
        resume_state = read_checkpoint(ckpt_path)
        _check_resumable(resume_state, cfg, ddp.world, ckpt_path)
    elif ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: a run already exists in {out}; pass --resume or use a new --output")

    store = ShardStore(cfg.data)
    teachers = list(cfg.teachers) if cfg.teachers else list(store.teachers)
    unknown = sorted(set(teachers) - set(store.teachers))
    if unknown:
        raise TrainConfigError(f"--teacher: {unknown} not in {cfg.data} (has {store.teachers})")
    if resume_state is not None and resume_state.get("data_fingerprint") != store.fingerprint():
        raise CheckpointError(f"{ckpt_path}: the shards in {cfg.data} changed since this run started")
    teacher_scales = resolve_teacher_scales(cfg, store.manifest.teachers, teachers)
    cfg = dataclasses.replace(cfg, teacher_logit_scales=dict(teacher_scales))  # run config records the resolved tau_k

    torch.manual_seed(cfg.seed)  # same initial weights on every rank and for every mode
    if model is None:
        from rsclip_core.models import create_model

        model = create_model(cfg.model, pretrained_towers=cfg.pretrained_towers)
    if tokenizer is None:
        from rsclip_core.models import get_tokenizer

        tokenizer = get_tokenizer(cfg.model)
    if cfg.init_checkpoint and resume_state is None:
        from rsclip_core.train.checkpoint import model_weights

        model.load_state_dict(model_weights(read_checkpoint(cfg.init_checkpoint)), strict=True)
    preprocess = model.preprocess
    image_size = int(cfg.image_size or preprocess.image_size)

    if cfg.mode == "online" and online_teachers is None:
        from rsclip_core.train.online import load_online_teachers

        online_teachers = load_online_teachers(store.manifest, teachers, cfg.online_teacher_specs)
    if cfg.mode == "online":
        names = [t.name for t in online_teachers or []]
        if sorted(names) != sorted(teachers):
            raise TrainConfigError(f"online teachers {names} do not match the selected teachers {teachers}")

    torch.manual_seed(cfg.seed + ddp.rank)
    model.to(device)
    model.train()
    ema = None
    if cfg.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    queued_teachers = teachers if cfg.lam > 0 else []
    queue_keys = ["img", "txt"] + [f"t_img.{t}" for t in queued_teachers] + [f"t_txt.{t}" for t in queued_teachers]
    queues = {kind: NegativeQueue(cfg.queue_size, queue_keys) for kind in ("real", "syn")}

    step, position = 0, (0, 0)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(resume_state["ema"])
        for kind, state in resume_state.get("queues", {}).items():
            queues[kind].load_state_dict(state)
        set_rng_state(resume_state["rng"][ddp.rank])
        step = int(resume_state["step"])
        position = tuple(resume_state["data_position"])  # type: ignore[assignment]
    for queue in queues.values():
        queue.to(device)

    wrapped: torch.nn.Module = model
    if ddp.enabled and ddp.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    item_cfg = ItemConfig(
        preprocess=preprocess.replace(image_size=image_size),
        teachers=tuple(teachers) if cfg.lam > 0 else (),
        synthetic=bool(cfg.synthetic),
        stored_embeddings=cfg.mode == "reinforced",
        keep_view=cfg.mode == "online",
    )
    sampler = ResumableBatchSampler(len(store), cfg.batch_size, cfg.seed, ddp.rank, ddp.world, start=position)
    loader = torch.utils.data.DataLoader(
        ReinforcedTrainSet(store, item_cfg, cfg.seed),
        batch_sampler=sampler,
        collate_fn=make_collate(tokenizer),
        num_workers=cfg.num_workers,
        persistent_workers=False,
    )
    batches = iter(loader)
    amp_dtype = autocast_dtype(cfg.precision, device)
    log_path = out / LOG_FILE
    if ddp.main:
        if resume_state is not None:
            _truncate_log(log_path, step)
        elif log_path.exists():
            log_path.unlink()
        (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def save(path: Path) -> None:
        rngs = ddp.all_objects(rng_state())
        if not ddp.main:
            return
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "model_name": cfg.model,
                "image_size": image_size,
                "step": step,
                "data_position": list(position),
                "model": model.state_dict(),
                "ema": None if ema is None else ema.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "queues": {kind: q.state_dict() for kind, q in queues.items()},
                "rng": rngs,
                "config": cfg.to_dict(),
                "data_fingerprint": store.fingerprint(),
                "world_size": ddp.world,
            },
            path,
        )

    started = time.perf_counter()
    step_times: list[float] = []
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train[{cfg.mode}]", unit="step", disable=not (progress and ddp.main))
    steps_this_run = 0
    log_handle = open(log_path, "a") if ddp.main else None  # noqa: SIM115
    try:
        while step < cfg.steps:
            if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                return TrainResult(out, step, None, None, log_path, time.perf_counter() - started, _mean(step_times))
            t0 = time.perf_counter()
            data_time = 0.0
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro in range(cfg.accum_steps):
                td = time.perf_counter()
                batch = next(batches)
                data_time += time.perf_counter() - td
                epoch, in_epoch = position
                position = (epoch, in_epoch + 1) if in_epoch + 1 < sampler.steps_per_epoch else (epoch + 1, 0)
                if cfg.mode == "online":
                    _add_online_targets(batch, online_teachers or [], bool(cfg.synthetic))
                sync_ctx = wrapped.no_sync() if (wrapped is not model and micro < cfg.accum_steps - 1) else _nullctx()
                with sync_ctx:
                    parts = _micro_step(wrapped, batch, cfg, teachers, teacher_scales, queues, ddp, device, amp_dtype)
                    (parts["loss"] / cfg.accum_steps).backward()
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) / cfg.accum_steps
            grad_norm = None
            if cfg.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, math.log(100.0))
            step += 1
            steps_this_run += 1
            if ema is not None:
                ema.update(model, step=step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_time = time.perf_counter() - t0
            step_times.append(step_time)
            if ddp.main and (step % cfg.log_every == 0 or step == cfg.steps):
                record = {
                    "step": step,
                    "epoch": position[0],
                    "lr": lr,
                    **{k: round(v, 6) for k, v in sums.items()},
                    "logit_scale": float(model.logit_scale.detach().exp()),
                    "grad_norm": grad_norm,
                    "step_time": round(step_time, 4),
                    "data_time": round(data_time, 4),
                    "samples_per_s": round(cfg.batch_size * cfg.accum_steps * ddp.world / step_time, 2),
                }
                log_handle.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
                log_handle.flush()  # type: ignore[union-attr]
                bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(ckpt_path)
        final = out / FINAL_WEIGHTS
        if ddp.main:
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "model_name": cfg.model,
                    "image_size": image_size,
                    "step": step,
                    "model": (ema.module if ema is not None else model).state_dict(),
                    "ema": None,
                    "config": cfg.to_dict(),
                },
                final,
            )
        ddp.barrier()
        return TrainResult(out, step, ckpt_path, final, log_path, time.perf_counter() - started, _mean(step_times))
    finally:
        bar.close()
        if log_handle is not None:
            log_handle.close()
        store.close()


def _mean(values: list[float]) -> float:
    # the first steps include warm-up costs (allocator, worker start): report the rest when possible
    tail = values[2:] if len(values) > 4 else values
    return float(np.mean(tail)) if tail else float("nan")


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, world: int, path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT or "optimizer" not in state:
        raise CheckpointError(f"{path}: not a resumable rsclip training checkpoint")
    saved = state["config"]
    for key in ("model", "mode", "batch_size", "accum_steps", "seed", "lam", "synthetic", "queue_size"):
        if saved.get(key) != getattr(cfg, key):
            raise CheckpointError(
                f"{path}: cannot resume with a different {key} ({saved.get(key)!r} -> {getattr(cfg, key)!r})"
            )
    if state.get("world_size") != world:
        raise CheckpointError(f"{path}: run used {state.get('world_size')} processes, now {world}")


def _micro_step(
    wrapped: torch.nn.Module,
    batch: dict[str, Any],
    cfg: TrainConfig,
    teachers: list[str],
    teacher_scales: dict[str, float],
    queues: dict[str, NegativeQueue],
    ddp: _Dist,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Forward + loss of one micro-batch (real captions, plus synthetic ones when enabled)."""
    images = batch["image"].to(device, non_blocking=True)
    tokens = batch["tokens"].to(device)
    n = tokens.shape[0]
    if cfg.synthetic:
        tokens = torch.cat([tokens, batch["syn_tokens"].to(device)], dim=0)
    with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        image_emb, text_emb, scale = wrapped(images, tokens)
    image_emb, text_emb, scale = image_emb.float(), text_emb.float(), scale.float()
    image_all = ddp.gather(image_emb) if cfg.distributed_gather else image_emb
    kinds = [("real", text_emb[:n], "t_txt")]
    if cfg.synthetic:
        kinds.append(("syn", text_emb[n:], "t_syn"))
    out: dict[str, torch.Tensor] = {}
    total = image_emb.new_zeros(())
    for kind, text_part, target_prefix in kinds:
        text_all = ddp.gather(text_part) if cfg.distributed_gather else text_part
        t_img, t_txt = {}, {}
        if cfg.lam > 0:
            for name in teachers:
                ti = batch[f"t_img.{name}"].to(device).float()
                tt = batch[f"{target_prefix}.{name}"].to(device).float()
                t_img[name] = ddp.gather(ti) if cfg.distributed_gather else ti
                t_txt[name] = ddp.gather(tt) if cfg.distributed_gather else tt
        queue = queues[kind]
        use_queue = cfg.queue_size > 0 and len(queue) > 0
        parts = reinforced_loss(
            image_all,
            text_all,
            scale,
            t_img,
            t_txt,
            teacher_scales,
            cfg.lam,
            extra_image=queue.get("img") if use_queue else None,
            extra_text=queue.get("txt") if use_queue else None,
            extra_teacher_image={t: queue.get(f"t_img.{t}") for t in t_img} if use_queue else None,
            extra_teacher_text={t: queue.get(f"t_txt.{t}") for t in t_txt} if use_queue else None,
        )
        if cfg.queue_size > 0:
            entries = {"img": image_all, "txt": text_all}
            entries.update({f"t_img.{t}": v for t, v in t_img.items()})
            entries.update({f"t_txt.{t}": v for t, v in t_txt.items()})
            queue.push(entries)
        total = total + parts.total
        out[f"clip_{kind}"] = parts.clip
        out[f"distill_{kind}"] = parts.distill
    out["loss"] = total
    return out


@torch.no_grad()
def _add_online_targets(batch: dict[str, Any], teachers: Sequence[OnlineTeacher], synthetic: bool) -> None:
    """Mode ``online``: the teachers embed this batch's replayed views and captions now."""
    from PIL import Image

    views = [Image.fromarray(view) for view in batch["views"]]
    for teacher in teachers:
        batch[f"t_img.{teacher.name}"] = torch.as_tensor(np.asarray(teacher.encode_images(views), np.float32))
        batch[f"t_txt.{teacher.name}"] = torch.as_tensor(np.asarray(teacher.encode_texts(batch["captions"]), np.float32))
        if synthetic:
            syn = teacher.encode_texts(batch["syn_captions"])
            batch[f"t_syn.{teacher.name}"] = torch.as_tensor(np.asarray(syn, np.float32))


__all__ = [
    "MODES",
    "OnlineTeacher",
    "TrainConfig",
    "TrainConfigError",
    "TrainDataError",
    "TrainResult",
    "init_distributed_from_env",
    "read_log",
    "train",
]
