"""Training checkpoints: full state for ``--resume``, model weights for evaluation and export.

A checkpoint (``torch.save`` of a dict, written atomically) holds::

    format="rsclip-train", version, model_name, image_size, step, data_position=(epoch, step in epoch),
    model (state dict), ema (state dict or None), optimizer, scheduler, queues, rng (per rank),
    config (the TrainConfig as a dict), data_fingerprint, world_size

``resumable_checkpoint`` builds that dict (``last.pt``), ``weights_checkpoint`` the final-weights one
(``model.pt``: format, version, model_name, image_size, step, model, ema=None, config); nothing else
builds either. ``check_resumable`` decides whether a run may continue from one.

``load_trained_model`` turns one (or a plain state dict) into an ``RSClipModel``, preferring the
EMA weights when the run kept them.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from rsclip_core.workdir import atomic_target

CHECKPOINT_FORMAT = "rsclip-train"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model / run (message names the file)."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temp file + ``os.replace``: a crash never leaves a half-written file."""
    path = Path(path)
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a checkpoint dict")
    return data


RESUME_KEYS = ("model", "mode", "batch_size", "accum_steps", "seed", "lam", "synthetic", "queue_size")
"""Config fields a resumed run must share with its checkpoint (they change the data order or the state's shapes)."""


def _header(config: dict[str, Any], image_size: int, step: int) -> dict[str, Any]:
    """The fields ``last.pt`` and ``model.pt`` share: format, version, model name, resolution, step."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": config["model"],
        "image_size": image_size,
        "step": step,
    }


def resumable_checkpoint(
    *,
    config: dict[str, Any],
    image_size: int,
    step: int,
    data_position: tuple[int, int],
    model: dict[str, Any],
    ema: dict[str, Any] | None,
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    queues: dict[str, Any],
    rng: list[dict[str, Any]],
    data_fingerprint: str,
    world_size: int,
) -> dict[str, Any]:
    """The full training state of ``last.pt`` (``config`` is the resolved ``TrainConfig.to_dict()``)."""
    return {
        **_header(config, image_size, step),
        "data_position": list(data_position),
        "model": model,
        "ema": ema,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "queues": queues,
        "rng": rng,
        "config": config,
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
    }


def weights_checkpoint(*, config: dict[str, Any], image_size: int, step: int, model: dict[str, Any]) -> dict[str, Any]:
    """The final weights of ``model.pt`` (the EMA's where the run kept one): what evaluation and export read."""
    return {
        **_header(config, image_size, step),
        "model": model,
        "ema": None,
        "config": config,
    }


def check_resumable(state: dict[str, Any], config: dict[str, Any], world_size: int, path: str | Path) -> None:
    """Raise ``CheckpointError`` unless the run of ``config`` on ``world_size`` processes can continue ``state``."""
    if state.get("format") != CHECKPOINT_FORMAT or "optimizer" not in state:
        raise CheckpointError(f"{path}: not a resumable rsclip training checkpoint")
    saved = state["config"]
    for key in RESUME_KEYS:
        if saved.get(key) != config.get(key):
            raise CheckpointError(f"{path}: cannot resume with a different {key} ({saved.get(key)!r} -> {config.get(key)!r})")
    if state.get("world_size") != world_size:
        raise CheckpointError(f"{path}: run used {state.get('world_size')} processes, now {world_size}")


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states of this process, in types ``torch.load(weights_only=True)`` reads."""
    legacy_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    name, keys, pos, has_gauss, cached_gaussian = legacy_state
    numpy_state = {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_weights(checkpoint: dict[str, Any], prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model state dict of a training checkpoint (EMA weights if kept and preferred) or a plain one."""
    if checkpoint.get("format") == CHECKPOINT_FORMAT:
        if prefer_ema and checkpoint.get("ema") is not None:
            return checkpoint["ema"]
        return checkpoint["model"]
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _with_image_size(model: Any, image_size: int | None) -> Any:
    """Record a training resolution that differs from the config's in ``model.preprocess``."""
    if image_size is None:
        return model
    preprocess = getattr(model, "preprocess", None)
    if preprocess is None or getattr(preprocess, "image_size", None) == image_size:
        return model
    if dataclasses.is_dataclass(preprocess) and not isinstance(preprocess, type):
        model.preprocess = dataclasses.replace(preprocess, image_size=image_size)
    elif isinstance(preprocess, dict):
        model.preprocess = {**preprocess, "image_size": image_size}
    return model


def load_trained_model(
    name: str | None, checkpoint: str | Path | None, prefer_ema: bool = True, device: str = "cpu"
) -> Any:
    """An ``RSClipModel`` from a registered config name and (optionally) a trainer checkpoint.

    ``name`` may be omitted when the checkpoint is a trainer checkpoint (it records the model name).
    """
    from rsclip_core.models import create_model

    if checkpoint is None:
        if name is None:
            raise CheckpointError("give a model name (--model) or a checkpoint (--checkpoint)")
        return create_model(name).to(device).eval()
    data = read_checkpoint(checkpoint)
    saved_name = data.get("model_name")
    if name is None:
        if saved_name is None:
            raise CheckpointError(f"{checkpoint}: does not record its model name; pass --model")
        name = saved_name
    elif saved_name is not None and saved_name != name:
        raise CheckpointError(f"{checkpoint}: trained as {saved_name!r}, not {name!r}")
    model = create_model(name, pretrained_towers=False)
    weights = model_weights(data, prefer_ema)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint}: weights do not fit {name!r} (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return _with_image_size(model, data.get("image_size")).to(device).eval()
