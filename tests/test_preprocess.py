"""rsclip_core.preprocess: the one preprocessing definition, and train/serve parity for every model."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from rsclip_core import spec
from rsclip_core.data.augment import center_view_params, reapply
from rsclip_core.preprocess import (
    GDAL_RESAMPLING,
    INTERPOLATIONS,
    PreprocessConfig,
    PreprocessConfigError,
    crop_box,
    gdal_resampling,
    image_to_input,
    load_image,
    load_images,
    pil_filter,
    resample,
    resize_and_crop,
    standardise,
    to_pixels,
)


def _scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth structure plus noise: resampling differences show up on it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), (xx + yy) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 0}, "image_size must be a positive integer, got 0"),
        ({"image_size": 12.5}, "image_size must be a positive integer"),
        ({"image_size": 32, "interpolation": "cubic"}, "interpolation 'cubic' is not one of bilinear, bicubic"),
        ({"image_size": 32, "resize_mode": "zoom"}, "resize_mode 'zoom' is not one of shortest, squash"),
        ({"image_size": 32, "std": (0.5, 0.0, 0.5)}, "std values must be > 0"),
        ({"image_size": 32, "mean": (0.5, 0.5)}, "mean must be 3 finite numbers"),
        ({"image_size": 32, "mean": "abc"}, "mean must be 3 numbers"),
    ],
)
def test_bad_config_is_one_clear_line(kwargs, message):
    with pytest.raises(PreprocessConfigError, match=message) as info:
        PreprocessConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_round_trips_and_names_its_origin():
    cfg = PreprocessConfig(96, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", "squash")
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(image_size=64).image_size == 64 and cfg.image_size == 96
    with pytest.raises(PreprocessConfigError, match="^my.json: unknown preprocess keys \\['size'\\]"):
        PreprocessConfig.from_dict({"image_size": 8, "size": 3}, "my.json")
    with pytest.raises(PreprocessConfigError, match="^my.json: interpolation 'area'"):
        PreprocessConfig.from_dict({"image_size": 8, "interpolation": "area"}, "my.json")
    with pytest.raises(PreprocessConfigError, match="image_size missing"):
        PreprocessConfig.from_dict({"mean": [0, 0, 0]})
    with pytest.raises(PreprocessConfigError, match="image_size"):
        cfg.replace(image_size=-1)


def test_model_metadata_carries_the_config(tmp_path: Path):
    cfg = PreprocessConfig(64, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic", "squash")
    meta = spec.ModelMetadata(model_name="m", embed_dim=4, context_length=8, logit_scale=1.0,
                              **spec.ModelMetadata.preprocess_fields(cfg))
    data = json.loads(meta.to_json())
    # the on-disk keys stay flat (rsclip.json format version 1)
    assert {k: data[k] for k in cfg.to_dict()} == cfg.to_dict()
    assert spec.ModelMetadata.from_dict(data).preprocess == cfg
    (tmp_path / spec.METADATA_FILE).write_text(json.dumps({**data, "interpolation": "cubic"}))
    with pytest.raises(spec.ModelDirError, match=r"rsclip.json: interpolation 'cubic' is not one of"):
        spec.ModelMetadata.read(tmp_path)
    old = {k: v for k, v in data.items() if k not in ("interpolation", "resize_mode")}
    assert spec.ModelMetadata.from_dict(old).preprocess.interpolation == "bicubic"  # v1 default


def test_bundled_model_metadata_still_loads():
    from rsclip_core.resources import bundled_model_dir

    from rsclip_core.models import get_model_config, preprocess_config

    meta = spec.ModelMetadata.read(bundled_model_dir())
    # the shipped preprocessing is the registered model's, whichever model is bundled
    assert meta.preprocess == preprocess_config(get_model_config(meta.model_name))
    assert meta.preprocess.interpolation == "bilinear" and meta.preprocess.resize_mode == "shortest"


def test_bad_model_config_preprocess_names_the_file(tmp_path: Path):
    pytest.importorskip("torch")
    from rsclip_core.models import ModelConfigError, get_model_config

    config = get_model_config("tiny-effnet-mct")
    config["preprocess"]["interpolation"] = "cubic"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ModelConfigError, match=r"bad.json: interpolation 'cubic'"):
        get_model_config(str(path))


# --- geometry -------------------------------------------------------------------------------------


def test_crop_box_shortest_and_squash_on_non_square_inputs():
    assert crop_box(300, 200, "shortest") == (50, 0, 250, 200)
    assert crop_box(200, 301, "shortest") == (0, 50, 200, 250)  # offsets floored
    assert crop_box(64, 64, "shortest") == (0, 0, 64, 64)
    assert crop_box(300, 200, "squash") == (0, 0, 300, 200)
    with pytest.raises(PreprocessConfigError, match="resize_mode 'fit'"):
        crop_box(10, 10, "fit")
    with pytest.raises(PreprocessConfigError, match="positive"):
        crop_box(0, 10)


def test_resize_and_crop_geometry_on_a_wide_image():
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, 10:30] = 255  # the central 20x20 square is white, the borders black
    image = Image.fromarray(array)
    shortest = to_pixels(resize_and_crop(image, PreprocessConfig(10)))
    # the centre square only (its edge columns feel the black border through the filter support,
    # as they would after a full resize + crop)
    assert shortest.shape == (3, 10, 10) and shortest[:, :, 1:-1].min() == 1.0 and shortest.min() > 0.8
    squash = to_pixels(resize_and_crop(image, PreprocessConfig(10, resize_mode="squash")))
    assert squash[:, :, 0].max() < 0.1 and squash[:, :, 5].min() > 0.9
    tall = to_pixels(resize_and_crop(image.transpose(Image.Transpose.ROTATE_90), PreprocessConfig(10)))
    assert tall[:, 1:-1, :].min() == 1.0


def test_one_resample_equals_resize_then_centre_crop_when_exact():
    """shortest = torchvision's Resize(S) + CenterCrop(S), without resampling twice."""
    image = _scene(512, 256)
    for interpolation in ("bilinear", "bicubic"):
        ours = np.asarray(resize_and_crop(image, PreprocessConfig(128, interpolation=interpolation)), np.int16)
        two_step = image.resize((256, 128), pil_filter(interpolation)).crop((64, 0, 192, 128))
        assert np.abs(ours - np.asarray(two_step, np.int16)).max() <= 1


def test_image_at_input_size_is_not_resampled():
    image = _scene(32, 32)
    cfg = PreprocessConfig(32, interpolation="bicubic")
    assert np.array_equal(np.asarray(resize_and_crop(image, cfg)), np.asarray(image))


def test_interpolation_names_map_to_pil_and_gdal():
    assert pil_filter("bilinear") == Image.Resampling.BILINEAR
    assert pil_filter("bicubic") == Image.Resampling.BICUBIC
    assert pil_filter("nearest") == Image.Resampling.NEAREST
    assert pil_filter("lanczos") == Image.Resampling.LANCZOS
    assert gdal_resampling("bicubic") == "cubic" and set(GDAL_RESAMPLING) == set(INTERPOLATIONS)
    with pytest.raises(PreprocessConfigError, match="interpolation 'box'"):
        pil_filter("box")
    with pytest.raises(PreprocessConfigError, match="interpolation 'cubic'"):
        gdal_resampling("cubic")
    image = _scene(40, 30)
    results = {name: np.asarray(resample(image, (0, 0, 40, 30), (16, 16), name)) for name in INTERPOLATIONS}
    assert len({r.tobytes() for r in results.values()}) == len(INTERPOLATIONS)  # each name does something else


def test_raster_resampling_comes_from_the_layer():
    pytest.importorskip("rasterio")
    from rasterio.enums import Resampling

    from rsclip_core.inference.raster import RESAMPLING

    assert set(RESAMPLING) == set(INTERPOLATIONS)
    assert RESAMPLING["bicubic"] == Resampling.cubic and RESAMPLING["bilinear"] == Resampling.bilinear


def test_standardise_chw_and_nchw():
    cfg = PreprocessConfig(4, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    pixels = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    expected = (pixels - np.array(cfg.mean, np.float32).reshape(3, 1, 1)) / np.array(cfg.std, np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(standardise(pixels, cfg), expected, atol=1e-6)
    np.testing.assert_array_equal(standardise(pixels[0], cfg), standardise(pixels, cfg)[0])
    assert standardise(pixels, cfg).dtype == np.float32
    with pytest.raises(PreprocessConfigError, match=r"got shape \(4, 4\)"):
        standardise(pixels[0, 0], cfg)


def test_unreadable_image_names_the_file(tmp_path: Path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        load_image(bad, PreprocessConfig(8))


def test_import_needs_neither_torch_nor_pil():
    code = ("import sys, rsclip_core.preprocess, rsclip_core.spec; "
            "bad = [m for m in ('torch', 'PIL') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --- augmented views: replay at another output size ----------------------------------------------


def test_replay_at_another_size_is_one_resample_of_the_stored_crop():
    image = _scene(120, 90, seed=3)
    params = {"crop": [10, 20, 60, 80], "size": [224, 224], "hf": 1, "vf": 0, "r90": 1}
    view = reapply(image, params, size=48, interpolation="bicubic")
    direct = resample(image, (20, 10, 100, 70), (48, 48), "bicubic")
    direct = direct.transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(Image.Transpose.ROTATE_90)
    assert np.array_equal(np.asarray(view), np.asarray(direct))
    # ... i.e. the stored params with only the size changed, not the stored view resized again
    assert np.array_equal(np.asarray(view), np.asarray(reapply(image, {**params, "size": [48, 48]},
                                                                 interpolation="bicubic")))
    twice = reapply(image, params).resize((48, 48), Image.Resampling.BICUBIC)
    assert not np.array_equal(np.asarray(view), np.asarray(twice))
    # without arguments the stored view replays as stored (bilinear, stored size)
    stored = reapply(image, params)
    assert stored.size == (224, 224)
    expected = image.resize((224, 224), Image.Resampling.BILINEAR, box=(20, 10, 100, 70))
    expected = expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(Image.Transpose.ROTATE_90)
    assert np.array_equal(np.asarray(stored), np.asarray(expected))


def test_replay_size_override_needs_a_square_stored_view():
    from rsclip_core.data.augment import AugmentationParamsError

    with pytest.raises(AugmentationParamsError, match="not square"):
        reapply(_scene(50, 50), {"crop": [0, 0, 50, 50], "size": [20, 30]}, size=16)
    with pytest.raises(AugmentationParamsError, match="interpolation 'cubic'"):
        reapply(_scene(50, 50), {"crop": [0, 0, 50, 50], "size": [20, 20]}, interpolation="cubic")


def test_centre_view_params_are_the_config_crop():
    assert center_view_params(300, 200, 64) == {"crop": [0, 50, 200, 200], "size": [64, 64]}
    assert center_view_params(300, 200, 64, "squash") == {"crop": [0, 0, 200, 300], "size": [64, 64]}


# --- train / serve parity for every registered model ---------------------------------------------


def _training_tensor(path: Path, cfg: PreprocessConfig, stored_size: int = 224) -> np.ndarray:
    """The un-augmented centre view of ``path`` through the training item builder."""
    from rsclip_core.reinforce.shards import ReinforcedSample
    from rsclip_core.train.data import ItemConfig, build_item

    data = path.read_bytes()
    with Image.open(path) as img:
        width, height = img.size
    sample = ReinforcedSample(
        key="k", image_bytes=data, image_ext=path.suffix[1:], captions=["a scene."], syn_captions=[],
        aug_params=[center_view_params(width, height, stored_size, cfg.resize_mode)],
        image_emb={}, text_emb={}, syn_text_emb={},
    )
    item_cfg = ItemConfig(preprocess=cfg, teachers=(), synthetic=False, stored_embeddings=False)
    return build_item(sample, random.Random(0), item_cfg)["image"].numpy()


class _CaptureSession:
    """Stands in for the onnxruntime image session: records what the graph would be fed."""

    def __init__(self, dim: int) -> None:
        self.dim, self.fed = dim, None

    def run(self, outputs, feeds):
        self.fed = feeds[spec.IMAGE_INPUT]
        return [np.ones((len(self.fed), self.dim), np.float32)]


def _inference_tensor(path: Path, cfg: PreprocessConfig, tmp_path: Path) -> np.ndarray:
    """What an exported model dir's image graph is fed for the image file ``path``: metadata written
    by the exporter, read back from disk, file loaded as ``rsclip eval --model-dir`` does, then
    ``EmbeddingModel`` standardisation."""
    pytest.importorskip("torch")
    import torch

    from rsclip_core.export.api import build_metadata
    from rsclip_core.inference.model import EmbeddingModel

    stand_in = SimpleNamespace(name="m", embed_dim=4, preprocess=cfg, context_length=8,
                               logit_scale=torch.tensor(1.0))
    meta = build_metadata(stand_in, tokenizer_fields={})
    (tmp_path / spec.METADATA_FILE).write_text(meta.to_json())
    meta = spec.ModelMetadata.read(tmp_path)
    session = _CaptureSession(4)
    model = EmbeddingModel(tmp_path, meta, session, None, None)
    model.encode_images(load_images([path], meta.preprocess))
    return session.fed[0]


def _registered_configs() -> list:
    pytest.importorskip("torch")
    from rsclip_core.models import get_model_config, list_models
    from rsclip_core.models.factory import preprocess_config

    return [(name, preprocess_config(get_model_config(name))) for name in list_models()]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("parity")
    paths = []
    for i, (w, h, ext) in enumerate([(300, 200, "png"), (181, 263, "jpg"), (128, 128, "png")]):
        path = root / f"scene{i}.{ext}"
        _scene(w, h, seed=i).save(path)
        paths.append(path)
    return paths


def test_training_tensor_equals_inference_tensor_for_every_registered_model(images, tmp_path: Path):
    configs = _registered_configs()
    assert len(configs) >= 10
    for name, cfg in configs:
        for mode in ("shortest", "squash"):
            mode_cfg = cfg.replace(resize_mode=mode)
            for path in images:
                train = _training_tensor(path, mode_cfg)
                serve = _inference_tensor(path, mode_cfg, tmp_path)
                assert train.shape == serve.shape == (3, cfg.image_size, cfg.image_size), name
                assert np.abs(train - serve).max() <= 1e-6, f"{name} {mode} {path.name}"
                # the tower wrapper (teachers, image_transform) is the same definition
                np.testing.assert_array_equal(image_to_input(Image.open(path), mode_cfg), train)


def test_the_old_double_resize_would_fail_parity(images, tmp_path: Path):
    cfg = PreprocessConfig(128, (0.5,) * 3, (0.5,) * 3, "bilinear")
    path = images[0]
    with Image.open(path) as img:
        image = img.convert("RGB")
    stored = reapply(image, center_view_params(image.width, image.height, 224))  # bilinear to 224 ...
    old = standardise(to_pixels(stored.resize((128, 128), Image.Resampling.BICUBIC)), cfg)  # ... then bicubic
    assert np.abs(old - _inference_tensor(path, cfg, tmp_path)).mean() > 1e-3


def test_parity_on_real_rsicd_images(tmp_path: Path):
    from tests.conftest import shared_data_path

    paths = sorted(shared_data_path("rsicd", "images").glob("*.jpg"))[:3]
    assert paths
    for _, cfg in _registered_configs()[:3]:
        for path in paths:
            assert np.abs(_training_tensor(path, cfg) - _inference_tensor(path, cfg, tmp_path)).max() <= 1e-6
