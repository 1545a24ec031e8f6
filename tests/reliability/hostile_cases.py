"""The hostile cases of ``rsclip-map`` (issue #13), one home for the suite and the benchmark.

Each `Case` builds, in its own folder, the inputs of one hostile run (truncated rasters,
read-only or full folders, outputs on top of inputs, corrupt models, bad class files, odd
rasters, signals to real subprocesses) and says what must happen. `run_case` runs it and
judges three things:

* handled: the expected exit status; on failure exactly one ``Error:`` line that names the
  culprit and no traceback;
* intact: every protected file (inputs, pre-existing outputs) is byte-for-byte unchanged;
* clean: no ``.partial-`` file is left and a failed run leaves none of its outputs behind.

Used by ``tests/reliability/test_hostile.py`` (parametrized) and ``benchmarks/reliability.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# the code under test: this checkout, or another one (e.g. main before a fix) via $RSCLIP_CODE
REPO = Path(os.environ.get("RSCLIP_CODE") or Path(__file__).resolve().parents[2])
CLASSES = ("classes:\n  - {name: bare, prompts: [red soil], color: '#c83232'}\n"
           "  - {name: vegetation, prompts: [green forest], color: '#1ea01e'}\n"
           "  - {name: water, prompts: [blue water], color: '#143cdc'}\n")


@dataclass
class Env:
    """What every case shares: a toy model and the folder cases work in."""

    root: Path
    model_dir: Path

    @classmethod
    def create(cls, root: Path) -> Env:
        from rsclip_core.inference.toy_model import write_toy_model

        root.mkdir(parents=True, exist_ok=True)
        return cls(root=root, model_dir=write_toy_model(root / "model"))


@dataclass
class Plan:
    """One hostile run: the arguments and what must hold afterwards."""

    argv: list[str]
    expect_ok: bool = False
    mention: list[str] = field(default_factory=list)  # words the error (or warning) line must contain
    warning: bool = False  # expect_ok runs: a "Warning:" line containing ``mention`` is required
    protect: list[Path] = field(default_factory=list)  # must be unchanged afterwards
    outputs: list[Path] = field(default_factory=list)  # must exist on success, be absent after a failure
    folders: list[Path] = field(default_factory=list)  # nothing ".partial-" may be left in these
    subprocess: bool = False
    fsize_limit: int | None = None  # RLIMIT_FSIZE of the subprocess (disk full)
    signal: tuple[int, float] | None = None  # (signal, seconds after start) sent to the subprocess
    rerun: list[str] | None = None  # after the run: this must succeed (e.g. after kill -9)
    cleanup: Callable[[], None] | None = None


@dataclass
class Case:
    name: str
    group: str
    build: Callable[[Path, Env], Plan]
    slow: bool = False
    needs_mount: bool = False


@dataclass
class Outcome:
    name: str
    group: str
    handled: bool
    intact: bool
    clean: bool
    detail: str
    seconds: float
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return self.handled and self.intact and self.clean


# -- helpers --------------------------------------------------------------------------------
def _raster(folder: Path, name: str = "in.tif", size: int = 128, **kw) -> Path:
    from rsclip_core.inference.toy_model import write_color_raster

    return write_color_raster(folder / name, size, size, **kw)


def _classes(folder: Path, text: str | bytes = CLASSES, name: str = "classes.yaml") -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _classify(env: Env, raster: Path, *extra: str, classes: Path | None = None) -> list[str]:
    argv = ["classify", str(raster), "-m", str(env.model_dir), "--tile", "32"]
    if classes is not None:
        argv += ["--classes", str(classes)]
    return argv + list(extra)


def _search(env: Env, raster: Path, *extra: str) -> list[str]:
    return ["search", str(raster), "blue water", "-m", str(env.model_dir), "--tile", "32", *extra]


def can_mount() -> bool:
    """Whether this process may make bind/tmpfs mounts (root in a permissive sandbox)."""
    probe = Path(f"/tmp/.rsclip-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _readonly_bind(folder: Path) -> Callable[[], None]:
    """Make ``folder`` a read-only bind mount of itself (root ignores permission bits)."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
    return lambda: subprocess.run(["umount", str(folder)], capture_output=True)


def _tmpfs(folder: Path, size: str) -> Callable[[], None]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                   capture_output=True)
    return lambda: subprocess.run(["umount", str(folder)], capture_output=True)


def _build_index(env: Env, raster: Path, cache: Path) -> None:
    """Pre-build the index so a limited run only writes the outputs."""
    from click.testing import CliRunner

    from rsclip_core.cli.map import cli

    res = CliRunner().invoke(cli, ["index", str(raster), "-m", str(env.model_dir), "--tile", "32",
                                   "--out-dir", str(cache), "-q"])
    assert res.exit_code == 0, res.output


# -- the cases --------------------------------------------------------------------------------
def _case_out_is_input(flag: str, how: str) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d)
        target = {"same": raster, "spelling": d / "sub" / ".." / "in.tif", "symlink": d / "link.tif",
                  "hardlink": d / "hard.tif"}[how]
        (d / "sub").mkdir()
        if how == "symlink":
            target.symlink_to(raster)
        elif how == "hardlink":
            os.link(raster, target)
        others = {"-o": [], "--confidence": ["-o", str(d / "lc.tif")], "--polygons": ["-o", str(d / "lc.tif")]}
        if flag == "--heatmap":
            argv = _search(env, raster, "--heatmap", str(target), "--overwrite")
        else:
            argv = _classify(env, raster, *others[flag], flag, str(target), "--overwrite")
        return Plan(argv, mention=["input", "in.tif" if how == "same" else target.name], protect=[raster],
                    outputs=[d / "lc.tif"] if flag in ("--confidence", "--polygons") else [], folders=[d])
    return build


def _case_same_outputs(kind: str) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d)
        s = d / ("s.gpkg" if kind == "search" else "s.tif")
        argv = {"confidence": _classify(env, raster, "-o", str(s), "--confidence", str(s)),
                "polygons": _classify(env, raster, "-o", str(s), "--polygons", str(d / "." / "s.tif")),
                "search": _search(env, raster, "-o", str(s), "--heatmap", str(s))}[kind]
        return Plan(argv, mention=["same file", "s."], protect=[raster], outputs=[s], folders=[d])
    return build


def _exists_no_overwrite(d: Path, env: Env) -> Plan:
    raster = _raster(d)
    old = d / "lc.tif"
    old.write_bytes(b"an earlier map")
    return Plan(_classify(env, raster, "-o", str(old)), mention=["lc.tif", "exists"], protect=[raster, old],
                folders=[d])


def _readonly_out(d: Path, env: Env) -> Plan:
    raster = _raster(d)
    out = d / "ro"
    out.mkdir()
    undo = _readonly_bind(out)
    return Plan(_classify(env, raster, "-o", str(out / "lc.tif"), "--cache-dir", str(d / "cache")),
                mention=["lc.tif", "not writable"], protect=[raster], outputs=[out / "lc.tif"],
                folders=[d, out], cleanup=undo)


def _readonly_cache(d: Path, env: Env) -> Plan:
    raster = _raster(d)
    cache = d / "cache"
    cache.mkdir()
    undo = _readonly_bind(cache)
    return Plan(_classify(env, raster, "-o", str(d / "lc.tif"), "--cache-dir", str(cache)),
                mention=["--cache-dir", "not writable"], protect=[raster], outputs=[d / "lc.tif"],
                folders=[d, cache], cleanup=undo)


def _parent_is_file(which: str) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d)
        blocker = d / "afile"
        blocker.write_text("x")
        if which == "output":
            argv = _classify(env, raster, "-o", str(blocker / "lc.tif"))
        else:
            argv = _classify(env, raster, "-o", str(d / "lc.tif"), "--cache-dir", str(blocker / "idx"))
        return Plan(argv, mention=["afile", "is a file"], protect=[raster, blocker], outputs=[d / "lc.tif"],
                    folders=[d])
    return build


def _disk_full_rlimit(overwrite: bool) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d, size=256)
        cache = d / "cache"
        _build_index(env, raster, cache)
        outs = [d / "lc.tif", d / "conf.tif", d / "lc.gpkg"]
        protect = [raster]
        extra = []
        if overwrite:  # earlier outputs must survive a failed --overwrite run
            for p in outs:
                p.write_bytes(b"earlier " + p.name.encode())
            protect += outs
            extra = ["--overwrite"]
        argv = _classify(env, raster, "-o", str(outs[0]), "--confidence", str(outs[1]), "--polygons",
                         str(outs[2]), "--cache-dir", str(cache), *extra)
        rerun = None if overwrite else argv  # the rerun must not fail with "exists"
        return Plan(argv, mention=["cannot be written", "limit"], protect=protect,
                    outputs=[] if overwrite else outs, folders=[d], subprocess=True, fsize_limit=16384,
                    rerun=rerun)
    return build


def _disk_full_tmpfs(d: Path, env: Env) -> Plan:
    raster = _raster(d, size=256)
    cache = d / "cache"
    _build_index(env, raster, cache)
    full = d / "full"
    undo = _tmpfs(full, "24k")
    outs = [full / "lc.tif", full / "conf.tif", full / "lc.gpkg"]
    argv = _classify(env, raster, "-o", str(outs[0]), "--confidence", str(outs[1]), "--polygons", str(outs[2]),
                     "--cache-dir", str(cache))
    return Plan(argv, mention=["cannot be written"], protect=[raster], outputs=outs, folders=[d, full],
                cleanup=undo)


def _truncated(d: Path, env: Env) -> Plan:
    raster = _raster(d, size=512, tiled=True)
    data = raster.read_bytes()
    cut = d / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    return Plan(_classify(env, cut, "-o", str(d / "lc.tif")), mention=["cut.tif", "truncated"], protect=[cut],
                outputs=[d / "lc.tif"], folders=[d])


def _bytes_file(name: str, payload: bytes, mention: list[str]) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        path = d / name
        path.write_bytes(payload)
        return Plan(_classify(env, path, "-o", str(d / "lc.tif")), mention=mention, protect=[path],
                    outputs=[d / "lc.tif"], folders=[d])
    return build


def _missing_raster(d: Path, env: Env) -> Plan:
    return Plan(_classify(env, d / "nope.tif", "-o", str(d / "lc.tif")), mention=["nope.tif", "no such file"],
                outputs=[d / "lc.tif"], folders=[d])


def _odd_raster(kind: str) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        import rasterio
        from rasterio.transform import Affine, from_origin

        path = d / "odd.tif"
        ok, mention, warning, extra = False, ["odd.tif"], False, []
        if kind == "one-band":
            _raster(d, "odd.tif")
            with rasterio.open(path) as src:
                band = src.read(1)
                profile = src.profile | {"count": 1}
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(band, 1)
            mention.append("--bands")
        elif kind == "bad-bands":
            _raster(d, "odd.tif")
            extra, mention = ["--bands", "1,2,7"], ["--bands", "odd.tif"]
        elif kind == "rotated":
            _raster(d, "odd.tif", transform=Affine(1.0, 0.2, 500000.0, 0.2, -1.0, 6000000.0))
            mention.append("rotated")
        elif kind == "all-nodata":
            with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                               crs="EPSG:32633", transform=from_origin(0, 64, 1, 1), nodata=0) as ds:
                ds.write(np.zeros((3, 64, 64), dtype=np.uint8))
            ok, warning, mention = True, True, ["no tile has enough valid pixels"]
        elif kind == "one-pixel":
            _raster(d, "odd.tif", size=1)
            ok = True
        elif kind == "png":
            from PIL import Image

            rgb = np.zeros((64, 64, 3), dtype=np.uint8)
            rgb[:32, :, 0] = 220
            rgb[32:, :, 2] = 220
            rgb += np.random.default_rng(0).integers(0, 20, rgb.shape, dtype=np.uint8)
            path = d / "odd.png"
            Image.fromarray(rgb).save(path)
            ok, warning, mention = True, True, ["not georeferenced"]
        elif kind == "extent-outside":
            _raster(d, "odd.tif")
            extra, mention = ["--extent", "0,0,10,10"], ["--extent", "does not overlap"]
        argv = _classify(env, path, "-o", str(d / "lc.tif"), *extra)
        return Plan(argv, expect_ok=ok, warning=warning, mention=mention, protect=[path],
                    outputs=[d / "lc.tif"], folders=[d])
    return build


def _bad_model(kind: str) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        model = d / "model"
        shutil.copytree(env.model_dir, model)
        mention = ["model"]
        if kind == "missing":
            shutil.rmtree(model)
        elif kind == "no-image-graph":
            (model / "image.onnx").unlink()
            mention = ["image.onnx"]
        elif kind == "corrupt-graph":
            (model / "image.onnx").write_bytes(b"\x00garbage" * 100)
            mention = ["image.onnx"]
        elif kind == "bad-json":
            (model / "rsclip.json").write_text("{ not json")
            mention = ["rsclip.json"]
        elif kind == "embed-dim":
            meta = json.loads((model / "rsclip.json").read_text())
            meta["embed_dim"] = int(meta["embed_dim"]) + 4
            (model / "rsclip.json").write_text(json.dumps(meta))
            return Plan(["info", str(model)], mention=["embed_dim", "dims"], folders=[d])
        raster = _raster(d)
        argv = ["classify", str(raster), "-m", str(model), "-o", str(d / "lc.tif")]
        return Plan(argv, mention=mention, protect=[raster], outputs=[d / "lc.tif"], folders=[d])
    return build


def _bad_classes(kind: str) -> Callable[[Path, Env], Plan]:
    texts: dict[str, tuple[str | bytes, list[str]]] = {
        "latin1": ("classes:\n  - {name: for\xeat}\n  - {name: water}\n".encode("latin-1"), ["classes.yaml", "UTF-8"]),
        "one-class": ("classes:\n  - {name: forest}\n", ["one class", "at least 2"]),
        "empty": ("classes: []\n", ["classes.yaml", "empty"]),
        "duplicate": ("classes:\n  - {name: a}\n  - {name: a}\n", ["classes.yaml", "duplicate"]),
        "bad-colour": ("classes:\n  - {name: a, color: '#12'}\n  - {name: b}\n", ["colour"]),
        "yaml-syntax": ("classes: [ {name: a\n", ["classes.yaml", "parse"]),
    }

    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d)
        text, mention = texts[kind]
        classes = _classes(d, text)
        return Plan(_classify(env, raster, "-o", str(d / "lc.tif"), classes=classes), mention=mention,
                    protect=[raster, classes], outputs=[d / "lc.tif"], folders=[d])
    return build


def _bad_option(extra: list[str], mention: list[str], ok: bool = False, warning: bool = False,
                size: int = 128) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d, size=size)
        return Plan(_classify(env, raster, "-o", str(d / "lc.tif"), *extra), expect_ok=ok, warning=warning,
                    mention=mention, protect=[raster], outputs=[d / "lc.tif"], folders=[d])
    return build


def _stale_partial(d: Path, env: Env) -> Plan:
    raster = _raster(d)
    dead = _dead_pid()
    stale = [d / f".lc.partial-{dead}.tif", d / f".lc.partial-{dead}.tif.aux.xml"]
    for p in stale:
        p.write_bytes(b"left by kill -9")
    return Plan(_classify(env, raster, "-o", str(d / "lc.tif")), expect_ok=True, protect=[raster],
                outputs=[d / "lc.tif"], folders=[d])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _signal(sig: int) -> Callable[[Path, Env], Plan]:
    def build(d: Path, env: Env) -> Plan:
        raster = _raster(d, size=2048)  # 16,384 tiles of 16 px: a few seconds of work
        outs = [d / "lc.tif", d / "conf.tif"]
        argv = _classify(env, raster, "-o", str(outs[0]), "--confidence", str(outs[1]), "--tile", "16")
        return Plan(argv, protect=[raster], outputs=outs, folders=[d], subprocess=True, signal=(sig, 0.5),
                    rerun=argv)
    return build


CASES: list[Case] = [
    *[Case(f"output-is-input{flag}-{how}", "never touch the input", _case_out_is_input(flag, how))
      for flag in ("-o", "--confidence", "--polygons", "--heatmap") for how in ("same",)],
    *[Case(f"output-is-input-{how}", "never touch the input", _case_out_is_input("-o", how))
      for how in ("spelling", "symlink", "hardlink")],
    *[Case(f"outputs-share-a-path-{k}", "distinct outputs", _case_same_outputs(k))
      for k in ("confidence", "polygons", "search")],
    Case("output-exists-without-overwrite", "distinct outputs", _exists_no_overwrite),
    Case("readonly-output-folder", "folders and disk", _readonly_out, needs_mount=True),
    Case("readonly-cache-folder", "folders and disk", _readonly_cache, needs_mount=True),
    Case("output-parent-is-a-file", "folders and disk", _parent_is_file("output")),
    Case("cache-parent-is-a-file", "folders and disk", _parent_is_file("cache")),
    Case("disk-full-rlimit", "folders and disk", _disk_full_rlimit(False)),
    Case("disk-full-rlimit-overwrite-keeps-old", "folders and disk", _disk_full_rlimit(True), slow=True),
    Case("disk-full-tmpfs", "folders and disk", _disk_full_tmpfs, needs_mount=True),
    Case("stale-partial-of-dead-run", "folders and disk", _stale_partial),
    Case("truncated-geotiff", "bad rasters", _truncated),
    Case("empty-file", "bad rasters", _bytes_file("empty.tif", b"", ["empty.tif"])),
    Case("text-file-as-raster", "bad rasters", _bytes_file("notes.tif", b"hello\n" * 100, ["notes.tif"])),
    Case("missing-raster", "bad rasters", _missing_raster),
    *[Case(f"raster-{k}", "odd rasters", _odd_raster(k))
      for k in ("one-band", "bad-bands", "rotated", "all-nodata", "one-pixel", "png", "extent-outside")],
    *[Case(f"model-{k}", "corrupt models", _bad_model(k))
      for k in ("missing", "no-image-graph", "corrupt-graph", "bad-json", "embed-dim")],
    *[Case(f"classes-{k}", "bad class files", _bad_classes(k))
      for k in ("latin1", "one-class", "empty", "duplicate", "bad-colour", "yaml-syntax")],
    Case("overlap-0.97-warns", "options", _bad_option(["--overlap", "0.97"], ["tiles planned"], ok=True,
                                                          warning=True, size=96)),
    Case("threshold-no-effect-warns", "options", _bad_option(["--threshold", "0.01"], ["no effect"], ok=True,
                                                                 warning=True)),
    Case("threshold-above-1", "options", _bad_option(["--threshold", "1.5"], ["--threshold"])),
    Case("overlap-1", "options", _bad_option(["--overlap", "1"], ["--overlap"])),
    Case("tile-too-small", "options", _bad_option(["--tile", "3"], ["--tile"])),
    *[Case(f"signal-{signal.Signals(s).name}", "signals", _signal(s), slow=True)
      for s in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)],
]


# -- running and judging ------------------------------------------------------------------------
def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _invoke(argv: list[str], plan: Plan, workdir: Path) -> tuple[int, str]:
    if not plan.subprocess:
        from click.testing import CliRunner

        from rsclip_core.cli.map import cli

        res = CliRunner().invoke(cli, argv)
        text = res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            import traceback

            text += "Traceback\n" + "".join(traceback.format_exception(res.exception))
        return res.exit_code, text
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def limits() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if plan.fsize_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (plan.fsize_limit, plan.fsize_limit))

    proc = subprocess.Popen([sys.executable, "-m", "rsclip_core.cli.map", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=workdir, env=env, preexec_fn=limits)
    head = b""
    if plan.signal is not None:  # wait until the work has started (tile count or progress bar), then signal
        import select

        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + 120
        while not any(m in head for m in (b" tiles", b"%|")) and proc.poll() is None \
                and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                head += os.read(fd, 65536)
        time.sleep(plan.signal[1])
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(plan.signal[0])
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, (head + out).decode(errors="replace")


def _leftovers(plan: Plan) -> list[str]:
    found = []
    for folder in plan.folders:
        if folder.is_dir():
            found += [p.name for p in folder.rglob("*") if ".partial-" in p.name or ".rsclip-write-test" in p.name]
    return found


def run_case(case: Case, workdir: Path, env: Env) -> Outcome:
    """Build ``case`` in ``workdir`` (fresh), run it, judge it."""
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plan = case.build(workdir, env)
    try:
        before = {p: _digest(p) for p in plan.protect}
        preexisting = {p for p in plan.outputs if p.exists()}
        code, text = _invoke(plan.argv, plan, workdir)
        lines = text.splitlines()
        errors = [ln for ln in lines if ln.startswith("Error:")]
        warns = [ln for ln in lines if ln.startswith("Warning:")]
        problems = []
        if "Traceback" in text:
            problems.append("traceback")
        if plan.signal is not None:
            handled = code != 0  # stopped, whatever the exit status
        elif plan.expect_ok:
            handled = code == 0
            if plan.warning and not any(all(m.lower() in w.lower() for m in plan.mention) for w in warns):
                handled = False
                problems.append(f"no warning naming {plan.mention}")
        else:
            handled = code != 0 and len(errors) == 1 and all(m.lower() in errors[0].lower() for m in plan.mention)
            if not handled:
                problems.append(f"exit {code}, error lines {errors or lines[-1:]}")
        handled = handled and "traceback" not in problems
        intact = all(_digest(p) == h for p, h in before.items())
        if not intact:
            problems.append("a protected file changed")
        left = _leftovers(plan)
        if plan.expect_ok and plan.signal is None:
            missing = [p.name for p in plan.outputs if not p.exists()]
            if missing:
                handled = False
                problems.append(f"missing outputs {missing}")
        elif plan.rerun is None or plan.signal is not None:
            left += [p.name for p in plan.outputs if p.exists() and p not in preexisting]
        if plan.rerun is not None:
            again = Plan(plan.rerun, subprocess=plan.subprocess)
            code2, text2 = _invoke(plan.rerun, again, workdir)
            if code2 != 0:
                handled = False
                problems.append(f"rerun failed: {(text2.splitlines() or [''])[-1]}")
            left = [x for x in left if x not in {p.name for p in plan.outputs}] + _leftovers(plan)
        clean = not left
        if left:
            problems.append(f"left behind {sorted(set(left))}")
        first = (errors or warns or [f"exit {code}"])[0]
        return Outcome(case.name, case.group, handled, intact, clean, "; ".join(problems) or first,
                       time.perf_counter() - start)
    finally:
        if plan.cleanup is not None:
            plan.cleanup()


@contextlib.contextmanager
def environment(root: Path) -> Iterator[Env]:
    """An `Env` under ``root`` (removed afterwards)."""
    env = Env.create(root)
    try:
        yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)
