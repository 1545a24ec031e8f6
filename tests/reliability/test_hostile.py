"""The hostile cases of issue #13 as one parametrized suite (definitions: ``hostile_cases.py``)."""

from __future__ import annotations

import pytest

from hostile_cases import CASES, Env, can_mount, run_case

MOUNT_OK = can_mount()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env.create(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES],
)
def test_hostile_case(case, env, tmp_path):
    if case.needs_mount and not MOUNT_OK:
        pytest.skip("needs bind/tmpfs mounts (root in a sandbox that allows mount); root ignores chmod")
    outcome = run_case(case, tmp_path / "case", env)
    assert outcome.handled, outcome.detail
    assert outcome.intact, outcome.detail
    assert outcome.clean, outcome.detail
