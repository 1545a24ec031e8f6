"""Replayable image augmentations for dataset reinforcement.

An augmentation is described by a small JSON-serialisable ``dict`` of parameters (the same idea as
ml-mobileclip's ``param_aug``): sampling draws the parameters from a seeded ``random.Random``, and
:func:`reapply` turns ``(original image, params)`` into the augmented view. Sampling *is* "draw
params, then :func:`reapply`", so a stored parameter set replays bit-identically on the original
image (PIL operations only, no hidden randomness). Overhead imagery has no "up": vertical flips and
90-degree rotations are first-class.

Parameter layout (short keys keep ``paug.json`` small)::

    {"crop": [top, left, height, width],     # RandomResizedCrop box in original pixels
     "size": [out_h, out_w],                 # output size of the crop-resize
     "hf": 0|1, "vf": 0|1, "r90": 0..3,      # hflip, vflip, counter-clockwise 90-degree turns
     "ra": [[op, magnitude], ...],           # RandAugment ops, magnitude in [0, 10] (signed ops: +-)
     "cj": [brightness, contrast, saturation, hue, order],  # colour jitter factors, or absent
     "hz": [alpha, r, g, b]                  # haze: blend towards airlight colour (r, g, b), or absent
    }

Every key but ``crop``/``size`` is optional, and a parameter set replays the same way whatever
config drew it: parameter sets stored before a key existed replay bit-identically.

Configs: :class:`AugmentationConfig` defaults are the original RSICD recipe (``"rsicd-v1"``: crops of
25-100 % of the area, independent flips / quarter turns, no haze; manifests that predate the newer
fields read back as exactly that). :func:`augmentation_preset` names the recipes; ``"multiscale-rs"``
(:data:`DEFAULT_PRESET`, the reinforcement default) adds zoom-in crops down to 10 % of the area
with log-uniform area (equal weight per zoom octave: imagery at 0.3 m/px looks like RSICD scenes seen
~3x closer), a uniform draw over the 8 dihedral transforms (overhead imagery has no "up") and haze;
``"multiscale-rs-uniform"`` draws the same zoom range with uniform area (fewer deep zooms).

The crop-resize is THE preprocessing resample (:func:`rsclip_core.preprocess.resample`): one
resample of the stored crop box. ``reapply(image, params)`` replays the view as stored (at
``size``, :data:`STORED_VIEW_INTERPOLATION`: what the teachers embedded); ``reapply(image, params,
size=S, interpolation=...)`` produces the same crop directly at a model's ``S x S`` input with
that model's interpolation (training), instead of resizing the stored view a second time.
Ops after the crop (flips, quarter turns, RandAugment, colour jitter) run at the output size;
the translations are relative to it.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from PIL import Image, ImageEnhance, ImageOps

from rsclip_core.preprocess import PreprocessConfig, PreprocessConfigError, crop_box, resample

AugParams = dict[str, Any]

#: the interpolation stored views were (and are) resampled with: replaying without arguments is bit-identical
STORED_VIEW_INTERPOLATION = "bilinear"
_RESAMPLE = Image.Resampling.BILINEAR  # inside the RandAugment ops (rotate, shear, translate)
_FILL = (128, 128, 128)


class AugmentationParamsError(ValueError):
    """Stored augmentation parameters that cannot be replayed."""


# --- RandAugment ops: (image, magnitude in [-10, 10]) -> image ---------------------------------


def _rotate(img: Image.Image, m: float) -> Image.Image:
    return img.rotate(m * 3.0, resample=_RESAMPLE, fillcolor=_FILL)  # up to +-30 degrees


def _shear_x(img: Image.Image, m: float) -> Image.Image:
    s = m * 0.03
    return img.transform(img.size, Image.Transform.AFFINE, (1, s, 0, 0, 1, 0), _RESAMPLE, fillcolor=_FILL)


def _shear_y(img: Image.Image, m: float) -> Image.Image:
    s = m * 0.03
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, s, 1, 0), _RESAMPLE, fillcolor=_FILL)


def _translate_x(img: Image.Image, m: float) -> Image.Image:
    dx = round(m * 0.045 * img.size[0])
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, 0), _RESAMPLE, fillcolor=_FILL)


def _translate_y(img: Image.Image, m: float) -> Image.Image:
    dy = round(m * 0.045 * img.size[1])
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, dy), _RESAMPLE, fillcolor=_FILL)


def _enhance(kind: type) -> Callable[[Image.Image, float], Image.Image]:
    def op(img: Image.Image, m: float) -> Image.Image:
        return kind(img).enhance(1.0 + m * 0.09)  # factor in [0.1, 1.9]

    return op


def _solarize(img: Image.Image, m: float) -> Image.Image:
    return ImageOps.solarize(img, 256 - round(abs(m) * 25.6))


def _posterize(img: Image.Image, m: float) -> Image.Image:
    return ImageOps.posterize(img, 8 - int(abs(m) * 0.4))  # 8..4 bits


def _autocontrast(img: Image.Image, m: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def _equalize(img: Image.Image, m: float) -> Image.Image:
    return ImageOps.equalize(img)


#: op name -> (function, signed magnitude?)
RANDAUGMENT_OPS: dict[str, tuple[Callable[[Image.Image, float], Image.Image], bool]] = {
    "AutoContrast": (_autocontrast, False),
    "Equalize": (_equalize, False),
    "Rotate": (_rotate, True),
    "Solarize": (_solarize, False),
    "Color": (_enhance(ImageEnhance.Color), True),
    "Posterize": (_posterize, False),
    "Contrast": (_enhance(ImageEnhance.Contrast), True),
    "Brightness": (_enhance(ImageEnhance.Brightness), True),
    "Sharpness": (_enhance(ImageEnhance.Sharpness), True),
    "ShearX": (_shear_x, True),
    "ShearY": (_shear_y, True),
    "TranslateX": (_translate_x, True),
    "TranslateY": (_translate_y, True),
}


@dataclass
class AugmentationConfig:
    """What :func:`sample_params` draws from (recorded in the reinforced dataset's manifest)."""

    output_size: int = 224
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot90_p: float = 0.75  # probability of a non-zero number of quarter turns
    randaugment_n: int = 2
    randaugment_m: float = 9.0  # upper bound of the sampled magnitude (uniform in [0, m])
    randaugment_p: float = 0.5  # probability to apply RandAugment at all
    randaugment_ops: tuple[str, ...] = field(default_factory=lambda: tuple(RANDAUGMENT_OPS))
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.05)
    color_jitter_p: float = 0.8
    scale_sampling: str = "uniform"  # crop area uniform in `scale`, or "log": log-uniform (zoom octaves alike)
    dihedral: str = "independent"  # flips/turns drawn with their own p's, or "uniform": one of the 8 alike
    haze_p: float = 0.0  # probability of haze (blend towards a bright airlight colour)
    haze_strength: tuple[float, float] = (0.05, 0.35)  # blend weight of the airlight
    haze_brightness: tuple[float, float] = (200.0, 255.0)  # airlight brightness (0-255)
    haze_tint: float = 0.08  # up to this much less red (half as much less green): bluish-white airlight

    def __post_init__(self) -> None:
        if self.scale_sampling not in SCALE_SAMPLINGS:
            raise AugmentationParamsError(
                f"augmentation scale_sampling: {self.scale_sampling!r} is not one of {', '.join(SCALE_SAMPLINGS)}")
        if self.dihedral not in DIHEDRAL_MODES:
            raise AugmentationParamsError(
                f"augmentation dihedral: {self.dihedral!r} is not one of {', '.join(DIHEDRAL_MODES)}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise AugmentationParamsError(f"augmentation scale: need 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0.0 <= self.haze_p <= 1.0:
            raise AugmentationParamsError(f"augmentation haze_p: must lie in [0, 1], got {self.haze_p}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentationConfig:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


SCALE_SAMPLINGS = ("uniform", "log")
DIHEDRAL_MODES = ("independent", "uniform")


def augmentation_preset(name: str, output_size: int = 224) -> AugmentationConfig:
    """A named augmentation recipe (:data:`AUGMENTATION_PRESETS`) at ``output_size``."""
    if name not in AUGMENTATION_PRESETS:
        raise AugmentationParamsError(f"augmentation preset {name!r}: choose from {', '.join(AUGMENTATION_PRESETS)}")
    return AugmentationConfig(output_size=output_size, **AUGMENTATION_PRESETS[name])


#: preset name -> AugmentationConfig fields over the defaults ("rsicd-v1" IS the defaults)
AUGMENTATION_PRESETS: dict[str, dict[str, Any]] = {
    "rsicd-v1": {},
    "multiscale-rs": {"scale": (0.1, 1.0), "scale_sampling": "log", "dihedral": "uniform", "haze_p": 0.25},
    # the same zoom range with the crop area uniform, not log-uniform: median area ~55 % instead of ~32 %
    # (17 % of the views below a quarter of the scene), so most views still match their scene's captions
    "multiscale-rs-uniform": {"scale": (0.1, 1.0), "scale_sampling": "uniform", "dihedral": "uniform",
                              "haze_p": 0.25},
}
DEFAULT_PRESET = "multiscale-rs"


def _round(x: float, nd: int = 3) -> float:
    return float(round(x, nd))


def sample_crop_box(
    width: int, height: int, rng: random.Random, scale: tuple[float, float], ratio: tuple[float, float],
    scale_sampling: str = "uniform",
) -> list[int]:
    """RandomResizedCrop box ``[top, left, h, w]`` (torchvision's algorithm, on ``rng``); ``scale_sampling
    "log"`` draws the area fraction log-uniformly (same number of draws)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        if scale_sampling == "log":
            target_area = area * math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
        else:
            target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return [top, left, h, w]
    # fallback: central crop clamped to the ratio range
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def sample_params(width: int, height: int, rng: random.Random, config: AugmentationConfig) -> AugParams:
    """Draw one augmentation parameter set for an image of ``width`` x ``height`` pixels."""
    if width <= 0 or height <= 0:
        raise AugmentationParamsError(f"image size must be positive, got {width}x{height}")
    params: AugParams = {
        "crop": sample_crop_box(width, height, rng, config.scale, config.ratio, config.scale_sampling),
        "size": [config.output_size, config.output_size],
    }
    if config.dihedral == "uniform":  # element r90^k . hflip^f of the dihedral group, all 8 alike
        element = rng.randrange(8)
        params.update(hf=element // 4, vf=0, r90=element % 4)
    else:
        params.update(hf=int(rng.random() < config.hflip_p), vf=int(rng.random() < config.vflip_p),
                      r90=rng.randint(1, 3) if rng.random() < config.rot90_p else 0)
    if config.randaugment_n > 0 and rng.random() < config.randaugment_p:
        ops = []
        for _ in range(config.randaugment_n):
            name = rng.choice(list(config.randaugment_ops))
            magnitude = rng.uniform(0.0, config.randaugment_m)
            if RANDAUGMENT_OPS[name][1] and rng.random() < 0.5:
                magnitude = -magnitude
            ops.append([name, _round(magnitude, 2)])
        params["ra"] = ops
    if rng.random() < config.color_jitter_p:
        b, c, s, h = config.color_jitter
        order = list(range(4))
        rng.shuffle(order)
        params["cj"] = [
            _round(rng.uniform(max(0.0, 1 - b), 1 + b)),
            _round(rng.uniform(max(0.0, 1 - c), 1 + c)),
            _round(rng.uniform(max(0.0, 1 - s), 1 + s)),
            _round(rng.uniform(-h, h)),
            int("".join(map(str, order))),  # permutation packed as digits, e.g. 2031
        ]
    if config.haze_p > 0 and rng.random() < config.haze_p:  # no draw at all when off: old configs replay
        brightness = rng.uniform(*config.haze_brightness)
        tint = rng.uniform(0.0, config.haze_tint)
        params["hz"] = [_round(rng.uniform(*config.haze_strength)), round(brightness * (1 - tint)),
                        round(brightness * (1 - tint / 2)), round(brightness)]
    return params


def _adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    if hue == 0.0:
        return img
    h, s, v = img.convert("HSV").split()
    shift = round(hue * 255) % 256
    h = h.point(lambda x: (x + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def _color_jitter(img: Image.Image, cj: list[Any]) -> Image.Image:
    b, c, s, h, order = cj
    digits = f"{int(order):04d}"
    for d in digits:
        if d == "0":
            img = ImageEnhance.Brightness(img).enhance(float(b))
        elif d == "1":
            img = ImageEnhance.Contrast(img).enhance(float(c))
        elif d == "2":
            img = ImageEnhance.Color(img).enhance(float(s))
        elif d == "3":
            img = _adjust_hue(img, float(h))
        else:
            raise AugmentationParamsError(f"bad colour-jitter order {order!r}")
    return img


_ROTATIONS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


def reapply(image: Image.Image, params: AugParams, size: int | None = None,
            interpolation: str = STORED_VIEW_INTERPOLATION) -> Image.Image:
    """Replay stored augmentation ``params`` on the original ``image`` (RGB); deterministic.

    ``size`` (square side) replaces the stored output size: the crop box is resampled straight
    to ``size x size`` with ``interpolation`` (one resample), the rest of the ops follow.
    """
    try:
        top, left, h, w = (int(v) for v in params["crop"])
        out_h, out_w = (int(v) for v in params["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AugmentationParamsError(f"augmentation params need 'crop' and 'size': {params!r}") from exc
    if size is not None:
        if out_h != out_w:
            raise AugmentationParamsError(f"stored view size {[out_h, out_w]} is not square: cannot replay at {size}")
        out_h = out_w = int(size)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > image.height or left + w > image.width:
        raise AugmentationParamsError(
            f"crop box {params['crop']} does not fit an image of {image.width}x{image.height}"
        )
    try:
        img = resample(image, (left, top, left + w, top + h), (out_w, out_h), interpolation)
    except PreprocessConfigError as exc:
        raise AugmentationParamsError(str(exc)) from exc
    if params.get("hf"):
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.get("vf"):
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    k = int(params.get("r90", 0)) % 4
    if k:
        img = img.transpose(_ROTATIONS[k])
    for name, magnitude in params.get("ra", []):
        if name not in RANDAUGMENT_OPS:
            raise AugmentationParamsError(f"unknown RandAugment op {name!r}")
        img = RANDAUGMENT_OPS[name][0](img, float(magnitude))
    if "cj" in params:
        img = _color_jitter(img, params["cj"])
    if "hz" in params:
        img = _haze(img, params["hz"])
    return img


def _haze(img: Image.Image, hz: list[Any]) -> Image.Image:
    """Atmospheric haze: ``(1 - alpha) * image + alpha * airlight``."""
    try:
        alpha, r, g, b = hz
        airlight = Image.new("RGB", img.size, (int(r), int(g), int(b)))
        return Image.blend(img, airlight, float(alpha))
    except (TypeError, ValueError) as exc:
        raise AugmentationParamsError(f"bad haze params {hz!r} (need [alpha, r, g, b])") from exc


def augment(image: Image.Image, rng: random.Random, config: AugmentationConfig) -> tuple[Image.Image, AugParams]:
    """Sample parameters for ``image`` and apply them; returns ``(view, params)``."""
    params = sample_params(image.width, image.height, rng, config)
    return reapply(image, params), params


def center_view_params(width: int, height: int, output_size: int, resize_mode: str = "shortest") -> AugParams:
    """Parameters of the plain (un-augmented) view: the preprocessing crop box
    (:func:`rsclip_core.preprocess.crop_box`: the largest central square, or the whole image for
    ``squash``), resized to ``output_size``."""
    left, top, right, bottom = crop_box(width, height, resize_mode)
    return {"crop": [top, left, bottom - top, right - left], "size": [output_size, output_size]}


def model_view(image: Image.Image, params: AugParams, cfg: PreprocessConfig) -> Image.Image:
    """The view of ``params`` as a model with preprocessing ``cfg`` sees it (``cfg.image_size``,
    ``cfg.interpolation``, one resample of the stored crop)."""
    return reapply(image, params, size=cfg.image_size, interpolation=cfg.interpolation)
