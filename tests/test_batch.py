"""Batch runner (`rsclip_core.inference.batch`): distinct outputs, Ctrl-C, orphaned workers, wording.

The process tests run ``python -m rsclip_core.cli.map`` as real subprocesses on generated
GeoTIFFs and the toy model, each bounded by timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsclip_core.inference import (
    BatchInterrupted,
    BatchJob,
    RsclipInputError,
    TilingConfig,
    describe_error,
    plan_classify_batch,
    run_batch,
)
from rsclip_core.inference.toy_model import write_color_raster

REPO = Path(__file__).resolve().parents[1]
CLASSES_YAML = ("classes:\n  - {name: bare, prompts: [red soil], color: '#c83232'}\n"
                "  - {name: vegetation, prompts: [green forest], color: '#1ea01e'}\n")


@pytest.fixture()
def classes_file(tmp_path) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(CLASSES_YAML)
    return path


def rsclip_map(*args: object, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "rsclip_core.cli.map", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spawned_workers(parent_pid: int) -> list:
    """Live multiprocessing worker processes (not the resource tracker) of ``parent_pid``."""
    psutil = pytest.importorskip("psutil")
    try:
        children = psutil.Process(parent_pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "spawn_main" in " ".join(_cmdline(c))]


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return []


def alive(process) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def slow_rasters(folder: Path, n: int) -> list[Path]:
    """Rasters that take the toy model a few seconds each at --tile 32 --overlap 0.75."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_color_raster(folder / f"r{i}.tif", 1536, 1536, seed=i) for i in range(n)]


# -- #13 item 3: same file name in different folders --------------------------------------------
def test_same_name_in_two_folders_gets_two_maps(model_dir, classes_file, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_color_raster(tmp_path / sub / "scene.tif", 64, 64, seed=ord(sub))
    out = tmp_path / "maps"
    proc = rsclip_map("classify", "a/scene.tif", "b/scene.tif", "-m", model_dir, "--classes", classes_file,
                      "--out-dir", out, "--tile", 32, cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "2 done, 0 skipped, 0 failed" in stdout + stderr
    for sub in ("a", "b"):
        for name in ("scene.landcover.tif", "scene.confidence.tif", "scene.landcover.gpkg"):
            assert (out / sub / name).is_file(), f"{sub}/{name} missing"
    assert not list(out.glob("scene.*")), "nothing written at the top of --out-dir"


def test_outputs_that_would_still_clash_are_refused(tmp_path):
    rasters = [write_color_raster(tmp_path / "scene.tif", 32, 32), write_color_raster(tmp_path / "scene.tiff", 32, 32)]
    with pytest.raises(RsclipInputError, match="would both write") as clash:
        plan_classify_batch(rasters, tmp_path / "maps", {})
    assert clash.value.field == "out_dir"
    assert describe_error(clash.value, {"out_dir": "--out-dir"}).startswith("--out-dir: ")
    # one folder: outputs directly in out_dir, our own outputs are never inputs
    jobs = plan_classify_batch([rasters[0], tmp_path / "x.landcover.tif"], tmp_path / "maps", {"overwrite": False})
    assert [j.raster for j in jobs] == [str(rasters[0])]
    assert jobs[0].params["outputs"]["out_tif"] == str(tmp_path / "maps" / "scene.landcover.tif")


def test_cli_refuses_a_clash_with_one_error_line(model_dir, classes_file, tmp_path):
    for name in ("scene.tif", "scene.tiff"):
        write_color_raster(tmp_path / name, 32, 32)
    proc = rsclip_map("classify", "scene.tif", "scene.tiff", "-m", model_dir, "--classes", classes_file,
                      "--out-dir", "maps", cwd=tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    errors = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: --out-dir: ") and "would both write" in errors[0]
    assert not (tmp_path / "maps").exists()


# -- #13 item 5: Ctrl-C stops a --workers batch ------------------------------------------------
def test_sigint_stops_a_worker_batch_promptly(model_dir, classes_file, tmp_path):
    n = 8
    slow_rasters(tmp_path / "in", n)
    out = tmp_path / "maps"
    args = ("classify", "in", "-m", model_dir, "--classes", classes_file, "--out-dir", out, "--tile", 32,
            "--overlap", 0.75, "--workers", 2, "-q")
    started = time.monotonic()
    proc = rsclip_map(*args, cwd=tmp_path)
    try:
        wait_for(lambda: len(list(out.glob("*.landcover.gpkg"))) >= 1 or proc.poll() is not None, 240,
                 "the first finished raster")
        first_done = time.monotonic() - started
        assert proc.poll() is None, "the batch ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stop_s = time.monotonic() - interrupted
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Interrupted: ") and "rerun" in lines[0], stderr
    finished = int(lines[0].split()[1])
    assert 1 <= finished < n, lines[0]
    assert f"of {n} rasters finished" in lines[0]
    assert stop_s < max(15.0, first_done), f"took {stop_s:.1f} s to stop"
    assert not list(out.rglob("*partial*")), "partial files left behind"
    maps = sorted(p.name.split(".")[0] for p in out.glob("*.landcover.tif"))
    for stem in maps:  # every map kept is a complete set
        assert (out / f"{stem}.confidence.tif").is_file() and (out / f"{stem}.landcover.gpkg").is_file()
    assert len(maps) >= finished and len(maps) < n
    # the workers are gone too
    assert not spawned_workers(proc.pid)


def test_ctrl_c_in_process_keeps_finished_and_removes_half_made(model_dir, classes_file, tmp_path, monkeypatch):
    from rsclip_core.inference import load_classes, load_model, runs

    rasters = [write_color_raster(tmp_path / f"r{i}.tif", 64, 64, seed=i) for i in range(3)]
    params = {"model_dir": str(model_dir), "classes": load_classes(classes_file), "tiling": TilingConfig(tile_size=32),
              "threshold": None, "cache_dir": None, "overwrite": False}
    jobs = plan_classify_batch(rasters, tmp_path / "maps", params)
    calls = {"n": 0}
    original = runs.landcover_polygons

    def polygons_then_ctrl_c(result):
        calls["n"] += 1
        if calls["n"] == 2:  # second raster: class map already written, then Ctrl-C
            raise KeyboardInterrupt
        return original(result)

    monkeypatch.setattr(runs, "landcover_polygons", polygons_then_ctrl_c)
    with pytest.raises(BatchInterrupted) as stop:
        run_batch("classify", jobs, model=load_model(model_dir))
    assert stop.value.finished == 1 and stop.value.total == 3
    assert "1 of 3 rasters finished" in str(stop.value)
    maps = tmp_path / "maps"
    assert (maps / "r0.landcover.gpkg").is_file()
    assert not (maps / "r1.landcover.tif").exists() and not (maps / "r1.confidence.tif").exists()
    assert not list(maps.glob("*partial*"))


def test_cancel_callback_reports_the_rest_as_cancelled(model_dir, classes_file, tmp_path):
    from rsclip_core.inference import load_classes, load_model

    rasters = [write_color_raster(tmp_path / f"r{i}.tif", 64, 64, seed=i) for i in range(3)]
    params = {"model_dir": str(model_dir), "classes": load_classes(classes_file), "tiling": TilingConfig(tile_size=32),
              "threshold": None, "cache_dir": None, "overwrite": False}
    seen: list = []
    results = run_batch("classify", plan_classify_batch(rasters, tmp_path / "maps", params),
                        model=load_model(model_dir), on_result=seen.append, cancel=lambda: len(seen) >= 1)
    assert [r.status for r in results] == ["done", "cancelled", "cancelled"]
    assert not (tmp_path / "maps" / "r1.landcover.tif").exists()


def test_workers_that_do_not_stop_in_time_are_killed(model_dir, classes_file, tmp_path, monkeypatch):
    from rsclip_core.inference import batch, load_classes

    monkeypatch.setattr(batch, "STOP_GRACE_S", 0.0)  # no time to reach a cancel check
    rasters = slow_rasters(tmp_path / "in", 4)
    params = {"model_dir": str(model_dir), "classes": load_classes(classes_file),
              "tiling": TilingConfig(tile_size=32, overlap=0.75), "threshold": None, "cache_dir": None,
              "overwrite": False}
    began = time.monotonic()
    results = run_batch("classify", plan_classify_batch(rasters, tmp_path / "maps", params), workers=2,
                        cancel=lambda: time.monotonic() - began > 4.0)
    assert time.monotonic() - began < 60
    assert len(results) == 4 and results[-1].status == "cancelled"
    assert {r.status for r in results} <= {"done", "cancelled"}
    assert not spawned_workers(os.getpid())


# -- #13 item 4: kill -9 of the parent ----------------------------------------------------------
def test_workers_exit_when_the_parent_is_killed(model_dir, classes_file, tmp_path):
    psutil = pytest.importorskip("psutil")
    slow_rasters(tmp_path / "in", 6)
    proc = rsclip_map("classify", "in", "-m", model_dir, "--classes", classes_file, "--out-dir", "maps",
                      "--tile", 32, "--overlap", 0.75, "--workers", 2, "-q", cwd=tmp_path)
    workers: list = []
    try:
        def two_workers_busy() -> bool:
            workers[:] = spawned_workers(proc.pid)
            return len(workers) == 2 or proc.poll() is not None

        wait_for(two_workers_busy, 120, "two worker processes")
        assert proc.poll() is None and len(workers) == 2
        time.sleep(1.0)  # let them pick up rasters
        proc.kill()  # SIGKILL: the parent cannot tell its workers
        proc.communicate(timeout=30)
        wait_for(lambda: not any(alive(w) for w in workers), 20, "the orphaned workers to exit")
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass


def test_worker_watchdog_unit(tmp_path):
    """`watch_parent` ends a process whose parent is gone (here: a grandchild whose parent exits)."""
    script = tmp_path / "orphan.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "if sys.argv[1] == 'parent':\n"
        "    child = subprocess.Popen([sys.executable, __file__, 'child', str(os.getpid())],\n"
        "                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "    print(child.pid, flush=True)\n"
        "    os._exit(0)\n"
        "from rsclip_core.inference.batch import watch_parent\n"
        "watch_parent(int(sys.argv[2]), interval_s=0.1)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(script), "parent"], capture_output=True, text=True, env=env,
                         timeout=60)
    psutil = pytest.importorskip("psutil")
    child = psutil.Process(int(out.stdout.split()[0]))
    try:
        wait_for(lambda: not alive(child), 30, "the orphan to exit")
    finally:
        if alive(child):
            child.kill()


def test_unknown_kind_and_bad_workers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown batch kind"):
        run_batch("search", [BatchJob("x.tif", {})])
    with pytest.raises(RsclipInputError, match="^workers: must be >= 1") as bad:
        run_batch("index", [BatchJob("x.tif", {})], workers=0)
    assert describe_error(bad.value, {"workers": "--workers"}) == "--workers: must be >= 1, got 0"


# -- the one model cache (CLI workers and QGIS plugin) -------------------------------------------
def test_model_cache_loads_each_directory_once(model_dir, tmp_path):
    from rsclip_core.inference import ModelCache, resolve_model_dir

    assert resolve_model_dir(model_dir / "image.onnx") == model_dir
    assert resolve_model_dir("", default=model_dir) == model_dir
    cache = ModelCache()
    first = cache.get(model_dir)
    assert cache.get(model_dir / "image.onnx") is first and cache.get(str(model_dir) + "/") is first
    assert cache.get(model_dir, threads=1) is not first and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.get(model_dir) is not first
    (tmp_path / "empty").mkdir()
    with pytest.raises(RsclipInputError, match="not an exported rsclip model") as bad:
        resolve_model_dir(tmp_path / "empty")
    assert bad.value.field == "model"
    with pytest.raises(FileNotFoundError) as missing:
        resolve_model_dir(tmp_path / "nope")
    assert missing.value.field == "model"
