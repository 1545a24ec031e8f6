"""The packaged resources (bundled model, default classes, sample raster) resolve inside rsclip_core."""

from __future__ import annotations

from pathlib import Path

import pytest

import rsclip_core
from rsclip_core import resources, spec


def test_resources_live_inside_the_package():
    package = Path(rsclip_core.__file__).resolve().parent
    for path in (resources.bundled_model_dir(), resources.default_classes_file(), resources.sample_raster()):
        assert path.exists() and package in path.resolve().parents
    model = resources.bundled_model_dir()
    for name in (spec.METADATA_FILE, spec.IMAGE_ONNX, spec.TEXT_ONNX, spec.TOKENIZER_FILE):
        assert (model / name).is_file()


def test_missing_resource_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "resources_dir", lambda: tmp_path)
    for getter, part in ((resources.bundled_model_dir, "models"), (resources.default_classes_file, "landcover"),
                         (resources.sample_raster, "naip")):
        with pytest.raises(resources.ResourceMissingError, match=str(tmp_path)) as info:
            getter()
        assert part in str(info.value)


def test_package_data_ships_the_resources():
    """pyproject's package-data globs must cover every resource file git tracks (else a wheel lacks it)."""
    import fnmatch
    import subprocess

    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        tomli = pytest.importorskip("tomli")
        tomllib = tomli
    root = Path(rsclip_core.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        pytest.skip("not a source checkout")
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs.get("rsclip_core.resources", [])
    tracked = subprocess.run(["git", "ls-files", "rsclip_core/resources"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked
    for name in tracked:
        rel = str(Path(name).relative_to("rsclip_core/resources"))
        if rel.endswith(".py"):
            continue
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in patterns), f"{rel} not in package-data"


def test_bundled_model_has_dense_output_whose_mean_is_the_embedding():
    """The bundled model's graph-edited ``dense`` output reproduces ``embedding`` (<= 1e-4)."""
    pytest.importorskip("onnxruntime")
    from rsclip_core.export.parity import check_dense_graph

    model_dir = resources.bundled_model_dir()
    meta = spec.ModelMetadata.read(model_dir)
    assert meta.dense_output == spec.DENSE_OUTPUT and meta.dense_stride * meta.dense_grid[0] == meta.image_size
    assert check_dense_graph(model_dir, batch=2).ok
    # the dense output shares the image weights (a copy would double image.onnx, 7.5 MB in fp16)
    assert (model_dir / spec.IMAGE_ONNX).stat().st_size < 10 * 2**20
    # the bundle bound of training/default_model/README.md
    assert sum(p.stat().st_size for p in model_dir.iterdir()) < 50 * 10**6
