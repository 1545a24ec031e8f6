"""`rsclip eval` on an exported model dir (torch-free) and on a trainer checkpoint; `rsclip train` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from rsclip_core.cli.main import cli

COLOURS = {"red": (230, 20, 20), "green": (20, 210, 30), "blue": (25, 30, 220)}


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colours")
    images = root / "images"
    images.mkdir()
    entries = []
    for name, rgb in COLOURS.items():
        for i in range(2):
            filename = f"{name}{i}.png"
            shade = tuple(max(0, c - 15 * i) for c in rgb)
            Image.new("RGB", (40, 36), shade).save(images / filename)
            sentences = [{"raw": f"a {name} image ."}, {"raw": f"{name} view"}, {"raw": f"an aerial {name}"}]
            entries.append({"filename": filename, "split": "test", "sentences": sentences})
    (root / "captions.json").write_text(json.dumps({"dataset": "colours", "images": entries}))
    folder = root / "scenes"
    for letter, (name, rgb) in zip("abc", COLOURS.items()):
        (folder / f"{letter}{name.capitalize()}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (30, 30), tuple(max(0, c - 10 * i) for c in rgb)).save(folder / f"{letter}{name.capitalize()}" / f"{i}.jpg")
    from rsclip_core.inference.toy_model import write_toy_model

    model_dir = write_toy_model(root / "toy_model")
    return {"json": root / "captions.json", "images": images, "folder": folder, "model_dir": model_dir}


EVAL_WITHOUT_TORCH = """
import sys
from click.testing import CliRunner
from rsclip_core.cli.main import cli
result = CliRunner().invoke(cli, sys.argv[1:])
print(result.output)
assert result.exit_code == 0, result.output
assert "torch" not in sys.modules, "rsclip eval --model-dir imported torch"
"""


def test_eval_model_dir_is_torch_free_and_exact_on_toy_model(colour_data, tmp_path: Path):
    out = tmp_path / "eval"
    args = ["eval", "--model-dir", str(colour_data["model_dir"]), "--karpathy", str(colour_data["json"]),
            "--folder", str(colour_data["folder"]), "-o", str(out), "-q"]
    proc = subprocess.run([sys.executable, "-c", EVAL_WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    retrieval = results["retrieval"]["colours-test"]
    assert retrieval["n_images"] == 6 and retrieval["n_texts"] == 18
    # two images per colour: the right colour always wins, the image within the colour is a tie
    assert retrieval["i2t_r5"] == 100.0 and retrieval["t2i_r5"] == 100.0
    assert 50.0 <= retrieval["t2i_r1"] <= 100.0 and 50.0 <= retrieval["i2t_r1"] <= 100.0
    zero_shot = results["zero_shot"]["scenes"]
    assert zero_shot["class_names"] == ["red", "green", "blue"]
    assert zero_shot["top1"] == 100.0
    assert (out / "confusion_scenes.png").is_file()
    assert "| colours-test |" in (out / "results.md").read_text()


def test_eval_errors_are_one_line(colour_data, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--model-dir", str(colour_data["model_dir"]),
                                 "--karpathy", str(tmp_path / "nope.json"), "-o", str(tmp_path / "o")])
    assert result.exit_code != 0 and "Error:" in result.output and "nope.json" in result.output
    result = runner.invoke(cli, ["eval", "--folder", str(colour_data["folder"]), "-o", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--model-dir" in result.output
    result = runner.invoke(cli, ["eval", "--model-dir", str(colour_data["model_dir"]), "--folder",
                                 str(colour_data["folder"]), "--split", "val", "--karpathy", str(colour_data["json"]),
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no images in split 'val'" in result.output


def test_train_cli_then_eval_checkpoint(colour_data, tmp_path: Path):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_reinforced_dataset

    data = make_reinforced_dataset(tmp_path / "shards", n=12, per_shard=6)
    run = tmp_path / "run"
    runner = CliRunner()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = runner.invoke(cli, ["train", "--data", str(data), "--model", "tiny-mci-mct", "-o", str(run),
                                     "--steps", "2", "--batch-size", "4", "--workers", "0", "--warmup-steps", "1",
                                     "--no-pretrained-towers", "--lam", "0.5", "--teacher-logit-scale", "ta=50", "-q"])
        assert result.exit_code == 0, result.output
        lines = (run / "train_log.jsonl").read_text().splitlines()
        assert len(lines) == 2
        # the run records every teacher's resolved tau: the given one, CLIP's 100 where the manifest has none
        assert json.loads((run / "train_config.json").read_text())["teacher_logit_scales"] == {"ta": 50.0, "tb": 100.0}
        again = runner.invoke(cli, ["train", "--data", str(data), "--model", "tiny-mci-mct", "-o", str(run),
                                    "--steps", "2", "--no-pretrained-towers"])
        assert again.exit_code != 0 and "--resume" in again.output
        out = tmp_path / "eval"
        result = runner.invoke(cli, ["eval", "--checkpoint", str(run / "model.pt"), "--karpathy",
                                     str(colour_data["json"]), "--folder", str(colour_data["folder"]),
                                     "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "results.json").read_text())
    assert results["model"].startswith("tiny-mci-mct")
    metrics = results["retrieval"]["colours-test"]
    assert 0.0 <= metrics["mR"] <= 100.0 and metrics["n_texts"] == 18
    assert results["zero_shot"]["scenes"]["n_samples"] == 9
