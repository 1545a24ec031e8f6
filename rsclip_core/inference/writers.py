"""Writing outputs atomically: Cloud-Optimised GeoTIFFs and GeoPackages readable by QGIS 3.22.

Every writer produces a temp file (``.<stem>.partial-<pid><suffix>``) next to the destination and
renames it only when complete, so an interrupted run never leaves a half-written output under the
final name. `check_outputs` validates all outputs of one run before any work: none may be one of
the run's inputs (with or without overwrite, also through symlinks, hard links or another spelling
of the path), no two may share a path, every folder must be writable; stale partial files of the
same outputs left by killed runs are removed. `StagedOutputs` writes several outputs so that they
appear together or not at all: a failure (full disk, ...) removes everything the run wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core.inference.errors import OutputExistsError, RsclipError, RsclipInputError

GPKG_VERSION = "1.2"  # QGIS 3.22's GDAL reads 1.2 cleanly; newer GDALs default to 1.4



class OutputWriteError(RsclipInputError, OSError):
    """An output could not be written (read-only folder, full disk, ...); nothing partial is left."""


def partial_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """The temp name an output is written under: ``.<stem>.partial-<pid><suffix>`` in its folder."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{os.getpid() if pid is None else pid}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another run of this process (QGIS task) may be writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove temp files of ``path`` (and their side files) left by runs whose process is gone."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(f".{path.stem}.partial-") + r"(\d+)" + re.escape(path.suffix) + r"(\..*|-.*)?$")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _identity(path: Path) -> Any:
    """What a path resolves to: (device, inode) if it exists, else its normalised real path."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))


def ensure_writable_dir(folder: str | os.PathLike, field: str, *, for_path: str | os.PathLike | None = None) -> Path:
    """Create ``folder`` if needed and prove a file can be created in it; else one clear error.

    ``field`` names the argument at fault (`errors.FIELDS`); ``for_path`` the output the folder is for.
    """
    what = str(for_path if for_path is not None else folder)
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise RsclipInputError(f"{what}: {parent} is a file, not a folder", field=field)
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RsclipInputError(f"{what}: cannot create folder {folder} ({exc.strerror or exc})",
                               field=field) from exc
    probe = folder / f".rsclip-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise RsclipInputError(f"{what}: folder {folder} is not writable ({reason})", field=field) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def check_output(path: str | os.PathLike | None, overwrite: bool, field: str = "output") -> Path | None:
    """Validate one output path before any work (see `check_outputs`); ``field`` is its `errors.FIELDS` name."""
    return check_outputs({field: path}, overwrite=overwrite)[field]


def check_outputs(outputs: Mapping[str, str | os.PathLike | None], *, overwrite: bool,
                  inputs: Sequence[str | os.PathLike | None] = ()) -> dict[str, Path | None]:
    """Validate all outputs of one run before any work; returns ``{label: Path or None}``.

    ``outputs`` maps the field of each output (`errors.FIELDS`: ``output``, ``confidence``, ...) to a path.
    Refused, whatever ``overwrite`` says: an output that is one of ``inputs`` (same file through any
    spelling, symlink or hard link), two outputs on one path, a folder, a parent path that is a
    file, a folder that cannot be written. An existing output needs ``overwrite``. Stale temp
    files of these outputs (from killed runs) are removed.
    """
    seen_inputs = {}
    for item in inputs:
        if item is not None:
            seen_inputs[_identity(Path(item))] = Path(item)
    taken: dict[Any, str] = {}
    checked: dict[str, Path | None] = {}
    for label, value in outputs.items():
        if value is None or str(value) == "":
            checked[label] = None
            continue
        path = Path(value)
        ident = _identity(path)
        if ident in seen_inputs:
            raise RsclipInputError(f"{path}: is the input {seen_inputs[ident]}; "
                                   "choose another output path (inputs are never overwritten)", field=label)
        if ident in taken:
            raise RsclipInputError(f"{path}: same file as the {{{taken[ident]}}} output; give each output its own path",
                                   field=label)
        taken[ident] = label
        if path.is_dir():
            raise RsclipInputError(f"{path}: is a directory", field=label)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path}: exists (use {{overwrite}} to replace it)", field=label)
        ensure_writable_dir(path.parent, label, for_path=path)
        remove_stale_partials(path)
        checked[label] = path
    return checked


def _remove_with_side_files(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()
    with contextlib.suppress(OSError):
        for side in tmp.parent.glob(tmp.name + ".*"):  # e.g. .aux.xml
            side.unlink()
        for side in tmp.parent.glob(tmp.name + "-*"):  # -wal/-shm journals
            side.unlink()


class StagedOutputs:
    """Outputs of one run, written under temp names and renamed together by `commit`."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def temp_for(self, path: str | os.PathLike) -> Path:
        final = Path(path)
        tmp = partial_path(final)
        _remove_with_side_files(tmp)
        self._staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _remove_with_side_files(tmp)
        self._staged = []


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Outputs that appear together on success; on any error none of the temp files is left."""
    staged = StagedOutputs()
    try:
        yield staged
        staged.commit()
    finally:
        staged.discard()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, staging: StagedOutputs | None = None) -> Iterator[Path]:
    """Yield a temp path in the destination folder; rename onto ``path`` on success, remove on error.

    With ``staging`` the rename is left to ``staging.commit()`` (several outputs at once).
    """
    if staging is not None:
        yield staging.temp_for(path)
        return
    with staged_outputs() as own:
        yield own.temp_for(path)


def _space_problem(folder: Path) -> str | None:
    """Why writes in ``folder`` may fail for lack of room: a full disk or a file-size limit."""
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return "disk full"
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"file size limit of {soft:,} bytes (ulimit -f)"
    except (ImportError, OSError, ValueError):
        pass
    return None


def _write_failed(path: str | os.PathLike, exc: BaseException) -> OutputWriteError:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    reason = getattr(exc, "strerror", None) or (text if len(text) <= 120 else text[:117] + "...")
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG)) or "No space left" in text \
            or "File too large" in text:
        reason = "disk full or file size limit reached"
    else:
        space = _space_problem(Path(path).parent)
        if space is not None:
            reason = f"{space}: {reason}"
    return OutputWriteError(f"{path}: cannot be written ({reason}); nothing was left behind", field="output")


def write_cog(path: str | os.PathLike, array: np.ndarray, transform: Any, crs_wkt: str | None, *,
              nodata: float | None = None, colormap: dict[int, Sequence[int]] | None = None,
              tags: dict[str, str] | None = None, band_tags: dict[str, str] | None = None,
              band_description: str | None = None, resampling: str = "NEAREST",
              staging: StagedOutputs | None = None) -> Path:
    """Write a single-band array as a Cloud-Optimised GeoTIFF (GDAL COG driver), atomically.

    A write failure raises `OutputWriteError` naming ``path`` and leaves no temp file.
    """
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
    with atomic_path(path, staging) as tmp:
        try:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as mem:
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
        except RsclipError:
            raise
        except Exception as exc:  # GDAL/OS write errors: ENOSPC, EFBIG, EROFS, ...
            raise _write_failed(path, exc) from exc
    return Path(path)


def write_gpkg(path: str | os.PathLike, frame: Any, layer: str, staging: StagedOutputs | None = None,
               more_layers: Mapping[str, Any] | None = None) -> Path:
    """Write a GeoDataFrame (and ``more_layers``: name -> frame) as one GeoPackage (version 1.2,
    for QGIS 3.22), atomically."""
    import pyogrio

    with atomic_path(path, staging) as tmp:
        try:
            pyogrio.write_dataframe(frame, str(tmp), layer=layer, driver="GPKG",
                                    dataset_options={"VERSION": GPKG_VERSION}, promote_to_multi=True)
            for name, extra in (more_layers or {}).items():
                pyogrio.write_dataframe(extra, str(tmp), layer=name, driver="GPKG", append=True,
                                        promote_to_multi=False)
        except RsclipError:
            raise
        except Exception as exc:
            raise _write_failed(path, exc) from exc
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
