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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from rsclip_core.train.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    check_resumable,
    read_checkpoint,
    resumable_checkpoint,
    rng_state,
    set_rng_state,
    weights_checkpoint,
)
from rsclip_core.train.config import TrainConfig, TrainConfigError
from rsclip_core.train.data import (
    ItemConfig,
    ReinforcedTrainSet,
    ResumableBatchSampler,
    ShardStore,
    TrainDataError,
    make_collate,
)
from rsclip_core.train.loss import NegativeQueue, reinforced_loss
from rsclip_core.workdir import atomic_write_text

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel

LOG_FILE = "train_log.jsonl"
LAST_CHECKPOINT = "last.pt"
FINAL_WEIGHTS = "model.pt"
CONFIG_FILE = "train_config.json"


class OnlineTeacher(Protocol):
    """A teacher run live (mode ``online``), the ``rsclip_core.teachers.base.Teacher`` protocol:
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
        from rsclip_core.teachers.heads import offline_logit_scale

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
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The JSONL step log of a run."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class _Run:
    """The live state of one training run: what a step changes and a checkpoint saves."""

    cfg: TrainConfig
    ddp: _Dist
    device: torch.device
    out: Path
    store: ShardStore
    teachers: list[str]
    teacher_scales: dict[str, float]
    model: RSClipModel
    wrapped: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    ema: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    queues: dict[str, NegativeQueue]
    image_size: int
    step: int = 0
    position: tuple[int, int] = (0, 0)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: RSClipModel | None = None,
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
    out = Path(cfg.output)
    ckpt_path = out / LAST_CHECKPOINT
    resume_state = _open_run_folder(cfg, ddp, resume)
    store, teachers, cfg = _open_data(cfg, resume_state, ckpt_path)
    try:
        run, tokenizer, online_teachers = _build_run(cfg, ddp, store, teachers, resume_state, model, tokenizer,
                                                     online_teachers)
        sampler, batches = _build_batches(run, tokenizer)
        log_path = _start_log(run, resume_state is not None)
        return _train_loop(run, sampler, batches, online_teachers or [], log_path, stop_after_steps, progress)
    finally:
        store.close()


def _open_run_folder(cfg: TrainConfig, ddp: _Dist, resume: bool) -> dict[str, Any] | None:
    """Create the run folder; the checkpoint to resume from (checked against ``cfg``), or None for a new run."""
    out = Path(cfg.output)
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
    ddp.barrier()
    ckpt_path = out / LAST_CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint yet); run without --resume")
        state = read_checkpoint(ckpt_path)
        check_resumable(state, cfg.to_dict(), ddp.world, ckpt_path)
        return state
    if ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: a run already exists in {out}; pass --resume or use a new --output")
    return None


def _open_data(
    cfg: TrainConfig, resume_state: dict[str, Any] | None, ckpt_path: Path
) -> tuple[ShardStore, list[str], TrainConfig]:
    """The shards, the teachers to distil from, and ``cfg`` with the resolved tau_k recorded."""
    store = ShardStore(cfg.data)
    teachers = list(cfg.teachers) if cfg.teachers else list(store.teachers)
    unknown = sorted(set(teachers) - set(store.teachers))
    if unknown:
        store.close()
        raise TrainConfigError(f"--teacher: {unknown} not in {cfg.data} (has {store.teachers})")
    if resume_state is not None and resume_state.get("data_fingerprint") != store.fingerprint():
        store.close()
        raise CheckpointError(f"{ckpt_path}: the shards in {cfg.data} changed since this run started")
    teacher_scales = resolve_teacher_scales(cfg, store.manifest.teachers, teachers)
    cfg = dataclasses.replace(cfg, teacher_logit_scales=dict(teacher_scales))  # run config records the resolved tau_k
    return store, teachers, cfg


def _build_run(
    cfg: TrainConfig,
    ddp: _Dist,
    store: ShardStore,
    teachers: list[str],
    resume_state: dict[str, Any] | None,
    model: RSClipModel | None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None,
    online_teachers: Sequence[OnlineTeacher] | None,
) -> tuple[_Run, Callable[[list[str]], torch.Tensor], Sequence[OnlineTeacher] | None]:
    """Model, EMA, optimiser, scheduler and queues, restored from ``resume_state`` when resuming.

    RNG order matters for bit-exact runs: seed -> initial weights -> seed + rank -> EMA/optimiser -> data.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and for every mode
    if model is None:
        from rsclip_core.models import create_model

        model = create_model(cfg.model, pretrained_towers=cfg.pretrained_towers)
    if tokenizer is None:
        from rsclip_core.models import get_tokenizer

        tokenizer = get_tokenizer(cfg.model)
    if cfg.init_checkpoint and resume_state is None:
        from rsclip_core.models.open_clip_model import OpenClipModel, load_open_clip_weights
        from rsclip_core.train.checkpoint import model_weights

        if isinstance(model, OpenClipModel):  # a public open_clip checkpoint in any layout (or a run's model.pt)
            load_open_clip_weights(model, cfg.init_checkpoint)
        else:
            model.load_state_dict(model_weights(read_checkpoint(cfg.init_checkpoint)), strict=True)
    online_teachers = _resolve_online_teachers(cfg, store, teachers, online_teachers)

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
    run = _Run(cfg, ddp, device, Path(cfg.output), store, teachers, dict(cfg.teacher_logit_scales), model, model, ema,
               optimizer, scheduler, queues, int(cfg.image_size or model.preprocess.image_size))
    if resume_state is not None:
        _restore(run, resume_state)
    for queue in queues.values():
        queue.to(device)
    if ddp.enabled and ddp.world > 1:
        run.wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return run, tokenizer, online_teachers


def _resolve_online_teachers(
    cfg: TrainConfig, store: ShardStore, teachers: list[str], online_teachers: Sequence[OnlineTeacher] | None
) -> Sequence[OnlineTeacher] | None:
    """Mode ``online``: the given teachers, else the manifest's loaded live; checked against ``teachers``."""
    if cfg.mode != "online":
        return online_teachers
    if online_teachers is None:
        from rsclip_core.teachers.online import load_online_teachers

        online_teachers = load_online_teachers(store.manifest, teachers, cfg.online_teacher_specs)
    names = [t.name for t in online_teachers or []]
    if sorted(names) != sorted(teachers):
        raise TrainConfigError(f"online teachers {names} do not match the selected teachers {teachers}")
    return online_teachers


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Continue from a ``last.pt``: weights, optimiser, scheduler, EMA, queues, this rank's RNG, data position."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None:
        run.ema.module.load_state_dict(state["ema"])
    for kind, queue_state in state.get("queues", {}).items():
        run.queues[kind].load_state_dict(queue_state)
    set_rng_state(state["rng"][run.ddp.rank])
    run.step = int(state["step"])
    run.position = (int(state["data_position"][0]), int(state["data_position"][1]))


def _build_batches(
    run: _Run, tokenizer: Callable[[list[str]], torch.Tensor]
) -> tuple[ResumableBatchSampler, Iterator[dict[str, Any]]]:
    """The resumable batch sampler and the batch iterator, starting at the run's data position."""
    cfg, model, teachers, store, ddp = run.cfg, run.model, run.teachers, run.store, run.ddp
    preprocess = model.preprocess
    image_size = run.image_size
    item_cfg = ItemConfig(
        preprocess=preprocess.replace(image_size=image_size),
        teachers=tuple(teachers) if cfg.lam > 0 else (),
        synthetic=bool(cfg.synthetic),
        stored_embeddings=cfg.mode == "reinforced",
        keep_view=cfg.mode == "online",
    )
    sampler = ResumableBatchSampler(len(store), cfg.batch_size, cfg.seed, ddp.rank, ddp.world, start=run.position)
    loader = torch.utils.data.DataLoader(
        ReinforcedTrainSet(store, item_cfg, cfg.seed),
        batch_sampler=sampler,
        collate_fn=make_collate(tokenizer),
        num_workers=cfg.num_workers,
        persistent_workers=False,
    )
    return sampler, iter(loader)


def _start_log(run: _Run, resumed: bool) -> Path:
    """Truncate (resume) or reset (new run) the step log and record the resolved config; the log's path."""
    log_path = run.out / LOG_FILE
    if run.ddp.main:
        if resumed:
            _truncate_log(log_path, run.step)
        elif log_path.exists():
            log_path.unlink()
        (run.out / CONFIG_FILE).write_text(json.dumps(run.cfg.recorded(), indent=2) + "\n")
    return log_path


def _train_loop(
    run: _Run,
    sampler: ResumableBatchSampler,
    batches: Iterator[dict[str, Any]],
    online_teachers: Sequence[OnlineTeacher],
    log_path: Path,
    stop_after_steps: int | None,
    progress: bool,
) -> TrainResult:
    """Optimizer steps until ``cfg.steps`` (or ``stop_after_steps`` this invocation): log, checkpoint, save."""
    cfg, ddp = run.cfg, run.ddp
    ckpt_path = run.out / LAST_CHECKPOINT
    amp_dtype = autocast_dtype(cfg.precision, run.device)
    started = time.perf_counter()
    step_times: list[float] = []
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train[{cfg.mode}]", unit="step",
               disable=not (progress and ddp.main))
    steps_this_run = 0
    log_handle = open(log_path, "a") if ddp.main else None  # noqa: SIM115
    try:
        while run.step < cfg.steps:
            if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                return TrainResult(run.out, run.step, None, None, log_path, time.perf_counter() - started,
                                   _mean(step_times))
            t0 = time.perf_counter()
            sums, lr, grad_norm, data_time = _optimizer_step(run, sampler, batches, online_teachers, amp_dtype)
            steps_this_run += 1
            step_time = time.perf_counter() - t0
            step_times.append(step_time)
            if log_handle is not None and (run.step % cfg.log_every == 0 or run.step == cfg.steps):
                record = _log_record(run, sums, lr, grad_norm, step_time, data_time)
                log_handle.write(json.dumps(record) + "\n")
                log_handle.flush()
                bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                _save_checkpoint(run, ckpt_path)
        final = run.out / FINAL_WEIGHTS
        _save_weights(run, final)
        ddp.barrier()
        return TrainResult(run.out, run.step, ckpt_path, final, log_path, time.perf_counter() - started,
                           _mean(step_times))
    finally:
        bar.close()
        if log_handle is not None:
            log_handle.close()


def _optimizer_step(
    run: _Run,
    sampler: ResumableBatchSampler,
    batches: Iterator[dict[str, Any]],
    online_teachers: Sequence[OnlineTeacher],
    amp_dtype: torch.dtype | None,
) -> tuple[dict[str, float], float, float | None, float]:
    """One optimizer step over ``accum_steps`` micro-batches: (mean loss parts, lr used, grad norm, data time)."""
    cfg, model, wrapped = run.cfg, run.model, run.wrapped
    data_time = 0.0
    run.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for micro in range(cfg.accum_steps):
        td = time.perf_counter()
        batch = next(batches)
        data_time += time.perf_counter() - td
        epoch, in_epoch = run.position
        run.position = (epoch, in_epoch + 1) if in_epoch + 1 < sampler.steps_per_epoch else (epoch + 1, 0)
        if cfg.mode == "online":
            _add_online_targets(batch, online_teachers, bool(cfg.synthetic))
        ddp_wrapped = wrapped if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else None
        sync_ctx = ddp_wrapped.no_sync() if (ddp_wrapped is not None and micro < cfg.accum_steps - 1) else _nullctx()
        with sync_ctx:
            parts = _micro_step(wrapped, batch, cfg, run.teachers, run.teacher_scales, run.queues, run.ddp, run.device,
                                amp_dtype)
            (parts["loss"] / cfg.accum_steps).backward()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) / cfg.accum_steps
    grad_norm = None
    if cfg.grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(100.0))
    run.step += 1
    if run.ema is not None:
        run.ema.update(model, step=run.step)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return sums, lr, grad_norm, data_time


def _log_record(
    run: _Run, sums: dict[str, float], lr: float, grad_norm: float | None, step_time: float, data_time: float
) -> dict[str, Any]:
    """One ``train_log.jsonl`` line."""
    cfg = run.cfg
    return {
        "step": run.step,
        "epoch": run.position[0],
        "lr": lr,
        **{k: round(v, 6) for k, v in sums.items()},
        "logit_scale": float(run.model.logit_scale.detach().exp()),
        "grad_norm": grad_norm,
        "step_time": round(step_time, 4),
        "data_time": round(data_time, 4),
        "samples_per_s": round(cfg.batch_size * cfg.accum_steps * run.ddp.world / step_time, 2),
    }


def _save_checkpoint(run: _Run, path: Path) -> None:
    """``last.pt``: every rank's RNG gathered, written by rank 0."""
    rngs = run.ddp.all_objects(rng_state())
    if not run.ddp.main:
        return
    state = resumable_checkpoint(
        config=run.cfg.to_dict(),
        image_size=run.image_size,
        step=run.step,
        data_position=run.position,
        model=run.model.state_dict(),
        ema=None if run.ema is None else run.ema.module.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        queues={kind: q.state_dict() for kind, q in run.queues.items()},
        rng=rngs,
        data_fingerprint=run.store.fingerprint(),
        world_size=run.ddp.world,
    )
    atomic_torch_save(state, path)


def _save_weights(run: _Run, path: Path) -> None:
    """``model.pt``: the final (EMA where kept) weights, written by rank 0."""
    if not run.ddp.main:
        return
    weights = (run.ema.module if run.ema is not None else run.model).state_dict()
    atomic_torch_save(
        weights_checkpoint(config=run.cfg.to_dict(), image_size=run.image_size, step=run.step, model=weights), path
    )


def _mean(values: list[float]) -> float:
    # the first steps include warm-up costs (allocator, worker start): report the rest when possible
    tail = values[2:] if len(values) > 4 else values
    return float(np.mean(tail)) if tail else float("nan")


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _queued(queue: NegativeQueue, prefix: str, teachers: Iterable[str]) -> dict[str, torch.Tensor]:
    """The queued ``<prefix>.<teacher>`` embeddings of each teacher the queue holds."""
    found = {t: queue.get(f"{prefix}.{t}") for t in teachers}
    return {t: emb for t, emb in found.items() if emb is not None}


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
            extra_teacher_image=_queued(queue, "t_img", t_img) if use_queue else None,
            extra_teacher_text=_queued(queue, "t_txt", t_txt) if use_queue else None,
            teacher_mix=cfg.teacher_mix,
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
    "OnlineTeacher",
    "TrainDataError",
    "TrainResult",
    "init_distributed_from_env",
    "read_log",
    "train",
]
