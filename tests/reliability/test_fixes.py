"""Issue #13 fixes that the hostile-case suite does not judge by exit status alone."""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from rsclip_core.cli.map import _Bar, _install_warning_format, cli
from rsclip_core.inference import (
    RsclipInputError,
    RsclipWarning,
    TilingConfig,
    build_index,
    load_model,
    run_classify,
    run_search,
)
from rsclip_core.inference.landcover import LandCoverClass
from rsclip_core.inference.raster import raster_fingerprint
from rsclip_core.inference.toy_model import write_color_raster

TILING = TilingConfig(tile_size=32)
RGB = [LandCoverClass("red", ["red soil"], (200, 0, 0)), LandCoverClass("green", ["green forest"], (0, 200, 0)),
       LandCoverClass("blue", ["blue water"], (0, 0, 200))]


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


def test_index_key_follows_pixels_not_mtime(model, tmp_path):
    raster = write_color_raster(tmp_path / "r.tif", 96, 96, seed=1)
    stat = raster.stat()
    first = build_index(raster, model, TILING, cache_dir=tmp_path)
    with rasterio.open(raster, "r+") as ds:  # same size, same mtime, other pixels
        ds.write(np.full((3, 96, 96), 7, dtype=np.uint8) + np.arange(96, dtype=np.uint8)[None, None, :])
    os.utime(raster, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert raster.stat().st_size == stat.st_size and raster.stat().st_mtime_ns == stat.st_mtime_ns
    second = build_index(raster, model, TILING, cache_dir=tmp_path)
    assert second.key != first.key
    assert not np.array_equal(second.embeddings, first.embeddings)


def test_fingerprint_samples_large_files(tmp_path, monkeypatch):
    from rsclip_core.inference import raster as raster_mod

    path = tmp_path / "big.bin"
    path.write_bytes(bytes(3 << 20))
    monkeypatch.setattr(raster_mod, "FINGERPRINT_FULL_BYTES", 1 << 20)  # force the sampled path
    before = raster_fingerprint(path)
    with open(path, "r+b") as fh:  # a change inside a sampled block
        fh.seek(2 << 20)
        fh.write(b"\x01")
    assert raster_fingerprint(path) != before


def test_outputs_cover_exactly_the_raster(model, tmp_path):
    # 112 x 112 m at tile 32: 4 x 4 cells of 32 m -> the map is snapped outward by 16 m (< 1 cell),
    # hit tiles and class polygons end at the raster edge, class areas add up to the raster's
    raster = write_color_raster(tmp_path / "r.tif", 112, 112)
    with rasterio.open(raster) as ds:
        left, bottom, right, top = ds.bounds
    run = run_classify(raster, RGB, model=model, tiling=TILING, out_tif=tmp_path / "lc.tif",
                       polygons_gpkg=tmp_path / "lc.gpkg")
    with rasterio.open(tmp_path / "lc.tif") as lc:
        assert lc.bounds.left == left and lc.bounds.top == top
        assert 0 <= lc.bounds.right - right < lc.res[0] and 0 <= bottom - lc.bounds.bottom < lc.res[1]
    assert sum(s["area"] for s in run.stats) == pytest.approx(112 * 112)
    import geopandas as gpd

    polys = gpd.read_file(tmp_path / "lc.gpkg")
    minx, miny, maxx, maxy = polys.total_bounds
    assert (minx, miny, maxx, maxy) == pytest.approx((left, bottom, right, top))
    assert polys.geometry.area.sum() == pytest.approx(112 * 112)
    hits = run_search(raster, "blue water", model=model, tiling=TilingConfig(tile_size=32, overlap=0.5),
                      top_k=50, suppress_overlap=False).hits
    b = hits.total_bounds
    assert b[0] >= left and b[1] >= bottom and b[2] <= right and b[3] <= top
    assert b[2] == pytest.approx(right) and b[1] == pytest.approx(bottom)


def test_ungeoreferenced_png_is_upright(model, tmp_path):
    from PIL import Image

    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[:32, :, 0] = 220  # red on top
    rgb[32:, :, 2] = 220  # blue below
    rgb += np.random.default_rng(0).integers(0, 20, rgb.shape, dtype=np.uint8)
    png = tmp_path / "photo.png"
    Image.fromarray(rgb).save(png)
    with pytest.warns(RsclipWarning, match="not georeferenced"):
        run = run_classify(png, RGB, model=model, tiling=TILING, out_tif=tmp_path / "lc.tif")
    with rasterio.open(tmp_path / "lc.tif") as lc:
        assert lc.transform.e < 0  # north-up: the first row is the top of the image
        codes = lc.read(1)
        top = next(lc.sample([(16.0, -1.0)]))[0]  # x = column, y = -row: the image's top rows
    assert codes[0, 0] == 1 and codes[-1, 0] == 3 and top == 1
    assert run.result.transform.e < 0


def test_tile_count_shown_and_huge_plans_warn(model, tmp_path):
    raster = write_color_raster(tmp_path / "r.tif", 64, 64)
    with pytest.warns(RsclipWarning, match=r"2,401 tiles planned \(150x the 16 tiles"):
        build_index(raster, model, TilingConfig(tile_size=16, overlap=0.97))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RsclipWarning)
        build_index(raster, model, TilingConfig(tile_size=16, overlap=0.5))  # 49 tiles: no warning
    model_dir = str(model.model_dir)
    res = CliRunner().invoke(cli, ["index", str(raster), "-m", model_dir, "--tile", "16",
                                   "--out-dir", str(tmp_path / "idx")])
    assert res.exit_code == 0 and "r.tif" in res.output and ": 16 tiles" in res.output, res.output


def test_quiet_still_prints_warnings(model, tmp_path):
    path = tmp_path / "empty.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(0, 64, 1, 1), nodata=0) as ds:
        ds.write(np.zeros((3, 64, 64), dtype=np.uint8))
    res = CliRunner().invoke(cli, ["classify", str(path), "-m", str(model.model_dir), "--tile", "32",
                                   "-o", str(tmp_path / "lc.tif"), "-q"])
    assert res.exit_code == 0
    assert "Warning:" in res.output and "no tile has enough valid pixels" in res.output


def test_warning_starts_its_own_line_under_a_progress_bar(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    old = warnings.showwarning
    try:
        _install_warning_format(quiet=False)
        bar = _Bar("scene.tif", quiet=False)
        bar(3, 10)
        warnings.warn("careful", RsclipWarning, stacklevel=1)
        bar.close()
    finally:
        warnings.showwarning = old
    text = stream.getvalue()
    before = text.split("Warning: careful")[0]
    assert before and before[-1] in "\r\n", repr(text)


def test_one_class_refused_and_threshold_explained(model, tmp_path):
    raster = write_color_raster(tmp_path / "r.tif", 64, 64)
    with pytest.raises(RsclipInputError, match="only one class"):
        run_classify(raster, RGB[:1], model=model, tiling=TILING, out_tif=tmp_path / "lc.tif")
    assert not (tmp_path / "lc.tif").exists()
    with pytest.warns(RsclipWarning, match="no effect with 3 classes"):
        run_classify(raster, RGB, model=model, tiling=TILING, out_tif=tmp_path / "lc.tif", threshold=0.3)
    res = CliRunner().invoke(cli, ["classify", "--help"])
    assert "1/K" in res.output


def test_output_is_input_refused_in_the_library(model, tmp_path):
    raster = write_color_raster(tmp_path / "r.tif", 64, 64)
    before = raster.read_bytes()
    for kwargs in ({"out_tif": raster}, {"out_tif": tmp_path / "lc.tif", "confidence_tif": raster},
                   {"out_tif": tmp_path / "lc.tif", "polygons_gpkg": tmp_path / "." / "r.tif"}):
        with pytest.raises(RsclipInputError, match="is the input"):
            run_classify(raster, RGB, model=model, tiling=TILING, overwrite=True, **kwargs)
    with pytest.raises(RsclipInputError, match="is the input"):
        run_search(raster, "red", model=model, tiling=TILING, heatmap_tif=Path(str(raster)), overwrite=True)
    assert raster.read_bytes() == before and not (tmp_path / "lc.tif").exists()
