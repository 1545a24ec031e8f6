"""Trainer on tiny generated reinforced shards: modes, batch assembly, resume determinism, DDP (gloo)."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsclip_core.data.augment import AugmentationConfig, reapply, sample_params
from rsclip_core.preprocess import PreprocessConfig
from rsclip_core.reinforce.shards import (
    SHARD_PATTERN,
    Manifest,
    ReinforcedSample,
    save_manifest,
    write_shard,
)
from rsclip_core.teachers.base import TeacherInfo
from rsclip_core.train.checkpoint import CheckpointError, load_trained_model, read_checkpoint
from rsclip_core.train.data import (
    ItemConfig,
    ReinforcedTrainSet,
    ResumableBatchSampler,
    ShardStore,
    TrainDataError,
)
from rsclip_core.train.config import TrainConfig, TrainConfigError
from rsclip_core.train.trainer import read_log, train

TEACHERS = {"ta": 16, "tb": 8}
MODEL = "tiny-mci-mct"


def make_reinforced_dataset(root: Path, n: int = 24, per_shard: int = 10, k: int = 2, s: int = 2, split: str = "train") -> Path:
    """A small reinforced dataset: coloured noise images, 5 real + ``s`` synthetic captions, random targets."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    aug = AugmentationConfig(output_size=40)
    words = ["river", "forest", "harbor", "farmland", "airport", "bridge"]
    samples = []
    for i in range(n):
        base = nprng.integers(0, 255, size=3)
        pixels = np.clip(base + nprng.normal(0, 30, size=(48, 48, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        word = words[i % len(words)]
        captions = [f"an aerial image of a {word} number {i} view {j}." for j in range(5)]
        syn = [f"a {word} seen from above, sample {i} variant {j}" for j in range(s)]

        def unit(rows: int, dim: int) -> np.ndarray:
            v = nprng.normal(size=(rows, dim)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        samples.append(
            ReinforcedSample(
                key=f"img{i:04d}",
                image_bytes=buf.getvalue(),
                image_ext="png",
                captions=captions,
                syn_captions=syn,
                aug_params=[sample_params(48, 48, rng, aug) for _ in range(k)],
                image_emb={t: unit(k, d) for t, d in TEACHERS.items()},
                text_emb={t: unit(5, d) for t, d in TEACHERS.items()},
                syn_text_emb={t: unit(s, d) for t, d in TEACHERS.items()},
                label=word,
                split=split,
            )
        )
    shards = [samples[i : i + per_shard] for i in range(0, n, per_shard)]
    for index, chunk in enumerate(shards):
        write_shard(root / SHARD_PATTERN.format(index), chunk)
    manifest = Manifest(
        teachers=[TeacherInfo(name=t, dim=d, kind="rsclip") for t, d in TEACHERS.items()],
        num_augmentations=k,
        num_syn_captions=s,
        captioner={"kind": "test"},
        seed=0,
        source={"path": "generated"},
        shard_size=per_shard,
        num_shards=len(shards),
        augmentation=aug.to_dict(),
    )
    save_manifest(root, manifest)
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add noise


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_reinforced_dataset(tmp_path_factory.mktemp("reinforced") / "ds")


def _config(dataset: Path, out: Path, **kwargs) -> TrainConfig:
    base = {
        "data": str(dataset), "model": MODEL, "output": str(out), "batch_size": 4, "steps": 4, "lr": 1e-3, "warmup_steps": 2,
        "checkpoint_every": 2, "pretrained_towers": False, "seed": 3,
    }
    base.update(kwargs)
    return TrainConfig(**base)


def test_store_indexes_all_samples_and_batches_are_disjoint(dataset: Path):
    store = ShardStore(dataset)
    assert len(store) == 24 and store.teachers == list(TEACHERS)
    assert store[5].key == "img0005" and len(store[23].captions) == 5
    # 3 global steps per epoch; the two ranks' batches of one step never overlap (iterators are endless)
    assert len(ResumableBatchSampler(24, 4, seed=1, rank=0, world_size=2)) == 3
    it0, it1 = iter(ResumableBatchSampler(24, 4, 1, 0, 2)), iter(ResumableBatchSampler(24, 4, 1, 1, 2))
    seen = set()
    for _ in range(3):
        a, b = next(it0), next(it1)
        assert {i for _, i in a}.isdisjoint({i for _, i in b})
        seen |= {i for _, i in a} | {i for _, i in b}
    assert seen == set(range(24))  # one epoch covers every sample once
    assert next(it0)[0][0] == 1  # then epoch 1 begins
    resumed = iter(ResumableBatchSampler(24, 4, 1, 0, 2, start=(0, 2)))
    fresh = iter(ResumableBatchSampler(24, 4, 1, 0, 2))
    next(fresh), next(fresh)
    assert next(resumed) == next(fresh)


def test_items_replay_stored_views_and_pick_matching_targets(dataset: Path):
    store = ShardStore(dataset)
    pre = PreprocessConfig(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bicubic")
    cfg = ItemConfig(preprocess=pre, teachers=tuple(TEACHERS))
    ds = ReinforcedTrainSet(store, cfg, seed=7)
    item = ds[(0, 3)]
    again = ds[(0, 3)]
    assert torch.equal(item["image"], again["image"]) and item["caption"] == again["caption"]
    sample = store[3]
    assert item["caption"] in sample.captions and item["syn_caption"] in sample.syn_captions
    j = sample.captions.index(item["caption"])
    assert torch.allclose(item["t_txt.ta"], torch.from_numpy(sample.text_emb["ta"][j]))
    s = sample.syn_captions.index(item["syn_caption"])
    assert torch.allclose(item["t_syn.tb"], torch.from_numpy(sample.syn_text_emb["tb"][s]))
    # the image target is the one of the replayed view
    k = next(k for k in range(len(sample.aug_params)) if torch.allclose(
        item["t_img.ta"], torch.from_numpy(sample.image_emb["ta"][k])))
    # ... produced at the student's 32 px with its interpolation in one resample of the stored crop
    params = {**sample.aug_params[k], "size": [32, 32]}
    view = np.asarray(reapply(sample.image(), params, interpolation="bicubic"), dtype=np.float32) / 255
    assert torch.allclose(item["image"], (torch.from_numpy(view).permute(2, 0, 1) - 0.5) / 0.25, atol=1e-5)
    twice = np.asarray(sample.augmented_view(k).resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    assert not torch.allclose(item["image"], (torch.from_numpy(twice).permute(2, 0, 1) - 0.5) / 0.25, atol=1e-3)
    assert item["image"].shape == (3, 32, 32)
    # different epochs make different choices for some samples
    assert any(ds[(0, i)]["caption"] != ds[(1, i)]["caption"] for i in range(10))


def test_refuses_test_split(tmp_path: Path):
    bad = make_reinforced_dataset(tmp_path / "test_split", n=4, per_shard=4, split="test")
    with pytest.raises(TrainDataError, match="refusing to train on test"):
        ShardStore(bad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "distil"}, "--mode"),
        ({"mode": "reinforced", "lam": 0.0}, "--mode clip"),
        ({"lam": 1.5}, "--lam"),
        ({"batch_size": 1}, "--batch-size"),
        ({"precision": "fp16"}, "--precision"),
    ],
)
def test_config_errors_name_the_option(tmp_path: Path, kwargs, message):
    with pytest.raises(TrainConfigError, match=message):
        _config(tmp_path, tmp_path / "out", **kwargs).resolved()


def test_clip_mode_ignores_teachers_and_synthetic(dataset: Path, tmp_path: Path):
    result = train(_config(dataset, tmp_path / "clip", mode="clip", steps=2), progress=False)
    log = read_log(result.log_file)
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["distill_real"] == 0.0 and "clip_syn" not in r for r in log)
    assert log[0]["clip_real"] > 0 and log[0]["samples_per_s"] > 0
    saved = read_checkpoint(result.final_weights)
    assert saved["model_name"] == MODEL and saved["step"] == 2


def test_reinforced_resume_matches_uninterrupted_run(dataset: Path, tmp_path: Path):
    """Killed after step 3 (last checkpoint at step 2) and resumed == one uninterrupted run."""
    extra = {"mode": "reinforced", "lam": 0.7, "steps": 5, "ema_decay": 0.9, "queue_size": 6, "accum_steps": 2}
    full = train(_config(dataset, tmp_path / "full", **extra), progress=False)
    cut_cfg = _config(dataset, tmp_path / "cut", **extra)
    stopped = train(cut_cfg, stop_after_steps=3, progress=False)
    assert stopped.step == 3 and stopped.last_checkpoint is None
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    with pytest.raises(CheckpointError, match="pass --resume"):
        train(cut_cfg, progress=False)
    with pytest.raises(CheckpointError, match="batch_size"):
        train(_config(dataset, tmp_path / "cut", **{**extra, "batch_size": 6}), resume=True, progress=False)
    resumed = train(cut_cfg, resume=True, progress=False)
    assert resumed.step == 5
    a, b = read_log(full.log_file), read_log(resumed.log_file)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]  # the redone step 3 replaced the killed run's line
    for key in ("loss", "clip_real", "distill_real", "clip_syn", "distill_syn", "lr", "logit_scale"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6, abs=1e-7), key
    assert all(r["distill_syn"] > 0 and r["clip_syn"] > 0 for r in a)
    wa, wb = read_checkpoint(full.final_weights)["model"], read_checkpoint(resumed.final_weights)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    model = load_trained_model(None, resumed.final_weights)
    assert model.name == MODEL


def test_online_mode_with_live_teachers_matches_stored_targets_shape(dataset: Path, tmp_path: Path):
    calls = {"views": 0, "texts": 0}

    class FakeTeacher:
        def __init__(self, name: str, dim: int) -> None:
            self.name, self.dim = name, dim
            self.proj = torch.randn(3, dim, generator=torch.Generator().manual_seed(dim))

        def encode_images(self, views):
            calls["views"] += 1
            assert all(isinstance(v, Image.Image) for v in views)
            means = torch.tensor(np.stack([np.asarray(v).reshape(-1, 3).mean(0) for v in views]), dtype=torch.float32)
            return torch.nn.functional.normalize(means @ self.proj, dim=-1).numpy()

        def encode_texts(self, texts):
            calls["texts"] += 1
            lengths = torch.tensor([[len(t), t.count("a"), 1.0] for t in texts], dtype=torch.float32)
            return torch.nn.functional.normalize(lengths @ self.proj, dim=-1).numpy()

    teachers = [FakeTeacher(n, d) for n, d in TEACHERS.items()]
    result = train(_config(dataset, tmp_path / "online", mode="online", steps=2), online_teachers=teachers,
                   progress=False)
    log = read_log(result.log_file)
    assert len(log) == 2 and all(r["distill_real"] > 0 for r in log)
    assert calls["views"] == 4 and calls["texts"] == 8  # 2 steps x 2 teachers (x real + synthetic)


DDP_SCRIPT = """
import json, sys
from rsclip_core.train.config import TrainConfig
from rsclip_core.train.trainer import init_distributed_from_env, train
import torch.distributed as dist
init_distributed_from_env("cpu")
cfg = TrainConfig(**json.loads(sys.argv[1]))
result = train(cfg, progress=False)
with open(f"{cfg.output}/rank{dist.get_rank()}.json", "w") as f:  # not stdout: ranks' lines interleave
    json.dump({"world": dist.get_world_size(), "step": result.step}, f)
dist.destroy_process_group()
"""


def test_ddp_two_processes_gloo(dataset: Path, tmp_path: Path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    cfg = {"data": str(dataset), "model": MODEL, "output": str(tmp_path / "ddp"), "batch_size": 4, "steps": 3,
               "warmup_steps": 1, "checkpoint_every": 3, "pretrained_towers": False, "mode": "reinforced", "lam": 0.5}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), json.dumps(cfg)],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text()) == {"world": 2, "step": 3}
    log = read_log(tmp_path / "ddp" / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[0]["samples_per_s"] > 0
    ckpt = read_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # 24 samples / (4 per rank x 2 ranks) = 3 steps = exactly one epoch
    assert ckpt["data_position"] == [1, 0]


def test_teacher_scales_default_to_each_teachers_own_temperature():
    from rsclip_core.train.trainer import resolve_teacher_scales

    infos = [TeacherInfo(name="ta", dim=16, kind="open_clip", logit_scale=22.5), TeacherInfo(name="tb", dim=8, kind="rsclip")]
    cfg = TrainConfig(data="d", model=MODEL, output="o")
    assert resolve_teacher_scales(cfg, infos, ["ta", "tb"]) == {"ta": 22.5, "tb": 100.0}  # tb records none: CLIP's 100
    cfg = TrainConfig(data="d", model=MODEL, output="o", teacher_logit_scale=50.0, teacher_logit_scales={"tb": 7.0})
    assert resolve_teacher_scales(cfg, infos, ["ta", "tb"]) == {"ta": 50.0, "tb": 7.0}


def test_run_config_records_resolved_teacher_scales(dataset, tmp_path):
    train(_config(dataset, tmp_path / "run", steps=1, teacher_logit_scales={"ta": 30.0}), progress=False)
    scales = json.loads((tmp_path / "run" / "train_config.json").read_text())["teacher_logit_scales"]
    assert scales == {"ta": 30.0, "tb": 100.0}


def test_offline_teacher_scale_is_read_as_a_multiplier():
    import math

    from rsclip_core.teachers.heads import offline_logit_scale

    assert offline_logit_scale({"logit_scale": math.log(22.6)}) == pytest.approx(22.6)
    assert offline_logit_scale({}) is None


def test_recorded_recipe_resumes_through_the_cli_like_an_uninterrupted_run(dataset: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """A run's train_config.json is a recipe: ``rsclip train --recipe it --resume`` from another folder continues
    the killed run exactly (relative paths were recorded absolute)."""
    from click.testing import CliRunner

    from rsclip_core.cli import train_cmd

    extra = {"mode": "reinforced", "lam": 0.7, "steps": 4, "queue_size": 4}
    full = train(_config(dataset, tmp_path / "full", **extra), progress=False)
    monkeypatch.chdir(tmp_path)
    train(_config(dataset, Path("cut"), **extra), stop_after_steps=3, progress=False)
    recorded = json.loads((tmp_path / "cut" / "train_config.json").read_text())
    assert recorded["output"] == str(tmp_path / "cut") and recorded["teacher_logit_scales"] == {"ta": 100.0, "tb": 100.0}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = CliRunner().invoke(train_cmd.train, ["--recipe", str(tmp_path / "cut" / "train_config.json"), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    a, b = read_log(full.log_file), read_log(tmp_path / "cut" / "train_log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "clip_real", "distill_real", "clip_syn", "distill_syn", "lr", "logit_scale"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6, abs=1e-7), key
    wa, wb = read_checkpoint(full.final_weights)["model"], read_checkpoint(tmp_path / "cut" / "model.pt")["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_checkpoint_formats(dataset: Path, tmp_path: Path):
    result = train(_config(dataset, tmp_path / "run", steps=2, ema_decay=0.5), progress=False)
    last, final = read_checkpoint(result.last_checkpoint), read_checkpoint(result.final_weights)
    assert list(last) == ["format", "version", "model_name", "image_size", "step", "data_position", "model", "ema",
                          "optimizer", "scheduler", "queues", "rng", "config", "data_fingerprint", "world_size"]
    assert list(final) == ["format", "version", "model_name", "image_size", "step", "model", "ema", "config"]
    assert last["format"] == final["format"] == "rsclip-train" and last["step"] == final["step"] == 2
    assert final["ema"] is None and all(torch.equal(final["model"][k], last["ema"][k]) for k in final["model"])
    assert last["config"] == final["config"] and last["config"]["ema_decay"] == 0.5 and len(last["rng"]) == 1
