"""rsclip_core.inference.sessions: the one onnxruntime session helper."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from rsclip_core.inference.errors import InvalidModelError, RsclipInputError  # noqa: E402
from rsclip_core.inference.sessions import onnx_session, session_options  # noqa: E402


def _identity_graph(path):
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_session_runs_a_graph(tmp_path):
    session = onnx_session(_identity_graph(tmp_path / "id.onnx"), threads=1, allow_spinning=False)
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_options_follow_the_arguments():
    options = session_options(3, optimization="basic", allow_spinning=False)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(RsclipInputError, match="optimization: 'fast'"):
        session_options(optimization="fast")
    with pytest.raises(RsclipInputError, match="threads: -1"):
        session_options(-1)


def test_missing_and_corrupt_graphs_give_one_line_naming_the_file(tmp_path):
    with pytest.raises(InvalidModelError, match="nope.onnx: ONNX graph not found"):
        onnx_session(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(InvalidModelError, match="bad.onnx: not a loadable ONNX model") as info:
        onnx_session(bad)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(_identity_graph(tmp_path / "ok.onnx").read_bytes()[:20])
    with pytest.raises(InvalidModelError, match="truncated.onnx"):
        onnx_session(truncated)
