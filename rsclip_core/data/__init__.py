"""rsclip_core.data: dataset readers (:mod:`.readers`) and replayable augmentations (:mod:`.augment`).

``from rsclip_core.data.augment import reapply`` replays stored augmentation params bit-exactly;
``from rsclip_core.data.readers import read_dataset`` reads Karpathy JSON, class folders or CSV/Parquet.
"""
