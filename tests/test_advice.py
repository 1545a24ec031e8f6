"""Warnings for meaningless results (rsclip_core.inference.advice), in the library and the CLI."""

from __future__ import annotations


import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import from_origin

from rsclip_core.cli.map import cli
from rsclip_core.inference import TilingConfig, build_index, load_model, run_search
from rsclip_core.inference.advice import (
    ground_resolution_m,
    query_language_warning,
    resolution_warning,
    score_percentiles,
    search_advice,
    top_k_warning,
)
from rsclip_core.inference.toy_model import write_color_raster


def test_resolution_warning_only_far_from_the_training_resolution():
    assert resolution_warning(1.2, 1.0) is None and resolution_warning(0.4, 1.0) is None
    coarse = resolution_warning(30.0, 1.0)
    assert coarse and "30 m/px" in coarse and "trained at 1 m/px" in coarse
    assert "closer to the model" in resolution_warning(0.1, 1.0)
    assert resolution_warning(30.0, None) is None  # model without a training resolution


def test_top_k_warning():
    assert top_k_warning(5, 18) is None
    assert "every tile" in top_k_warning(20, 18)


def test_query_language_warning():
    assert query_language_warning("tennis courts") is None
    assert query_language_warning("Straße am See") is None  # mostly ASCII letters
    assert "not trained on" in query_language_warning("网球场")
    assert "not trained on" in query_language_warning("теннисный корт")


def test_percentiles():
    all_scores = np.array([0.1, 0.2, 0.3, 0.4])
    assert score_percentiles([0.4, 0.2], all_scores).tolist() == [100.0, 50.0]


@pytest.mark.parametrize("crs, pixel, expected", [
    ("EPSG:32633", 2.0, 2.0 * 64 / 32),  # UTM metres: 64 source px per tile resized to 32 model px
    ("EPSG:3857", 2.0, 2.0 * 64 / 32 * 0.5),  # Web Mercator at 60 N: a Mercator metre is 0.5 m
])
def test_ground_resolution_is_geodesic(model_dir, tmp_path, crs, pixel, expected):
    from pyproj import Transformer

    x, y = (500000.0, 6650000.0) if crs == "EPSG:32633" else Transformer.from_crs(
        4326, 3857, always_xy=True).transform(15.0, 60.0)
    raster = write_color_raster(tmp_path / "r.tif", 256, 256, crs=crs, transform=from_origin(x, y, pixel, pixel))
    model = load_model(model_dir)
    index = build_index(raster, model, TilingConfig(tile_size=64), cache_dir=tmp_path)
    assert ground_resolution_m(index, 32) == pytest.approx(expected, rel=0.01)


def test_search_run_has_percentiles_and_advice(model_dir, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 128, 128)
    model = load_model(model_dir)
    run = run_search(raster, "blue water", model=model, tiling=TilingConfig(tile_size=32), top_k=20,
                     cache_dir=tmp_path)
    assert run.hits["percentile"].iloc[0] == pytest.approx(100.0)
    assert (np.diff(run.hits["percentile"].to_numpy()) <= 0).all()
    warnings = search_advice(run.index, model, "blue water", 20)
    assert len(warnings) == 1 and "every tile" in warnings[0]


def test_cli_prints_the_warnings(model_dir, tmp_path):
    raster = write_color_raster(tmp_path / "q.tif", 128, 128)
    result = CliRunner().invoke(cli, ["search", str(raster), "湖泊", "-m", str(model_dir), "--tile", "32",
                                      "--top-k", "50", "--cache-dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Warning: top-k 50 >= the 16 tiles" in result.output
    assert "not trained on" in result.output and "pctl" in result.output
