"""What a result was made with (provenance.environment), saved next to every result."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from refine_by_align.provenance import code_commit, cpu_description, environment, library_versions


def test_environment_names_the_libraries_that_move_the_outputs():
    v = library_versions()
    assert {"refine_by_align", "python", "torch", "numpy", "scipy", "diffusers", "transformers"} <= set(v)
    assert any(k.startswith("opencv") for k in v)  # (OpenCV's arithmetic moves single cases by dB)
    import torch

    assert v["torch"] == torch.__version__
    cpu = cpu_description()
    assert cpu["name"] and cpu["cores"] >= 1 and isinstance(cpu["extensions"], list)
    json.dumps(environment())  # (JSON-ready)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_code_commit_is_the_checkout_the_package_runs_from():
    src = Path(__import__("refine_by_align").__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert code_commit() is None  # (an installed wheel: no checkout)
    else:
        got = code_commit()
        assert got["commit"] == head.stdout.strip() and isinstance(got["dirty"], bool)
