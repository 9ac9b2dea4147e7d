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
from importlib import metadata
from pathlib import Path

__all__ = ["environment", "code_commit", "library_versions", "cpu_description", "file_digest", "record", "write_record", "record_path"]

#: The distributions whose versions move the outputs (installed names, as pip knows them).
DISTRIBUTIONS = (
    "torch", "numpy", "opencv-contrib-python-headless", "opencv-python-headless", "opencv-python", "scipy", "numba", "diffusers", "transformers",
    "safetensors", "accelerate", "pillow",
)


@lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    """The installed versions, read once a process (they do not change while it runs)."""
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
def cpu_description() -> dict[str, object]:
    """The CPU's model name, its vector extensions that change the arithmetic (AVX2, AVX-512,
    AMX, ...) and how many cores this process may use."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # (not on every platform)
        cores = os.cpu_count()
    return {"name": name or platform.processor() or platform.machine(), "extensions": [f for f in wanted if f in flags], "cores": cores}


@lru_cache(maxsize=1)
def code_commit() -> dict[str, object] | None:
    """{"commit": the git commit the package's code is at, "dirty": whether it has uncommitted
    changes} where it runs from a git checkout (an editable install), else None (an installed
    wheel: its version says what it is)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def environment() -> dict[str, object]:
    """Everything above in one dict: {"versions", "cpu", "code"} (JSON-ready)."""
    return {"versions": library_versions(), "cpu": dict(cpu_description()), "code": code_commit()}


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file's bytes (None where it cannot be read): which input a result was made from."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def record(command: str, inputs: dict[str, object], settings: dict[str, object], result: dict[str, object]) -> dict[str, object]:
    """A result's record: the command, its input files (each {"path": absolute, "sha256"}; a list
    for several references, None where not given), the settings it ran with, what it gave and the
    :func:`environment`."""

    def one(p):
        if p is None:
            return None
        if isinstance(p, (list, tuple)):
            return [one(x) for x in p]
        return {"path": str(Path(p).resolve()), "sha256": file_digest(p)}

    return {
        "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "inputs": {k: one(v) for k, v in inputs.items()}, "settings": settings, "result": result, **environment(),
    }


def _plain(v):
    """JSON-safe: NumPy scalars and arrays as Python values, non-finite floats as None, paths as
    strings, anything else by its repr."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # (a NumPy scalar or array, a tensor)
        v = v.tolist()
        return _plain(v) if isinstance(v, (list, dict)) else v if not isinstance(v, float) or math.isfinite(v) else None
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


def write_record(path: str | os.PathLike, rec: dict[str, object]) -> None:
    """Write a record as strict JSON, atomically (a temporary file renamed into place)."""
    from .io import write_atomic

    write_atomic(path, json.dumps(_plain(rec), indent=2, allow_nan=False) + "\n")
