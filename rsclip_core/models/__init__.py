"""Torch models: registry of JSON configs, MCi/EfficientNet-Lite image towers, MCt/transformer/MiniLM
text towers, teachers and tokenizers. See docs/design.md ("Torch models")."""

from rsclip_core.models.factory import (
    CheckpointError,
    ModelConfigError,
    create_model,
    extract_state_dict,
    get_model_config,
    image_transform,
    list_models,
    load_checkpoint,
    preprocess_config,
    tokenizer_spec,
)
from rsclip_core.models.model import (
    RSClipModel,
    TokenizerSpec,
    lock_towers,
    unlock_towers,
)
from rsclip_core.models.teachers import (
    OpenClipTeacher,
    TeacherError,
    create_offline_teacher,
    load_open_clip_teacher,
)
from rsclip_core.models.tokenizer import get_tokenizer, save_inference_tokenizer

__all__ = [
    "CheckpointError",
    "ModelConfigError",
    "OpenClipTeacher",
    "RSClipModel",
    "TeacherError",
    "TokenizerSpec",
    "create_model",
    "create_offline_teacher",
    "extract_state_dict",
    "get_model_config",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "load_checkpoint",
    "load_open_clip_teacher",
    "lock_towers",
    "preprocess_config",
    "save_inference_tokenizer",
    "tokenizer_spec",
    "unlock_towers",
]
