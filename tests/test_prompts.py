"""rsclip_core.prompts: the one home of the prompt templates."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rsclip_core import spec
from rsclip_core.prompts import (
    CAPTION_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    PromptTemplateError,
    check_templates,
    fill_prompts,
)


def test_fill_prompts():
    assert fill_prompts("river lake", ["{}.", "a satellite image of {}."]) == [
        "river lake.",
        "a satellite image of river lake.",
    ]
    assert fill_prompts("x", ("{} {{odd}} braces",)) == ["x {{odd}} braces"]  # no str.format surprises
    with pytest.raises(PromptTemplateError, match="'no placeholder' has no"):
        fill_prompts("x", ["no placeholder"])
    with pytest.raises(PromptTemplateError, match="at least one"):
        fill_prompts("x", [])
    with pytest.raises(PromptTemplateError, match="the string"):
        check_templates("a {}")


def test_every_template_set_is_valid_and_the_model_default_is_the_zero_shot_set():
    for templates in (ZERO_SHOT_TEMPLATES, CAPTION_TEMPLATES):
        assert check_templates(templates) == list(templates)
    meta = spec.ModelMetadata(model_name="m", embed_dim=8, image_size=32, mean=[0.0] * 3, std=[1.0] * 3,
                              context_length=16, logit_scale=1.0)
    assert meta.prompt_templates == list(ZERO_SHOT_TEMPLATES)


def test_prompts_module_is_stdlib_only():
    code = ("import sys, rsclip_core.prompts; "
            "bad = {'numpy', 'torch', 'PIL'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
