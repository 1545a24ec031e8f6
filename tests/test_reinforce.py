"""Reinforced dataset: shard round-trip, determinism, --shard i/n, resume after a crash, bad images."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rsclip_core.data.augment import AugmentationConfig, reapply
from rsclip_core.data.readers import ImageTextRecord, dataset_fingerprint, read_image_folder, read_karpathy_json
from rsclip_core.reinforce.builder import (
    BuildConfig,
    BuildError,
    DataSource,
    build_caption_bank,
    build_reinforced_dataset,
    merge_sources,
    parse_shard_spec,
    storage_report,
)
from rsclip_core.reinforce.captioners import (
    AERIAL_IMAGENET_OBJECTS,
    CaptionerError,
    ImageNetObjectNamer,
    NeighbourCaptioner,
    ObjectNameCaptioner,
)
from rsclip_core.reinforce.shards import (
    ReinforcedSample,
    bf16_bits_to_float,
    float_to_bf16_bits,
    iter_samples,
    list_shards,
    load_manifest,
    write_shard,
)
from rsclip_core.teachers.base import CallableTeacher, TeacherEnsemble


def tiny_teacher(name: str, dim: int, seed: int) -> CallableTeacher:
    proj = np.random.default_rng(seed).normal(size=(48, dim)).astype(np.float32)
    vocab = np.random.default_rng(seed + 1).normal(size=(97, dim)).astype(np.float32)

    def images(ims):
        x = np.stack([np.asarray(im.resize((4, 4), Image.Resampling.BOX), np.float32).ravel() / 255 - 0.5
                      for im in ims])
        return x @ proj

    def texts(ts):
        out = np.zeros((len(ts), dim), np.float32)
        for i, t in enumerate(ts):
            for w in t.lower().split():
                out[i] += vocab[int(hashlib.md5(w.encode()).hexdigest(), 16) % 97]
        return out + 1e-3

    return CallableTeacher(name, dim, images, texts, image_size=32)


WORDS = ["river", "forest", "houses", "road", "field", "bridge", "pond", "trees", "green", "many"]


def make_dataset(root: Path, n: int = 12, bad: bool = True) -> list[ImageTextRecord]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        arr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{i:03d}.jpg", quality=90)
        caps = [" ".join(rng.choice(WORDS, 4)) + " ." for _ in range(3)]
        items.append({"filename": f"{i:03d}.jpg", "split": "train", "label": ["forest", "river"][i % 2],
                      "sentences": [{"raw": c} for c in caps]})
    if bad:
        (root / "images" / "900.jpg").write_bytes(b"garbage")
        full = (root / "images" / "000.jpg").read_bytes()
        (root / "images" / "901.jpg").write_bytes(full[: len(full) // 2])
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / "images" / "902.png")
        for name in ("900.jpg", "901.jpg", "902.png"):
            items.insert(3, {"filename": name, "split": "train", "sentences": [{"raw": "broken"}]})
    (root / "ds.json").write_text(json.dumps({"images": items}))
    return read_karpathy_json(root / "ds.json")


def make_build(records, out: Path, shard=(0, 1), on_sample=None, seed=0, bank=None):
    ensemble = TeacherEnsemble([tiny_teacher("ta", 16, 0), tiny_teacher("tb", 8, 5)])
    captioner, cache = build_caption_bank(bank or records, ensemble, progress=False, num_neighbours=3)
    cfg = BuildConfig(num_augmentations=3, num_syn_captions=4, seed=seed, shard_size=4, batch_size=3,
                      augmentation=AugmentationConfig(output_size=32))
    return build_reinforced_dataset(records, out, ensemble, captioner, cfg, source={"path": "tiny", "fingerprint": "x"},
                                    shard=shard, text_cache=cache, progress=False, on_sample=on_sample)


def shard_bytes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in list_shards(out)}


def test_bf16_round_trip() -> None:
    x = np.array([1.0, -2.5, 3.14159, 1e-8, 65504.0], np.float32)
    y = bf16_bits_to_float(float_to_bf16_bits(x))
    assert np.allclose(x, y, rtol=1 / 128) and y[1] == -2.5


def test_shard_round_trip(tmp_path: Path) -> None:
    img = Image.new("RGB", (10, 12), (10, 200, 30))
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    emb = {"t": np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)}
    s = ReinforcedSample("k_1", buf.getvalue(), "png", ["a b", "c"], ["syn"],
                         [{"crop": [0, 0, 10, 10], "size": [8, 8], "vf": 1}] * 2, emb,
                         {"t": emb["t"]}, {"t": emb["t"][:1]}, label="x", split="train", source="/a.png")
    assert write_shard(tmp_path / "shard-000000.tar", [s]) == 1
    (back,) = list(iter_samples(tmp_path))
    assert back.key == "k_1" and back.captions == ["a b", "c"] and back.syn_captions == ["syn"]
    assert back.image_bytes == s.image_bytes and back.label == "x" and back.aug_params == s.aug_params
    assert np.allclose(back.image_emb["t"], emb["t"], atol=0.02)
    assert back.augmented_view(1).size == (8, 8)
    import webdataset as wds

    via_wds = [ReinforcedSample.from_wds(x) for x in wds.WebDataset(str(tmp_path / "shard-000000.tar"),
                                                                     shardshuffle=False)]
    assert via_wds[0].key == "k_1" and np.array_equal(via_wds[0].text_emb["t"], back.text_emb["t"])


def test_build_contents_determinism_and_bad_images(tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data")
    res = make_build(records, tmp_path / "out")
    assert res.samples_written == 12 and len(res.images_skipped) == 3
    reasons = " ".join(s["reason"] for s in res.images_skipped)
    assert "900.jpg: corrupt" in reasons and "901.jpg" in reasons and "non-RGB" in reasons
    man = load_manifest(tmp_path / "out")
    assert man.teacher_dims == {"ta": 16, "tb": 8} and man.num_augmentations == 3 and man.num_shards == 4
    assert man.captioner["name"] == "neighbour+scene-label"
    samples = list(iter_samples(tmp_path / "out"))
    assert [s.key for s in samples] == [r.key for r in records if r.key not in ("900", "901", "902")]
    by_key = {r.key: r for r in records}
    ensemble = TeacherEnsemble([tiny_teacher("ta", 16, 0), tiny_teacher("tb", 8, 5)])
    for s in samples[:4]:
        assert s.image_emb["ta"].shape == (3, 16) and s.image_emb["tb"].shape == (3, 8)
        assert s.text_emb["ta"].shape == (3, 16) and s.syn_text_emb["tb"].shape == (4, 8)
        assert len(s.syn_captions) == 4
        assert s.syn_captions[-1].endswith(f"{s.label}.")  # scene-label prior caption (labels are lower-case here)
        own = {c.lower() for c in by_key[s.key].captions}
        assert not own & {c.lower() for c in s.syn_captions[:-1]}  # never the image's own captions
        # stored embedding == teacher embedding of the replayed view (bf16 precision)
        views = [s.augmented_view(k) for k in range(3)]
        assert np.allclose(ensemble.encode_images(views)["ta"], s.image_emb["ta"], atol=0.02)
        assert np.allclose(ensemble.encode_texts(s.syn_captions)["tb"], s.syn_text_emb["tb"], atol=0.02)
    rep = storage_report(tmp_path / "out")
    assert rep["samples"] == 12 and rep["images_skipped"] == 3
    assert set(rep["npz_bytes_per_sample"]) == {f"{k}.{t}" for k in ("image_emb", "text_emb", "syn_text_emb")
                                                for t in ("ta", "tb")}
    # same seed, fresh folder: identical bytes; other seed: different augmentations
    make_build(records, tmp_path / "again")
    assert shard_bytes(tmp_path / "again") == shard_bytes(tmp_path / "out")
    make_build(records, tmp_path / "seed1", seed=1)
    assert next(iter_samples(tmp_path / "seed1")).aug_params != samples[0].aug_params
    with pytest.raises(BuildError, match="other settings"):
        make_build(records, tmp_path / "out", seed=3)


def test_parallel_workers_equal_single_run(tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data", bad=False)
    make_build(records, tmp_path / "single")
    for i in range(3):
        make_build(records, tmp_path / "multi", shard=(i, 3))
    assert shard_bytes(tmp_path / "multi") == shard_bytes(tmp_path / "single")
    assert parse_shard_spec("1/3") == (1, 3)
    with pytest.raises(BuildError, match="--shard"):
        parse_shard_spec("3/3")


def test_resume_after_injected_crash_equals_uninterrupted(tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data")
    make_build(records, tmp_path / "clean")

    class Crash(Exception):
        pass

    seen = []

    def crash(shard: int, key: str) -> None:
        seen.append(shard)
        if seen.count(2) == 2:  # mid-way through the third shard
            raise Crash("killed")

    with pytest.raises(Crash):
        make_build(records, tmp_path / "crashy", on_sample=crash)
    done = sorted(p.name for p in list_shards(tmp_path / "crashy"))
    assert done == ["shard-000000.tar", "shard-000001.tar"]
    # a SIGKILL leaves a half-written temp file behind: it must be ignored and replaced
    (tmp_path / "crashy" / ".shard-000002.tar.4242.tmp").write_bytes(b"half")
    res = make_build(records, tmp_path / "crashy")
    assert res.shards_skipped_existing == ["shard-000000.tar", "shard-000001.tar"]
    assert shard_bytes(tmp_path / "crashy") == shard_bytes(tmp_path / "clean")
    keys = [s.key for s in iter_samples(tmp_path / "crashy")]
    assert len(keys) == len(set(keys)) == 12
    assert not list((tmp_path / "crashy").glob(".*.tmp"))
    assert storage_report(tmp_path / "crashy")["images_skipped"] == 3


def test_neighbour_captions_come_from_other_images(tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data", bad=False)
    ensemble = TeacherEnsemble([tiny_teacher("ta", 16, 0)])
    cap, _ = build_caption_bank(records, ensemble, progress=False, num_neighbours=2, label_captions=0)
    im = Image.open(records[0].image_path).convert("RGB")
    q = ensemble.joint_image([reapply(im, {"crop": [0, 0, 24, 24], "size": [32, 32]})])[0]
    out = cap.caption(records[0], im, 3, random.Random(0), image_embedding=q)
    others = {c for r in records[1:] for c in r.captions}
    assert len(out) == 3 and set(out) <= others


@pytest.mark.slow
def test_reinforce_real_rsicd_images(tmp_path: Path) -> None:
    from tests.conftest import shared_data_path

    records = read_karpathy_json(shared_data_path("rsicd", "dataset_rsicd.json"), splits=["train"])[:10]
    res = make_build(records, tmp_path / "out")
    assert res.samples_written == 10 and not res.images_skipped
    for s in iter_samples(tmp_path / "out"):
        img = s.image()
        assert img.size == (224, 224) and s.image_bytes == Path(s.source).read_bytes()
        assert s.augmented_view(2).size == (32, 32) and len(s.captions) == 5
    assert storage_report(tmp_path / "out")["beyond_image_per_sample"] > 0


def _two_teacher_captioner(**kwargs: Any):
    """A 3-image bank whose captions the two teacher blocks (2-d each) rank differently."""
    bank = [ImageTextRecord(f"b{i}", Path(f"b{i}.jpg"), caps, label="forest")
            for i, caps in enumerate([["both like"], ["only a likes"], ["only b likes"]])]
    joint_img = np.eye(4, dtype=np.float32)[:3]
    #                         teacher a | teacher b   (query: [1, 0 | 1, 0])
    caps = np.array([[0.9, 0.1, 0.9, 0.1],
                     [1.0, 0.0, -1.0, 0.0],
                     [-0.2, 0.0, 1.0, 0.0]], np.float32)
    return NeighbourCaptioner(bank, joint_img, caps, num_neighbours=3, teacher_dims=[2, 2], **kwargs)


def test_neighbour_agreement_ranks_by_the_least_agreeing_teacher_and_filters() -> None:
    q = np.array([1, 0, 1, 0], np.float32)
    me = ImageTextRecord("me", Path("me.jpg"), ["own"], label=None)
    joint = _two_teacher_captioner(label_captions=0)
    assert joint.caption(me, None, 3, random.Random(0), q)[0] == "both like"
    assert "agreement" not in joint.describe()  # the pre-agreement manifest entry, unchanged
    agree = _two_teacher_captioner(label_captions=0, agreement="min")
    out = agree.caption(me, None, 3, random.Random(0), q)
    assert out[0] == "both like" and set(out) == {"both like", "only a likes", "only b likes"}
    # filtered: only captions every teacher puts at or above the candidates' mean survive
    strict = _two_teacher_captioner(label_captions=0, agreement="min", min_agreement=0.0)
    assert strict.describe()["min_agreement"] == 0.0
    assert strict.caption(me, None, 1, random.Random(0), q) == ["both like"]
    labelled = ImageTextRecord("me", Path("me.jpg"), ["own"], label="forest")
    out = strict.caption(labelled, None, 3, random.Random(0), q)  # freed slots -> scene-label captions
    assert out[0] == "both like" and all("forest" in c for c in out[1:]) and len(set(out)) == 3
    with pytest.raises(CaptionerError, match="teacher_dims"):
        NeighbourCaptioner([me], np.ones((1, 4), np.float32), np.ones((1, 4), np.float32),
                           agreement="min")


class _FixedNamer:
    def __init__(self, phrase: str | None) -> None:
        self.phrase = phrase

    def name(self, image: Any) -> str | None:
        return self.phrase

    def describe(self) -> dict[str, Any]:
        return {"threshold": 0.3}


def test_object_name_captioner_takes_one_slot_only_when_confident() -> None:
    q = np.array([1, 0, 1, 0], np.float32)
    me = ImageTextRecord("me", Path("me.jpg"), ["own"], label=None)
    base = _two_teacher_captioner(label_captions=0)
    fired = ObjectNameCaptioner(base, _FixedNamer("an airliner"))
    out = fired.caption(me, None, 3, random.Random(0), q)
    assert out == base.caption(me, None, 2, random.Random(0), q) + ["an aerial image with an airliner."]
    assert ObjectNameCaptioner(base, _FixedNamer(None)).caption(me, None, 3, random.Random(0), q) == \
        base.caption(me, None, 3, random.Random(0), q)
    assert fired.describe()["objects"]["threshold"] == 0.3 and fired.name.endswith("+objects")


def test_imagenet_object_namer_allow_list_and_threshold() -> None:
    namer = ImageNetObjectNamer(tower="efficientnet_lite0", image_size=224, threshold=0.99)
    assert len(namer.class_index) == len(AERIAL_IMAGENET_OBJECTS)
    flat = Image.new("RGB", (64, 64), (120, 130, 110))
    assert namer.probabilities([flat]).shape == (1, len(AERIAL_IMAGENET_OBJECTS))
    assert namer.name(flat) is None  # nothing is 99 % sure on a flat image
    with pytest.raises(CaptionerError, match="not ImageNet-1k classes"):
        ImageNetObjectNamer(tower="efficientnet_lite0", allow={"swimming pool": "a pool"})


def test_merge_sources_prefixes_keys_and_records_each_source(tmp_path: Path) -> None:
    primary = make_dataset(tmp_path / "a", n=4, bad=False)
    folder = tmp_path / "nwpu" / "airplane"
    folder.mkdir(parents=True)
    Image.new("RGB", (24, 24), (200, 200, 200)).save(folder / "airplane_001.jpg")
    extra = read_image_folder(tmp_path / "nwpu")
    records, source = merge_sources([DataSource("", "a.json", primary, "json", ["train"]),
                                     DataSource("nwpu", str(tmp_path / "nwpu"), extra, "folder")])
    assert [r.key for r in records[:4]] == [r.key for r in primary] and records[-1].key == "nwpu-airplane_airplane_001"
    assert records[-1].label == "airplane" and "airplane" in records[-1].captions[0]
    assert source["path"] == "a.json" and source["num_records"] == 5
    assert [s["name"] for s in source["sources"]] == ["", "nwpu"] and source["sources"][1]["num_records"] == 1
    single_records, single = merge_sources([DataSource("", "a.json", primary, "json", ["train"])])
    assert "sources" not in single and single["fingerprint"] == dataset_fingerprint(primary)  # as before
    with pytest.raises(BuildError, match="no records"):
        merge_sources([DataSource("x", "empty", [])])
    with pytest.raises(BuildError, match="source name"):
        merge_sources([DataSource("a.b", "p", primary)])
