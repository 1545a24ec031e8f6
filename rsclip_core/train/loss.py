"""Losses of multi-modal reinforced training (MobileCLIP, Vasu et al. 2024, eq. 1-2).

For one batch of ``B`` image/text pairs with student embeddings ``(x_img, x_txt)`` and, per teacher
``k``, stored embeddings ``(t_img^k, t_txt^k)``::

    L = (1 - lambda) * L_CLIP  +  lambda * (1/K) * sum_k L_KD^k
    L_CLIP = (CE(rows of S_tau(x_img, x_txt)) + CE(columns)) / 2                 (symmetric InfoNCE)
    L_KD^k = (KL(softmax(tau_k t_img t_txt^T) || softmax(tau x_img x_txt^T))      image->text rows
            + KL(same for text->image rows)) / 2

``tau`` is the student's (learnable) logit scale, ``tau_k`` a fixed per-teacher logit scale. The
trainer sums ``L`` over the real-caption batch and the synthetic-caption batch.

``teacher_mix="probs"`` (MobileCLIP2) replaces the mean of per-teacher KLs by one KL to the mean of
the teachers' distributions, averaged *after* the softmax::

    L_KD = (KL(mean_k softmax(tau_k t_img^k t_txt^k^T) || softmax(tau x_img x_txt^T)) + text->image) / 2

(the student matches the ensemble's mixture instead of a compromise between each teacher's modes).

Extra negatives (``extra_*``, from a :class:`NegativeQueue`, the "recycled" embeddings of earlier
batches) widen the similarity matrices to ``B x (B + Q)``: every row then competes with ``B + Q``
candidates in both losses, which decouples the number of negatives from the batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rsclip_core.train.config import TEACHER_MIXES


def _with_extra(own: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    return own if extra is None or extra.shape[0] == 0 else torch.cat([own, extra.to(own.dtype)], dim=0)


def pair_logits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    extra_image: torch.Tensor | None = None,
    extra_text: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled similarity logits: image->text ``[B, B+Q]`` and text->image ``[B, B+Q]``.

    Row ``i`` of both matrices has its positive at column ``i``.
    """
    logits_i2t = logit_scale * image_emb @ _with_extra(text_emb, extra_text).T
    logits_t2i = logit_scale * text_emb @ _with_extra(image_emb, extra_image).T
    return logits_i2t, logits_t2i


def clip_loss(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the image->text and text->image cross-entropies."""
    labels = torch.arange(logits_i2t.shape[0], device=logits_i2t.device)
    return (F.cross_entropy(logits_i2t.float(), labels) + F.cross_entropy(logits_t2i.float(), labels)) / 2


def kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(teacher) || softmax(student))`` (a true KL: 0 when equal)."""
    return kl_rows_from_log_probs(F.log_softmax(teacher_logits.float(), dim=1), student_logits)


def kl_rows_from_log_probs(teacher_log_p: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """:func:`kl_rows` with the teacher given as row log-probabilities (e.g. a mixture of teachers)."""
    student_log_p = F.log_softmax(student_logits.float(), dim=1)
    return (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(dim=1).mean()


def mean_log_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_k softmax(logits_k))`` row-wise, computed stably (logsumexp over the teachers)."""
    stacked = torch.stack([F.log_softmax(x.float(), dim=1) for x in logits])
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(logits)), device=stacked.device))


@dataclass
class LossParts:
    """A batch's loss and its parts (parts are detached, for logging)."""

    total: torch.Tensor
    clip: torch.Tensor
    distill: torch.Tensor
    per_teacher: dict[str, torch.Tensor]


def reinforced_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    teacher_image: Mapping[str, torch.Tensor],
    teacher_text: Mapping[str, torch.Tensor],
    teacher_logit_scales: Mapping[str, float],
    lam: float,
    extra_image: torch.Tensor | None = None,
    extra_text: torch.Tensor | None = None,
    extra_teacher_image: Mapping[str, torch.Tensor] | None = None,
    extra_teacher_text: Mapping[str, torch.Tensor] | None = None,
    teacher_mix: str = "kl",
) -> LossParts:
    """``(1-lam)*CLIP + lam*mean_k KL_k`` for one batch (see the module docstring); ``teacher_mix="probs"``:
    ``lam * KL(mean_k p_k || student)`` instead (``per_teacher`` still reports each teacher's own KL).

    ``image_emb``/``text_emb`` are the student's L2-normalised embeddings ``[B, D]``;
    ``teacher_image[k]``/``teacher_text[k]`` the teacher's ``[B, D_k]``. With ``lam == 0`` the teachers
    are not needed (pass empty mappings).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    if teacher_mix not in TEACHER_MIXES:
        raise ValueError(f"teacher_mix: {teacher_mix!r} is not one of {', '.join(TEACHER_MIXES)}")
    s_i2t, s_t2i = pair_logits(image_emb, text_emb, logit_scale, extra_image, extra_text)
    zero = s_i2t.new_zeros(())
    clip = clip_loss(s_i2t, s_t2i) if lam < 1.0 else zero
    per_teacher: dict[str, torch.Tensor] = {}
    if lam > 0.0:
        names = list(teacher_image)
        if not names:
            raise ValueError("lambda > 0 needs at least one teacher's embeddings")
        teacher_logits = {}
        for name in names:
            if name not in teacher_text or name not in teacher_logit_scales:
                raise ValueError(f"teacher {name!r}: text embeddings or logit scale missing")
            t_i2t, t_t2i = pair_logits(
                teacher_image[name].float(),
                teacher_text[name].float(),
                float(teacher_logit_scales[name]),
                None if extra_teacher_image is None else extra_teacher_image.get(name),
                None if extra_teacher_text is None else extra_teacher_text.get(name),
            )
            if t_i2t.shape != s_i2t.shape:
                raise ValueError(
                    f"teacher {name!r}: logits {tuple(t_i2t.shape)} do not match the student's "
                    f"{tuple(s_i2t.shape)} (queue/batch mismatch)"
                )
            teacher_logits[name] = (t_i2t, t_t2i)
            per_teacher[name] = (kl_rows(t_i2t, s_i2t) + kl_rows(t_t2i, s_t2i)) / 2
        if teacher_mix == "probs":
            distill = (kl_rows_from_log_probs(mean_log_probs([t[0] for t in teacher_logits.values()]), s_i2t)
                       + kl_rows_from_log_probs(mean_log_probs([t[1] for t in teacher_logits.values()]), s_t2i)) / 2
        else:
            distill = torch.stack(list(per_teacher.values())).mean()
    else:
        distill = zero
    total = (1.0 - lam) * clip + lam * distill
    return LossParts(
        total=total,
        clip=clip.detach(),
        distill=distill.detach(),
        per_teacher={k: v.detach() for k, v in per_teacher.items()},
    )


class NegativeQueue:
    """FIFO of detached embeddings of earlier batches, recycled as extra negatives (student and
    teacher embeddings of the same pairs, so the distillation targets widen consistently)."""

    def __init__(self, size: int, keys: Sequence[str]) -> None:
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        self.size = int(size)
        self.keys = list(keys)
        self.buffers: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.buffers else int(next(iter(self.buffers.values())).shape[0])

    def get(self, key: str) -> torch.Tensor | None:
        return self.buffers.get(key)

    @torch.no_grad()
    def push(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Prepend this batch's embeddings (newest first) and drop the oldest beyond ``size``."""
        if self.size == 0:
            return
        missing = [k for k in self.keys if k not in tensors]
        if missing:
            raise ValueError(f"queue push misses {missing}")
        for key in self.keys:
            new = tensors[key].detach().float()
            old = self.buffers.get(key)
            merged = new if old is None else torch.cat([new, old.to(new.device)], dim=0)
            self.buffers[key] = merged[: self.size].clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.buffers.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.buffers = {k: v.clone() for k, v in state.items()}

    def to(self, device: torch.device | str) -> NegativeQueue:
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self
