"""Inference errors name a field; ``rsclip-map`` words it with its flags, the QGIS plugin with its labels."""

from __future__ import annotations

import ast
import pickle
import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from rsclip_core.cli.map import CLI_FLAGS, cli, cli_message
from rsclip_core.inference import (
    FIELDS,
    OutputExistsError,
    RsclipFileNotFoundError,
    RsclipInputError,
    RsclipWarning,
    TilingConfig,
    describe_error,
    load_classes,
)
from rsclip_core.inference.toy_model import write_color_raster, write_toy_model
from rsclip_core.inference.writers import check_output
from qgis_plugin.wording import DOCK_LABELS, PROCESSING_LABELS, dock_message, processing_message


@pytest.mark.parametrize("labels", [CLI_FLAGS, DOCK_LABELS, PROCESSING_LABELS], ids=["cli", "dock", "processing"])
def test_every_field_has_a_label(labels):
    assert set(labels) == set(FIELDS)


def test_bad_bands_worded_per_front_end():
    with pytest.raises(RsclipInputError) as bad:
        TilingConfig(bands=(1, 2)).validate()
    exc = bad.value
    assert exc.field == "bands" and "--" not in str(exc)
    assert str(exc).startswith("bands: give 3 band numbers")
    assert cli_message(exc).startswith("--bands: give 3 band numbers")
    assert dock_message(exc).startswith("Bands (R, G, B): give 3 band numbers")
    assert processing_message(exc).startswith("BANDS: give 3 band numbers")


def test_existing_output_mentions_overwrite_in_each_wording(tmp_path):
    out = tmp_path / "lc.tif"
    out.write_bytes(b"x")
    with pytest.raises(OutputExistsError) as exists:
        check_output(out, False, "confidence")
    exc = exists.value
    assert str(exc) == f"confidence: {out}: exists (use overwrite to replace it)"
    assert cli_message(exc) == f"--confidence: {out}: exists (use --overwrite to replace it)"
    assert processing_message(exc) == f"CONFIDENCE: {out}: exists (use overwrite to replace it)"


def test_missing_class_file_and_plain_errors(tmp_path):
    with pytest.raises(RsclipFileNotFoundError) as missing:
        load_classes(tmp_path / "nope.yaml")
    assert cli_message(missing.value).startswith("--classes: ")
    assert processing_message(missing.value).startswith("CLASSES: ")
    assert dock_message(missing.value).startswith("Classes: ")
    plain = ValueError("something {bands} else\nsecond line")
    assert describe_error(plain, CLI_FLAGS) == "something {bands} else"  # only our errors are re-worded


def test_field_survives_pickling_and_unknown_fields_are_refused():
    exc = pickle.loads(pickle.dumps(RsclipFileNotFoundError("x.tif: no such file", field="extent")))
    assert isinstance(exc, FileNotFoundError) and exc.field == "extent"
    assert cli_message(exc) == "--extent: x.tif: no such file"
    with pytest.raises(ValueError, match="unknown error field"):
        RsclipInputError("x", field="--bands")


def test_warnings_carry_a_field_too():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(RsclipWarning("v.gpkg: no CRS, assuming the raster's", field="extent"), stacklevel=1)
    assert cli_message(caught[0].message) == "--extent: v.gpkg: no CRS, assuming the raster's"


def test_cli_error_line_uses_the_flag(tmp_path):
    model = write_toy_model(tmp_path / "model")
    raster = write_color_raster(tmp_path / "in.tif", 64, 64)
    result = CliRunner().invoke(cli, ["classify", str(raster), "-m", str(model), "--bands", "5,6,7",
                                      "-o", str(tmp_path / "lc.tif")], catch_exceptions=False)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1, result.output
    assert errors[0].startswith("Error: --bands: asked for 5,6,7 but ") and "has only 3 band(s)" in errors[0]


def test_no_inference_error_names_a_cli_flag():
    """Errors and warnings raised in rsclip_core.inference say ``bands``, never ``--bands``."""
    flag = re.compile(r"(?<![\w-])--[a-z]")
    offenders = []
    for path in sorted((Path(__file__).resolve().parents[1] / "rsclip_core" / "inference").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            is_warn = isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "warn"
            if not isinstance(node, ast.Raise) and not is_warn:
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and flag.search(sub.value):
                    offenders.append(f"{path.name}:{sub.lineno}: {sub.value!r}")
    assert not offenders, "use field=... and {field} mentions instead of flags:\n" + "\n".join(offenders)
