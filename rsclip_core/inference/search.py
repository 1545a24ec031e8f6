"""Text search over an embedding index: ranked tiles, overlapping hits suppressed, heat-map.

With dense embeddings (``EmbeddingIndex.dense``) every hit is localised inside its tile
(`rsclip_core.inference.maps.localise`): its geometry is a tight box around where the query
matches, with a point at the best match; the tile stays as attributes (``tile_minx`` ...), and
overlap suppression works on the tight boxes. The heat-map is then at sub-tile resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rsclip_core.inference.errors import RsclipInputError
from rsclip_core.inference.index import EmbeddingIndex
from rsclip_core.inference.model import EmbeddingModel
from rsclip_core.inference.tiling import aggregate_to_cells


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise RsclipInputError("empty search text", field="query")
    return query.strip()


def select_non_overlapping(windows: np.ndarray, order: np.ndarray, top_k: int) -> np.ndarray:
    """Greedy suppression: walk ``order`` (best first), keep boxes ``(x0, y0, w, h)`` sharing no
    area with a kept one."""
    kept: list = []
    boxes = np.asarray(windows, dtype=np.float64)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    for i in order:
        if kept:
            k = np.asarray(kept)
            overlap_w = np.minimum(x1[k], x1[i]) - np.maximum(x0[k], x0[i])
            overlap_h = np.minimum(y1[k], y1[i]) - np.maximum(y0[k], y0[i])
            if ((overlap_w > 0) & (overlap_h > 0)).any():
                continue
        kept.append(int(i))
        if len(kept) >= top_k:
            break
    return np.asarray(kept, dtype=np.int64)


def rank_tiles(index: EmbeddingIndex, text_embedding: np.ndarray, top_k: int = 50,
               suppress_overlap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the index) and scores of the best ``top_k`` tiles for one text embedding."""
    if top_k < 1:
        raise RsclipInputError(f"must be >= 1, got {top_k}", field="top_k")
    if len(index) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = index.scores(text_embedding)
    n = len(scores)
    overlapping = index.grid.stride_x < index.grid.tile_w or index.grid.stride_y < index.grid.tile_h
    if not (suppress_overlap and overlapping):
        k = min(top_k, n)
        part = np.argpartition(-scores, k - 1)[:k]
        order = part[np.argsort(-scores[part], kind="stable")]
        return order, scores[order]
    windows = index.windows()
    pool = min(n, top_k * 16)
    while True:
        part = np.argpartition(-scores, pool - 1)[:pool] if pool < n else np.arange(n)
        order = part[np.argsort(-scores[part], kind="stable")]
        kept = select_non_overlapping(windows, order, top_k)
        if len(kept) >= top_k or pool >= n:
            return kept, scores[kept]
        pool = min(n, pool * 4)


@dataclass
class Hits:
    """Ranked hits: positions into the index, scores and (with dense embeddings) where inside the tile."""

    order: np.ndarray  # int64 [n] positions into the index
    scores: np.ndarray  # float32 [n] tile cosine similarity
    boxes: np.ndarray  # float64 [n, 4] (x0, y0, x1, y1) source pixels: tight box, or the tile (clipped)
    points: np.ndarray  # float64 [n, 2] (x, y) source pixels: best match, or the tile centre
    peaks: np.ndarray  # float32 [n] best dense similarity in the tile (the tile score without dense)


def _localised(index: EmbeddingIndex, text: np.ndarray, positions: np.ndarray) -> Hits:
    from rsclip_core.inference.maps import dense_similarities, localise

    windows = index.grid.clip_windows(index.windows()[positions]).astype(np.float64)
    scores = index.scores(text)[positions].astype(np.float32)
    n = len(positions)
    boxes, points, peaks = np.zeros((n, 4)), np.zeros((n, 2)), scores.copy()
    if index.dense is None:
        boxes[:] = np.c_[windows[:, :2], windows[:, :2] + windows[:, 2:]]
        points[:] = windows[:, :2] + windows[:, 2:] / 2.0
        return Hits(positions, scores, boxes, points, peaks)
    full = index.windows()[positions].astype(np.float64)
    for start in range(0, n, 512):
        sims = dense_similarities(index, positions[start:start + 512], text.reshape(1, -1))[:, 0]
        for k, sim in enumerate(sims, start):
            box, point, peak = localise(sim, full[k])
            clip = windows[k]  # edge tiles hang past the region: keep box and point inside it
            x0, y0 = max(box[0], clip[0]), max(box[1], clip[1])
            x1, y1 = min(box[2], clip[0] + clip[2]), min(box[3], clip[1] + clip[3])
            if x1 <= x0 or y1 <= y0:
                x0, y0, x1, y1 = clip[0], clip[1], clip[0] + clip[2], clip[1] + clip[3]
            boxes[k] = (x0, y0, x1, y1)
            points[k] = (min(max(point[0], x0), x1), min(max(point[1], y0), y1))
            peaks[k] = peak
    return Hits(positions, scores, boxes, points, peaks)


def rank_hits(index: EmbeddingIndex, text_embedding: np.ndarray, top_k: int = 50,
              suppress_overlap: bool = True) -> Hits:
    """The best ``top_k`` hits, localised inside their tiles when the index has dense embeddings.

    Suppression (a hit overlapping a better one is dropped) works on the hits' boxes: the tight
    boxes with dense embeddings, else the tiles (only needed when tiles overlap).
    """
    if top_k < 1:
        raise RsclipInputError(f"must be >= 1, got {top_k}", field="top_k")
    text = np.asarray(text_embedding, dtype=np.float32)
    if index.dense is None or len(index) == 0:
        order, _ = rank_tiles(index, text, top_k, suppress_overlap)
        return _localised(index, text, order)
    scores = index.scores(text)
    n = len(scores)
    pool = min(n, top_k * 8 if suppress_overlap else top_k)
    while True:
        part = np.argpartition(-scores, pool - 1)[:pool] if pool < n else np.arange(n)
        order = part[np.argsort(-scores[part], kind="stable")]
        hits = _localised(index, text, order)
        if not suppress_overlap:
            return _take(hits, np.arange(min(top_k, len(order))))
        boxes = np.c_[hits.boxes[:, :2], hits.boxes[:, 2:] - hits.boxes[:, :2]]
        kept = select_non_overlapping(boxes, np.arange(len(order)), top_k)
        if len(kept) >= top_k or pool >= n:
            return _take(hits, kept)
        pool = min(n, pool * 4)


def _take(hits: Hits, rows: np.ndarray) -> Hits:
    return Hits(hits.order[rows], hits.scores[rows], hits.boxes[rows], hits.points[rows], hits.peaks[rows])


def query_embedding(model: EmbeddingModel, query: str, templates: Sequence[str] | None = None) -> np.ndarray:
    """The query as is, or ensembled over prompt ``templates`` (e.g. the model's, for short queries)."""
    query = _check_query(query)
    if templates:
        return model.encode_prompts([query], templates)[0]
    return model.encode_text([query])[0]


def search(index: EmbeddingIndex, model: EmbeddingModel, query: str, top_k: int = 50,
           suppress_overlap: bool = True, *, templates: Sequence[str] | None = None) -> Any:
    """Hits best matching ``query``: GeoDataFrame in the raster CRS.

    Columns: ``rank``, ``score`` (cosine similarity of tile and text embeddings), ``query``,
    ``peak_score`` (best dense similarity inside the tile), ``point_x``/``point_y`` (where it
    matches best), ``localised`` (True when the box comes from dense similarities), the tile's
    bounds ``tile_minx``/``tile_miny``/``tile_maxx``/``tile_maxy``; geometry: the tight box (or
    the tile without dense embeddings). With ``templates`` the query is embedded through each
    template (``"an aerial image of {}."``) and averaged.
    """
    import geopandas as gpd

    from rsclip_core.inference.raster import windows_to_polygons

    query = _check_query(query)
    text = query_embedding(model, query, templates)
    hits = rank_hits(index, text, top_k, suppress_overlap)
    affine = index.affine
    n = len(hits.order)
    boxes = np.c_[hits.boxes[:, :2], hits.boxes[:, 2:] - hits.boxes[:, :2]] if n else np.zeros((0, 4))
    geoms = windows_to_polygons(boxes, affine) if n else np.array([], dtype=object)
    tiles = (windows_to_polygons(index.grid.clip_windows(index.windows()[hits.order]), affine) if n
             else np.array([], dtype=object))
    bounds = np.array([t.bounds for t in tiles]).reshape(-1, 4)
    px = affine.a * hits.points[:, 0] + affine.b * hits.points[:, 1] + affine.c
    py = affine.d * hits.points[:, 0] + affine.e * hits.points[:, 1] + affine.f
    return gpd.GeoDataFrame(
        {
            "rank": np.arange(1, n + 1, dtype=np.int32),
            "score": hits.scores.astype(np.float64),
            "query": [query] * n,
            "peak_score": hits.peaks.astype(np.float64),
            "point_x": np.asarray(px, dtype=np.float64),
            "point_y": np.asarray(py, dtype=np.float64),
            "localised": np.full(n, index.dense is not None),
            "tile_minx": bounds[:, 0], "tile_miny": bounds[:, 1],
            "tile_maxx": bounds[:, 2], "tile_maxy": bounds[:, 3],
        },
        geometry=list(geoms),
        crs=index.crs_wkt if index.crs_wkt else None,
    )


def hit_points(hits: Any) -> Any:
    """The hits as points (at ``point_x``/``point_y``) with the same attributes."""
    import geopandas as gpd

    return gpd.GeoDataFrame(hits.drop(columns="geometry"),
                            geometry=gpd.points_from_xy(hits["point_x"], hits["point_y"]), crs=hits.crs)


def score_heatmap_fine(index: EmbeddingIndex, text_embedding: np.ndarray, *, detail: str | None = None,
                       cells_per_tile: int | None = None, map_resolution: float | None = None
                       ) -> tuple[np.ndarray, Any]:
    """Heat-map on a `maps.MapGrid` (sub-tile with dense embeddings): ``(float32 [rows, cols], affine)``.

    NaN where no tile; exactly the processing region.
    """
    from rsclip_core.inference.maps import default_detail, map_grid, render, similarity_values, uses_tent

    grid = map_grid(index, cells_per_tile=cells_per_tile, map_resolution=map_resolution)
    out = np.full((grid.n_rows, grid.n_cols), np.nan, dtype=np.float32)
    if len(index):
        values = similarity_values(index, text_embedding, detail or default_detail(index))
        for r0, mean, covered in render(index, grid, values, 1, tent=uses_tent(index)):
            band = mean[0]
            band[~covered] = np.nan
            out[r0:r0 + band.shape[0]] = band
    return out, grid.transform(index.affine)


def score_heatmap(index: EmbeddingIndex, model: EmbeddingModel, query: str,
                  text_embedding: np.ndarray | None = None, *, templates: Sequence[str] | None = None) -> np.ndarray:
    """float32 [rows, cols] tile-stride cell grid of overlap-averaged tile scores (NaN where no tile)."""
    if text_embedding is None:
        text_embedding = query_embedding(model, query, templates)
    scores = index.scores(text_embedding)
    sums, weights = aggregate_to_cells(index.grid, index.tile_rc, scores[:, None])
    out = np.full(weights.shape, np.nan, dtype=np.float32)
    has = weights > 0
    out[has] = (sums[has, 0] / weights[has]).astype(np.float32)
    return out
