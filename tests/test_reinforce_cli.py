"""``rsclip reinforce`` end to end with a tiny random-init open_clip teacher loaded from a local file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rsclip_core.cli.main import cli
from rsclip_core.reinforce.shards import iter_samples, load_manifest
from tests.test_reinforce import make_dataset

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("clip")
    (d / "rsclip_tiny_clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "rsclip_tiny_clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("rsclip_tiny_clip").state_dict(), d / "tiny.pt")
    return d / "tiny.pt"


def test_reinforce_cli_builds_resumes_and_reports(tmp_path: Path, tiny_clip: Path) -> None:
    make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = ["reinforce", str(tmp_path / "data" / "ds.json"), str(out), "--teacher",
            f"a=open_clip:rsclip_tiny_clip:{tiny_clip}", "--teacher", f"b=open_clip:rsclip_tiny_clip:{tiny_clip}",
            "-k", "2", "-s", "3", "--image-size", "32", "--shard-size", "5", "--neighbours", "3"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "Images skipped: 3" in res.output and "beyond the image" in res.output
    man = load_manifest(out)
    assert man.teacher_dims == {"a": 16, "b": 16} and man.teachers[0].kind == "open_clip"
    assert man.source["fingerprint"] and man.captioner["kind"] == "neighbour"
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 12 and report["images_skipped"] == 3
    s = next(iter_samples(out))
    assert s.image_emb["a"].shape == (2, 16) and np.allclose(s.image_emb["a"], s.image_emb["b"], atol=0.02)
    again = CliRunner().invoke(cli, args)  # everything done: resumes to a no-op
    assert again.exit_code == 0 and "wrote 0 shards" in again.output and "3 shards were already done" in again.output


def test_reinforce_cli_errors(tmp_path: Path, tiny_clip: Path) -> None:
    res = CliRunner().invoke(cli, ["reinforce", str(tmp_path / "nope.json"), str(tmp_path / "o"),
                                   "--teacher", f"open_clip:rsclip_tiny_clip:{tiny_clip}"])
    assert res.exit_code != 0 and "Error:" in res.output and "nope.json" in res.output
    make_dataset(tmp_path / "d", bad=False)
    res = CliRunner().invoke(cli, ["reinforce", str(tmp_path / "d" / "ds.json"), str(tmp_path / "o"),
                                   "--teacher", "open_clip:rsclip_tiny_clip:/no/such.pt"])
    assert res.exit_code != 0 and "/no/such.pt" in res.output
    res = CliRunner().invoke(cli, ["reinforce", str(tmp_path / "d" / "ds.json"), str(tmp_path / "o"),
                                   "--teacher", f"open_clip:rsclip_tiny_clip:{tiny_clip}", "--shard", "2/2"])
    assert res.exit_code != 0 and "--shard" in res.output


def test_reinforce_cli_merges_an_extra_class_folder_with_the_new_defaults(tmp_path: Path, tiny_clip: Path) -> None:
    from PIL import Image

    from rsclip_core.data.augment import AugmentationConfig, augmentation_preset

    make_dataset(tmp_path / "data", n=6, bad=False)
    for cls in ("airplane", "airport"):
        (tmp_path / "nwpu" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (30, 30), (40 * i, 120, 200)).save(tmp_path / "nwpu" / cls / f"{cls}_{i:03d}.jpg")
    out = tmp_path / "out"
    base = ["reinforce", str(tmp_path / "data" / "ds.json"), str(out), "--teacher",
            f"a=open_clip:rsclip_tiny_clip:{tiny_clip}", "-k", "2", "-s", "3", "--image-size", "32",
            "--neighbours", "3", "--agreement", "min", "--min-agreement", "0"]
    res = CliRunner().invoke(cli, base + ["--extra-source", f"nwpu={tmp_path / 'nwpu'}"])
    assert res.exit_code == 0, res.output
    man = load_manifest(out)
    assert [s["name"] for s in man.source["sources"]] == ["", "nwpu"] and man.source["num_records"] == 10
    assert AugmentationConfig.from_dict(man.augmentation) == augmentation_preset("multiscale-rs", 32)
    assert man.captioner["agreement"] == "min" and len(man.captioner["templates"]) > 5  # varied label wording
    samples = {s.key: s for s in iter_samples(out)}
    plane = samples["nwpu-airplane_airplane_000"]
    assert plane.label == "airplane" and len(plane.syn_captions) == 3
    assert any("airplane" in c for c in plane.syn_captions)  # its scene-label caption
    bad = CliRunner().invoke(cli, base + ["--extra-source", "nwpu"])
    assert bad.exit_code != 0 and "--extra-source" in bad.output
    old = CliRunner().invoke(cli, base[:2] + [str(tmp_path / "old")] + base[3:] + ["--augmentation", "rsicd-v1"])
    assert old.exit_code == 0, old.output
    assert AugmentationConfig.from_dict(load_manifest(tmp_path / "old").augmentation) == AugmentationConfig(output_size=32)
