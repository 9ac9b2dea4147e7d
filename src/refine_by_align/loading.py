"""One way to load a pipeline by name, for every entry point (command line, server, evaluation,
speed tooling): a model that cannot be loaded is one :class:`~refine_by_align.io.InputError` (a
``ValueError``) whose single line names the model and where it was looked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .io import InputError

if TYPE_CHECKING:  # the pipeline imports torch and diffusers: loaded only when a model is
    import torch

    from .pipelines.pipeline import RefineByAlignPipeline

__all__ = ["load_pipeline", "check_model_name"]


def load_pipeline(
    name_or_dir: str | os.PathLike = "default",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> RefineByAlignPipeline:
    """``default`` (the shipped model), a preset name (``tiny``, ``paper``: random weights, flagged
    by ``pipe.random_weights``) or a folder written by ``save_pretrained``. ``device``: None picks
    the GPU where one is visible, else the CPU; ``dtype`` (e.g. ``torch.bfloat16``) casts the
    weights. Raises InputError: ``model 'NAME': ...`` with the folder it looked in."""
    import torch

    from .config import CONFIG_NAMES
    from .pipelines.pipeline import RefineByAlignPipeline, default_model_dir

    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype {dtype!r}: give a floating-point torch dtype such as torch.float32 or torch.bfloat16")
    name = str(name_or_dir)
    check_model_name(name)
    where = (default_model_dir() if name == "default" else None) if name in CONFIG_NAMES else Path(os.path.abspath(name))
    try:
        return RefineByAlignPipeline.from_pretrained(name, torch_dtype=dtype, device="auto" if device is None else device)
    except (ValueError, OSError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__  # one line
        place = f" (looked in '{where}')" if where is not None else ""
        raise InputError(f"model '{name}'{place}: {reason}") from None


def check_model_name(name: str | os.PathLike) -> None:
    """One InputError where ``name`` is neither a preset nor an existing folder: what
    :func:`load_pipeline` says first, checked without importing torch (the command line says it
    before its heavy imports)."""
    from .config import CONFIG_NAMES

    name = str(name)
    if name in CONFIG_NAMES:
        return
    where = Path(os.path.abspath(name))
    if not where.exists():
        raise InputError(f"model '{name}': not a preset ({', '.join(CONFIG_NAMES)}) and no model folder at '{where}'")
    if not where.is_dir():
        raise InputError(f"model '{name}': a file, not a model folder (a folder holding config.json and .safetensors weights) or a preset ({', '.join(CONFIG_NAMES)})")
