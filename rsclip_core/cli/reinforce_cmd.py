"""``rsclip reinforce``: build a reinforced dataset (webdataset shards + manifest + storage report)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("reinforce")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--image-root", type=click.Path(path_type=Path), default=None,
              help="Folder image paths are relative to (default: next to the dataset file).")
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable), e.g. --split train.")
@click.option("--teacher", "teachers", multiple=True, required=True,
              help="Teacher spec (repeatable): offline:/path/teacher.pt or open_clip:ARCH:/path/weights; "
                   "prefix NAME= to name it.")
@click.option("--captioner", type=click.Choice(["neighbour", "coca"]), default="neighbour", show_default=True)
@click.option("--coca", default=None, help="CoCa for --captioner coca: ARCH:/path/to/weights.")
@click.option("--bank-split", default="train", show_default=True,
              help="Split whose images/captions form the neighbour captioner's bank ('' = all records).")
@click.option("--neighbours", type=int, default=10, show_default=True)
@click.option("--label-captions", type=int, default=1, show_default=True,
              help="Synthetic slots filled with scene-label captions (when a label exists).")
@click.option("-k", "--augmentations", "num_aug", type=int, default=5, show_default=True)
@click.option("-s", "--syn-captions", "num_syn", type=int, default=5, show_default=True)
@click.option("--image-size", type=int, default=224, show_default=True, help="Augmented view size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard-size", type=int, default=256, show_default=True)
@click.option("--shard", "shard_spec", default="0/1", show_default=True, help="This worker: i/n.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first N records (smoke runs).")
@click.option("--convert-non-rgb", is_flag=True, help="Convert L/P/RGBA/CMYK images instead of skipping them.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
def reinforce(dataset: Path, out_dir: Path, image_root: Path | None, splits: tuple[str, ...],
              teachers: tuple[str, ...], captioner: str, coca: str | None, bank_split: str, neighbours: int,
              label_captions: int, num_aug: int, num_syn: int, image_size: int, seed: int, shard_size: int,
              shard_spec: str, batch_size: int, limit: int | None, convert_non_rgb: bool,
              threads: int | None) -> None:
    """Reinforce DATASET (Karpathy .json, .csv/.parquet table or class folder) into OUT_DIR.

    Resumable: re-run the same command after a kill. Parallel: run --shard 0/4 ... 3/4 into one folder.
    """
    try:
        _run(**locals())
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


def _run(dataset: Path, out_dir: Path, image_root: Path | None, splits: tuple[str, ...],
         teachers: tuple[str, ...], captioner: str, coca: str | None, bank_split: str, neighbours: int,
         label_captions: int, num_aug: int, num_syn: int, image_size: int, seed: int, shard_size: int,
         shard_spec: str, batch_size: int, limit: int | None, convert_non_rgb: bool,
         threads: int | None) -> None:
    import torch

    from rsclip_core.data.augment import AugmentationConfig
    from rsclip_core.data.readers import dataset_fingerprint, read_dataset
    from rsclip_core.reinforce.builder import (
        BuildConfig,
        build_caption_bank,
        build_reinforced_dataset,
        parse_shard_spec,
        report_markdown,
        storage_report,
    )
    from rsclip_core.reinforce.captioners import Captioner, CocaCaptioner
    from rsclip_core.teachers.base import TeacherEnsemble, load_teacher

    if threads:
        torch.set_num_threads(threads)
    shard = parse_shard_spec(shard_spec)
    all_records = read_dataset(dataset, image_root=image_root)
    records = [r for r in all_records if not splits or r.split in splits]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{dataset}: no records (splits {list(splits) or 'all'})")
    ensemble = TeacherEnsemble([load_teacher(t) for t in teachers])
    click.echo(f"{len(records)} records; teachers {[(t.name, t.dim) for t in ensemble.teachers]}")
    source = {"path": str(dataset), "format": dataset.suffix.lstrip(".") or "folder",
              "splits": list(splits), "num_records": len(records), "limit": limit,
              "fingerprint": dataset_fingerprint(records)}
    text_cache = None
    if captioner == "coca":
        if not coca or ":" not in coca:
            raise ValueError("--captioner coca needs --coca ARCH:/path/to/weights")
        arch, path = coca.split(":", 1)
        cap: Captioner = CocaCaptioner(arch, path)
    else:
        bank = [r for r in all_records if not bank_split or r.split == bank_split]
        if not bank:
            raise ValueError(f"--bank-split {bank_split!r}: no records in {dataset}")
        out_dir.mkdir(parents=True, exist_ok=True)
        cache_name = "caption_bank-" + dataset_fingerprint(bank, hash_image_bytes=False)[:10] + "-" + \
            "-".join(ensemble.names) + ".npz"
        cap, text_cache = build_caption_bank(bank, ensemble, out_dir / cache_name, batch_size=32,
                                             allow_convert=convert_non_rgb, num_neighbours=neighbours,
                                             label_captions=label_captions)
    cfg = BuildConfig(num_augmentations=num_aug, num_syn_captions=num_syn, seed=seed, shard_size=shard_size,
                      batch_size=batch_size, allow_convert=convert_non_rgb,
                      augmentation=AugmentationConfig(output_size=image_size))
    result = build_reinforced_dataset(records, out_dir, ensemble, cap, cfg, source, shard=shard,
                                      text_cache=text_cache)
    click.echo(f"wrote {len(result.shards_written)} shards ({result.samples_written} samples, "
               f"{len(result.images_skipped)} skipped, {result.images_per_second:.2f} images/s); "
               f"{len(result.shards_skipped_existing)} shards were already done")
    from rsclip_core.workdir import atomic_write_bytes

    report = storage_report(out_dir)
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out_dir / "report.md", (report_markdown(report) + "\n").encode())
    click.echo(report_markdown(report))
