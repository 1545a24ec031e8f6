"""rsclip_core.export: ONNX graphs, parity, metadata, tokenizer, model-dir writing and the CLI.

Default run: the registry's tiny models. Full-size students: ``pytest -m slow tests/test_export.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner

from rsclip_core import spec
from rsclip_core.export import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassesFileError,
    OutputExistsError,
    UnknownModelError,
    check_parity,
    check_reparam_parity,
    export_model,
)
from rsclip_core.models import create_model, get_model_config, get_tokenizer, list_models

TINY = [m for m in list_models() if get_model_config(m).get("tiny")]
STUDENTS = [m for m in list_models() if not get_model_config(m).get("tiny") and not m.startswith("teacher")]
FAST = "tiny-effnet-mct"  # the quickest tiny model, for tests about files and errors

TEXTS = [
    "A satellite image of a dense residential area.",
    "farmland",
    "Two  planes   parked next to the terminal &amp; a runway!",
    "Überschwemmung am Fluss, 3 Brücken",
    "many ships in a harbour " * 20,  # longer than the context: truncated, EOT kept
    "",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add noise


def _seeded_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(name, pretrained_towers=False).eval()
    _randomize_bn(model, seed)
    return model


def _randomize_bn(model, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so folding them in reparameterization is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            if module.weight is not None:
                module.weight.data.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.data.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)


def _session(path: Path):
    from rsclip_core.inference.sessions import onnx_session

    return onnx_session(path)


def _pixels(size: int, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)


def _standardise(pixels: np.ndarray, mean, std) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((pixels - m) / s).astype(np.float32)


def _assert_close(reference: np.ndarray, candidate: np.ndarray, atol: float = 1e-4, min_cos: float = 0.9999):
    assert reference.shape == candidate.shape
    diff = np.abs(reference - candidate).max()
    cos = (reference * candidate).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1))
    assert diff <= atol, f"max abs diff {diff}"
    assert cos.min() >= min_cos, f"min cosine {cos.min()}"


@pytest.fixture(scope="module", params=TINY)
def exported(request, tmp_path_factory):
    """(name, train-time model, model dir) for each tiny model, exported once."""
    name = request.param
    model = _seeded_model(name)
    out = tmp_path_factory.mktemp("export") / name
    classes = [{"name": "water", "prompts": ["a lake", "a river"], "color": "#0000ff"}, "forest"]
    export_model(model, out, resolution_m=0.5, classes=classes)
    return name, model, out


def _parity_against_torch(name: str, model, out: Path, batch: int = 5) -> None:
    meta = spec.ModelMetadata.read(out)
    reparam = copy.deepcopy(model).reparameterize().eval()
    pixels = _pixels(meta.image_size, batch)
    images = _standardise(pixels, meta.mean, meta.std)
    tokens = get_tokenizer(name)(TEXTS[:batch]).numpy()
    with torch.no_grad():
        ref_image = reparam.encode_image(torch.from_numpy(images)).numpy()
        ref_text = reparam.encode_text(torch.from_numpy(tokens)).numpy()
        train_image = model.encode_image(torch.from_numpy(images)).numpy()
        train_text = model.encode_text(torch.from_numpy(tokens)).numpy()
    onnx_image = _session(out / spec.IMAGE_ONNX).run(None, {spec.IMAGE_INPUT: images})[0]
    onnx_text = _session(out / spec.TEXT_ONNX).run(None, {spec.TEXT_INPUT: tokens.astype(np.int64)})[0]
    _assert_close(ref_image, onnx_image)
    _assert_close(ref_text, onnx_text)
    _assert_close(train_image, ref_image)  # reparameterized vs train-time
    _assert_close(train_text, ref_text)
    np.testing.assert_allclose(np.linalg.norm(onnx_image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(onnx_text, axis=1), 1.0, atol=1e-5)
    # and the package's own checker agrees
    assert check_parity(reparam, out, batch=batch).ok
    assert check_reparam_parity(model, reparam).ok


def test_onnx_matches_torch_and_reparam_matches_train(exported):
    name, model, out = exported
    _parity_against_torch(name, model, out)


def test_reparameterization_really_folds_branches(exported):
    name, model, _ = exported
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in copy.deepcopy(model).reparameterize().parameters())
    if get_model_config(name)["vision_cfg"].get("reparameterizable") or get_model_config(name)["text_cfg"].get(
        "reparameterizable"
    ):
        assert after < before
    else:
        assert after == before


def test_model_dir_layout_and_graph_io(exported):
    name, model, out = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [spec.IMAGE_ONNX, spec.TEXT_ONNX, spec.TOKENIZER_FILE, spec.METADATA_FILE, spec.CLASSES_FILE]
    )
    assert not list(out.parent.glob(f".{name}.*"))  # no temp dir left behind
    meta = spec.ModelMetadata.read(out)
    assert meta.model_name == name
    assert meta.embed_dim == model.embed_dim
    assert meta.image_size == model.preprocess.image_size
    assert meta.context_length == model.context_length
    assert meta.mean == list(model.preprocess.mean) and meta.std == list(model.preprocess.std)
    assert meta.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    assert meta.resolution_m == 0.5
    assert meta.default_classes == spec.CLASSES_FILE
    for path, input_name, dtype, dims in [
        (out / spec.IMAGE_ONNX, spec.IMAGE_INPUT, onnx.TensorProto.FLOAT, [3, meta.image_size, meta.image_size]),
        (out / spec.TEXT_ONNX, spec.TEXT_INPUT, onnx.TensorProto.INT64, [meta.context_length]),
    ]:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph, full_check=True)
        assert {o.domain: o.version for o in graph.opset_import}[""] in (17, 18)
        assert graph.ir_version <= 8  # loadable by onnxruntime >= 1.14 (older QGIS installs)
        (inp,) = graph.graph.input
        outp = graph.graph.output[0]
        extra = [spec.DENSE_OUTPUT] if path.name == spec.IMAGE_ONNX else []
        assert [o.name for o in graph.graph.output] == [spec.EMBEDDING_OUTPUT, *extra]
        assert inp.name == input_name
        assert inp.type.tensor_type.elem_type == dtype
        shape = inp.type.tensor_type.shape.dim
        assert shape[0].dim_param and not shape[0].dim_value  # dynamic batch
        assert [d.dim_value for d in shape[1:]] == dims
        out_shape = outp.type.tensor_type.shape.dim
        assert out_shape[0].dim_param and out_shape[1].dim_value == meta.embed_dim
        # onnxruntime < 1.17 has no int64 ArgMax (CLIP's EOT pooling): it must see int32
        inferred = onnx.shape_inference.infer_shapes(graph)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
        for node in graph.graph.node:
            if node.op_type in ("ArgMax", "ArgMin"):
                assert types.get(node.input[0]) != onnx.TensorProto.INT64, node.name
    session = _session(out / spec.IMAGE_ONNX)
    for batch in (1, 7):
        emb = session.run(None, {spec.IMAGE_INPUT: _pixels(meta.image_size, batch)})[0]
        assert emb.shape == (batch, meta.embed_dim) and emb.dtype == np.float32


def test_metadata_props(exported):
    name, _, out = exported
    meta = spec.ModelMetadata.read(out)
    for graph_name, file in (("image", spec.IMAGE_ONNX), ("text", spec.TEXT_ONNX)):
        props = {p.key: p.value for p in onnx.load(str(out / file)).metadata_props}
        expected = meta.onnx_metadata_props()
        for key, value in expected.items():
            assert props[key] == value, key
        assert props["rsclip_graph"] == graph_name
        assert json.loads(props["rsclip"]) == json.loads((out / spec.METADATA_FILE).read_text())
        # what onnxruntime (and so QGIS tools such as Deepness) sees; Deepness json.loads() each value
        custom = _session(out / file).get_modelmeta().custom_metadata_map
        assert json.loads(custom["model_type"]) == "Recognition"
        assert int(json.loads(custom["tiles_size"])) == meta.image_size
        assert int(json.loads(custom["tile_size"])) == meta.image_size
        assert int(json.loads(custom["tiles_overlap"])) == meta.tiles_overlap
        assert float(json.loads(custom["resolution"])) == pytest.approx(50.0)  # 0.5 m/px in cm/px
        assert json.loads(custom["standardization_mean"]) == pytest.approx(meta.mean)
        assert json.loads(custom["standardization_std"]) == pytest.approx(meta.std)
        assert custom["model_name"] == name
        assert int(custom["embed_dim"]) == meta.embed_dim
        assert int(custom["context_length"]) == meta.context_length
        assert float(custom["logit_scale"]) == pytest.approx(meta.logit_scale)
        assert custom["tokenizer"] == spec.TOKENIZER_FILE
        classes = json.loads(custom["rsclip_classes"])["classes"]
        assert [c["name"] for c in classes] == ["water", "forest"]


def test_classes_file(exported):
    _, _, out = exported
    data = json.loads((out / spec.CLASSES_FILE).read_text())
    assert data["classes"][0] == {"name": "water", "prompts": ["a lake", "a river"], "color": "#0000ff"}
    assert data["classes"][1]["name"] == "forest" and data["classes"][1]["prompts"] == ["forest"]
    from rsclip_core.inference.landcover import load_classes

    assert [c.name for c in load_classes(out / spec.CLASSES_FILE)] == ["water", "forest"]


def test_exported_tokenizer_gives_training_ids(exported):
    name, _, out = exported
    from rsclip_core.inference.tokenizer import TextTokenizer

    meta = spec.ModelMetadata.read(out)
    inference_ids = TextTokenizer.from_model_dir(out, meta)(TEXTS)
    training_ids = get_tokenizer(name)(TEXTS).numpy()
    assert inference_ids.dtype == np.int64
    np.testing.assert_array_equal(inference_ids, training_ids)


def test_inference_engine_reproduces_torch(exported):
    """The torch-free loader (pixels in [0,1], mean/std from metadata) gives the torch embeddings."""
    name, model, out = exported
    from rsclip_core.inference.model import load_model

    engine = load_model(out)
    reparam = copy.deepcopy(model).reparameterize().eval()
    pixels = _pixels(engine.image_size, 3, seed=5)
    with torch.no_grad():
        ref = reparam.encode_image(torch.from_numpy(_standardise(pixels, model.preprocess.mean, model.preprocess.std)))
        ref_text = reparam.encode_text(get_tokenizer(name)(TEXTS[:3]))
    _assert_close(ref.numpy(), engine.encode_images(pixels))
    _assert_close(ref_text.numpy(), engine.encode_text(TEXTS[:3]))


# --- writing the directory: overwrite, atomicity, fp16, checkpoints ------------------------------


def test_refuses_to_overwrite_and_replaces_only_when_asked(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / spec.METADATA_FILE).write_text("{}")  # an (old) model directory
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        export_model(FAST, out)
    assert (out / "keep.txt").read_text() == "precious"
    export_model(FAST, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / spec.IMAGE_ONNX).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or backup dirs left

    # a directory that is not a model directory is never replaced, even with overwrite
    other = tmp_path / "documents"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="not an rsclip model directory"):
        export_model(FAST, other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "years of work"


def test_failed_export_leaves_nothing_and_keeps_old_dir(tmp_path, monkeypatch):
    from rsclip_core.export import api

    out = tmp_path / "model"
    out.mkdir()
    (out / spec.METADATA_FILE).write_text("{}")
    (out / "keep.txt").write_text("old model")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(api, "export_onnx_text", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(FAST, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(FAST, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_fp16_weights_halve_the_file_and_stay_close(tmp_path):
    model = _seeded_model("tiny-mci-mct")
    full = export_model(model, tmp_path / "fp32")
    half = export_model(model, tmp_path / "fp16", fp16=True)
    for name in (spec.IMAGE_ONNX, spec.TEXT_ONNX):
        assert (half / name).stat().st_size < 0.6 * (full / name).stat().st_size
        graph = onnx.load(str(half / name))
        assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
        assert graph.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT16
    assert spec.ModelMetadata.read(half).source["onnx_weights"] == "float16"
    reparam = copy.deepcopy(model).reparameterize()
    report = check_parity(reparam, half, atol=2e-2, min_cosine=0.999)
    assert report["onnx-image"].max_abs_diff > 0  # really rounded
    assert report.ok


def test_checkpoint_is_loaded(tmp_path):
    model = _seeded_model("tiny-mci-mct", seed=3)
    ckpt = tmp_path / "run.pt"
    torch.save({"model": model.state_dict(), "epoch": 1}, ckpt)
    out = export_model("tiny-mci-mct", tmp_path / "m", checkpoint=ckpt)
    meta = spec.ModelMetadata.read(out)
    assert meta.source["checkpoint"] == "run.pt" and len(meta.source["checkpoint_sha256"]) == 64
    assert check_parity(copy.deepcopy(model).reparameterize(), out).ok
    other = _seeded_model("tiny-mci-mct", seed=4).reparameterize()
    assert not check_parity(other, out, raise_on_failure=False).ok  # so the check above means something


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'") as info:
        export_model("no-such-model", tmp_path / "a")
    assert "\n" not in str(info.value) and "tiny-mci-mct" in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="missing.pt: checkpoint not found"):
        export_model(FAST, tmp_path / "b", checkpoint=tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("tiny-effnet-mct", pretrained_towers=False).state_dict(), wrong)
    with pytest.raises(CheckpointMismatchError, match="wrong.pt") as info:
        export_model("tiny-mci-mct", tmp_path / "c", checkpoint=wrong)
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="garbage.pt"):
        export_model("tiny-mci-mct", tmp_path / "d", checkpoint=garbage)
    bad_classes = tmp_path / "classes.json"
    bad_classes.write_text('[{"prompts": ["x"]}]')
    with pytest.raises(ClassesFileError, match="no name"):
        export_model(FAST, tmp_path / "e", classes=bad_classes)
    with pytest.raises(ClassesFileError, match="nope.json"):
        export_model(FAST, tmp_path / "f", classes=tmp_path / "nope.json")
    assert not any(tmp_path.glob("[a-f]"))


# --- CLI --------------------------------------------------------------------------------------------


def test_cli_export_and_errors(tmp_path):
    from rsclip_core.cli.main import cli

    runner = CliRunner()
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes:\n  - name: water\n    prompts: [a lake]\n    color: '#0000ff'\n  - name: trees\n")
    out = tmp_path / "m"
    result = runner.invoke(
        cli, ["export", FAST, "-o", str(out), "--classes", str(classes), "--resolution", "0.3", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out.absolute())
    meta = spec.ModelMetadata.read(out)
    assert meta.resolution_m == 0.3 and meta.default_classes == spec.CLASSES_FILE

    for args, message in [
        (["export", FAST, "-o", str(out)], "already exists"),
        (["export", "nope", "-o", str(tmp_path / "x")], "unknown model 'nope'"),
        (["export", FAST, "-o", str(tmp_path / "y"), "--checkpoint", str(tmp_path / "none.pt")], "checkpoint not found"),
        (["export", FAST, "-o", str(tmp_path / "z"), "--resolution", "-1"], "resolution must be > 0"),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("Error: ") and message in lines[-1], result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.yaml", "m"]


# --- full-size students (opt-in) ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_full_student_export_parity(name, tmp_path):
    model = _seeded_model(name)
    out = export_model(model, tmp_path / name)
    _parity_against_torch(name, model, out, batch=3)
    meta = spec.ModelMetadata.read(out)
    from rsclip_core.inference.tokenizer import TextTokenizer

    np.testing.assert_array_equal(TextTokenizer.from_model_dir(out, meta)(TEXTS), get_tokenizer(name)(TEXTS).numpy())


# --- exporter paths -------------------------------------------------------------------------------


class _SelfAttentionPool(torch.nn.Module):
    """nn.MultiheadAttention in eval/no_grad takes a fused fast path that has no ONNX export."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0].mean(1)


def test_legacy_exporter_handles_multihead_attention(tmp_path):
    from rsclip_core.export.onnx_export import export_graph

    module = _SelfAttentionPool().eval()
    x = torch.randn(2, 5, 16)
    assert export_graph(module, x, "x", tmp_path / "mha.onnx", opset=17, exporter="legacy") == "legacy"
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards
    y = torch.randn(3, 5, 16)
    with torch.no_grad():
        ref = module(y).numpy()
    got = _session(tmp_path / "mha.onnx").run(None, {"x": y.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_dynamo_exporter_gives_the_same_graph_contract(tmp_path):
    """The fallback exporter: same names/metadata, and no clash with its own 'embedding' node."""
    from rsclip_core.export.onnx_export import export_onnx_text

    model = _seeded_model("tiny-mci-mct").reparameterize()
    path = export_onnx_text(model, tmp_path / spec.TEXT_ONNX, exporter="dynamo", metadata_props={"k": "v"})
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == [spec.TEXT_INPUT]
    assert [o.name for o in graph.graph.output] == [spec.EMBEDDING_OUTPUT]
    assert {p.key: p.value for p in graph.metadata_props}["k"] == "v"
    tokens = get_tokenizer("tiny-mci-mct")(TEXTS[:3])
    with torch.no_grad():
        ref = model.encode_text(tokens).numpy()
    _assert_close(ref, _session(path).run(None, {spec.TEXT_INPUT: tokens.numpy()})[0])


def test_dense_output_matches_torch_and_its_mean_is_the_embedding(exported):
    """GAP + linear head: the projected feature map's spatial mean IS the (pre-L2) tile embedding."""
    name, model, out = exported
    meta = spec.ModelMetadata.read(out)
    reparam = copy.deepcopy(model).reparameterize().eval()
    images = _standardise(_pixels(meta.image_size, 3), meta.mean, meta.std)
    with torch.no_grad():
        raw = reparam.visual(torch.from_numpy(images)).numpy()
        ref_dense = reparam.visual.forward_dense(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ref_dense.mean(axis=(2, 3)), raw, atol=1e-4 * max(1.0, np.abs(raw).max()))
    assert meta.dense_output == spec.DENSE_OUTPUT
    assert meta.dense_grid == list(ref_dense.shape[2:])
    assert meta.dense_stride * meta.dense_grid[0] == meta.image_size
    embedding, dense = _session(out / spec.IMAGE_ONNX).run(
        [spec.EMBEDDING_OUTPUT, spec.DENSE_OUTPUT], {spec.IMAGE_INPUT: images})
    assert dense.shape == ref_dense.shape
    np.testing.assert_allclose(dense, ref_dense, atol=1e-4 * max(1.0, np.abs(ref_dense).max()))
    mean = dense.mean(axis=(2, 3))
    _assert_close(embedding, mean / np.linalg.norm(mean, axis=1, keepdims=True))
    report = check_parity(reparam, out)
    assert report["onnx-dense"].ok and report["dense-mean"].ok


def test_dense_export_refused_for_a_head_that_is_not_gap_linear(tmp_path):
    from rsclip_core.export import ExportError
    from rsclip_core.export.onnx_export import dense_metadata_fields, dense_support, export_onnx_image

    model = _seeded_model(FAST).reparameterize()
    assert dense_support(model) is None
    honest = model.visual.forward_dense
    model.visual.forward_dense = lambda images: honest(images) * 2.0  # mean no longer == the embedding
    assert "not global average pooling" in dense_support(model)
    assert dense_metadata_fields(model) == {}
    with pytest.raises(ExportError, match="dense output"):
        export_onnx_image(model, tmp_path / "a.onnx", dense=True)
    path = export_onnx_image(model, tmp_path / "b.onnx")  # auto: plain embedding only
    assert [o.name for o in onnx.load(str(path)).graph.output] == [spec.EMBEDDING_OUTPUT]
    del model.visual.forward_dense
    model.visual.forward_dense = None
    assert "no per-location projection" in dense_support(model)


def test_dense_output_added_to_an_exported_graph(tmp_path):
    """The graph edit used for the bundled model: same result as exporting it from torch."""
    from rsclip_core.export.onnx_export import add_dense_output, export_onnx_image

    model = _seeded_model("tiny-mci-mct").reparameterize()
    path = export_onnx_image(model, tmp_path / spec.IMAGE_ONNX, dense=False, fp16=True)
    graph = onnx.load(str(path))
    add_dense_output(graph, model.embed_dim)
    with pytest.raises(Exception, match="already has an output"):
        add_dense_output(graph, model.embed_dim)
    onnx.save(graph, str(path))
    images = _standardise(_pixels(model.preprocess.image_size, 2), model.preprocess.mean, model.preprocess.std)
    embedding, dense = _session(path).run(None, {spec.IMAGE_INPUT: images})
    with torch.no_grad():
        ref = model.visual.forward_dense(torch.from_numpy(images)).numpy()
    cos = (dense * ref).sum(1) / np.linalg.norm(dense, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999  # fp16 weights
    mean = dense.mean(axis=(2, 3))
    _assert_close(embedding, mean / np.linalg.norm(mean, axis=1, keepdims=True))
    text_like = onnx.load(str(export_onnx_image(model, tmp_path / "plain.onnx", dense=False)))
    pool = next(n for n in text_like.graph.node if n.op_type == "GlobalAveragePool")
    pool.op_type = "GlobalMaxPool"  # no spatial mean any more: a clear refusal
    with pytest.raises(Exception, match="global average pool"):
        add_dense_output(text_like, model.embed_dim)
