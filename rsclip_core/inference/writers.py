"""Writing outputs atomically: Cloud-Optimised GeoTIFFs and GeoPackages readable by QGIS 3.22.

Every writer produces a temp file next to the destination and renames it only when complete,
so an interrupted run never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core.inference.errors import OutputExistsError, RsclipInputError

GPKG_VERSION = "1.2"  # QGIS 3.22's GDAL reads 1.2 cleanly; newer GDALs default to 1.4


def check_output(path: str | os.PathLike | None, overwrite: bool, field: str = "output") -> Path | None:
    """Validate an output path before any work: parent exists, no clobbering without overwrite.

    ``field`` is the output's name in `errors.FIELDS` (``output``, ``polygons``, ...).
    """
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists (use {{overwrite}} to replace it)", field=field)
    if path.is_dir():
        raise RsclipInputError(f"{path}: is a directory", field=field)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the destination folder; rename onto ``path`` on success, remove on error."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    if tmp.exists():
        tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        for side in tmp.parent.glob(tmp.name + ".*"):  # e.g. .aux.xml, -wal/-shm journals
            side.unlink()


def write_cog(path: str | os.PathLike, array: np.ndarray, transform: Any, crs_wkt: str | None, *,
              nodata: float | None = None, colormap: dict[int, Sequence[int]] | None = None,
              tags: dict[str, str] | None = None, band_tags: dict[str, str] | None = None,
              band_description: str | None = None, resampling: str = "NEAREST") -> Path:
    """Write a single-band array as a Cloud-Optimised GeoTIFF (GDAL COG driver), atomically."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"write_cog: expected a 2-D array, got shape {array.shape}")
    profile = {
        "driver": "GTiff",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "transform": transform,
        "crs": crs_wkt if crs_wkt else None,
        "nodata": nodata,
    }
    predictor = "3" if array.dtype.kind == "f" else "2"
    with atomic_path(path) as tmp, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(array, 1)
            if colormap is not None:
                dst.write_colormap(1, {int(k): tuple(int(c) for c in v) for k, v in colormap.items()})
            if tags:
                dst.update_tags(**tags)
            if band_tags:
                dst.update_tags(1, **band_tags)
            if band_description:
                dst.set_band_description(1, band_description)
        with mem.open() as src:
            rio_copy(src, str(tmp), driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor,
                     RESAMPLING=resampling, BLOCKSIZE=512)
    return Path(path)


def write_gpkg(path: str | os.PathLike, frame: Any, layer: str) -> Path:
    """Write a GeoDataFrame as a GeoPackage (version 1.2, for QGIS 3.22), atomically."""
    import pyogrio

    with atomic_path(path) as tmp:
        pyogrio.write_dataframe(frame, str(tmp), layer=layer, driver="GPKG",
                                dataset_options={"VERSION": GPKG_VERSION}, promote_to_multi=True)
    return Path(path)


def gpkg_version(path: str | os.PathLike) -> str:
    """GeoPackage version from the SQLite header (``PRAGMA user_version``), e.g. ``"1.2"``."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        app = con.execute("PRAGMA application_id").fetchone()[0]
        user = con.execute("PRAGMA user_version").fetchone()[0]
    if app != 0x47504B47:  # 'GPKG'
        return "1.0" if app == 0x47503130 else f"unknown (application_id {app:#x})"
    return f"{user // 10000}.{(user // 100) % 100}"
