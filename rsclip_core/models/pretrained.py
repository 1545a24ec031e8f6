"""Public CLIP checkpoints as named entries (open_clip ``pretrained.py`` style, one declarative table).

A bare checkpoint file loses what its authors' loading code knew: which open_clip architecture and
activation (QuickGELU) it was trained with, how images were prepared (mean/std, interpolation,
resize mode), the tokenizer and context length, and the licence of the weights. Each
:class:`CheckpointEntry` restores that, taken from the project's own loading code / README
(cited in ``docs/checkpoints.md``). ``rsclip_core.models.open_clip_model`` builds the model and
reads the file in the layout named here.

Layouts (``CheckpointEntry.layout``; the loader detects the layout of any file anyway):

* ``state_dict`` — a plain open_clip ``model.state_dict()`` (RemoteCLIP, GeoRSCLIP, MobileCLIP2,
  the ``*-OpenCLIP`` Hugging Face releases).
* ``open_clip_train`` — open_clip's training checkpoint ``{"epoch", "name", "state_dict":
  {"module.…": …}, "optimizer"}`` (SkyCLIP's ``epoch_*.pt``).
* ``openai_torchscript`` — OpenAI's TorchScript archive (``ViT-B-32.pt``; fp16 weights).
* ``ml_mobileclip`` — Apple ml-mobileclip's own ``mobileclip_s1.pt`` (``image_encoder.model.…``,
  ``text_encoder.…``), converted by open_clip's ``convert_mobile_clip_state_dict``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (1.0, 1.0, 1.0)
LAYOUTS = ("state_dict", "open_clip_train", "openai_torchscript", "ml_mobileclip")

_MIT_OPENAI = "MIT (openai/CLIP LICENSE covers code and weights)"
_APPLE_WEIGHTS = "Apple ml-mobileclip LICENSE_weights_data (use/redistribute, keep notice)"
_APPLE_RESEARCH = "Apple Machine Learning Research Model License (non-commercial research only)"


@dataclass(frozen=True)
class CheckpointEntry:
    """What a public checkpoint file needs to become a model: architecture, preprocessing, tokenizer, licence."""

    name: str  # unique entry name, e.g. "remoteclip-vit-b-32"
    family: str  # e.g. "remoteclip" (``--entry remoteclip`` picks the family's entry for the architecture)
    arch: str  # open_clip architecture (``open_clip.list_models()``)
    file: str  # the file name users download
    source: str  # where users get the file
    license: str  # licence of the weights
    layout: str = "state_dict"
    quick_gelu: bool = False
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    context_length: int = 77
    tokenizer: str = "clip-bpe"
    # Used only when the file holds no learned temperature (open_clip stores ``logit_scale`` as log).
    logit_scale: float = 100.0
    logit_bias: float | None = None
    reference: str = ""  # the loading code / README this entry follows
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data


def _entries() -> list[CheckpointEntry]:
    remote: dict[str, Any] = dict(
        family="remoteclip",
        source="https://huggingface.co/chendelong/RemoteCLIP (files RemoteCLIP-{arch}.pt)",
        license="Apache-2.0 as declared on the chendelong/RemoteCLIP model card (not checked here; "
        "the GitHub repo has no LICENSE file)",
        reference="ChenDelong1999/RemoteCLIP README 'Load RemoteCLIP': open_clip.create_model_and_transforms(name) "
        "then model.load_state_dict(torch.load(ckpt)) (strict, plain state dict, no QuickGELU)",
    )
    geo: dict[str, Any] = dict(
        family="georsclip",
        source="https://huggingface.co/Zilun/GeoRSCLIP (files RS5M_ViT-B-32.pt, RS5M_ViT-H-14.pt)",
        license="MIT (om-ai-lab/RS5M LICENSE; the model card may add terms)",
        notes="RS5M loads these with strict=False; inference_tool.get_preprocess: bicubic resize + centre crop 224, "
        "OpenAI mean/std (subset 'clip')",
    )
    sky: dict[str, Any] = dict(
        family="skyclip",
        source="https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/ (zip with open_clip epoch_*.pt)",
        license="MIT (wangzhecheng/SkyScript LICENSE)",
        layout="open_clip_train",
        reference="wangzhecheng/SkyScript README: open_clip training (customized_train_and_test.py), "
        "--pretrained openai for ViT-L-14, laion2b_e16 for ViT-B-32",
    )
    mc: dict[str, Any] = dict(
        family="mobileclip",
        mean=ZERO_MEAN,
        std=UNIT_STD,
        interpolation="bilinear",
        license=_APPLE_WEIGHTS,
        layout="ml_mobileclip",
        reference="apple/ml-mobileclip README + open_clip pretrained.py _mccfg (datacompdr); "
        "open_clip convert.py convert_mobile_clip_state_dict for Apple's own .pt",
    )
    mc2: dict[str, Any] = dict(
        family="mobileclip2",
        interpolation="bilinear",
        license=_APPLE_RESEARCH,
        reference="apple/ml-mobileclip LICENSE_MODELS + open_clip pretrained.py MobileCLIP2 entries (dfndr2b): "
        "_mccfg (mean 0 / std 1) for S0, S2, B; _mc2cfg (OpenAI mean/std) for S3, S4, L-14 (bicubic)",
    )
    openai: dict[str, Any] = dict(
        family="openai",
        quick_gelu=True,
        license=_MIT_OPENAI,
        layout="openai_torchscript",
        reference="openai/CLIP clip.py load() (TorchScript archive, jit=False path rebuilds from its state dict); "
        "open_clip openai.py load_openai_model / build_model_from_openai_state_dict",
    )

    def mc2_source(size: str) -> str:
        return (f"https://huggingface.co/apple/MobileCLIP2-{size} (mobileclip2_{size.lower().replace('-', '')}.pt) "
                f"or https://huggingface.co/timm/MobileCLIP2-{size}-OpenCLIP")

    return [
        CheckpointEntry(name="remoteclip-rn50", arch="RN50", file="RemoteCLIP-RN50.pt", **remote),
        CheckpointEntry(name="remoteclip-vit-b-32", arch="ViT-B-32", file="RemoteCLIP-ViT-B-32.pt", **remote),
        CheckpointEntry(name="remoteclip-vit-l-14", arch="ViT-L-14", file="RemoteCLIP-ViT-L-14.pt", **remote),
        CheckpointEntry(
            name="georsclip-vit-b-32", arch="ViT-B-32", file="RS5M_ViT-B-32.pt", quick_gelu=True,
            reference="om-ai-lab/RS5M inference/inference.py build_model: create_model_and_transforms('ViT-B/32', "
            "pretrained='openai') (QuickGELU) + load_state_dict(torch.load(ckpt), strict=False)", **geo,
        ),
        CheckpointEntry(
            name="georsclip-vit-h-14", arch="ViT-H-14", file="RS5M_ViT-H-14.pt",
            reference="om-ai-lab/RS5M inference/inference.py build_model: create_model_and_transforms('ViT-H/14', "
            "pretrained='laion2b_s32b_b79k') + load_state_dict(torch.load(ckpt), strict=False)", **geo,
        ),
        CheckpointEntry(name="skyclip-vit-b-32", arch="ViT-B-32", file="SkyCLIP_ViT_B32_top50pct.zip -> epoch_20.pt",
                        notes="continual pretraining from open_clip laion2b_e16 (GELU)", **sky),
        CheckpointEntry(name="skyclip-vit-l-14", arch="ViT-L-14", file="SkyCLIP_ViT_L14_top30pct.zip -> epoch_20.pt",
                        quick_gelu=True, notes="continual pretraining from OpenAI ViT-L-14 (QuickGELU)", **sky),
        CheckpointEntry(name="mobileclip-s1", arch="MobileCLIP-S1", file="mobileclip_s1.pt",
                        source="https://docs-assets.developer.apple.com/ml-research/datasets/mobileclip/mobileclip_s1.pt "
                        "or https://huggingface.co/apple/MobileCLIP-S1-OpenCLIP (open_clip state dict)", **mc),
        CheckpointEntry(name="mobileclip-s2", arch="MobileCLIP-S2", file="mobileclip_s2.pt",
                        source="https://docs-assets.developer.apple.com/ml-research/datasets/mobileclip/mobileclip_s2.pt "
                        "or https://huggingface.co/apple/MobileCLIP-S2-OpenCLIP (open_clip state dict)", **mc),
        CheckpointEntry(name="mobileclip-b", arch="MobileCLIP-B", file="mobileclip_b.pt",
                        source="https://docs-assets.developer.apple.com/ml-research/datasets/mobileclip/mobileclip_b.pt "
                        "or https://huggingface.co/apple/MobileCLIP-B-OpenCLIP (open_clip state dict)", **mc),
        CheckpointEntry(name="mobileclip2-s0", arch="MobileCLIP2-S0", file="mobileclip2_s0.pt", mean=ZERO_MEAN,
                        std=UNIT_STD, source=mc2_source("S0"), **mc2),
        CheckpointEntry(name="mobileclip2-s2", arch="MobileCLIP2-S2", file="mobileclip2_s2.pt", mean=ZERO_MEAN,
                        std=UNIT_STD, source=mc2_source("S2"), **mc2),
        CheckpointEntry(name="mobileclip2-b", arch="MobileCLIP2-B", file="mobileclip2_b.pt", mean=ZERO_MEAN,
                        std=UNIT_STD, source=mc2_source("B"), **mc2),
        CheckpointEntry(name="mobileclip2-s3", arch="MobileCLIP2-S3", file="mobileclip2_s3.pt",
                        source=mc2_source("S3"), **mc2),
        CheckpointEntry(name="mobileclip2-s4", arch="MobileCLIP2-S4", file="mobileclip2_s4.pt",
                        source=mc2_source("S4"), **mc2),
        CheckpointEntry(name="mobileclip2-l-14", arch="MobileCLIP2-L-14", file="mobileclip2_l14.pt",
                        source=mc2_source("L-14"), **{**mc2, "interpolation": "bicubic"}),
        CheckpointEntry(name="openai-rn50", arch="RN50", file="RN50.pt",
                        source="https://openaipublic.azureedge.net/clip/models/.../RN50.pt (URLs in openai/CLIP clip.py)",
                        **openai),
        CheckpointEntry(name="openai-vit-b-32", arch="ViT-B-32", file="ViT-B-32.pt",
                        source="https://openaipublic.azureedge.net/clip/models/.../ViT-B-32.pt (URLs in openai/CLIP "
                        "clip.py)", **openai),
        CheckpointEntry(name="openai-vit-b-16", arch="ViT-B-16", file="ViT-B-16.pt",
                        source="https://openaipublic.azureedge.net/clip/models/.../ViT-B-16.pt (URLs in openai/CLIP "
                        "clip.py)", **openai),
        CheckpointEntry(name="openai-vit-l-14", arch="ViT-L-14", file="ViT-L-14.pt",
                        source="https://openaipublic.azureedge.net/clip/models/.../ViT-L-14.pt (URLs in openai/CLIP "
                        "clip.py)", **openai),
    ]


ENTRIES: dict[str, CheckpointEntry] = {e.name: e for e in _entries()}


class UnknownEntryError(KeyError):
    """No checkpoint entry of that name (for that architecture)."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else ""


def list_entries() -> list[str]:
    """Names of the checkpoint entries."""
    return sorted(ENTRIES)


def resolve_entry(name: str, arch: str | None = None) -> CheckpointEntry:
    """Entry ``name`` (``remoteclip-vit-b-32``), or the entry of family ``name`` for ``arch`` (``remoteclip``)."""
    key = name.strip().lower()
    if key in ENTRIES:
        entry = ENTRIES[key]
        if arch is not None and entry.arch != arch:
            raise UnknownEntryError(f"entry {entry.name!r} is for open_clip {entry.arch}, not {arch}")
        return entry
    family = [e for e in ENTRIES.values() if e.family == key]
    if family:
        if arch is None:
            raise UnknownEntryError(f"entry family {key!r} has several architectures: name one of "
                                    f"{', '.join(e.name for e in family)}")
        for entry in family:
            if entry.arch == arch:
                return entry
        raise UnknownEntryError(f"entry family {key!r} has no {arch} checkpoint (it has "
                                f"{', '.join(e.arch for e in family)})")
    raise UnknownEntryError(f"unknown checkpoint entry {name!r}; known: {', '.join(list_entries())}")
