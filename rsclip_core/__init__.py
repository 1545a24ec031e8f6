"""rsclip: lightweight image-text models for remote sensing.

Importing ``rsclip_core`` never imports torch: the model factory is resolved lazily, so the
torch-free inference path (``rsclip_core.inference``) stays importable inside QGIS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "get_model_config"]

if TYPE_CHECKING:  # pragma: no cover
    from rsclip_core.models import create_model, get_model_config, list_models


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models", "get_model_config"):
        from rsclip_core import models

        return getattr(models, name)
    raise AttributeError(f"module 'rsclip_core' has no attribute {name!r}")
