"""rsclip_core.train: multi-modal reinforced training of students (MobileCLIP recipe).

- ``loss``: ``reinforced_loss`` ((1-λ)·CLIP + λ·mean_k KL) and the ``NegativeQueue``.
- ``data``: random-access reinforced shards, deterministic resumable batches.
- ``config``: ``TrainConfig`` (the one source of training settings, with per-field CLI metadata) and
  recipe files (YAML/JSON, ``extends``) loaded into it. Torch-free.
- ``trainer``: ``train`` (modes clip / reinforced / online, DDP, EMA, resume).
- ``checkpoint``: the checkpoint dicts (built only there), checkpoint I/O and ``load_trained_model``.

Submodules other than ``config`` import torch; import them explicitly.
"""
