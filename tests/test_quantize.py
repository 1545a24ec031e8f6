"""rsclip_core.export.quantize: int8 graphs of the tiny registry models (fast) and their checks.

Thresholds: a random-init tiny model has no trained structure that quantization preserves
better than chance, so the bar is "the embedding direction survives": mean cosine fp32 vs int8
>= 0.95 (text, dynamic int8) / >= 0.9 (image, static int8 calibrated on 16 images). A broken
quantization (wrong scales, swapped inputs, lost normalisation) lands near 0 for random-ish
embeddings in 32-64 dimensions, far below either bar.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from click.testing import CliRunner
from PIL import Image

from rsclip_core import spec
from rsclip_core.export import ExportError, export_model
from rsclip_core.inference.sessions import onnx_session
from rsclip_core.export.quantize import (
    PARITY_TEXTS,
    QuantizationError,
    list_calibration_images,
    quantization_report,
)
from rsclip_core.models import create_model

MODELS = ["tiny-effnet-mct", "tiny-effnet-minilm"]


def _images(folder: Path, n: int = 16, size: int = 80, seed: int = 0) -> Path:
    """Smooth random RGB images (low-frequency noise, like blurry aerial scenes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.uniform(0, 255, size=(6, 6, 3)).astype("uint8")
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"img{i:02d}.png")
    return folder


def _model(name: str):
    torch.manual_seed(0)
    return create_model(name, pretrained_towers=False).eval()


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """(fp32 dir, int8 dir, calibration folder) of one tiny model."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(request.param)
    calib = _images(root / "calib")
    model = _model(request.param)
    fp32 = export_model(model, root / "fp32")
    int8 = export_model(model, root / "int8", quantize="int8", calibration_images=calib)
    return fp32, int8, calib


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _signature(path: Path) -> tuple:
    session = onnx_session(path)
    return ([(i.name, i.type, i.shape) for i in session.get_inputs()],
            [(o.name, o.type, o.shape) for o in session.get_outputs()])


@pytest.mark.parametrize("graph", [spec.IMAGE_ONNX, spec.TEXT_ONNX])
def test_quantized_graph_keeps_io_and_metadata(exported, graph):
    fp32, int8, _ = exported
    assert _signature(int8 / graph) == _signature(fp32 / graph)
    props32, props8 = _props(fp32 / graph), _props(int8 / graph)
    # the mirrored rsclip.json differs only in its recorded source (quantization)
    meta32, meta8 = json.loads(props32.pop("rsclip")), json.loads(props8.pop("rsclip"))
    assert props8 == props32
    assert {k: v for k, v in meta8.items() if k != "source"} == {k: v for k, v in meta32.items() if k != "source"}
    assert "quantization" in meta8["source"] and "quantization" not in meta32["source"]


def test_quantized_graphs_are_int8_and_smaller(exported):
    fp32, int8, _ = exported
    image_ops = {n.op_type for n in onnx.load(str(int8 / spec.IMAGE_ONNX)).graph.node}
    text_ops = {n.op_type for n in onnx.load(str(int8 / spec.TEXT_ONNX)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= image_ops  # static QDQ
    assert "DynamicQuantizeLinear" in text_ops or "MatMulInteger" in text_ops  # dynamic
    text_gathers = [n for n in onnx.load(str(int8 / spec.TEXT_ONNX)).graph.node if n.op_type == "Gather"]
    # the token embedding table is stored as 8-bit integers (onnxruntime picks uint8 for Gather)
    inits = {i.name: i for i in onnx.load(str(int8 / spec.TEXT_ONNX)).graph.initializer}
    assert any(inits.get(n.input[0]) is not None and inits[n.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               for n in text_gathers)
    assert (int8 / spec.TEXT_ONNX).stat().st_size < (fp32 / spec.TEXT_ONNX).stat().st_size
    assert (int8 / spec.IMAGE_ONNX).stat().st_size < (fp32 / spec.IMAGE_ONNX).stat().st_size


def test_int8_embeddings_close_to_fp32(exported):
    fp32, int8, calib = exported
    image_row, text_row = quantization_report(fp32, int8, list_calibration_images(calib), PARITY_TEXTS)
    assert image_row.n == 16 and text_row.n == len(PARITY_TEXTS)
    assert image_row.mean_cosine >= 0.9, image_row.summary()
    assert text_row.mean_cosine >= 0.95, text_row.summary()


def test_quantized_model_dir_runs_in_inference(exported):
    from rsclip_core.inference import load_model

    _, int8, _ = exported
    model = load_model(int8)
    emb = model.encode_text(["a lake", "farmland"])
    assert emb.shape == (2, model.embed_dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, model.image_size, model.image_size)).astype(np.float32)
    assert model.encode_images(images).shape == (2, model.embed_dim)
    source = spec.ModelMetadata.read(int8).source["quantization"]
    assert "dynamic int8" in source["text"] and "16 images" in source["image"]


def test_int8_text_only_keeps_image_graph_float(tmp_path):
    model = _model("tiny-effnet-mct")
    out = export_model(model, tmp_path / "m", quantize="int8-text", fp16=True)
    image_ops = {n.op_type for n in onnx.load(str(out / spec.IMAGE_ONNX)).graph.node}
    assert "QuantizeLinear" not in image_ops
    source = spec.ModelMetadata.read(out).source
    assert source["onnx_weights"] == "float16 (image graph)" and "image" not in source["quantization"]


def test_bad_quantization_arguments(tmp_path):
    model = _model("tiny-effnet-mct")
    with pytest.raises(ExportError, match="calibration"):
        export_model(model, tmp_path / "a", quantize="int8")
    with pytest.raises(QuantizationError, match="int4"):
        export_model(model, tmp_path / "b", quantize="int4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizationError, match="no images"):
        export_model(model, tmp_path / "c", quantize="int8", calibration_images=tmp_path / "empty")
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())  # nothing half-written


def test_cli_quantize_needs_calibration(tmp_path):
    from rsclip_core.cli.main import cli

    result = CliRunner().invoke(cli, ["export", "tiny-effnet-mct", "-o", str(tmp_path / "m"), "--quantize", "int8"])
    assert result.exit_code != 0 and "Error:" in result.output and "calibration" in result.output
    assert not (tmp_path / "m").exists()


def test_int8_embedding_quantizes_only_the_token_table(exported, tmp_path: Path):
    fp32, _, _ = exported
    model = _model(json.loads((fp32 / spec.METADATA_FILE).read_text())["model_name"])
    emb = export_model(model, tmp_path / "emb", fp16=True, quantize="int8-embedding")
    text = onnx.load(str(emb / spec.TEXT_ONNX))
    ops = {n.op_type for n in text.graph.node}
    assert "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops  # MatMuls stay float
    inits = {i.name: i for i in text.graph.initializer}
    gathers = [n for n in text.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    assert any(inits[n.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for n in gathers)
    assert (emb / spec.TEXT_ONNX).stat().st_size < (fp32 / spec.TEXT_ONNX).stat().st_size
    meta = json.loads((emb / spec.METADATA_FILE).read_text())
    assert "Gather weights" in meta["source"]["quantization"]["text"] and "MatMul" not in meta["source"]["quantization"]["text"]
    image = onnx.load(str(emb / spec.IMAGE_ONNX))  # the image graph keeps its fp16 weights
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in image.graph.initializer)
