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
