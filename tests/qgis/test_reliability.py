"""Issue #13 through the Processing algorithms: an output on top of the input is refused."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException



def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target", ["OUTPUT", "CONFIDENCE", "POLYGONS"])
def test_land_cover_never_overwrites_its_input(provider, raster_path, model_dir, tmp_path, target):
    import processing

    raster = tmp_path / "scene.tif"  # a copy: the real test raster must survive a regression
    shutil.copyfile(raster_path, raster)
    before = _digest(raster)
    params = {"INPUT": str(raster), "MODEL": str(model_dir), "CACHE_FOLDER": str(tmp_path / "cache"),
              "OUTPUT": str(tmp_path / "lc.tif")}
    (tmp_path / "sub").mkdir()
    if target == "POLYGONS":  # must end in .gpkg: a symlink to the input
        (tmp_path / "link.gpkg").symlink_to(raster)
        params[target] = str(tmp_path / "link.gpkg")
    else:  # another spelling of the input
        params[target] = str(tmp_path / "sub" / ".." / "scene.tif")
    with pytest.raises(QgsProcessingException, match="is the input"):
        processing.run("rsclip:landcover", params)
    assert _digest(raster) == before
    assert not (tmp_path / "lc.tif").exists()


def test_text_search_heatmap_never_overwrites_its_input(provider, raster_path, model_dir, tmp_path):
    import processing

    raster = tmp_path / "scene.tif"
    shutil.copyfile(raster_path, raster)
    link = tmp_path / "heat.tif"
    link.symlink_to(raster)
    before = _digest(raster)
    params = {"INPUT": str(raster), "MODEL": str(model_dir), "CACHE_FOLDER": str(tmp_path / "cache"),
              "QUERY": "water", "OUTPUT": str(tmp_path / "hits.gpkg"), "HEATMAP": str(link)}
    with pytest.raises(QgsProcessingException, match="is the input"):
        processing.run("rsclip:textsearch", params)
    assert _digest(raster) == before and not (tmp_path / "hits.gpkg").exists()
