"""Zero-shot land cover: class files (name, prompts, colour) and per-tile / per-cell classification.

Codes in the output rasters: 0 = no data (no tile), 1..K = the classes in file order,
255 = unclassified (confidence below the threshold).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core.inference.errors import RsclipFileNotFoundError, RsclipInputError
from rsclip_core.inference.index import EmbeddingIndex
from rsclip_core.inference.model import EmbeddingModel
from rsclip_core.inference.tiling import aggregate_to_cells

NODATA_CODE = 0
UNCLASSIFIED_CODE = 255
UNCLASSIFIED_COLOR = (128, 128, 128)
MAX_CLASSES = 254


@dataclass
class LandCoverClass:
    """One class: its name, the text prompts describing it and its map colour (RGB 0..255)."""

    name: str
    prompts: list[str] = field(default_factory=list)
    color: tuple[int, int, int] = (128, 128, 128)

    def __post_init__(self) -> None:
        self.name = str(self.name).strip()
        self.prompts = [str(p).strip() for p in (self.prompts or []) if str(p).strip()] or [self.name]
        self.color = _parse_color(self.color, self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "prompts": list(self.prompts), "color": "#{:02x}{:02x}{:02x}".format(*self.color)}


def _parse_color(value: Any, name: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) != 6:
            raise RsclipInputError(f"class {name!r}: colour {value!r} is not #rrggbb")
        try:
            red, green, blue = (int(text[i:i + 2], 16) for i in (0, 2, 4))
            return red, green, blue
        except ValueError as exc:
            raise RsclipInputError(f"class {name!r}: colour {value!r} is not #rrggbb") from exc
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise RsclipInputError(f"class {name!r}: colour {value!r} is not [r, g, b] or #rrggbb") from exc
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise RsclipInputError(f"class {name!r}: colour {value!r} needs 3 values in 0..255")
    return rgb[0], rgb[1], rgb[2]


def default_classes_path(model: EmbeddingModel | None = None) -> Path:
    """The model's own class list (metadata ``default_classes``) if it has one, else rsclip's."""
    if model is not None and model.metadata.default_classes:
        candidate = model.model_dir / model.metadata.default_classes
        if candidate.is_file():
            return candidate
    from rsclip_core import resources

    return resources.default_classes_file()


def parse_classes(data: Any, origin: str | None = None) -> list[LandCoverClass]:
    """Classes from parsed YAML/JSON: a list of {name, prompts, color} or {"classes": [...]}.

    ``origin`` (e.g. the class file) prefixes error messages; errors name the ``classes`` field.
    """
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, dict):  # {name: {prompts, color}} or {name: [prompts]}
        data = [dict(name=k, **(v if isinstance(v, dict) else {"prompts": v})) for k, v in data.items()]
    if not isinstance(data, list):
        raise RsclipInputError(f"{_at(origin)}expected a list of classes (name, prompts, color)", field="classes")
    classes = []
    item: Any
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not str(item.get("name", "")).strip():
            raise RsclipInputError(f"{_at(origin)}class #{i + 1} has no name", field="classes")
        prompts = item.get("prompts", [])
        if isinstance(prompts, str):
            prompts = [prompts]
        color: Any = item.get("color", item.get("colour", _auto_color(i)))  # validated by LandCoverClass
        classes.append(LandCoverClass(item["name"], list(prompts), color))
    validate_classes(classes, origin)
    return classes


def _at(origin: str | None) -> str:
    return f"{origin}: " if origin else ""


def validate_classes(classes: Sequence[LandCoverClass], origin: str | None = None) -> None:
    """Refuse an empty, too long or ambiguous class list (errors name the ``classes`` field)."""
    if not classes:
        raise RsclipInputError(f"{_at(origin)}empty class list", field="classes")
    if len(classes) > MAX_CLASSES:
        raise RsclipInputError(f"{_at(origin)}at most {MAX_CLASSES} classes, got {len(classes)}", field="classes")
    names = [c.name for c in classes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RsclipInputError(f"{_at(origin)}duplicate class names {dupes}", field="classes")


def check_class_count(classes: Sequence[LandCoverClass], threshold: float | None = None) -> None:
    """Refuse a single class; warn when a threshold cannot mark anything unclassified.

    The confidence of a cell is the softmax probability of its best class among the K classes,
    so it is always >= 1/K: with one class every cell is that class at confidence 1.00, and a
    threshold <= 1/K has no effect.
    """
    k = len(classes)
    if k == 1:
        raise RsclipInputError(
            f"classes: only one class ({classes[0].name!r}): every cell would be it at confidence 1.00; "
            "give at least 2 classes (confidence is the probability among the K classes, never below 1/K)")
    if threshold is not None and k > 1 and float(threshold) <= 1.0 / k:
        import warnings

        from rsclip_core.inference.errors import RsclipWarning

        warnings.warn(f"threshold {threshold:g} has no effect with {k} classes: the best class's probability "
                      f"is always >= 1/{k} = {1.0 / k:.3f}", RsclipWarning, stacklevel=3)


def _auto_color(i: int) -> tuple[int, int, int]:
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    return palette[i % len(palette)]


def load_classes(path: str | os.PathLike | None = None) -> list[LandCoverClass]:
    """Read a class file (.yaml/.yml/.json); default: `default_classes_path()`."""
    path = Path(path) if path is not None else default_classes_path()
    if not path.is_file():
        raise RsclipFileNotFoundError(f"{path}: no such file", field="classes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RsclipInputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                               f"{exc.start}); save the class file as UTF-8", field="classes") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise RsclipInputError(f"{path}: cannot parse ({str(exc).splitlines()[0]})", field="classes") from exc
    return parse_classes(data, str(path))


def save_classes(classes: Sequence[LandCoverClass], path: str | os.PathLike) -> Path:
    """Write a class file (JSON for .json, YAML otherwise), atomically."""
    validate_classes(classes, str(path))
    path = Path(path)
    payload = {"classes": [c.to_dict() for c in classes]}
    if path.suffix.lower() == ".json":
        text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(payload, sort_keys=False, allow_unicode=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass
class LandCoverResult:
    """Per-tile probabilities and the per-cell map derived from them."""

    classes: list[LandCoverClass]
    tile_probs: np.ndarray  # float32 [N, K]
    tile_codes: np.ndarray  # uint8 [N]: 1..K or 255
    codes: np.ndarray  # uint8 [rows, cols] cell map: 0 nodata, 1..K, 255 unclassified
    confidence: np.ndarray  # float32 [rows, cols], NaN where no data
    transform: Any  # affine of the cell grid
    crs_wkt: str | None
    threshold: float | None
    region_bounds: tuple[float, float, float, float] | None = None  # what the outputs cover exactly
    coverage: np.ndarray | None = None  # float [rows, cols]: fraction of each cell inside the region

    def class_stats(self) -> list[dict[str, Any]]:
        """Cells, area (map units^2, edge cells counted by their part inside the region) and
        fraction of mapped area per class (plus unclassified)."""
        cell_area = abs(self.transform.a * self.transform.e)
        cover = self.coverage if self.coverage is not None else np.ones(self.codes.shape)
        mapped_area = float(cover[self.codes != NODATA_CODE].sum())
        rows = []
        entries = [(i + 1, c.name) for i, c in enumerate(self.classes)] + [(UNCLASSIFIED_CODE, "unclassified")]
        for code, name in entries:
            cells = int((self.codes == code).sum())
            if code == UNCLASSIFIED_CODE and cells == 0:
                continue
            conf = self.confidence[self.codes == code]
            rows.append({
                "code": code,
                "name": name,
                "cells": cells,
                "area": float(cover[self.codes == code].sum()) * cell_area,
                "fraction": float(cover[self.codes == code].sum()) / mapped_area if mapped_area else 0.0,
                "mean_confidence": float(conf.mean()) if cells else float("nan"),
            })
        return rows


def class_text_embeddings(model: EmbeddingModel, classes: Sequence[LandCoverClass],
                          templates: Sequence[str] | None = None) -> np.ndarray:
    """[K, D]: each class's prompts ensembled over the templates, then averaged and normalised."""
    from rsclip_core.inference.model import l2_normalize

    rows = [model.encode_prompts(c.prompts, templates).mean(axis=0) for c in classes]
    return l2_normalize(np.stack(rows))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def classify(index: EmbeddingIndex, model: EmbeddingModel, classes: list[LandCoverClass],
             threshold: float | None = None, *, templates: Sequence[str] | None = None,
             detail: str = "tile", cells_per_tile: int | None = None,
             map_resolution: float | None = None) -> LandCoverResult:
    """Zero-shot classify every tile (softmax over ``logit_scale * cosine``) and map the cells.

    ``detail="tile"`` without a map resolution: one cell per tile stride, cells average the
    probabilities of all tiles covering them (weighted by overlap). Any other ``detail``
    (``dense``, ``windows``, ``dense+windows``, see `rsclip_core.inference.maps`) or a
    ``cells_per_tile``/``map_resolution`` maps at that finer resolution, exactly over the region.
    A cell whose best probability is below ``threshold`` becomes 255 (unclassified).
    """
    from rsclip_core.inference.maps import check_detail

    validate_classes(classes)
    check_detail(detail)
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise RsclipInputError(f"must be a probability in [0, 1], got {threshold}", field="threshold")
    check_class_count(classes, threshold)
    text = class_text_embeddings(model, classes, templates)
    if len(index):
        probs = softmax(model.logit_scale * index.scores(text))
    else:
        probs = np.zeros((0, len(classes)), dtype=np.float32)
    tile_codes = (probs.argmax(axis=1) + 1).astype(np.uint8) if len(probs) else np.zeros(0, np.uint8)
    if threshold is not None and len(probs):
        tile_codes[probs.max(axis=1) < threshold] = UNCLASSIFIED_CODE
    if detail != "tile" or cells_per_tile is not None or map_resolution is not None:
        return _classify_fine(index, model, classes, threshold, text, probs, tile_codes, detail,
                              cells_per_tile, map_resolution)
    sums, weights = aggregate_to_cells(index.grid, index.tile_rc, probs)
    has = weights > 0
    cell_probs = np.zeros(sums.shape, dtype=np.float32)
    cell_probs[has] = sums[has] / weights[has][:, None]
    codes = np.zeros(weights.shape, dtype=np.uint8)
    confidence = np.full(weights.shape, np.nan, dtype=np.float32)
    if has.any():
        codes[has] = (cell_probs[has].argmax(axis=1) + 1).astype(np.uint8)
        confidence[has] = cell_probs[has].max(axis=1)
        if threshold is not None:
            codes[has & (confidence < threshold)] = UNCLASSIFIED_CODE
    return LandCoverResult(
        classes=list(classes), tile_probs=probs, tile_codes=tile_codes, codes=codes,
        confidence=confidence, transform=index.cell_transform, crs_wkt=index.crs_wkt,
        threshold=None if threshold is None else float(threshold),
        region_bounds=index.region_bounds, coverage=index.grid.cell_coverage(),
    )


def _classify_fine(index: EmbeddingIndex, model: EmbeddingModel, classes: list[LandCoverClass],
                   threshold: float | None, text: np.ndarray, probs: np.ndarray, tile_codes: np.ndarray,
                   detail: str, cells_per_tile: int | None, map_resolution: float | None) -> LandCoverResult:
    """Land cover on a `maps.MapGrid` finer than the tiles, blended band by band (bounded memory)."""
    from rsclip_core.inference.maps import map_grid, probability_values, render, uses_tent

    grid = map_grid(index, cells_per_tile=cells_per_tile, map_resolution=map_resolution)
    codes = np.zeros((grid.n_rows, grid.n_cols), dtype=np.uint8)
    confidence = np.full((grid.n_rows, grid.n_cols), np.nan, dtype=np.float32)
    if len(index):
        values = probability_values(index, text, model.logit_scale, detail)
        for r0, mean, covered in render(index, grid, values, len(classes), tent=uses_tent(index)):
            r1 = r0 + mean.shape[1]
            band_codes = (mean.argmax(axis=0) + 1).astype(np.uint8)
            band_conf = mean.max(axis=0)
            if threshold is not None:
                band_codes[band_conf < threshold] = UNCLASSIFIED_CODE
            band_codes[~covered] = NODATA_CODE
            band_conf[~covered] = np.nan
            codes[r0:r1], confidence[r0:r1] = band_codes, band_conf
    return LandCoverResult(
        classes=list(classes), tile_probs=probs, tile_codes=tile_codes, codes=codes,
        confidence=confidence, transform=grid.transform(index.affine), crs_wkt=index.crs_wkt,
        threshold=None if threshold is None else float(threshold),
        region_bounds=index.region_bounds, coverage=np.ones(codes.shape),
    )
