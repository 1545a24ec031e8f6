"""rsclip_core.export: reparameterize a model and export it as an rsclip model directory.

```python
from rsclip_core.export import export_model
export_model("mobileclip-s0-rs", "out/s0", checkpoint="run/last.pt", coreml=True, classes="classes.json")
```

Writes ``image.onnx``, ``text.onnx``, ``tokenizer.json``, ``rsclip.json`` (+ ``classes.json``,
``image.mlpackage``, ``text.mlpackage``) as ``rsclip_core.spec`` defines them. Imports torch.
"""

from rsclip_core.export.api import build_metadata, export_model, load_classes, load_model
from rsclip_core.export.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassesFileError,
    ExportError,
    OutputExistsError,
    ParityError,
    UnknownModelError,
)
from rsclip_core.export.onnx_export import export_onnx_image, export_onnx_text, store_weights_fp16
from rsclip_core.export.parity import ParityReport, ParityResult, check_parity, check_reparam_parity


def export_coreml(*args, **kwargs):
    """See :func:`rsclip_core.export.coreml.export_coreml` (imports coremltools on first use)."""
    from rsclip_core.export.coreml import export_coreml as _export_coreml

    return _export_coreml(*args, **kwargs)


__all__ = [
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ClassesFileError",
    "ExportError",
    "OutputExistsError",
    "ParityError",
    "ParityReport",
    "ParityResult",
    "UnknownModelError",
    "build_metadata",
    "check_parity",
    "check_reparam_parity",
    "export_coreml",
    "export_model",
    "export_onnx_image",
    "export_onnx_text",
    "load_classes",
    "load_model",
    "store_weights_fp16",
]
