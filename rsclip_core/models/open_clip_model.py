"""Any open_clip architecture + a local checkpoint file as an :class:`RSClipModel` (export, teacher, student).

Model name: ``open_clip:ARCH[@ENTRY]`` — ``ARCH`` an open_clip architecture, ``ENTRY`` a checkpoint
entry (``rsclip_core.models.pretrained``: preprocessing, QuickGELU, licence) or an entry family for
that architecture (``open_clip:ViT-B-32@remoteclip``). Without an entry the architecture's
defaults apply (open_clip's: OpenAI mean/std, bicubic, shortest-side resize).

The model is always built as open_clip's ``CustomTextCLIP`` (``force_custom_text``), so its state
dict keys are ``visual.*``, ``text.*``, ``logit_scale`` (+ ``logit_bias``): the ``RSClipModel``
towers are open_clip's own modules and a trained student saves open_clip keys. Every checkpoint
layout (see ``pretrained.LAYOUTS``) is read into that key space and loaded strictly; a file of
another architecture fails with one line naming missing / unexpected keys. Never downloads.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsclip_core.models.factory import CheckpointError, ModelConfigError, check_state_dict, extract_state_dict
from rsclip_core.models.model import RSClipModel, TokenizerSpec
from rsclip_core.models.pretrained import CheckpointEntry, UnknownEntryError, resolve_entry
from rsclip_core.preprocess import PreprocessConfig

PREFIX = "open_clip:"
# keys in some files that are no model weights (OpenAI archive attributes, non-persistent buffers, old HF ids)
_DROP_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask",
              "text.transformer.embeddings.position_ids")


def is_open_clip_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_open_clip_name(name: str) -> tuple[str, CheckpointEntry | None]:
    """``open_clip:ARCH[@ENTRY]`` -> (architecture, entry or None); one-line errors for unknown names."""
    import open_clip

    if not is_open_clip_name(name):
        raise ModelConfigError(f"{name!r} is not an open_clip model name (open_clip:ARCH[@ENTRY])")
    body = name[len(PREFIX):]
    arch, _, entry_name = body.partition("@")
    if not arch:
        raise ModelConfigError(f"{name!r}: no architecture (use open_clip:ARCH, e.g. open_clip:ViT-B-32)")
    if open_clip.get_model_config(arch) is None:
        raise ModelConfigError(f"{name!r}: unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    if not entry_name:
        return arch, None
    try:
        return arch, resolve_entry(entry_name, arch)
    except UnknownEntryError as exc:
        tag_entry = entry_from_open_clip_tag(arch, entry_name)
        if tag_entry is not None:
            return arch, tag_entry
        from open_clip.pretrained import list_pretrained_tags_by_model

        tags = ", ".join(list_pretrained_tags_by_model(arch)) or "none"
        raise ModelConfigError(f"{name!r}: {exc} (nor an open_clip pretrained tag of {arch}; known tags: {tags})") from None


def entry_from_open_clip_tag(arch: str, tag: str) -> CheckpointEntry | None:
    """A checkpoint entry from open_clip's own pretrained table (``open_clip:ViT-B-16-SigLIP@webli``), or None."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        return None
    arch_cfg = open_clip_arch_config(arch)
    return CheckpointEntry(
        name=tag, family=tag, arch=arch, file="(the file downloaded for this open_clip tag)",
        source=cfg.get("hf_hub") and f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}" or cfg.get("url", ""),
        license="see the open_clip pretrained tag's source", layout="state_dict",
        quick_gelu=bool(cfg.get("quick_gelu", False)) or bool(arch_cfg.get("quick_gelu", False)),
        mean=_rgb(cfg["mean"]), std=_rgb(cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")), resize_mode=str(cfg.get("resize_mode", "shortest")),
        context_length=int(arch_cfg["text_cfg"].get("context_length", 77)),
        logit_bias=None, reference=f"open_clip pretrained.py tag {tag!r} of {arch}",
    )


def _rgb(values: Any) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


def open_clip_arch_config(arch: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ModelConfigError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    return cfg


def canonical_name(arch: str, entry: CheckpointEntry | None) -> str:
    return f"{PREFIX}{arch}" + (f"@{entry.name}" if entry else "")


def clip_tokenizer_problem(arch_cfg: dict[str, Any]) -> str | None:
    """Why the architecture's tokenizer is not open_clip's plain CLIP BPE, or None when it is."""
    text_cfg = arch_cfg.get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if hf_name:
        return f"Hugging Face tokenizer {hf_name!r}"
    if any(k not in ("context_length",) for k in kwargs):
        return f"tokenizer options {kwargs}"
    if int(text_cfg.get("vocab_size", 49408)) != 49408:
        return f"vocab_size {text_cfg.get('vocab_size')} (CLIP BPE has 49408)"
    return None


def _check_tokenizer(arch: str, arch_cfg: dict[str, Any]) -> None:
    """Only open_clip's CLIP BPE (``SimpleTokenizer``, clean='lower') is reproduced id-for-id at inference."""
    what = clip_tokenizer_problem(arch_cfg)
    if what:
        raise ModelConfigError(
            f"open_clip:{arch} uses a {what}: only the CLIP BPE tokenizer can be reproduced id-for-id by the "
            "torch-free inference tokenizer (SigLIP sentencepiece / HF tokenizers are not supported)"
        )


def open_clip_config(name: str, *, check_tokenizer: bool = True, quick_gelu: bool | None = None) -> dict[str, Any]:
    """An rsclip model config (``factory.get_model_config`` shape) describing ``open_clip:ARCH[@ENTRY]``.

    ``check_tokenizer`` refuses architectures whose tokenizer the exported ``tokenizer.json`` cannot
    reproduce (teachers, which tokenize with open_clip itself, pass False); ``quick_gelu`` overrides
    the entry's / architecture's activation.
    """
    arch, entry = parse_open_clip_name(name)
    arch_cfg = open_clip_arch_config(arch)
    if check_tokenizer:
        _check_tokenizer(arch, arch_cfg)
    clip_bpe = clip_tokenizer_problem(arch_cfg) is None
    size = arch_cfg["vision_cfg"].get("image_size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    ctx = int(entry.context_length if entry else arch_cfg["text_cfg"].get("context_length", 77))
    if entry is not None:
        pre = {"mean": list(entry.mean), "std": list(entry.std), "interpolation": entry.interpolation,
               "resize_mode": entry.resize_mode}
        resolved_gelu = bool(entry.quick_gelu)
    else:  # open_clip's defaults for an architecture without a pretrained tag
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        pre = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic",
               "resize_mode": "shortest"}
        resolved_gelu = bool(arch_cfg.get("quick_gelu", False)) or arch.endswith("-quickgelu")
    if quick_gelu is not None:
        resolved_gelu = bool(quick_gelu)
    return {
        "embed_dim": int(arch_cfg["embed_dim"]),
        "vision_cfg": {"image_size": size, "open_clip_arch": arch},
        "text_cfg": {"context_length": ctx, "vocab_size": int(arch_cfg["text_cfg"].get("vocab_size", 49408))},
        "preprocess": pre,
        "tokenizer": {"kind": "clip-bpe" if clip_bpe else "open_clip", "context_length": ctx},
        "open_clip": {"arch": arch, "entry": entry.name if entry else None, "quick_gelu": resolved_gelu},
    }


class OpenClipModel(RSClipModel):
    """An open_clip ``CustomTextCLIP`` seen as an ``RSClipModel`` (towers, temperature, bias are open_clip's)."""

    def __init__(self, name: str, config: dict[str, Any], clip: nn.Module, entry: CheckpointEntry | None) -> None:
        from rsclip_core.models.factory import preprocess_config, tokenizer_spec

        tok = config["tokenizer"]
        spec: TokenizerSpec = tokenizer_spec(config) if tok["kind"] == "clip-bpe" else TokenizerSpec(
            tok["kind"], int(tok["context_length"]), int(config["text_cfg"]["vocab_size"]))  # teacher only
        pre: PreprocessConfig = preprocess_config(config)
        visual, text = clip.get_submodule("visual"), clip.get_submodule("text")
        super().__init__(name, config, visual, text, pre, spec)
        self.logit_scale = clip.get_parameter("logit_scale")
        bias = getattr(clip, "logit_bias", None)
        self.logit_bias: nn.Parameter | None = bias if isinstance(bias, nn.Parameter) else None
        self.entry = entry
        self.source_info: dict[str, Any] = {"open_clip_arch": config["open_clip"]["arch"],
                                            "quick_gelu": config["open_clip"]["quick_gelu"]}
        if entry is not None:
            self.source_info.update(entry=entry.name, license=entry.license, weights_from=entry.source)

    @torch.no_grad()
    def reparameterize(self) -> OpenClipModel:
        """Fold MobileOne / RepMixer branches (MobileCLIP(2) MCi towers) with timm's ``reparameterize_model``."""
        from timm.utils.model import reparameterize_model

        self.eval()
        reparameterize_model(self.visual, inplace=True)
        reparameterize_model(self.text, inplace=True)
        self.reparameterized = True
        return self.eval()


def build_open_clip_model(name: str, device: str | torch.device = "cpu", *, check_tokenizer: bool = True,
                          quick_gelu: bool | None = None) -> OpenClipModel:
    """Random-init ``open_clip:ARCH[@ENTRY]`` (never downloads anything); options as :func:`open_clip_config`."""
    import open_clip

    config = open_clip_config(name, check_tokenizer=check_tokenizer, quick_gelu=quick_gelu)
    arch = config["open_clip"]["arch"]
    _, entry = parse_open_clip_name(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clip = open_clip.create_model(
        arch, pretrained=None, force_quick_gelu=config["open_clip"]["quick_gelu"], force_custom_text=True,
        pretrained_image=False, pretrained_text=False, device=device,
    )
    if entry is not None and entry.logit_scale:
        clip.logit_scale.data.fill_(math.log(entry.logit_scale))
    return OpenClipModel(canonical_name(arch, entry), config, clip, entry)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/code/__torch__.py") or "/code/__torch__/" in n or n.endswith("constants.pkl")
                   for n in archive.namelist())


def read_checkpoint_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, layout) of any supported file: torch pickle (plain / ``state_dict`` / ``model``),
    TorchScript archive, safetensors. ``module.`` / ``_orig_mod.`` prefixes removed, floats as float32."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    layout = "state_dict"
    try:
        if path.suffix == ".safetensors":  # open_clip reads those (Hugging Face *-OpenCLIP releases)
            from open_clip.factory import load_state_dict as open_clip_load_state_dict

            obj: Any = open_clip_load_state_dict(str(path))
        elif _is_torchscript(path):
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            layout = "openai_torchscript"
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / archive errors have many types
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc)[:160]})") from exc
    if layout == "state_dict" and isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        layout = "open_clip_train"
    if isinstance(obj, dict):  # keep only tensors of a flat dict (open_clip train files carry ints/strings beside)
        if not any(isinstance(obj.get(k), dict) for k in ("state_dict", "model", "ema")):
            obj = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        elif isinstance(obj.get("ema"), dict) and obj.get("ema"):  # rsclip training checkpoint: prefer EMA
            obj = {"model": obj["ema"]}
    state = extract_state_dict(obj, str(path))
    if any(k.startswith("image_encoder.model.") for k in state):
        layout = "ml_mobileclip"
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in _DROP_KEYS}
    return state, layout


def to_open_clip_keys(model: OpenClipModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in any supported layout -> ``CustomTextCLIP`` keys of ``model``."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_state_dict(model, dict(state))  # ml-mobileclip's own layout -> open_clip
    if "positional_embedding" in state or "token_embedding.weight" in state:  # plain CLIP / OpenAI text keys
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and state[key].shape != own.shape:
            state[key] = state[key].reshape(own.shape)
    return {k: v for k, v in state.items() if k not in _DROP_KEYS}


def load_open_clip_weights(model: OpenClipModel, checkpoint: str | Path) -> str:
    """Load ``checkpoint`` (any layout) into ``model`` strictly; returns the layout it was read as.

    A file without ``logit_scale`` (some fine-tuning scripts drop it) keeps the entry's temperature.
    """
    path = Path(checkpoint).expanduser()
    state, layout = read_checkpoint_file(path)
    state = to_open_clip_keys(model, state)
    if "logit_scale" not in state:
        state["logit_scale"] = model.logit_scale.detach().clone()
    if model.logit_bias is not None and "logit_bias" not in state:
        bias = model.entry.logit_bias if model.entry is not None and model.entry.logit_bias is not None else 0.0
        state["logit_bias"] = torch.full_like(model.logit_bias, float(bias))
    folded = ("reparam_conv", "fused_conv")
    if not model.reparameterized and any(any(f in k for f in folded) for k in state):
        model.reparameterize()
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    model.source_info["layout"] = layout
    return layout


def create_open_clip_model(
    name: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu", *,
    check_tokenizer: bool = True, quick_gelu: bool | None = None,
) -> OpenClipModel:
    """``open_clip:ARCH[@ENTRY]`` with weights from a local ``checkpoint`` (random init without one).

    ``ENTRY``: a checkpoint entry / family (``rsclip_core.models.pretrained``) or an open_clip pretrained tag.
    """
    model = build_open_clip_model(name, device="cpu", check_tokenizer=check_tokenizer, quick_gelu=quick_gelu)
    if checkpoint is not None:
        load_open_clip_weights(model, checkpoint)
    return model.to(device).eval()
