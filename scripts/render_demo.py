"""Render the README pictures from the outputs of ``scripts/demo.sh`` (matplotlib + rasterio).

    bash scripts/demo.sh .venv out/demo
    python scripts/render_demo.py out/demo --out-dir docs/img

writes ``demo_landcover.png`` (the sample raster beside its zero-shot land-cover map, with a
legend of the classes present) and ``demo_search.png`` (the search heat map with the top hits
outlined and ranked, and image chips of the best hits). Re-runnable; needs matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


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


def render_landcover(demo: Path, raster: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import geopandas as gpd
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rgb, extent = read_rgb(raster)
    with rasterio.open(demo / "landcover.tif") as ds:
        codes = ds.read(1)
        lc_extent = [ds.bounds.left, ds.bounds.right, ds.bounds.bottom, ds.bounds.top]
        cmap_dict = ds.colormap(1)
    with rasterio.open(demo / "landcover_confidence.tif") as ds:
        conf = ds.read(1)
    classes = gpd.read_file(demo / "landcover.gpkg")
    colours = np.array([np.array(cmap_dict.get(i, (0, 0, 0, 0))) / 255.0 for i in range(256)])
    colours[0, 3] = 0.0  # no data: transparent
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), constrained_layout=True)
    axes[0].imshow(rgb, extent=extent)
    axes[0].set_title(f"{raster.name} (NAIP RGB, 5 m/px)")
    axes[1].imshow(rgb, extent=extent)
    axes[1].imshow(codes, extent=lc_extent, cmap=ListedColormap(colours), vmin=0, vmax=255,
                   interpolation="nearest", alpha=0.6)
    rows, cols = codes.shape
    dx = (lc_extent[1] - lc_extent[0]) / cols
    dy = (lc_extent[3] - lc_extent[2]) / rows
    for r in range(rows):
        for c in range(cols):
            if codes[r, c] not in (0, 255):
                axes[1].text(lc_extent[0] + (c + 0.5) * dx, lc_extent[3] - (r + 0.5) * dy, f"{conf[r, c]:.2f}",
                             ha="center", va="center", fontsize=8, color="white",
                             bbox={"facecolor": "black", "alpha": 0.35, "pad": 1, "lw": 0}, clip_on=True)
    axes[1].set_xlim(extent[:2])
    axes[1].set_ylim(extent[2:])
    axes[1].set_title("zero-shot land cover (cell label = probability of the chosen class)")
    handles = [Patch(facecolor=row.color, edgecolor="k", label=f"{row.class_name} ({100 * row.fraction:.0f}%)")
               for row in classes.sort_values("class_id").itertuples()]
    axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="class")
    for ax in axes:
        ax.set_xlabel("easting (m, UTM 14N)")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize=7)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_search(demo: Path, raster: Path, out: Path, n_chips: int = 5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import geopandas as gpd
    import matplotlib.pyplot as plt
    import rasterio
    from shapely.geometry import box

    rgb, extent = read_rgb(raster)
    hits = gpd.read_file(demo / "search_lake.gpkg").sort_values("rank")
    with rasterio.open(demo / "search_lake_heat.tif") as ds:
        heat = ds.read(1)
        heat_extent = [ds.bounds.left, ds.bounds.right, ds.bounds.bottom, ds.bounds.top]
    query = str(hits["query"].iloc[0]) if len(hits) else "?"
    fig = plt.figure(figsize=(10, 9), constrained_layout=True)
    grid = fig.add_gridspec(2, n_chips, height_ratios=[3.6, 1])
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(rgb, extent=extent)
    shown = ax.imshow(heat, extent=heat_extent, cmap="magma", alpha=0.45, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8, label=f"cosine similarity to '{query}'")
    for row in hits.itertuples():
        for part in getattr(row.geometry, "geoms", [row.geometry]):
            x, y = part.exterior.xy
            ax.plot(x, y, color="cyan" if row.rank <= n_chips else "white", lw=2 if row.rank <= n_chips else 1)
        inside = row.geometry.intersection(box(extent[0], extent[2], extent[1], extent[3]))
        c = inside.representative_point() if not inside.is_empty else row.geometry.centroid
        ax.text(c.x, c.y, f"#{row.rank}\n{row.score:.3f}", ha="center", va="center", fontsize=9, color="black",
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "lw": 0}, clip_on=True)
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(labelsize=7)
    ax.set_title(f"rsclip-map search '{query}': heat map and top {len(hits)} tiles (cyan: shown below)")
    height, width = rgb.shape[:2]
    for i, row in enumerate(hits.head(n_chips).itertuples()):
        minx, miny, maxx, maxy = row.geometry.bounds
        c0 = int(np.clip((minx - extent[0]) / (extent[1] - extent[0]) * width, 0, width))
        c1 = int(np.clip((maxx - extent[0]) / (extent[1] - extent[0]) * width, 0, width))
        r0 = int(np.clip((extent[3] - maxy) / (extent[3] - extent[2]) * height, 0, height))
        r1 = int(np.clip((extent[3] - miny) / (extent[3] - extent[2]) * height, 0, height))
        chip_ax = fig.add_subplot(grid[1, i])
        chip_ax.imshow(rgb[r0:r1, c0:c1])
        chip_ax.set_title(f"#{row.rank}  score {row.score:.3f}", fontsize=9)
        chip_ax.axis("off")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo_dir", type=Path, help="output folder of scripts/demo.sh")
    parser.add_argument("--raster", type=Path, default=None, help="default: the bundled sample raster")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    for name in ("landcover.tif", "landcover_confidence.tif", "landcover.gpkg", "search_lake.gpkg",
                 "search_lake_heat.tif"):
        if not (args.demo_dir / name).is_file():
            parser.error(f"{args.demo_dir / name}: missing (run scripts/demo.sh first)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from rsclip_core.resources import sample_raster

    raster = args.raster or sample_raster()
    print(render_landcover(args.demo_dir, raster, args.out_dir / "demo_landcover.png"))
    print(render_search(args.demo_dir, raster, args.out_dir / "demo_search.png"))


if __name__ == "__main__":
    main()
