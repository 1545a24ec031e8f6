"""Give an exported rsclip model directory the ``dense`` image output by editing its ONNX graph.

How the bundled model (``rsclip_core/resources/models/default``, whose torch checkpoint is gone)
got its dense output: ``python scripts/add_dense_output.py rsclip_core/resources/models/default``.
Checks that the L2-normalised spatial mean of ``dense`` reproduces ``embedding`` (<= 1e-4).
"""

from __future__ import annotations

import argparse

from rsclip_core.export.onnx_export import add_dense_to_model_dir
from rsclip_core.export.parity import check_dense_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    args = parser.parse_args()
    meta = add_dense_to_model_dir(args.model_dir)
    print(f"{args.model_dir}: dense output {meta.dense_grid} cells of {meta.dense_stride} px; "
          f"{check_dense_graph(args.model_dir).summary()}")


if __name__ == "__main__":
    main()
