"""One way to load a pipeline by name, for every entry point (command line, server, evaluation,
speed tooling): a model that cannot be loaded is one :class:`~refine_by_align.io.InputError` (a
``ValueError``) whose single line names the model and where it was looked for."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .io import InputError

if TYPE_CHECKING:  # the pipeline imports torch and diffusers: loaded only when a model is
    import torch

    from .pipelines.pipeline import RefineByAlignPipeline

__all__ = ["load_pipeline", "check_model_name", "model_folder"]


def load_pipeline(
    name_or_dir: str | os.PathLike = "default",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> RefineByAlignPipeline:
    """``default`` (the shipped model), a preset name (``tiny``, ``paper``: random weights, flagged
    by ``pipe.random_weights``), a folder written by ``save_pretrained``, a training run folder or
    one of its checkpoints (:func:`model_folder`: which one a run folder gives is said in a note on
    stderr). ``device``: None picks the GPU where one is visible, else the CPU; ``dtype`` (e.g.
    ``torch.bfloat16``) casts the weights. Raises InputError: ``model 'NAME': ...`` with the
    folder it looked in."""
    import torch

    from .config import CONFIG_NAMES
    from .pipelines.pipeline import RefineByAlignPipeline, default_model_dir

    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype {dtype!r}: give a floating-point torch dtype such as torch.float32 or torch.bfloat16")
    name = str(name_or_dir)
    check_model_name(name)
    where = (default_model_dir() if name == "default" else None) if name in CONFIG_NAMES else Path(os.path.abspath(name))
    folder, kind, note = (None, "preset", "") if name in CONFIG_NAMES else model_folder(name)
    if note:
        print(note, file=sys.stderr)
    try:
        if kind == "checkpoint":
            return _checkpoint_pipeline(folder, device, dtype)
        return RefineByAlignPipeline.from_pretrained(name if folder is None else folder, torch_dtype=dtype, device="auto" if device is None else device)
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
    model_folder(name)


def model_folder(name: str | os.PathLike) -> tuple[Path, str, str]:
    """(the folder to load, its kind: "model" or "checkpoint", a one-line note or "") for an
    existing folder given as a model, which may be:

    - a model folder (``config.json`` + .safetensors weights: ``save_pretrained``'s, a training
      run's ``weights/``): itself, a "model";
    - a training checkpoint (``checkpoints/step_N``: ``model_config.json`` + ``model.safetensors``,
      the training weights of that step, not the EMA ones): itself, a "checkpoint";
    - a training run folder (``train --output``): its ``weights/`` (the EMA weights exported at its
      last stop), or its latest checkpoint where it has no weights yet; the note says which (and
      where a later checkpoint than the weights is there).

    A folder that is none of these is one InputError that says what was looked for. Reads only the
    file system (no torch)."""
    name = str(name)
    where = Path(os.path.abspath(name))
    if (where / "config.json").is_file():
        return where, "model", ""
    if _is_checkpoint(where):
        return where, "checkpoint", ""
    ckpts = sorted(c for c in (where / "checkpoints").glob("step_*") if _is_checkpoint(c)) if (where / "checkpoints").is_dir() else []
    if (where / "weights" / "config.json").is_file():
        last = f"; its latest checkpoint, {ckpts[-1].name}, is later: give that folder to load it" if ckpts and _step(ckpts[-1]) > _trained_steps(where / "weights") else ""
        return where / "weights", "model", f"note: model '{name}': a training run folder: loading its weights/ (the exported weights{_at(where / 'weights')}){last}"
    if ckpts:
        return ckpts[-1], "checkpoint", f"note: model '{name}': a training run folder without weights/ yet: loading its latest checkpoint, {ckpts[-1].name} (the training weights, not the EMA ones)"
    raise InputError(
        f"model '{name}' (looked in '{where}'): not a model folder: no config.json (a saved model), no model_config.json and "
        "model.safetensors (a training checkpoint), no weights/config.json or checkpoints/step_* (a training run folder)"
    )


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "model_config.json").is_file() and (folder / "model.safetensors").is_file()


def _json_int(path: Path, key: str) -> int:
    """``path``'s JSON object's integer ``key`` (a checkpoint's step, exported weights' trained
    steps), -1 where the file or the key is missing or unreadable."""
    try:
        return int(json.loads(path.read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _step(checkpoint: Path) -> int:
    return _json_int(checkpoint / "state.json", "step")


def _trained_steps(weights: Path) -> int:
    return _json_int(weights / "train_config.json", "trained_steps")


def _at(weights: Path) -> str:
    n = _trained_steps(weights)
    return f" at step {n}" if n >= 0 else ""


def _checkpoint_pipeline(folder: Path, device, dtype) -> RefineByAlignPipeline:
    """A pipeline on a training checkpoint's weights (``model.safetensors``, as accelerate saved the
    model) and ``model_config.json``; safetensors only (the checkpoint's optimiser, EMA and RNG
    pickles are never read). ValueError where they do not fit."""
    import torch

    from .config import ModelConfig
    from .models.refiner import RefineByAlignModel, _read_safetensors
    from .pipelines.pipeline import RefineByAlignPipeline

    try:
        cfg = ModelConfig.from_dict(json.loads((folder / "model_config.json").read_text()))
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:  # (ValueErrors name the field already)
        raise ValueError(f"checkpoint '{folder}': model_config.json does not describe a model ({e})") from None
    with torch.device("meta"):  # no random init of what the file replaces
        model = RefineByAlignModel(spec=cfg.to_dict())
    model.take_weights(_read_safetensors(folder / "model.safetensors"), f"checkpoint '{folder}'", "model_config.json")
    return RefineByAlignPipeline.from_model(model, str(folder), dtype, "auto" if device is None else device)
