"""Tile grids over a raster: where tiles are, in source pixels, and how they map to output cells.

Pure arithmetic (numpy only), so the grid can be property-tested without any raster. Windows are
integer source-pixel rectangles ``(col_off, row_off, width, height)``; the grid starts at the
processing extent's top-left corner and edge tiles may hang over the raster edge ("boundless":
the reader pads them and marks the padding invalid).

Output rasters (land-cover codes, confidence, search heat-map) use a *cell* grid whose cell is one
tile stride: each cell receives the overlap-area-weighted average of every tile covering it, so
overlapping tiles vote instead of the last one winning. The cell grid starts at the region's
top-left corner and has ``ceil(region / stride)`` cells per axis, so it is the region snapped
outward by less than one cell on the right and bottom edges (`TileGrid.cell_coverage` gives the
fraction of each edge cell inside the region); vector outputs (tile polygons, class polygons)
are clipped to the region exactly (`TileGrid.clip_windows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np

from rsclip_core.inference.errors import RsclipInputError

Stretch = Union[str, tuple[float, float]]


@dataclass
class TilingConfig:
    """How a raster is cut into model-sized tiles.

    tile_size: tile edge in *target* pixels (default: the model's ``image_size``).
    overlap: fraction of a tile shared with its neighbour, in [0, 1).
    resolution: target ground resolution in metres per pixel (resampled on read; default native).
        For geographic CRSs it is converted to degrees at the raster's centre latitude.
    bands: 1-based band indices used as R, G, B (one index is repeated as grey).
    extent: ``None`` (whole raster) | ``(minx, miny, maxx, maxy)`` in the raster CRS | a list of
        shapely geometries in the raster CRS | path to a vector file (reprojected to the raster CRS).
    batch_size: tiles per onnxruntime call.
    min_valid_fraction: tiles with fewer valid (not nodata / alpha / outside) pixels are skipped.
    stretch: ``"auto"`` (uint8 as is, other types percentile-stretched), ``"percentile"``,
        ``"none"`` (values already in [0, 1] or 0..255 for uint8) or a fixed ``(low, high)``.
    percentiles: low/high percentiles of the stretch, computed once per raster.
    """

    tile_size: int | None = None
    overlap: float = 0.0
    resolution: float | None = None
    bands: tuple[int, ...] | None = None
    extent: Any = None
    batch_size: int = 16
    min_valid_fraction: float = 0.1
    stretch: Stretch = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)

    def validate(self) -> TilingConfig:
        """Check values; raise `RsclipInputError` naming the option at fault. Returns self."""
        if self.tile_size is not None and (int(self.tile_size) != self.tile_size or self.tile_size < 8):
            raise RsclipInputError(f"must be an integer >= 8 pixels, got {self.tile_size}", field="tile_size")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise RsclipInputError(f"must be a fraction in [0, 1), got {self.overlap}", field="overlap")
        if self.resolution is not None and not float(self.resolution) > 0:
            raise RsclipInputError(f"must be > 0 metres per pixel, got {self.resolution}", field="resolution")
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if len(bands) not in (1, 3) or min(bands) < 1:
                raise RsclipInputError(
                    f"give 3 band numbers (1-based) for R,G,B or 1 for grey, got {self.bands}", field="bands"
                )
            self.bands = bands
        if int(self.batch_size) < 1:
            raise RsclipInputError(f"must be >= 1, got {self.batch_size}", field="batch_size")
        if not 0.0 <= float(self.min_valid_fraction) <= 1.0:
            raise RsclipInputError(f"min_valid_fraction: must be in [0, 1], got {self.min_valid_fraction}")
        if isinstance(self.stretch, str):
            if self.stretch not in ("auto", "percentile", "none"):
                raise RsclipInputError(f"stretch: auto | percentile | none | (low, high), got {self.stretch!r}")
        else:
            low, high = (float(v) for v in self.stretch)
            if not high > low:
                raise RsclipInputError(f"stretch: high must be > low, got {self.stretch}")
            self.stretch = (low, high)
        p_low, p_high = (float(v) for v in self.percentiles)
        if not 0.0 <= p_low < p_high <= 100.0:
            raise RsclipInputError(f"percentiles: need 0 <= low < high <= 100, got {self.percentiles}")
        return self

    def as_dict(self) -> dict:
        """JSON-able summary (the extent is described by the caller, see `raster.describe_extent`)."""
        data = asdict(self)
        data.pop("extent")
        data["bands"] = list(self.bands) if self.bands is not None else None
        data["stretch"] = list(self.stretch) if not isinstance(self.stretch, str) else self.stretch
        data["percentiles"] = list(self.percentiles)
        return data


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of integer tile windows covering ``[col0, col1) x [row0, row1)``."""

    col0: int
    row0: int
    col1: int
    row1: int
    tile_w: int
    tile_h: int
    stride_x: int
    stride_y: int
    n_cols: int
    n_rows: int

    @property
    def n_tiles(self) -> int:
        return self.n_cols * self.n_rows

    @property
    def n_cell_cols(self) -> int:
        return max(1, math.ceil((self.col1 - self.col0) / self.stride_x))

    @property
    def n_cell_rows(self) -> int:
        return max(1, math.ceil((self.row1 - self.row0) / self.stride_y))

    def tile_rc(self) -> np.ndarray:
        """int64 [n_tiles, 2]: (grid row, grid col) of every tile in raster (row-major) order."""
        rows, cols = np.meshgrid(np.arange(self.n_rows), np.arange(self.n_cols), indexing="ij")
        return np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int64)

    def windows(self, rc: np.ndarray | None = None) -> np.ndarray:
        """int64 [n, 4]: ``(col_off, row_off, width, height)`` source-pixel windows (unclipped)."""
        rc = self.tile_rc() if rc is None else np.asarray(rc, dtype=np.int64)
        out = np.empty((len(rc), 4), dtype=np.int64)
        out[:, 0] = self.col0 + rc[:, 1] * self.stride_x
        out[:, 1] = self.row0 + rc[:, 0] * self.stride_y
        out[:, 2] = self.tile_w
        out[:, 3] = self.tile_h
        return out

    def clip_windows(self, windows: np.ndarray) -> np.ndarray:
        """Windows intersected with the region ``[col0, col1) x [row0, row1)`` (edge tiles cut)."""
        w = np.asarray(windows, dtype=np.int64).reshape(-1, 4).copy()
        x0 = np.clip(w[:, 0], self.col0, self.col1)
        y0 = np.clip(w[:, 1], self.row0, self.row1)
        x1 = np.clip(w[:, 0] + w[:, 2], self.col0, self.col1)
        y1 = np.clip(w[:, 1] + w[:, 3], self.row0, self.row1)
        w[:, 0], w[:, 1], w[:, 2], w[:, 3] = x0, y0, x1 - x0, y1 - y0
        return w

    def cell_coverage(self) -> np.ndarray:
        """float64 [cell rows, cell cols]: fraction of each output cell inside the region (1 but at the edges)."""
        def axis(start: int, end: int, stride: int, n: int) -> np.ndarray:
            left = start + np.arange(n) * stride
            return np.clip((end - left) / stride, 0.0, 1.0)

        return np.outer(axis(self.row0, self.row1, self.stride_y, self.n_cell_rows),
                        axis(self.col0, self.col1, self.stride_x, self.n_cell_cols))

    def cell_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Fraction of a cell covered by a tile, for the cells a tile spans (x then y)."""
        return _cover_weights(self.tile_w, self.stride_x), _cover_weights(self.tile_h, self.stride_y)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TileGrid:
        return cls(**{k: int(v) for k, v in data.items()})


def _cover_weights(tile: int, stride: int) -> np.ndarray:
    n = math.ceil(tile / stride)
    return np.array([min(tile - m * stride, stride) / stride for m in range(n)], dtype=np.float64)


def plan_grid(
    region: Sequence[int], tile_w: int, tile_h: int, overlap: float = 0.0
) -> TileGrid:
    """Grid of ``tile_w x tile_h`` windows with ``overlap`` covering ``region = (col0, row0, col1, row1)``.

    The last tile of a row/column may extend past ``col1``/``row1`` (boundless edge tile) so that
    every pixel of the region is covered; no tile starts at or beyond the region's end.
    """
    col0, row0, col1, row1 = (int(v) for v in region)
    if col1 <= col0 or row1 <= row0:
        raise RsclipInputError(f"empty processing region {region}", field="extent")
    if tile_w < 1 or tile_h < 1:
        raise RsclipInputError(f"tile of {tile_w}x{tile_h} source pixels is empty", field="tile_size")
    stride_x = max(1, int(round(tile_w * (1.0 - overlap))))
    stride_y = max(1, int(round(tile_h * (1.0 - overlap))))
    n_cols = 1 + max(0, math.ceil((col1 - col0 - tile_w) / stride_x))
    n_rows = 1 + max(0, math.ceil((row1 - row0 - tile_h) / stride_y))
    return TileGrid(col0, row0, col1, row1, int(tile_w), int(tile_h), stride_x, stride_y, n_cols, n_rows)


def clip_window(window: Sequence[int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Intersection of a window with the raster ``[0, width) x [0, height)``; None if empty."""
    col, row, w, h = (int(v) for v in window)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + w, width), min(row + h, height)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1 - c0, r1 - r0


def aggregate_to_cells(grid: TileGrid, tile_rc: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overlap-weighted sum of per-tile ``values [n, C]`` on the cell grid.

    Returns ``(sums [rows, cols, C] float64, weights [rows, cols] float64)``; divide where
    ``weights > 0`` for the weighted mean. Cells no tile touches keep weight 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rows, cols = grid.n_cell_rows, grid.n_cell_cols
    sums = np.zeros((rows, cols, values.shape[1]), dtype=np.float64)
    weights = np.zeros((rows, cols), dtype=np.float64)
    tile_rc = np.asarray(tile_rc, dtype=np.int64).reshape(-1, 2)
    if len(tile_rc) == 0:
        return sums, weights
    wx, wy = grid.cell_weights()
    for n, w_row in enumerate(wy):
        for m, w_col in enumerate(wx):
            r = tile_rc[:, 0] + n
            c = tile_rc[:, 1] + m
            keep = (r < rows) & (c < cols)
            if not keep.any():
                continue
            w = w_row * w_col
            np.add.at(sums, (r[keep], c[keep]), w * values[keep])
            np.add.at(weights, (r[keep], c[keep]), w)
    return sums, weights
