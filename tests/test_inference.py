"""The torch-free inference engine with a tiny hand-built ONNX model (no torch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsclip_core import spec
from rsclip_core.inference import (
    EmbeddingIndex,
    InvalidModelError,
    RsclipCancelled,
    RsclipInputError,
    TilingConfig,
    build_index,
    default_model_dir,
    load_model,
    run_search,
    search,
)
from rsclip_core.inference.toy_model import write_color_raster, write_toy_model
from rsclip_core.inference.writers import gpkg_version

TILING = TilingConfig(tile_size=32)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture()
def raster(tmp_path) -> Path:
    return write_color_raster(tmp_path / "quads.tif", 128, 128)


def test_import_does_not_import_torch():
    code = ("import sys, rsclip_core, rsclip_core.inference, rsclip_core.cli.map; "
            "bad = [m for m in ('torch', 'timm', 'open_clip', 'torchvision') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_model_encodes_images_and_text(model):
    assert model.embed_dim == 8 and model.image_size == 32
    red = np.zeros((1, 3, 32, 32), dtype=np.float32)
    red[:, 0] = 1.0
    img = model.encode_images(red)
    txt = model.encode_text(["red", "a satellite image of water."])
    assert img.shape == (1, 8) and txt.shape == (2, 8)
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    assert (img @ txt.T)[0, 0] > 0.99 and abs((img @ txt.T)[0, 1]) < 1e-3
    prompts = model.encode_prompts(["green", "blue"])
    assert prompts.shape == (2, 8) and np.argmax(prompts[0]) == 1 and np.argmax(prompts[1]) == 2
    with pytest.raises(RsclipInputError, match="expected float32"):
        model.encode_images(np.zeros((1, 3, 16, 16), dtype=np.float32))
    with pytest.raises(RsclipInputError, match="empty"):
        model.encode_text([" "])


def test_mean_std_from_metadata_are_applied(tmp_path):
    # std 0.5 / mean 0.5 maps [0, 1] -> [-1, 1]: a mid-grey-red pixel changes sign in G and B
    mdir = write_toy_model(tmp_path / "m", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    m = load_model(mdir)
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    x[:, 0] = 1.0
    emb = m.encode_images(x)[0]
    assert emb[0] > 0 and emb[1] < 0 and emb[2] < 0


def test_bad_model_dirs(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_model(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidModelError, match="rsclip.json: not found"):
        load_model(empty)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in (spec.METADATA_FILE, spec.TEXT_ONNX, spec.TOKENIZER_FILE):
        (corrupt / name).write_bytes((Path(model_dir) / name).read_bytes())
    (corrupt / spec.IMAGE_ONNX).write_bytes(b"\x08garbage")
    with pytest.raises(InvalidModelError, match="image.onnx: not a loadable ONNX model"):
        load_model(corrupt)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in (spec.IMAGE_ONNX, spec.TEXT_ONNX, spec.TOKENIZER_FILE):
        (wrong / name).write_bytes((Path(model_dir) / name).read_bytes())
    meta = json.loads((Path(model_dir) / spec.METADATA_FILE).read_text())
    meta["image_size"] = 64
    (wrong / spec.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(InvalidModelError, match="metadata says 64"):
        load_model(wrong)


def test_default_model_dir(monkeypatch, model_dir, tmp_path):
    monkeypatch.setenv("RSCLIP_MODEL", str(model_dir))
    assert default_model_dir() == Path(model_dir)
    monkeypatch.setenv("RSCLIP_MODEL", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="RSCLIP_MODEL"):
        default_model_dir()
    monkeypatch.delenv("RSCLIP_MODEL")
    from rsclip_core import resources

    assert default_model_dir() == resources.bundled_model_dir()
    monkeypatch.setattr(resources, "resources_dir", lambda: tmp_path / "no-bundle")
    with pytest.raises(RsclipInputError, match="no bundled default model.*pass -m"):
        default_model_dir()


def test_build_index_progress_cache_and_reload(model, raster, tmp_path):
    calls = []
    index = build_index(raster, model, TILING, cache_dir=tmp_path / "cache", progress=lambda d, t: calls.append((d, t)))
    assert len(index) == 16 and index.embeddings.dtype == np.float16
    assert calls[0] == (0, 16) and calls[-1] == (16, 16)
    files = list((tmp_path / "cache").glob("*.rsclip-index.npz"))
    assert len(files) == 1 and index.key in files[0].name
    loaded = EmbeddingIndex.load(files[0])
    assert np.array_equal(loaded.embeddings, index.embeddings) and loaded.grid == index.grid
    assert loaded.crs.to_epsg() == 32633
    # second build is a cache hit (no tiles read): make the reader fail if it is used
    from rsclip_core.inference import raster as raster_module

    original = raster_module.RasterSource.read_tile
    raster_module.RasterSource.read_tile = lambda *a, **k: (_ for _ in ()).throw(AssertionError("read"))
    try:
        again = build_index(raster, model, TILING, cache_dir=tmp_path / "cache")
    finally:
        raster_module.RasterSource.read_tile = original
    assert again.key == index.key
    # a different tiling is a different key
    other = build_index(raster, model, TilingConfig(tile_size=32, overlap=0.5), cache_dir=tmp_path / "cache")
    assert other.key != index.key and len(other) == 49


def test_index_invalidated_when_raster_changes(model, raster, tmp_path):
    first = build_index(raster, model, TILING, cache_dir=tmp_path)
    time.sleep(0.01)
    with rasterio.open(raster, "r+") as ds:
        ds.write(np.zeros((3, 8, 8), dtype=np.uint8), window=rasterio.windows.Window(0, 0, 8, 8))
    second = build_index(raster, model, TILING, cache_dir=tmp_path)
    assert first.key != second.key


def test_cancel_stops_without_writing(model, raster, tmp_path):
    with pytest.raises(RsclipCancelled):
        build_index(raster, model, TilingConfig(tile_size=32, batch_size=2), cache_dir=tmp_path,
                    cancel=lambda: True)
    assert not list(tmp_path.glob("*.npz"))


def test_search_finds_the_right_quadrant(model, raster):
    index = build_index(raster, model, TILING)
    hits = search(index, model, "blue water", top_k=4)
    assert list(hits["rank"]) == [1, 2, 3, 4] and set(hits["query"]) == {"blue water"}
    assert hits.crs.to_epsg() == 32633
    # blue is the bottom-left quadrant: x in [500000, 500064], y in [6000000-128, 6000000-64]
    for geom in hits.geometry:
        c = geom.centroid
        assert 500000 < c.x < 500064 and 6000000 - 128 < c.y < 6000000 - 64
    assert hits["score"].is_monotonic_decreasing


def test_search_suppresses_overlapping_hits(model, raster):
    index = build_index(raster, model, TilingConfig(tile_size=32, overlap=0.5))
    hits = search(index, model, "red", top_k=10)
    geoms = list(hits.geometry)
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            assert geoms[i].intersection(geoms[j]).area == 0
    raw = search(index, model, "red", top_k=10, suppress_overlap=False)
    assert any(raw.geometry.iloc[0].intersection(g).area > 0 for g in raw.geometry.iloc[1:])


def test_run_search_writes_gpkg_and_heatmap(model, raster, tmp_path):
    out, heat = tmp_path / "hits.gpkg", tmp_path / "heat.tif"
    run = run_search(raster, "green forest", model=model, tiling=TILING, top_k=5, out_gpkg=out, heatmap_tif=heat)
    assert run.out_gpkg == out and gpkg_version(out) == "1.2"
    import geopandas as gpd

    back = gpd.read_file(out)
    assert list(back.columns[:3]) == ["rank", "score", "query"] and len(back) == 5
    with rasterio.open(heat) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.dtypes[0] == "float32" and ds.shape == (4, 4)
        grid = ds.read(1)
    assert grid[0, 3] > grid[1, 0]  # green (top-right) scores higher than blue (bottom-left)
    assert list(tmp_path.glob("*.rsclip-index.npz")), "index cached next to the outputs"
    with pytest.raises(FileExistsError, match="^output: .*exists") as exists:
        run_search(raster, "green", model=model, tiling=TILING, out_gpkg=out)
    assert exists.value.field == "output"
    with pytest.raises(RsclipInputError, match="empty"):
        run_search(raster, "  ", model=model, tiling=TILING)


def test_requery_from_index_is_fast(model):
    """Re-query latency: 10k tiles x 512 dims must rank in well under 100 ms."""
    from rsclip_core.inference.search import rank_tiles
    from rsclip_core.inference.tiling import plan_grid

    rng = np.random.default_rng(0)
    grid = plan_grid((0, 0, 22400, 22400), 224, 224, 0.0)  # 100 x 100 tiles
    emb = rng.standard_normal((grid.n_tiles, 512)).astype(np.float16)
    index = EmbeddingIndex(emb, grid.tile_rc(), np.ones(grid.n_tiles, np.float32), grid,
                           (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), None, "x.tif", (22400, 22400), "k", {}, {}, "m")
    text = rng.standard_normal(512).astype(np.float32)
    rank_tiles(index, text, 50)  # warm (float32 copy cached)
    start = time.perf_counter()
    order, scores = rank_tiles(index, text, 50)
    assert time.perf_counter() - start < 0.1
    assert len(order) == 50 and np.all(np.diff(scores) <= 0)


@pytest.mark.slow
def test_exported_registry_model_maps_a_raster(tmp_path):
    """Integration with the real exporter (torch; ~25 s, so opt-in: pytest -m slow)."""
    export = pytest.importorskip("rsclip_core.export")
    if not hasattr(export, "export_model"):
        pytest.skip("rsclip_core.export.export_model not available yet")
    try:
        export.export_model("tiny-mci-mct", tmp_path / "model")
    except Exception as exc:  # registry model missing in this checkout
        pytest.skip(f"export of tiny-mci-mct failed: {exc}")
    m = load_model(tmp_path / "model")
    path = write_color_raster(tmp_path / "r.tif", 256, 256)
    run = run_search(path, "a red roof", model=m, tiling=TilingConfig(tile_size=128),
                     out_gpkg=tmp_path / "hits.gpkg", top_k=3)
    assert len(run.hits) == 3 and np.isfinite(run.hits["score"]).all()


def test_no_partial_files_left_on_failure(model, raster, tmp_path, monkeypatch):
    from rsclip_core.inference import writers

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pyogrio.write_dataframe", boom)
    out = tmp_path / "hits.gpkg"
    with pytest.raises(writers.OutputWriteError, match="hits.gpkg: cannot be written"):
        run_search(raster, "red", model=model, tiling=TILING, out_gpkg=out)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]
    assert writers.GPKG_VERSION == "1.2"


def test_all_nodata_raster_warns_and_writes_empty_outputs(model, tmp_path):
    from rasterio.transform import from_origin

    from rsclip_core.inference import RsclipWarning

    path = tmp_path / "empty.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(0, 100, 1, 1), nodata=0) as ds:
        ds.write(np.zeros((3, 64, 64), dtype=np.uint8))
    with pytest.warns(RsclipWarning, match="no tile has enough valid pixels"):
        run = run_search(path, "red", model=model, tiling=TILING, out_gpkg=tmp_path / "h.gpkg")
    assert len(run.hits) == 0 and (tmp_path / "h.gpkg").exists()


def test_cancelled_build_resumes_from_checkpoint(model, raster, tmp_path):
    tiling = TilingConfig(tile_size=32, batch_size=4)
    full = build_index(raster, model, tiling)
    calls = {"n": 0}

    def cancel_after_two_batches() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(RsclipCancelled):
        build_index(raster, model, tiling, cache_dir=tmp_path, cancel=cancel_after_two_batches)
    assert len(list(tmp_path.glob(".*.resume.npz"))) == 1 and not list(tmp_path.glob("*.rsclip-index.npz"))
    seen = []
    resumed = build_index(raster, model, tiling, cache_dir=tmp_path, progress=lambda d, t: seen.append(d))
    assert seen[0] == 8  # two batches of 4 were already done
    assert np.array_equal(resumed.embeddings, full.embeddings) and np.array_equal(resumed.tile_rc, full.tile_rc)
    assert not list(tmp_path.glob(".*.resume.npz"))


def test_search_with_prompt_templates(model, raster):
    index = build_index(raster, model, TILING)
    plain = search(index, model, "green", top_k=3)
    templated = search(index, model, "green", top_k=3, templates=["an aerial image of {}.", "{} trees"])
    # the toy text encoder ignores non-colour words: same ranking, same geometry
    assert list(plain.geometry.centroid.x) == list(templated.geometry.centroid.x)
