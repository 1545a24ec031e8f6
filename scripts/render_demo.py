"""Render the README pictures from the outputs of ``scripts/demo.sh`` (matplotlib + rasterio).

    bash scripts/demo.sh .venv out/demo
    python scripts/render_demo.py out/demo --out-dir docs/img

writes ``demo_landcover.png`` (the demo scene, its zero-shot land cover one class per tile, and
the dense map, with a legend of the classes present) and ``demo_search.png`` (one panel per
query: the sub-tile heat map, the top hits' tight boxes and best-match points, and their tiles
dashed). Re-runnable; needs matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

QUERIES = ("tennis courts", "a baseball field", "a swimming pool", "a parking lot")


def read_rgb(path: Path, bands: tuple[int, int, int] = (1, 2, 3)) -> tuple[np.ndarray, list[float]]:
    """RGB [H, W, 3] in [0, 1] (2-98 % stretch per band) and its extent (left, right, bottom, top)."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read(list(bands)).astype(np.float32)
        valid = ds.read_masks(bands[0]) > 0
        b = ds.bounds
    out = np.zeros(data.shape[1:] + (3,), dtype=np.float32)
    for i in range(3):
        lo, hi = np.percentile(data[i][valid], [2, 98])
        out[..., i] = np.clip((data[i] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out, [b.left, b.right, b.bottom, b.top]


def _read_codes(path: Path) -> tuple[np.ndarray, list[float], np.ndarray]:
    import rasterio

    with rasterio.open(path) as ds:
        codes = ds.read(1)
        extent = [ds.bounds.left, ds.bounds.right, ds.bounds.bottom, ds.bounds.top]
        cmap = ds.colormap(1)
    colours = np.array([np.array(cmap.get(i, (0, 0, 0, 0))) / 255.0 for i in range(256)])
    colours[0, 3] = 0.0  # no data: transparent
    return codes, extent, colours


def _axes_style(ax, extent: list[float]) -> None:
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_xticks([])
    ax.set_yticks([])


def render_landcover(demo: Path, raster: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import geopandas as gpd
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rgb, extent = read_rgb(raster)
    classes = gpd.read_file(demo / "landcover.gpkg")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), constrained_layout=True)
    axes[0].imshow(rgb, extent=extent)
    axes[0].set_title(f"{raster.name} (RGB, ~1 m)")
    for ax, name, title in ((axes[1], "landcover_tile.tif", "one class per tile (128 px)"),
                            (axes[2], "landcover.tif", "dense: per-location embeddings, 16 px cells")):
        codes, lc_extent, colours = _read_codes(demo / name)
        ax.imshow(rgb, extent=extent)
        ax.imshow(codes, extent=lc_extent, cmap=ListedColormap(colours), vmin=0, vmax=255,
                  interpolation="nearest", alpha=0.65)
        ax.set_title(f"zero-shot land cover, {title}")
    for ax in axes:
        _axes_style(ax, extent)
    handles = [Patch(facecolor=row.color, edgecolor="k", label=f"{row.class_name} ({100 * row.fraction:.0f}%)")
               for row in classes.sort_values("class_id").itertuples()]
    axes[2].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="class (dense)")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def render_search(demo: Path, raster: Path, out: Path, queries: tuple[str, ...] = QUERIES, shown: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import geopandas as gpd
    import matplotlib.pyplot as plt
    import rasterio
    from shapely.geometry import box

    rgb, extent = read_rgb(raster)
    fig, axes = plt.subplots(2, 2, figsize=(15, 9.6), constrained_layout=True)
    for ax, query in zip(axes.ravel(), queries):
        slug = query.replace(" ", "_")
        hits = gpd.read_file(demo / f"search_{slug}.gpkg", layer="hits").sort_values("rank").head(shown)
        with rasterio.open(demo / f"search_{slug}_heat.tif") as ds:
            heat = ds.read(1)
            heat_extent = [ds.bounds.left, ds.bounds.right, ds.bounds.bottom, ds.bounds.top]
        ax.imshow(rgb, extent=extent)
        ax.imshow(heat, extent=heat_extent, cmap="magma", alpha=0.4, interpolation="bilinear")
        for row in hits.itertuples():
            tile = box(row.tile_minx, row.tile_miny, row.tile_maxx, row.tile_maxy)
            ax.plot(*tile.exterior.xy, color="white", lw=1, ls="--")
            for part in getattr(row.geometry, "geoms", [row.geometry]):
                ax.plot(*part.exterior.xy, color="cyan", lw=2.2)
            ax.plot(row.point_x, row.point_y, marker="x", color="red", ms=10, mew=2.5)
            ax.text(row.tile_minx, row.tile_maxy, f" #{row.rank} {row.score:.2f}", ha="left", va="top",
                    fontsize=9, color="black", bbox={"facecolor": "white", "alpha": 0.75, "pad": 1, "lw": 0})
        ax.set_title(f"'{query}': top {len(hits)} (cyan: tight box, x: best match, dashed: its tile)")
        _axes_style(ax, extent)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo_dir", type=Path, help="output folder of scripts/demo.sh")
    parser.add_argument("--raster", type=Path, default=None, help="default: the bundled demo scene (berkeley)")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    needed = ["landcover.tif", "landcover_tile.tif", "landcover.gpkg"]
    needed += [f"search_{q.replace(' ', '_')}{s}" for q in QUERIES for s in (".gpkg", "_heat.tif")]
    for name in needed:
        if not (args.demo_dir / name).is_file():
            parser.error(f"{args.demo_dir / name}: missing (run scripts/demo.sh first)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from rsclip_core.resources import sample_raster

    raster = args.raster or sample_raster("berkeley")
    print(render_landcover(args.demo_dir, raster, args.out_dir / "demo_landcover.png"))
    print(render_search(args.demo_dir, raster, args.out_dir / "demo_search.png"))


if __name__ == "__main__":
    main()
