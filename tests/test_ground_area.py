"""Polygon areas of land-cover runs are true ground areas, whatever the raster's projection."""

from __future__ import annotations

import geopandas as gpd
import pytest
from pyproj import Transformer
from shapely.geometry import box

from rsclip_core.inference.runs import _area_m2


def _mercator_square(lat: float, side: float = 1000.0) -> gpd.GeoDataFrame:
    x0, y0 = Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, lat)
    return gpd.GeoDataFrame(geometry=[box(x0, y0, x0 + side, y0 + side)], crs="EPSG:3857")


@pytest.mark.parametrize("lat", [0.0, 37.87, 60.0])
def test_web_mercator_square_has_its_true_ground_area(lat):
    import math

    frame = _mercator_square(lat)
    assert frame.area.iloc[0] == pytest.approx(1e6)  # the Mercator area
    # A 1 km Mercator square is cos(lat) km on the ground each way (sphere; the ellipsoid adds < 0.7 %).
    expected = (1000.0 * math.cos(math.radians(lat))) ** 2
    assert _area_m2(frame)[0] == pytest.approx(expected, rel=7e-3)


def test_same_ground_area_in_any_crs():
    frame = _mercator_square(60.0)
    reference = _area_m2(frame)[0]
    for crs in ("EPSG:4326", "EPSG:32632", "EPSG:3035"):
        assert _area_m2(frame.to_crs(crs))[0] == pytest.approx(reference, rel=1e-6), crs


def test_projected_metre_crs_matches_planar_area_near_the_central_meridian():
    frame = gpd.GeoDataFrame(geometry=[box(500000, 5000000, 501000, 5001000)], crs="EPSG:32633")
    assert _area_m2(frame)[0] == pytest.approx(1e6, rel=1e-3)  # UTM scale 0.9996


def test_no_crs_gives_nan():
    frame = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)])
    assert _area_m2(frame)[0] != _area_m2(frame)[0]
