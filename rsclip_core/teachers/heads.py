"""The fitted projection heads of an offline teacher and their checkpoint file.

An offline teacher is a registered ``teacher-*`` model (:mod:`rsclip_core.teachers.offline`): locked
packaged towers (:mod:`rsclip_core.teachers.towers`) and two heads fitted on their cached features
(:mod:`rsclip_core.teachers.fit`). The heads are saved as one ``torch.save`` dict, format
``rsclip-offline-teacher/2``: head weights, tower names, image size, embed dim, head and fit configs,
the learned temperature (log), the validation metrics and ``image_model``: ``{"kind": "head"}`` (a
head on the locked tower's pooled feature, as format ``/1``, which still loads) or ``{"kind":
"tuned", "config": ...}`` (a :class:`~rsclip_core.teachers.tuned.TunedImageTop` on the frozen
tower's taps: fine-tuned top stages and/or a Focus-Adapter; its weights under ``image.*``).
Read back with ``weights_only=True``.
Torch is imported only inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rsclip_core.teachers.base import TeacherError
from rsclip_core.workdir import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from rsclip_core.teachers.fit import FitConfig
    from rsclip_core.teachers.tuned import TuneConfig

CHECKPOINT_FORMAT = "rsclip-offline-teacher/2"
#: formats :func:`load_teacher_checkpoint` reads (``/1``: heads on pooled features only)
READABLE_FORMATS = ("rsclip-offline-teacher/1", CHECKPOINT_FORMAT)


class TeacherFitError(TeacherError):
    """Bad teacher-fit input (missing features, wrong checkpoint...); the message names it."""


@dataclass
class HeadConfig:
    """One projection head: ``linear`` (LayerNorm + linear) or ``mlp`` (LayerNorm, linear + GELU MLP)."""

    kind: str = "mlp"  # "linear" | "mlp" (residual: linear + GELU MLP branch)
    hidden: int = 1024
    dropout: float = 0.1


def build_head(in_dim: int, out_dim: int, cfg: HeadConfig):  # -> torch.nn.Module
    """A fresh head ``in_dim -> out_dim`` of kind ``cfg.kind``."""
    import torch
    from torch import nn

    class ResidualMLPHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(in_dim)
            self.linear = nn.Linear(in_dim, out_dim)
            self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                     nn.Linear(cfg.hidden, out_dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm(x)
            return self.linear(x) + self.mlp(x)

    if cfg.kind == "linear":
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    if cfg.kind == "mlp":
        return ResidualMLPHead()
    raise TeacherFitError(f"unknown head kind {cfg.kind!r} (linear | mlp)")


def _head_in_dim(head: Any) -> int:
    """Input width of a head built by :func:`build_head` (its first parameter is the LayerNorm weight)
    or of a tuned image top (its pooled feature)."""
    if hasattr(head, "pooled_dim"):
        return int(head.pooled_dim)
    return int(next(head.parameters()).shape[0])


def save_teacher_checkpoint(path: str | Path, heads: Any, *, image_tower: str, text_tower: str,
                            image_size: int, cfg: FitConfig | TuneConfig, fit_info: dict[str, Any],
                            extra: dict[str, Any] | None = None) -> Path:
    """Atomically save a fitted offline teacher (heads + how to rebuild it), format ``/2``.

    ``cfg`` is a :class:`~rsclip_core.teachers.fit.FitConfig` (``heads["image"]``: a head on pooled
    features) or a :class:`~rsclip_core.teachers.tuned.TuneConfig` (``heads["image"]``: a
    :class:`~rsclip_core.teachers.tuned.TunedImageTop`).
    """
    import io

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_cfg: Any = getattr(cfg, "image", None)  # TuneConfig.image: the tuned image model
    tuned = image_cfg is not None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "image_tower": image_tower,
        "text_tower": text_tower,
        "image_size": image_size,
        "embed_dim": cfg.embed_dim,
        "image_in_dim": _head_in_dim(heads["image"]),
        "text_in_dim": _head_in_dim(heads["text"]),
        "image_head": asdict(image_cfg.head) if tuned else asdict(cast("FitConfig", cfg).image_head),
        "image_model": {"kind": "tuned", "config": asdict(image_cfg)} if tuned else {"kind": "head"},
        "text_head": asdict(cfg.text_head),
        "state_dict": {k: v.detach().cpu() for k, v in heads.state_dict().items()},
        "logit_scale": fit_info.get("logit_scale"),
        "fit_config": asdict(cfg),
        "val": fit_info.get("val"),
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_teacher_checkpoint(path: str | Path) -> tuple[dict[str, Any], Any]:
    """(payload, heads ModuleDict in eval mode) of a fitted offline teacher."""
    import torch
    from torch import nn

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a file that is not a torch checkpoint
        raise TeacherFitError(f"{path}: not an rsclip offline-teacher checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise TeacherFitError(f"{path}: not an rsclip offline-teacher checkpoint")
    if is_tuned(payload):
        from rsclip_core.teachers.tuned import TunedImageConfig, build_tuned_top

        image: Any = build_tuned_top(payload["image_tower"], payload["embed_dim"],
                                     TunedImageConfig.from_dict(payload["image_model"]["config"]), pretrained=False)
    else:
        image = build_head(payload["image_in_dim"], payload["embed_dim"], HeadConfig(**payload["image_head"]))
    heads = nn.ModuleDict({
        "image": image,
        "text": build_head(payload["text_in_dim"], payload["embed_dim"], HeadConfig(**payload["text_head"])),
    })
    heads.load_state_dict(payload["state_dict"])
    return payload, heads.eval()


def is_teacher_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a fitted-head checkpoint (a dict with the offline-teacher format tag)."""
    import torch

    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file at all: let the normal loader report it
        return False
    return isinstance(payload, dict) and payload.get("format") in READABLE_FORMATS


def is_tuned(payload: dict[str, Any]) -> bool:
    """True if a loaded checkpoint's image side is a tuned top on taps (not a head on pooled features)."""
    return payload.get("image_model", {}).get("kind") == "tuned"


def offline_logit_scale(payload: dict[str, Any]) -> float | None:
    """The fitted temperature of an offline-teacher checkpoint (stored as a log), as a multiplier."""
    value = payload.get("logit_scale")
    return None if value is None else float(math.exp(float(value)))
