"""rsclip_core.train: multi-modal reinforced training of students (MobileCLIP recipe).

- ``loss``: ``reinforced_loss`` ((1-λ)·CLIP + λ·mean_k KL) and the ``NegativeQueue``.
- ``data``: random-access reinforced shards, deterministic resumable batches.
- ``trainer``: ``TrainConfig`` and ``train`` (modes clip / reinforced / online, DDP, EMA, resume).
- ``checkpoint``: checkpoint I/O and ``load_trained_model``.

Submodules import torch; import them explicitly.
"""
