"""``rsclip train``: train a student on reinforced shards (plain CLIP, reinforced or online distillation).

Runs as one process or under ``torchrun --nproc_per_node N $(which rsclip) train ...`` (DDP).
The options are generated from ``TrainConfig``'s fields (``rsclip_core.train.config``): one option per
field, named, typed, defaulted and documented by the field. ``--recipe FILE`` loads a recipe; options
given on the command line override it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click

from rsclip_core.train.config import FIELDS, TrainConfig, field_default, field_type

COMBINED_FIELDS = ("teacher_logit_scale", "teacher_logit_scales")
"""Fields set through the one ``--teacher-logit-scale [NAME=]VALUE`` option (not generated)."""

_CLICK_TYPES: dict[str, Any] = {"int": click.INT, "float": click.FLOAT, "str": click.STRING, "list[str]": click.STRING,
                                "tuple[float, float]": click.FLOAT}


def option_flag(name: str) -> str:
    """The long option of a TrainConfig field (``flag`` metadata, else ``--field-name``)."""
    return str(FIELDS[name].metadata.get("flag", "--" + name.replace("_", "-")))


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def field_option(field: dataclasses.Field) -> click.Option:
    """The click option of one TrainConfig field. Its default is None ("not given": the recipe or the field's
    default applies); the field's default is shown in the help."""
    base, _ = field_type(field.name)
    flag = option_flag(field.name)
    meta = field.metadata
    default = field_default(field.name)
    help_text = meta.get("help", "")
    if default is not None and default != []:
        help_text += f"  [default: {_default_text(default)}]"
    decls = [flag] + ([meta["short"]] if "short" in meta else [])
    attrs: dict[str, Any] = {"default": None, "help": help_text}
    if base == "bool":
        decls = [f"{flag}/--no-{flag[2:]}"]
    elif "choices" in meta:
        attrs["type"] = click.Choice(list(meta["choices"]))
    else:
        attrs["type"] = _CLICK_TYPES[base]
    if base == "list[str]":
        attrs.update(multiple=True, default=())
    if base == "tuple[float, float]":
        attrs["nargs"] = 2
    return click.Option([*decls, field.name], **attrs)


def config_options() -> list[click.Option]:
    """One option per TrainConfig field, in field order, plus ``--teacher-logit-scale [NAME=]VALUE``."""
    options = [field_option(f) for f in dataclasses.fields(TrainConfig) if f.name not in COMBINED_FIELDS]
    options.append(click.Option(
        ["--teacher-logit-scale", "teacher_scales"], multiple=True, metavar="[NAME=]VALUE",
        help=FIELDS["teacher_logit_scale"].metadata["help"] + " Repeat NAME=VALUE to set one teacher's (teacher_logit_scales).",
    ))
    return options


def _with_config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(config_options()):  # click lists parameters in reverse order of attachment
        cast(Any, command).__click_params__ = [*getattr(command, "__click_params__", []), option]  # click's own attribute
    return command


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


def overrides_from_options(options: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig values given on the command line (options left out are absent)."""
    scales = options.pop("teacher_scales", ())
    values = {k: (list(v) or None) if field_type(k)[0] == "list[str]" else v for k, v in options.items()}
    default_scale, per_teacher = _parse_scales(scales)
    values["teacher_logit_scale"] = default_scale
    values["teacher_logit_scales"] = per_teacher or None
    return {k: v for k, v in values.items() if v is not None}


@click.command("train")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training recipe (YAML/JSON of TrainConfig fields, e.g. training/recipes/*.yaml or a run's "
                   "train_config.json); the options below override it.")
@_with_config_options
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last.pt.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(recipe: Path | None, resume: bool, quiet: bool, **options: Any) -> None:
    """Train MODEL on the reinforced dataset DATA (MobileCLIP's multi-modal reinforced training).

    \b
    rsclip train --data shards/rsicd --model mobileclip-s0-rs -o runs/s0 --steps 2000 --batch-size 64
    rsclip train --recipe training/recipes/default_model/effnetlite0-mct-s-kd.yaml --data shards/rsicd -o runs/e0
    rsclip train --recipe runs/s0/train_config.json --resume
    torchrun --nproc_per_node 4 $(which rsclip) train --data ... --model ... -o runs/ddp
    """
    from rsclip_core.train.config import build_config
    from rsclip_core.train.trainer import init_distributed_from_env
    from rsclip_core.train.trainer import train as run_training

    try:
        config = build_config(recipe, overrides_from_options(options)).resolved()
        init_distributed_from_env("cuda" if config.device.startswith("cuda") or config.device == "auto" else config.device)
        result = run_training(config, resume=resume, progress=not quiet)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"trained {result.step} steps in {result.seconds:.0f} s ({result.mean_step_time:.3f} s/step); "
        f"weights: {result.final_weights}; log: {result.log_file}",
        err=True,
    )
