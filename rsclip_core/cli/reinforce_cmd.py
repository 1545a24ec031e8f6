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
@click.option("--extra-source", "extra_sources", multiple=True, metavar="NAME=PATH",
              help="Another dataset reinforced into the same folder, all its records (repeatable; e.g. "
                   "nwpu=../shared/data/nwpu_subset, a class folder read with scene-label captions). Its keys "
                   "get the prefix NAME-; the manifest lists every source. Not part of the caption bank.")
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
@click.option("--label-templates", type=click.Choice(["varied", "basic"]), default="varied", show_default=True,
              help="Scene-label caption wordings: varied (SCENE_CAPTION_TEMPLATES) or basic (the 5 of before).")
@click.option("--agreement", type=click.Choice(["joint", "min"]), default="joint", show_default=True,
              help="Rank neighbour captions by the joint teacher similarity, or by the teacher that likes them least.")
@click.option("--min-agreement", type=float, default=None,
              help="Drop neighbour captions whose least-agreeing teacher z-score is below this (e.g. 0).")
@click.option("--object-names", type=float, default=None, metavar="THRESHOLD",
              help="Add a caption naming an allow-listed ImageNet object the packaged classifier sees with "
                   "probability >= THRESHOLD (e.g. 0.3; default: off).")
@click.option("-k", "--augmentations", "num_aug", type=int, default=5, show_default=True)
@click.option("-s", "--syn-captions", "num_syn", type=int, default=5, show_default=True)
@click.option("--image-size", type=int, default=224, show_default=True, help="Augmented view size.")
@click.option("--augmentation", default=None,
              help="Augmentation preset: multiscale-rs (default: zoom to 10 % area, 8 dihedral transforms, haze) "
                   "multiscale-rs-uniform (the same zoom range, crop area uniform: most views near the whole scene) "
                   "or rsicd-v1 (the first bundled model's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard-size", type=int, default=256, show_default=True)
@click.option("--shard", "shard_spec", default="0/1", show_default=True, help="This worker: i/n.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first N records (smoke runs).")
@click.option("--convert-non-rgb", is_flag=True, help="Convert L/P/RGBA/CMYK images instead of skipping them.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
def reinforce(dataset: Path, out_dir: Path, image_root: Path | None, splits: tuple[str, ...],
              extra_sources: tuple[str, ...], teachers: tuple[str, ...], captioner: str, coca: str | None,
              bank_split: str, neighbours: int, label_captions: int, label_templates: str, agreement: str,
              min_agreement: float | None, object_names: float | None, num_aug: int, num_syn: int,
              image_size: int, augmentation: str | None, seed: int, shard_size: int,
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
         extra_sources: tuple[str, ...], teachers: tuple[str, ...], captioner: str, coca: str | None,
         bank_split: str, neighbours: int, label_captions: int, label_templates: str, agreement: str,
         min_agreement: float | None, object_names: float | None, num_aug: int, num_syn: int,
         image_size: int, augmentation: str | None, seed: int, shard_size: int,
         shard_spec: str, batch_size: int, limit: int | None, convert_non_rgb: bool,
         threads: int | None) -> None:
    import torch

    from rsclip_core.data.augment import DEFAULT_PRESET, augmentation_preset
    from rsclip_core.data.readers import dataset_fingerprint, read_dataset
    from rsclip_core.prompts import CAPTION_TEMPLATES, SCENE_CAPTION_TEMPLATES
    from rsclip_core.reinforce.builder import (
        BuildConfig,
        DataSource,
        build_caption_bank,
        build_reinforced_dataset,
        merge_sources,
        parse_shard_spec,
        report_markdown,
        storage_report,
    )
    from rsclip_core.reinforce.captioners import Captioner, CocaCaptioner, ImageNetObjectNamer, ObjectNameCaptioner
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
    sources = [DataSource("", str(dataset), records, dataset.suffix.lstrip(".") or "folder", list(splits))]
    for spec in extra_sources:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--extra-source must look like NAME=PATH, got {spec!r}")
        extra = read_dataset(Path(path))[:limit] if limit is not None else read_dataset(Path(path))
        sources.append(DataSource(name, path, extra, Path(path).suffix.lstrip(".") or "folder"))
    records, source = merge_sources(sources)
    source["limit"] = limit
    ensemble = TeacherEnsemble([load_teacher(t) for t in teachers])
    click.echo(f"{len(records)} records ({', '.join(f'{s.name or s.path}: {len(s.records)}' for s in sources)}); "
               f"teachers {[(t.name, t.dim) for t in ensemble.teachers]}")
    aug = augmentation_preset(augmentation or DEFAULT_PRESET, output_size=image_size)
    text_cache = None
    cap: Captioner
    if captioner == "coca":
        if not coca or ":" not in coca:
            raise ValueError("--captioner coca needs --coca ARCH:/path/to/weights")
        arch, path = coca.split(":", 1)
        cap = CocaCaptioner(arch, path)
    else:
        bank = [r for r in all_records if not bank_split or r.split == bank_split]
        if not bank:
            raise ValueError(f"--bank-split {bank_split!r}: no records in {dataset}")
        out_dir.mkdir(parents=True, exist_ok=True)
        cache_name = "caption_bank-" + dataset_fingerprint(bank, hash_image_bytes=False)[:10] + "-" + \
            "-".join(ensemble.names) + ".npz"
        cap, text_cache = build_caption_bank(
            bank, ensemble, out_dir / cache_name, batch_size=32, allow_convert=convert_non_rgb,
            num_neighbours=neighbours, label_captions=label_captions,
            templates=SCENE_CAPTION_TEMPLATES if label_templates == "varied" else CAPTION_TEMPLATES,
            agreement=agreement, min_agreement=min_agreement)
    if object_names is not None:
        cap = ObjectNameCaptioner(cap, ImageNetObjectNamer(threshold=object_names))
    cfg = BuildConfig(num_augmentations=num_aug, num_syn_captions=num_syn, seed=seed, shard_size=shard_size,
                      batch_size=batch_size, allow_convert=convert_non_rgb, augmentation=aug)
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
