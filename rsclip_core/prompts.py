"""The prompt templates of rsclip, in one place (stdlib only: inference, the QGIS plugin, evaluation,
teachers and training data all import it).

- ``ZERO_SHOT_TEMPLATES``: the prompt ensemble for zero-shot classification and templated search;
  exported models store it as their metadata's ``prompt_templates`` default.
- ``CAPTION_TEMPLATES``: turn a scene-class name into captions (image-folder datasets as training
  data, label prompts when fitting teachers).
- ``SCENE_CAPTION_TEMPLATES``: the same plus varied wordings, for reinforcement's scene-label captions.
"""

from __future__ import annotations

from collections.abc import Sequence

ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a satellite image of {}.",
    "an aerial image of {}.",
    "a remote sensing image of {}.",
    "an aerial photograph of {}.",
    "a top-down view of {}.",
)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "an aerial image of {}.",
    "a satellite photo of {}.",
    "a remote sensing image of {}.",
    "an overhead view of {}.",
    "a top-down aerial view of {}.",
)

#: scene-label captions with varied wording (reinforcement's label slots): generic overhead-imagery phrasing,
#: no dataset's caption style; CAPTION_TEMPLATES stays the reading of image-folder datasets
SCENE_CAPTION_TEMPLATES: tuple[str, ...] = CAPTION_TEMPLATES + (
    "{} seen from above.",
    "an aerial photograph showing {}.",
    "a high-resolution satellite image of {}.",
    "a bird's-eye view of {}.",
    "{} in an overhead image.",
    "a view of {} from the air.",
    "an orthophoto of {}.",
    "a drone image looking straight down at {}.",
    "overhead imagery of {}.",
    "a satellite view with {}.",
    "this aerial scene shows {}.",
)

PLACEHOLDER = "{}"


class PromptTemplateError(ValueError):
    """A template list that is empty or a template without the ``{}`` placeholder (named in the message)."""


def check_templates(templates: Sequence[str]) -> list[str]:
    """``templates`` as a list; :class:`PromptTemplateError` if it is empty or one lacks ``{}``."""
    if isinstance(templates, str):
        raise PromptTemplateError(f"templates: expected a list of templates, got the string {templates!r}")
    checked = [str(t) for t in templates]
    if not checked:
        raise PromptTemplateError("templates: at least one prompt template is needed")
    for template in checked:
        if PLACEHOLDER not in template:
            raise PromptTemplateError(f"templates: {template!r} has no '{{}}' placeholder for the class name")
    return checked


def fill_prompts(name: str, templates: Sequence[str]) -> list[str]:
    """Every template filled with ``name``: ``"a satellite image of {}."`` -> ``"a satellite image of forest."``."""
    return [template.replace(PLACEHOLDER, str(name)) for template in check_templates(templates)]
