"""Training recipes -> TrainConfig, the generated ``rsclip train`` options, the ablation's recipes, and resume
from a run's recorded recipe."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rsclip_core.cli import train_cmd
from rsclip_core.train.config import (
    FIELDS,
    TrainConfig,
    TrainConfigError,
    build_config,
    field_default,
    field_type,
    load_recipe,
    parse_assignments,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- recipe files -----------------------------------------------------------------------------------------


def test_recipe_extends_chain_and_overrides(tmp_path: Path):
    _write(tmp_path / "base.yaml", "model: student.json\nsteps: 50\nlr: 1\nbetas: [0.9, 0.95]\ndescription: base\n")
    _write(tmp_path / "sub" / "kd.yaml", "extends: ../base.yaml\nlam: 0.5\nsteps: 70\n")
    values = load_recipe(tmp_path / "sub" / "kd.yaml")
    assert values["steps"] == 70 and values["lam"] == 0.5 and "description" not in values  # not inherited
    assert values["lr"] == 1.0 and isinstance(values["lr"], float)  # ints are accepted as floats
    assert values["betas"] == (0.9, 0.95)
    assert values["model"] == str((tmp_path / "student.json").resolve())  # relative to the file that says it
    cfg = build_config(tmp_path / "sub" / "kd.yaml", {"data": "d", "output": "o", "steps": 9, "seed": None})
    assert (cfg.steps, cfg.lam, cfg.seed, cfg.batch_size) == (9, 0.5, 0, field_default("batch_size"))


def test_json_recipe_and_registered_model_names_stay_names(tmp_path: Path):
    recipe = _write(tmp_path / "r.json", json.dumps({"model": "tiny-mci-mct", "data": "shards", "output": "runs/x"}))
    cfg = TrainConfig.from_recipe(recipe)
    assert cfg.model == "tiny-mci-mct"
    assert cfg.data == str((tmp_path / "shards").resolve()) and cfg.output == str((tmp_path / "runs" / "x").resolve())


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: 10\nbatch_sise: 4\n", "'batch_sise'"),
        ("steps: ten\n", "steps: must be int"),
        ("steps: 1.5\n", "steps: must be int"),
        ("pretrained_towers: 1\n", "pretrained_towers: must be bool"),
        ("lam: true\n", "lam: must be float"),
        ("lr: fast\n", "lr: must be float"),
        ("teachers: a\n", "teachers: must be list[str]"),
        ("steps: null\n", "steps: must be int, got null"),
        ("betas: [0.9]\n", "betas: must be tuple[float, float]"),
        ("- steps\n", "a recipe is a mapping"),
        ("steps: [1\n", "cannot parse recipe"),
        ("extends: 3\n", "extends: must be a recipe path"),
    ],
)
def test_bad_recipe_is_one_error_naming_file_and_key(tmp_path: Path, text: str, message: str):
    recipe = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(TrainConfigError, match=re.escape(message)) as info:
        load_recipe(recipe)
    assert str(recipe) in str(info.value) and "\n" not in str(info.value)


def test_recipe_errors_in_a_parent_name_the_parent(tmp_path: Path):
    _write(tmp_path / "base.yaml", "lr: fast\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\n")
    with pytest.raises(TrainConfigError, match=r"base\.yaml: lr: must be float"):
        load_recipe(child)
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(TrainConfigError, match="loops back"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(TrainConfigError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(TrainConfigError, match=r"\.yaml, \.yml or \.json"):
        load_recipe(_write(tmp_path / "r.toml", "steps = 1\n"))


def test_missing_required_fields_name_the_option(tmp_path: Path):
    with pytest.raises(TrainConfigError, match="--data: required"):
        build_config(_write(tmp_path / "r.yaml", "model: m\n"), {"output": "o"})
    with pytest.raises(TrainConfigError, match="--model: required"):
        build_config(None, {"data": "d", "output": "o"})


def test_assignments_are_yaml_values_checked_against_the_fields():
    assert parse_assignments(["steps=300", "synthetic=false", "betas=[0.9, 0.99]", "device=cuda:1", "ema_decay="]) == {
        "steps": 300, "synthetic": False, "betas": (0.9, 0.99), "device": "cuda:1", "ema_decay": None}
    with pytest.raises(TrainConfigError, match="--set: unknown key 'stepz'"):
        parse_assignments(["stepz=3"])
    with pytest.raises(TrainConfigError, match="--set: 'steps': expected KEY=VALUE"):
        parse_assignments(["steps"])


def test_every_field_has_a_supported_type_and_help():
    for name, f in FIELDS.items():
        field_type(name)  # raises on an annotation recipes and the CLI cannot check
        assert f.metadata.get("help"), f"TrainConfig.{name} has no help text"


# --- rsclip train: options generated from the fields -----------------------------------------------------------

_EXPECTED_CLICK = {"int": click.types.IntParamType, "float": click.types.FloatParamType, "str": click.types.StringParamType,
                   "list[str]": click.types.StringParamType, "tuple[float, float]": click.types.FloatParamType}


def test_cli_options_match_the_fields_names_types_defaults_and_help():
    params = {p.name: p for p in train_cmd.train.params}
    for f in dataclasses.fields(TrainConfig):
        if f.name in train_cmd.COMBINED_FIELDS:
            continue
        option = params.get(f.name)
        assert option is not None, f"rsclip train has no option for TrainConfig.{f.name}"
        base, _ = field_type(f.name)
        assert option.default in (None, ()), f"--{f.name}: a CLI default would override the recipe"
        if base == "bool":
            assert option.is_flag and option.secondary_opts, f.name
        elif "choices" in f.metadata:
            assert list(option.type.choices) == list(f.metadata["choices"]), f.name
        else:
            assert isinstance(option.type, _EXPECTED_CLICK[base]), f"--{f.name}: {option.type} is not {base}"
        assert option.multiple == (base == "list[str]") and option.nargs == (2 if base.startswith("tuple") else 1)
        assert f.metadata["help"] in option.help
        default = field_default(f.name)
        if default not in (None, []):
            assert f"[default: {train_cmd._default_text(default)}]" in option.help, f.name
    assert "teacher_scales" in params  # --teacher-logit-scale [NAME=]VALUE sets both combined fields


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """``rsclip train`` with the trainer replaced by a recorder of the config it would run."""
    from rsclip_core.train import trainer

    seen: list[TrainConfig] = []

    def fake_train(config, resume=False, progress=True):
        seen.append(config)
        return trainer.TrainResult(Path(config.output), 0, None, None, Path("log"), 0.0, 0.0)

    monkeypatch.setattr(trainer, "train", fake_train)
    return seen


def test_cli_without_options_gives_the_field_defaults(captured: list[TrainConfig]):
    result = CliRunner().invoke(train_cmd.train, ["--data", "d", "--model", "m", "-o", "o", "-q"])
    assert result.exit_code == 0, result.output
    assert captured == [TrainConfig(data="d", model="m", output="o").resolved()]


def test_cli_recipe_with_overrides(tmp_path: Path, captured: list[TrainConfig]):
    recipe = _write(tmp_path / "r.yaml", "model: tiny-mci-mct\nsteps: 40\nlr: 0.002\nqueue_size: 8\nsynthetic: false\n")
    args = ["--recipe", str(recipe), "--data", "d", "-o", "o", "--steps", "12", "--synthetic", "--teacher", "a",
            "--teacher", "b", "--teacher-logit-scale", "30", "--teacher-logit-scale", "b=7", "--betas", "0.8", "0.9",
            "--no-pretrained-towers", "--workers", "3", "--grad-clip", "0"]
    result = CliRunner().invoke(train_cmd.train, args)
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    assert (cfg.steps, cfg.lr, cfg.queue_size, cfg.synthetic) == (12, 0.002, 8, True)  # recipe kept, options win
    assert cfg.teachers == ["a", "b"] and cfg.teacher_logit_scale == 30.0 and cfg.teacher_logit_scales == {"b": 7.0}
    assert cfg.betas == (0.8, 0.9) and cfg.pretrained_towers is False and cfg.num_workers == 3 and cfg.grad_clip is None


def test_cli_bad_recipe_and_bad_values_are_one_line_errors(tmp_path: Path, captured: list[TrainConfig]):
    recipe = _write(tmp_path / "r.yaml", "model: m\nwarmup: 3\n")
    result = CliRunner().invoke(train_cmd.train, ["--recipe", str(recipe), "--data", "d", "-o", "o"])
    assert result.exit_code == 1 and "unknown key 'warmup'" in result.output and str(recipe) in result.output
    result = CliRunner().invoke(train_cmd.train, ["--data", "d", "--model", "m", "-o", "o", "--lam", "2"])
    assert result.exit_code == 1 and "--lam: must lie in [0, 1]" in result.output
    result = CliRunner().invoke(train_cmd.train, ["--model", "m", "-o", "o"])
    assert result.exit_code == 1 and "--data: required" in result.output
    assert captured == []


# --- the ablation's recipes ---------------------------------------------------------------------------------------


def _load_ablation():
    path = REPO / "training" / "ablation" / "run_ablation.py"
    module_spec = importlib.util.spec_from_file_location("ablation_script", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


def test_ablation_variants_come_from_recipes(tmp_path: Path):
    ablation = _load_ablation()
    args = ablation.parse_args(["--data", "shards", "--work-dir", str(tmp_path)])
    configs = {name: ablation.variant_config(args, name) for name in ablation.VARIANTS}
    objective = {n: (c.mode, c.lam, c.synthetic, c.teacher_logit_scale) for n, c in configs.items()}
    assert objective == {
        "clip": ("clip", 0.0, False, None),
        "kd1": ("reinforced", 1.0, True, None),
        "kd07": ("reinforced", 0.7, True, None),
        "kd1-nosyn": ("reinforced", 1.0, False, None),
        "kd1-tau100": ("reinforced", 1.0, True, 100.0),
    }
    student = str(REPO / "training" / "ablation" / "student.json")
    for name, cfg in configs.items():  # everything but the objective is shared (the run of 2026-11-22's settings)
        assert (cfg.model, cfg.image_size, cfg.steps, cfg.batch_size, cfg.lr, cfg.warmup_steps, cfg.seed,
                cfg.num_workers, cfg.checkpoint_every) == (student, 96, 300, 32, 5e-4, 30, 0, 1, 30)
        assert cfg.output == str(tmp_path / "ablation" / name) and cfg.data == "shards"
    online = ablation.variant_config(args, ablation.ONLINE_RECIPE)
    assert (online.mode, online.steps, online.warmup_steps, online.checkpoint_every) == ("online", 20, 4, 10)
    args = ablation.parse_args(["--data", "shards", "--work-dir", str(tmp_path), "--set", "steps=40", "--set", "lr=1e-3"])
    assert (ablation.variant_config(args, "kd07").steps, ablation.variant_config(args, "kd07").lr) == (40, 1e-3)


def test_ablation_rejects_unknown_set_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ablation = _load_ablation()
    assert ablation.main(["--data", str(tmp_path), "--work-dir", str(tmp_path), "--set", "stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stepz" in err and "--set" in err


def test_ablation_work_dir_defaults_to_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RSCLIP_WORK_DIR", str(tmp_path))
    assert _load_ablation().parse_args(["--data", "x"]).work == tmp_path / "ablation"


def test_yaml_exponent_without_dot_reads_as_float(tmp_path: Path):
    assert load_recipe(_write(tmp_path / "r.yaml", "lr: 1e-3\nmin_lr_ratio: '.5'\n")) == {"lr": 1e-3, "min_lr_ratio": 0.5}


def test_teacher_mix_defaults_to_per_teacher_kl_and_rejects_unknown_values():
    cfg = TrainConfig(data="d", model="m", output="o").resolved()
    assert cfg.teacher_mix == "kl"
    assert TrainConfig(data="d", model="m", output="o", teacher_mix="probs").resolved().teacher_mix == "probs"
    with pytest.raises(TrainConfigError, match="--teacher-mix"):
        TrainConfig(data="d", model="m", output="o", teacher_mix="mean").resolved()
