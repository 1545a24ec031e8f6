"""Text search over an embedding index: ranked tiles, overlapping hits suppressed, heat-map."""

from __future__ import annotations

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
    """Greedy suppression: walk ``order`` (best first), keep tiles sharing no area with a kept one."""
    kept: list = []
    boxes = np.asarray(windows, dtype=np.int64)
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


def query_embedding(model: EmbeddingModel, query: str, templates: Sequence[str] | None = None) -> np.ndarray:
    """The query as is, or ensembled over prompt ``templates`` (e.g. the model's, for short queries)."""
    query = _check_query(query)
    if templates:
        return model.encode_prompts([query], templates)[0]
    return model.encode_text([query])[0]


def search(index: EmbeddingIndex, model: EmbeddingModel, query: str, top_k: int = 50,
           suppress_overlap: bool = True, *, templates: Sequence[str] | None = None) -> Any:
    """Tiles best matching ``query``: GeoDataFrame (rank, score, query, geometry) in the raster CRS.

    ``score`` is the cosine similarity of tile and text embeddings; with ``templates`` the query
    is embedded through each template (``"an aerial image of {}."``) and averaged.
    """
    import geopandas as gpd

    query = _check_query(query)
    text = query_embedding(model, query, templates)
    order, scores = rank_tiles(index, text, top_k, suppress_overlap)
    geoms = index.geometries()[order] if len(order) else np.array([], dtype=object)
    return gpd.GeoDataFrame(
        {
            "rank": np.arange(1, len(order) + 1, dtype=np.int32),
            "score": scores.astype(np.float64),
            "query": [query] * len(order),
        },
        geometry=list(geoms),
        crs=index.crs_wkt if index.crs_wkt else None,
    )


def score_heatmap(index: EmbeddingIndex, model: EmbeddingModel, query: str,
                  text_embedding: np.ndarray | None = None, *, templates: Sequence[str] | None = None) -> np.ndarray:
    """float32 [rows, cols] cell grid of overlap-averaged scores (NaN where no tile)."""
    if text_embedding is None:
        text_embedding = query_embedding(model, query, templates)
    scores = index.scores(text_embedding)
    sums, weights = aggregate_to_cells(index.grid, index.tile_rc, scores[:, None])
    out = np.full(weights.shape, np.nan, dtype=np.float32)
    has = weights > 0
    out[has] = (sums[has, 0] / weights[has]).astype(np.float32)
    return out
