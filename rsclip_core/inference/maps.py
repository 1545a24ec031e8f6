"""Maps finer than a tile: dense per-location class probabilities and overlapping-window soft voting.

Each tile contributes a small grid of values (class probabilities or query similarities): one
value for the whole tile (``tile``/``windows`` detail) or one per dense cell of the image graph's
``dense`` output (``dense``/``dense+windows``, see ``rsclip_core.spec``). The grid is upsampled
bilinearly to the output cells whose centres fall inside the tile and accumulated with a per-pixel
window weight: uniform when tiles do not overlap, a tent (1 at the tile centre, ~0 at its edges)
when they do, so overlapping tiles blend smoothly instead of the last one (or a block average)
winning. The output grid covers exactly the processing region (the raster or the requested
extent): its cell size is the requested one adjusted down so a whole number of cells fits.

Memory: the output is produced in bands of rows (`BAND_BYTES` of float32 accumulators per band),
so a full-resolution K x H x W probability cube is never held; only the final codes (uint8) and
confidence (float32) rasters are.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from rsclip_core.inference.errors import RsclipInputError
from rsclip_core.inference.index import EmbeddingIndex

DETAILS = ("tile", "dense", "windows", "dense+windows")
"""Map detail: one value per tile, per dense cell, per tile with overlapping windows, or both."""
DEFAULT_DETAIL = "dense"
"""Default detail of a model with dense embeddings (without: ``windows``)."""
DEFAULT_CELLS_PER_TILE = 8
WINDOWS_OVERLAP = 0.5
"""Tile overlap the ``windows`` details use unless the tiling asks for one."""
BAND_BYTES = 64 << 20
MIN_WEIGHT = 1e-3


def detail_overlap(detail: str, overlap: float) -> float:
    """The tile overlap a map detail runs with: ``windows`` details need overlap (default 0.5)."""
    check_detail(detail)
    if detail.endswith("windows") and float(overlap) <= 0.0:
        return WINDOWS_OVERLAP
    return float(overlap)


def check_detail(detail: str) -> str:
    if detail not in DETAILS:
        raise RsclipInputError(f"must be one of {', '.join(DETAILS)}, got {detail!r}", field="detail")
    return detail


def default_detail(index: EmbeddingIndex) -> str:
    """``dense`` when the index has dense embeddings, else ``windows``."""
    return "dense" if index.dense is not None else "windows"


@dataclass(frozen=True)
class MapGrid:
    """Output cells over the processing region ``[col0, col1) x [row0, row1)`` (source pixels).

    ``cell_w``/``cell_h`` are in source pixels (not necessarily integers); ``n_cols * cell_w``
    equals the region width exactly, so the map's extent is the region's.
    """

    col0: int
    row0: int
    cell_w: float
    cell_h: float
    n_cols: int
    n_rows: int

    def transform(self, raster_affine: Any) -> Any:
        """Affine of the output cells from the raster's affine."""
        from affine import Affine

        t = raster_affine
        return Affine(t.a * self.cell_w, t.b * self.cell_h, t.a * self.col0 + t.b * self.row0 + t.c,
                      t.d * self.cell_w, t.e * self.cell_h, t.d * self.col0 + t.e * self.row0 + t.f)

    def col_span(self, x0: float, x1: float) -> tuple[int, int]:
        """Output columns ``[j0, j1)`` whose centres lie in source columns ``[x0, x1)``."""
        return _span(x0 - self.col0, x1 - self.col0, self.cell_w, self.n_cols)

    def row_span(self, y0: float, y1: float) -> tuple[int, int]:
        return _span(y0 - self.row0, y1 - self.row0, self.cell_h, self.n_rows)


def _span(a: float, b: float, cell: float, n: int) -> tuple[int, int]:
    lo = max(0, math.ceil(a / cell - 0.5))
    hi = min(n, math.ceil(b / cell - 0.5))
    return lo, max(lo, hi)


def map_grid(index: EmbeddingIndex, *, cells_per_tile: int | None = None,
             map_resolution: float | None = None) -> MapGrid:
    """The output grid: ``map_resolution`` (map units of the raster CRS; metres converted to degrees
    for a geographic CRS) or ``cells_per_tile`` cells across one tile (default `DEFAULT_CELLS_PER_TILE`).
    """
    g = index.grid
    if map_resolution is not None:
        if not float(map_resolution) > 0:
            raise RsclipInputError(f"must be > 0, got {map_resolution}", field="map_resolution")
        t = index.affine
        px_x, px_y = abs(t.a), abs(t.e)
        res_x = res_y = float(map_resolution)
        crs = index.crs
        if crs is not None and crs.is_geographic:
            lat = t.f + t.e * (g.row0 + g.row1) / 2.0
            res_y = res_x / 110_540.0
            res_x = res_x / (111_320.0 * max(0.01, math.cos(math.radians(lat))))
        cell_x, cell_y = res_x / px_x, res_y / px_y
    else:
        if cells_per_tile is not None and (int(cells_per_tile) != cells_per_tile or cells_per_tile < 1):
            raise RsclipInputError(f"must be an integer >= 1, got {cells_per_tile}", field="cells_per_tile")
        n = DEFAULT_CELLS_PER_TILE if cells_per_tile is None else int(cells_per_tile)
        cell_x, cell_y = g.tile_w / n, g.tile_h / n
    width, height = g.col1 - g.col0, g.row1 - g.row0
    n_cols, n_rows = max(1, math.ceil(width / cell_x - 1e-9)), max(1, math.ceil(height / cell_y - 1e-9))
    if n_cols * n_rows > 400_000_000:
        raise RsclipInputError(f"{n_cols} x {n_rows} output cells is too many: choose a coarser map resolution",
                               field="map_resolution")
    return MapGrid(g.col0, g.row0, width / n_cols, height / n_rows, n_cols, n_rows)


def _interp_matrix(n_out: int, start: float, step: float, n_grid: int) -> np.ndarray:
    """[n_out, n_grid] bilinear weights of grid cells (centres at (i+0.5)/n_grid) at positions
    ``u = start + k*step`` (fractions of the tile), clamped at the grid's outer centres."""
    u = start + step * np.arange(n_out)
    g = np.clip(u * n_grid - 0.5, 0.0, n_grid - 1.0)
    i0 = np.floor(g).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_grid - 1)
    f = g - i0
    m = np.zeros((n_out, n_grid), dtype=np.float32)
    m[np.arange(n_out), i0] += 1.0 - f
    m[np.arange(n_out), i1] += f
    return m


def _window(n_out: int, start: float, step: float, tent: bool) -> np.ndarray:
    if not tent:
        return np.ones(n_out, dtype=np.float32)
    u = start + step * np.arange(n_out)
    return np.maximum(MIN_WEIGHT, 1.0 - np.abs(2.0 * u - 1.0)).astype(np.float32)


ValuesFn = Callable[[np.ndarray], np.ndarray]
"""Positions into the index -> per-tile value grids ``[n, C, gh, gw]``."""


def render(index: EmbeddingIndex, grid: MapGrid, values: ValuesFn, channels: int, *, tent: bool,
           band_bytes: int = BAND_BYTES) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Blend per-tile value grids onto ``grid``, one band of rows at a time.

    Yields ``(first_row, mean [C, rows, cols] float32, covered [rows, cols] bool)`` for consecutive
    bands; ``mean`` is the window-weighted average of every tile covering a cell (0 where none).
    """
    windows = index.windows().astype(np.float64)
    spans = np.array([grid.row_span(float(top), float(top + height)) for top, height in zip(windows[:, 1], windows[:, 3])],
                     dtype=np.int64).reshape(-1, 2)
    rows_per_band = max(1, int(band_bytes // max(1, 4 * (channels + 1) * grid.n_cols)))
    for r0 in range(0, grid.n_rows, rows_per_band):
        r1 = min(grid.n_rows, r0 + rows_per_band)
        acc = np.zeros((channels, r1 - r0, grid.n_cols), dtype=np.float32)
        wsum = np.zeros((r1 - r0, grid.n_cols), dtype=np.float32)
        tiles = np.flatnonzero((spans[:, 0] < r1) & (spans[:, 1] > r0)) if len(spans) else np.zeros(0, np.int64)
        for start in range(0, len(tiles), 256):
            chunk = tiles[start:start + 256]
            vals = values(chunk)
            for k, v in zip(chunk, vals):
                x0, y0, w, h = windows[k]
                j0, j1 = grid.col_span(x0, x0 + w)
                i0, i1 = max(spans[k, 0], r0), min(spans[k, 1], r1)
                if j1 <= j0 or i1 <= i0:
                    continue
                ux = (grid.col0 + (j0 + 0.5) * grid.cell_w - x0) / w
                uy = (grid.row0 + (i0 + 0.5) * grid.cell_h - y0) / h
                sx, sy = grid.cell_w / w, grid.cell_h / h
                ax = _interp_matrix(j1 - j0, ux, sx, v.shape[2])
                ay = _interp_matrix(i1 - i0, uy, sy, v.shape[1])
                patch = np.einsum("rh,chw,qw->crq", ay, v.astype(np.float32), ax, optimize=True)
                weight = np.outer(_window(i1 - i0, uy, sy, tent), _window(j1 - j0, ux, sx, tent))
                acc[:, i0 - r0:i1 - r0, j0:j1] += weight[None] * patch
                wsum[i0 - r0:i1 - r0, j0:j1] += weight
        covered = wsum > 0
        acc[:, covered] /= wsum[covered]
        yield r0, acc, covered


def dense_similarities(index: EmbeddingIndex, positions: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Cosine similarity of every dense cell of the tiles at ``positions`` with ``text [Q, D]``:
    ``[n, Q, gh, gw]`` float32."""
    if index.dense is None:
        raise RsclipInputError("this index has no dense embeddings (the model's image graph has no "
                               "'dense' output): use detail 'tile' or 'windows'", field="detail")
    cells = index.dense[np.asarray(positions, dtype=np.int64)].astype(np.float32)  # [n, gh, gw, D]
    sims = cells @ np.asarray(text, dtype=np.float32).T  # [n, gh, gw, Q]
    return np.ascontiguousarray(np.moveaxis(sims, -1, 1))


def softmax_axis1(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def probability_values(index: EmbeddingIndex, text: np.ndarray, logit_scale: float, detail: str) -> ValuesFn:
    """A `ValuesFn` of class probabilities (softmax over ``logit_scale * cosine``) for ``detail``."""
    check_detail(detail)
    if detail.startswith("dense"):
        return lambda pos: softmax_axis1(logit_scale * dense_similarities(index, pos, text))
    emb = index.embeddings_f32()

    def tile_probs(pos: np.ndarray) -> np.ndarray:
        probs = softmax_axis1(logit_scale * (emb[pos] @ np.asarray(text, dtype=np.float32).T))
        return probs[:, :, None, None]

    return tile_probs


def similarity_values(index: EmbeddingIndex, text: np.ndarray, detail: str) -> ValuesFn:
    """A `ValuesFn` of query similarities (one channel) for ``detail``."""
    check_detail(detail)
    text = np.asarray(text, dtype=np.float32).reshape(1, -1)
    if detail.startswith("dense"):
        return lambda pos: dense_similarities(index, pos, text)
    emb = index.embeddings_f32()
    return lambda pos: (emb[pos] @ text.T)[:, :, None, None]


def uses_tent(index: EmbeddingIndex) -> bool:
    """Tent windows where tiles overlap, uniform ones where they tile the raster edge to edge."""
    g = index.grid
    return g.stride_x < g.tile_w or g.stride_y < g.tile_h


def localise(sim: np.ndarray, window: np.ndarray, upsample: int = 8, level: float = 0.5
             ) -> tuple[tuple[float, float, float, float], tuple[float, float], float]:
    """Where a query matches inside one tile, from its dense similarity grid ``sim [gh, gw]``.

    The grid is upsampled bilinearly (``upsample`` sub-cells per dense cell); the point is the
    best sub-cell, the box the bounding box of the 4-connected region around it where the similarity
    is at least ``min + level * (max - min)``. Returns ``(box (x0, y0, x1, y1), point (x, y), peak)``
    in source pixels (window ``(col_off, row_off, width, height)``).
    """
    gh, gw = sim.shape
    ny, nx = gh * upsample, gw * upsample
    ay = _interp_matrix(ny, 0.5 / ny, 1.0 / ny, gh)
    ax = _interp_matrix(nx, 0.5 / nx, 1.0 / nx, gw)
    fine = ay @ sim.astype(np.float32) @ ax.T
    peak_i, peak_j = np.unravel_index(int(np.argmax(fine)), fine.shape)
    lo, hi = float(fine.min()), float(fine.max())
    mask = fine >= lo + level * (hi - lo) if hi > lo else np.ones_like(fine, dtype=bool)
    region = _component(mask, int(peak_i), int(peak_j))
    rows, cols = np.nonzero(region)
    x0, y0, w, h = (float(v) for v in window)
    sx, sy = w / nx, h / ny
    box = (x0 + cols.min() * sx, y0 + rows.min() * sy, x0 + (cols.max() + 1) * sx, y0 + (rows.max() + 1) * sy)
    point = (x0 + (peak_j + 0.5) * sx, y0 + (peak_i + 0.5) * sy)
    return box, point, hi


def _component(mask: np.ndarray, i: int, j: int) -> np.ndarray:
    """The 4-connected component of ``mask`` containing ``(i, j)``."""
    out = np.zeros_like(mask, dtype=bool)
    stack = [(i, j)]
    h, w = mask.shape
    while stack:
        r, c = stack.pop()
        if r < 0 or c < 0 or r >= h or c >= w or out[r, c] or not mask[r, c]:
            continue
        out[r, c] = True
        stack.extend(((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)))
    return out
