"""Core ML field bundle: one mlpackage image -> class probabilities + embedding (FP16 and int8 weights).

coremltools converts here but cannot predict on Linux: the saved specs (inputs, outputs, shapes,
metadata, quantized weights) are checked, and the traced head is checked numerically in torch
against the ONNX model directory's own zero-shot probabilities.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")

from rsclip_core import spec  # noqa: E402
from rsclip_core.export import export_model  # noqa: E402
from rsclip_core.export.coreml_field import (  # noqa: E402
    FIELD_INT8_MLPACKAGE,
    FIELD_MLPACKAGE,
    PROBABILITIES_OUTPUT,
    ZeroShotFieldModel,
)
from rsclip_core.models import create_model  # noqa: E402

CLASSES = [{"name": "water", "prompts": ["water", "a lake"]}, {"name": "forest", "prompts": ["forest"]},
           {"name": "buildings", "prompts": ["buildings"]}]


@pytest.fixture(scope="module")
def field_dir(tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("tiny-mci-mct", pretrained_towers=False)
    out = export_model(model, tmp_path_factory.mktemp("field") / "m", coreml_field=True, classes=CLASSES)
    torch.set_num_threads(previous)
    return out, model


def _spec(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _ops(package_spec) -> list[str]:
    main = package_spec.mlProgram.functions["main"]
    return [op.type for op in main.block_specializations[main.opset].operations]


def test_field_bundle_specs_shapes_and_metadata(field_dir):
    out, _ = field_dir
    meta = spec.ModelMetadata.read(out)
    assert (out / spec.TEXT_MLPACKAGE).is_dir()  # free-text queries
    sizes = {}
    for name in (FIELD_MLPACKAGE, FIELD_INT8_MLPACKAGE):
        s = _spec(out / name)
        assert s.WhichOneof("Type") == "mlProgram" and s.specificationVersion >= 7
        (inp,) = s.description.input
        assert inp.name == spec.IMAGE_INPUT and inp.type.WhichOneof("Type") == "imageType"
        assert (inp.type.imageType.width, inp.type.imageType.height) == (meta.image_size, meta.image_size)
        outputs = {o.name: list(o.type.multiArrayType.shape) for o in s.description.output}
        assert outputs == {PROBABILITIES_OUTPUT: [1, len(CLASSES)], spec.EMBEDDING_OUTPUT: [1, meta.embed_dim]}
        user = dict(s.description.metadata.userDefined)
        assert [c["name"] for c in json.loads(user["rsclip_field_classes"])] == ["water", "forest", "buildings"]
        assert json.loads(user["rsclip"])["model_name"] == "tiny-mci-mct" and user["rsclip_graph"] == "field"
        sizes[name] = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file())
        if name == FIELD_INT8_MLPACKAGE:
            assert any(op.startswith("constexpr_") for op in _ops(s)), "int8 weights must be stored quantized"
    assert sizes[FIELD_INT8_MLPACKAGE] < 0.75 * sizes[FIELD_MLPACKAGE]


def test_field_head_matches_the_model_directory_zero_shot(field_dir):
    from rsclip_core.inference import load_model
    from rsclip_core.inference.landcover import class_text_embeddings, parse_classes, softmax

    out, model = field_dir
    loaded = load_model(out)
    class_emb = class_text_embeddings(loaded, parse_classes(CLASSES))
    field = ZeroShotFieldModel(model.eval(), loaded.metadata.mean, loaded.metadata.std, class_emb,
                               loaded.logit_scale).eval()
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, loaded.image_size, loaded.image_size)).astype(np.float32)
    with torch.no_grad():
        probs, emb = field(torch.from_numpy(images))
    expected_emb = loaded.encode_images(images)
    np.testing.assert_allclose(emb.numpy(), expected_emb, atol=1e-4)
    np.testing.assert_allclose(probs.numpy(), softmax(loaded.logit_scale * expected_emb @ class_emb.T), atol=1e-4)
