"""``rsclip-map``: text search and zero-shot land cover over rasters, one or many at a time.

Thin click layer over `rsclip_core.inference` (the same functions the QGIS plugin calls): it
parses options, expands raster lists, shows progress, runs batches (optionally in worker
processes) and prints a summary. No tiling, preprocessing or writing logic lives here.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

EXPECTED_ERRORS: tuple[type, ...] = (ValueError, FileNotFoundError, FileExistsError, PermissionError)

MAIN_HELP = """Search rasters with text and map land cover zero-shot with an rsclip model.

\b
Examples:
  rsclip-map info models/rsclip-s0
  rsclip-map search scene.tif "tennis courts" --top-k 50 -o hits.gpkg --heatmap heat.tif
  rsclip-map classify scene.tif -m models/rsclip-s0 --classes resources/classes/landcover.yaml \\
      -o landcover.tif --polygons landcover.gpkg
  rsclip-map classify tiles/ --out-dir maps/ --workers 2       # a whole folder, resumable
  rsclip-map index "naip/*.tif" --out-dir idx/ --bands 1,2,3  # embed once, query many times

Without -m the model in $RSCLIP_MODEL or the bundled resources/models/default is used.
"""


# -- option parsing -------------------------------------------------------------------------
def _parse_bands(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise click.BadParameter(f"expected band numbers like 1,2,3, got {value!r}", param_hint="--bands") from exc
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise click.BadParameter(f"give 3 band numbers (R,G,B) or 1 (grey), 1-based, got {value!r}",
                                 param_hint="--bands")
    return bands


def _parse_extent(value: str | None) -> Any:
    if value is None:
        return None
    parts = value.replace(" ", "").split(",")
    if len(parts) == 4:
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            pass
    if Path(value).exists():
        return value
    raise click.BadParameter(f"{value!r} is neither minx,miny,maxx,maxy nor an existing vector file",
                             param_hint="--extent")


def tiling_options(func: Callable) -> Callable:
    """Options shared by every command that reads rasters."""
    options = [
        click.option("-m", "--model", "model_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Exported rsclip model directory (default: $RSCLIP_MODEL or the bundled model)."),
        click.option("--tile", "tile_size", type=int, help="Tile size in (target) pixels [model image size]."),
        click.option("--overlap", type=float, default=0.0, show_default=True,
                     help="Fraction of a tile shared with its neighbour, in [0, 1)."),
        click.option("--resolution", type=float, help="Target ground resolution in m/px (resampled on read)."),
        click.option("--bands", help="1-based bands to use as R,G,B, e.g. 1,2,3 for RGBN imagery."),
        click.option("--extent", help="minx,miny,maxx,maxy in the raster CRS, or a vector file of polygons."),
        click.option("--batch-size", type=int, default=16, show_default=True, help="Tiles per model call."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where embedding indexes are kept [next to the outputs]."),
        click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _tiling(opts: dict[str, Any]) -> Any:
    from rsclip_core.inference import TilingConfig

    return TilingConfig(
        tile_size=opts["tile_size"], overlap=opts["overlap"], resolution=opts["resolution"],
        bands=_parse_bands(opts["bands"]), extent=_parse_extent(opts["extent"]), batch_size=opts["batch_size"],
    ).validate()


# -- errors, warnings, progress ---------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Fail:
    """Turn expected errors into ``Error: <one line>`` and a non-zero exit."""

    def __enter__(self) -> _Fail:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and isinstance(exc, EXPECTED_ERRORS) and not isinstance(exc, click.ClickException):
            raise click.ClickException(_one_line(exc)) from exc
        return False


def _install_warning_format(quiet: bool) -> None:
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if not quiet:
            click.echo(f"Warning: {message}", err=True)

    warnings.showwarning = show  # type: ignore[assignment]
    warnings.filterwarnings("ignore", category=Warning, module="rasterio")  # NotGeoreferenced etc.
    warnings.filterwarnings("default", category=UserWarning, module="rsclip_core")


class _Bar:
    """A tqdm bar driven by the engine's ``progress(done, total)`` callback."""

    def __init__(self, desc: str, quiet: bool) -> None:
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:  # created on first progress, so early errors print no empty bar
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="tile", disable=self.quiet, leave=False,
                            dynamic_ncols=True)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- batch machinery ---------------------------------------------------------------------------
@dataclass
class JobResult:
    raster: str
    status: str  # done | skipped | failed
    detail: str
    seconds: float = 0.0


_WORKER_MODEL: dict[str, Any] = {}


def _worker_model(model_dir: str | None, threads: int | None) -> Any:
    from rsclip_core.inference import load_model

    key = f"{model_dir}|{threads}"
    if key not in _WORKER_MODEL:
        _WORKER_MODEL[key] = load_model(model_dir, threads=threads)
    return _WORKER_MODEL[key]


def classify_outputs(raster: Path, out_dir: Path) -> dict[str, Path]:
    """Batch-mode output names for one raster."""
    return {
        "out_tif": out_dir / f"{raster.stem}.landcover.tif",
        "confidence_tif": out_dir / f"{raster.stem}.confidence.tif",
        "polygons_gpkg": out_dir / f"{raster.stem}.landcover.gpkg",
    }


def _run_job(kind: str, raster: str, params: dict[str, Any], model: Any = None,
             progress: Callable[[int, int], None] | None = None) -> JobResult:
    """One raster of a batch; never raises (failures are reported in the result)."""
    from rsclip_core.inference import run_classify, run_index

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model is None:
                model = _worker_model(params["model_dir"], params.get("threads"))
            if kind == "classify":
                outputs = params["outputs"]
                present = [Path(p).exists() for p in outputs.values() if p]
                if not params["overwrite"] and all(present):
                    return JobResult(raster, "skipped", "outputs exist")
                # an incomplete set is what a stopped batch leaves: redo that raster's outputs
                run = run_classify(raster, params["classes"], model=model, tiling=params["tiling"],
                                   threshold=params["threshold"], cache_dir=params["cache_dir"],
                                   overwrite=params["overwrite"] or any(present), progress=progress, **outputs)
                top = max(run.stats, key=lambda s: s["cells"]) if run.stats else None
                detail = str(run.out_tif) + (f" (mostly {top['name']}, {top['fraction']:.0%})" if top else "")
            else:
                run = run_index(raster, model=model, tiling=params["tiling"], cache_dir=params["cache_dir"],
                                overwrite=params["overwrite"], progress=progress)
                if run.reused:
                    return JobResult(raster, "skipped", f"index exists: {run.index_path}",
                                     time.perf_counter() - start)
                detail = f"{run.index_path} ({len(run.index)} tiles)"
        return JobResult(raster, "done", detail, time.perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # keep going: the batch reports it
        reason = _one_line(exc)
        if not isinstance(exc, EXPECTED_ERRORS):
            reason = f"{type(exc).__name__}: {reason}"
        return JobResult(raster, "failed", reason, time.perf_counter() - start)


def _run_batch(kind: str, jobs: list[tuple[str, dict[str, Any]]], model: Any, workers: int, quiet: bool) -> list[JobResult]:
    from tqdm.auto import tqdm

    results: list[JobResult] = []
    if workers <= 1 or len(jobs) <= 1:
        for n, (raster, params) in enumerate(jobs, 1):
            bar = _Bar(f"[{n}/{len(jobs)}] {Path(raster).name}", quiet)
            try:
                results.append(_run_job(kind, raster, params, model=model, progress=bar))
            finally:
                bar.close()
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # onnxruntime and GDAL are not fork-safe
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_run_job, kind, raster, dict(params, threads=threads)): raster
                   for raster, params in jobs}
        order = {raster: i for i, (raster, _) in enumerate(jobs)}
        done: list[JobResult] = []
        with tqdm(total=len(futures), desc=f"{kind} ({workers} workers)", unit="raster", disable=quiet) as bar:
            for future in as_completed(futures):
                done.append(future.result())
                bar.update(1)
        results = sorted(done, key=lambda r: order[r.raster])
    return results


def _summary(results: Sequence[JobResult], quiet: bool) -> None:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    if not quiet or counts["failed"]:
        width = max([len(Path(r.raster).name) for r in results] + [6])
        click.echo(f"{'raster'.ljust(width)}  {'status':8} {'time':>7}  detail")
        for r in results:
            if quiet and r.status != "failed":
                continue
            click.echo(f"{Path(r.raster).name.ljust(width)}  {r.status:8} {r.seconds:6.1f}s  {r.detail}")
    click.echo(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed", err=quiet)


# -- commands -----------------------------------------------------------------------------------
@click.group(help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsclip")
def cli() -> None:
    pass


@cli.command()
@click.argument("rasters", nargs=-1, required=True)
@tiling_options
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Class file (YAML/JSON: name, prompts, color) [model's or rsclip's default list].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Class map (COG) for a single raster.")
@click.option("--polygons", type=click.Path(dir_okay=False, path_type=Path),
              help="Dissolved class polygons with area (GeoPackage 1.2), single raster.")
@click.option("--confidence", type=click.Path(dir_okay=False, path_type=Path),
              help="Confidence raster (COG, probability of the chosen class), single raster.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Batch: write <name>.landcover.tif, .confidence.tif and .landcover.gpkg here.")
@click.option("--threshold", type=float, help="Cells below this probability become 'unclassified' (255).")
@click.option("--workers", type=int, default=1, show_default=True, help="Rasters processed in parallel.")
def classify(rasters: tuple[str, ...], classes_file: Path | None, output: Path | None,
             polygons: Path | None, confidence: Path | None, out_dir: Path | None,
             threshold: float | None, workers: int, **opts: Any) -> None:
    """Zero-shot land-cover map of one or many RASTERS (paths, folders or quoted globs).

    \b
    One raster:   rsclip-map classify scene.tif --classes classes.yaml -o lc.tif --polygons lc.gpkg
    Many rasters: rsclip-map classify "tiles/*.tif" --out-dir maps/ --workers 2
    A stopped batch resumes: rasters whose outputs all exist are skipped (unless --overwrite).
    Output codes: 1..K classes in file order, 0 no data, 255 unclassified.
    """
    from rsclip_core.inference import default_classes_path, list_rasters, load_classes, load_model

    _install_warning_format(opts["quiet"])
    with _Fail():
        if workers < 1:
            raise click.BadParameter("must be >= 1", param_hint="--workers")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise click.BadParameter("must be a probability in [0, 1]", param_hint="--threshold")
        paths = list_rasters(rasters)
        if output is None and out_dir is None:
            raise click.UsageError("pass -o OUT.tif for one raster or --out-dir DIR for a batch")
        if output is not None and (len(paths) > 1 or out_dir is not None):
            raise click.UsageError("-o/--output takes one raster; use --out-dir for several")
        tiling = _tiling(opts)
        model = load_model(opts["model_dir"])
        classes = load_classes(classes_file if classes_file is not None else default_classes_path(model))
        if output is not None:
            _classify_single(paths[0], model, classes, tiling, output, polygons, confidence, threshold, opts)
            return
        if polygons is not None or confidence is not None:
            raise click.UsageError("--polygons/--confidence name single-raster outputs; --out-dir writes all three")
        assert out_dir is not None
        out_dir.mkdir(parents=True, exist_ok=True)
        own = {".landcover", ".confidence"}
        paths = [p for p in paths if Path(p.stem).suffix not in own]  # never map our own outputs
        params = {"model_dir": str(model.model_dir), "classes": classes, "tiling": tiling,
                  "threshold": threshold, "cache_dir": opts["cache_dir"], "overwrite": opts["overwrite"]}
        jobs = [(str(p), dict(params, outputs={k: str(v) for k, v in classify_outputs(p, out_dir).items()}))
                for p in paths]
    results = _run_batch("classify", jobs, model, workers, opts["quiet"])
    _summary(results, opts["quiet"])
    if any(r.status == "failed" for r in results):
        sys.exit(1)


def _classify_single(raster: Path, model: Any, classes: Any, tiling: Any, output: Path, polygons: Path | None,
                     confidence: Path | None, threshold: float | None, opts: dict[str, Any]) -> None:
    from rsclip_core.inference import run_classify

    bar = _Bar(raster.name, opts["quiet"])
    try:
        run = run_classify(raster, classes, model=model, tiling=tiling, out_tif=output, polygons_gpkg=polygons,
                           confidence_tif=confidence, threshold=threshold, cache_dir=opts["cache_dir"],
                           overwrite=opts["overwrite"], progress=bar)
    finally:
        bar.close()
    from rsclip_core.inference.advice import classify_advice

    for warning in classify_advice(run.index, model, [p for c in classes for p in c.prompts]):
        click.echo(f"Warning: {warning}", err=True)
    if not opts["quiet"]:
        click.echo(f"{'code':>4}  {'class':24} {'cells':>7} {'share':>6} {'conf':>5}")
        for s in run.stats:
            if s["cells"] == 0:
                continue
            click.echo(f"{s['code']:>4}  {s['name'][:24]:24} {s['cells']:>7} {s['fraction']:>6.1%} "
                       f"{s['mean_confidence']:>5.2f}")
        for p in (run.out_tif, run.confidence_tif, run.polygons_gpkg):
            if p is not None:
                click.echo(f"wrote {p}")


@cli.command()
@click.argument("raster", type=click.Path(path_type=Path))
@click.argument("query")
@tiling_options
@click.option("--top-k", type=int, default=50, show_default=True, help="Number of hits.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Hits as a GeoPackage (rank, score, query, tile polygon).")
@click.option("--heatmap", type=click.Path(dir_okay=False, path_type=Path),
              help="Score heat-map GeoTIFF (COG, one cell per tile stride).")
@click.option("--keep-overlapping", is_flag=True, help="Do not suppress hits overlapping a better one.")
@click.option("--templates", "use_templates", is_flag=True,
              help="Embed the query through the model's prompt templates ('an aerial image of {}.') and average.")
def search(raster: Path, query: str, top_k: int, output: Path | None, heatmap: Path | None,
           keep_overlapping: bool, use_templates: bool, **opts: Any) -> None:
    """Find the tiles of RASTER that best match the text QUERY.

    \b
    rsclip-map search scene.tif "tennis courts" --top-k 50 -o hits.gpkg --heatmap heat.tif
    The embedding index is cached (next to -o, in --cache-dir, or in the current folder), so
    the next query on the same raster only encodes the text.
    """
    from rsclip_core.inference import load_model, run_search

    _install_warning_format(opts["quiet"])
    with _Fail():
        if not query.strip():
            raise click.BadParameter("empty search text", param_hint="QUERY")
        if top_k < 1:
            raise click.BadParameter("must be >= 1", param_hint="--top-k")
        tiling = _tiling(opts)
        model = load_model(opts["model_dir"])
        cache_dir = opts["cache_dir"]
        if cache_dir is None and output is None and heatmap is None:
            cache_dir = Path.cwd()
        bar = _Bar(raster.name, opts["quiet"])
        try:
            run = run_search(raster, query, model=model, tiling=tiling, top_k=top_k, out_gpkg=output,
                             heatmap_tif=heatmap, cache_dir=cache_dir, overwrite=opts["overwrite"],
                             progress=bar, suppress_overlap=not keep_overlapping,
                             templates=model.metadata.prompt_templates if use_templates else None)
        finally:
            bar.close()
    from rsclip_core.inference.advice import search_advice

    for warning in search_advice(run.index, model, query, top_k):
        click.echo(f"Warning: {warning}", err=True)
    if not opts["quiet"]:
        hits = run.hits
        centres = hits.geometry.centroid if len(hits) else []
        click.echo(f"{'rank':>4} {'score':>7} {'pctl':>6}  centre")
        for (_, row), c in zip(hits.iterrows(), centres):
            click.echo(f"{row['rank']:>4} {row['score']:>7.4f} {row['percentile']:>6.1f}  {c.x:.3f}, {c.y:.3f}")
        for p in (run.out_gpkg, run.heatmap_tif):
            if p is not None:
                click.echo(f"wrote {p}")


@cli.command()
@click.argument("rasters", nargs=-1, required=True)
@tiling_options
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the indexes [--cache-dir or the current folder].")
@click.option("--workers", type=int, default=1, show_default=True, help="Rasters processed in parallel.")
def index(rasters: tuple[str, ...], out_dir: Path | None, workers: int, **opts: Any) -> None:
    """Embed the tiles of RASTERS once, so later searches/classifications only encode text.

    \b
    rsclip-map index "naip/*.tif" --bands 1,2,3 --out-dir idx/
    rsclip-map search naip/a.tif "solar panels" --cache-dir idx/ --bands 1,2,3
    Indexes are keyed by raster + model + tiling; existing ones are skipped (unless --overwrite).
    """
    from rsclip_core.inference import list_rasters, load_model

    _install_warning_format(opts["quiet"])
    with _Fail():
        if workers < 1:
            raise click.BadParameter("must be >= 1", param_hint="--workers")
        paths = list_rasters(rasters)
        tiling = _tiling(opts)
        model = load_model(opts["model_dir"])
        folder = out_dir or opts["cache_dir"] or Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        params = {"model_dir": str(model.model_dir), "tiling": tiling, "cache_dir": str(folder),
                  "overwrite": opts["overwrite"]}
        jobs = [(str(p), params) for p in paths]
    results = _run_batch("index", jobs, model, workers, opts["quiet"])
    _summary(results, opts["quiet"])
    if any(r.status == "failed" for r in results):
        sys.exit(1)


@cli.command()
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(model_dir: Path | None, as_json: bool) -> None:
    """Check an exported model directory and describe it (default: the bundled model).

    \b
    rsclip-map info models/rsclip-s0
    """
    import json

    from rsclip_core.inference import describe_model

    with _Fail():
        data = describe_model(model_dir)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    meta = data["metadata"]
    click.echo(f"model      {meta['model_name']}  ({data['model_dir']})")
    click.echo(f"embedding  {meta['embed_dim']} dims, logit scale {meta['logit_scale']:.2f}")
    click.echo(f"image      {meta['image_size']} px, {meta['interpolation']}, resize {meta['resize_mode']}, "
               f"mean {meta['mean']}, std {meta['std']}")
    click.echo(f"text       {meta['tokenizer_kind']} tokenizer, context {meta['context_length']}, "
               f"{len(meta['prompt_templates'])} prompt templates")
    if meta.get("resolution_m"):
        click.echo(f"trained at {meta['resolution_m']} m/px")
    for name in ("image_onnx", "text_onnx"):
        sig = data[name]
        ins = ", ".join(f"{k} {v[0]} {v[1]}" for k, v in sig["inputs"].items())
        outs = ", ".join(f"{k} {v[0]} {v[1]}" for k, v in sig["outputs"].items())
        click.echo(f"{name.replace('_', '.'):10} {ins} -> {outs}")
    click.echo("files      " + ", ".join(f"{k} ({v / 1e6:.1f} MB)" for k, v in data["files"].items()))
    click.echo(f"fingerprint {data['fingerprint']}")


if __name__ == "__main__":  # pragma: no cover
    cli()
