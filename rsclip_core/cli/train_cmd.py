"""``rsclip train``: train a student on reinforced shards (plain CLIP, reinforced or online distillation).

Runs as one process or under ``torchrun --nproc_per_node N $(which rsclip) train ...`` (DDP).
"""

from __future__ import annotations

from pathlib import Path

import click


def _parse_scales(values: tuple[str, ...]) -> tuple[float | None, dict[str, float]]:
    default: float | None = None
    per_teacher: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        try:
            scale = float(number)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: expected VALUE or TEACHER=VALUE", param_hint="--teacher-logit-scale") from exc
        if sep:
            per_teacher[name] = scale
        else:
            default = scale
    return default, per_teacher


@click.command("train")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Reinforced dataset folder (manifest.json + shard-*.tar from `rsclip reinforce`).")
@click.option("--model", "model_name", required=True, help="Student config name (see `rsclip models`).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: last.pt (resumable), model.pt (final weights), train_log.jsonl.")
@click.option("--mode", type=click.Choice(["clip", "reinforced", "online"]), default="reinforced", show_default=True,
              help="clip: lambda=0, real captions only; reinforced: stored teacher targets; online: teachers run live.")
@click.option("--lam", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Weight of the distillation term (mode clip forces 0).")
@click.option("--synthetic/--no-synthetic", default=None,
              help="Add the synthetic-caption batch (default: on, off in mode clip).")
@click.option("--teacher", "teachers", multiple=True, help="Distil from these teachers only (default: all in the manifest).")
@click.option("--teacher-logit-scale", "teacher_scales", multiple=True, metavar="[NAME=]VALUE",
              help="Teacher temperature(s) tau_k (default: each teacher's own learned scale, 100 if unrecorded); "
                   "repeat NAME=VALUE per teacher.")
@click.option("--online-teacher", "online_specs", multiple=True, metavar="NAME=SPEC",
              help="Mode online: teacher spec (offline:/x.pt, open_clip:ARCH:/w.bin); default: from the manifest.")
@click.option("--batch-size", type=click.IntRange(2), default=32, show_default=True, help="Per process and micro-batch.")
@click.option("--accum-steps", type=click.IntRange(1), default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="Optimizer steps.")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--weight-decay", type=float, default=0.1, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(0), default=100, show_default=True)
@click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on GPUs that support it, fp32 on CPU.")
@click.option("--ema-decay", type=float, default=None, help="Keep an EMA of the weights (e.g. 0.999).")
@click.option("--queue-size", type=click.IntRange(0), default=0, show_default=True,
              help="Recycled negatives from earlier batches (0: off).")
@click.option("--image-size", type=click.IntRange(16), default=None, help="Train at this resolution instead of the config's.")
@click.option("--init-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Initial weights (e.g. a previous run's model.pt).")
@click.option("--no-pretrained-towers", is_flag=True, help="Random init instead of the towers' packaged weights.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="DataLoader worker processes.")
@click.option("--log-every", type=click.IntRange(1), default=1, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(1), default=100, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last.pt.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(
    data: Path, model_name: str, output: Path, mode: str, lam: float, synthetic: bool | None,
    teachers: tuple[str, ...], teacher_scales: tuple[str, ...], online_specs: tuple[str, ...],
    batch_size: int, accum_steps: int, steps: int, lr: float, weight_decay: float, warmup_steps: int,
    min_lr_ratio: float, grad_clip: float, precision: str, ema_decay: float | None, queue_size: int,
    image_size: int | None, init_checkpoint: Path | None, no_pretrained_towers: bool, seed: int, workers: int,
    log_every: int, checkpoint_every: int, device: str, resume: bool, quiet: bool,
) -> None:
    """Train MODEL on the reinforced dataset DATA (MobileCLIP's multi-modal reinforced training).

    \b
    rsclip train --data shards/rsicd --model mobileclip-s0-rs -o runs/s0 --steps 2000 --batch-size 64
    rsclip train --data shards/rsicd --model mobileclip-s0-rs -o runs/s0 --steps 2000 --resume
    torchrun --nproc_per_node 4 $(which rsclip) train --data ... --model ... -o runs/ddp
    """
    from rsclip_core.train.trainer import TrainConfig, init_distributed_from_env
    from rsclip_core.train.trainer import train as run_training

    default_scale, per_teacher = _parse_scales(teacher_scales)
    config = TrainConfig(
        data=str(data), model=model_name, output=str(output), mode=mode, lam=lam, synthetic=synthetic,
        teachers=list(teachers) or None, teacher_logit_scale=default_scale,
        teacher_logit_scales=per_teacher, online_teacher_specs=list(online_specs) or None,
        batch_size=batch_size, accum_steps=accum_steps, steps=steps, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, grad_clip=grad_clip or None, precision=precision,
        ema_decay=ema_decay, queue_size=queue_size, image_size=image_size,
        init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
        pretrained_towers=not no_pretrained_towers, seed=seed, num_workers=workers, log_every=log_every,
        checkpoint_every=checkpoint_every, device=device,
    )
    try:
        init_distributed_from_env("cuda" if device.startswith("cuda") or device == "auto" else device)
        result = run_training(config, resume=resume, progress=not quiet)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"trained {result.step} steps in {result.seconds:.0f} s ({result.mean_step_time:.3f} s/step); "
        f"weights: {result.final_weights}; log: {result.log_file}",
        err=True,
    )
