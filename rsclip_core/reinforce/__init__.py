"""rsclip_core.reinforce: build and read reinforced datasets (MobileCLIP-style, for remote sensing).

* :mod:`.shards` — on-disk format, :class:`~.shards.ReinforcedSample` (the one type handed to the
  trainer), :func:`~.shards.iter_samples`, :func:`~.shards.load_manifest`, :func:`~.shards.list_shards`.
* :mod:`.captioners` — ``Captioner`` protocol, open_clip CoCa, offline neighbour + scene-label captioner.
* :mod:`.builder` — ``build_reinforced_dataset`` (deterministic, ``--shard i/n``, atomic, resumable).

Teachers (protocol, ensemble, offline and open_clip teachers, fitting) live in
:mod:`rsclip_core.teachers`. Submodules are imported explicitly (torch stays out of ``import rsclip_core.reinforce``).
"""
