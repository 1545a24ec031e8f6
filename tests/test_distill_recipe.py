"""The recipe "distil RemoteCLIP ViT-L-14 + GeoRSCLIP ViT-H-14 into a MobileCLIP2-S0 student" end to end,
at tiny scale: tiny stand-in open_clip architectures (a ViT and a ResNet teacher in two public layouts,
an MCi-like FastViT student), random weights, a 12-image dataset.

reinforce (open_clip teachers from local files mixed with an offline teacher, each one's temperature
recorded) -> train the
open_clip student from its checkpoint with the recipe's loss -> reparameterize + export -> the
exported directory reproduces the trained torch model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("open_clip")

from rsclip_core.cli.main import cli  # noqa: E402
from rsclip_core.reinforce.shards import load_manifest  # noqa: E402
from tests.test_checkpoints import reference_model, register_tiny_configs, save_layout  # noqa: E402
from tests.test_reinforce import make_dataset  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "distill" / "mobileclip2-s0-rs-teachers.yaml"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_distill_recipe_runs_end_to_end_at_tiny_scale(tmp_path: Path):
    from rsclip_core.export import export_model
    from rsclip_core.inference import load_model
    from rsclip_core.models import create_model
    from rsclip_core.train.checkpoint import model_weights, read_checkpoint
    from rsclip_core.train.config import TrainConfig
    from rsclip_core.train.trainer import train

    register_tiny_configs(tmp_path / "configs")
    # stand-ins: "RemoteCLIP ViT-L-14" (plain state dict), "GeoRSCLIP ViT-H-14" (open_clip training checkpoint)
    remote = save_layout(reference_model("RsTiny-ViT", seed=1), tmp_path / "remote.pt", "state_dict")
    geo_model = reference_model("RsTiny-RN", seed=2)
    with torch.no_grad():
        geo_model.logit_scale.fill_(float(np.log(77.0)))
    geo = save_layout(geo_model, tmp_path / "geo.pt", "open_clip_train")
    # the student's init file in open_clip's training layout ("module." keys): the trainer reads it as a public file
    student_init = save_layout(reference_model("RsTiny-MCi", seed=3), tmp_path / "mc2s0.pt", "open_clip_train")

    from tests.test_export_teacher import _fake_fit  # an offline teacher (packaged towers + fitted heads)

    _fake_fit(tmp_path / "lite0.pt")  # fitted temperature: log-scale 3.0
    make_dataset(tmp_path / "data", bad=False)
    shards = tmp_path / "reinforced"
    result = CliRunner().invoke(cli, [
        "reinforce", str(tmp_path / "data" / "ds.json"), str(shards),
        "--teacher", f"remoteclip=open_clip:RsTiny-ViT:{remote}", "--teacher", f"georsclip=open_clip:RsTiny-RN:{geo}",
        "--teacher", f"lite0=offline:{tmp_path / 'lite0.pt'}",
        "-k", "2", "-s", "2", "--image-size", "64", "--shard-size", "6", "--neighbours", "3"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(shards)
    scales = {t.name: t.logit_scale for t in manifest.teachers}
    # each teacher's own temperature, open_clip and offline teachers mixed
    assert scales == pytest.approx({"remoteclip": 42.0, "georsclip": 77.0, "lite0": float(np.exp(3.0))}, rel=1e-4)

    cfg = TrainConfig.from_recipe(
        RECIPE, data=str(shards), output=str(tmp_path / "run"), model="open_clip:RsTiny-MCi",
        init_checkpoint=str(student_init), steps=2, batch_size=4, warmup_steps=1, lr=1e-4, num_workers=0,
        device="cpu", checkpoint_every=2, image_size=64,
    )
    assert cfg.mode == "reinforced" and cfg.lam == pytest.approx(0.7)
    run = train(cfg, progress=False)
    assert run.final_weights is not None
    trained = model_weights(read_checkpoint(run.final_weights))
    init = {k.removeprefix("module."): v for k, v in torch.load(student_init, weights_only=True)["state_dict"].items()}
    # started from the checkpoint (not random init) and moved by the reinforced loss
    weights = [k for k in init if "running_" not in k and "num_batches" not in k]
    assert set(init) == set(trained)
    moved = [k for k in weights if not torch.equal(init[k], trained[k])]
    assert moved and all(torch.allclose(init[k], trained[k], atol=0.05) for k in weights)

    out = export_model("open_clip:RsTiny-MCi", tmp_path / "exported", checkpoint=run.final_weights)
    meta = json.loads((out / "rsclip.json").read_text())
    assert meta["model_name"] == "open_clip:RsTiny-MCi"
    student = create_model("open_clip:RsTiny-MCi", run.final_weights).eval()
    loaded = load_model(out)
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, loaded.image_size, loaded.image_size)).astype(np.float32)
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = student.encode_image((torch.from_numpy(images) - mean) / std).numpy()
    np.testing.assert_allclose(loaded.encode_images(images), expected, atol=1e-4)
