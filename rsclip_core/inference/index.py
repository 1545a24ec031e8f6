"""The embedding index: tile windows + float16 embeddings of one raster under one model and tiling.

Built by streaming tiles through the image encoder batch by batch (a reader thread prepares the
next batch while onnxruntime runs the current one; memory is bounded by the batch size), then
saved as one ``.npz`` (no pickle) keyed by raster fingerprint + model fingerprint + tiling hash,
so a second query on the same raster costs only the text encoding and one matrix product.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rsclip_core.inference.errors import RsclipCancelled, RsclipInputError, RsclipWarning
from rsclip_core.inference.model import EmbeddingModel
from rsclip_core.inference.raster import RasterSource, raster_fingerprint, windows_to_polygons
from rsclip_core.inference.tiling import TileGrid, TilingConfig
from rsclip_core.inference.writers import (
    OutputWriteError,
    ensure_writable_dir,
    partial_path,
    remove_stale_partials,
)

INDEX_SUFFIX = ".rsclip-index.npz"
INDEX_VERSION = 1
CHECKPOINT_SECONDS = 30.0  # how often an index build saves its progress (when it has a cache dir)
MAX_SANE_TILES = 50_000  # above this many planned tiles (or 20x the non-overlapping count) a run warns
MAX_OVERLAP_FACTOR = 20.0

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


@dataclass
class EmbeddingIndex:
    """Embeddings of the non-empty tiles of a raster, with their geometry and provenance."""

    embeddings: np.ndarray  # float16 [N, D], L2-normalised
    tile_rc: np.ndarray  # int64 [N, 2] grid (row, col)
    valid_fraction: np.ndarray  # float32 [N]
    grid: TileGrid
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f) of the raster
    crs_wkt: str | None
    raster_path: str
    raster_size: tuple[int, int]  # (width, height)
    key: str
    fingerprints: dict[str, str]
    tiling: dict[str, Any]
    model_name: str
    n_grid_tiles: int = 0  # tiles planned (including skipped ones)
    dense: np.ndarray | None = None  # float16 [N, gh, gw, D], L2-normalised per location (models with dense)
    _emb32: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def affine(self) -> Any:
        from affine import Affine

        return Affine(*self.transform[:6])

    @property
    def crs(self) -> Any:
        if not self.crs_wkt:
            return None
        from rasterio.crs import CRS

        return CRS.from_wkt(self.crs_wkt)

    @property
    def cell_transform(self) -> Any:
        """Affine transform of the output cell grid (one cell per tile stride)."""
        from affine import Affine

        g, t = self.grid, self.affine
        return Affine(t.a * g.stride_x, t.b * g.stride_y, t.a * g.col0 + t.b * g.row0 + t.c,
                      t.d * g.stride_x, t.e * g.stride_y, t.d * g.col0 + t.e * g.row0 + t.f)

    def embeddings_f32(self) -> np.ndarray:
        """float32 copy of the embeddings, cached (re-queries then cost one matrix product)."""
        if self._emb32 is None:
            self._emb32 = self.embeddings.astype(np.float32)
        return self._emb32

    def windows(self) -> np.ndarray:
        """int64 [N, 4] source-pixel windows of the tiles."""
        return self.grid.windows(self.tile_rc)

    def geometries(self) -> np.ndarray:
        """Shapely polygons of the tiles in the raster CRS, clipped to the processing region.

        Edge tiles are read padded past the raster, but their polygons end at its edge.
        """
        return windows_to_polygons(self.grid.clip_windows(self.windows()), self.affine)

    @property
    def region_bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the processing region (the raster or the requested extent)."""
        g, t = self.grid, self.affine
        xs = (t.a * g.col0 + t.c, t.a * g.col1 + t.c)
        ys = (t.e * g.row0 + t.f, t.e * g.row1 + t.f)
        return (min(xs), min(ys), max(xs), max(ys))

    def scores(self, text_embedding: np.ndarray) -> np.ndarray:
        """Cosine similarity of every tile with one or more text embeddings: [N] or [N, Q]."""
        t = np.asarray(text_embedding, dtype=np.float32)
        return self.embeddings_f32() @ (t if t.ndim == 1 else t.T)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "version": INDEX_VERSION,
            "grid": self.grid.to_dict(),
            "transform": list(self.transform),
            "crs_wkt": self.crs_wkt,
            "raster_path": self.raster_path,
            "raster_size": list(self.raster_size),
            "key": self.key,
            "fingerprints": self.fingerprints,
            "tiling": self.tiling,
            "model_name": self.model_name,
            "n_grid_tiles": self.n_grid_tiles,
        }
        tmp = partial_path(path)
        extra = {} if self.dense is None else {"dense": self.dense}
        try:
            _savez(tmp, str(path.parent), embeddings=self.embeddings, tile_rc=self.tile_rc,
                   valid_fraction=self.valid_fraction, meta=np.array(json.dumps(meta)), **extra)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingIndex:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in ("embeddings", "tile_rc", "valid_fraction")}
                dense = data["dense"] if "dense" in data.files else None
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise RsclipInputError(f"{path}: not a readable rsclip index ({exc})") from exc
        if meta.get("version") != INDEX_VERSION:
            raise RsclipInputError(f"{path}: index version {meta.get('version')} not supported")
        return cls(
            embeddings=arrays["embeddings"],
            tile_rc=arrays["tile_rc"].astype(np.int64),
            valid_fraction=arrays["valid_fraction"],
            grid=TileGrid.from_dict(meta["grid"]),
            transform=tuple(meta["transform"]),
            crs_wkt=meta["crs_wkt"],
            raster_path=meta["raster_path"],
            raster_size=(int(meta["raster_size"][0]), int(meta["raster_size"][1])),
            key=meta["key"],
            fingerprints=meta["fingerprints"],
            tiling=meta["tiling"],
            model_name=meta["model_name"],
            n_grid_tiles=int(meta.get("n_grid_tiles", 0)),
            dense=dense,
        )


def _savez(tmp: Path, what: str, **arrays: Any) -> None:
    """``np.savez`` to ``tmp`` (a ``.npz`` name); write failures become one clear `OutputWriteError`."""
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputWriteError(f"{what}: cannot write the index {tmp.name} ({reason})", field="cache_dir") from exc


def check_tile_count(source: RasterSource) -> None:
    """Warn when a tiling plans so many tiles that the run will take very long (e.g. overlap 0.99)."""
    from rsclip_core.inference.tiling import plan_grid

    n = len(source.tile_rc)
    base = plan_grid(source.region, source.tile_w, source.tile_h, 0.0).n_tiles
    factor = n / max(1, base) if source.extent_geometry is None else source.grid.n_tiles / max(1, base)
    if n > MAX_SANE_TILES or factor > MAX_OVERLAP_FACTOR:
        warnings.warn(
            f"{source.path}: {n:,} tiles planned ({factor:.0f}x the {base:,} tiles without overlap, "
            f"overlap {source.tiling.overlap:g}); this will take long: lower the overlap or the tile count",
            RsclipWarning, stacklevel=3)


def index_key(raster_fp: str, model_fp: str, tiling_hash: str) -> str:
    return hashlib.sha256(f"{raster_fp}|{model_fp}|{tiling_hash}".encode()).hexdigest()[:20]


def index_path_for(raster: str | os.PathLike, key: str, cache_dir: str | os.PathLike) -> Path:
    """``<cache_dir>/<raster stem>.<key>.rsclip-index.npz``."""
    return Path(cache_dir) / f"{Path(raster).stem}.{key}{INDEX_SUFFIX}"


def _resolve_tiling(model: EmbeddingModel, tiling: TilingConfig | None) -> TilingConfig:
    if tiling is None:
        tiling = TilingConfig()
    return tiling.validate()


def open_raster(raster: str | os.PathLike, model: EmbeddingModel, tiling: TilingConfig | None) -> RasterSource:
    """Open and check a raster for this model and tiling (errors name the file or option)."""
    return RasterSource(raster, _resolve_tiling(model, tiling), model.image_size, model.metadata.interpolation)


def find_cached_index(raster: str | os.PathLike, model: EmbeddingModel, tiling: TilingConfig | None,
                      cache_dir: str | os.PathLike) -> tuple[Path, EmbeddingIndex | None]:
    """Where the index for this raster/model/tiling lives in ``cache_dir`` and, if present, the index."""
    with open_raster(raster, model, tiling) as source:
        key = index_key(raster_fingerprint(raster), model.fingerprint, source.tiling_hash())
    path = index_path_for(raster, key, cache_dir)
    if path.is_file():
        try:
            index = EmbeddingIndex.load(path)
            if index.key == key:
                return path, index
        except RsclipInputError:
            pass  # unreadable cache entry: rebuilt and replaced
    return path, None


def build_index(
    raster: str | os.PathLike,
    model: EmbeddingModel,
    tiling: TilingConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> EmbeddingIndex:
    """Embed every non-empty tile of ``raster``; reuse/save the index in ``cache_dir`` if given.

    ``progress(done_tiles, total_tiles)`` is called after each batch; ``cancel()`` returning
    True stops the run with `RsclipCancelled`. With a ``cache_dir`` the work done so far is
    checkpointed there (every ``CHECKPOINT_SECONDS`` and on cancel), so the next call with the
    same raster, model and tiling resumes where the last one stopped.
    """
    with open_raster(raster, model, tiling) as source:
        raster_fp = raster_fingerprint(raster)
        key = index_key(raster_fp, model.fingerprint, source.tiling_hash())
        path = index_path_for(raster, key, cache_dir) if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                cached = EmbeddingIndex.load(path)
                if cached.key == key:
                    if progress is not None:
                        progress(source.grid.n_tiles, source.grid.n_tiles)
                    return cached
            except RsclipInputError:
                pass
        checkpoint: Path | None = None
        if path is not None:  # before the work: a cache that cannot be written fails now, not after
            checkpoint = path.with_name(f".{path.name[:-4]}.resume.npz")
            ensure_writable_dir(path.parent, "cache_dir")
            remove_stale_partials(path)
            remove_stale_partials(checkpoint)
        check_tile_count(source)
        index = _embed(source, model, key, progress, cancel, checkpoint, raster_fp)
    if len(index) == 0:
        warnings.warn(f"{raster}: no tile has enough valid pixels (all nodata, transparent or blank?)",
                      RsclipWarning, stacklevel=2)
    if path is not None:
        index.save(path)
        if checkpoint is not None and checkpoint.exists():
            checkpoint.unlink()
    return index


def _save_checkpoint(path: Path, key: str, next_start: int, embeddings: np.ndarray, fractions: np.ndarray,
                     kept: np.ndarray, dense: np.ndarray | None = None) -> None:
    tmp = partial_path(path)
    extra = {} if dense is None else {"dense": dense}
    try:
        _savez(tmp, str(path.parent), key=np.array(key), next_start=np.array(next_start),
               embeddings=embeddings, fractions=fractions, kept=kept, **extra)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_checkpoint(path: Path | None, key: str, embeddings: np.ndarray,
                     dense: np.ndarray | None = None) -> dict | None:
    """The saved progress of an interrupted build, if it matches this raster/model/tiling."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in ("key", "next_start", "embeddings", "fractions", "kept")}
            state["dense"] = data["dense"] if "dense" in data.files else None
    except Exception:
        return None
    if str(state["key"]) != key or state["embeddings"].shape != embeddings.shape:
        return None
    if dense is not None and (state["dense"] is None or state["dense"].shape != dense.shape):
        return None
    return state


def _embed(source: RasterSource, model: EmbeddingModel, key: str, progress: ProgressFn | None,
           cancel: CancelFn | None, checkpoint: Path | None = None,
           raster_fp: str | None = None) -> EmbeddingIndex:
    rc_all = source.tile_rc
    total = len(rc_all)
    batch = int(source.tiling.batch_size)
    embeddings = np.zeros((total, model.embed_dim), dtype=np.float16)
    fractions = np.zeros(total, dtype=np.float32)
    kept = np.zeros(total, dtype=bool)
    dense = None
    if model.has_dense:
        gh, gw = model.metadata.dense_grid or (1, 1)
        dense = np.zeros((total, gh, gw, model.embed_dim), dtype=np.float16)
    windows = source.grid.windows(rc_all)
    first = 0
    state = _load_checkpoint(checkpoint, key, embeddings, dense)
    if state is not None:
        embeddings[:] = state["embeddings"]
        if dense is not None:
            dense[:] = state["dense"]
        fractions[:] = state["fractions"]
        kept[:] = state["kept"]
        first = int(state["next_start"])
    last_save = time.monotonic()

    def read_batch(start: int) -> tuple[list[int], list[np.ndarray]]:
        import rasterio

        from rsclip_core.inference.raster import GDAL_ENV

        idx: list[int] = []
        tiles: list[np.ndarray] = []
        with rasterio.Env(**GDAL_ENV):
            for k in range(start, min(start + batch, total)):
                tile, fraction = source.read_tile(windows[k])
                fractions[k] = fraction
                if tile is not None:
                    idx.append(k)
                    tiles.append(tile)
        return idx, tiles

    if progress is not None:
        progress(first, total)
    starts = list(range(first, total, batch))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsclip-read") as pool:
        pending = pool.submit(read_batch, starts[0]) if starts else None
        for n, start in enumerate(starts):
            assert pending is not None  # submitted before the loop and at the end of each turn
            idx, tiles = pending.result()
            if cancel is not None and cancel():
                if checkpoint is not None and start > first:
                    _save_checkpoint(checkpoint, key, start, embeddings, fractions, kept, dense)
                raise RsclipCancelled(f"{source.path}: cancelled after {start} of {total} tiles")
            pending = pool.submit(read_batch, starts[n + 1]) if n + 1 < len(starts) else None
            if tiles and dense is not None:
                emb, cells = model.encode_images_dense(np.stack(tiles))
                embeddings[idx] = emb.astype(np.float16)
                dense[idx] = cells.astype(np.float16)
                kept[idx] = True
            elif tiles:
                emb = model.encode_images(np.stack(tiles))
                embeddings[idx] = emb.astype(np.float16)
                kept[idx] = True
            done = min(start + batch, total)
            if checkpoint is not None and done < total and time.monotonic() - last_save > CHECKPOINT_SECONDS:
                _save_checkpoint(checkpoint, key, done, embeddings, fractions, kept, dense)
                last_save = time.monotonic()
            if progress is not None:
                progress(done, total)
    ds = source.dataset
    return EmbeddingIndex(
        embeddings=np.ascontiguousarray(embeddings[kept]),
        tile_rc=rc_all[kept],
        valid_fraction=fractions[kept],
        grid=source.grid,
        transform=tuple(source.transform)[:6],
        crs_wkt=ds.crs.to_wkt() if ds.crs is not None else None,
        raster_path=str(Path(source.path).resolve()),
        raster_size=(ds.width, ds.height),
        key=key,
        fingerprints={"raster": raster_fp or raster_fingerprint(source.path), "model": model.fingerprint,
                      "tiling": source.tiling_hash()},
        tiling=source.describe(),
        model_name=model.metadata.model_name,
        n_grid_tiles=total,
        dense=None if dense is None else np.ascontiguousarray(dense[kept]),
    )
