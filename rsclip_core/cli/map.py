"""``rsclip-map``: text search and zero-shot land cover over rasters, one or many at a time.

Thin click layer over `rsclip_core.inference` (the same functions the QGIS plugin calls): it
parses options, expands raster lists, shows progress, runs batches (optionally in worker
processes) and prints a summary. No tiling, preprocessing or writing logic lives here.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import click

CLI_FLAGS: dict[str, str] = {
    "raster": "RASTER",
    "model": "-m/--model",
    "classes": "--classes",
    "output": "-o/--output",
    "polygons": "--polygons",
    "confidence": "--confidence",
    "heatmap": "--heatmap",
    "out_dir": "--out-dir",
    "cache_dir": "--cache-dir",
    "overwrite": "--overwrite",
    "bands": "--bands",
    "tile_size": "--tile",
    "overlap": "--overlap",
    "resolution": "--resolution",
    "extent": "--extent",
    "batch_size": "--batch-size",
    "query": "QUERY",
    "top_k": "--top-k",
    "threshold": "--threshold",
    "workers": "--workers",
    "detail": "--detail",
    "cells_per_tile": "--cells-per-tile",
    "map_resolution": "--map-resolution",
}
"""How ``rsclip-map`` names each field of an inference error (`rsclip_core.inference.errors.FIELDS`)."""
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C

MAIN_HELP = """Search rasters with text and map land cover zero-shot with an rsclip model.

\b
Examples:
  rsclip-map info models/rsclip-s0
  rsclip-map search scene.tif "tennis courts" --top-k 50 -o hits.gpkg --heatmap heat.tif
  rsclip-map classify scene.tif -m models/rsclip-s0 --classes my_classes.yaml \\
      -o landcover.tif --polygons landcover.gpkg
  rsclip-map classify tiles/ --out-dir maps/ --workers 2       # a whole folder, resumable
  rsclip-map index "naip/*.tif" --out-dir idx/ --bands 1,2,3  # embed once, query many times

Without -m the model in $RSCLIP_MODEL or the bundled model (inside the package) is used.
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
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables (warnings and errors still print)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def map_options(func: Callable) -> Callable:
    """Options choosing how fine a map (land cover, heat-map) is."""
    from rsclip_core.inference.maps import DETAILS

    options = [
        click.option("--detail", type=click.Choice(DETAILS),
                     help="tile: one class per tile; dense: per-location embeddings inside each tile; windows: "
                          "overlapping tiles (overlap 0.5 unless --overlap) soft-voted with tent weights; "
                          "dense+windows: both [dense if the model has dense embeddings, else the tiles of "
                          "--overlap blended (tiling unchanged); search heat-map: dense, else tile]."),
        click.option("--cells-per-tile", type=int,
                     help="Output cells across one tile [8 unless --detail tile; tile alone: one per tile stride]."),
        click.option("--map-resolution", type=float,
                     help="Output cell size in map units of the raster CRS (metres; overrides --cells-per-tile)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _map_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    if opts["cells_per_tile"] is not None and opts["cells_per_tile"] < 1:
        raise click.BadParameter("must be >= 1", param_hint="--cells-per-tile")
    if opts["map_resolution"] is not None and not opts["map_resolution"] > 0:
        raise click.BadParameter("must be > 0", param_hint="--map-resolution")
    return {"detail": opts["detail"], "cells_per_tile": opts["cells_per_tile"],
            "map_resolution": opts["map_resolution"]}


def _tiling(opts: dict[str, Any]) -> Any:
    from rsclip_core.inference import TilingConfig

    return TilingConfig(
        tile_size=opts["tile_size"], overlap=opts["overlap"], resolution=opts["resolution"],
        bands=_parse_bands(opts["bands"]), extent=_parse_extent(opts["extent"]), batch_size=opts["batch_size"],
    ).validate()


# -- errors, warnings, progress ---------------------------------------------------------------
def cli_message(exc: BaseException) -> str:
    """An error or warning as ``rsclip-map`` shows it: one line, fields named by their flags."""
    from rsclip_core.inference.errors import describe_error

    return describe_error(exc, CLI_FLAGS)


class _Fail:
    """Turn expected errors into ``Error: <one line>`` and a non-zero exit."""

    def __enter__(self) -> _Fail:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        from rsclip_core.inference.errors import USER_ERRORS

        if exc is not None and isinstance(exc, USER_ERRORS) and not isinstance(exc, click.ClickException):
            raise click.ClickException(cli_message(exc)) from exc


def _install_warning_format(quiet: bool) -> None:
    """Warnings print as ``Warning: <line>`` on stderr, also with -q, above any progress bar."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        from tqdm.auto import tqdm

        text = cli_message(message) if isinstance(message, Warning) else message
        tqdm.write(f"Warning: {text}", file=sys.stderr)  # clears the bar, prints, redraws it

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=Warning, module="rasterio")  # NotGeoreferenced etc.
    warnings.filterwarnings("default", category=UserWarning, module="rsclip_core")


class _Bar:
    """A tqdm bar driven by the engine's ``progress(done, total)`` callback."""

    def __init__(self, desc: str, quiet: bool) -> None:
        self.desc, self.quiet = desc, quiet
        self.bar: Any = None  # a tqdm bar (tqdm ships no type information)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:  # created on first progress, so early errors print no empty bar
            from tqdm.auto import tqdm

            if not self.quiet:
                click.echo(f"{self.desc}: {total:,} tiles", err=True)
            self.bar = tqdm(total=total, desc=self.desc, unit="tile", disable=self.quiet, leave=False,
                            dynamic_ncols=True)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- batches (the runner is rsclip_core.inference.batch) ------------------------------------------
def _run_batch(kind: str, jobs: Sequence[Any], model: Any, workers: int, quiet: bool) -> list[Any]:
    """Run a batch with progress bars; Ctrl-C ends with one line and exit status 130."""
    from tqdm.auto import tqdm

    from rsclip_core.inference import BatchInterrupted, run_batch

    def tile_bar(n: int, total: int, raster: str) -> _Bar:
        return _Bar(f"[{n}/{total}] {Path(raster).name}", quiet)

    many = workers > 1 and len(jobs) > 1
    bar = tqdm(total=len(jobs), desc=f"{kind} ({workers} workers)", unit="raster", disable=quiet or not many)
    try:
        return run_batch(kind, jobs, model=model, workers=workers, labels=CLI_FLAGS,
                         tile_progress=None if many else tile_bar, on_result=lambda r: bar.update(1))
    except BatchInterrupted as stop:
        bar.close()
        click.echo(f"Interrupted: {stop.finished} of {stop.total} rasters finished; "
                   "rerun the same command to resume.", err=True)
        sys.exit(INTERRUPTED_EXIT)
    finally:
        bar.close()


def _summary(results: Sequence[Any], quiet: bool) -> None:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "cancelled")}
    if not quiet or counts["failed"]:
        names = [Path(r.raster).name for r in results]
        if len(set(names)) < len(names):  # same file name in several folders: show the paths
            names = [r.raster for r in results]
        width = max([len(n) for n in names] + [6])
        click.echo(f"{'raster'.ljust(width)}  {'status':8} {'time':>7}  detail")
        for name, r in zip(names, results):
            if quiet and r.status != "failed":
                continue
            click.echo(f"{name.ljust(width)}  {r.status:8} {r.seconds:6.1f}s  {r.detail}")
    cancelled = f", {counts['cancelled']} cancelled" if counts["cancelled"] else ""
    click.echo(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed{cancelled}", err=quiet)


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
@click.option("--threshold", type=float,
              help="Cells whose best-class probability is below this become 'unclassified' (255). The "
                   "probability is a softmax among the K classes, so it is always >= 1/K (chance level).")
@click.option("--workers", type=int, default=1, show_default=True, help="Rasters processed in parallel.")
@map_options
def classify(rasters: tuple[str, ...], classes_file: Path | None, output: Path | None,
             polygons: Path | None, confidence: Path | None, out_dir: Path | None,
             threshold: float | None, workers: int, **opts: Any) -> None:
    """Zero-shot land-cover map of one or many RASTERS (paths, folders or quoted globs).

    \b
    One raster:   rsclip-map classify scene.tif --classes classes.yaml -o lc.tif --polygons lc.gpkg
    Many rasters: rsclip-map classify "tiles/*.tif" --out-dir maps/ --workers 2
    Rasters in different folders keep their sub-folders under --out-dir (a/x.tif -> maps/a/x.*).
    A stopped batch (Ctrl-C: exit 130) resumes: rasters whose outputs all exist are skipped
    (unless --overwrite).
    Output codes: 1..K classes in file order, 0 no data, 255 unclassified.
    Confidence = probability of the chosen class among the K classes (>= 1/K; needs K >= 2).
    Outputs never replace an input, and one run's outputs need distinct paths.
    """
    from rsclip_core.inference import default_classes_path, list_rasters, load_classes, load_model, plan_classify_batch

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
        map_kwargs = _map_kwargs(opts)
        model = load_model(opts["model_dir"])
        classes = load_classes(classes_file if classes_file is not None else default_classes_path(model))
        if output is not None:
            _classify_single(paths[0], model, classes, tiling, output, polygons, confidence, threshold, opts,
                             map_kwargs)
            return
        if polygons is not None or confidence is not None:
            raise click.UsageError("--polygons/--confidence name single-raster outputs; --out-dir writes all three")
        assert out_dir is not None
        params = {"model_dir": str(model.model_dir), "classes": classes, "tiling": tiling,
                  "threshold": threshold, "cache_dir": opts["cache_dir"], "overwrite": opts["overwrite"],
                  **map_kwargs}
        jobs = plan_classify_batch(paths, out_dir, params)  # keeps sub-folders, refuses clashes
        out_dir.mkdir(parents=True, exist_ok=True)
    results = _run_batch("classify", jobs, model, workers, opts["quiet"])
    _summary(results, opts["quiet"])
    if any(r.status == "failed" for r in results):
        sys.exit(1)


def _classify_single(raster: Path, model: Any, classes: Any, tiling: Any, output: Path, polygons: Path | None,
                     confidence: Path | None, threshold: float | None, opts: dict[str, Any],
                     map_kwargs: dict[str, Any]) -> None:
    from rsclip_core.inference import run_classify

    bar = _Bar(raster.name, opts["quiet"])
    try:
        run = run_classify(raster, classes, model=model, tiling=tiling, out_tif=output, polygons_gpkg=polygons,
                           confidence_tif=confidence, threshold=threshold, cache_dir=opts["cache_dir"],
                           overwrite=opts["overwrite"], progress=bar, **map_kwargs)
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
              help="Hits as a GeoPackage: layer 'hits' (tight box where the query matches inside the tile, "
                   "rank, score, the tile's bounds) and 'hit_points' (best-match points).")
@click.option("--heatmap", type=click.Path(dir_okay=False, path_type=Path),
              help="Score heat-map GeoTIFF (COG; sub-tile with dense embeddings, see --detail).")
@click.option("--keep-overlapping", is_flag=True, help="Do not suppress hits overlapping a better one.")
@click.option("--templates", "use_templates", is_flag=True,
              help="Embed the query through the model's prompt templates ('an aerial image of {}.') and average.")
@map_options
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
        map_kwargs = _map_kwargs(opts)
        model = load_model(opts["model_dir"])
        cache_dir = opts["cache_dir"]
        if cache_dir is None and output is None and heatmap is None:
            cache_dir = Path.cwd()
        bar = _Bar(raster.name, opts["quiet"])
        try:
            run = run_search(raster, query, model=model, tiling=tiling, top_k=top_k, out_gpkg=output,
                             heatmap_tif=heatmap, cache_dir=cache_dir, overwrite=opts["overwrite"],
                             progress=bar, suppress_overlap=not keep_overlapping,
                             templates=model.metadata.prompt_templates if use_templates else None, **map_kwargs)
        finally:
            bar.close()
    from rsclip_core.inference.advice import search_advice

    for warning in search_advice(run.index, model, query, top_k):
        click.echo(f"Warning: {warning}", err=True)
    if not opts["quiet"]:
        hits = run.hits
        click.echo(f"{'rank':>4} {'score':>7} {'pctl':>6}  best match")
        for _, row in hits.iterrows():
            click.echo(f"{row['rank']:>4} {row['score']:>7.4f} {row['percentile']:>6.1f}  "
                       f"{row['point_x']:.3f}, {row['point_y']:.3f}")
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
    from rsclip_core.inference import list_rasters, load_model, plan_index_batch

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
        jobs = plan_index_batch(paths, params)
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
