"""Warnings for results that would be meaningless, shared by ``rsclip-map`` and the QGIS plugin.

Each check returns a one-line message (or None); `search_advice` / `classify_advice` gather the
ones that apply to a finished run. Nothing here changes a result: the front ends print (CLI) or
show (plugin) the messages next to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Tiles seen at a ground resolution this many times off the model's training resolution (either
# way) no longer look like what the model learnt (a 30 m Landsat tile vs 1 m aerial imagery).
RESOLUTION_FACTOR = 3.0
# Above this share of non-ASCII letters, or of unknown tokens, the query is probably in a language
# the (English) tokenizer and model were not trained on.
FOREIGN_SHARE = 0.5


def ground_resolution_m(index: Any, image_size: int) -> float | None:
    """Ground metres per *model* pixel of an index's tiles (geodesic, at the raster's centre).

    A tile of ``tile_w`` source pixels is resized to ``image_size`` model pixels; its width on the
    ground is measured on the CRS's ellipsoid, so Web Mercator or degrees give true metres.
    None when the raster has no CRS.
    """
    if not index.crs_wkt or not image_size:
        return None
    from pyproj import CRS, Geod, Transformer

    crs = CRS.from_wkt(index.crs_wkt)
    a, b, c, d, e, f = index.transform[:6]
    width, height = index.raster_size
    col, row = width / 2.0, height / 2.0
    tile_w = float(index.grid.tile_w)
    x0, y0 = c + a * col + b * row, f + d * col + e * row
    x1, y1 = x0 + a * tile_w, y0 + d * tile_w
    geographic = crs.geodetic_crs or crs
    to_lonlat = Transformer.from_crs(crs, geographic, always_xy=True)
    (lon0, lon1), (lat0, lat1) = to_lonlat.transform([x0, x1], [y0, y1])
    ellipsoid = geographic.ellipsoid
    geod = Geod(a=ellipsoid.semi_major_metre, rf=ellipsoid.inverse_flattening) if ellipsoid else Geod(ellps="WGS84")
    _az, _back, metres = geod.inv(lon0, lat0, lon1, lat1)
    return float(metres) / float(image_size) if math.isfinite(metres) and metres > 0 else None


def resolution_warning(ground_m: float | None, model_m: float | None,
                       factor: float = RESOLUTION_FACTOR) -> str | None:
    """Warn when tiles are seen at a ground resolution far from the one the model was trained at."""
    if not ground_m or not model_m:
        return None
    ratio = ground_m / model_m
    if 1.0 / factor <= ratio <= factor:
        return None
    advice = ("set the resolution closer to the model's (tiles are resampled)" if ratio < 1
              else "this imagery is coarser than the model's: expect weak, noisy scores")
    return (f"resolution: tiles are seen at {ground_m:.2g} m/px on the ground but the model was trained at "
            f"{model_m:g} m/px ({ratio:.2g}x): {advice}")


def top_k_warning(top_k: int, n_tiles: int) -> str | None:
    """Warn when top-k asks for (nearly) every tile: every tile is then a 'hit'."""
    if n_tiles <= 0:
        return "no tiles: the extent holds no valid pixels"
    if top_k >= n_tiles:
        return (f"top-k {top_k} >= the {n_tiles} tiles of this raster: every tile is returned as a hit; "
                "lower top-k or use smaller tiles / a finer resolution")
    return None


def query_language_warning(query: str, tokenizer: Any = None) -> str | None:
    """Warn when ``query`` looks like a language the tokenizer/model was not trained on.

    Two signs: most letters are non-ASCII, or (with a tokenizer) most tokens are unknown /
    byte-level fallbacks. CLIP-style models here are trained on English captions.
    """
    letters = [ch for ch in query if ch.isalpha()]
    if not letters:
        return None
    foreign = sum(1 for ch in letters if ord(ch) > 127) / len(letters)
    unknown = 0.0
    if tokenizer is not None:
        unknown = unknown_token_share(query, tokenizer)
    if foreign > FOREIGN_SHARE or unknown > FOREIGN_SHARE:
        return (f"query {query!r}: looks like a language the model was not trained on "
                f"({100 * max(foreign, unknown):.0f}% non-English letters/tokens); it understands English "
                "captions, e.g. 'a lake', 'tennis courts'")
    return None


def unknown_token_share(query: str, tokenizer: Any) -> float:
    """Share of the query's tokens that are unknown or single-byte pieces (0 when it cannot tell)."""
    try:
        ids = tokenizer.encode(query)
        inner = getattr(tokenizer, "_tokenizer", None)
        pieces = [inner.id_to_token(i) or "" for i in ids] if inner is not None else []
    except Exception:  # a tokenizer without these methods: no opinion
        return 0.0
    if not ids or not pieces:
        return 0.0
    # Byte-level BPE has no <unk>: foreign scripts fall apart into one-or-two-character byte pieces.
    bad = sum(1 for p in pieces if p in ("<unk>", "[UNK]") or len(p.replace("</w>", "")) <= 1)
    return bad / len(pieces)


def score_percentiles(scores: Sequence[float] | np.ndarray, all_scores: np.ndarray) -> np.ndarray:
    """Percentile (0-100) of each score among ``all_scores`` (share of tiles scoring at most as much)."""
    ranked = np.sort(np.asarray(all_scores, dtype=np.float64))
    if ranked.size == 0:
        return np.full(len(scores), np.nan)
    return 100.0 * np.searchsorted(ranked, np.asarray(scores, dtype=np.float64), side="right") / ranked.size


def search_advice(index: Any, model: Any, query: str, top_k: int) -> list[str]:
    """Warnings for a text search of ``query`` on ``index`` (empty when the run looks sound)."""
    meta = model.metadata
    found = [
        resolution_warning(ground_resolution_m(index, meta.image_size), meta.resolution_m),
        top_k_warning(int(top_k), len(index)),
        query_language_warning(query, getattr(model, "tokenizer", None)),
    ]
    return [w for w in found if w]


def classify_advice(index: Any, model: Any, prompts: Sequence[str] = ()) -> list[str]:
    """Warnings for a land-cover run on ``index`` (resolution; prompts in another language)."""
    meta = model.metadata
    found = [resolution_warning(ground_resolution_m(index, meta.image_size), meta.resolution_m)]
    found += [query_language_warning(p, getattr(model, "tokenizer", None)) for p in prompts]
    return [w for w in found if w]


def hit_percentiles(hits: Any, index: Any, model: Any, query: str,
                    templates: Sequence[str] | None = None) -> np.ndarray:
    """Percentile of each hit's score among all tiles of ``index`` (100 = the best tile)."""
    from rsclip_core.inference.search import query_embedding

    if len(hits) == 0:
        return np.zeros(0, dtype=np.float64)
    return score_percentiles(hits["score"].to_numpy(), index.scores(query_embedding(model, query, templates)))
