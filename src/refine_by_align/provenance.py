"""What a result was made with: library versions, the CPU, the code's commit.

Saved next to every result and checkpoint (``bench-quality``'s, ``grid-search``'s and
``bench-suite``'s config, a training run's ``train_config.json``, ``refine``'s and ``align``'s
sidecar): the outputs move by up to several dB on single cases with the library versions and the
CPU's arithmetic (README, "Results"), so a figure without them cannot be compared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import time
from functools import lru_cache
from pathlib import Path

__all__ = ["environment", "code_commit", "library_versions", "cpu_description", "file_digest", "record", "write_record", "record_path", "plain", "check_record_path", "RECORD_COMMANDS"]

#: The distributions whose versions move the outputs (installed names, as pip knows them).
DISTRIBUTIONS = (
    "torch", "numpy", "opencv-contrib-python-headless", "opencv-python-headless", "opencv-python", "scipy", "numba", "diffusers", "transformers",
    "safetensors", "accelerate", "pillow",
)


@lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    """The installed versions, read once a process (they do not change while it runs)."""
    from importlib import metadata  # (here: it imports the email package, which no command line refusal needs)

    from . import __version__

    out = [("refine_by_align", __version__), ("python", platform.python_version())]
    for name in DISTRIBUTIONS:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(out)


def library_versions() -> dict[str, str]:
    """{distribution: version} of refine-by-align, Python and :data:`DISTRIBUTIONS` that are
    installed (read from their metadata: nothing is imported)."""
    return dict(_versions())


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, list[str]]:
    """(the CPU's model name, its instruction-set flags) from /proc/cpuinfo's first processor; ""
    and no flags where there is none (another platform)."""
    name, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def cpu_description() -> dict[str, object]:
    """The CPU's model name, its vector extensions that change the arithmetic (AVX2, AVX-512,
    AMX, ...) and how many cores this process may use."""
    name, flags = cpu_info()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # (not on every platform)
        cores = os.cpu_count()
    return {"name": name or platform.processor() or platform.machine(), "extensions": [f for f in wanted if f in flags], "cores": cores}


def code_commit() -> dict[str, object] | None:
    """{"commit": the git commit the package's code is at, "dirty": whether it has uncommitted
    changes} where it runs from a git checkout of its own (an editable install), else None (an
    installed wheel, even inside a venv in the user's own repository: its version says what it is).
    Asked of git once a process."""
    found = _commit_of(Path(__file__).resolve().parent)
    return None if found is None else dict(found)


@lru_cache(maxsize=4)
def _commit_of(here: Path) -> tuple[tuple[str, object], ...] | None:
    """:func:`code_commit` for the package folder ``here``: a commit only where git tracks the
    package's own files there (a copy in an ignored or untracked folder of another repository is
    not that repository's code)."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None

    tracked = git("ls-files", "--error-unmatch", "--", "__init__.py")
    if tracked is None or tracked.returncode != 0:
        return None
    commit = git("rev-parse", "HEAD")
    if commit is None or commit.returncode != 0:
        return None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return (("commit", commit.stdout.strip()), ("dirty", dirty))


def environment() -> dict[str, object]:
    """Everything above in one dict: {"versions", "cpu", "code"} (JSON-ready)."""
    cpu = cpu_description()
    return {"versions": library_versions(), "cpu": {**cpu, "extensions": list(cpu["extensions"])}, "code": code_commit()}


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file's bytes (None where it cannot be read): which input a result was made from."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def record(
    command: str, inputs: dict[str, object], settings: dict[str, object], result: dict[str, object], outputs: dict[str, object] | None = None
) -> dict[str, object]:
    """A result's record: the command, its input files and the ``outputs`` it wrote (each
    {"path": absolute, "sha256"}; a list for several references, None where not given), the
    settings it ran with, what it gave and the :func:`environment`."""

    def one(p):
        if p is None:
            return None
        if isinstance(p, (list, tuple)):
            return [one(x) for x in p]
        return {"path": str(Path(p).resolve()), "sha256": file_digest(p)}

    return {
        "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "inputs": {k: one(v) for k, v in inputs.items()}, "outputs": {k: one(v) for k, v in (outputs or {}).items()},
        "settings": settings, "result": result, **environment(),
    }


def plain(v):
    """JSON-safe: NumPy scalars and arrays as Python values, non-finite floats as None, paths as
    strings, anything else by its repr."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # (a NumPy scalar or array, a tensor)
        v = v.tolist()
        return plain(v) if isinstance(v, (list, dict)) else v if not isinstance(v, float) or math.isfinite(v) else None
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, os.PathLike):
        return str(v)
    return repr(v)


def record_path(output: str | os.PathLike) -> Path:
    """Where the record of a result written to ``output`` goes: beside it, ``NAME.json`` for
    ``NAME.png`` (as the compare picture is ``NAME.compare.png``)."""
    out = Path(output)
    return out.with_name(out.stem + ".json")


#: The commands whose records :func:`check_record_path` lets a new record replace.
RECORD_COMMANDS = ("refine", "align")


def check_record_path(path: str | os.PathLike) -> None:
    """Before any work: a record may replace only an earlier record (a JSON object whose
    ``command`` is one of :data:`RECORD_COMMANDS`), not another file of that name (an annotation
    beside the picture, say); InputError where it would."""
    from .io import InputError

    p = Path(path)
    if not p.exists():
        return
    if p.is_dir():
        raise InputError(f"the record '{p}' this result would be saved with is a folder: give the output another name")
    try:
        prev = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        prev = None
    if not (isinstance(prev, dict) and prev.get("command") in RECORD_COMMANDS):
        raise InputError(
            f"'{p}' exists and is not a refine-by-align record: this result's record would replace it; "
            "move it, or give the output another name"
        )


def write_record(path: str | os.PathLike, rec: dict[str, object]) -> None:
    """Write a record as strict JSON, atomically (a temporary file renamed into place)."""
    from .io import write_atomic

    write_atomic(path, json.dumps(plain(rec), indent=2, allow_nan=False) + "\n")
