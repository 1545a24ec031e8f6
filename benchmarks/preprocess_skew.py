"""How far the old training tensor (double resize) was from the one-resample training/serving tensor.

Before ``rsclip_core.preprocess``, a training view was the stored crop resized bilinear to the
reinforced dataset's view size (224 px), then resized again bicubic to the student's size, while
inference resampled once with the config's interpolation. This measures the difference, on real
RSICD images, for the bundled model's preprocessing (no model is run, nothing is trained):

* ``centre``: the un-augmented centre view (what evaluation / inference see);
* ``augmented``: stored random-resized-crop views (geometry + flips only, the default
  ``AugmentationConfig`` box sampler), where the old path upsampled the crop to 224 first.

Mean / max absolute difference is in standardised-input units (x - mean) / std, and in 8-bit
pixel levels. Writes ``benchmarks/results/preprocess_skew.md`` unless ``--no-write``.

    python benchmarks/preprocess_skew.py --images ../shared/data/rsicd/images --n 64
"""

from __future__ import annotations

import argparse
import datetime
import random
from pathlib import Path

import numpy as np
from PIL import Image

from rsclip_core.data.augment import AugmentationConfig, center_view_params, model_view, reapply, sample_params
from rsclip_core.resources import bundled_model_dir
from rsclip_core.preprocess import PreprocessConfig, standardise, to_pixels
from rsclip_core.spec import ModelMetadata

STORED_VIEW_SIZE = 224  # `rsclip reinforce --image-size` default, used for the bundled model's data


def old_training_tensor(image: Image.Image, params: dict, cfg: PreprocessConfig) -> np.ndarray:
    """The former path: stored view (bilinear, 224) then ``image_to_tensor``'s bicubic resize."""
    view = reapply(image, params)
    view = view.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC)
    return standardise(to_pixels(view), cfg)


def new_training_tensor(image: Image.Image, params: dict, cfg: PreprocessConfig) -> np.ndarray:
    return standardise(to_pixels(model_view(image, params, cfg)), cfg)


def measure(paths: list[Path], cfg: PreprocessConfig, views: int, seed: int) -> dict[str, np.ndarray]:
    geometric = AugmentationConfig(output_size=STORED_VIEW_SIZE, randaugment_p=0.0, color_jitter_p=0.0)
    rows: dict[str, list[float]] = {"centre": [], "augmented": []}
    peaks: dict[str, list[float]] = {"centre": [], "augmented": []}
    for path in paths:
        with Image.open(path) as img:
            image = img.convert("RGB")
        params = {"centre": [center_view_params(image.width, image.height, STORED_VIEW_SIZE, cfg.resize_mode)]}
        rng = random.Random(f"{seed}/{path.name}")
        params["augmented"] = [sample_params(image.width, image.height, rng, geometric) for _ in range(views)]
        for kind, plist in params.items():
            for p in plist:
                diff = np.abs(old_training_tensor(image, p, cfg) - new_training_tensor(image, p, cfg))
                rows[kind].append(float(diff.mean()))
                peaks[kind].append(float(diff.max()))
    return {k: np.asarray(v) for k, v in rows.items()} | {f"{k}_max": np.asarray(v) for k, v in peaks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/rsicd/images"))
    parser.add_argument("--model-dir", type=Path, default=bundled_model_dir())
    parser.add_argument("--n", type=int, default=64, help="number of images (evenly spaced in name order)")
    parser.add_argument("--views", type=int, default=5, help="augmented views per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    files = sorted(args.images.glob("*.jpg"))
    if not files:
        raise SystemExit(f"{args.images}: no .jpg images")
    picks = np.linspace(0, len(files) - 1, min(args.n, len(files))).round().astype(int)
    paths = [files[i] for i in sorted(set(picks.tolist()))]
    meta = ModelMetadata.read(args.model_dir)
    repo = Path(__file__).resolve().parents[1]
    shown = args.model_dir.resolve()
    shown = shown.relative_to(repo) if shown.is_relative_to(repo) else shown
    cfg = meta.preprocess
    res = measure(paths, cfg, args.views, args.seed)
    scale = float(np.mean(cfg.std)) * 255.0  # standardised units -> 8-bit levels
    lines = [
        "# Train/serve preprocessing skew of the former training path",
        "",
        f"`python benchmarks/preprocess_skew.py --images {args.images} --n {args.n} --views {args.views}` "
        f"({datetime.date.today().isoformat()}); model `{meta.model_name}` (`{shown}`): "
        f"{cfg.image_size} px, {cfg.interpolation}, {cfg.resize_mode}, mean {list(cfg.mean)} std {list(cfg.std)}; "
        f"{len(paths)} RSICD images, stored view size {STORED_VIEW_SIZE} px.",
        "",
        "old = stored crop -> bilinear 224 px -> bicubic student size; new = stored crop -> student size, "
        "config interpolation, one resample (= inference). |old - new| of the standardised input:",
        "",
        "| view | n | mean abs diff | (8-bit levels) | mean of per-view max | worst max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("centre", "augmented"):
        mean, peak = res[kind], res[f"{kind}_max"]
        lines.append(f"| {kind} | {len(mean)} | {mean.mean():.4f} | {mean.mean() * scale:.2f} | "
                     f"{peak.mean():.3f} | {peak.max():.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        out = Path(__file__).parent / "results" / "preprocess_skew.md"
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
