"""Evaluation runners end to end on generated images with a hand-made colour 'model' (torch-free)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsclip_core.data.readers import DatasetFormatError
from rsclip_core.evaluate import (
    FunctionEncoder,
    evaluate_retrieval,
    evaluate_zero_shot,
    read_classification_folder,
    read_karpathy_split,
    write_results,
)
from rsclip_core.preprocess import PreprocessConfig, load_image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 210), "yellow": (230, 220, 30)}
WORD_VECTORS = {name: np.array(rgb, dtype=np.float32) / 255.0 - 0.45 for name, rgb in COLOURS.items()}


def _colour_encoder(size: int = 16) -> FunctionEncoder:
    def image_fn(images: np.ndarray) -> np.ndarray:
        return images.mean(axis=(2, 3)) - 0.45

    def text_fn(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            vec = sum((WORD_VECTORS[w] for w in WORD_VECTORS if w in text), np.zeros(3, np.float32))
            rows.append(vec if np.any(vec) else np.ones(3, np.float32))
        return np.stack(rows)

    return FunctionEncoder(PreprocessConfig(image_size=size), image_fn, text_fn)


@pytest.fixture()
def karpathy(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        for split in ("train", "test"):
            filename = f"{name}_{split}.png"
            Image.new("RGB", (24, 20), rgb).save(images / filename)
            sentences = [{"raw": f"a {name} roof number {j} ."} for j in range(5)]
            entries.append({"filename": filename, "split": split, "sentences": sentences, "imgid": i})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "colours", "images": entries}))
    return path, images


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "scenes"
    for letter, name in zip("abcd", COLOURS):
        cls_dir = root / f"{letter}{name.capitalize()}"
        cls_dir.mkdir(parents=True)
        for k in range(3):
            jitter = np.clip(np.array(COLOURS[name]) + 8 * k, 0, 255).astype(np.uint8)
            Image.new("RGB", (32, 32), tuple(int(v) for v in jitter)).save(cls_dir / f"{k}.jpg")
    return root


def test_load_image_resizes_shortest_side_and_centre_crops(tmp_path: Path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, 10:30] = 255  # white centre band that a 20x20 centre crop keeps entirely
    Image.fromarray(array).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", PreprocessConfig(image_size=10, interpolation="bilinear"))
    assert out.shape == (3, 10, 10) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[:, :, 1:-1].min() > 0.9  # centre crop = the white band
    squashed = load_image(tmp_path / "wide.png", PreprocessConfig(image_size=10, resize_mode="squash"))
    assert squashed[:, :, 0].max() < 0.1  # the black left border survives a squash


def test_retrieval_runner_on_karpathy_split(karpathy):
    json_path, images = karpathy
    dataset = read_karpathy_split(json_path, images, split="test")
    assert dataset.name == "colours-test"
    assert len(dataset.image_paths) == 4 and len(dataset.captions) == 20
    assert dataset.text_to_image.tolist() == [i for i in range(4) for _ in range(5)]
    result = evaluate_retrieval(_colour_encoder(), dataset, batch_size=3, progress=False)
    assert result["i2t_r1"] == 100.0
    assert result["t2i_r1"] == 100.0 and result["mR"] == 100.0


def test_karpathy_errors_name_the_file(tmp_path: Path, karpathy):
    json_path, images = karpathy
    with pytest.raises(DatasetFormatError, match="no images in split 'val'"):
        read_karpathy_split(json_path, images, split="val")
    with pytest.raises(DatasetFormatError, match="missing.json: caption JSON not found"):
        read_karpathy_split(tmp_path / "missing.json", images)
    (images / "red_test.png").unlink()
    with pytest.raises(DatasetFormatError, match="red_test.png"):
        read_karpathy_split(json_path, images)


def test_zero_shot_runner_and_reports(folder: Path, tmp_path: Path):
    dataset = read_classification_folder(folder)
    assert dataset.class_names == ["red", "green", "blue", "yellow"]
    assert dataset.folder_names[0] == "aRed"
    result = evaluate_zero_shot(_colour_encoder(), dataset, templates=["a {} field."], progress=False)
    assert result["top1"] == 100.0
    assert np.trace(np.array(result["confusion"])) == 12
    out = tmp_path / "report"
    written = write_results({"zero_shot": {dataset.name: result}}, out, "colour model")
    saved = json.loads((out / "results.json").read_text())
    assert saved["zero_shot"]["scenes"]["top1"] == 100.0
    assert "| scenes | 100.00 | 100.00 | 100.00 |" in (out / "results.md").read_text()
    png = written["confusion_scenes"]
    assert png.is_file() and Image.open(png).size[0] > 100


def test_runners_import_no_torch():
    import subprocess

    code = "import sys, rsclip_core.evaluate, rsclip_core.evaluate.runners; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_rsicd_test_split_follows_the_published_protocol():
    from tests.conftest import shared_data_path

    rsicd = shared_data_path("rsicd", "dataset_rsicd.json")
    dataset = read_karpathy_split(rsicd, rsicd.parent / "images", split="test")
    assert len(dataset.image_paths) == 1093 and len(dataset.captions) == 5465
    assert np.bincount(dataset.text_to_image).tolist() == [5] * 1093


def test_real_rsscn7_class_names_are_cleaned():
    from tests.conftest import shared_data_path

    dataset = read_classification_folder(shared_data_path("rsscn7"), limit_per_class=2)
    assert dataset.class_names == ["grass", "field", "industry", "river lake", "forest", "resident", "parking"]
    assert len(dataset.image_paths) == 14
