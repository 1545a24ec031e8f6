#!/usr/bin/env python
"""Cheap proxy for the offline synthetic captions of ``rsclip reinforce`` (issue 14): which options help?

No student is trained. On a seeded RSICD *train* subset (a caption bank + disjoint query images; the
val/test splits are never read) two quick offline teachers are fitted the way the bundled ones are
(locked EfficientNet-Lite0 / Lite1 ImageNet towers + locked MiniLM, linear heads, InfoNCE on the bank),
then every captioner variant writes S synthetic captions per query image, scored by

* ``human``: cosine, in *raw* MiniLM space (no fitted head, so independent of the teachers), between each
  synthetic caption and the mean of the query image's own human captions, which no captioner sees;
* ``t2i R@1 / R@5``: the synthetic caption retrieves its image among all query images, under each teacher
  (caption-image agreement of the targets the student will distil), mean of the two teachers;
* ``distinct``: unique synthetic captions / all synthetic captions (diversity).

The ImageNet object names are measured separately (fire rate, and precision against the scene label
with a fixed map of which scenes each allow-listed object belongs to) on RSICD train queries and on the
NWPU airplane/airport subset, at several thresholds. Writes ``training/results/captions.md`` (+ .json).

    nice -n 5 python training/captions/caption_proxy.py            # ~5 min on the shared 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"

# which scene labels (RSICD / NWPU, lower case) an allow-listed object is consistent with: precision only
OBJECT_SCENES = {
    "an airliner": {"airport", "airplane"}, "a military aircraft": {"airport", "airplane"},
    "an airship": {"airport", "airplane"}, "parked aircraft": {"port", "airport", "airplane"},
    "a container ship": {"port"}, "an ocean liner": {"port"}, "a speedboat": {"port", "river", "beach", "resort"},
    "a fireboat": {"port", "river"}, "a lifeboat": {"port", "beach"}, "a catamaran": {"port", "beach", "resort"},
    "a trimaran": {"port", "beach", "resort"}, "a sailing ship": {"port"}, "a sailing boat": {"port", "beach"},
    "a submarine": {"port"}, "a pier": {"port", "beach", "river", "resort"}, "a breakwater": {"port", "beach"},
    "a dam": {"river", "pond"}, "a suspension bridge": {"bridge", "viaduct", "river"},
    "an arch bridge": {"bridge", "viaduct", "river"}, "a viaduct": {"viaduct", "bridge"},
    "a sand bar": {"beach", "river", "desert", "bareland"}, "a coastline": {"beach", "port", "resort"},
    "a lakeshore": {"pond", "river", "park", "resort"}, "a headland": {"beach", "mountain"},
    "a volcano": {"mountain", "desert"}, "freight wagons": {"railwaystation", "industrial"},
    "railway carriages": {"railwaystation"}, "a train": {"railwaystation"}, "a high-speed train": {"railwaystation"},
    "a truck": {"parking", "industrial", "storagetanks"}, "a harvester": {"farmland"},
    "greenhouses": {"farmland", "industrial"}, "a boathouse": {"port", "river", "pond"},
    "a water tower": {"industrial", "storagetanks"},
}


def log(msg: str) -> None:
    print(f"[caption-proxy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def centre_views(records: list[Any], size: int) -> list[Any]:
    from rsclip_core.data.augment import center_view_params, reapply
    from rsclip_core.data.readers import load_rgb_image

    out = []
    for r in records:
        im, _ = load_rgb_image(r.image_path, allow_convert=True)
        out.append(reapply(im, center_view_params(im.width, im.height, size)))
    return out


def tower_features(tower: str, images: list[Any], size: int, batch: int = 32, cache: Path | None = None) -> np.ndarray:
    """Pooled tower features (cached in ``cache`` .npy when given: a killed run resumes)."""
    import torch

    if cache is not None and cache.is_file():
        return np.load(cache)

    from rsclip_core.teachers.towers import images_to_tensor, load_image_tower, tower_preprocess

    model, pre = load_image_tower(tower), tower_preprocess(size)
    with torch.inference_mode():
        out = np.concatenate([model(images_to_tensor(images[i:i + batch], pre)).numpy()
                              for i in range(0, len(images), batch)])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out


class PrecomputedNamer:
    """``ImageNetObjectNamer.name`` answered from batched probabilities computed once (same rule)."""

    def __init__(self, namer: Any, images: list[Any]) -> None:
        self.namer = namer
        self.probs = {id(im): p for im, p in zip(images, namer.probabilities(images))}
        self.phrases = [namer.allow[c] for c in namer.class_index]

    def name(self, image: Any) -> str | None:
        p = self.probs[id(image)]
        return self.phrases[int(np.argmax(p))] if p.max() >= self.namer.threshold else None

    def describe(self) -> dict[str, Any]:
        return self.namer.describe()


def fit_linear_heads(img: np.ndarray, txt: np.ndarray, owner: np.ndarray, dim: int = 256, steps: int = 300,
                     seed: int = 0) -> tuple[Any, Any, float]:
    """Linear image/text heads + a learned logit scale, symmetric InfoNCE over (image, one of its captions)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xi, xt = torch.from_numpy(img), torch.from_numpy(txt)
    mu_i, mu_t = xi.mean(0), xt.mean(0)
    hi, ht = torch.nn.Linear(xi.shape[1], dim), torch.nn.Linear(xt.shape[1], dim)
    scale = torch.nn.Parameter(torch.tensor(np.log(20.0), dtype=torch.float32))
    opt = torch.optim.AdamW([*hi.parameters(), *ht.parameters(), scale], lr=2e-3, weight_decay=0.05)
    firsts = [np.flatnonzero(owner == i) for i in range(len(img))]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = rng.choice(len(img), size=min(256, len(img)), replace=False)
        c = np.array([rng.choice(firsts[i]) for i in b])
        ei = F.normalize(hi(xi[b] - mu_i), dim=-1)
        et = F.normalize(ht(xt[c] - mu_t), dim=-1)
        logits = scale.exp().clamp(max=100) * ei @ et.T
        labels = torch.arange(len(b))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()

    def enc_i(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return F.normalize(hi(torch.from_numpy(x) - mu_i), dim=-1).numpy()

    def enc_t(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return F.normalize(ht(torch.from_numpy(x) - mu_t), dim=-1).numpy()

    return enc_i, enc_t, float(scale.detach().exp())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rsicd", type=Path, default=DATA / "rsicd" / "dataset_rsicd.json")
    p.add_argument("--nwpu", type=Path, default=DATA / "nwpu_subset")
    p.add_argument("--bank", type=int, default=1500)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--nwpu-queries", type=int, default=100)
    p.add_argument("-s", "--syn-captions", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "training" / "results" / "captions.md")
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: <work-dir>/caption_proxy)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from rsclip_core.data.readers import clean_class_name, read_dataset, read_image_folder
    from rsclip_core.prompts import CAPTION_TEMPLATES, SCENE_CAPTION_TEMPLATES
    from rsclip_core.reinforce.captioners import ImageNetObjectNamer, NeighbourCaptioner, ObjectNameCaptioner
    from rsclip_core.teachers.towers import encode_texts_with_tower, load_text_tower

    t0 = time.time()
    train = [r for r in read_dataset(args.rsicd) if r.split == "train"]  # never val / test
    random.Random(0).shuffle(train)
    bank, queries = train[:args.bank], train[args.bank:args.bank + args.queries]
    nwpu = read_image_folder(args.nwpu)
    random.Random(1).shuffle(nwpu)
    nwpu = nwpu[:args.nwpu_queries]
    log(f"bank {len(bank)}, queries {len(queries)} (RSICD train), NWPU {len(nwpu)}")
    towers = {"lite0": ("efficientnet_lite0", 224), "lite1": ("efficientnet_lite1", 240)}
    from rsclip_core.workdir import stage_dir

    cache = args.cache or stage_dir("caption_proxy")
    tag = f"b{len(bank)}-q{len(queries)}"
    feats = {n: tower_features(t, [] if (cache / f"{n}-{tag}.npy").is_file() else centre_views(bank + queries, size),
                               size, cache=cache / f"{n}-{tag}.npy") for n, (t, size) in towers.items()}
    log("image tower features done")
    minilm = load_text_tower()
    bank_caps = [c for r in bank for c in r.captions]
    owner = np.array([i for i, r in enumerate(bank) for _ in r.captions])
    text_feats = encode_texts_with_tower(minilm, bank_caps)
    heads = {n: fit_linear_heads(feats[n][:len(bank)], text_feats, owner) for n in towers}
    log("teacher heads fitted")
    img_emb = {n: heads[n][0](feats[n]) for n in towers}
    names = list(towers)
    k = np.sqrt(len(names))
    joint_img = np.concatenate([img_emb[n] for n in names], 1) / k
    joint_caps = np.concatenate([heads[n][1](text_feats) for n in names], 1) / k
    dims = [img_emb[n].shape[1] for n in names]
    q_joint = joint_img[len(bank):]

    def captioner(**kw: Any) -> NeighbourCaptioner:
        return NeighbourCaptioner(bank, joint_img[:len(bank)], joint_caps, num_neighbours=10, teacher_dims=dims, **kw)

    namer = ImageNetObjectNamer(threshold=0.3)
    q_images = centre_views(queries, 260)
    fast_namer = PrecomputedNamer(namer, q_images)
    variants = {
        "V0 before: joint ranking, 5 label wordings": captioner(templates=CAPTION_TEMPLATES),
        "V1 + varied label wording (16)": captioner(templates=SCENE_CAPTION_TEMPLATES),
        "V2 + teacher agreement ranking (min)": captioner(templates=SCENE_CAPTION_TEMPLATES, agreement="min"),
        "V3 + agreement filter (min z >= 0)": captioner(templates=SCENE_CAPTION_TEMPLATES, agreement="min",
                                                        min_agreement=0.0),
        "V4 V1 + ImageNet object names (p >= 0.3)": ObjectNameCaptioner(captioner(templates=SCENE_CAPTION_TEMPLATES),
                                                                         fast_namer),  # type: ignore[arg-type]
    }
    own_human = np.stack([encode_texts_with_tower(minilm, r.captions).mean(0) for r in queries])
    own_human /= np.linalg.norm(own_human, axis=1, keepdims=True)
    results: dict[str, Any] = {}
    for vname, cap in variants.items():
        syn = [cap.caption(r, im, args.syn_captions, random.Random(f"0/{r.key}"), image_embedding=q)
               for r, im, q in zip(queries, q_images, q_joint)]
        flat = [c for caps in syn for c in caps]
        which = np.array([i for i, caps in enumerate(syn) for _ in caps])
        raw = encode_texts_with_tower(minilm, flat)
        human = float(np.mean(np.sum(raw * own_human[which], axis=1)))
        r1, r5 = [], []
        for n in names:
            t = heads[n][1](raw)
            sims = t @ img_emb[n][len(bank):].T
            rank = (sims > sims[np.arange(len(flat)), which][:, None]).sum(1)
            r1.append(float(np.mean(rank < 1) * 100))
            r5.append(float(np.mean(rank < 5) * 100))
        label_share = float(np.mean([sum(clean_class_name(str(r.label)).lower() in c.lower() for c in caps) / len(caps)
                                     for r, caps in zip(queries, syn)]))
        results[vname] = {"human_cos": human, "t2i_r1": float(np.mean(r1)), "t2i_r5": float(np.mean(r5)),
                          "distinct": len(set(flat)) / len(flat), "label_share": label_share,
                          "example": {"key": queries[0].key, "human": queries[0].captions[:2], "syn": syn[0]}}
        log(f"{vname}: {results[vname]['human_cos']:.4f} human, R@1 {results[vname]['t2i_r1']:.1f}")
    # object names: fire rate / precision by threshold
    rs_probs = np.stack([fast_namer.probs[id(im)] for im in q_images])
    nw_images = centre_views(nwpu, 260)
    nw_probs = namer.probabilities(nw_images)
    phrases = [namer.allow[c] for c in namer.class_index]
    objects: dict[str, Any] = {}
    for thr in (0.1, 0.2, 0.3, 0.5):
        row = {}
        for what, probs, recs in (("rsicd_train", rs_probs, queries), ("nwpu", nw_probs, nwpu)):
            best = probs.argmax(1)
            fired = probs[np.arange(len(probs)), best] >= thr
            correct = [str(r.label).lower().replace(" ", "") in OBJECT_SCENES[phrases[b]]
                       for r, b, f in zip(recs, best, fired) if f]
            row[what] = {"fire_rate": float(fired.mean() * 100),
                         "precision": float(np.mean(correct) * 100) if correct else None,
                         "fired": int(fired.sum()),
                         "top_phrases": sorted({phrases[b] for b, f in zip(best, fired) if f})[:8]}
        objects[str(thr)] = row
    payload = {"command": "python training/captions/caption_proxy.py " + " ".join(argv or sys.argv[1:]),
               "bank": len(bank), "queries": len(queries), "nwpu": len(nwpu), "S": args.syn_captions,
               "teacher_logit_scales": {n: heads[n][2] for n in names}, "variants": results, "objects": objects,
               "seconds": time.time() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["# Synthetic captions: a cheap proxy (issue 14)", "",
             f"Command: `{payload['command'].strip()}` ({payload['seconds'] / 60:.1f} min, shared 2-core CPU). "
             f"RSICD *train* only: bank {len(bank)} images, {len(queries)} disjoint query images, S={args.syn_captions}; "
             "two quick teachers (locked EfficientNet-Lite0 / Lite1 + MiniLM, linear heads fitted on the bank). "
             "See the script's docstring for the metrics.", "",
             "| variant | human cos (raw MiniLM) | t2i R@1 | t2i R@5 | distinct | label-caption share |",
             "|---|---|---|---|---|---|"]
    for vname, r in results.items():
        lines.append(f"| {vname} | {r['human_cos']:.4f} | {r['t2i_r1']:.1f} | {r['t2i_r5']:.1f} | "
                     f"{r['distinct']:.3f} | {r['label_share']:.2f} |")
    lines += ["", "ImageNet object names (allow-list of "
              f"{len(phrases)} aerial-relevant classes, EfficientNet-Lite2 at 260 px, centre view): fire rate % / "
              "precision % (object consistent with the scene label)", "",
              "| threshold | RSICD train fire | RSICD precision | NWPU airplane+airport fire | NWPU precision | phrases fired (NWPU) |",
              "|---|---|---|---|---|---|"]
    for thr, row in objects.items():
        a, b = row["rsicd_train"], row["nwpu"]

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{v:.0f}"
        lines.append(f"| {thr} | {a['fire_rate']:.1f} ({a['fired']}) | {pct(a['precision'])} | "
                     f"{b['fire_rate']:.1f} ({b['fired']}) | {pct(b['precision'])} | {', '.join(b['top_phrases'])} |")
    lines += ["", "Example (first query): human " + json.dumps(results[next(iter(results))]["example"]["human"]), ""]
    for vname, r in results.items():
        lines.append(f"- {vname}: " + json.dumps(r["example"]["syn"]))
    args.out.write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
