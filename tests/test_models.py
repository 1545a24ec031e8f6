"""rsclip_core.models: registry, towers, reparameterization, checkpoints, EfficientNet-Lite weights."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("open_clip")

from rsclip_core.models import (
    CheckpointError,
    ModelConfigError,
    create_model,
    get_model_config,
    get_tokenizer,
    image_transform,
    list_models,
    lock_towers,
    unlock_towers,
)
from rsclip_core.models.mct import MCtTextTower, TextRepMixer, TextRepMixerBlock
from rsclip_core.preprocess import PreprocessConfig, image_to_input

TINY = [n for n in list_models() if get_model_config(n).get("tiny")]
FULL = [n for n in list_models() if n not in TINY]


def _absent_local_tower(name: str) -> str:
    """Why model ``name`` cannot be built here ('' if it can): a work-dir text tower not assembled yet
    (``teacher-*-mpnet``: ``training/teachers/fetch_mpnet.py``)."""
    from rsclip_core.models.text_towers import resolve_local_path

    spec = str(get_model_config(name)["text_cfg"].get("model_path", ""))
    if not spec.startswith("workdir:"):
        return ""
    try:
        resolve_local_path(spec)
    except FileNotFoundError as exc:
        return str(exc)
    return ""


ALL = [pytest.param(n, id=n) for n in TINY] + [
    pytest.param(n, id=n, marks=[pytest.mark.slow, pytest.mark.skipif(bool(_absent_local_tower(n)),
                                                                      reason=_absent_local_tower(n))])
    for n in FULL]
CAPTIONS = ["many green trees are around a pond.", "an airport with two runways", "x"]


def _inputs(model, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = model.preprocess.image_size
    images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = get_tokenizer(model.name)(CAPTIONS[:batch])
    return images, tokens


@torch.no_grad()
def _perturb(model, seed: int = 0) -> None:
    """Give BatchNorm statistics/affines and layer scales non-trivial values, so folding is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    for name, param in model.named_parameters():
        if "layer_scale" in name:
            param.copy_(0.2 + 0.5 * torch.rand(param.shape, generator=gen))


# --- registry ------------------------------------------------------------------------------------


def test_registry_lists_required_configs():
    names = set(list_models())
    required = {
        "mobileclip-s0-rs",
        "effnetlite0-mct",
        "mci0-transformer",
        "mci1-mct",
        "mci2-mct",
        "tiny-mci-mct",
        "tiny-effnet-mct",
        "teacher-effnetlite2-minilm",
        "teacher-effnetlite0-minilm",
    }
    assert required <= names
    s0 = get_model_config("mobileclip-s0-rs")
    assert s0["vision_cfg"]["timm_model_name"] == "fastvit_mci0" and s0["vision_cfg"]["image_size"] == 224
    assert s0["text_cfg"]["type"] == "mct" and s0["text_cfg"]["width"] == 512
    assert s0["text_cfg"]["repmixer_blocks"] == [1, 1] and s0["text_cfg"]["layers"] == 4


def test_get_model_config_is_a_copy():
    cfg = get_model_config("tiny-mci-mct")
    cfg["embed_dim"] = -1
    assert get_model_config("tiny-mci-mct")["embed_dim"] != -1


def test_unknown_model_lists_registered_names():
    with pytest.raises(ModelConfigError) as err:
        create_model("no-such-model")
    msg = str(err.value)
    assert "no-such-model" in msg and "tiny-mci-mct" in msg and "mobileclip-s0-rs" in msg


def test_config_file_path_is_accepted(tmp_path):
    path = tmp_path / "custom.json"
    cfg = get_model_config("tiny-mci-mct")
    cfg["embed_dim"] = 16
    path.write_text(json.dumps(cfg))
    model = create_model(str(path))
    assert model.name == "custom" and model.embed_dim == 16
    with pytest.raises(FileNotFoundError, match="missing.json"):
        create_model(str(tmp_path / "missing.json"))


# --- every registered model ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes_normalized_and_reparameterize(name):
    model = create_model(name, pretrained_towers=False)
    assert model.name == name
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.context_length == get_model_config(name)["tokenizer"]["context_length"]
    _perturb(model)
    model.eval()
    images, tokens = _inputs(model)
    assert tokens.shape == (2, model.context_length) and tokens.dtype == torch.long
    with torch.no_grad():
        img, txt, scale = model(images, tokens)
        raw = model.encode_image(images, normalize=False)
    assert img.shape == (2, model.embed_dim) and txt.shape == (2, model.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()

    out = model.reparameterize()
    assert out is model and not model.training and model.reparameterized
    with torch.no_grad():
        img2, txt2 = model.encode_image(images), model.encode_text(tokens)
    assert (img2 - img).abs().max().item() <= 1e-4
    assert (txt2 - txt).abs().max().item() <= 1e-4
    cfg = get_model_config(name)
    if cfg["vision_cfg"].get("reparameterizable"):
        assert any("reparam_conv" in k for k in model.state_dict()), "image tower was not folded"
    if cfg["text_cfg"].get("reparameterizable"):
        assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.text.modules()), "MCt not folded"


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_round_trip(name, tmp_path):
    model = create_model(name, pretrained_towers=False)
    _perturb(model, seed=1)
    model.eval()
    images, tokens = _inputs(model)
    with torch.no_grad():
        ref_img, ref_txt = model.encode_image(images), model.encode_text(tokens)
    # the trainer's layout: {"model": state_dict, "optimizer": ..., ...}, with a DDP prefix
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}, path)
    loaded = create_model(name, path).eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), ref_img)
        assert torch.equal(loaded.encode_text(tokens), ref_txt)


def test_plain_and_state_dict_key_and_reparameterized_checkpoints(tmp_path):
    model = create_model("tiny-mci-mct")
    _perturb(model, seed=2)
    model.eval()
    images, tokens = _inputs(model)
    with torch.no_grad():
        ref = model.encode_image(images), model.encode_text(tokens)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    model.reparameterize()
    torch.save(model.state_dict(), tmp_path / "folded.pt")
    for file in ("plain.pt", "wrapped.pt", "folded.pt"):
        loaded = create_model("tiny-mci-mct", tmp_path / file).eval()
        with torch.no_grad():
            got = loaded.encode_image(images), loaded.encode_text(tokens)
        assert (got[0] - ref[0]).abs().max() <= 1e-4 and (got[1] - ref[1]).abs().max() <= 1e-4, file
    assert create_model("tiny-mci-mct", tmp_path / "folded.pt").reparameterized


def test_wrong_architecture_checkpoint_names_keys(tmp_path):
    other = create_model("tiny-effnet-mct")
    path = tmp_path / "effnet.pt"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        create_model("tiny-mci-mct", path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "unexpected keys" in msg
    assert "visual.trunk." in msg  # the offending keys are named


def test_shape_mismatch_is_reported(tmp_path):
    model = create_model("tiny-mci-mct")
    state = model.state_dict()
    state["text.proj.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="text.proj.weight"):
        create_model("tiny-mci-mct", tmp_path / "bad.pt")


def test_missing_or_invalid_checkpoint_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        create_model("tiny-mci-mct", missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        create_model("tiny-mci-mct", junk)
    torch.save({"model": {"a": 1}}, tmp_path / "notensors.pt")
    with pytest.raises(CheckpointError, match="no model state dict"):
        create_model("tiny-mci-mct", tmp_path / "notensors.pt")


def test_tokenizer_spec_for_exporter():
    clip = create_model("tiny-mci-mct").tokenizer_spec
    assert clip.kind == "clip-bpe" and clip.bpe_vocab.is_file() and (clip.sot_id, clip.eot_id) == (49406, 49407)
    wp = create_model("tiny-effnet-minilm").tokenizer_spec
    assert wp.kind == "wordpiece" and wp.tokenizer_json.is_file() and wp.context_length == 32
    assert (wp.sot_id, wp.eot_id, wp.pad_id) == (101, 102, 0)


# --- MCt ---------------------------------------------------------------------------------------------


def test_text_repmixer_folds_into_one_depthwise_conv():
    torch.manual_seed(0)
    block = TextRepMixer(dim=24, kernel_size=7, layer_scale_init=1.0)
    _perturb(block)
    block.eval()
    x = torch.randn(3, 24, 19)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    assert isinstance(block.reparam_conv, torch.nn.Conv1d) and block.reparam_conv.groups == 24
    assert [name for name, _ in block.named_children()] == ["reparam_conv"]
    assert not torch.allclose(before, x, atol=1e-2)  # the mixer really does something
    assert (after - before).abs().max().item() <= 1e-5


def test_mct_reparameterize_matches_eval_output():
    torch.manual_seed(0)
    tower = MCtTextTower(embed_dim=16, context_length=20, vocab_size=100, width=32, heads=4, layers=2, repmixer_kernel=5)
    assert sum(isinstance(b, TextRepMixerBlock) for b in tower.blocks) == 2
    assert isinstance(tower.blocks[0], TextRepMixerBlock) and isinstance(tower.blocks[-1], TextRepMixerBlock)
    _perturb(tower)
    tower.eval()
    tokens = torch.randint(1, 98, (4, 20))
    tokens[:, 12] = 99  # EOT = largest id
    with torch.no_grad():
        before = tower(tokens)
        tower.reparameterize()
        after = tower(tokens)
    assert (after - before).abs().max().item() <= 1e-4
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in tower.modules())


def test_mct_pools_at_eot_and_is_not_causal():
    torch.manual_seed(0)
    tower = MCtTextTower(embed_dim=8, context_length=10, vocab_size=50, width=16, heads=2, layers=1, repmixer_kernel=3).eval()
    tokens = torch.tensor([[1, 5, 7, 49, 0, 0, 0, 0, 0, 0]])
    changed = tokens.clone()
    changed[0, 1] = 6  # before EOT: must change the output
    with torch.no_grad():
        base = tower(tokens)
        assert not torch.allclose(tower(changed), base)


def test_mct_train_mode_updates_and_rejects_long_input():
    tower = MCtTextTower(embed_dim=8, context_length=10, vocab_size=50, width=16, heads=2, layers=1, repmixer_kernel=3)
    tower.train()
    out = tower(torch.randint(0, 50, (2, 10)))
    out.sum().backward()
    assert tower.token_embedding.weight.grad is not None
    with pytest.raises(ValueError, match="context_length"):
        tower(torch.zeros(1, 11, dtype=torch.long))


# --- locking / transforms / teachers' tower helpers ---------------------------------------------------


def test_lock_towers_freezes_trunks_but_not_heads():
    model = create_model("tiny-effnet-minilm")
    frozen = lock_towers(model, unlock_last_n=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "visual.proj.weight" in trainable and "text.proj.weight" in trainable and "logit_scale" in trainable
    assert not any(n.startswith("visual.trunk.conv_stem") for n in trainable)
    assert any(n.startswith("visual.trunk.conv_head") for n in trainable)  # last group unlocked
    assert any(n.startswith("text.transformer.encoder.layer.0") for n in trainable)  # 1 layer = last group
    assert not any(n.startswith("text.transformer.embeddings") for n in trainable)
    model.train()
    assert not model.visual.trunk.bn1.training and model.visual.trunk.bn2.training
    assert all(f.startswith(("visual.trunk.", "text.transformer.")) for f in frozen)
    unlock_towers(model)
    assert all(p.requires_grad for p in model.parameters()) and model.visual.trunk.bn1.training


def test_image_transform_matches_preprocess():
    from PIL import Image

    cfg = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    image = Image.new("RGB", (64, 48), (255, 0, 128))
    out = image_transform(cfg)(image)
    assert out.shape == (3, 32, 32)
    assert out[0].mean().item() == pytest.approx((1.0 - 0.5) / 0.25, abs=1e-5)
    assert out[1].mean().item() == pytest.approx((0.0 - 0.5) / 0.25, abs=1e-5)
    squash = image_transform({**cfg.to_dict(), "resize_mode": "squash"})(image.convert("L"))
    assert squash.shape == (3, 32, 32)
    assert torch.equal(out, torch.from_numpy(image_to_input(image, cfg)))  # a wrapper, not a copy
    with pytest.raises(ModelConfigError, match="resize_mode"):
        image_transform({**cfg.to_dict(), "resize_mode": "zoom"})


def test_models_cli_lists_configs():
    from click.testing import CliRunner

    from rsclip_core.cli.main import cli

    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.output)]
    assert names == list_models()
    bad = CliRunner().invoke(cli, ["models", "nope"])
    assert bad.exit_code != 0 and "unknown model 'nope'" in bad.output


# --- EfficientNet-Lite ImageNet weights ------------------------------------------------------------
# (the full effnetlite0-mct model is slow to build: the tower alone is checked in the default run)


def _chelsea_top5(variant: int, size: int) -> list[int]:
    import timm
    from PIL import Image
    from skimage import data

    from rsclip_core.models.image_towers import load_packaged_efficientnet_lite

    model = timm.create_model(f"tf_efficientnet_lite{variant}").eval()
    load_packaged_efficientnet_lite(model, variant, keep_classifier=True)
    transform = image_transform(PreprocessConfig(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"))
    x = transform(Image.fromarray(data.chelsea()))[None]
    with torch.no_grad():
        return model(x)[0].topk(5).indices.tolist()


CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize(
    "variant,size",
    [(0, 224), pytest.param(1, 240, marks=pytest.mark.slow), pytest.param(2, 260, marks=pytest.mark.slow)],
)
def test_efficientnet_lite_chelsea(variant, size):
    pytest.importorskip("skimage")
    top5 = _chelsea_top5(variant, size)
    assert top5[0] in CAT_CLASSES and len(CAT_CLASSES & set(top5)) >= 2, top5


def test_packaged_weights_initialise_student_tower():
    from rsclip_core.models.image_towers import TimmImageTower, packaged_efficientnet_lite_path

    tower = TimmImageTower(32, "tf_efficientnet_lite0", 224, pretrained="packaged:efficientnet_lite0")
    state = torch.load(packaged_efficientnet_lite_path(0), map_location="cpu", weights_only=True)
    assert torch.equal(tower.trunk.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(tower.trunk.conv_head.weight, state["_conv_head.weight"])
    with pytest.raises(ValueError, match="Lite7"):
        packaged_efficientnet_lite_path(7)
