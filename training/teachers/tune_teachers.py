"""Build the tuned offline teachers (issue #14): tap caches -> tuned tops -> checkpoints -> eval.

    python training/teachers/tune_teachers.py --work-dir W [--recipe default|quick] [--stage cache|all]

Resumable stage by stage, everything below ``W`` (the work dir, ``$RSCLIP_WORK_DIR`` by default):

1. tap caches (``W/teacher_features/<tower>-taps-<size>/``, resumable chunks) of RSICD train (+ the
   NWPU airplane/airport subset with scene-label captions; views 0..``aug_views``), RSICD val/test and
   RSSCN7 (centre views), and the caption features of each teacher's text tower
   (``W/teacher_features/<text tower>``: all-MiniLM-L6-v2 by default, all-mpnet-base-v2 after
   ``training/teachers/fetch_mpnet.py``);
2. each teacher of the recipe trained on the caches (:func:`rsclip_core.teachers.tuned.fit_tuned`,
   best RSICD-val mR kept; test is only evaluated) -> ``W/teachers/<name>.pt`` (format
   ``rsclip-offline-teacher/2``; an existing checkpoint is kept, delete it to retrain);
3. RSICD val/test mR and RSSCN7 zero-shot of each teacher and of their ensemble (mean cosine, as
   reinforcement uses them) -> the recipe's results file (``Recipe.results``: ``default`` ->
   ``training/results/teachers_tuned.{md,json}``; ``--results`` overrides it).

Recipe ``mpnet-probe`` trains the Lite2 teacher of ``default`` twice, on MiniLM and on mpnet caption
features (same image tower, taps, budget and seed), to measure what the larger text tower buys.

The last lines printed are the checkpoint paths (``offline:<path>`` teacher specs for reinforcement).
``OMP_NUM_THREADS`` / ``--threads`` bound the CPU use (the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rsclip_core.data.readers import ImageTextRecord  # noqa: E402
from rsclip_core.teachers.focus_adapter import FocusAdapterConfig  # noqa: E402
from rsclip_core.teachers.heads import HeadConfig  # noqa: E402
from rsclip_core.teachers.tuned import TuneConfig, TunedImageConfig  # noqa: E402
from rsclip_core.workdir import atomic_write_bytes  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "training" / "results"


@dataclass
class TeacherRecipe:
    """One tuned teacher: name (checkpoint ``<name>.pt``), packaged image tower, training config and
    the locked text tower whose caption features the text head is fitted on."""

    name: str
    image_tower: str
    tune: TuneConfig
    image_size: int = 224
    text_tower: str = "all-MiniLM-L6-v2"  # or "all-mpnet-base-v2" (rsclip_core.teachers.towers.TEXT_TOWERS)
    init_from: str | None = None  # start from this teacher's checkpoint (same shape)
    distil_from: tuple[str, ...] = ()  # teachers (checkpoints in W/teachers) distilled in with tune.kd_weight


@dataclass
class Recipe:
    teachers: list[TeacherRecipe]
    aug_views: int = 1  # replayable augmented train views besides the centre view
    nwpu: bool = True
    val_images: int | None = None
    train_limit: int | None = None  # quick recipe: the first N train images
    eval_limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    results: str | None = None  # results .md in training/results/ (its .json beside it); None: printed only

    @property
    def results_path(self) -> Path | None:
        return RESULTS_DIR / self.results if self.results else None


def _tuned(unlock: int, adapter: bool, embed_dim: int, epochs: int) -> TuneConfig:
    head = HeadConfig(kind="mlp", hidden=1024, dropout=0.1)
    return TuneConfig(embed_dim=embed_dim, image=TunedImageConfig(unlock=unlock, head=head,
                                                                  adapter=FocusAdapterConfig() if adapter else None),
                      text_head=HeadConfig(**asdict(head)), epochs=epochs)


# the teachers, each defined once and shared by the recipes below
LITE0_TUNED = TeacherRecipe("lite0-tuned", "efficientnet_lite0",  # stage 6 + conv_head fine-tuned + Focus-Adapter
                            _tuned(unlock=1, adapter=True, embed_dim=256, epochs=15))
# Lite2: Focus-Adapter only (benchmarks/results/teacher_tuning.md: unlocking stage 6 added 0.1-0.2 mR at ~3x the
# step time) and 12 epochs, so both teachers fit one ~1 h window of this 2-core CPU
LITE2_TUNED = TeacherRecipe("lite2-tuned", "efficientnet_lite2", _tuned(unlock=0, adapter=True, embed_dim=512, epochs=12))
LITE2_MINILM = dataclasses.replace(LITE2_TUNED, name="lite2-adapter-minilm")
LITE2_MPNET = dataclasses.replace(LITE2_TUNED, name="lite2-adapter-mpnet", text_tower="all-mpnet-base-v2")

# the teacher ensemble distilled into the Lite0 teacher's shape (the bundled-model candidate of
# training/results/teacher_as_model.md): started from lite0-tuned, 10 more epochs at a lower learning rate with
# (1-λ)·CLIP + λ·KL(ensemble || student), λ=0.7; its twin continues the same 10 epochs with λ=0 (plain CLIP)
ENSEMBLE3 = ("lite0-tuned", "lite2-tuned", "lite2-adapter-mpnet")
_CONTINUE = dataclasses.replace(LITE0_TUNED.tune, epochs=10, lr=3e-4, backbone_lr=2e-5)
LITE0_DISTILLED = dataclasses.replace(LITE0_TUNED, name="lite0-distilled", init_from="lite0-tuned",
                                      distil_from=ENSEMBLE3, tune=dataclasses.replace(_CONTINUE, kd_weight=0.7))
LITE0_CONTINUED = dataclasses.replace(LITE0_TUNED, name="lite0-continued", init_from="lite0-tuned", tune=_CONTINUE)
# the same with 6 stored views per image (centre + 5 replayable augmentations) and 15 epochs: distillation pays
# for more views (the teachers supply a target for each), plain CLIP on 2 views already overfits
LITE0_DISTILLED_6V = dataclasses.replace(LITE0_DISTILLED, name="lite0-distilled-6v",
                                         tune=dataclasses.replace(LITE0_DISTILLED.tune, epochs=15))
LITE0_CONTINUED_6V = dataclasses.replace(LITE0_CONTINUED, name="lite0-continued-6v",
                                         tune=dataclasses.replace(LITE0_CONTINUED.tune, epochs=15))

RECIPES: dict[str, Recipe] = {
    # the real stage: two backbones
    "default": Recipe([LITE0_TUNED, LITE2_TUNED], aug_views=1, results="teachers_tuned.md"),
    # the reference at the same data and budget: locked tower, head only (the teachers of teachers.md)
    "locked-baseline": Recipe([
        TeacherRecipe("lite0-locked", "efficientnet_lite0", _tuned(unlock=0, adapter=False, embed_dim=256, epochs=15)),
    ], aug_views=1, results="teachers_locked_baseline.md"),
    # the text tower alone: default's Lite2 teacher on MiniLM (384-d) vs mpnet (768-d) caption features
    "mpnet-probe": Recipe([LITE2_MINILM, LITE2_MPNET], aug_views=1, results="teachers_mpnet_probe.md"),
    # the default pair + the probe's mpnet teacher: does a third, other-text-tower teacher lift the ensemble?
    # (after the two recipes above every checkpoint exists: evaluation only); the default model's pipeline
    # reinforces with it under --teacher-recipe default+mpnet
    "default+mpnet": Recipe([LITE0_TUNED, LITE2_TUNED, LITE2_MPNET], aug_views=1, results="teachers_ensemble3.md"),
    # the ensemble of default+mpnet (evaluated, not retrained) and Lite0 students of it in the teacher's shape
    "distilled": Recipe([LITE0_TUNED, LITE2_TUNED, LITE2_MPNET, LITE0_DISTILLED, LITE0_CONTINUED], aug_views=1,
                        results="teachers_distilled.md"),
    "distilled-6v": Recipe([LITE0_TUNED, LITE2_TUNED, LITE2_MPNET, LITE0_DISTILLED_6V, LITE0_CONTINUED_6V],
                           aug_views=5, results="teachers_distilled_6v.md"),
    # a few minutes: tiny subsets, to check the pipeline end to end
    "quick": Recipe([
        TeacherRecipe("lite0-quick", "efficientnet_lite0", _tuned(unlock=1, adapter=True, embed_dim=64, epochs=2)),
        TeacherRecipe("lite0-quick-b", "efficientnet_lite0", _tuned(unlock=0, adapter=False, embed_dim=64, epochs=2)),
        TeacherRecipe("lite0-quick-distilled", "efficientnet_lite0",
                      dataclasses.replace(_tuned(unlock=1, adapter=True, embed_dim=64, epochs=1), kd_weight=0.7),
                      init_from="lite0-quick", distil_from=("lite0-quick", "lite0-quick-b")),
    ], aug_views=0, nwpu=False, train_limit=64, val_images=32, eval_limit=32),
}


# --- data ----------------------------------------------------------------------------------------


@dataclass
class Splits:
    train: list[ImageTextRecord]
    val: list[ImageTextRecord]
    test: list[ImageTextRecord]
    rsscn7: list[ImageTextRecord]


def load_splits(data_root: Path, recipe: Recipe) -> Splits:
    """RSICD train (+ NWPU subset) / val / test and RSSCN7 records, limited as the recipe says."""
    from rsclip_core.data.readers import read_image_folder, read_karpathy_json

    rsicd = data_root / "rsicd" / "dataset_rsicd.json"
    train = read_karpathy_json(rsicd, splits=["train"])[:recipe.train_limit]
    val = read_karpathy_json(rsicd, splits=["val"])[:recipe.val_images]
    test = read_karpathy_json(rsicd, splits=["test"])[:recipe.eval_limit]
    if recipe.nwpu and (data_root / "nwpu_subset").is_dir():
        train = train + read_image_folder(data_root / "nwpu_subset")  # scene-label captions (CAPTION_TEMPLATES)
    scn_root = data_root / "rsscn7"
    scn = read_image_folder(scn_root) if scn_root.is_dir() else []
    if recipe.eval_limit:
        scn = scn[::max(1, len(scn) // recipe.eval_limit)]
    return Splits(train, val, test, scn)


def caption_owner(records: list[ImageTextRecord]) -> tuple[list[str], np.ndarray]:
    captions = [c for r in records for c in r.captions]
    return captions, np.array([i for i, r in enumerate(records) for _ in r.captions], dtype=np.int64)


def tap_views(t: TeacherRecipe, splits: Splits, cache: Path, aug_views: int) -> dict[str, Any]:
    """The tap caches of one teacher's tower (built if missing; resumable)."""
    from rsclip_core.teachers.taps import cached_tap_features

    def taps(records: list[ImageTextRecord], name: str, view: int = 0) -> dict[str, np.ndarray]:
        return cached_tap_features(records, t.image_tower, cache, name, view=view, image_size=t.image_size)

    out: dict[str, Any] = {"val": taps(splits.val, "rsicd-val"), "test": taps(splits.test, "rsicd-test")}
    out["rsscn7"] = taps(splits.rsscn7, "rsscn7") if splits.rsscn7 else None
    out["train"] = [taps(splits.train, "train", v) for v in range(aug_views + 1)]
    return out


def text_data(splits: Splits, cache: Path, tower: str = "all-MiniLM-L6-v2") -> dict[str, Any]:
    """Text-tower ``tower`` features of every caption and prompt the fit and the eval need."""
    from rsclip_core.data.readers import clean_class_name
    from rsclip_core.prompts import CAPTION_TEMPLATES, fill_prompts
    from rsclip_core.teachers.fit import cached_text_features

    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        caps, owner = caption_owner(getattr(splits, split))
        out[split] = (cached_text_features(caps, cache, tower, progress=split == "train"), owner)
    labels = sorted({r.label for r in splits.train if r.label})
    out["labels"] = labels
    out["label_feats"] = None
    if labels:
        prompts = [p for lab in labels for p in fill_prompts(clean_class_name(lab), CAPTION_TEMPLATES)]
        out["label_feats"] = cached_text_features(prompts, cache, tower, progress=False).reshape(
            len(labels), len(CAPTION_TEMPLATES), -1)
    out["image_label"] = np.array([labels.index(r.label) if r.label else -1 for r in splits.train], dtype=np.int64)
    return out


def source_checkpoint(out_dir: Path, name: str, student: str) -> Path:
    """``out_dir/<name>.pt`` that ``student`` starts from or distils (one clear line if missing)."""
    path = out_dir / f"{name}.pt"
    if not path.is_file():
        raise SystemExit(f"{student}: teacher checkpoint {path} not found (train {name!r} first: it is in the "
                         "recipe before it, or in another recipe)")
    return path


def distillation_targets(names: tuple[str, ...], out_dir: Path, splits: Splits, cache: Path, aug_views: int,
                         student: str) -> Any:
    """Each teacher's embeddings of the train views (its own tower's tap caches) and captions (its own
    text tower's features): :class:`rsclip_core.teachers.tuned.DistillTargets`, cached per checkpoint
    (content hash) and view under ``cache/distill_targets/`` (minutes per teacher to recompute)."""
    import hashlib

    from rsclip_core.teachers.fit import npy_bytes
    from rsclip_core.teachers.heads import load_teacher_checkpoint, offline_logit_scale
    from rsclip_core.teachers.tuned import DistillTargets, teacher_targets

    records_hash = hashlib.sha256("\n".join(r.key for r in splits.train).encode()).hexdigest()[:12]
    targets = DistillTargets([], [], [], [], [])
    for name in names:
        path = source_checkpoint(out_dir, name, student)
        payload, heads = load_teacher_checkpoint(path)
        folder = cache / "distill_targets" / f"{name}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}-{records_hash}"
        files = [folder / f"view{v}.npy" for v in range(aug_views + 1)] + [folder / "captions.npy", folder / "labels.npy"]
        if not (folder / "done").is_file():  # written last: a killed run recomputes
            tower = TeacherRecipe(name, payload["image_tower"], TuneConfig(), image_size=int(payload["image_size"]),
                                  text_tower=payload["text_tower"])
            text = text_data(splits, cache, tower.text_tower)
            print(f"distillation targets: embedding {aug_views + 1} views with {name} -> {folder}", flush=True)
            images, captions, labels = teacher_targets(heads, tap_views(tower, splits, cache, aug_views)["train"],
                                                       text["train"][0], text["label_feats"])
            folder.mkdir(parents=True, exist_ok=True)
            for f, a in zip(files, [*images, captions, labels]):
                if a is not None:
                    atomic_write_bytes(f, npy_bytes(a))
            atomic_write_bytes(folder / "done", b"")
        scale = offline_logit_scale(payload) or 1 / 0.07
        targets.names.append(name)
        targets.images.append([np.load(f) for f in files[:aug_views + 1]])
        targets.captions.append(np.load(files[-2]))
        targets.labels.append(np.load(files[-1]) if files[-1].is_file() else None)
        targets.logit_scales.append(scale)
        print(f"distillation targets: {name} ({payload['image_tower']} + {payload['text_tower']}, T={1 / scale:.4f})",
              flush=True)
    return targets


# --- eval ----------------------------------------------------------------------------------------


def zero_shot_setup(records: list[ImageTextRecord], cache: Path,
                    tower: str = "all-MiniLM-L6-v2") -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """RSSCN7 class names, labels and the text-tower ``tower`` features of each class's prompt ensemble."""
    from rsclip_core.prompts import ZERO_SHOT_TEMPLATES, fill_prompts
    from rsclip_core.teachers.fit import cached_text_features

    names = sorted({r.label for r in records if r.label})
    labels = np.array([names.index(r.label) for r in records], dtype=np.int64)
    prompts = [cached_text_features(fill_prompts(n, ZERO_SHOT_TEMPLATES), cache, tower, progress=False)
               for n in names]
    return names, labels, prompts


def embed_teacher(heads: Any, views: dict[str, Any], text: dict[str, Any], zs: Any) -> dict[str, Any]:
    """Normalised image/text embeddings of one teacher on val, test and RSSCN7."""
    from rsclip_core.evaluate.metrics import ensemble_class_embeddings
    from rsclip_core.teachers.tuned import encode_taps, encode_text_feats

    out = {s: (encode_taps(heads["image"], views[s]), encode_text_feats(heads["text"], text[s][0]))
           for s in ("val", "test")}
    if views.get("rsscn7") is not None and zs is not None:
        cls = ensemble_class_embeddings([encode_text_feats(heads["text"], p) for p in zs[2]])
        out["rsscn7"] = (encode_taps(heads["image"], views["rsscn7"]), cls)
    return out


def score(emb: dict[str, Any], text: dict[str, Any], zs: Any) -> dict[str, Any]:
    from rsclip_core.evaluate.metrics import retrieval_metrics, zero_shot_metrics

    row: dict[str, Any] = {f"rsicd_{s}": retrieval_metrics(emb[s][0] @ emb[s][1].T, text[s][1]) for s in ("val", "test")}
    if "rsscn7" in emb:
        m = zero_shot_metrics(emb["rsscn7"][0] @ emb["rsscn7"][1].T, zs[1], zs[0])
        row["rsscn7_zero_shot"] = {k: m[k] for k in ("top1", "top5", "mean_per_class")}
    return row


def ensemble_embeddings(embs: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenated normalised embeddings / sqrt(K): cosine = mean teacher cosine (``TeacherEnsemble``)."""
    k = np.sqrt(len(embs))
    return {s: tuple(np.concatenate([e[s][i] for e in embs], 1) / k for i in (0, 1))
            for s in embs[0] if all(s in e for e in embs)}


def distils(row: dict[str, Any]) -> str:
    return f"{row['distil_from']} ({row['kd_weight']:g})" if row.get("distil_from") else "–"


def results_markdown(rows: dict[str, Any], command: str) -> str:
    lines = ["# Tuned offline teachers: RSICD val/test retrieval and RSSCN7 zero-shot", "",
             f"Produced by: `{command}`", "",
             "Packaged towers frozen up to stage 5 (taps cached per view), tuned top (stage 6 + conv_head at a",
             "low lr with frozen BatchNorm statistics and/or CMER Focus-Adapter) + a text head on the locked",
             "text tower's sentence features (column *text tower*), trained on",
             "RSICD train (+ NWPU airplane/airport with scene-label captions), selected on RSICD val (best",
             "epoch); RSICD test and RSSCN7 are only evaluated.", "",
             "Column *start*: the packaged weights, or the teacher checkpoint training began from; *distils (λ)*:",
             "the teachers whose batch similarity distributions (averaged after the softmax, each at its own",
             "temperature) the loss matched with weight λ, on the same stored views and captions. The ensemble",
             "row is the mean cosine of the independently trained teachers (no start, nothing distilled).", "",
             "| teacher | tower | text tower | unlock | adapter | start | distils (λ) | epochs (best) | train s | "
             "val mR | **test mR** | test I→T R@1 | test T→I R@1 | RSSCN7 ZS top-1 |", "|---" * 14 + "|"]
    for name, r in rows.items():
        t = r["rsicd_test"]
        zs = f"{r['rsscn7_zero_shot']['top1']:.1f}" if "rsscn7_zero_shot" in r else "–"
        lines.append(f"| {name} | {r.get('image_tower', '–')} | {r.get('text_tower', '–')} | {r.get('unlock', '–')} | "
                     f"{r.get('adapter', '–')} | {r.get('init_from') or ('packaged' if r.get('checkpoint') else '–')} | "
                     f"{distils(r)} | {r.get('epochs', '–')} | {r.get('train_s', '–')} | {r['rsicd_val']['mR']:.2f} | "
                     f"**{t['mR']:.2f}** | {t['i2t_r1']:.2f} | {t['t2i_r1']:.2f} | {zs} |")
    lines += ["", "Checkpoints:", ""] + [f"- `{n}`: `{r['checkpoint']}`" for n, r in rows.items() if r.get("checkpoint")]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=Path, default=None, help="work-file root (default $RSCLIP_WORK_DIR)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    ap.add_argument("--stage", choices=["cache", "all"], default="all", help="cache: build the caches only")
    ap.add_argument("--data", type=Path, default=DATA, help="shared data root (rsicd/, nwpu_subset/, rsscn7/)")
    ap.add_argument("--results", type=Path, default=None, help="results .md (default: the recipe's, in training/results/; quick: none)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--teachers", default=None, help="comma-separated subset of the recipe's teachers")
    args = ap.parse_args(argv)

    import torch

    from rsclip_core.teachers.heads import load_teacher_checkpoint, save_teacher_checkpoint
    from rsclip_core.teachers.tuned import TapData, fit_tuned
    from rsclip_core.workdir import atomic_write_bytes, stage_dir

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    recipe = RECIPES[args.recipe]
    if args.teachers:
        names = args.teachers.split(",")
        unknown = sorted(set(names) - {t.name for t in recipe.teachers})
        if unknown:
            raise SystemExit(f"--teachers: {unknown} not in recipe {args.recipe!r} "
                             f"({', '.join(t.name for t in recipe.teachers)})")
        recipe = Recipe(**{**vars(recipe), "teachers": [t for t in recipe.teachers if t.name in names]})
    cache = stage_dir("teacher_features", args.work_dir)
    out_dir = stage_dir("teachers", args.work_dir)
    splits = load_splits(args.data, recipe)
    print(f"train {len(splits.train)} val {len(splits.val)} test {len(splits.test)} rsscn7 {len(splits.rsscn7)}",
          flush=True)
    towers = list(dict.fromkeys(t.text_tower for t in recipe.teachers))
    texts = {tower: text_data(splits, cache, tower) for tower in towers}
    zss = {tower: zero_shot_setup(splits.rsscn7, cache, tower) if splits.rsscn7 else None for tower in towers}
    rows: dict[str, Any] = {}
    embs = []
    paths = []
    for t in recipe.teachers:
        views = tap_views(t, splits, cache, recipe.aug_views)
        if args.stage == "cache":
            continue
        path = out_dir / f"{t.name}.pt"
        text, zs = texts[t.text_tower], zss[t.text_tower]
        if not path.exists():
            print(f"== training {t.name} ({t.image_tower} + {t.text_tower}, unlock {t.tune.image.unlock}, "
                  f"adapter {t.tune.image.adapter is not None}"
                  + (f", from {t.init_from}" if t.init_from else "")
                  + (f", distilling {'+'.join(t.distil_from)} at λ={t.tune.kd_weight}" if t.distil_from else "")
                  + ")", flush=True)
            data = TapData(views["train"], text["train"][0], text["train"][1], text["label_feats"],
                           text["image_label"])
            t0 = time.time()
            init = None
            if t.init_from:
                init_payload, init_heads = load_teacher_checkpoint(source_checkpoint(out_dir, t.init_from, t.name))
                init = (init_heads, float(init_payload["logit_scale"]))
            distill = (distillation_targets(t.distil_from, out_dir, splits, cache, recipe.aug_views, t.name)
                       if t.distil_from else None)
            heads, info = fit_tuned(t.image_tower, data, (views["val"], *text["val"]), t.tune,
                                    log=lambda s: print(s, flush=True), init=init, distill=distill)
            save_teacher_checkpoint(path, heads, image_tower=t.image_tower, text_tower=t.text_tower,
                                    image_size=t.image_size, cfg=t.tune, fit_info=info,
                                    extra={"recipe": args.recipe, "aug_views": recipe.aug_views,
                                           "train_images": len(splits.train), "train_s": round(time.time() - t0),
                                           "history": info["history"], "step_time_s": info["step_time_s"],
                                           "steps_per_epoch": info["steps_per_epoch"], "init_from": t.init_from, "distil_from": list(t.distil_from)})
            print(f"saved {path} (best val mR {info['val']['mR']:.2f} at epoch {info['val']['epoch']})", flush=True)
        payload, heads = load_teacher_checkpoint(path)
        if payload["text_tower"] != t.text_tower:
            raise SystemExit(f"{path}: fitted on text tower {payload['text_tower']!r}, recipe says "
                             f"{t.text_tower!r}; delete it to retrain")
        emb = embed_teacher(heads, views, text, zs)
        if not t.distil_from and not t.init_from:  # the ensemble is of the independently trained teachers
            embs.append(emb)
        rows[t.name] = {"checkpoint": str(path), "image_tower": t.image_tower, "text_tower": t.text_tower,
                        "unlock": t.tune.image.unlock, "init_from": t.init_from,
                        "distil_from": "+".join(t.distil_from) or None, "kd_weight": t.tune.kd_weight,
                        "adapter": t.tune.image.adapter is not None,
                        "epochs": f"{t.tune.epochs} ({payload['val']['epoch']})",
                        "train_s": payload["extra"].get("train_s"), **score(emb, text, zs)}
        paths.append(path)
        r = rows[t.name]
        print(f"{t.name}: val mR {r['rsicd_val']['mR']:.2f} test mR {r['rsicd_test']['mR']:.2f} RSSCN7 ZS "
              f"{r.get('rsscn7_zero_shot', {}).get('top1', float('nan')):.1f}", flush=True)
    if args.stage == "cache":
        print("caches complete", flush=True)
        return []
    if len(embs) > 1:
        rows["ensemble"] = {"checkpoint": None, **score(ensemble_embeddings(embs), text, zs)}
    results = args.results or RECIPES[args.recipe].results_path
    command = "python training/teachers/tune_teachers.py " + " ".join(  # repo paths as the reader's checkout has them
        a.replace(f"{REPO}/", "") for a in (argv if argv is not None else sys.argv[1:]))
    md = results_markdown(rows, command)
    print(md, flush=True)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(results, md.encode())
        atomic_write_bytes(results.with_suffix(".json"), json.dumps({"command": command, "rows": rows}, indent=2,
                                                                     default=str).encode())
    print("tuned teacher checkpoints:")
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
