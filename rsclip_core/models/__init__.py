"""Torch models: registry of JSON configs, MCi/EfficientNet-Lite image towers, MCt/transformer/MiniLM
text towers and tokenizers (teachers: ``rsclip_core.teachers``). See docs/design.md ("Torch models")."""

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
from rsclip_core.models.tokenizer import get_tokenizer, save_inference_tokenizer

__all__ = [
    "CheckpointError",
    "ModelConfigError",
    "RSClipModel",
    "TokenizerSpec",
    "create_model",
    "extract_state_dict",
    "get_model_config",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "load_checkpoint",
    "lock_towers",
    "preprocess_config",
    "save_inference_tokenizer",
    "tokenizer_spec",
    "unlock_towers",
]
