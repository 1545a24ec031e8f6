"""Offline-teacher fitting on cached features: caching/resume, head fitting, checkpoints, CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rsclip_core.data.readers import ImageTextRecord, read_karpathy_json
from rsclip_core.teachers.fit import EvalData, FitConfig, FitData, cached_image_features, fit_heads, retrieval_from_features
from rsclip_core.teachers.heads import HeadConfig, TeacherFitError, load_teacher_checkpoint, save_teacher_checkpoint
from tests.conftest import shared_data_path


def _synthetic(n: int, seed: int, a: np.ndarray, b: np.ndarray, views: int = 2):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, a.shape[0]))
    image_views = [(z @ a + 0.3 * rng.normal(size=(n, a.shape[1]))).astype(np.float32) for _ in range(views)]
    owner = np.repeat(np.arange(n), 2)
    caps = (z[owner] @ b + 0.3 * rng.normal(size=(2 * n, b.shape[1]))).astype(np.float32)
    return image_views, caps, owner


def test_fit_heads_learns_alignment_and_checkpoint_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 40)), rng.normal(size=(8, 24))
    views, caps, owner = _synthetic(300, 1, a, b)
    vviews, vcaps, vowner = _synthetic(60, 2, a, b, views=1)
    val = EvalData(vviews[0], vcaps, vowner)
    labels = rng.normal(size=(2, 3, 24)).astype(np.float32)
    data = FitData(views, caps, owner, labels, (np.arange(300) % 3 - 1).astype(np.int64))
    cfg = FitConfig(embed_dim=16, image_head=HeadConfig("mlp", 32, 0.0), text_head=HeadConfig("linear"),
                    epochs=12, batch_size=50, lr=3e-3)
    heads, info = fit_heads(data, val, cfg, log=lambda s: None)
    first = info["history"][0]["val_mR"]
    assert info["val"]["mR"] > 60 and info["val"]["mR"] >= first
    assert retrieval_from_features(heads, val)["mR"] == pytest.approx(info["val"]["mR"])
    ckpt = save_teacher_checkpoint(tmp_path / "t.pt", heads, image_tower="efficientnet_lite0",
                                   text_tower="all-MiniLM-L6-v2", image_size=224, cfg=cfg, fit_info=info)
    payload, loaded = load_teacher_checkpoint(ckpt)
    assert payload["embed_dim"] == 16 and payload["image_in_dim"] == 40 and payload["text_in_dim"] == 24
    assert retrieval_from_features(loaded, val)["mR"] == pytest.approx(info["val"]["mR"])
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(TeacherFitError, match="junk.pt"):
        load_teacher_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_teacher_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TeacherFitError, match="head kind"):
        from rsclip_core.teachers.heads import build_head

        build_head(4, 4, HeadConfig("conv"))


def test_feature_cache_resumes_per_chunk(tmp_path: Path) -> None:
    recs = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 20, 3), i * 30, np.uint8)).save(p)
        recs.append(ImageTextRecord(f"k{i}", p, ["c"]))
    (tmp_path / "bad.png").write_bytes(b"x")
    recs.append(ImageTextRecord("bad", tmp_path / "bad.png", ["c"]))
    calls = []

    def tower(x):
        calls.append(x.shape[0])
        return x.mean(dim=(2, 3)).numpy() * np.array([1.0, 2.0, 3.0], np.float32)

    class Boom(RuntimeError):
        pass

    def failing(x):
        if len(calls) >= 2:
            raise Boom()
        return tower(x)

    with pytest.raises(Boom):
        cached_image_features(recs, "fake", tmp_path / "cache", "t", image_size=16, batch_size=3, chunk_size=3,
                              progress=False, tower=failing)
    assert len(list((tmp_path / "cache" / "fake-16").glob(".*chunk*.npz"))) == 2  # two chunks kept
    calls.clear()
    feats = cached_image_features(recs, "fake", tmp_path / "cache", "t", image_size=16, batch_size=3,
                                  chunk_size=3, progress=False, tower=tower)
    assert calls == [1]  # only the last chunk was recomputed (k6; its bad image is skipped)
    assert feats.shape == (8, 3) and np.all(feats[-1] == 0) and feats[3, 2] > feats[1, 2]
    again = cached_image_features(recs, "fake", tmp_path / "cache", "t", image_size=16, progress=False,
                                  tower=lambda x: 1 / 0)
    assert np.array_equal(again, feats)


def test_teacher_cli_reports_bad_input(tmp_path: Path) -> None:
    from rsclip_core.cli.main import cli

    res = CliRunner().invoke(cli, ["teacher", "eval", str(tmp_path / "none.pt"), "--rsicd",
                                   str(tmp_path / "x.json"), "--cache", str(tmp_path)])
    assert res.exit_code != 0 and "Error:" in res.output


@pytest.mark.slow
def test_offline_teacher_on_real_towers(tmp_path: Path) -> None:
    """Real packaged towers + random heads: embeddings have the recorded dim and are normalised."""
    from rsclip_core.teachers.offline import OfflineTeacher

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 1280)), rng.normal(size=(8, 384))
    views, caps, owner = _synthetic(64, 1, a, b, views=1)
    cfg = FitConfig(embed_dim=32, epochs=1, batch_size=32)
    heads, info = fit_heads(FitData(views, caps, owner), EvalData(views[0][:16], caps[:32], owner[:32]), cfg,
                            log=lambda s: None)
    ckpt = save_teacher_checkpoint(tmp_path / "t.pt", heads, image_tower="efficientnet_lite0",
                                   text_tower="all-MiniLM-L6-v2", image_size=224, cfg=cfg, fit_info=info)
    rsicd = read_karpathy_json(shared_data_path("rsicd", "dataset_rsicd.json"), splits=["val"])[:4]
    t = OfflineTeacher(ckpt)
    e = t.encode_images([Image.open(r.image_path).convert("RGB") for r in rsicd])
    assert e.shape == (4, 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert t.encode_texts(rsicd[0].captions).shape == (5, 32)


def test_teacher_feature_cache_defaults_to_the_work_dir(tmp_path: Path, monkeypatch) -> None:
    from rsclip_core.cli.main import cli
    from rsclip_core.cli.teacher_cmd import _feature_cache

    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path / "env"))
    assert _feature_cache(None, None) == tmp_path / "env" / "teacher_features"
    assert _feature_cache(None, tmp_path / "flag") == tmp_path / "flag" / "teacher_features"
    assert _feature_cache(tmp_path / "mine", tmp_path / "flag") == tmp_path / "mine"
    for command in ("fit", "eval"):
        res = CliRunner().invoke(cli, ["teacher", command, "--help"])
        assert "--work-dir" in res.output and "/work/cache" not in res.output
