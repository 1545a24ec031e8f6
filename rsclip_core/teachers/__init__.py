"""rsclip_core.teachers: every teacher of reinforcement and distillation.

* :mod:`.base` — ``Teacher`` protocol, ``TeacherInfo`` (the manifest record), ``TeacherError``,
  ``CallableTeacher``, ``TeacherEnsemble`` and ``load_teacher`` (``--teacher`` spec parsing).
* :mod:`.offline` — THE offline teacher: the registered ``teacher-effnetlite{0,1,2}-minilm`` model,
  plain (``create_offline_teacher``) or with fitted heads (``load_offline_teacher``, used by
  reinforcement's ``OfflineTeacher`` and by export alike).
* :mod:`.heads` — the fitted projection heads and their checkpoint (format ``rsclip-offline-teacher/1``).
* :mod:`.towers` — the locked packaged towers (EfficientNet-Lite via onnxruntime, MiniLM).
* :mod:`.fit` — LiT-style head fitting on cached tower features.
* :mod:`.openclip` — open_clip models from local files (``load_open_clip_teacher``, ``OpenClipTeacher``).
* :mod:`.online` — the teachers of a reinforced dataset rebuilt live (online distillation).

Submodules are imported explicitly (torch stays out of ``import rsclip_core.teachers``; ``.base``
needs numpy only). May import ``rsclip_core.models`` and ``rsclip_core.data``.
"""
