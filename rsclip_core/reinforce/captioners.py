"""Synthetic-caption generators (``Captioner``) for dataset reinforcement.

* :class:`CocaCaptioner` — open_clip CoCa from a local checkpoint (for people who have the weights).
* :class:`NeighbourCaptioner` — the offline captioner used here: captions of the teacher-nearest
  *training* neighbours (never the image's own), ranked by teacher image-text similarity, plus
  scene-label captions (CMER's scene-label prior) when the record has a label.

The manifest records which captioner (and its settings) built a dataset.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rsclip_core.data.readers import ImageTextRecord, clean_class_name
from rsclip_core.prompts import CAPTION_TEMPLATES, fill_prompts


class CaptionerError(ValueError):
    """A captioner that cannot be built (missing checkpoint, empty caption bank...)."""


class Captioner(Protocol):
    name: str

    def caption(self, record: ImageTextRecord, image: Any, num_captions: int, rng: random.Random,
                image_embedding: np.ndarray | None = None) -> list[str]:
        """``num_captions`` synthetic captions for ``image`` (PIL RGB, the original)."""

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest."""


class CocaCaptioner:
    """open_clip CoCa captioner; nucleus sampling (``top_p``) gives S diverse captions per image."""

    def __init__(self, arch: str, checkpoint: str | Path | None, model: Any = None,
                 top_p: float = 0.9, max_seq_len: int = 30) -> None:
        import open_clip

        if model is None:
            if checkpoint is None or not Path(checkpoint).is_file():
                raise FileNotFoundError(f"CoCa checkpoint not found: {checkpoint}")
            model = open_clip.create_model(arch, pretrained=str(checkpoint))
        if not hasattr(model, "generate"):
            raise CaptionerError(f"open_clip model {arch} is not a CoCa model (no generate())")
        self.model = model.eval()
        size = model.visual.image_size
        self.transform = open_clip.image_transform(size, is_train=False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.arch, self.checkpoint = arch, str(checkpoint) if checkpoint else None
        self.top_p, self.max_seq_len = top_p, max_seq_len
        self.name = f"coca:{arch}"

    def caption(self, record: ImageTextRecord, image: Any, num_captions: int, rng: random.Random,
                image_embedding: np.ndarray | None = None) -> list[str]:
        import open_clip
        import torch

        x = self.transform(image).unsqueeze(0).repeat(num_captions, 1, 1, 1)
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        tokens = self._sample(x, generator)
        out = []
        for t in tokens:
            text = open_clip.decode(t).split("<end_of_text>")[0].replace("<start_of_text>", "")
            out.append(text.strip())
        return out

    def _sample(self, images: Any, generator: Any, sot: int = 49406, eos: int = 49407,
                min_len: int = 5) -> Any:
        """Nucleus (top-p) sampling with CoCa's decoder (open_clip's ``generate`` needs the
        transformers<5 generation API, so the loop lives here; same steps as open_clip's top_p path)."""
        import torch
        from torch.nn import functional as F

        with torch.inference_mode():
            image_latent, image_embs = self.model._encode_image(images)
            out = torch.full((images.shape[0], 1), sot, dtype=torch.long)
            done = torch.zeros(images.shape[0], dtype=torch.bool)
            for step in range(self.max_seq_len - 1):
                logits = self.model(images, out, image_latent=image_latent, image_embs=image_embs,
                                    output_labels=False)["logits"][:, -1].float()
                if step < min_len:
                    logits[:, eos] = -float("inf")
                if step == self.max_seq_len - 2:
                    nxt = torch.full((images.shape[0],), eos, dtype=torch.long)
                else:
                    probs = F.softmax(logits, dim=-1)
                    sorted_p, idx = probs.sort(dim=-1, descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # smallest set with mass >= top_p
                    sorted_p = sorted_p * keep
                    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
                    nxt = idx.gather(1, choice).squeeze(1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                out = torch.cat([out, nxt[:, None]], dim=1)
                done |= nxt == eos
                if done.all():
                    break
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "coca", "arch": self.arch, "checkpoint": self.checkpoint,
                "generation": "top_p", "top_p": self.top_p, "max_seq_len": self.max_seq_len}


class NeighbourCaptioner:
    """Captions of the nearest training images in teacher space + scene-label prior captions.

    ``bank_embeddings`` are (joint ensemble) image embeddings of the bank records, ``caption_embeddings``
    the text embeddings of all bank captions in record order (same space). For an image, the
    ``num_neighbours`` nearest bank images other than the image itself (same key) are taken, their
    captions are ranked by image-text similarity to the image, duplicates and the image's own
    captions are dropped, and ``label_captions`` of the S slots are filled from scene-label templates.
    """

    def __init__(self, bank: Sequence[ImageTextRecord], bank_embeddings: np.ndarray,
                 caption_embeddings: np.ndarray, num_neighbours: int = 10, label_captions: int = 1,
                 templates: Sequence[str] = CAPTION_TEMPLATES) -> None:
        if len(bank) == 0:
            raise CaptionerError("the neighbour captioner needs a non-empty caption bank")
        self.keys = [r.key for r in bank]
        self.captions = [c for r in bank for c in r.captions]
        self.caption_owner = np.array([i for i, r in enumerate(bank) for _ in r.captions], dtype=np.int64)
        if bank_embeddings.shape[0] != len(bank) or caption_embeddings.shape[0] != len(self.captions):
            raise CaptionerError("caption bank embeddings do not match the bank records / captions")
        self.bank_embeddings = np.asarray(bank_embeddings, dtype=np.float32)
        self.caption_embeddings = np.asarray(caption_embeddings, dtype=np.float32)
        self.first_caption = np.searchsorted(self.caption_owner, np.arange(len(bank)))
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        self.num_neighbours = num_neighbours
        self.label_captions = label_captions
        self.templates = list(templates)
        digest = hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:12]
        self.name = "neighbour+scene-label"
        self._bank_hash = digest

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "neighbour", "bank_size": len(self.keys), "bank_hash": self._bank_hash,
                "num_neighbours": self.num_neighbours, "label_captions": self.label_captions,
                "templates": self.templates}

    def caption(self, record: ImageTextRecord, image: Any, num_captions: int, rng: random.Random,
                image_embedding: np.ndarray | None = None) -> list[str]:
        if image_embedding is None:
            raise CaptionerError("the neighbour captioner needs the image's teacher embedding")
        q = np.asarray(image_embedding, dtype=np.float32)
        own = self.key_index.get(record.key, -1)
        sims = self.bank_embeddings @ q
        if own >= 0:
            sims[own] = -np.inf
        k = min(self.num_neighbours, len(self.keys) - (own >= 0))
        out: list[str] = []
        n_label = min(self.label_captions, num_captions) if record.label else 0
        if k > 0:
            nearest = np.argpartition(-sims, k - 1)[:k]
            cand = np.concatenate([np.flatnonzero(self.caption_owner == i) for i in nearest])
            scores = self.caption_embeddings[cand] @ q
            seen = {c.strip().lower() for c in record.captions}
            for j in cand[np.argsort(-scores, kind="stable")]:
                text = self.captions[j]
                norm = text.strip().lower()
                if norm not in seen:
                    seen.add(norm)
                    out.append(text)
                if len(out) >= num_captions - n_label:
                    break
        if n_label:
            label = clean_class_name(str(record.label))  # "DenseResidential" -> "dense residential"
            templates = rng.sample(self.templates, k=min(n_label, len(self.templates)))
            out += fill_prompts(label, templates)
        while len(out) < num_captions:  # tiny banks: repeat what we have (or fall back to a template)
            out.append(out[len(out) % max(1, len(out))] if out else fill_prompts("a scene", self.templates[:1])[0])
        return out[:num_captions]
