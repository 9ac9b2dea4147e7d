"""Fixtures of the data tests: the shared photo folder (the tiny synthetic multi-view folder is in tests/conftest.py)."""

from pathlib import Path

import pytest

# relative to the repository root: ../shared/data/dreambooth-train
DREAMBOOTH = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dreambooth-train").resolve()


@pytest.fixture(scope="session")
def dreambooth_root() -> Path:
    if not DREAMBOOTH.is_dir():
        pytest.skip(f"shared photo folder {DREAMBOOTH} (../shared/data/dreambooth-train) is absent")
    return DREAMBOOTH
