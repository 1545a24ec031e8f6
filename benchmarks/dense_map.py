"""Benchmark maps finer than a tile: tile-level vs dense vs overlapping windows, per-pixel truth.

A mosaic of RSSCN7 scenes (224 px each; 7 classes) is generated: the raster is cut into blocks of
random sizes (a guillotine partition, 48..224 px, never aligned to the tile grid) and each block
is filled with a crop of a random scene of a random class; the class of every pixel is the truth
raster. Each map detail is run end to end with the bundled model through the torch-free inference
layer (index build + classify at 16 output cells per tile = 8 px cells) and scored per pixel:
pixel accuracy, mIoU over the 7 classes, and seconds per megapixel. "oracle tile" is the best any
one-class-per-tile map can do (the majority truth class of every tile), the ceiling of tile maps.

    python benchmarks/dense_map.py                      # 3 mosaics of 1536 px, bundled model
    python benchmarks/dense_map.py --size 1024 --mosaics 1 --no-write   # smoke run

Writes benchmarks/results/dense_map.md (with the command that produced it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dense_map.md"
DATA = REPO.parent / "shared" / "data" / "rsscn7" if (REPO.parent / "shared").exists() else Path("/work/shared/data/rsscn7")
CLASSES = {  # RSSCN7 folder -> (class name, prompts)
    "aGrass": ("grass", ["grassland", "a meadow"]),
    "bField": ("field", ["farmland", "cropland fields"]),
    "cIndustry": ("industry", ["an industrial area", "factories"]),
    "dRiverLake": ("river / lake", ["a river", "a lake"]),
    "eForest": ("forest", ["a forest", "dense trees"]),
    "fResident": ("residential", ["a residential area", "houses"]),
    "gParking": ("parking", ["a parking lot", "parked cars"]),
}
MIN_BLOCK, MAX_BLOCK = 48, 224
CONFIGS = [  # label, detail, tile overlap
    ("tile", "tile", 0.0),
    ("dense", "dense", 0.0),
    ("windows (overlap 0.5)", "windows", 0.5),
    ("dense+windows (overlap 0.5)", "dense+windows", 0.5),
]
CELLS_PER_TILE = 16


def _blocks(rng: np.random.Generator, x: int, y: int, w: int, h: int, out: list) -> None:
    """Guillotine partition into blocks of MIN_BLOCK..MAX_BLOCK px (sizes random)."""
    small = w <= MAX_BLOCK and h <= MAX_BLOCK
    if small and (rng.random() < 0.35 or max(w, h) < 2 * MIN_BLOCK):
        out.append((x, y, w, h))
        return
    horizontal = w >= h if not small else rng.random() < w / (w + h)
    length = w if horizontal else h
    if length < 2 * MIN_BLOCK:
        out.append((x, y, w, h))
        return
    cut = int(rng.integers(MIN_BLOCK, length - MIN_BLOCK + 1))
    if horizontal:
        _blocks(rng, x, y, cut, h, out)
        _blocks(rng, x + cut, y, w - cut, h, out)
    else:
        _blocks(rng, x, y, w, cut, out)
        _blocks(rng, x, y + cut, w, h - cut, out)


def make_mosaic(path: Path, size: int, seed: int) -> np.ndarray:
    """Write the mosaic GeoTIFF (and ``<stem>.truth.tif``); returns the truth codes (1..7) [size, size]."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    folders = sorted(CLASSES)
    files = {f: sorted((DATA / f).glob("*.jpg")) for f in folders}
    rgb = np.zeros((3, size, size), dtype=np.uint8)
    truth = np.zeros((size, size), dtype=np.uint8)
    blocks: list = []
    _blocks(rng, 0, 0, size, size, blocks)
    for x, y, w, h in blocks:
        code = int(rng.integers(len(folders)))
        image = np.asarray(Image.open(files[folders[code]][int(rng.integers(len(files[folders[code]])))]).convert("RGB"))
        oy, ox = int(rng.integers(image.shape[0] - h + 1)), int(rng.integers(image.shape[1] - w + 1))
        rgb[:, y:y + h, x:x + w] = image[oy:oy + h, ox:ox + w].transpose(2, 0, 1)
        truth[y:y + h, x:x + w] = code + 1
    profile = {"driver": "GTiff", "width": size, "height": size, "dtype": "uint8", "crs": "EPSG:32610",
               "transform": from_origin(560000.0, 4190000.0, 1.0, 1.0), "tiled": True, "blockxsize": 256,
               "blockysize": 256}
    with rasterio.open(path, "w", count=3, photometric="RGB", **profile) as dst:
        dst.write(rgb)
    with rasterio.open(path.with_suffix(".truth.tif"), "w", count=1, **profile) as dst:
        dst.write(truth, 1)
    return truth


def per_pixel(codes: np.ndarray, transform: object, size: int) -> np.ndarray:
    """The map's code at every raster pixel (the cell containing the pixel centre)."""
    cols = np.minimum(((np.arange(size) + 0.5) / transform.a).astype(np.int64), codes.shape[1] - 1)
    rows = np.minimum(((np.arange(size) + 0.5) / -transform.e).astype(np.int64), codes.shape[0] - 1)
    return codes[np.ix_(rows, cols)]


def scores(pred: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    acc = float((pred == truth).mean())
    ious = []
    for c in range(1, k + 1):
        union = np.logical_or(pred == c, truth == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, truth == c).sum() / union)
    return acc, float(np.mean(ious))


def oracle_tile(truth: np.ndarray, tile: int, k: int) -> np.ndarray:
    """Every tile painted with its majority truth class: the ceiling of one-class-per-tile maps."""
    out = np.zeros_like(truth)
    for y in range(0, truth.shape[0], tile):
        for x in range(0, truth.shape[1], tile):
            block = truth[y:y + tile, x:x + tile]
            out[y:y + tile, x:x + tile] = np.bincount(block.ravel(), minlength=k + 1)[1:].argmax() + 1
    return out


def run(size: int, mosaics: int, threads: int | None) -> tuple[list[dict], dict]:
    from rsclip_core.inference import LandCoverClass, TilingConfig, build_index, classify, load_model

    model = load_model(threads=threads)
    model.encode_images(np.zeros((16, 3, model.image_size, model.image_size), np.float32))  # warm the session
    classes = [LandCoverClass(name, prompts) for name, prompts in (CLASSES[f] for f in sorted(CLASSES))]
    k = len(classes)
    tile = model.image_size
    rows: dict[str, dict] = {label: {"acc": [], "miou": [], "seconds": 0.0} for label, _, _ in CONFIGS}
    rows["oracle tile"] = {"acc": [], "miou": [], "seconds": 0.0}
    megapixels = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for m in range(mosaics):
            raster = Path(tmp) / f"mosaic{m}.tif"
            truth = make_mosaic(raster, size, seed=m)
            megapixels += size * size / 1e6
            for label, detail, overlap in CONFIGS:
                start = time.perf_counter()
                index = build_index(raster, model, TilingConfig(overlap=overlap))
                result = classify(index, model, classes, detail=detail, cells_per_tile=CELLS_PER_TILE)
                rows[label]["seconds"] += time.perf_counter() - start
                acc, miou = scores(per_pixel(result.codes, result.transform, size), truth, k)
                rows[label]["acc"].append(acc)
                rows[label]["miou"].append(miou)
            acc, miou = scores(oracle_tile(truth, tile, k), truth, k)
            rows["oracle tile"]["acc"].append(acc)
            rows["oracle tile"]["miou"].append(miou)
    table = []
    for label, r in rows.items():
        table.append({"map": label, "acc": float(np.mean(r["acc"])), "miou": float(np.mean(r["miou"])),
                      "s_per_mp": r["seconds"] / megapixels if r["seconds"] else float("nan")})
    env = {"model": model.metadata.model_name, "tile": tile, "dense_grid": model.metadata.dense_grid,
           "size": size, "mosaics": mosaics, "megapixels": megapixels}
    return table, env


def render(table: list[dict], env: dict, command: str) -> str:
    base = next(r for r in table if r["map"] == "tile")
    lines = [
        "# Dense maps vs tile-level maps (RSSCN7 mosaics, per-pixel truth)",
        "",
        f"Produced by `{command}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs, {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"{env['mosaics']} generated mosaics of {env['size']} x {env['size']} px ({env['megapixels']:.1f} MP in all): "
        f"blocks of random sizes ({MIN_BLOCK}..{MAX_BLOCK} px, not aligned to tiles) filled with crops of random "
        f"RSSCN7 scenes (7 classes); bundled model `{env['model']}` ({env['tile']} px tiles, dense grid "
        f"{env['dense_grid']}), 7 zero-shot classes, maps at {CELLS_PER_TILE} cells per tile "
        f"({env['tile'] // CELLS_PER_TILE} px), scored at every pixel. Time = index build + map, per megapixel.",
        "",
        "| map | pixel accuracy | mIoU | s / MP | accuracy vs tile | mIoU vs tile |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        time_s = "—" if np.isnan(r["s_per_mp"]) else f"{r['s_per_mp']:.2f}"
        lines.append(f"| {r['map']} | {r['acc']:.3f} | {r['miou']:.3f} | {time_s} | "
                     f"{r['acc'] / base['acc']:.2f}x | {r['miou'] / base['miou']:.2f}x |")
    lines += [
        "",
        "*oracle tile*: each tile painted with its true majority class, the best a one-class-per-tile map "
        "can reach on this mosaic (no model involved).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--mosaics", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: RSSCN7 not found")
    table, env = run(args.size, args.mosaics, args.threads)
    command = "python benchmarks/dense_map.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--no-write")
    text = render(table, env, command)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
