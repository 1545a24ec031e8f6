"""Reinforced (CLIP + multi-teacher KL) loss: exactness against a direct reference and basic properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsclip_core.train.loss import NegativeQueue, kl_rows, reinforced_loss


def _unit(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


def _reference(img, txt, scale, teachers, lam):
    """Loops and explicit formulas, no shared code with the implementation."""
    n = img.shape[0]

    def softmax(row):
        e = [math.exp(v - max(row)) for v in row]
        s = sum(e)
        return [v / s for v in e]

    def sim(a, b, s):
        return [[s * float(a[i] @ b[j]) for j in range(b.shape[0])] for i in range(a.shape[0])]

    s_i2t = sim(img, txt, scale)
    s_t2i = sim(txt, img, scale)
    ce = 0.0
    for i in range(n):
        ce += -math.log(softmax(s_i2t[i])[i]) - math.log(softmax(s_t2i[i])[i])
    clip = ce / (2 * n)
    kd_terms = []
    for t_img, t_txt, t_scale in teachers:
        t_i2t = sim(t_img, t_txt, t_scale)
        t_t2i = sim(t_txt, t_img, t_scale)
        kl = 0.0
        for teacher_rows, student_rows in ((t_i2t, s_i2t), (t_t2i, s_t2i)):
            for i in range(n):
                p, q = softmax(teacher_rows[i]), softmax(student_rows[i])
                kl += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q)) / n
        kd_terms.append(kl / 2)
    kd = sum(kd_terms) / len(kd_terms)
    return (1 - lam) * clip + lam * kd, clip, kd


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_matches_direct_reference(lam):
    img, txt = _unit(6, 8, seed=0), _unit(6, 8, seed=1)
    t1 = (_unit(6, 5, seed=2), _unit(6, 5, seed=3), 50.0)
    t2 = (_unit(6, 12, seed=4), _unit(6, 12, seed=5), 100.0)
    parts = reinforced_loss(
        img, txt, 20.0, {"a": t1[0], "b": t2[0]}, {"a": t1[1], "b": t2[1]}, {"a": 50.0, "b": 100.0}, lam
    )
    total, clip, kd = _reference(img, txt, 20.0, [t1, t2], lam)
    assert float(parts.total) == pytest.approx(total, rel=1e-5, abs=1e-6)
    if lam < 1:
        assert float(parts.clip) == pytest.approx(clip, rel=1e-5)
    if lam > 0:
        assert float(parts.distill) == pytest.approx(kd, rel=1e-5)


def test_distillation_is_zero_when_student_equals_teacher():
    img, txt = _unit(8, 16, seed=10), _unit(8, 16, seed=11)
    parts = reinforced_loss(img, txt, 30.0, {"t": img.clone()}, {"t": txt.clone()}, {"t": 30.0}, lam=1.0)
    assert float(parts.distill) == pytest.approx(0.0, abs=1e-6)
    assert float(parts.total) == pytest.approx(0.0, abs=1e-6)
    # a different teacher scale makes the distributions differ -> positive KL
    parts = reinforced_loss(img, txt, 30.0, {"t": img}, {"t": txt}, {"t": 60.0}, lam=1.0)
    assert float(parts.distill) > 1e-3


def test_kl_is_nonnegative_and_asymmetric():
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    assert float(kl_rows(a, b)) > 0 and float(kl_rows(b, a)) > 0
    assert float(kl_rows(a, b)) != pytest.approx(float(kl_rows(b, a)))


def test_gradient_reaches_both_towers_and_logit_scale():
    torch.manual_seed(0)
    image_tower = torch.nn.Linear(10, 6)
    text_tower = torch.nn.Embedding(20, 6)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    img = F.normalize(image_tower(torch.randn(5, 10)), dim=-1)
    txt = F.normalize(text_tower(torch.arange(5)), dim=-1)
    teacher_i, teacher_t = _unit(5, 3, seed=1), _unit(5, 3, seed=2)
    parts = reinforced_loss(img, txt, log_scale.exp(), {"t": teacher_i}, {"t": teacher_t}, {"t": 100.0}, lam=0.5)
    parts.total.backward()
    assert image_tower.weight.grad.abs().sum() > 0
    assert text_tower.weight.grad.abs().sum() > 0
    assert log_scale.grad is not None and log_scale.grad.abs() > 0


def test_extra_negatives_widen_logits_and_change_loss():
    img, txt = _unit(4, 8, seed=0), _unit(4, 8, seed=1)
    t_img, t_txt = _unit(4, 6, seed=2), _unit(4, 6, seed=3)
    queue = NegativeQueue(6, ["img", "txt", "t_img.t", "t_txt.t"])
    base = reinforced_loss(img, txt, 10.0, {"t": t_img}, {"t": t_txt}, {"t": 50.0}, lam=0.5)
    queue.push({"img": _unit(4, 8, seed=4), "txt": _unit(4, 8, seed=5), "t_img.t": _unit(4, 6, seed=6),
                "t_txt.t": _unit(4, 6, seed=7)})
    queue.push({"img": _unit(4, 8, seed=8), "txt": _unit(4, 8, seed=9), "t_img.t": _unit(4, 6, seed=10),
                "t_txt.t": _unit(4, 6, seed=11)})
    assert len(queue) == 6  # capped
    wide = reinforced_loss(
        img, txt, 10.0, {"t": t_img}, {"t": t_txt}, {"t": 50.0}, lam=0.5,
        extra_image=queue.get("img"), extra_text=queue.get("txt"),
        extra_teacher_image={"t": queue.get("t_img.t")}, extra_teacher_text={"t": queue.get("t_txt.t")},
    )
    assert float(wide.clip) > float(base.clip)  # more negatives -> harder contrastive task
    # the CLIP part equals cross-entropy over the widened candidate set
    cand_txt = torch.cat([txt, queue.get("txt")])
    cand_img = torch.cat([img, queue.get("img")])
    labels = torch.arange(4)
    expected = (F.cross_entropy(10 * img @ cand_txt.T, labels) + F.cross_entropy(10 * txt @ cand_img.T, labels)) / 2
    assert float(wide.clip) == pytest.approx(float(expected), rel=1e-5)
    state = queue.state_dict()
    other = NegativeQueue(6, queue.keys)
    other.load_state_dict(state)
    assert torch.equal(other.get("img"), queue.get("img"))


def test_rejects_bad_lambda_and_missing_teacher_parts():
    img, txt = _unit(3, 4, seed=0), _unit(3, 4, seed=1)
    with pytest.raises(ValueError, match="lambda"):
        reinforced_loss(img, txt, 1.0, {}, {}, {}, lam=1.5)
    with pytest.raises(ValueError, match="teacher"):
        reinforced_loss(img, txt, 1.0, {}, {}, {}, lam=0.5)
    with pytest.raises(ValueError, match="logit scale missing"):
        reinforced_loss(img, txt, 1.0, {"t": img}, {"t": txt}, {}, lam=0.5)


def _reference_prob_mix(img, txt, scale, teachers):
    """KL to the mean of the teachers' row softmaxes (MobileCLIP2), loops only."""
    def softmax(row):
        e = [math.exp(v - max(row)) for v in row]
        return [v / sum(e) for v in e]

    def sim(a, b, s):
        return [[s * float(a[i] @ b[j]) for j in range(b.shape[0])] for i in range(a.shape[0])]

    n = img.shape[0]
    total = 0.0
    for direction in (0, 1):
        student = sim(img, txt, scale) if direction == 0 else sim(txt, img, scale)
        mixes = []
        for t_img, t_txt, t_scale in teachers:
            rows = sim(t_img, t_txt, t_scale) if direction == 0 else sim(t_txt, t_img, t_scale)
            mixes.append([softmax(r) for r in rows])
        for i in range(n):
            p = [sum(m[i][j] for m in mixes) / len(mixes) for j in range(n)]
            q = softmax(student[i])
            total += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q)) / n
    return total / 2


def test_probability_mix_matches_reference_and_differs_from_kl_mean():
    img, txt = _unit(6, 8, seed=0), _unit(6, 8, seed=1)
    t1 = (_unit(6, 5, seed=2), _unit(6, 5, seed=3), 50.0)
    t2 = (_unit(6, 12, seed=4), _unit(6, 12, seed=5), 10.0)
    args = (img, txt, 20.0, {"a": t1[0], "b": t2[0]}, {"a": t1[1], "b": t2[1]}, {"a": 50.0, "b": 10.0})
    mixed = reinforced_loss(*args, lam=1.0, teacher_mix="probs")
    assert float(mixed.distill) == pytest.approx(_reference_prob_mix(img, txt, 20.0, [t1, t2]), rel=1e-5)
    per_kl = reinforced_loss(*args, lam=1.0, teacher_mix="kl")
    assert float(mixed.distill) < float(per_kl.distill)  # KL is convex: the mixture's KL <= the mean KL
    assert set(mixed.per_teacher) == {"a", "b"}
    # one teacher: both mixes are the same loss; lam=1 has no CLIP term
    one = ({"a": t1[0]}, {"a": t1[1]}, {"a": 50.0})
    assert float(reinforced_loss(img, txt, 20.0, *one, lam=1.0, teacher_mix="probs").total) == pytest.approx(
        float(reinforced_loss(img, txt, 20.0, *one, lam=1.0).total), rel=1e-6)
    with pytest.raises(ValueError, match="teacher_mix"):
        reinforced_loss(*args, lam=1.0, teacher_mix="geometric")
