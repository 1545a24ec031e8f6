"""Shared fixtures: where the real data lives and how to skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_data_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set RSCLIP_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_path()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A fresh toy model directory (``rsclip_core.inference.toy_model``) for each test module."""
    from rsclip_core.inference.toy_model import write_toy_model

    return write_toy_model(tmp_path_factory.mktemp("toy") / "model")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: threading only adds noise on a shared CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
