"""Replayable augmentations: stored params replay bit-exactly on the original image."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rsclip_core.data.augment import (
    DEFAULT_PRESET,
    RANDAUGMENT_OPS,
    AugmentationConfig,
    AugmentationParamsError,
    augment,
    augmentation_preset,
    center_view_params,
    reapply,
    sample_params,
)


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), w=st.integers(8, 96), h=st.integers(8, 96),
       out=st.sampled_from([16, 32, 48]))
def test_replay_is_bit_exact_after_json_round_trip(seed: int, w: int, h: int, out: int) -> None:
    img = _image(w, h, seed % 1000)
    cfg = AugmentationConfig(output_size=out, randaugment_p=0.9)
    view, params = augment(img, random.Random(seed), cfg)
    stored = json.loads(json.dumps(params, separators=(",", ":")))
    replayed = reapply(img, stored)
    assert replayed.size == (out, out)
    assert replayed.tobytes() == view.tobytes()


def test_sampling_is_deterministic_and_covers_overhead_ops() -> None:
    cfg = AugmentationConfig(randaugment_p=1.0)
    draws = [sample_params(200, 150, random.Random(i), cfg) for i in range(300)]
    assert draws[:5] == [sample_params(200, 150, random.Random(i), cfg) for i in range(5)]
    assert {d["r90"] for d in draws} == {0, 1, 2, 3}
    assert {d["vf"] for d in draws} == {0, 1} and {d["hf"] for d in draws} == {0, 1}
    assert {op for d in draws for op, _ in d["ra"]} == set(RANDAUGMENT_OPS)
    assert any("cj" in d for d in draws) and any("cj" not in d for d in draws)
    for d in draws:
        top, left, h, w = d["crop"]
        assert 0 <= top and 0 <= left and top + h <= 150 and left + w <= 200


def test_each_op_changes_pixels_and_flips_are_exact() -> None:
    img = _image(40, 40, 1)
    base = center_view_params(40, 40, 40)
    plain = reapply(img, base)
    assert plain.tobytes() == img.tobytes()  # full-size crop, same size: identity
    flipped = reapply(img, {**base, "vf": 1})
    assert np.array_equal(np.asarray(flipped), np.asarray(img)[::-1])
    rotated = reapply(img, {**base, "r90": 1})
    assert np.array_equal(np.asarray(rotated), np.rot90(np.asarray(img)))
    for op in RANDAUGMENT_OPS:
        out = reapply(img, {**base, "ra": [[op, 8.0]]})
        if op not in ("AutoContrast", "Equalize"):
            assert out.tobytes() != img.tobytes(), op


def test_bad_params_raise_clear_errors() -> None:
    img = _image(20, 20, 0)
    with pytest.raises(AugmentationParamsError, match="crop"):
        reapply(img, {"size": [8, 8]})
    with pytest.raises(AugmentationParamsError, match="does not fit"):
        reapply(img, {"crop": [0, 0, 30, 30], "size": [8, 8]})
    with pytest.raises(AugmentationParamsError, match="unknown RandAugment"):
        reapply(img, {"crop": [0, 0, 10, 10], "size": [8, 8], "ra": [["Nope", 1.0]]})


# --- compatibility: parameter sets and configs from before the multi-scale fields ------------------

# sample_params of the pre-multiscale default config on a fixed image (seed "golden/<i>") and sha256[:16] of
# the replayed view (stored size) and of the replay at 24 px bicubic, recorded with the code of that time
GOLDEN_V1 = [
    ({'crop': [2, 12, 46, 52], 'size': [32, 32], 'hf': 1, 'vf': 1, 'r90': 0, 'cj': [0.882, 1.28, 0.723, 0.036, 213]}, '22deeb64b0de8a41', '9cf2fc6d791c8f65'),
    ({'crop': [14, 2, 30, 27], 'size': [32, 32], 'hf': 0, 'vf': 1, 'r90': 2, 'ra': [['Solarize', 4.2], ['AutoContrast', 0.59]]}, '0aa02f2d3c55b1ad', '6b0c46f97506fdc2'),
    ({'crop': [3, 7, 41, 35], 'size': [32, 32], 'hf': 0, 'vf': 1, 'r90': 2, 'cj': [0.735, 0.872, 0.841, -0.049, 3102]}, 'eba2312a6d6fa11b', '4667fd43ba40927c'),
    ({'crop': [7, 20, 41, 34], 'size': [32, 32], 'hf': 1, 'vf': 0, 'r90': 2, 'ra': [['TranslateX', 6.02], ['AutoContrast', 2.79]], 'cj': [1.139, 1.205, 0.903, -0.039, 2310]}, 'd7302d0f929a341b', 'd139ea6ef8435c45'),
    ({'crop': [0, 0, 47, 54], 'size': [32, 32], 'hf': 1, 'vf': 0, 'r90': 0}, 'eb87172245165f68', 'f119a3fccfd5b8cc'),
    ({'crop': [0, 10, 34, 43], 'size': [32, 32], 'hf': 0, 'vf': 1, 'r90': 3, 'ra': [['ShearY', -8.41], ['Equalize', 1.0]], 'cj': [0.922, 1.188, 1.127, 0.033, 3201]}, '2ef9bb6cd1f0751e', '65a842d8d65baac0'),
]


def _golden_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _sha(img: Image.Image) -> str:
    import hashlib

    return hashlib.sha256(img.tobytes()).hexdigest()[:16]


def test_old_parameter_sets_replay_and_old_configs_sample_as_before() -> None:
    img = _golden_image()
    old_manifest_config = {k: v for k, v in AugmentationConfig(output_size=32).to_dict().items()
                           if k not in ("scale_sampling", "dihedral", "haze_p", "haze_strength", "haze_brightness",
                                        "haze_tint")}
    cfg = AugmentationConfig.from_dict(old_manifest_config)  # a manifest written before the new fields
    assert cfg == augmentation_preset("rsicd-v1", 32)
    for i, (params, stored_view, model_view_24) in enumerate(GOLDEN_V1):
        assert sample_params(img.width, img.height, random.Random(f"golden/{i}"), cfg) == params
        assert _sha(reapply(img, params)) == stored_view
        assert _sha(reapply(img, params, size=24, interpolation="bicubic")) == model_view_24


def test_uniform_multiscale_preset_reaches_the_same_zoom_with_fewer_deep_crops() -> None:
    log_cfg, uni_cfg = augmentation_preset("multiscale-rs", 32), augmentation_preset("multiscale-rs-uniform", 32)
    assert uni_cfg.scale == log_cfg.scale and uni_cfg.dihedral == "uniform" and uni_cfg.haze_p == log_cfg.haze_p

    def areas(cfg: AugmentationConfig) -> np.ndarray:
        rng = random.Random(5)
        return np.array([p["crop"][2] * p["crop"][3] / 200**2
                         for p in (sample_params(200, 200, rng, cfg) for _ in range(2000))])

    a_log, a_uni = areas(log_cfg), areas(uni_cfg)
    assert a_uni.min() < 0.15 and 0.45 < np.median(a_uni) < 0.65  # uniform in [0.1, 1]: median ~0.55
    assert (a_uni < 0.25).mean() < 0.25 < (a_log < 0.25).mean()  # ~17 % vs ~40 % deep zooms


def test_multiscale_preset_zooms_covers_the_dihedral_group_and_hazes() -> None:
    cfg = augmentation_preset("multiscale-rs", 32)
    assert DEFAULT_PRESET == "multiscale-rs" and cfg.scale == (0.1, 1.0)
    rng = random.Random(3)
    draws = [sample_params(200, 200, rng, cfg) for _ in range(2000)]
    areas = np.array([p["crop"][2] * p["crop"][3] / 200**2 for p in draws])
    assert areas.min() < 0.12 and areas.max() > 0.9 and 0.2 < np.median(areas) < 0.45  # log-uniform: median ~0.32
    elements = {(p["hf"], p["vf"], p["r90"]) for p in draws}
    assert len(elements) == 8 and all(p["vf"] == 0 for p in draws)
    counts = np.bincount([p["hf"] * 4 + p["r90"] for p in draws], minlength=8)
    assert counts.min() > 180  # ~250 each
    hazed = [p for p in draws if "hz" in p]
    assert 0.18 < len(hazed) / len(draws) < 0.32
    alpha, r, g, b = hazed[0]["hz"]
    assert 0.05 <= alpha <= 0.35 and 180 <= r <= g <= b <= 255  # bright, bluish-white airlight
    # old config: uniform area in [0.25, 1], no haze key ever
    old = [sample_params(200, 200, random.Random(i), AugmentationConfig(output_size=32)) for i in range(300)]
    assert not any("hz" in p for p in old)
    assert min(p["crop"][2] * p["crop"][3] for p in old) / 200**2 > 0.2


def test_haze_replays_exactly_and_brightens_towards_the_airlight() -> None:
    img = _golden_image()
    params = {"crop": [0, 0, 48, 64], "size": [32, 32], "hz": [0.3, 220, 230, 240]}
    stored = json.loads(json.dumps(params))
    a, b = np.asarray(reapply(img, stored), np.float32), np.asarray(reapply(img, params), np.float32)
    np.testing.assert_array_equal(a, b)
    plain = np.asarray(reapply(img, {"crop": [0, 0, 48, 64], "size": [32, 32]}), np.float32)
    expected = plain * 0.7 + np.array([220, 230, 240], np.float32) * 0.3
    assert np.abs(a - expected).max() <= 1.0 and a.std() < plain.std()
    with pytest.raises(AugmentationParamsError, match="haze"):
        reapply(img, {**params, "hz": [0.3, 220]})


def test_bad_augmentation_config_names_the_field() -> None:
    with pytest.raises(AugmentationParamsError, match="scale_sampling"):
        AugmentationConfig(scale_sampling="cubic")
    with pytest.raises(AugmentationParamsError, match="dihedral"):
        AugmentationConfig(dihedral="some")
    with pytest.raises(AugmentationParamsError, match="preset 'nope'"):
        augmentation_preset("nope")
    # a round trip through the manifest keeps the new fields
    cfg = augmentation_preset("multiscale-rs", 64)
    assert AugmentationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
