"""Tile grid arithmetic (property-tested) and tile reading from real and generated GeoTIFFs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from rsclip_core.inference import RasterSource, RsclipInputError, RsclipWarning, TilingConfig, plan_grid
from rsclip_core.inference.tiling import aggregate_to_cells, clip_window
from rsclip_core.inference.toy_model import write_color_raster
from tests.conftest import shared_data_path


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 600),
    height=st.integers(1, 600),
    tile=st.integers(1, 300),
    overlap=st.floats(0.0, 0.95),
    data=st.data(),
)
def test_grid_covers_extent_without_out_of_bounds_windows(width, height, tile, overlap, data):
    col0 = data.draw(st.integers(0, width - 1))
    row0 = data.draw(st.integers(0, height - 1))
    col1 = data.draw(st.integers(col0 + 1, width))
    row1 = data.draw(st.integers(row0 + 1, height))
    grid = plan_grid((col0, row0, col1, row1), tile, tile, overlap)
    windows = grid.windows()
    assert len(windows) == grid.n_tiles
    covered = np.zeros((height, width), dtype=bool)
    for w in windows:
        clipped = clip_window(w, width, height)
        assert clipped is not None, f"tile {w} lies entirely outside the raster"
        c, r, cw, ch = clipped
        assert 0 <= c and 0 <= r and c + cw <= width and r + ch <= height and cw > 0 and ch > 0
        # every tile starts inside the processing region (no wasted all-padding tiles)
        assert col0 <= w[0] < col1 and row0 <= w[1] < row1
        covered[r:r + ch, c:c + cw] = True
    assert covered[row0:row1, col0:col1].all(), "some pixel of the extent is not covered by any tile"
    # the cell grid covers the extent too, and every cell under the extent gets weight
    assert grid.n_cell_cols * grid.stride_x >= col1 - col0
    assert grid.n_cell_rows * grid.stride_y >= row1 - row0
    _, weights = aggregate_to_cells(grid, grid.tile_rc(), np.ones((grid.n_tiles, 1)))
    assert (weights > 0).all()


def test_grid_counts_for_simple_cases():
    g = plan_grid((0, 0, 1000, 500), 224, 224, 0.0)
    assert (g.n_cols, g.n_rows, g.stride_x) == (5, 3, 224)  # 4*224 = 896 < 1000 -> 5 tiles, last boundless
    g = plan_grid((0, 0, 448, 448), 224, 224, 0.5)
    assert (g.n_cols, g.stride_x) == (3, 112)
    g = plan_grid((10, 20, 30, 40), 224, 224, 0.0)
    assert g.n_tiles == 1 and tuple(g.windows()[0]) == (10, 20, 224, 224)


def test_aggregate_weights_average_overlapping_tiles():
    grid = plan_grid((0, 0, 40, 10), 20, 10, 0.5)  # stride 10 in x; tiles at 0, 10, 20 cover cells 0..3
    rc = grid.tile_rc()
    sums, weights = aggregate_to_cells(grid, rc, np.array([[1.0], [3.0], [5.0]]))
    mean = sums[0, :, 0] / weights[0]
    assert np.allclose(mean, [1.0, 2.0, 4.0, 5.0])


def test_tiling_config_rejects_bad_values():
    from rsclip_core.cli.map import cli_message

    for kwargs, flag in [({"overlap": 1.0}, "--overlap"), ({"tile_size": 3}, "--tile"),
                         ({"resolution": -1}, "--resolution"), ({"bands": (1, 2)}, "--bands"),
                         ({"batch_size": 0}, "--batch-size")]:
        (field,) = kwargs
        with pytest.raises(RsclipInputError, match=f"^{field.replace('_', ' ')}: ") as bad:
            TilingConfig(**kwargs).validate()
        assert bad.value.field == field and "--" not in str(bad.value)
        assert cli_message(bad.value).startswith(f"{flag}: ")


# -- reading real rasters ------------------------------------------------------------------------
def test_landsat_rgb_byte_three_bands():
    path = shared_data_path("rasters", "rasterio", "RGB.byte.tif")
    with RasterSource(path, TilingConfig(tile_size=128), image_size=64) as src:
        assert src.bands == (1, 2, 3)
        assert src.crs.to_epsg() == 32618
        assert np.allclose(src.stretch, [[0, 255]] * 3)
        n_read = 0
        for _, tile, fraction in src.iter_tiles():
            if tile is None:
                continue
            n_read += 1
            assert tile.shape == (3, 64, 64) and tile.dtype == np.float32
            assert 0.0 <= tile.min() and tile.max() <= 1.0 and fraction > 0
        # RGB.byte.tif has nodata=0 collars: some tiles are skipped, most are read
        assert 0 < n_read < src.grid.n_tiles


def test_naip_four_bands_needs_band_mapping():
    path = shared_data_path("rasters", "opengeos_data", "m_4709963_se_14_1_20200831.tif")
    with pytest.raises(RsclipInputError, match="^bands: .*without RGB colour") as no_rgb:
        RasterSource(path, TilingConfig(), image_size=64)
    assert no_rgb.value.field == "bands"
    with RasterSource(path, TilingConfig(bands=(1, 2, 3), tile_size=64), image_size=32) as src:
        assert src.bands == (1, 2, 3)
        tiles = [t for _, t, _ in src.iter_tiles() if t is not None]
        assert len(tiles) > 100
    with pytest.raises(RsclipInputError, match="only 4 band"):
        RasterSource(path, TilingConfig(bands=(4, 5, 1)), image_size=64)


def test_geographic_raster_resolution_in_metres():
    path = shared_data_path("rasters", "opengeos_data", "landsat_2020.tif")
    with rasterio.open(path) as ds:
        assert ds.crs.is_geographic
    with RasterSource(path, TilingConfig(bands=(1, 2, 3), tile_size=32, resolution=180.0), image_size=32) as src:
        # ~0.000808 deg/px ~ 90 m (x, at this latitude less) -> 180 m tiles span ~2x the pixels
        assert 50 <= src.tile_w <= 100 and 50 <= src.tile_h <= 100
        assert any(t is not None for _, t, _ in src.iter_tiles())


# -- generated edge cases --------------------------------------------------------------------------
def test_nodata_tiles_skipped(tmp_path):
    path = write_color_raster(tmp_path / "nd.tif", 128, 128, nodata=0)  # bottom 16 rows nodata
    with RasterSource(path, TilingConfig(tile_size=16, min_valid_fraction=0.5), image_size=16) as src:
        results = {tuple(rc): t for rc, (_, t, _) in zip(src.tile_rc, src.iter_tiles())}
    assert all(results[(7, c)] is None for c in range(8))
    assert all(results[(6, c)] is not None for c in range(8))


def test_alpha_band_masks_and_is_not_a_colour(tmp_path):
    path = write_color_raster(tmp_path / "alpha.tif", 128, 128, alpha=True)  # left 16 cols transparent
    with RasterSource(path, TilingConfig(tile_size=16), image_size=16) as src:
        assert src.bands == (1, 2, 3) and src.has_mask
        results = {tuple(rc): (t, f) for rc, (_, t, f) in zip(src.tile_rc, src.iter_tiles())}
    assert all(results[(r, 0)][0] is None for r in range(8))
    assert all(results[(r, 1)][1] == 1.0 for r in range(8))


def test_partially_masked_tile_filled_with_valid_mean(tmp_path):
    path = write_color_raster(tmp_path / "alpha.tif", 64, 64, alpha=True)  # cols 0..7 transparent
    with RasterSource(path, TilingConfig(tile_size=32), image_size=32) as src:
        tile, fraction = src.read_tile((0, 0, 32, 32))
    assert fraction == pytest.approx(0.75)
    left = tile[:, :, :8]
    # padding equals the mean colour of the valid (red) pixels, not black
    assert np.allclose(left, tile[:, :, 8:].reshape(3, -1).mean(axis=1)[:, None, None], atol=1e-5)
    assert left[0].mean() > 0.7


def test_uint16_and_float_are_percentile_stretched_once(tmp_path):
    for dtype in ("uint16", "float32"):
        path = write_color_raster(tmp_path / f"{dtype}.tif", 128, 128, dtype=dtype)
        with RasterSource(path, TilingConfig(tile_size=64), image_size=32) as src:
            low, high = src.stretch[0]
            assert high > low >= 0
            tiles = [t for _, t, _ in src.iter_tiles()]
        red_tile = tiles[0]  # top-left quadrant is red: high red, low blue after the stretch
        assert red_tile[0].mean() > 0.7 and red_tile[2].mean() < 0.3
        assert all(0.0 <= t.min() and t.max() <= 1.0 for t in tiles if t is not None)


def test_constant_fill_tiles_skipped(tmp_path):
    path = write_color_raster(tmp_path / "c.tif", 64, 64)
    with rasterio.open(path, "r+") as ds:
        ds.write(np.zeros((3, 32, 32), dtype=np.uint8), window=rasterio.windows.Window(0, 0, 32, 32))
    with RasterSource(path, TilingConfig(tile_size=32), image_size=32) as src:
        assert src.read_tile((0, 0, 32, 32))[0] is None
        assert src.read_tile((32, 0, 32, 32))[0] is not None


def test_raster_without_crs_warns_and_works(tmp_path):
    path = write_color_raster(tmp_path / "nocrs.tif", 64, 64, crs=None)
    with pytest.warns(RsclipWarning, match="no CRS"):
        src = RasterSource(path, TilingConfig(tile_size=32), image_size=32)
    with src:
        assert src.crs is None
        assert sum(t is not None for _, t, _ in src.iter_tiles()) == 4


def test_rotated_raster_refused(tmp_path):
    transform = Affine(1.0, 0.2, 500000.0, 0.2, -1.0, 6000000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_color_raster(tmp_path / "rot.tif", 64, 64, transform=transform)
    with pytest.raises(RsclipInputError, match="rotated"):
        RasterSource(path, TilingConfig(), image_size=32)


def test_not_a_raster_and_missing_file(tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    with pytest.raises(RsclipInputError, match="junk.tif: not a readable raster"):
        RasterSource(junk, TilingConfig(), image_size=32)
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        RasterSource(tmp_path / "nope.tif", TilingConfig(), image_size=32)


def test_single_band_needs_bands_then_works_as_grey(tmp_path):
    path = tmp_path / "grey.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 32)) as ds:
        ds.write(np.arange(32 * 32, dtype=np.uint16).reshape(1, 32, 32).astype(np.uint8))
    with pytest.raises(RsclipInputError, match="pass bands 1,1,1 to use it as grey"):
        RasterSource(path, TilingConfig(), image_size=32)
    with RasterSource(path, TilingConfig(bands=(1,), tile_size=32), image_size=32) as src:
        tile, _ = src.read_tile((0, 0, 32, 32))
        assert np.array_equal(tile[0], tile[1]) and np.array_equal(tile[1], tile[2])


def test_extent_bbox_and_polygons(tmp_path):
    from shapely.geometry import box

    path = write_color_raster(tmp_path / "e.tif", 256, 256)  # 1 m pixels from (500000, 6000000)
    bbox = (500000.0, 6000000.0 - 64.0, 500064.0, 6000000.0)
    with RasterSource(path, TilingConfig(tile_size=32, extent=bbox), image_size=32) as src:
        assert src.region == (0, 0, 64, 64) and src.grid.n_tiles == 4
    poly = [box(500000, 6000000 - 256, 500040, 6000000 - 200)]  # a strip at the bottom-left
    with RasterSource(path, TilingConfig(tile_size=32, extent=poly), image_size=32) as src:
        assert 0 < len(src.tile_rc) <= src.grid.n_tiles
        for w in src.grid.windows(src.tile_rc):
            assert w[0] < 40 and w[1] + w[3] > 200
    with pytest.raises(RsclipInputError, match="does not overlap"):
        RasterSource(path, TilingConfig(extent=(0, 0, 10, 10)), image_size=32)


def test_extent_from_vector_file_is_reprojected(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    path = write_color_raster(tmp_path / "e.tif", 256, 256)
    frame = gpd.GeoDataFrame(geometry=[box(500010, 6000000 - 50, 500050, 6000000 - 10)], crs="EPSG:32633")
    vector = tmp_path / "aoi.gpkg"
    frame.to_crs("EPSG:4326").to_file(vector, driver="GPKG")
    with RasterSource(path, TilingConfig(tile_size=32, extent=str(vector)), image_size=32) as src:
        col0, row0, col1, row1 = src.region
        assert abs(col0 - 10) <= 1 and abs(row0 - 10) <= 1 and abs(col1 - 50) <= 1 and abs(row1 - 50) <= 1


def test_resolution_resamples_on_read(tmp_path):
    path = write_color_raster(tmp_path / "r.tif", 256, 256)  # 1 m pixels
    with RasterSource(path, TilingConfig(tile_size=32, resolution=2.0), image_size=32) as src:
        assert (src.tile_w, src.tile_h) == (64, 64)
        assert src.grid.n_tiles == 16
        tile, _ = src.read_tile((0, 0, 64, 64))
        assert tile.shape == (3, 32, 32)
    assert math.isclose(src.tile_w / 32, 2.0)


def test_gcp_only_raster_refused(tmp_path):
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcps.tif"
    gcps = [GroundControlPoint(0, 0, 500000, 6000000), GroundControlPoint(0, 64, 500000, 5999936),
            GroundControlPoint(64, 0, 500064, 6000000)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                           gcps=gcps, crs="EPSG:32633") as ds:
            ds.write(np.full((3, 64, 64), 100, dtype=np.uint8))
        with pytest.raises(RsclipInputError, match="ground control points"):
            RasterSource(path, TilingConfig(), image_size=32)
