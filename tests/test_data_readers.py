"""Readers: Karpathy JSON, class folders, CSV/Parquet; image loading errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsclip_core.data.readers import (
    DatasetFormatError,
    ImageLoadError,
    clean_class_name,
    clean_class_names,
    dataset_fingerprint,
    load_rgb_image,
    read_dataset,
    read_image_folder,
    read_karpathy_json,
    read_table,
)
from tests.conftest import shared_data_path


def _save(path: Path, seed: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def test_karpathy_json_with_labels_and_splits(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "images" / f"{i:03d}.jpg", i)
    data = {"images": [
        {"filename": f"{i:03d}.jpg", "split": s, "label": lab,
         "sentences": [{"raw": f"caption {i} {j} ."} for j in range(5)]}
        for i, (s, lab) in enumerate([("train", "farmland"), ("val", "port"), ("test", None)])]}
    (tmp_path / "ds.json").write_text(json.dumps(data))
    recs = read_karpathy_json(tmp_path / "ds.json")
    assert [r.key for r in recs] == ["000", "001", "002"]
    assert recs[0].label == "farmland" and recs[2].label is None
    assert recs[0].captions[4] == "caption 0 4 ." and recs[1].image_path == tmp_path / "images" / "001.jpg"
    assert [r.key for r in read_dataset(tmp_path / "ds.json", splits=["train", "val"])] == ["000", "001"]
    (tmp_path / "bad.json").write_text('{"images": [{"file": 1}]}')
    with pytest.raises(DatasetFormatError, match="bad.json"):
        read_karpathy_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_karpathy_json(tmp_path / "missing.json")


def test_image_folder_with_templates(tmp_path: Path) -> None:
    _save(tmp_path / "aGrass" / "a1.jpg")
    _save(tmp_path / "dRiverLake" / "d1.png")
    (tmp_path / "dRiverLake" / "notes.txt").write_text("x")
    recs = read_image_folder(tmp_path, templates=("an aerial image of {}.", "{} from above"))
    assert [(r.key, r.label) for r in recs] == [("aGrass_a1", "grass"), ("dRiverLake_d1", "river lake")]
    assert recs[1].captions == ["an aerial image of river lake.", "river lake from above"]
    with pytest.raises(DatasetFormatError, match="template"):
        read_image_folder(tmp_path, templates=("no placeholder",))


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("aGrass", "grass"),
        ("dRiverLake", "river lake"),
        ("gParking", "parking"),
        ("BaseballDiamond", "baseball diamond"),
        ("storage_tanks", "storage tanks"),
        ("dense-residential", "dense residential"),
        ("Meadow", "meadow"),
        ("airport", "airport"),
        ("USAirport", "us airport"),
    ],
)
def test_clean_class_name(raw, clean):
    assert clean_class_name(raw) == clean


def test_letter_prefix_dropped_only_when_all_names_carry_it():
    rsscn7 = ["aGrass", "bField", "cIndustry", "dRiverLake", "eForest", "fResident", "gParking"]
    assert clean_class_names(rsscn7) == ["grass", "field", "industry", "river lake", "forest", "resident", "parking"]
    assert clean_class_names(["eForest", "desert"]) == ["e forest", "desert"]


def test_class_folders_skip_hidden_entries_and_limit(tmp_path: Path) -> None:
    from rsclip_core.data.readers import scan_class_folders

    for k in range(3):
        _save(tmp_path / "Forest" / f"{k}.jpg", k)
    _save(tmp_path / "Meadow" / "0.png")
    _save(tmp_path / ".thumbs" / "0.jpg")
    _save(tmp_path / "Meadow" / ".hidden.jpg")
    classes = scan_class_folders(tmp_path, limit_per_class=2)
    assert [(c.folder, c.name, [p.name for p in c.images]) for c in classes] == [
        ("Forest", "forest", ["0.jpg", "1.jpg"]), ("Meadow", "meadow", ["0.png"])]
    assert len(read_image_folder(tmp_path, limit_per_class=1)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="no class sub-folders"):
        scan_class_folders(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_class_folders(tmp_path / "nowhere")


def test_karpathy_split_errors_name_the_split_and_the_image(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "a.jpg")
    data = {"dataset": "tiny", "images": [
        {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a field"}]},
        {"filename": "b.jpg", "split": "train", "sentences": [{"raw": "a road"}]}]}
    (tmp_path / "ds.json").write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"no images in split 'val' \(splits: test, train\)"):
        read_karpathy_json(tmp_path / "ds.json", splits=["val"])
    assert len(read_karpathy_json(tmp_path / "ds.json", splits=["test"], check_images=True)) == 1
    with pytest.raises(FileNotFoundError, match="b.jpg: image listed in .*ds.json not found"):
        read_karpathy_json(tmp_path / "ds.json", check_images=True)


def test_readers_import_neither_torch_nor_pil() -> None:
    import subprocess
    import sys

    code = ("import sys, rsclip_core.data.readers, rsclip_core.evaluate.runners; "
            "bad = {'torch', 'PIL'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_csv_and_parquet_tables_group_captions(tmp_path: Path) -> None:
    _save(tmp_path / "img" / "a.jpg")
    _save(tmp_path / "img" / "b.jpg", 1)
    rows = [("img/a.jpg", "first a", "forest", "train"), ("img/b.jpg", "only b", "", "val"),
            ("img/a.jpg", "second a", "forest", "train")]
    with (tmp_path / "t.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "label", "split"])
        w.writerows(rows)
    recs = read_table(tmp_path / "t.csv")
    assert [(r.key, r.captions, r.label, r.split) for r in recs] == [
        ("img_a", ["first a", "second a"], "forest", "train"), ("img_b", ["only b"], None, "val")]
    assert recs[0].image_path == tmp_path / "img" / "a.jpg"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [r[0] for r in rows], "caption": [r[1] for r in rows]}), tmp_path / "t.parquet")
    precs = read_dataset(tmp_path / "t.parquet")
    assert [r.captions for r in precs] == [["first a", "second a"], ["only b"]]
    with pytest.raises(DatasetFormatError, match="needs columns"):
        read_table(tmp_path / "t.csv", caption_column="text")


def test_load_rgb_image_rejects_corrupt_truncated_and_non_rgb(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.jpg")
    img, data = load_rgb_image(good)
    assert img.mode == "RGB" and data == good.read_bytes()
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="junk.jpg: corrupt"):
        load_rgb_image(tmp_path / "junk.jpg")
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(big)
    (tmp_path / "trunc.jpg").write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_rgb_image(tmp_path / "trunc.jpg")
    gray = _save(tmp_path / "gray.png", mode="L")
    with pytest.raises(ImageLoadError, match="non-RGB image \\(mode L\\)"):
        load_rgb_image(gray)
    assert load_rgb_image(gray, allow_convert=True)[0].mode == "RGB"


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    p = _save(tmp_path / "i" / "a.jpg")
    recs = read_image_folder(tmp_path)
    before = dataset_fingerprint(recs)
    assert before == dataset_fingerprint(read_image_folder(tmp_path))
    _save(p, seed=5)
    assert dataset_fingerprint(recs) != before


@pytest.mark.slow
def test_real_rsicd_and_rsscn7_readers() -> None:
    recs = read_karpathy_json(shared_data_path("rsicd", "dataset_rsicd.json"))
    assert len(recs) == 10921
    assert sum(r.split == "test" for r in recs) == 1093
    assert all(len(r.captions) == 5 for r in recs) and all(r.image_path.exists() for r in recs[:50])
    assert len({r.label for r in recs}) == 31  # 30 AID-style classes + "playfields" as shipped
    scn = read_image_folder(shared_data_path("rsscn7"))
    assert len(scn) == 2800 and len({r.label for r in scn}) == 7
