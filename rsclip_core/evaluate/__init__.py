"""rsclip_core.evaluate: retrieval and zero-shot evaluation (torch-free unless a torch model is used).

- ``metrics``: numpy metric functions (``retrieval_metrics``, ``zero_shot_metrics``) and prompt
  ensembles (templates: ``rsclip_core.prompts``; class-name cleaning: ``rsclip_core.data.readers``).
- ``encoders``: the ``Encoder`` abstraction (``TorchEncoder``, ``ModelDirEncoder``, ``FunctionEncoder``).
- ``runners``: evaluation sets built from ``rsclip_core.data.readers`` (``read_karpathy_split``,
  ``read_classification_folder``), ``evaluate_retrieval`` / ``evaluate_zero_shot`` and report writers.
"""

from rsclip_core.evaluate.encoders import (
    Encoder,
    EvalInputError,
    FunctionEncoder,
    ModelDirEncoder,
    TorchEncoder,
)
from rsclip_core.evaluate.metrics import (
    MetricInputError,
    retrieval_metrics,
    zero_shot_metrics,
)
from rsclip_core.evaluate.runners import (
    ClassificationSet,
    RetrievalSet,
    evaluate_retrieval,
    evaluate_zero_shot,
    read_classification_folder,
    read_karpathy_split,
    write_results,
)

__all__ = [
    "ClassificationSet",
    "Encoder",
    "EvalInputError",
    "FunctionEncoder",
    "MetricInputError",
    "ModelDirEncoder",
    "RetrievalSet",
    "TorchEncoder",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "read_classification_folder",
    "read_karpathy_split",
    "retrieval_metrics",
    "write_results",
    "zero_shot_metrics",
]
