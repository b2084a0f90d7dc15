"""Shared test setup: fixed seeds and threads, fixture paths that fail loudly when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_path(*parts: str) -> Path:
    """Path under tests/fixtures; a missing fixture fails the test (never skips)."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"missing test fixture {path} (copy it from ../shared/fixtures; see tests/fixtures/PROVENANCE.md)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    yield
