"""Batches of rasters: classify or index many files, in this process or in worker processes.

Used by ``rsclip-map classify/index`` with several rasters; a front-end only shows progress and
words the results. Guarantees:

* a batch resumes: a raster whose outputs all exist is skipped (unless ``overwrite``);
* rasters with the same file name in different folders get distinct outputs (their sub-folders
  relative to the common parent are kept under ``out_dir``), and a remaining clash is refused;
* worker processes exit when the parent dies (``kill -9``) instead of lingering as orphans;
* Ctrl-C / SIGINT stops promptly: queued rasters are dropped, running ones are cancelled, finished
  outputs are kept, nothing partial is left, and `BatchInterrupted` says how many finished.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rsclip_core.inference.errors import USER_ERRORS, Labels, RsclipCancelled, RsclipInputError, describe_error
from rsclip_core.inference.index import CancelFn, ProgressFn

KINDS = ("classify", "index")
OWN_SUFFIXES = (".landcover", ".confidence")
"""Stems of classify outputs: never taken as batch inputs."""
PARENT_GONE_EXIT = 70
"""Exit status of a worker whose parent process died."""
STOP_GRACE_S = 20.0
"""How long stopped workers may take to reach their next cancel check before they are killed."""
WATCHDOG_INTERVAL_S = 0.5


@dataclass
class JobResult:
    """Outcome of one raster of a batch."""

    raster: str
    status: str  # done | skipped | failed | cancelled
    detail: str
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        """Done, skipped or failed: a rerun would not redo it (failures aside)."""
        return self.status != "cancelled"


@dataclass
class BatchJob:
    """One raster and the keyword arguments of its run (see `plan_classify_batch`, `plan_index_batch`)."""

    raster: str
    params: dict[str, Any]


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGINT stopped a batch; ``results`` holds the rasters that finished before it."""

    def __init__(self, results: Sequence[JobResult], total: int) -> None:
        self.results = list(results)
        self.total = total
        super().__init__(f"interrupted: {self.finished} of {total} rasters finished; "
                         "rerun the same command to resume")

    @property
    def finished(self) -> int:
        return sum(r.finished for r in self.results)


# -- planning -----------------------------------------------------------------------------------
def classify_outputs(raster: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Batch output names of one raster in ``out_dir``: class map, confidence and polygons."""
    stem, folder = Path(raster).stem, Path(out_dir)
    return {
        "out_tif": folder / f"{stem}.landcover.tif",
        "confidence_tif": folder / f"{stem}.confidence.tif",
        "polygons_gpkg": folder / f"{stem}.landcover.gpkg",
    }


def batch_output_dirs(rasters: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Where each raster's outputs go: ``out_dir`` / its folder relative to the rasters' common parent.

    Rasters of one folder all map to ``out_dir`` itself; ``a/scene.tif`` and ``b/scene.tif`` map to
    ``out_dir/a`` and ``out_dir/b``.
    """
    parents = [Path(os.path.abspath(r)).parent for r in rasters]
    if not parents:
        return []
    try:
        root = Path(os.path.commonpath([str(p) for p in parents]))
    except ValueError:  # different drives (Windows): keep the full folder below out_dir
        return [Path(out_dir) / p.relative_to(p.anchor) for p in parents]
    return [Path(out_dir) / p.relative_to(root) for p in parents]


def plan_classify_batch(rasters: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                        params: Mapping[str, Any]) -> list[BatchJob]:
    """One classify job per raster with distinct outputs under ``out_dir``; refuse any clash.

    ``params``: `run_classify` keywords shared by all rasters (``classes``, ``tiling``,
    ``threshold``, ``cache_dir``, ``overwrite``) plus ``model_dir``. Our own outputs
    (``*.landcover.tif``, ``*.confidence.tif``) are left out of the inputs.
    """
    rasters = [r for r in rasters if Path(Path(r).stem).suffix not in OWN_SUFFIXES]
    jobs: list[BatchJob] = []
    claimed: dict[str, str] = {}
    for raster, folder in zip(rasters, batch_output_dirs(rasters, out_dir)):
        outputs = classify_outputs(raster, folder)
        for path in outputs.values():
            key = os.path.normcase(os.path.abspath(path))
            if key in claimed:
                raise RsclipInputError(
                    f"{claimed[key]} and {raster} would both write {path}: rename one of them or map them "
                    "in separate runs", field="out_dir")
            claimed[key] = str(raster)
        jobs.append(BatchJob(str(raster), dict(params, outputs={k: str(v) for k, v in outputs.items()})))
    return jobs


def plan_index_batch(rasters: Sequence[str | os.PathLike], params: Mapping[str, Any]) -> list[BatchJob]:
    """One index job per raster (``params``: ``model_dir``, ``tiling``, ``cache_dir``, ``overwrite``).

    Index files are named by raster path + model + tiling, so they never clash.
    """
    return [BatchJob(str(r), dict(params)) for r in rasters]


# -- one job ------------------------------------------------------------------------------------
def run_job(kind: str, job: BatchJob, *, model: Any = None, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None, labels: Labels | None = None) -> JobResult:
    """Run one raster of a batch. Never raises for a bad raster (the result says why it failed).

    ``model``: a loaded model (default: `cached_model` of ``params["model_dir"]``); ``labels``
    word the failure messages for the front-end (see `errors.describe_error`). Outputs this job
    created are removed again when it is interrupted, so nothing partial is left behind.
    """
    from rsclip_core.inference.model_cache import cached_model
    from rsclip_core.inference.runs import run_classify, run_index

    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r} (expected one of {KINDS})")
    params, raster = job.params, job.raster
    outputs: dict[str, str] = params.get("outputs", {}) if kind == "classify" else {}
    present = {k: Path(p).exists() for k, p in outputs.items() if p}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "classify" and present and not params["overwrite"] and all(present.values()):
                return JobResult(raster, "skipped", "outputs exist")
            if model is None:
                model = cached_model(params["model_dir"], threads=params.get("threads"))
            if kind == "classify":
                # an incomplete set is what a stopped batch leaves: redo that raster's outputs
                run = run_classify(raster, params["classes"], model=model, tiling=params["tiling"],
                                   threshold=params["threshold"], cache_dir=params["cache_dir"],
                                   overwrite=params["overwrite"] or any(present.values()), progress=progress,
                                   cancel=cancel, detail=params.get("detail"),
                                   cells_per_tile=params.get("cells_per_tile"),
                                   map_resolution=params.get("map_resolution"), **outputs)
                top = max(run.stats, key=lambda s: s["cells"]) if run.stats else None
                detail = str(run.out_tif) + (f" (mostly {top['name']}, {top['fraction']:.0%})" if top else "")
            else:
                indexed = run_index(raster, model=model, tiling=params["tiling"], cache_dir=params["cache_dir"],
                                    overwrite=params["overwrite"], progress=progress, cancel=cancel)
                if indexed.reused:
                    return JobResult(raster, "skipped", f"index exists: {indexed.index_path}",
                                     time.perf_counter() - start)
                detail = f"{indexed.index_path} ({len(indexed.index)} tiles)"
        return JobResult(raster, "done", detail, time.perf_counter() - start)
    except RsclipCancelled:
        _remove_new(outputs, present)
        return JobResult(raster, "cancelled", "stopped before it finished", time.perf_counter() - start)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: leave nothing half-made
            _remove_new(outputs, present)
            raise
        reason = describe_error(exc, labels)
        if not isinstance(exc, USER_ERRORS):
            reason = f"{type(exc).__name__}: {reason}"
        return JobResult(raster, "failed", reason, time.perf_counter() - start)


def _remove_new(outputs: Mapping[str, str], present: Mapping[str, bool]) -> None:
    """Delete the outputs that did not exist before the job started."""
    for key, path in outputs.items():
        if path and not present.get(key, False):
            Path(path).unlink(missing_ok=True)


# -- worker processes ----------------------------------------------------------------------------
_STOP: Any = None  # the batch's stop event, in a worker process


def _init_worker(parent_pid: int, stop: Any) -> None:
    """Worker set-up: the parent handles Ctrl-C; exit as soon as the parent is gone."""
    global _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP = stop
    watch_parent(parent_pid)


def watch_parent(parent_pid: int, interval_s: float = WATCHDOG_INTERVAL_S) -> threading.Thread:
    """Start a daemon thread that ends this process when ``parent_pid`` is no longer its parent.

    A parent killed with SIGKILL cannot tell its workers; they are re-parented, which
    ``os.getppid()`` shows within ``interval_s``.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(PARENT_GONE_EXIT)

    thread = threading.Thread(target=watch, name="rsclip-parent-watchdog", daemon=True)
    thread.start()
    return thread


def _worker_job(kind: str, job: BatchJob, labels: Labels | None) -> JobResult:
    stop = _STOP
    return run_job(kind, job, cancel=stop.is_set if stop is not None else None, labels=labels)


# -- the batch ----------------------------------------------------------------------------------
def run_batch(kind: str, jobs: Sequence[BatchJob], *, model: Any = None, workers: int = 1,
              labels: Labels | None = None,
              tile_progress: Callable[[int, int, str], ProgressFn | None] | None = None,
              on_result: Callable[[JobResult], None] | None = None,
              cancel: CancelFn | None = None) -> list[JobResult]:
    """Run ``jobs`` (``kind``: classify | index) and return their results in input order.

    ``workers > 1`` runs rasters in that many spawned processes (each with cpu_count/workers
    onnxruntime threads); otherwise they run here with ``model`` and ``tile_progress(n, total,
    raster)`` supplying a per-raster progress callback (closed through its ``close()`` if it has
    one). ``on_result`` sees each result as it arrives. When ``cancel()`` turns true the rest is
    reported as ``cancelled``; Ctrl-C raises `BatchInterrupted` once running rasters stopped.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r} (expected one of {KINDS})")
    if int(workers) < 1:
        raise RsclipInputError(f"must be >= 1, got {workers}", field="workers")
    if workers <= 1 or len(jobs) <= 1:
        return _run_here(kind, jobs, model, labels, tile_progress, on_result, cancel)
    return _run_in_workers(kind, jobs, int(workers), labels, on_result, cancel)


def _run_here(kind: str, jobs: Sequence[BatchJob], model: Any, labels: Labels | None,
              tile_progress: Callable[[int, int, str], ProgressFn | None] | None,
              on_result: Callable[[JobResult], None] | None, cancel: CancelFn | None) -> list[JobResult]:
    results: list[JobResult] = []
    try:
        for n, job in enumerate(jobs, 1):
            if cancel is not None and cancel():
                result = JobResult(job.raster, "cancelled", "not started")
            else:
                bar = tile_progress(n, len(jobs), job.raster) if tile_progress is not None else None
                try:
                    result = run_job(kind, job, model=model, progress=bar, cancel=cancel, labels=labels)
                finally:
                    close = getattr(bar, "close", None)
                    if close is not None:
                        close()
            results.append(result)
            if on_result is not None:
                on_result(result)
    except KeyboardInterrupt as exc:
        raise BatchInterrupted(results, len(jobs)) from exc
    return results


def _run_in_workers(kind: str, jobs: Sequence[BatchJob], workers: int, labels: Labels | None,
                    on_result: Callable[[JobResult], None] | None, cancel: CancelFn | None) -> list[JobResult]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # onnxruntime and GDAL are not fork-safe
    stop = ctx.Event()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(os.getpid(), stop))
    by_future = {pool.submit(_worker_job, kind, BatchJob(j.raster, dict(j.params, threads=threads)), labels): i
                 for i, j in enumerate(jobs)}
    results: dict[int, JobResult] = {}

    def collect(done: set) -> None:
        for future in done:
            if future.cancelled() or future.exception() is not None:
                continue
            results[by_future[future]] = result = future.result()
            if on_result is not None:
                on_result(result)

    pending = set(by_future)
    interrupted = False
    try:
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            collect(done)
            if cancel is not None and cancel():
                break
    except KeyboardInterrupt:
        interrupted = True
    if pending:  # stopped early: drop queued rasters, let running ones reach their cancel check
        stop.set()
        for future in pending:
            future.cancel()
        try:
            done, pending = wait(pending, timeout=STOP_GRACE_S)
            collect(done)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            interrupted = True
        if pending:
            _kill_workers(pool)
    pool.shutdown(wait=True, cancel_futures=True)
    for i in range(len(jobs)):
        if i not in results:
            results[i] = JobResult(jobs[i].raster, "cancelled", "stopped before it finished")
    ordered = [results[i] for i in range(len(jobs))]
    if interrupted:
        raise BatchInterrupted([r for r in ordered if r.finished], len(jobs))
    return ordered


def _kill_workers(pool: Any) -> None:
    """Terminate the worker processes of a `ProcessPoolExecutor` that did not stop in time."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
