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


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_package_in_an_ignored_folder_of_another_repository_has_no_commit(tmp_path):
    """A wheel installed into a venv inside the user's own repository recorded that repository's
    commit as the code's."""
    from refine_by_align.provenance import _commit_of

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    ignored, tracked = tmp_path / ".venv" / "pkg", tmp_path / "src" / "pkg"
    for d in (ignored, tracked):
        d.mkdir(parents=True)
        (d / "__init__.py").write_text("")
    git("add", ".gitignore", "src")
    git("commit", "-q", "-m", "x")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert _commit_of(ignored) is None
    assert dict(_commit_of(tracked)) == {"commit": head, "dirty": False}


def test_the_environment_is_a_copy(monkeypatch):
    """environment() is cached inside: a caller changing its answer does not change the next one."""
    first = environment()
    first["cpu"]["extensions"].append("made-up")
    first["versions"]["torch"] = "0"
    again = environment()
    assert "made-up" not in again["cpu"]["extensions"] and again["versions"]["torch"] != "0"
