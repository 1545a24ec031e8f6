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
    RANDAUGMENT_OPS,
    AugmentationConfig,
    AugmentationParamsError,
    augment,
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
