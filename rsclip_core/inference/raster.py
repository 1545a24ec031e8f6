"""Reading model-ready tiles out of a raster with rasterio, window by window (bounded memory).

`RasterSource` checks the raster once (readable, not rotated, band mapping, CRS), computes the
value stretch once per raster from a decimated read, turns a `TilingConfig` into a `TileGrid`
over the processing extent, and reads tiles as float32 ``[3, S, S]`` RGB in [0, 1], resampled on
read to the model's input size. Padding (outside the raster) and masked pixels (nodata, alpha)
are marked invalid; tiles with too few valid pixels or a single constant value are skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from rsclip_core.inference.errors import RsclipFileNotFoundError, RsclipInputError, RsclipWarning
from rsclip_core.inference.tiling import TileGrid, TilingConfig, clip_window, plan_grid
from rsclip_core.preprocess import GDAL_RESAMPLING

#: model interpolation name -> GDAL resampling on read (names from rsclip_core.preprocess)
RESAMPLING = {name: Resampling[gdal] for name, gdal in GDAL_RESAMPLING.items()}
STRETCH_SAMPLE_SIDE = 1024  # longest side of the decimated read used for the percentile stretch
GDAL_ENV = {"GDAL_CACHEMAX": 128}  # MB: keeps the block cache (and so peak RSS) bounded


FINGERPRINT_FULL_BYTES = 64 << 20  # files up to this size are hashed whole
FINGERPRINT_HEAD_BYTES = 1 << 20  # larger ones: the first MiB (header, tile offsets) ...
FINGERPRINT_BLOCKS = 64  # ... plus this many evenly spaced blocks ...
FINGERPRINT_BLOCK_BYTES = 64 << 10  # ... of this size, and the last block


def raster_fingerprint(path: str | os.PathLike) -> str:
    """Identity of a raster's content: resolved path + size + a hash of its bytes.

    Files up to `FINGERPRINT_FULL_BYTES` are hashed whole; larger ones by their header plus
    sampled blocks (about 5 MiB read), so a raster rewritten in place with the same size and
    modification time no longer reuses a stale index. GDAL side files that change the pixels'
    meaning (``.aux.xml``, ``.msk``, ``.ovr``) add their size and time.
    """
    p = Path(path).resolve()
    size = p.stat().st_size
    digest = hashlib.blake2b(f"{p}|{size}".encode(), digest_size=16)
    with open(p, "rb") as fh:
        if size <= FINGERPRINT_FULL_BYTES:
            for chunk in iter(lambda: fh.read(4 << 20), b""):
                digest.update(chunk)
        else:
            digest.update(fh.read(FINGERPRINT_HEAD_BYTES))
            step = (size - FINGERPRINT_BLOCK_BYTES) / FINGERPRINT_BLOCKS
            for k in range(1, FINGERPRINT_BLOCKS + 1):
                fh.seek(int(k * step))
                digest.update(fh.read(FINGERPRINT_BLOCK_BYTES))
    for suffix in (".aux.xml", ".msk", ".ovr"):
        side = p.with_name(p.name + suffix)
        if side.is_file():
            st = side.stat()
            digest.update(f"|{suffix}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()


class RasterSource:
    """An opened, validated raster plus everything needed to cut it into tiles."""

    def __init__(self, path: str | os.PathLike, tiling: TilingConfig, image_size: int,
                 interpolation: str = "bicubic") -> None:
        self.path = Path(path)
        self.tiling = tiling.validate()
        self.image_size = int(image_size)
        if interpolation not in RESAMPLING:
            raise RsclipInputError(f"model interpolation {interpolation!r} not supported ({sorted(RESAMPLING)})")
        self.resampling = RESAMPLING[interpolation]
        if not self.path.exists():
            raise RsclipFileNotFoundError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise RsclipInputError(f"{self.path}: is a directory, not a raster")
        try:
            self.dataset = rasterio.open(self.path)
        except RasterioIOError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else "unreadable"
            if not os.access(self.path, os.R_OK):
                raise RsclipInputError(f"{self.path}: cannot be read (permission denied)") from exc
            raise RsclipInputError(f"{self.path}: not a readable raster ({msg})") from exc
        try:
            self._inspect()
        except Exception:
            self.dataset.close()
            raise

    # -- set-up ---------------------------------------------------------------------------
    def _inspect(self) -> None:
        ds = self.dataset
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise RsclipInputError(f"{self.path}: raster has no pixels or bands")
        t = ds.transform
        gcps, _ = ds.gcps
        if gcps and t.is_identity:
            raise RsclipInputError(
                f"{self.path}: georeferenced by ground control points only; warp it to a north-up grid "
                f"first (gdalwarp {self.path.name} warped.tif)"
            )
        if abs(t.b) > 1e-12 * abs(t.a) or abs(t.d) > 1e-12 * abs(t.e):
            raise RsclipInputError(
                f"{self.path}: rotated/sheared geotransform is not supported; "
                f"warp it north-up first (gdalwarp {self.path.name} north_up.tif)"
            )
        self.crs = ds.crs
        self.transform = t
        if ds.crs is None and t.is_identity:
            # no georeferencing at all (JPEG/PNG): GDAL's identity transform has y growing
            # downwards, which GIS software draws upside down; use x = column, y = -row (what
            # QGIS shows for such images), so outputs are upright and line up with the input
            from affine import Affine

            self.transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
            warnings.warn(
                f"{self.path}: raster is not georeferenced; outputs use pixel coordinates "
                "(x = column, y = -row, as QGIS shows the image)",
                RsclipWarning,
                stacklevel=3,
            )
        elif ds.crs is None:
            warnings.warn(
                f"{self.path}: raster has no CRS; working in pixel/georeference units without a CRS",
                RsclipWarning,
                stacklevel=3,
            )
        self.bands = self._resolve_bands()
        flags = [ds.mask_flag_enums[b - 1] for b in self.bands]
        self.has_mask = any(f != [MaskFlags.all_valid] for f in flags)
        # nodata-only masks are computed from the pixels read (a pixel is valid if any band is
        # valid, like rasterio's dataset_mask); alpha / internal masks are read from GDAL, once
        # for per-dataset masks
        self.nodata_only = self.has_mask and all(f == [MaskFlags.nodata] for f in flags)
        self.nodata = [ds.nodatavals[b - 1] for b in self.bands]
        self.per_dataset_mask = all(MaskFlags.per_dataset in f for f in flags)
        self.stretch = self._compute_stretch()
        self.region = self._resolve_region()
        self.tile_w, self.tile_h = self._tile_source_size()
        self.grid: TileGrid = plan_grid(self.region, self.tile_w, self.tile_h, self.tiling.overlap)
        self.tile_rc = self._select_tiles()

    def _resolve_bands(self) -> tuple[int, int, int]:
        ds = self.dataset
        if self.tiling.bands is not None:
            bands = self.tiling.bands
            bad = [b for b in bands if b > ds.count]
            if bad:
                raise RsclipInputError(f"asked for {','.join(map(str, bands))} but {self.path} has only {ds.count} band(s)",
                                       field="bands")
            return (bands[0],) * 3 if len(bands) == 1 else (bands[0], bands[1], bands[2])  # 1 or 3 (TilingConfig)
        interp = list(ds.colorinterp)
        if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            red, green, blue = (interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
            return red, green, blue
        if ds.count == 3:
            return (1, 2, 3)
        if ds.count == 4 and interp[3] == ColorInterp.alpha:
            return (1, 2, 3)
        hint = "{bands} 1,1,1 to use it as grey" if ds.count == 1 else "{bands} R,G,B, e.g. {bands} 1,2,3"
        raise RsclipInputError(
            f"{self.path}: {ds.count} band(s) without RGB colour interpretation; pass {hint}", field="bands"
        )

    def _compute_stretch(self) -> np.ndarray:
        """Per-band (low, high) [3, 2] mapping raw values to [0, 1], computed once per raster."""
        ds = self.dataset
        mode = self.tiling.stretch
        dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
        if not isinstance(mode, str):
            return np.array([mode] * 3, dtype=np.float64)
        if mode == "none" or (mode == "auto" and dtype == np.uint8):
            high = 255.0 if dtype == np.uint8 else 1.0
            return np.array([[0.0, high]] * 3, dtype=np.float64)
        scale = max(ds.width, ds.height) / STRETCH_SAMPLE_SIDE
        shape = (max(1, int(round(ds.height / max(scale, 1.0)))), max(1, int(round(ds.width / max(scale, 1.0)))))
        try:
            with rasterio.Env(**GDAL_ENV):
                data = ds.read(list(self.bands), out_shape=(3,) + shape, masked=True,
                               resampling=Resampling.nearest)
        except RasterioError as exc:
            raise self._read_error(exc, "overview read for the value stretch") from exc
        out = np.zeros((3, 2), dtype=np.float64)
        p_low, p_high = self.tiling.percentiles
        for i in range(3):
            band = np.ma.filled(data[i].astype(np.float64), np.nan)
            values = band[np.isfinite(band)]
            if values.size == 0:
                raise RsclipInputError(f"{self.path}: band {self.bands[i]} has no valid pixels")
            low, high = np.percentile(values, [p_low, p_high])
            if not high > low:
                low, high = float(values.min()), float(values.max())
                if not high > low:
                    high = low + 1.0
            out[i] = (low, high)
        return out

    def _resolve_region(self) -> tuple[int, int, int, int]:
        """Processing extent as an integer source-pixel region clipped to the raster."""
        ds = self.dataset
        self.extent_geometry = None
        extent = self.tiling.extent
        if extent is None:
            return (0, 0, ds.width, ds.height)
        if isinstance(extent, (str, os.PathLike)):
            self.extent_geometry = _read_vector_extent(Path(extent), ds.crs)
            bounds = self.extent_geometry.bounds
        elif _is_bbox(extent):
            bounds = tuple(float(v) for v in extent)
            if not (bounds[2] > bounds[0] and bounds[3] > bounds[1]):
                raise RsclipInputError(f"need minx,miny,maxx,maxy with max > min, got {extent}", field="extent")
        else:
            from shapely import union_all
            from shapely.geometry.base import BaseGeometry

            geoms = list(extent) if not isinstance(extent, BaseGeometry) else [extent]
            if not geoms or not all(isinstance(g, BaseGeometry) for g in geoms):
                raise RsclipInputError("expected a bbox, shapely geometries or a vector file path", field="extent")
            self.extent_geometry = union_all(geoms)
            bounds = self.extent_geometry.bounds
        inv = ~self.transform
        xs = np.array([bounds[0], bounds[2], bounds[0], bounds[2]])
        ys = np.array([bounds[1], bounds[1], bounds[3], bounds[3]])
        cols = inv.a * xs + inv.b * ys + inv.c  # affine's `*` on tuples is deprecated, `@` too new
        rows = inv.d * xs + inv.e * ys + inv.f
        col0 = max(0, int(math.floor(min(cols) + 1e-9)))
        row0 = max(0, int(math.floor(min(rows) + 1e-9)))
        col1 = min(ds.width, int(math.ceil(max(cols) - 1e-9)))
        row1 = min(ds.height, int(math.ceil(max(rows) - 1e-9)))
        if col1 <= col0 or row1 <= row0:
            raise RsclipInputError(f"{tuple(round(b, 6) for b in bounds)} does not overlap {self.path}", field="extent")
        return (col0, row0, col1, row1)

    def _tile_source_size(self) -> tuple[int, int]:
        """Tile size in source pixels (target tile size scaled by target/native resolution)."""
        tile = int(self.tiling.tile_size or self.image_size)
        if self.tiling.resolution is None:
            return tile, tile
        ds = self.dataset
        res_x, res_y = abs(ds.transform.a), abs(ds.transform.e)
        target_x = target_y = float(self.tiling.resolution)
        if ds.crs is not None and ds.crs.is_geographic:
            lat = (ds.bounds.top + ds.bounds.bottom) / 2.0
            target_x = target_x / (111320.0 * max(math.cos(math.radians(lat)), 1e-6))
            target_y = target_y / 110574.0
        elif ds.crs is not None and ds.crs.linear_units_factor is not None:
            target_x /= ds.crs.linear_units_factor[1]
            target_y /= ds.crs.linear_units_factor[1]
        return max(1, int(round(tile * target_x / res_x))), max(1, int(round(tile * target_y / res_y)))

    def _select_tiles(self) -> np.ndarray:
        """Grid positions of the tiles to process: all, or those touching the extent polygons."""
        rc = self.grid.tile_rc()
        if self.extent_geometry is None:
            return rc
        import shapely

        geoms = windows_to_polygons(self.grid.windows(rc), self.transform)
        shapely.prepare(self.extent_geometry)
        keep = shapely.intersects(self.extent_geometry, geoms)
        if not keep.any():
            raise RsclipInputError(f"the given polygons do not overlap {self.path}", field="extent")
        return rc[keep]

    def _read_error(self, exc: BaseException, where: str) -> RsclipInputError:
        """One clear line for pixels that cannot be read (truncated or corrupt file)."""
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return RsclipInputError(f"{self.path}: cannot read pixels ({where}): file truncated or corrupt? ({detail})")

    # -- description -----------------------------------------------------------------------
    def describe(self) -> dict:
        """What determines the tiles' pixels (hashed into the index key)."""
        extent: Any = None
        if self.extent_geometry is not None:
            extent = hashlib.sha256(self.extent_geometry.wkb).hexdigest()[:16]
        data = self.tiling.as_dict()
        data.pop("batch_size")
        data.update(
            {
                "bands": list(self.bands),
                "stretch_values": self.stretch.round(6).tolist(),
                "region": list(self.region),
                "extent_geometry": extent,
                "tile_source_px": [self.tile_w, self.tile_h],
                "image_size": self.image_size,
                "resampling": self.resampling.name,
            }
        )
        return data

    def tiling_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    # -- reading ----------------------------------------------------------------------------
    def read_tile(self, window: Sequence[int]) -> tuple[np.ndarray | None, float]:
        """One tile as float32 [3, S, S] in [0, 1] and its valid fraction; (None, f) if skipped."""
        S = self.image_size
        ds = self.dataset
        col, row, w, h = (int(v) for v in window)
        clipped = clip_window(window, ds.width, ds.height)
        if clipped is None:
            return None, 0.0
        c0, r0, cw, ch = clipped
        x0 = int(round((c0 - col) / w * S))
        y0 = int(round((r0 - row) / h * S))
        x1 = int(round((c0 + cw - col) / w * S))
        y1 = int(round((r0 + ch - row) / h * S))
        if x1 <= x0 or y1 <= y0:
            return None, 0.0
        win = Window(c0, r0, cw, ch)
        shape = (3, y1 - y0, x1 - x0)
        try:
            raw = ds.read(list(self.bands), window=win, out_shape=shape, resampling=self.resampling)
        except RasterioError as exc:
            raise self._read_error(exc, f"window col {c0}, row {r0}, {cw}x{ch} px") from exc
        inner_valid: np.ndarray | None = None  # None = every pixel of the read part is valid
        if self.nodata_only:
            inner_valid = np.logical_or.reduce(
                [raw[i] != nd for i, nd in enumerate(self.nodata) if nd is not None and not np.isnan(nd)]
                or [np.ones(shape[1:], dtype=bool)], axis=0)
        elif self.has_mask:
            mask_bands = [self.bands[0]] if self.per_dataset_mask else list(self.bands)
            try:
                masks = ds.read_masks(mask_bands, window=win, out_shape=(len(mask_bands),) + shape[1:],
                                      resampling=Resampling.nearest)
            except RasterioError as exc:
                raise self._read_error(exc, f"mask of window col {c0}, row {r0}, {cw}x{ch} px") from exc
            inner_valid = np.logical_and.reduce(masks > 0, axis=0)
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw).all(axis=0)
            inner_valid = finite if inner_valid is None else inner_valid & finite
        n_inner = shape[1] * shape[2]
        n_valid = n_inner if inner_valid is None else int(np.count_nonzero(inner_valid))
        fraction = n_valid / float(S * S)
        if n_valid == 0 or fraction < self.tiling.min_valid_fraction:
            return None, fraction
        values = raw.reshape(3, -1) if inner_valid is None or n_valid == n_inner else raw[:, inner_valid]
        if (values.max(axis=1) == values.min(axis=1)).all():
            return None, fraction  # a single constant value: fill, not imagery
        lo, hi = self.stretch[:, 0], self.stretch[:, 1]
        scale = (1.0 / (hi - lo)).astype(np.float32)[:, None, None]
        offset = (-lo / (hi - lo)).astype(np.float32)[:, None, None]
        tile = np.empty((3, S, S), dtype=np.float32)
        inner = tile[:, y0:y1, x0:x1]
        np.multiply(raw, scale, out=inner, casting="unsafe")
        inner += offset
        np.clip(inner, 0.0, 1.0, out=inner)
        if n_valid < S * S:  # padding and masked pixels take the mean colour of the valid ones
            valid = np.zeros((S, S), dtype=bool)
            valid[y0:y1, x0:x1] = True if inner_valid is None else inner_valid
            fill = tile[:, valid].mean(axis=1)
            tile[:, ~valid] = fill[:, None]
        return tile, fraction

    def iter_tiles(self, rc: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray | None, float]]:
        """Yield ``(position in rc, tile or None, valid fraction)`` in raster order."""
        rc = self.tile_rc if rc is None else rc
        windows = self.grid.windows(rc)
        with rasterio.Env(**GDAL_ENV):
            for k, window in enumerate(windows):
                tile, fraction = self.read_tile(window)
                yield k, tile, fraction

    def close(self) -> None:
        self.dataset.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def windows_to_polygons(windows: np.ndarray, transform: Any) -> np.ndarray:
    """Shapely polygons (array) of ``(col, row, w, h)`` windows under a north-up affine transform."""
    import shapely

    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    a, c, e, f = transform.a, transform.c, transform.e, transform.f  # north-up: b == d == 0
    x0 = a * windows[:, 0] + c
    x1 = a * (windows[:, 0] + windows[:, 2]) + c
    y0 = e * windows[:, 1] + f
    y1 = e * (windows[:, 1] + windows[:, 3]) + f
    return shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))


def _is_bbox(value: Any) -> bool:
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return all(isinstance(v, (int, float, np.integer, np.floating)) for v in value)
    return False


def _read_vector_extent(path: Path, raster_crs: Any) -> Any:
    """Union of a vector file's geometries, reprojected to the raster CRS."""
    import geopandas as gpd
    from shapely import union_all

    if not path.exists():
        raise RsclipFileNotFoundError(f"{path}: no such file", field="extent")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise RsclipInputError(f"{path}: not a readable vector file ({exc})", field="extent") from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.empty:
        raise RsclipInputError(f"{path}: contains no geometries", field="extent")
    if raster_crs is not None and frame.crs is not None:
        frame = frame.to_crs(raster_crs)
    elif raster_crs is not None and frame.crs is None:
        warnings.warn(RsclipWarning(f"{path}: no CRS, assuming the raster's", field="extent"), stacklevel=4)
    return union_all(list(frame.geometry.values))


def list_rasters(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand paths, directories (their raster files) and glob patterns into raster paths."""
    import glob

    suffixes = {".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg"}
    out: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise RsclipInputError(f"{path}: directory contains no raster files ({', '.join(sorted(suffixes))})")
            out.extend(found)
        elif path.exists():
            out.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise RsclipInputError(f"{text}: pattern matches no files")
            out.extend(found)
        else:
            raise RsclipFileNotFoundError(f"{text}: no such file")
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
