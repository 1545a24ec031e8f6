"""Rotation-free teacher targets: a view's embedding averaged over its 8 dihedral transforms.

Overhead imagery has no "up": a scene rotated by 90 degrees or mirrored shows the same content. The
dihedral average of a teacher's image embedding (identity, 3 rotations, 4 reflections; normalised
mean of the 8 normalised embeddings) is exactly invariant to these transforms, because the set of 8
transformed images of ``rot90(x)`` is the set of 8 of ``x``. It costs 8 teacher forwards per view.
Torch-free (PIL transposes); used by :class:`~rsclip_core.teachers.base.TeacherEnsemble` with
``dihedral=True`` and by the tuned-teacher evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

#: PIL ``Image.transpose`` methods of the 8 dihedral transforms (None: identity)
DIHEDRAL_TRANSPOSES: tuple[str | None, ...] = (
    None, "ROTATE_90", "ROTATE_180", "ROTATE_270", "FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM", "TRANSPOSE", "TRANSVERSE",
)


def dihedral_transform(image: Any, which: int) -> Any:
    """Dihedral transform ``which`` (0-7, :data:`DIHEDRAL_TRANSPOSES`) of a PIL image."""
    from PIL import Image

    method = DIHEDRAL_TRANSPOSES[which]
    return image if method is None else image.transpose(getattr(Image.Transpose, method))


def dihedral_average(encode: Callable[[Sequence[Any]], np.ndarray], images: Sequence[Any]) -> np.ndarray:
    """L2-normalised mean of ``encode``'s (normalised) embeddings of the 8 transforms of each image."""
    from rsclip_core.teachers.base import normalize_rows

    if not len(images):
        return encode(images)
    total = normalize_rows(encode(list(images)))  # transform 0 is the identity
    for which in range(1, len(DIHEDRAL_TRANSPOSES)):
        total = total + normalize_rows(encode([dihedral_transform(im, which) for im in images]))
    return normalize_rows(total)
