"""int8 quantization of exported rsclip graphs (onnxruntime.quantization) and its parity report.

* Text graph: **dynamic** int8 (``quantize_dynamic``): weights of MatMul/Gemm and of the token
  embedding ``Gather`` (onnxruntime's integer-op registry has a Gather quantizer; it stores the
  table as uint8) quantized **per output channel**, activations quantized on the fly. Needs no
  data. Per-channel matters: all-MiniLM-L6-v2 + heads keeps cosine 0.987 to fp32 on RSICD
  captions per channel, 0.932 per tensor.
* Image graph: **static** QDQ int8 (``quantize_static``), per-channel int8 weights, uint8
  activations; the stem and first stages (the first ``KEEP_FLOAT_CONVS`` convolutions, at most a
  quarter of them) stay float, they are where the error starts. Activation ranges are
  calibrated (MinMax) on a folder of images, preprocessed exactly as
  ``rsclip eval --model-dir`` / inference do: :func:`rsclip_core.preprocess.load_images` and
  :func:`rsclip_core.preprocess.standardise` with the metadata's ``preprocess`` config.

``metadata_props`` of the fp32 graph are copied onto the quantized one (onnxruntime drops some).
Quantized graphs cannot match fp32 to 1e-4; :func:`quantization_report` measures the cosine
between fp32 and int8 embeddings and how often retrieval picks the same item instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rsclip_core import spec
from rsclip_core.data.readers import IMAGE_EXTENSIONS
from rsclip_core.export.errors import ExportError
from rsclip_core.preprocess import load_images, standardise

QuantizeMode = Literal["none", "int8-embedding", "int8-text", "int8"]
QUANTIZE_MODES: tuple[str, ...] = ("none", "int8-embedding", "int8-text", "int8")
TEXT_OP_TYPES = ("MatMul", "Gemm", "Gather")
#: int8-embedding: only the token-embedding table (most of a small text tower's bytes); MatMuls stay fp32.
#: Full int8 text cost the bundled student 0.49 RSICD val mR, this 0.03 (training/results/text_quantization.md)
EMBEDDING_OP_TYPES = ("Gather",)
IMAGE_OP_TYPES = ("Conv", "MatMul", "Gemm")
DEFAULT_CALIBRATION_LIMIT = 256
#: the first Conv nodes (stem + first stages) stay float: with every conv quantized the EfficientNet-Lite0
#: teacher keeps only cosine 0.81 to fp32 (0.94 without the stem, 0.989 without the first 6 convs)
KEEP_FLOAT_CONVS = 6

#: sentences used to compare fp32 and int8 text embeddings when no others are given
PARITY_TEXTS = (
    "many buildings and green trees are around a playground.",
    "a large lake surrounded by farmland.",
    "several planes are parked at the airport.",
    "a river passes through a dense residential area.",
    "green farmland with a few scattered houses.",
    "a bridge crosses the river near a road.",
    "an industrial area with many factories and storage tanks.",
    "a harbor with many boats.",
    "bare land with some roads.",
    "a forest of dense green trees.",
    "a baseball field next to a parking lot.",
    "a church surrounded by buildings.",
    "water.",
    "a satellite image of crops.",
    "an aerial image of a highway interchange.",
    "a beach with white waves next to the sea.",
)


class QuantizationError(ExportError):
    """Quantization cannot run (bad mode, no calibration images, unreadable graph)."""


def check_mode(mode: str) -> str:
    if mode not in QUANTIZE_MODES:
        raise QuantizationError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    return mode


def text_op_types(mode: str) -> tuple[str, ...]:
    """The text-graph op types whose weights ``mode`` stores as int8."""
    return EMBEDDING_OP_TYPES if check_mode(mode) == "int8-embedding" else TEXT_OP_TYPES


def list_calibration_images(folder: str | Path, limit: int = DEFAULT_CALIBRATION_LIMIT) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), evenly subsampled to at most ``limit``."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise QuantizationError(f"{folder}: calibration image folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise QuantizationError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) for calibration")
    if len(files) > limit:
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in sorted(set(picks.tolist()))]
    return files


def preprocess_images(paths: Sequence[str | Path], metadata: spec.ModelMetadata) -> np.ndarray:
    """Image files -> float32 [N, 3, S, S] standardised input of ``image.onnx`` (as inference does)."""
    cfg = metadata.preprocess
    return standardise(load_images(list(paths), cfg), cfg)


class ImageCalibrationReader:
    """``CalibrationDataReader`` over image files, one preprocessed batch per ``get_next``."""

    def __init__(self, paths: Sequence[str | Path], metadata: spec.ModelMetadata, batch_size: int = 16) -> None:
        self.paths = [Path(p) for p in paths]
        self.metadata = metadata
        self.batch_size = int(batch_size)
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.paths):
            return None
        batch = self.paths[self._start:self._start + self.batch_size]
        self._start += len(batch)
        return {spec.IMAGE_INPUT: preprocess_images(batch, self.metadata)}

    def rewind(self) -> None:
        self._start = 0


def _restore_interface(src: Path, dst: Path) -> None:
    """Give ``dst`` the ``metadata_props`` and input/output types (named dims) of ``src``.

    onnxruntime's quantizer drops some metadata, and its symbolic shape inference renames
    dynamic dimensions (``batch`` -> ``Pad_577_o0__d0``): the exported contract must not change.
    """
    import onnx

    source = onnx.load(str(src), load_external_data=False)
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for prop in source.metadata_props:
        entry = model.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    for ours, theirs in ((model.graph.input, source.graph.input), (model.graph.output, source.graph.output)):
        types = {v.name: v.type for v in theirs}
        for value in ours:
            if value.name in types:
                value.type.CopyFrom(types[value.name])
    onnx.save(model, str(dst))


def _preprocessed(src: Path, work: Path) -> Path:
    """Shape inference + graph optimisation onnxruntime recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / f"pre-{src.name}"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs: plain ONNX one
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def quantize_text_graph(src: str | Path, dst: str | Path, op_types: Sequence[str] = TEXT_OP_TYPES) -> Path:
    """Dynamic int8 text graph (the weights of ``op_types``: MatMul/Gemm + embedding Gather); metadata kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="rsclip-quant-") as work:
        pre = _preprocessed(src, Path(work))
        tmp = Path(work) / "text-int8.onnx"
        quantize_dynamic(pre, tmp, op_types_to_quantize=list(op_types), per_channel=True,
                         weight_type=QuantType.QInt8)
        _restore_interface(src, tmp)
        _move(tmp, dst)
    return dst


def quantize_image_graph(src: str | Path, dst: str | Path, calibration_images: Sequence[str | Path],
                         metadata: spec.ModelMetadata, keep_float_convs: int = KEEP_FLOAT_CONVS) -> Path:
    """Static QDQ int8 image graph (per-channel weights, MinMax-calibrated activations)."""
    if not calibration_images:
        raise QuantizationError("static int8 quantization of the image graph needs calibration images")
    return quantize_image_graph_with_reader(src, dst, ImageCalibrationReader(calibration_images, metadata),
                                            keep_float_convs=keep_float_convs)


def float_conv_nodes(model_path: str | Path, keep_float_convs: int = KEEP_FLOAT_CONVS) -> list[str]:
    """Names of the first ``keep_float_convs`` Conv nodes (graph order), at most a quarter of all convs."""
    import onnx

    convs = [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type == "Conv"]
    return convs[: min(int(keep_float_convs), len(convs) // 4)]


def quantize_image_graph_with_reader(src: str | Path, dst: str | Path, reader: Any,
                                     keep_float_convs: int = KEEP_FLOAT_CONVS) -> Path:
    """:func:`quantize_image_graph` with any ``CalibrationDataReader`` (``get_next`` -> {"image": x})."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="rsclip-quant-") as work:
        pre = _preprocessed(src, Path(work))
        tmp = Path(work) / "image-int8.onnx"
        quantize_static(
            pre, tmp, reader, nodes_to_exclude=float_conv_nodes(pre, keep_float_convs),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(IMAGE_OP_TYPES), per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        _restore_interface(src, tmp)
        _move(tmp, dst)
    return dst


def _move(src: Path, dst: Path) -> None:
    """Copy ``src`` next to ``dst`` and rename it into place (``dst`` is never half-written)."""
    import shutil

    part = dst.with_name(f".{dst.name}.part")
    shutil.copyfile(src, part)
    os.replace(part, dst)


def quantization_source(mode: str, n_calibration: int = 0) -> dict[str, Any]:
    """What goes into ``rsclip.json`` ``source["quantization"]``."""
    check_mode(mode)
    if mode == "none":
        return {}
    info: dict[str, Any] = {
        "text": f"dynamic int8 ({'/'.join(text_op_types(mode))} weights per channel, onnxruntime quantize_dynamic)",
    }
    if mode == "int8":
        info["image"] = (f"static QDQ int8 ({'/'.join(IMAGE_OP_TYPES)}; first {KEEP_FLOAT_CONVS} convs float; "
                         f"per-channel int8 weights, uint8 activations, MinMax calibration on {n_calibration} images)")
    return info


# --- parity of fp32 vs int8 -------------------------------------------------------------------


@dataclass
class QuantizationParity:
    """fp32 vs int8 embeddings of the same inputs."""

    which: str
    n: int
    mean_cosine: float
    min_cosine: float
    top1_agreement: float  # fraction of rows whose nearest neighbour among the fp32 set is the same

    def summary(self) -> str:
        return (f"{self.which}: fp32 vs int8 cosine mean {self.mean_cosine:.4f} min {self.min_cosine:.4f}, "
                f"retrieval top-1 agreement {100 * self.top1_agreement:.1f}% (n={self.n})")


def _run(session: Any, name: str, x: np.ndarray, batch: int = 32) -> np.ndarray:
    parts = [session.run([spec.EMBEDDING_OUTPUT], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    out = np.concatenate(parts).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def compare_embeddings(which: str, fp32: np.ndarray, int8: np.ndarray, queries: np.ndarray | None = None
                       ) -> QuantizationParity:
    """Cosine per row, and whether each query (default: the fp32 rows) retrieves the same item."""
    cos = (fp32 * int8).sum(axis=1)
    q = fp32 if queries is None else queries
    same = (q @ fp32.T).argmax(axis=1) == (q @ int8.T).argmax(axis=1)
    return QuantizationParity(which, len(fp32), float(cos.mean()), float(cos.min()), float(same.mean()))


def quantization_report(fp32_dir: str | Path, int8_dir: str | Path, images: Sequence[str | Path],
                        texts: Sequence[str] = PARITY_TEXTS) -> list[QuantizationParity]:
    """Compare two model directories (same model, fp32 and quantized) on real images and texts.

    Image rows: cosine(fp32, int8) and whether each fp32 *text* query retrieves the same image
    from the int8 image embeddings as from the fp32 ones; text rows: the same the other way round.
    """
    from rsclip_core.inference.sessions import onnx_session
    from rsclip_core.inference.tokenizer import TextTokenizer

    fp32_dir, int8_dir = Path(fp32_dir), Path(int8_dir)
    metadata = spec.ModelMetadata.read(fp32_dir)
    x = preprocess_images(images, metadata)
    tokens = np.asarray(TextTokenizer.from_model_dir(fp32_dir, metadata)(list(texts)), dtype=np.int64)
    img32 = _run(onnx_session(fp32_dir / spec.IMAGE_ONNX), spec.IMAGE_INPUT, x)
    img8 = _run(onnx_session(int8_dir / spec.IMAGE_ONNX), spec.IMAGE_INPUT, x)
    txt32 = _run(onnx_session(fp32_dir / spec.TEXT_ONNX), spec.TEXT_INPUT, tokens)
    txt8 = _run(onnx_session(int8_dir / spec.TEXT_ONNX), spec.TEXT_INPUT, tokens)
    return [
        compare_embeddings("image", img32, img8, queries=txt32),
        compare_embeddings("text", txt32, txt8, queries=img32),
    ]


def quantize_model_dir(model_dir: str | Path, mode: str, calibration_images: Sequence[str | Path] = ()) -> None:
    """Quantize the graphs of an exported (fp32) model directory in place."""
    check_mode(mode)
    model_dir = Path(model_dir)
    if mode == "none":
        return
    metadata = spec.ModelMetadata.read(model_dir)
    quantize_text_graph(model_dir / spec.TEXT_ONNX, model_dir / spec.TEXT_ONNX, text_op_types(mode))
    if mode == "int8":
        quantize_image_graph(model_dir / spec.IMAGE_ONNX, model_dir / spec.IMAGE_ONNX, calibration_images, metadata)
