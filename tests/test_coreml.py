"""Core ML export: the saved .mlpackage specs (predictions need macOS/iOS, so the spec is checked).

Default run: tiny-mci-mct (MCi + MCt, the shipped layout). Other students: ``pytest -m slow``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")

from rsclip_core import spec
from rsclip_core.export import export_coreml, export_model
from rsclip_core.export.wrappers import PixelImageEncoder
from rsclip_core.models import create_model, get_model_config, list_models

SLOW_MODELS = [m for m in list_models() if not m.startswith("teacher") and m != "tiny-mci-mct"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add noise


def _spec(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _check_packages(out, name: str) -> None:
    meta = spec.ModelMetadata.read(out)
    expected_props = meta.onnx_metadata_props()

    image = _spec(out / spec.IMAGE_MLPACKAGE)
    assert image.WhichOneof("Type") == "mlProgram"
    assert image.specificationVersion >= 7  # iOS 16 / macOS 13
    (inp,) = image.description.input
    assert inp.name == spec.IMAGE_INPUT and inp.type.WhichOneof("Type") == "imageType"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (meta.image_size, meta.image_size)
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert inp.shortDescription
    (outp,) = image.description.output
    assert outp.name == spec.EMBEDDING_OUTPUT and outp.shortDescription
    assert outp.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert list(outp.type.multiArrayType.shape) == [1, meta.embed_dim]
    # the ImageType's 1/255 scaling is the program's first op
    main = image.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    scales = [
        v.immediateValue.tensor.floats.values[0]
        for op in ops[:4]
        if op.type == "const"
        for k, v in op.attributes.items()
        if k == "val" and v.immediateValue.tensor.floats.values
    ]
    assert any(abs(s - 1 / 255) < 1e-7 for s in scales)

    text = _spec(out / spec.TEXT_MLPACKAGE)
    assert text.WhichOneof("Type") == "mlProgram"
    (tok,) = text.description.input
    assert tok.name == spec.TEXT_INPUT and tok.shortDescription
    assert tok.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    assert list(tok.type.multiArrayType.shape)[-1] == meta.context_length
    ranges = tok.type.multiArrayType.shapeRange.sizeRanges
    assert ranges[0].lowerBound == 1 and ranges[0].upperBound > 1  # flexible batch
    (temb,) = text.description.output
    assert temb.name == spec.EMBEDDING_OUTPUT
    assert temb.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32

    for package, graph in ((image, "image"), (text, "text")):
        user = dict(package.description.metadata.userDefined)
        for key, value in expected_props.items():
            assert user[key] == value, key
        assert user["rsclip_graph"] == graph
        assert json.loads(user["rsclip"])["model_name"] == name
        assert name in package.description.metadata.shortDescription


@pytest.fixture(scope="module")
def coreml_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "tiny-mci-mct"
    torch.manual_seed(0)
    model = create_model("tiny-mci-mct", pretrained_towers=False)
    export_model(model, out, coreml=True, resolution_m=1.0)
    return out


def test_coreml_packages_spec(coreml_dir):
    _check_packages(coreml_dir, "tiny-mci-mct")
    assert {p.name for p in coreml_dir.iterdir()} >= {spec.IMAGE_MLPACKAGE, spec.TEXT_MLPACKAGE, spec.IMAGE_ONNX}
    user = dict(_spec(coreml_dir / spec.IMAGE_MLPACKAGE).description.metadata.userDefined)
    assert json.loads(user["resolution"]) == pytest.approx(100.0)


def test_pixel_wrapper_bakes_in_mean_and_std():
    """What the Core ML image model computes: pixels in [0,1] -> standardise -> encoder."""
    torch.manual_seed(0)
    model = create_model("tiny-mci-mct", pretrained_towers=False).eval().reparameterize()
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    wrapper = PixelImageEncoder(model, mean, std).eval()
    pixels = torch.rand(2, 3, 64, 64)
    standardised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(
            wrapper(pixels).numpy(), model.encode_image(standardised).numpy(), atol=1e-5
        )
        assert not np.allclose(wrapper(pixels).numpy(), model.encode_image(pixels).numpy(), atol=1e-3)


@pytest.mark.slow
def test_export_coreml_directly(tmp_path):
    torch.manual_seed(1)
    model = create_model("tiny-effnet-mct", pretrained_towers=False).eval().reparameterize()
    meta = spec.ModelMetadata(
        model_name=model.name, embed_dim=model.embed_dim, image_size=64, mean=[0.5] * 3, std=[0.5] * 3,
        context_length=model.context_length, logit_scale=100.0,
    )
    image_path, text_path = export_coreml(model, tmp_path, meta)
    assert image_path.name == spec.IMAGE_MLPACKAGE and text_path.name == spec.TEXT_MLPACKAGE
    user = dict(_spec(text_path).description.metadata.userDefined)
    assert json.loads(user["standardization_mean"]) == [0.5, 0.5, 0.5]
    assert float(user["logit_scale"]) == 100.0


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_MODELS)
def test_coreml_every_student(name, tmp_path):
    assert get_model_config(name)
    out = export_model(name, tmp_path / name, coreml=True)
    _check_packages(out, name)
