"""rsclip_core.evaluate: retrieval and zero-shot evaluation (torch-free unless a torch model is used).

- ``metrics``: numpy metric functions (``retrieval_metrics``, ``zero_shot_metrics``), class-name
  cleaning and prompt ensembles.
- ``encoders``: the ``Encoder`` abstraction (``TorchEncoder``, ``ModelDirEncoder``, ``FunctionEncoder``).
- ``runners``: dataset readers, ``evaluate_retrieval`` / ``evaluate_zero_shot`` and report writers.
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
    build_prompts,
    clean_class_name,
    clean_class_names,
    retrieval_metrics,
    zero_shot_metrics,
)
from rsclip_core.evaluate.runners import (
    ClassificationSet,
    RetrievalSet,
    evaluate_retrieval,
    evaluate_zero_shot,
    read_image_folder,
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
    "build_prompts",
    "clean_class_name",
    "clean_class_names",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "read_image_folder",
    "read_karpathy_split",
    "retrieval_metrics",
    "write_results",
    "zero_shot_metrics",
]
