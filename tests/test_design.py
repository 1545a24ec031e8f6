"""docs/design.md's import-rules table is the rule: every import under rsclip_core/ and qgis_plugin/ obeys it.

The table is parsed from the doc (not copied here), so the doc and the code cannot drift apart. Each
module's imports are read with ``ast`` (module level and inside functions; ``if TYPE_CHECKING:``
blocks are not imports at run time).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
PACKAGES = ("rsclip_core", "qgis_plugin")
#: never imported by a torch-free row, not even inside a function
HEAVY = {"torch", "torchvision", "timm", "open_clip", "transformers", "sentence_transformers", "coremltools"}

pytestmark = pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names (3.10+)")


@dataclass(frozen=True)
class Rule:
    module: str  # fully qualified: rsclip_core.inference, qgis_plugin
    torch_free: bool
    internal_top: tuple[str, ...]  # rsclip_core modules (short names, "*" = any)
    internal_lazy: tuple[str, ...]
    external_top: tuple[str, ...]  # third-party top-level names
    external_lazy: tuple[str, ...]


@dataclass(frozen=True)
class Import:
    names: tuple[str, ...]  # candidates: ("a.b",) for import a.b; ("a.b", "a.b.c") for from a.b import c
    lazy: bool
    line: int


def _is_internal(name: str) -> bool:
    path = ROOT / "rsclip_core" / Path(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def parse_rules(text: str) -> list[Rule]:
    """The rows of the first table under ``## Import rules``."""
    section = text.split("## Import rules", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    if not rows:
        raise ValueError(f"{DESIGN}: no import-rules table under '## Import rules'")
    rules = []
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 4:
            raise ValueError(f"{DESIGN}: import-rules row needs 4 cells: {row}")
        module = re.findall(r"`([^`]+)`", cells[0])[0]
        top, lazy = (re.findall(r"`([^`]+)`", c) for c in cells[2:])
        rules.append(Rule(
            module=module,
            torch_free="torch-free" in cells[0],
            internal_top=tuple(n for n in top if n == "*" or _is_internal(n)),
            internal_lazy=tuple(n for n in lazy if n == "*" or _is_internal(n)),
            external_top=tuple(n for n in top if n != "*" and not _is_internal(n)),
            external_lazy=tuple(n for n in lazy if n != "*" and not _is_internal(n)),
        ))
    return rules


def rule_for(module: str, rules: list[Rule]) -> Rule | None:
    """The most specific row naming ``module`` or a package above it (the root row only itself)."""
    matches = [r for r in rules if module == r.module or (r.module != "rsclip_core" and module.startswith(r.module + "."))]
    return max(matches, key=lambda r: len(r.module)) if matches else None


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def find_imports(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every run-time import of ``module``'s source, lazy when inside a function."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, lazy)
                continue
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import((a.name,), lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module != "__future__":
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1])
                    name = f"{base}.{child.module}" if child.module else base
                else:
                    name = child.module or ""
                for alias in child.names:
                    found.append(Import((name, f"{name}.{alias.name}"), lazy, child.lineno))
            visit(child, child_lazy)

    visit(ast.parse(source), False)
    return found


def _allowed_internal(name: str, allowed: tuple[str, ...]) -> bool:
    return any(a == "*" or name == f"rsclip_core.{a}" or name.startswith(f"rsclip_core.{a}.") for a in allowed)


def check_module(source: str, module: str, rules: list[Rule], is_package: bool = False) -> list[str]:
    """The import-rule violations of one module's source (empty when it obeys the table)."""
    rule = rule_for(module, rules)
    if rule is None:
        return [f"{module}: no row in the import-rules table of {DESIGN.name}"]
    problems = []
    for imp in find_imports(source, module, is_package):
        first = imp.names[0]
        top = first.split(".")[0]
        where = f"{module}:{imp.line}: {'lazy ' if imp.lazy else ''}import of {imp.names[-1] if len(imp.names) > 1 else first}"
        if top in sys.stdlib_module_names:
            continue
        if any(n == rule.module or n.startswith(rule.module + ".") for n in imp.names):
            continue  # its own package
        if top == "rsclip_core":
            allowed = rule.internal_top + (rule.internal_lazy if imp.lazy else ())
            if not any(_allowed_internal(n, allowed) for n in imp.names):
                problems.append(f"{where} is not allowed for {rule.module}")
            continue
        allowed = rule.external_top + (rule.external_lazy if imp.lazy else ())
        if rule.torch_free and top in HEAVY:
            problems.append(f"{where}: {rule.module} is torch-free")
        elif top not in allowed:
            lazily = " (listed only for imports inside functions)" if top in rule.external_lazy else ""
            problems.append(f"{where} is not allowed for {rule.module}{lazily}")
    return problems


def _modules() -> list[tuple[str, Path, bool]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out.append((".".join(parts[:-1] if is_package else parts), path, is_package))
    return out


RULES = parse_rules(DESIGN.read_text()) if DESIGN.is_file() else []


def test_table_parses_and_names_existing_modules():
    assert len(RULES) >= 10
    for rule in RULES:
        head, _, rest = rule.module.partition(".")
        assert head in PACKAGES, rule.module
        if rest:
            assert _is_internal(rest), f"{DESIGN.name}: row {rule.module} names no module"
    for rule in RULES:
        for name in rule.external_top + rule.external_lazy:
            assert "." not in name and not _is_internal(name), f"{rule.module}: {name!r} is neither module nor package"


def test_torch_free_rows_list_no_heavy_package_and_only_torch_free_modules():
    for rule in (r for r in RULES if r.torch_free):
        heavy = HEAVY & set(rule.external_top + rule.external_lazy)
        assert not heavy, f"{rule.module} is marked torch-free but lists {sorted(heavy)}"
        for dep in rule.internal_top + rule.internal_lazy:
            assert dep != "*", f"{rule.module} is torch-free but may import any module"
            dep_rule = rule_for(f"rsclip_core.{dep}", RULES)
            assert dep_rule is not None and dep_rule.torch_free, (
                f"{rule.module} is torch-free but may import {dep}, which is not")


@pytest.mark.parametrize("module,path,is_package", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_module_obeys_import_rules(module: str, path: Path, is_package: bool):
    problems = check_module(path.read_text(encoding="utf-8"), module, RULES, is_package)
    assert not problems, "\n".join(problems)


def test_the_torch_free_modules_of_the_issue_are_marked_torch_free():
    for module in ("rsclip_core.inference.model", "rsclip_core.spec", "rsclip_core.preprocess", "rsclip_core.prompts",
                   "rsclip_core.resources", "rsclip_core.workdir", "rsclip_core.data.readers", "qgis_plugin.dock"):
        rule = rule_for(module, RULES)
        assert rule is not None and rule.torch_free, module


# -- the checker itself catches violations (synthetic sources) --

def test_checker_flags_lazy_torch_in_a_torch_free_module():
    source = "def embed():\n    import torch\n    return torch.zeros(1)\n"
    problems = check_module(source, "rsclip_core.inference.fake", RULES)
    assert len(problems) == 1 and "torch-free" in problems[0] and ":2:" in problems[0]


def test_checker_flags_module_level_import_listed_only_lazily():
    problems = check_module("from PIL import Image\n", "rsclip_core.preprocess", RULES)
    assert len(problems) == 1 and "inside functions" in problems[0]
    assert check_module("def f():\n    from PIL import Image\n", "rsclip_core.preprocess", RULES) == []


def test_checker_flags_internal_import_outside_the_row():
    problems = check_module("from rsclip_core.models import create_model\n", "rsclip_core.inference.fake", RULES)
    assert len(problems) == 1 and "rsclip_core.models" in problems[0]
    assert check_module("from rsclip_core import models\n", "rsclip_core.spec", RULES)  # `from pkg import mod` too
    # own package, stdlib, listed names and TYPE_CHECKING blocks pass
    ok = ("import os\nfrom typing import TYPE_CHECKING\nfrom rsclip_core.inference.errors import RsclipInputError\n"
          "from .tiling import TileGrid\nfrom rsclip_core import spec\nimport numpy as np\n"
          "if TYPE_CHECKING:\n    import torch\n")
    assert check_module(ok, "rsclip_core.inference.fake", RULES) == []


def test_checker_needs_a_row_for_every_module():
    assert check_module("", "rsclip_core.brand_new", RULES) == [
        f"rsclip_core.brand_new: no row in the import-rules table of {DESIGN.name}"]


def test_parse_rules_reads_a_table_from_text():
    text = ("## Import rules\n| module | holds | at module level | also inside functions |\n|---|---|---|---|\n"
            "| `rsclip_core.spec` **torch-free** | x | `preprocess`, `numpy` | `PIL` |\n\n## Next\n")
    (rule,) = parse_rules(text)
    assert rule == Rule("rsclip_core.spec", True, ("preprocess",), (), ("numpy",), ("PIL",))


def _light_at_import(module: str) -> bool:
    """Whether ``module``'s row, and the rows of the modules it imports at module level, list no heavy package there."""
    rule = rule_for(module, RULES)
    if rule is None or HEAVY & set(rule.external_top):
        return False
    for dep in rule.internal_top:
        dep_rule = None if dep == "*" else rule_for(f"rsclip_core.{dep}", RULES)
        if dep_rule is None or HEAVY & set(dep_rule.external_top):
            return False
    return True


def test_modules_light_at_import_by_the_table_load_no_heavy_package():
    """The *at module level* column, run: importing those modules (and so their packages' ``__init__``)
    in a fresh interpreter loads none of the heavy packages."""
    light = [m for m, _, _ in _modules() if m.startswith("rsclip_core") and _light_at_import(m)]
    assert {"rsclip_core.teachers.base", "rsclip_core.inference.model", "rsclip_core.cli.main"} <= set(light)
    code = ("import importlib, sys\n"
            f"for name in {light!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing {light} loaded {out.stdout.strip()}"
