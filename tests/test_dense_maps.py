"""Maps finer than a tile (dense embeddings, overlapping windows) and hits localised inside tiles.

A toy model with a ``dense`` output (mean colour of 4 x 4 cells per tile) gives known answers:
a quadrant raster whose borders cut through tiles is mapped exactly by the dense detail, a small
blue square inside a red tile is boxed tightly by search.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsclip_core.inference import LandCoverClass, RsclipInputError, TilingConfig, build_index, classify, load_model
from rsclip_core.inference.maps import map_grid, probability_values, render
from rsclip_core.inference.runs import run_classify, run_search
from rsclip_core.inference.search import score_heatmap_fine, search
from rsclip_core.inference.toy_model import write_color_raster, write_toy_model

CLASSES = [LandCoverClass(c, [c]) for c in ("red", "green", "blue", "yellow")]


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory):
    return load_model(write_toy_model(tmp_path_factory.mktemp("toy") / "dense", dense_grid=4))


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    return load_model(write_toy_model(tmp_path_factory.mktemp("toy") / "plain"))


def _quadrant_truth(width: int, height: int) -> np.ndarray:
    """Codes 1..4 of `write_color_raster`'s quadrants (red, green, blue, yellow) per pixel."""
    truth = np.empty((height, width), dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    truth[:h2, :w2], truth[:h2, w2:], truth[h2:, :w2], truth[h2:, w2:] = 1, 2, 3, 4
    return truth


def _accuracy(result, truth: np.ndarray) -> float:
    """Pixel accuracy of a map at its cell centres."""
    rows, cols = result.codes.shape
    t = result.transform
    xs = (np.arange(cols) + 0.5) * t.a  # raster origin at (500000, 6000000), 1 m pixels
    ys = (np.arange(rows) + 0.5) * -t.e
    sampled = truth[np.ix_(ys.astype(int), xs.astype(int))]
    return float((result.codes == sampled).mean())


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    profile = {"driver": "GTiff", "width": rgb.shape[2], "height": rgb.shape[1], "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000.0, 6000000.0, 1.0, 1.0)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb)
    return path


def test_index_keeps_dense_embeddings_whose_mean_is_the_tile(dense_model, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 96, 96)
    index = build_index(raster, dense_model, TilingConfig(tile_size=64), cache_dir=tmp_path)
    assert index.dense is not None and index.dense.shape == (len(index), 4, 4, dense_model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(index.dense.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    again = build_index(raster, dense_model, TilingConfig(tile_size=64), cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(again.dense, index.dense)
    pixels = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    emb, cells = dense_model.encode_images_dense(pixels)
    raw = np.stack([pixels[:, :, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8].mean(axis=(2, 3))
                    for i in range(4) for j in range(4)], axis=1)  # [2, 16, 3] cell colours
    direction = raw / np.linalg.norm(np.concatenate([raw, np.full((2, 16, 1), 0.05)], -1), axis=-1, keepdims=True)
    np.testing.assert_allclose(cells.reshape(2, 16, -1)[..., :3], direction, atol=1e-5)
    mean = pixels.mean(axis=(2, 3))
    feat = np.concatenate([mean, np.full((2, 1), 0.05), np.zeros((2, 4))], axis=1)
    np.testing.assert_allclose(emb, feat / np.linalg.norm(feat, axis=1, keepdims=True), atol=1e-5)


def test_dense_and_window_maps_follow_borders_that_cut_through_tiles(dense_model, tmp_path):
    """Quadrant borders at 80 px, tiles of 64 px: a tile map cannot follow them, dense maps can."""
    raster = write_color_raster(tmp_path / "q.tif", 160, 160)
    truth = _quadrant_truth(160, 160)
    accuracy = {}
    for detail, overlap in (("tile", 0.0), ("dense", 0.0), ("windows", 0.5), ("dense+windows", 0.5)):
        index = build_index(raster, dense_model, TilingConfig(tile_size=64, overlap=overlap))
        result = classify(index, dense_model, CLASSES, detail=detail, cells_per_tile=16)
        assert result.transform.a == 4.0
        accuracy[detail] = _accuracy(result, truth)
    assert accuracy["dense"] > 0.99 and accuracy["dense+windows"] > 0.97
    assert accuracy["tile"] < 0.85
    assert accuracy["windows"] > accuracy["tile"] + 0.05


def test_map_extent_is_exactly_the_raster_or_the_requested_extent(dense_model, tmp_path):
    raster = write_color_raster(tmp_path / "odd.tif", 100, 90)
    index = build_index(raster, dense_model, TilingConfig(tile_size=32))
    grid = map_grid(index, cells_per_tile=3)
    assert grid.n_cols * grid.cell_w == pytest.approx(100) and grid.n_rows * grid.cell_h == pytest.approx(90)
    assert grid.cell_w <= 32 / 3 and grid.cell_h <= 32 / 3
    out = tmp_path / "lc.tif"
    run_classify(raster, CLASSES, model=dense_model, tiling=TilingConfig(tile_size=32), out_tif=out,
                 confidence_tif=tmp_path / "conf.tif", polygons_gpkg=tmp_path / "lc.gpkg", map_resolution=5.0)
    with rasterio.open(raster) as src, rasterio.open(out) as ds, rasterio.open(tmp_path / "conf.tif") as conf:
        assert ds.bounds == pytest.approx(src.bounds) and conf.bounds == pytest.approx(src.bounds)
        assert ds.res == pytest.approx((5.0, 5.0)) and ds.tags()["detail"] == "dense"
        assert (ds.read(1) > 0).all() and np.isfinite(conf.read(1)).all()
    import geopandas as gpd

    polygons = gpd.read_file(tmp_path / "lc.gpkg")
    assert polygons.total_bounds == pytest.approx(src.bounds)
    bbox = (500010.0, 5999925.0, 500075.0, 5999990.0)
    index = build_index(raster, dense_model, TilingConfig(tile_size=32, extent=bbox))
    result = classify(index, dense_model, CLASSES, detail="dense", map_resolution=4.0)
    assert result.region_bounds == pytest.approx(bbox)
    t, (rows, cols) = result.transform, result.codes.shape
    assert (t.c, t.f, t.c + cols * t.a, t.f + rows * t.e) == pytest.approx((bbox[0], bbox[3], bbox[2], bbox[1]))


def test_streamed_bands_give_the_same_map(dense_model, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 96, 96)
    index = build_index(raster, dense_model, TilingConfig(tile_size=32, overlap=0.5))
    grid = map_grid(index, cells_per_tile=8)
    text = np.eye(4, dense_model.embed_dim, dtype=np.float32)
    values = probability_values(index, text, 100.0, "dense")
    whole = list(render(index, grid, values, 4, tent=True))
    bands = list(render(index, grid, values, 4, tent=True, band_bytes=4 * 5 * grid.n_cols * 3))
    assert len(whole) == 1 and len(bands) > 3  # three rows per band: never the whole cube at once
    np.testing.assert_allclose(np.concatenate([m for _, m, _ in bands], axis=1), whole[0][1], atol=1e-6)
    assert all(c.all() for _, _, c in bands)


def test_bad_map_options_name_their_field(dense_model, plain_model, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 64, 64)
    index = build_index(raster, dense_model, TilingConfig(tile_size=32))
    for kwargs, field in (({"detail": "fine"}, "detail"), ({"detail": "dense", "map_resolution": 0}, "map_resolution"),
                          ({"detail": "dense", "cells_per_tile": 0}, "cells_per_tile")):
        with pytest.raises(RsclipInputError) as bad:
            classify(index, dense_model, CLASSES, **kwargs)
        assert bad.value.field == field
    with pytest.raises(RsclipInputError) as no_dense:
        run_classify(raster, CLASSES, model=plain_model, out_tif=tmp_path / "x.tif", detail="dense")
    assert no_dense.value.field == "detail" and "no dense" in str(no_dense.value)
    run = run_classify(raster, CLASSES, model=plain_model, tiling=TilingConfig(tile_size=32),
                       out_tif=tmp_path / "w.tif")  # without dense, automatic: windows on the tiling as given
    assert run.index.grid.stride_x == 32 and run.index.dense is None and run.result.codes.shape == (16, 16)
    run = run_classify(raster, CLASSES, model=plain_model, tiling=TilingConfig(tile_size=32),
                       out_tif=tmp_path / "w2.tif", detail="windows")  # asked for: overlap 0.5
    assert run.index.grid.stride_x == 16


def _square_raster(path: Path, size: int = 128, square: tuple[int, int, int] = (80, 20, 12)) -> Path:
    """Red everywhere but a blue ``w`` px square at (x, y)."""
    x, y, w = square
    rgb = np.zeros((3, size, size), dtype=np.uint8)
    rgb[0] = 200
    rgb[:, y:y + w, x:x + w] = 0
    rgb[2, y:y + w, x:x + w] = 200
    return _write_rgb(path, rgb)


def test_search_boxes_the_object_inside_its_tile(dense_model, plain_model, tmp_path):
    raster = _square_raster(tmp_path / "sq.tif")
    index = build_index(raster, dense_model, TilingConfig(tile_size=64))
    hits = search(index, dense_model, "blue", top_k=1)
    hit = hits.iloc[0]
    minx, miny, maxx, maxy = hit.geometry.bounds
    # the square spans x 500080..500092, y 5999968..5999980 (north-up, 1 m pixels)
    assert minx <= 500080 + 4 and maxx >= 500092 - 4 and miny <= 5999968 + 4 and maxy >= 5999980 - 4
    assert hit.geometry.area < 0.25 * 64 * 64
    assert 500080 - 4 <= hit["point_x"] <= 500092 + 4 and 5999968 - 4 <= hit["point_y"] <= 5999980 + 4
    assert (hit["tile_minx"], hit["tile_maxy"], hit["tile_maxx"]) == (500064.0, 6000000.0, 500128.0)
    assert bool(hit["localised"]) and hit["peak_score"] > hit["score"]
    plain = search(build_index(raster, plain_model, TilingConfig(tile_size=64)), plain_model, "blue", top_k=1)
    assert plain.iloc[0].geometry.area == pytest.approx(64 * 64) and not bool(plain.iloc[0]["localised"])


def test_overlap_suppression_works_on_the_tight_boxes(dense_model, tmp_path):
    """With overlapping tiles every tile around the square finds it: one hit, not four."""
    raster = _square_raster(tmp_path / "sq.tif", square=(56, 56, 16))  # shared by 4 tiles at overlap 0.5
    index = build_index(raster, dense_model, TilingConfig(tile_size=64, overlap=0.5))
    hits = search(index, dense_model, "blue", top_k=3)
    square = hits.iloc[0].geometry
    assert square.area <= 0.25 * 64 * 64
    for other in hits.geometry.iloc[1:]:
        assert square.intersection(other).area == 0
    kept = search(index, dense_model, "blue", top_k=3, suppress_overlap=False)
    assert sum(g.intersection(square).area > 0 for g in kept.geometry) >= 2


def test_heatmap_at_sub_tile_resolution_peaks_on_the_object(dense_model, tmp_path):
    raster = _square_raster(tmp_path / "sq.tif")
    index = build_index(raster, dense_model, TilingConfig(tile_size=64))
    text = dense_model.encode_text(["blue"])[0]
    heat, transform = score_heatmap_fine(index, text, cells_per_tile=16)
    assert heat.shape == (32, 32) and transform.a == 4.0
    row, col = np.unravel_index(np.nanargmax(heat), heat.shape)
    assert 80 <= (col + 0.5) * 4 <= 92 and 20 <= (row + 0.5) * 4 <= 32
    run = run_search(raster, "blue", model=dense_model, tiling=TilingConfig(tile_size=64), top_k=2,
                     out_gpkg=tmp_path / "hits.gpkg", heatmap_tif=tmp_path / "heat.tif")
    import pyogrio

    assert [name for name, _ in pyogrio.list_layers(tmp_path / "hits.gpkg")] == ["hits", "hit_points"]
    points = pyogrio.read_dataframe(tmp_path / "hits.gpkg", layer="hit_points")
    assert points.geometry.iloc[0].within(run.hits.geometry.iloc[0].buffer(1e-6))
    with rasterio.open(tmp_path / "heat.tif") as ds:
        assert ds.res == (8.0, 8.0) and ds.bounds == pytest.approx((500000.0, 5999872.0, 500128.0, 6000000.0))


def test_cli_map_options(dense_model, tmp_path):
    from click.testing import CliRunner

    from rsclip_core.cli.map import cli

    raster = write_color_raster(tmp_path / "q.tif", 128, 96)
    model_dir = str(dense_model.model_dir)

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    out = tmp_path / "lc.tif"
    ok = invoke("classify", raster, "-m", model_dir, "--tile", 32, "--detail", "dense+windows",
                "--cells-per-tile", 4, "-o", out, "-q")
    assert ok.exit_code == 0, ok.output
    with rasterio.open(out) as ds:
        assert ds.res == (8.0, 8.0) and ds.tags()["detail"] == "dense+windows" and ds.shape == (12, 16)
    bad = invoke("classify", raster, "-m", model_dir, "--cells-per-tile", 0, "-o", tmp_path / "x.tif")
    assert bad.exit_code != 0 and "--cells-per-tile" in bad.output
    bad = invoke("search", raster, "blue", "-m", model_dir, "--map-resolution", -1, "-o", tmp_path / "h.gpkg")
    assert bad.exit_code != 0 and "--map-resolution" in bad.output
    hits = invoke("search", raster, "blue", "-m", model_dir, "--tile", 32, "--top-k", 2,
                  "-o", tmp_path / "h.gpkg", "--heatmap", tmp_path / "heat.tif", "--map-resolution", 2)
    assert hits.exit_code == 0, hits.output
    with rasterio.open(tmp_path / "heat.tif") as ds:
        assert ds.res == (2.0, 2.0) and ds.shape == (48, 64)
