"""Files shipped inside the ``rsclip_core`` package: the bundled model, default classes, sample raster.

Found with :mod:`importlib.resources`, so they resolve the same way in a source checkout, an
editable install, a normal (non-editable) wheel install and the QGIS plugin zip (which vendors
``rsclip_core`` with this folder). Stdlib only: the torch-free inference path imports it.

Layout (``rsclip_core/resources/``)::

    models/default/      the bundled exported model directory (rsclip.json, image.onnx, text.onnx, ...)
    models/MODEL_CARD.md its model card
    classes/landcover.yaml   rsclip's default land-cover classes
    samples/naip_m_4709963_se_14_1_20200831.tif   a small NAIP sample raster, 5 m (public domain)
    samples/naip_berkeley_campus.tif              a 1 m scene of the UC Berkeley campus (the demo scene)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rsclip_core import spec

SAMPLE_RASTER_NAME = "naip_m_4709963_se_14_1_20200831.tif"
SAMPLE_RASTERS = {"naip": SAMPLE_RASTER_NAME, "berkeley": "naip_berkeley_campus.tif"}
"""Bundled sample rasters by short name (``samples/README.md`` says where each comes from)."""


class ResourceMissingError(FileNotFoundError):
    """A resource that this build of rsclip does not ship; the message names the path looked at."""


def resources_dir() -> Path:
    """The folder holding rsclip's packaged resources (a real directory on disk)."""
    root = resources.files(__name__)
    path = Path(str(root))
    if not path.is_dir():  # e.g. imported from a zip archive: resources must be plain files
        raise ResourceMissingError(f"{root}: rsclip's resources are not a folder on disk (zipped install?)")
    return path


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise ResourceMissingError(f"{path}: {what} is not part of this rsclip build")
    return path


def bundled_model_dir() -> Path:
    """The bundled default model directory; :class:`ResourceMissingError` if this build has none."""
    path = resources_dir() / "models" / "default"
    _existing(path / spec.METADATA_FILE, "the bundled default model")
    return path


def default_classes_file() -> Path:
    """rsclip's default land-cover class list (``classes/landcover.yaml``)."""
    return _existing(resources_dir() / "classes" / "landcover.yaml", "the default land-cover class list")


def sample_raster(name: str = "naip") -> Path:
    """A bundled sample raster: ``naip`` (USDA NAIP, 5 m, 4 bands, public domain) or ``berkeley``
    (1 m RGB scene of the UC Berkeley campus, the demo scene); see ``samples/README.md``."""
    if name not in SAMPLE_RASTERS:
        raise ResourceMissingError(f"no sample raster {name!r} (have {', '.join(SAMPLE_RASTERS)})")
    return _existing(resources_dir() / "samples" / SAMPLE_RASTERS[name], f"the sample raster {name!r}")
