"""Public open_clip checkpoints as rsclip models: entries, every on-disk layout, export parity.

No real weights exist here: tiny custom open_clip configs (a ViT, a ModifiedResNet, a FastViT /
MCi-like timm tower) are registered in a tmp dir, random-init weights are saved in each layout
(plain state dict, open_clip training checkpoint with ``module.`` prefixes, OpenAI TorchScript
archive in fp16, Apple ml-mobileclip's own keys), exported, and the exported model's embeddings are compared with open_clip's own.
``-m slow`` checks the real architectures' key names and shapes (random init, files in tmp only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from rsclip_core.models import CheckpointError, ModelConfigError, create_model, get_model_config  # noqa: E402
from rsclip_core.models import pretrained as entries  # noqa: E402
from rsclip_core.models.open_clip_model import read_checkpoint_file  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS = {
    "RsTiny-ViT": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                   "text_cfg": TEXT},
    "RsTiny-RN": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                                   "patch_size": None}, "text_cfg": TEXT},
    "RsTiny-MCi": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "fastvit_t8", "timm_model_pretrained": False,
                                                    "timm_pool": "avg", "timm_proj": None, "image_size": 64},
                   "text_cfg": {**TEXT, "no_causal_mask": True}, "custom_text": True},
}
TEXTS = ["a satellite image of a harbour with boats", "farmland", "an airport with two runways"]


def register_tiny_configs(folder: Path) -> None:
    """Make the tiny architectures known to open_clip (``open_clip.add_model_config``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_open_clip")
    register_tiny_configs(folder / "configs")
    return folder


def reference_model(arch: str, seed: int = 0, quick_gelu: bool = False):
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, force_quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(42.0)))
    return model


def save_layout(model, path: Path, layout: str) -> Path:
    """Write ``model``'s weights as the public files hold them."""
    state = model.state_dict()
    if layout == "state_dict":
        torch.save(state, path)
    elif layout == "open_clip_train":
        torch.save({"epoch": 20, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, path)
    elif layout == "openai_torchscript":  # OpenAI ships fp16 TorchScript archives
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)),
                                 check_trace=False, strict=False)
        torch.jit.save(traced.half(), str(path))
    elif layout == "ml_mobileclip":
        torch.save(to_ml_mobileclip_layout(state), path)
    else:
        raise ValueError(layout)
    return path


def to_ml_mobileclip_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip FastViT/MCi + text-transformer state dict in Apple ml-mobileclip's own key layout
    (the inverse of timm's fastvit ``checkpoint_filter_fn`` and open_clip's ``convert_mobile_clip_state_dict``)."""
    import re

    out = {"logit_scale": state["logit_scale"]}
    for key, value in state.items():
        if key.startswith("visual.trunk."):
            k = key[len("visual.trunk."):]
            if k.startswith("head.fc."):
                if k.endswith("weight"):
                    out["image_encoder.model.head.proj"] = value.t().contiguous()
                continue  # ml-mobileclip's projection has no bias (open_clip fills zeros)
            k = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"network.{2 * int(m.group(1)) - 1}.", k)
            k = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{2 * int(m.group(1))}.", k)
            k = re.sub(r"layer_scale(_\d)?\.gamma$", lambda m: "layer_scale" + (m.group(1) or ""), k)
            for new, old in (("patch_embed", "stem"), ("rbr_conv", "conv_kxk"), ("rbr_scale", "conv_scale"),
                             ("rbr_skip", "identity"), ("conv_exp", "final_conv"), ("lkb_origin", "large_conv"),
                             ("convffn", "mlp"), ("se.reduce", "se.fc1"), ("se.expand", "se.fc2")):
                k = k.replace(old, new)
            out[f"image_encoder.model.{k}"] = value
        elif key.startswith("text."):
            k = key[len("text."):]
            if k == "positional_embedding":
                out["text_encoder.positional_embedding.pos_embed.pos_embed"] = value[None, None]
                continue
            for old, new in (("transformer.resblocks.", "transformer."), ("text_projection", "projection_layer"),
                             ("token_embedding", "embedding_layer"), ("ln_final", "final_layer_norm"),
                             ("ln_1", "pre_norm_mha.0"), ("attn.in_proj_weight", "pre_norm_mha.1.qkv_proj.weight"),
                             ("attn.in_proj_bias", "pre_norm_mha.1.qkv_proj.bias"), ("attn.", "pre_norm_mha.1."),
                             ("ln_2", "pre_norm_ffn.0"), ("mlp.c_fc", "pre_norm_ffn.1"), ("mlp.c_proj", "pre_norm_ffn.4")):
                k = k.replace(old, new)
            out[f"text_encoder.{k}"] = value
    return out


def open_clip_embeddings(model, images01: np.ndarray, mean, std) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = open_clip.get_tokenizer("RsTiny-ViT")
    x = (torch.from_numpy(images01) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return (model.encode_image(x.float(), normalize=True).numpy(),
                model.encode_text(tokenizer(TEXTS), normalize=True).numpy())


def assert_exported_matches(out: Path, reference, atol: float = 1e-4) -> None:
    from rsclip_core.inference import load_model

    loaded = load_model(out)
    meta = json.loads((out / "rsclip.json").read_text())
    size = loaded.image_size
    images = np.random.default_rng(0).uniform(0, 1, size=(2, 3, size, size)).astype(np.float32)
    ref_img, ref_txt = open_clip_embeddings(reference, images, meta["mean"], meta["std"])
    np.testing.assert_allclose(loaded.encode_images(images), ref_img, atol=atol)
    np.testing.assert_allclose(loaded.encode_text(TEXTS), ref_txt, atol=atol)
    assert loaded.logit_scale == pytest.approx(42.0, rel=1e-3)


@pytest.mark.parametrize("layout", ["state_dict", "open_clip_train", "openai_torchscript"])
def test_vit_checkpoint_in_each_layout_exports_with_open_clip_parity(tiny, tmp_path, layout):
    from rsclip_core.export import export_model

    reference = reference_model("RsTiny-ViT", quick_gelu=layout == "openai_torchscript")
    path = save_layout(reference, tmp_path / "w.pt", layout)
    if layout == "openai_torchscript":  # the fp16 archive is what the reference must reproduce
        reference = reference.half().float()
    state, seen = read_checkpoint_file(path)
    assert seen == layout and all(v.dtype != torch.float16 for v in state.values())
    name = "open_clip:RsTiny-ViT" + ("@rstiny-openai" if layout == "openai_torchscript" else "")
    with _tiny_entry("rstiny-openai", "RsTiny-ViT", quick_gelu=True):
        out = export_model(name, tmp_path / "out", checkpoint=path)
    meta = json.loads((out / "rsclip.json").read_text())
    assert meta["source"]["layout"] == layout and meta["tokenizer_kind"] == "clip-bpe"
    assert_exported_matches(out, reference)


def test_resnet_and_mci_towers_export_reparameterized_with_parity(tiny, tmp_path):
    from rsclip_core.export import export_model

    for arch in ("RsTiny-RN", "RsTiny-MCi"):
        reference = reference_model(arch)
        path = save_layout(reference, tmp_path / f"{arch}.pt", "state_dict")
        out = export_model(f"open_clip:{arch}", tmp_path / arch, checkpoint=path)
        assert_exported_matches(out, reference)
    # Apple ml-mobileclip's own layout (image_encoder.model.*, text_encoder.*), converted by open_clip
    apple = reference_model("RsTiny-MCi", seed=4)
    with torch.no_grad():
        apple.visual.trunk.head.fc.bias.zero_()  # ml-mobileclip's projection has no bias
    path = save_layout(apple, tmp_path / "mobileclip_s1.pt", "ml_mobileclip")
    assert read_checkpoint_file(path)[1] == "ml_mobileclip"
    out = export_model("open_clip:RsTiny-MCi", tmp_path / "apple", checkpoint=path)
    assert json.loads((out / "rsclip.json").read_text())["source"]["layout"] == "ml_mobileclip"
    assert_exported_matches(out, apple)
    model = create_model("open_clip:RsTiny-MCi", tmp_path / "RsTiny-MCi.pt").reparameterize()
    assert model.reparameterized and any("reparam_conv" in k for k in model.state_dict())
    # a reparameterized student checkpoint loads too (the model folds itself first)
    torch.save({"model": model.state_dict()}, tmp_path / "folded.pt")
    assert create_model("open_clip:RsTiny-MCi", tmp_path / "folded.pt").reparameterized


def test_wrong_architecture_is_one_error_naming_keys(tiny, tmp_path):
    from rsclip_core.export import CheckpointMismatchError, load_model

    path = save_layout(reference_model("RsTiny-RN"), tmp_path / "rn.pt", "state_dict")
    with pytest.raises(CheckpointMismatchError) as info:
        load_model("open_clip:RsTiny-ViT", path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "missing keys: " in message and "visual.conv1.weight" not in message.split("missing")[1].split(";")[0]
    assert "unexpected keys: visual.attnpool" in message


def test_entry_carries_preprocessing_quick_gelu_and_licence(tiny, tmp_path):
    from rsclip_core.export import export_model

    reference = reference_model("RsTiny-ViT", quick_gelu=True)
    path = save_layout(reference, tmp_path / "w.pt", "state_dict")
    with _tiny_entry("rstiny-mc", "RsTiny-ViT", quick_gelu=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     interpolation="bilinear", license="test licence"):
        out = export_model("open_clip:RsTiny-ViT@rstiny-mc", tmp_path / "out", checkpoint=path)
    meta = json.loads((out / "rsclip.json").read_text())
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["interpolation"] == "bilinear"
    assert meta["source"]["entry"] == "rstiny-mc" and meta["source"]["license"] == "test licence"
    assert meta["source"]["quick_gelu"] is True
    assert_exported_matches(out, reference)  # QuickGELU applied: parity with a QuickGELU open_clip model


def test_missing_logit_scale_keeps_the_entry_temperature(tiny, tmp_path):
    reference = reference_model("RsTiny-ViT")
    state = {k: v for k, v in reference.state_dict().items() if k != "logit_scale"}
    torch.save(state, tmp_path / "w.pt")
    with _tiny_entry("rstiny-t", "RsTiny-ViT", logit_scale=50.0):
        model = create_model("open_clip:RsTiny-ViT@rstiny-t", tmp_path / "w.pt")
    assert float(model.logit_scale.exp()) == pytest.approx(50.0, rel=1e-5)


def test_cli_export_with_entry(tiny, tmp_path):
    from click.testing import CliRunner

    from rsclip_core.cli.main import cli

    path = save_layout(reference_model("RsTiny-ViT"), tmp_path / "w.pt", "state_dict")
    with _tiny_entry("rstiny-cli", "RsTiny-ViT", family="rstinyfam"):
        result = CliRunner().invoke(cli, ["export", "open_clip:RsTiny-ViT", "--checkpoint", str(path),
                                          "--entry", "rstinyfam", "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "rsclip.json").read_text())["source"]["entry"] == "rstiny-cli"
    bad = CliRunner().invoke(cli, ["export", "open_clip:RsTiny-ViT", "--checkpoint", str(path),
                                   "--entry", "remoteclip", "-o", str(tmp_path / "out2")])
    assert bad.exit_code != 0 and "no RsTiny-ViT checkpoint" in bad.output


def test_entry_lookup_and_unreproducible_tokenizers_are_clear():
    assert entries.resolve_entry("remoteclip", "ViT-L-14").name == "remoteclip-vit-l-14"
    assert entries.resolve_entry("GeoRSCLIP-ViT-H-14").arch == "ViT-H-14"
    with pytest.raises(entries.UnknownEntryError, match="several architectures"):
        entries.resolve_entry("mobileclip2")
    with pytest.raises(ModelConfigError, match="unknown open_clip architecture"):
        get_model_config("open_clip:NoSuchArch")
    with pytest.raises(ModelConfigError, match="sentencepiece"):
        get_model_config("open_clip:ViT-B-16-SigLIP")
    # an open_clip pretrained tag works as the entry too (its preprocessing / QuickGELU from open_clip's table)
    tagged = get_model_config("open_clip:RN50@yfcc15m")
    assert tagged["open_clip"]["quick_gelu"] is True and tagged["preprocess"]["interpolation"] == "bicubic"
    with pytest.raises(ModelConfigError, match="nor an open_clip pretrained tag"):
        get_model_config("open_clip:ViT-B-32@no-such-tag")
    required = {"RN50", "ViT-B-32", "ViT-L-14", "ViT-H-14", "MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B",
                "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-B", "MobileCLIP2-S3", "MobileCLIP2-S4",
                "MobileCLIP2-L-14"}
    assert required <= {e.arch for e in entries.ENTRIES.values()}
    for entry in entries.ENTRIES.values():
        assert entry.layout in entries.LAYOUTS and entry.license and entry.source and entry.reference
        assert open_clip.get_model_config(entry.arch) is not None, entry.name
        assert get_model_config(f"open_clip:{entry.arch}@{entry.name}")["preprocess"]["mean"] == list(entry.mean)


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint_file(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


class _tiny_entry:
    """Temporarily add a checkpoint entry for a tiny architecture."""

    def __init__(self, name: str, arch: str, **fields) -> None:
        base = {"family": name, "file": "w.pt", "source": "test", "license": "test", "reference": "test"}
        self.entry = entries.CheckpointEntry(name=name, arch=arch, **{**base, **fields})

    def __enter__(self):
        entries.ENTRIES[self.entry.name] = self.entry
        return self.entry

    def __exit__(self, *exc):
        entries.ENTRIES.pop(self.entry.name, None)


# --- the real architectures (random init): key names and shapes as the public files hold them ------------

SLOW_LAYOUT_ENTRIES = sorted(entries.ENTRIES)  # every entry's real architecture


@pytest.mark.slow
@pytest.mark.parametrize("entry_name", SLOW_LAYOUT_ENTRIES)
def test_real_architecture_state_dicts_load(entry_name, tmp_path):
    """open_clip's own (plain CLIP / CustomTextCLIP) state dict of the real architecture, in the entry's
    layout, loads strictly and reproduces open_clip's embeddings."""
    entry = entries.ENTRIES[entry_name]
    torch.manual_seed(0)
    reference = open_clip.create_model(entry.arch, force_quick_gelu=entry.quick_gelu).eval()
    layout = "state_dict" if entry.layout in ("openai_torchscript", "ml_mobileclip") else entry.layout
    state = reference.state_dict()
    if layout == "open_clip_train":
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    else:
        torch.save(state, tmp_path / "w.pt")
    del state
    model = create_model(f"open_clip:{entry.arch}@{entry.name}", tmp_path / "w.pt")
    size = model.preprocess.image_size
    x = torch.randn(1, 3, size, size)
    tokens = open_clip.get_tokenizer(entry.arch)(TEXTS[:1])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), reference.encode_image(x, normalize=True), atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens, normalize=True),
                                   atol=1e-5, rtol=0)


def test_models_cli_lists_checkpoint_entries():
    from click.testing import CliRunner

    from rsclip_core.cli.main import cli

    result = CliRunner().invoke(cli, ["models", "--checkpoints"])
    assert result.exit_code == 0, result.output
    assert "remoteclip-vit-l-14" in result.output and "open_clip:MobileCLIP2-S0" in result.output
    listed = json.loads(CliRunner().invoke(cli, ["models", "--checkpoints", "--json"]).output)
    assert {e["name"] for e in listed} == set(entries.ENTRIES)
    shown = json.loads(CliRunner().invoke(cli, ["models", "open_clip:ViT-L-14@remoteclip"]).output)
    assert shown["open_clip"]["entry"] == "remoteclip-vit-l-14"


def test_open_clip_teacher_reads_every_layout_with_its_entry(tiny, tmp_path):
    """`--teacher NAME=open_clip:ARCH:/file@ENTRY`: any layout (here OpenAI's fp16 TorchScript), the entry's
    QuickGELU / preprocessing, and the teacher's own temperature for the manifest."""
    from PIL import Image

    from rsclip_core.teachers.base import load_teacher

    reference = reference_model("RsTiny-ViT", quick_gelu=True)
    path = save_layout(reference, tmp_path / "ViT-B-32.pt", "openai_torchscript")
    reference = reference.half().float()
    with _tiny_entry("rstiny-openai", "RsTiny-ViT", quick_gelu=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        teacher = load_teacher(f"oa=open_clip:RsTiny-ViT:{path}@rstiny-openai")
    info = teacher.info()
    assert info.name == "oa" and info.kind == "open_clip" and info.arch == "RsTiny-ViT@rstiny-openai"
    assert info.logit_scale == pytest.approx(42.0, rel=1e-3)
    assert teacher.preprocess_source == "checkpoint entry 'rstiny-openai'"
    tokenizer = open_clip.get_tokenizer("RsTiny-ViT")
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_text(tokenizer(TEXTS)), dim=-1).numpy()
    np.testing.assert_allclose(teacher.encode_texts(TEXTS), want, atol=1e-5)
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    with torch.no_grad():  # mean 0 / std 1 from the entry: a white image is all ones
        want_img = reference.encode_image(torch.ones(1, 3, 32, 32), normalize=True).numpy()
    np.testing.assert_allclose(teacher.encode_images([image]), want_img, atol=1e-5)


def test_safetensors_release_loads(tiny, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    reference = reference_model("RsTiny-ViT")
    safetensors.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "w.safetensors")
    model = create_model("open_clip:RsTiny-ViT", tmp_path / "w.safetensors")
    tokens = open_clip.get_tokenizer("RsTiny-ViT")(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens, normalize=True))
