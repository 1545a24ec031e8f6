"""``rsclip-map``: commands, batch mode (resume, failures, workers) and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

from rsclip_core.cli.map import cli
from rsclip_core.inference.toy_model import write_color_raster


@pytest.fixture()
def classes_file(tmp_path) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text("classes:\n  - {name: bare, prompts: [red soil], color: '#c83232'}\n"
                    "  - {name: vegetation, prompts: [green forest], color: '#1ea01e'}\n"
                    "  - {name: water, prompts: [blue water], color: '#143cdc'}\n")
    return path


def invoke(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    with runner.isolated_filesystem(temp_dir=cwd):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_help_has_examples():
    result = invoke("--help")
    assert result.exit_code == 0 and "Examples:" in result.output
    for cmd in ("classify", "search", "index", "info"):
        sub = invoke(cmd, "--help")
        assert sub.exit_code == 0 and "rsclip-map " + cmd in sub.output
        if cmd != "info":
            for opt in ("--tile", "--overlap", "--resolution", "--bands", "--extent", "--overwrite", "--quiet"):
                assert opt in sub.output


def test_info(model_dir):
    result = invoke("info", model_dir)
    assert result.exit_code == 0 and "toy-colour" in result.output and "image.onnx" in result.output
    data = json.loads(invoke("info", model_dir, "--json").output)
    assert data["metadata"]["embed_dim"] == 8


def test_classify_single_with_polygons(model_dir, classes_file, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 128, 128)
    out, gpkg, conf = tmp_path / "lc.tif", tmp_path / "lc.gpkg", tmp_path / "conf.tif"
    result = invoke("classify", raster, "-m", model_dir, "--classes", classes_file, "-o", out,
                    "--polygons", gpkg, "--confidence", conf, "--tile", 32)
    assert result.exit_code == 0, result.output
    assert "vegetation" in result.output and out.exists() and gpkg.exists() and conf.exists()
    with rasterio.open(out) as ds:
        assert ds.read(1)[0, 0] == 1 and ds.tags(1)["CLASS_3"] == "water"
    again = invoke("classify", raster, "-m", model_dir, "--classes", classes_file, "-o", out)
    assert again.exit_code != 0 and "exists (use --overwrite" in error_line(again)
    ok = invoke("classify", raster, "-m", model_dir, "--classes", classes_file, "-o", out, "--overwrite", "-q")
    assert ok.exit_code == 0 and ok.output == ""


def test_search_prints_and_writes(model_dir, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 128, 128)
    out, heat = tmp_path / "hits.gpkg", tmp_path / "heat.tif"
    result = invoke("search", raster, "blue water", "-m", model_dir, "--top-k", 3, "-o", out,
                    "--heatmap", heat, "--tile", 32, "--overlap", 0.5)
    assert result.exit_code == 0, result.output
    assert out.exists() and heat.exists() and "rank" in result.output
    # no outputs: index cached in the working directory, table printed
    result = invoke("search", raster, "red", "-m", model_dir, "--tile", 32, cwd=tmp_path)
    assert result.exit_code == 0 and " 1 " in result.output


def test_bad_inputs_give_one_error_line(model_dir, classes_file, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 64, 64)
    junk = tmp_path / "junk.tif"
    junk.write_text("nope")
    rgbn = write_color_raster(tmp_path / "rgbn.tif", 64, 64, count=4)
    empty_classes = tmp_path / "empty.yaml"
    empty_classes.write_text("classes: []\n")
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / "rsclip.json").write_text("{not json")
    cases = [
        (("search", junk, "x", "-m", model_dir), "junk.tif: not a readable raster"),
        (("search", tmp_path / "missing.tif", "x", "-m", model_dir), "missing.tif: no such file"),
        (("search", rgbn, "x", "-m", model_dir), "--bands"),
        (("search", raster, "  ", "-m", model_dir), "QUERY"),
        (("search", raster, "x", "-m", tmp_path / "nomodel"), "nomodel: no such model directory"),
        (("search", raster, "x", "-m", broken_model), "invalid JSON"),
        (("search", raster, "x", "-m", model_dir, "--bands", "1,2"), "--bands"),
        (("search", raster, "x", "-m", model_dir, "--overlap", "1.5"), "--overlap"),
        (("search", raster, "x", "-m", model_dir, "--extent", "nothing"), "--extent"),
        (("classify", raster, "-m", model_dir, "--classes", empty_classes, "-o", tmp_path / "o.tif"),
         "empty class list"),
        (("classify", raster, "-m", model_dir, "--classes", tmp_path / "nope.yaml", "-o", tmp_path / "o.tif"),
         "nope.yaml"),
        (("classify", raster, raster.with_name("x.tif"), "-m", model_dir, "-o", tmp_path / "o.tif"), "x.tif"),
        (("info", tmp_path / "nomodel"), "nomodel"),
    ]
    for args, expected in cases:
        result = invoke(*args)
        assert result.exit_code != 0, (args, result.output)
        assert expected in error_line(result), (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "o.tif").exists()


def test_raster_without_crs_warns(model_dir, tmp_path):
    raster = write_color_raster(tmp_path / "nocrs.tif", 64, 64, crs=None)
    result = invoke("search", raster, "red", "-m", model_dir, "--tile", 32, "-o", tmp_path / "h.gpkg")
    assert result.exit_code == 0 and "Warning:" in result.output and "no CRS" in result.output


def test_batch_classify_resumes_and_reports_failures(model_dir, classes_file, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        write_color_raster(src / f"{name}.tif", 64, 64, seed=ord(name))
    (src / "c.tif").write_text("corrupt")
    out = tmp_path / "maps"
    result = invoke("classify", src, "-m", model_dir, "--classes", classes_file, "--out-dir", out, "--tile", 32)
    assert result.exit_code == 1
    assert "2 done, 0 skipped, 1 failed" in result.output and "not a readable raster" in result.output
    for name in ("a", "b"):
        for suffix in (".landcover.tif", ".confidence.tif", ".landcover.gpkg"):
            assert (out / f"{name}{suffix}").exists()
    (src / "c.tif").unlink()
    (out / "b.landcover.gpkg").unlink()  # as if the run stopped before b's last output
    result = invoke("classify", str(src / "*.tif"), "-m", model_dir, "--classes", classes_file, "--out-dir", out,
                    "--tile", 32)
    assert result.exit_code == 0, result.output
    assert "1 done, 1 skipped, 0 failed" in result.output
    assert (out / "b.landcover.gpkg").exists()


def test_batch_index_with_worker_processes(model_dir, tmp_path):
    rasters = [write_color_raster(tmp_path / f"r{i}.tif", 64, 64, seed=i) for i in range(3)]
    out = tmp_path / "idx"
    result = invoke("index", *rasters, "-m", model_dir, "--out-dir", out, "--tile", 32, "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "3 done, 0 skipped, 0 failed" in result.output
    assert len(list(out.glob("*.rsclip-index.npz"))) == 3
    again = invoke("index", *rasters, "-m", model_dir, "--out-dir", out, "--tile", 32)
    assert "0 done, 3 skipped, 0 failed" in again.output
    # the search finds and reuses the index from the index command
    hits = invoke("search", rasters[0], "red", "-m", model_dir, "--tile", 32, "--cache-dir", out, "-o",
                  tmp_path / "h.gpkg")
    assert hits.exit_code == 0 and len(list(out.glob("*.rsclip-index.npz"))) == 3


def test_single_vs_batch_usage_errors(model_dir, tmp_path):
    a = write_color_raster(tmp_path / "a.tif", 64, 64)
    b = write_color_raster(tmp_path / "b.tif", 64, 64)
    r = invoke("classify", a, b, "-m", model_dir, "-o", tmp_path / "x.tif")
    assert r.exit_code != 0 and "--out-dir" in r.output
    r = invoke("classify", a, "-m", model_dir)
    assert r.exit_code != 0 and "-o OUT.tif" in r.output


def test_bundled_sample_raster_maps_with_band_mapping(model_dir, tmp_path):
    from rsclip_core.resources import sample_raster

    sample = sample_raster()
    out = tmp_path / "lc.tif"
    no_bands = invoke("classify", sample, "-m", model_dir, "-o", out)
    assert no_bands.exit_code != 0 and "--bands" in error_line(no_bands)
    result = invoke("classify", sample, "-m", model_dir, "-o", out, "--bands", "1,2,3", "--tile", 64,
                    "--polygons", tmp_path / "lc.gpkg", "-q")
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds, rasterio.open(sample) as src:
        # default map: ~8 cells across a tile, exactly the raster's extent (cell size adjusted to fit)
        assert ds.crs == src.crs and ds.transform.a == pytest.approx(8 * src.transform.a, rel=0.01)
        assert ds.bounds == pytest.approx(src.bounds, abs=1e-6)
        codes = ds.read(1)
        assert (codes > 0).mean() > 0.9


@pytest.mark.parametrize("parts, bands", [
    (("rasters", "rasterio", "RGB.byte.tif"), None),
    (("rasters", "opengeos_data", "landsat_2020.tif"), "1,2,3"),
])
def test_real_rasters_through_the_cli(model_dir, tmp_path, parts, bands):
    from tests.conftest import shared_data_path

    raster = shared_data_path(*parts)
    args = ["classify", raster, "-m", model_dir, "-o", tmp_path / "lc.tif", "--polygons", tmp_path / "lc.gpkg",
            "--tile", 64, "--overlap", 0.25, "-q"]
    if bands:
        args += ["--bands", bands]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    import geopandas as gpd

    polys = gpd.read_file(tmp_path / "lc.gpkg")
    with rasterio.open(raster) as src:
        assert polys.crs == src.crs
    assert (polys["area_m2"] > 0).all()
