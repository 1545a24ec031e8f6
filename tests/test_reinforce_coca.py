"""CoCa captioner plumbing with a random-init tiny open_clip CoCa loaded from a local checkpoint file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsclip_core.data.readers import ImageTextRecord

TINY_COCA = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "attentional_pool": True,
                   "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}


@pytest.fixture(scope="module")
def tiny_coca(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("coca")
    (d / "coca_rsclip_tiny.json").write_text(json.dumps(TINY_COCA))
    open_clip.add_model_config(d / "coca_rsclip_tiny.json")
    torch.manual_seed(0)
    model = open_clip.create_model("coca_rsclip_tiny")
    with torch.no_grad():  # open_clip leaves the decoder's text_projection as torch.empty (garbage) at init
        for param in model.parameters():
            if not torch.isfinite(param).all() or param.abs().max() > 1e3:
                param.normal_(std=0.02)
    torch.save(model.state_dict(), d / "tiny.pt")
    return "coca_rsclip_tiny", d / "tiny.pt"


def test_coca_captioner_from_local_checkpoint(tiny_coca: tuple[str, Path]) -> None:
    from rsclip_core.reinforce.captioners import CocaCaptioner

    arch, ckpt = tiny_coca
    cap = CocaCaptioner(arch, ckpt, max_seq_len=8)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    rec = ImageTextRecord("k", Path("x.jpg"), ["a"])
    out = cap.caption(rec, img, 3, random.Random(1))
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert out == cap.caption(rec, img, 3, random.Random(1))  # seeded sampling is reproducible
    assert cap.describe()["checkpoint"] == str(ckpt) and cap.describe()["kind"] == "coca"


def test_coca_captioner_errors(tmp_path: Path) -> None:
    from rsclip_core.reinforce.captioners import CocaCaptioner

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        CocaCaptioner("coca_ViT-B-32", tmp_path / "missing.pt")
