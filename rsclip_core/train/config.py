"""The one home of training settings: ``TrainConfig``, its field metadata, and recipe files.

A **recipe** is a YAML (``.yaml``/``.yml``) or JSON file whose top-level mapping holds ``TrainConfig``
fields, plus two optional keys of its own::

    extends: base.yaml          # another recipe (path relative to this file) whose values this one overrides
    description: reinforced λ=1 # free text (tables and logs quote it)

Resolution order: ``TrainConfig`` defaults < the ``extends`` chain < the recipe < explicit overrides (CLI
options, a script's arguments). Relative paths in path fields (``data``, ``output``, ``init_checkpoint``,
and ``model`` when it names a ``.json`` config) are taken relative to the recipe's folder. An unknown key or
a value of the wrong type is a :class:`TrainConfigError` naming the file and the key.

Each field's ``metadata`` carries its CLI help (``help``), option name (``flag``, default ``--field-name``),
``choices`` and ``path``: ``rsclip train`` generates its options from them, so names, types, defaults and
help have one source. Torch-free (stdlib + PyYAML).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

MODES = ("clip", "reinforced", "online")
TEACHER_MIXES = ("kl", "probs")  # rsclip_core.train.loss.reinforced_loss(teacher_mix=...)
PRECISIONS = ("auto", "fp32", "bf16")
RECIPE_KEYS = ("extends", "description")  # recipe keys that are not TrainConfig fields
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


class TrainConfigError(ValueError):
    """An invalid training configuration or recipe (message names the option, or the file and key)."""


def _field(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with its CLI/recipe metadata (``help``, ``flag``, ``choices``, ``path``)."""
    metadata = {"help": help, **meta}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint and in ``train_config.json``)."""

    data: str = _field(help="Reinforced dataset folder (manifest.json + shard-*.tar from `rsclip reinforce`).", path=True)
    model: str = _field(help="Student config name (see `rsclip models`) or a config JSON file.", path="json")
    output: str = _field(help="Run folder: last.pt (resumable), model.pt (final weights), train_log.jsonl.",
                         flag="--output", short="-o", path=True)
    mode: str = _field("reinforced", "clip: lambda=0, real captions only; reinforced: stored teacher targets; "
                       "online: teachers run live.", choices=MODES)
    lam: float = _field(1.0, "Weight of the distillation term, in [0, 1] (mode clip forces 0).")
    synthetic: bool | None = _field(None, "Add the synthetic-caption batch (default: on, off in mode clip).")
    teachers: list[str] | None = _field(None, "Distil from these teachers only (default: all in the manifest).",
                                        flag="--teacher")
    teacher_logit_scale: float | None = _field(
        None, "Teacher temperature tau_k for every teacher without its own entry in teacher_logit_scales "
        "(default: each teacher's own learned scale from the manifest, 100 where none is recorded).")
    teacher_logit_scales: dict[str, float] = _field(factory=dict, help="Per-teacher tau_k, NAME: VALUE.")
    teacher_mix: str = _field("kl", "How teachers combine: kl = mean of per-teacher KLs; probs = one KL to the "
                              "mean of the teachers' softmax distributions (MobileCLIP2).", choices=TEACHER_MIXES)
    online_teacher_specs: list[str] | None = _field(
        None, "Mode online: teacher spec NAME=SPEC (offline:/x.pt, open_clip:ARCH:/w.bin); default: from the manifest.",
        flag="--online-teacher")
    batch_size: int = _field(32, "Per process and micro-batch (>= 2).")
    accum_steps: int = _field(1, "Micro-batches per optimizer step.")
    steps: int = _field(1000, "Optimizer steps.")
    lr: float = _field(5e-4, "Peak learning rate (AdamW).")
    weight_decay: float = _field(0.1, "AdamW weight decay (matrices only).")
    betas: tuple[float, float] = _field((0.9, 0.98), "AdamW betas.")
    eps: float = _field(1e-6, "AdamW epsilon.")
    warmup_steps: int = _field(100, "Linear warmup steps, then cosine.")
    min_lr_ratio: float = _field(0.0, "Final learning rate as a fraction of the peak.")
    grad_clip: float | None = _field(1.0, "Max gradient norm (0 or null: off).")
    precision: str = _field("auto", "auto: bf16 autocast on GPUs that support it, fp32 elsewhere.", choices=PRECISIONS)
    ema_decay: float | None = _field(None, "Keep an EMA of the weights with this decay (e.g. 0.999).")
    queue_size: int = _field(0, "Recycled negatives from earlier batches per batch kind (0: off).")
    image_size: int | None = _field(None, "Train at this resolution instead of the model config's.")
    init_checkpoint: str | None = _field(None, "Initial weights (e.g. a previous run's model.pt).", path=True)
    pretrained_towers: bool = _field(True, "Start the towers from their packaged pretrained weights.")
    seed: int = _field(0, "Seed of the initial weights, the data order and the augmentation replay.")
    num_workers: int = _field(0, "DataLoader worker processes.", flag="--workers")
    log_every: int = _field(1, "Write a train_log.jsonl line every N steps.")
    checkpoint_every: int = _field(100, "Write last.pt every N steps.")
    device: str = _field("auto", "auto | cpu | cuda | cuda:N")
    distributed_gather: bool = _field(True, "Gather embeddings across ranks (DDP) for the contrastive loss.")

    def resolved(self) -> TrainConfig:
        """Check values and fill mode-dependent defaults."""
        cfg = dataclasses.replace(self)
        for name in ("data", "model", "output"):
            if not getattr(cfg, name):
                raise TrainConfigError(f"--{name}: required (give it, or set `{name}` in the recipe)")
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
            ("--warmup-steps", cfg.warmup_steps, 0),
            ("--log-every", cfg.log_every, 1),
            ("--checkpoint-every", cfg.checkpoint_every, 1),
            ("--workers", cfg.num_workers, 0),
        ):
            if value < low:
                raise TrainConfigError(f"{name}: must be >= {low}, got {value}")
        if not 0.0 <= cfg.min_lr_ratio <= 1.0:
            raise TrainConfigError(f"--min-lr-ratio: must lie in [0, 1], got {cfg.min_lr_ratio}")
        if cfg.teacher_mix not in TEACHER_MIXES:
            raise TrainConfigError(f"--teacher-mix: {cfg.teacher_mix!r} is not one of {', '.join(TEACHER_MIXES)}")
        if cfg.precision not in PRECISIONS:
            raise TrainConfigError(f"--precision: {cfg.precision!r} is not auto, fp32 or bf16")
        if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
            raise TrainConfigError(f"--ema-decay: must lie in (0, 1), got {cfg.ema_decay}")
        if cfg.queue_size < 0:
            raise TrainConfigError(f"--queue-size: must be >= 0, got {cfg.queue_size}")
        if cfg.grad_clip is not None and cfg.grad_clip < 0:
            raise TrainConfigError(f"--grad-clip: must be >= 0 (0: off), got {cfg.grad_clip}")
        if cfg.grad_clip == 0:
            cfg.grad_clip = None
        if cfg.image_size is not None and cfg.image_size < 16:
            raise TrainConfigError(f"--image-size: must be >= 16, got {cfg.image_size}")
        cfg.betas = cast("tuple[float, float]", tuple(cfg.betas))  # a list when read from JSON/YAML
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recorded(self) -> dict[str, Any]:
        """``to_dict`` with path fields made absolute: a run's ``train_config.json``, itself a recipe that
        reproduces (or with ``--resume`` continues) the run from any working directory."""
        values = self.to_dict()
        for key, value in values.items():
            kind = FIELDS[key].metadata.get("path")
            if kind and isinstance(value, str) and value and (kind is True or value.endswith(".json")):
                values[key] = str(Path(value).expanduser().resolve())
        return values

    @classmethod
    def from_recipe(cls, path: str | Path | None, **overrides: Any) -> TrainConfig:
        """The config a recipe file describes (``None``: defaults only), ``overrides`` (``None`` values ignored) on top."""
        return build_config(path, overrides)


def build_config(recipe: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """TrainConfig defaults < ``recipe`` (its ``extends`` chain) < ``overrides`` (``None`` values mean "not given")."""
    values = load_recipe(recipe) if recipe is not None else {}
    values.pop("description", None)
    values.update(check_values({k: v for k, v in overrides.items() if v is not None}, "overrides"))
    missing = [name for name in ("data", "model", "output") if not values.get(name)]
    if missing:
        where = f"{recipe}: " if recipe is not None else ""
        raise TrainConfigError(f"{where}--{missing[0]}: required (give it, or set `{missing[0]}` in a --recipe)")
    return TrainConfig(**values)


# --- field types ----------------------------------------------------------------------------------------

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_BASE_TYPES = {"int", "float", "str", "bool", "list[str]", "dict[str, float]", "tuple[float, float]"}


def field_type(name: str) -> tuple[str, bool]:
    """``(base type, optional)`` of a TrainConfig field, e.g. ``("float", True)`` for ``float | None``."""
    parts = [p.strip() for p in str(FIELDS[name].type).split("|")]
    optional = "None" in parts
    bases = [p for p in parts if p != "None"]
    if len(bases) != 1 or bases[0] not in _BASE_TYPES:
        raise TypeError(f"TrainConfig.{name}: unsupported annotation {FIELDS[name].type!r}")
    return bases[0], optional


def field_default(name: str) -> Any:
    f = FIELDS[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(base: str, value: Any) -> Any:
    """``value`` as ``base``, or raise ``TypeError`` with the expected type's name."""
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "float" and _is_number(value):
        return float(value)
    if base == "float" and isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads ``1e-3`` (no dot) as a string
    if base == "str" and isinstance(value, str):
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "list[str]" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if base == "dict[str, float]" and isinstance(value, dict) and all(
        isinstance(k, str) and _is_number(v) for k, v in value.items()
    ):
        return {k: float(v) for k, v in value.items()}
    if base == "tuple[float, float]" and isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value)):
        return tuple(float(v) for v in value)
    raise TypeError(base)


def check_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with every key a TrainConfig field and every value of its type (ints accepted as floats)."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise TrainConfigError(f"{source}: unknown key {key!r} (TrainConfig fields: {', '.join(FIELDS)})")
        base, optional = field_type(key)
        if value is None:
            if not optional:
                raise TrainConfigError(f"{source}: {key}: must be {base}, got null")
            checked[key] = None
            continue
        try:
            checked[key] = _coerce(base, value)
        except TypeError:
            raise TrainConfigError(f"{source}: {key}: must be {base}, got {value!r}") from None
    return checked


# --- recipe files ---------------------------------------------------------------------------------------------


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON recipe (no checks beyond "a mapping")."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"{path}: recipe not found")
    if path.suffix.lower() not in RECIPE_SUFFIXES:
        raise TrainConfigError(f"{path}: a recipe is a .yaml, .yml or .json file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line naming the file
        raise TrainConfigError(f"{path}: cannot parse recipe ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: a recipe is a mapping of TrainConfig fields, got {type(data).__name__}")
    return data


def _resolve_paths(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    for key, value in values.items():
        kind = FIELDS[key].metadata.get("path")
        if not kind or not isinstance(value, str) or not value:
            continue
        if kind == "json" and not value.endswith(".json"):
            continue  # a registered config name, not a file
        if not Path(value).expanduser().is_absolute():
            values[key] = str((folder / value).resolve())
        else:
            values[key] = str(Path(value).expanduser())
    return values


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The checked TrainConfig values of a recipe (its ``extends`` chain merged in), plus ``description``."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        raise TrainConfigError(f"{path}: extends: recipe chain loops back to {resolved}")
    raw = read_recipe_file(path)
    base: dict[str, Any] = {}
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise TrainConfigError(f"{path}: extends: must be a recipe path, got {parent!r}")
        base = load_recipe(path.parent / parent, (*_seen, resolved))
    description = raw.pop("description", None)
    if description is not None and not isinstance(description, str):
        raise TrainConfigError(f"{path}: description: must be str, got {description!r}")
    values = _resolve_paths(check_values(raw, str(path)), path.parent)
    base.pop("description", None)
    merged = {**base, **values}
    if description is not None:
        merged["description"] = description
    return merged


def parse_assignments(items: list[str] | tuple[str, ...], source: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE read as YAML: ``steps=300``, ``synthetic=false``, ``betas=[0.9,0.99]``) as
    checked TrainConfig values."""
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"{source}: {item!r}: expected KEY=VALUE with KEY a TrainConfig field")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            values[key.strip()] = text
    return check_values(values, source)


def recipe_description(path: str | Path) -> str:
    """A recipe's ``description`` (its file stem when it has none)."""
    return str(load_recipe(path).get("description") or Path(path).stem)


__all__ = [
    "FIELDS",
    "MODES",
    "TrainConfig",
    "TrainConfigError",
    "build_config",
    "check_values",
    "field_default",
    "field_type",
    "load_recipe",
    "parse_assignments",
    "read_recipe_file",
    "recipe_description",
]
