"""Retrieval / zero-shot metrics on hand-built similarity matrices (torch-free)."""

from __future__ import annotations

import numpy as np
import pytest

from rsclip_core.evaluate.metrics import (
    MetricInputError,
    ensemble_class_embeddings,
    retrieval_markdown,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_markdown,
    zero_shot_metrics,
)


def _perfect(n_images: int, per_image: int = 5) -> tuple[np.ndarray, np.ndarray]:
    owners = np.repeat(np.arange(n_images), per_image)
    sim = np.where(owners[None, :] == np.arange(n_images)[:, None], 1.0, 0.0)
    return sim, owners


def test_perfect_matrix_scores_100():
    sim, owners = _perfect(12)
    result = retrieval_metrics(sim, owners)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"):
        assert result[key] == pytest.approx(100.0)
    assert result["n_images"] == 12 and result["n_texts"] == 60


def test_constant_matrix_scores_exactly_at_chance():
    sim = np.zeros((12, 60))
    owners = np.repeat(np.arange(12), 5)
    result = retrieval_metrics(sim, owners)
    assert result["i2t_r1"] == pytest.approx(100 * 5 / 60)  # 5 right captions among 60 tied ones
    assert result["t2i_r1"] == pytest.approx(100 / 12)
    assert result["t2i_r10"] == pytest.approx(100 * 10 / 12)
    # i2t R@5: 1 - P(no right caption among 5 random draws from 55 wrong + 5 right)
    p_miss = np.prod([(55 - j) / (60 - j) for j in range(5)])
    assert result["i2t_r5"] == pytest.approx(100 * (1 - p_miss))


def test_duplicate_caption_on_two_images_counts_half():
    # images 0 and 1 each have a caption with the same text (identical scores); image 2 is clear
    owners = np.array([0, 1, 2])
    sim = np.array([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1], [0.1, 0.1, 0.8]])
    result = retrieval_metrics(sim, owners, ks=(1, 2))
    assert result["i2t_r1"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert result["t2i_r1"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert result["i2t_r2"] == 100.0 and result["t2i_r2"] == 100.0
    # reversing the item order changes nothing (no order-dependent tie-breaking)
    flipped = retrieval_metrics(sim[::-1, ::-1], 2 - owners[::-1], ks=(1, 2))
    assert flipped["mR"] == pytest.approx(result["mR"])


def test_hand_built_ranks_and_any_caption_counts():
    # 3 images, 2 captions each: texts 0,1 -> img0; 2,3 -> img1; 4,5 -> img2
    owners = np.array([0, 0, 1, 1, 2, 2])
    sim = np.array(
        [
            # img0: best own caption (t1=0.8) beaten by t4=0.9 only -> i2t rank 1
            [0.1, 0.8, 0.2, 0.3, 0.9, 0.0],
            # img1: own caption t3=0.95 is the best -> rank 0
            [0.5, 0.4, 0.1, 0.95, 0.2, 0.3],
            # img2: own captions 0.1/0.2, beaten by t0,t1,t2,t3 (0.3..0.6) -> rank 4
            [0.6, 0.5, 0.4, 0.3, 0.1, 0.2],
        ]
    )
    i2t, t2i = retrieval_ranks(sim, owners)
    assert i2t.tolist() == [1, 0, 4]
    # t2i: column-wise. t0: img0=0.1 vs 0.5, 0.6 -> rank 2; t1: 0.8 best -> 0; t2: img1=0.1 vs 0.2,0.4 -> 2
    # t3: img1=0.95 -> 0; t4: img2=0.1 vs 0.9,0.2 -> 2; t5: img2=0.2 vs 0.0,0.3 -> 1
    assert t2i.tolist() == [2, 0, 2, 0, 2, 1]
    result = retrieval_metrics(sim, owners, ks=(1, 2))
    assert result["i2t_r1"] == pytest.approx(100 / 3)
    assert result["i2t_r2"] == pytest.approx(200 / 3)
    assert result["t2i_r1"] == pytest.approx(200 / 6)
    assert result["t2i_r2"] == pytest.approx(300 / 6)
    assert result["mR"] == pytest.approx(np.mean([100 / 3, 200 / 3, 200 / 6, 300 / 6]))


def test_random_matrix_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    n_images, per = 40, 5
    owners = rng.permutation(np.repeat(np.arange(n_images), per))  # captions in any order
    sim = rng.normal(size=(n_images, n_images * per))
    result = retrieval_metrics(sim, owners)
    # reference: sort each row / column and look for the first correct item
    for k in (1, 5, 10):
        i2t_hits = [bool(set(np.argsort(-sim[i])[:k]) & set(np.flatnonzero(owners == i))) for i in range(n_images)]
        t2i_hits = [owners[t] in np.argsort(-sim[:, t])[:k] for t in range(len(owners))]
        assert result[f"i2t_r{k}"] == pytest.approx(100 * np.mean(i2t_hits))
        assert result[f"t2i_r{k}"] == pytest.approx(100 * np.mean(t2i_hits))


def test_rsicd_sized_protocol_shapes():
    rng = np.random.default_rng(1)
    owners = np.repeat(np.arange(1093), 5)
    sim = rng.normal(size=(1093, 5465)).astype(np.float32)
    result = retrieval_metrics(sim, owners)
    assert result["n_images"] == 1093 and result["n_texts"] == 5465
    # chance: i2t R@1 ~ 5/5465 per caption -> ~0.5 %, t2i R@1 ~ 1/1093
    assert result["i2t_r1"] < 3 and result["t2i_r1"] < 1


@pytest.mark.parametrize(
    "sim, owners, message",
    [
        (np.zeros((2, 3)), np.array([0, 1]), "text_to_image"),
        (np.zeros((2, 3)), np.array([0, 0, 0]), "image 1 has no caption"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), "must lie in"),
        (np.full((2, 2), np.nan), np.array([0, 1]), "NaN"),
        (np.zeros(4), np.array([0, 1, 2, 3]), "2-D"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer"),
    ],
)
def test_retrieval_rejects_bad_input(sim, owners, message):
    with pytest.raises(MetricInputError, match=message):
        retrieval_metrics(sim, owners)


def test_zero_shot_hand_built():
    names = ["a", "b", "c", "d", "e", "f"]
    logits = np.array(
        [
            [9, 1, 1, 1, 1, 1],  # true a -> a (top1)
            [1, 9, 8, 7, 6, 5],  # true c -> b, c second (top5 hit)
            [9, 8, 7, 6, 5, 1],  # true f -> a, f last (top5 miss)
            [1, 1, 1, 1, 1, 1],  # true d, all 6 tied -> expected top-1 1/6, top-5 5/6
        ],
        dtype=float,
    )
    labels = np.array([0, 2, 5, 3])
    result = zero_shot_metrics(logits, labels, names)
    assert result["top1"] == pytest.approx(100 * (1 + 1 / 6) / 4)
    assert result["top5"] == pytest.approx(100 * (2 + 5 / 6) / 4)
    assert result["per_class"]["a"] == 100.0 and result["per_class"]["c"] == 0.0
    assert result["per_class"]["d"] == pytest.approx(100 / 6)
    assert result["per_class"]["b"] is None  # no sample of class b
    assert result["mean_per_class"] == pytest.approx((100 + 0 + 100 / 6 + 0) / 4)
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 4
    assert confusion[0, 0] == 1 and confusion[2, 1] == 1 and confusion[5, 0] == 1
    assert confusion[3].sum() == 1
    table = zero_shot_markdown({"model": result})
    assert f"| model | {100 * (1 + 1 / 6) / 4:.2f} |" in table


def test_zero_shot_top5_with_fewer_classes_and_bad_input():
    logits = np.array([[0.1, 0.9], [0.8, 0.2]])
    result = zero_shot_metrics(logits, np.array([0, 0]), ["x", "y"])
    assert result["top1"] == 50.0 and result["top5"] == 100.0 and result["top5_k"] == 2
    with pytest.raises(MetricInputError, match="class_names"):
        zero_shot_metrics(logits, np.array([0, 0]), ["x"])
    with pytest.raises(MetricInputError, match="labels"):
        zero_shot_metrics(logits, np.array([0, 2]), ["x", "y"])


def test_prompt_ensemble():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0]])
    classes = ensemble_class_embeddings([a, b])
    assert np.allclose(classes[0], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert np.allclose(classes[1], [1.0, 0.0])


def test_retrieval_markdown():
    sim, owners = _perfect(3)
    table = retrieval_markdown({"tiny": retrieval_metrics(sim, owners)})
    assert table.splitlines()[0].startswith("| | I→T R@1")
    assert "| tiny | 100.00 |" in table
