"""The training loop (Sec. 3.4, A.3): both modes mixed in one run, Eq. 2 plus attention supervision.

Read top to bottom: config -> setup (accelerate, model, optimiser, data) -> resume -> loop
(batch, noise, forward with attention recording, losses, step, EMA, log, evaluate, checkpoint).
Runs the same on one CPU, one GPU, or several processes (``accelerate launch``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..config import ModelConfig, get_config
from ..data.readers import resolve_data_root
from ..fill import CLASSICAL_FILLS
from ..io import InputError, write_atomic
from ..locks import hold_lock
from ..models.attention import layer_level, recording
from ..models.refiner import RefineByAlignModel
from .losses import attention_supervision_loss, diffusion_target, masked_noise_loss, on_object, token_targets

__all__ = ["TrainConfig", "load_train_config", "check_train_config", "train", "Interrupted", "latest_checkpoint", "export_weights", "RECIPES_DIR"]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``RUN_DIR/train_config.json`` and next to every checkpoint."""

    model: str = "default"  # model preset (tiny | default | paper) ...
    model_overrides: dict = field(default_factory=dict)  # ... with these ModelConfig fields replaced
    seed: int = 0  # seeds model init, data order, noise
    batch_size: int = 24  # per process (the global batch is this times the number of processes)
    max_steps: int = 20000  # optimiser steps of the whole run
    lr_unet: float = 5e-4  # paper: 1e-5 at batch 192 on a pretrained SD U-Net; from scratch needs more
    lr_projector: float = 1e-3  # paper: 4e-5 for the MLP between DINOv2 and the U-Net
    lr_encoder: float = 5e-4  # only used when the encoder is trainable (no pretrained weights)
    weight_decay: float = 0.01  # AdamW
    warmup_steps: int = 200  # linear warm-up, then lr_schedule
    lr_schedule: str = "constant"  # "constant" | "cosine" (decays to 0 at max_steps: anneals a last stage)
    grad_clip: float = 1.0  # max gradient norm
    cond_drop: float = 0.1  # image-embedding drop rate for classifier-free guidance (A.3)
    hole_weight: float = 10.0  # weight of hole pixels in Eq. 2 (the reference must matter there)
    attn_weight: float = 1.0  # weight of the attention supervision (0 = the paper's plain Eq. 2)
    attn_sigma: float = 0.6  # Gaussian width of the attention target, in tokens
    attn_min_side: int = 16  # supervise cross-attention layers at this resolution or finer
    mode_weights: dict = field(default_factory=lambda: {"alignment": 0.5, "refinement": 0.3, "multiview": 0.2})
    synthetic_weight: float = 0.5  # share of single-image pairs drawn from the procedural generator
    synthetic_pool: int = 4096  # distinct procedural objects (rendered once, cached)
    synthetic_size: int = 128  # side of a rendered procedural object, in pixels
    photo_max_side: int = 192  # photos are downscaled to this longest side (crops at test time come
    # from 512 px photos: a larger crop resolution wants a larger value, at some cost in data speed)
    data_root: str | None = "../shared/data/dreambooth-train"  # multi-view photos (None: synthetic only); a relative
    # path is looked for from the current folder, then the repository root (the run records the folder it used)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate)
    ema_decay: float = 0.999  # 0 disables EMA
    num_workers: int = 1  # data-loading processes
    log_every: int = 20  # steps between JSONL log lines
    eval_every: int = 500  # steps between reference-use / alignment checks
    checkpoint_every: int = 500  # steps between resumable checkpoints
    keep_checkpoints: int = 2  # older checkpoints are deleted
    init_from: str | None = None  # model folder whose weights start the run (a later stage of a split run); a
    # relative path is looked for as data_root is: from the current folder, then the repository root

    def model_config(self) -> ModelConfig:
        cfg = get_config(self.model)
        return ModelConfig.from_dict({**cfg.to_dict(), **self.model_overrides}) if self.model_overrides else cfg


def load_train_config(name_or_path: str) -> TrainConfig:
    """A recipe name (``tiny``, ``default``: JSON files shipped in training/recipes) or a JSON path;
    its values checked (``check_train_config``): a recipe that cannot be run is one InputError
    naming the file and the field, before anything is written anywhere."""
    path = Path(name_or_path)
    if not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.json"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
        raise InputError(f"no training config '{name_or_path}' (a JSON file, or one of: {names})")
    return _config_from_file(path)


# What a run's saved train_config.json records beside the recipe's fields (_run_record): facts of the
# run, not settings, so a saved config read back as a recipe leaves them out.
RUN_RECORD_KEYS = (
    "data_root_resolved", "init_from_resolved", "processes", "batch_size_is", "global_batch_size", "gradient_accumulation_steps",
    "device", "gpu", "invocation", "environment", "earlier_invocations",
)
#: Of the run record, what each invocation of a resumed run keeps in ``earlier_invocations``.
INVOCATION_KEYS = ("invocation", "processes", "global_batch_size", "device", "gpu", "environment")


def _config_from_file(path: Path) -> TrainConfig:
    """The TrainConfig a JSON file holds (a recipe, or a run's saved train_config.json: its
    RUN_RECORD_KEYS left out), checked."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the training config: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a training config is a JSON object of fields, got a {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    data = {k: v for k, v in data.items() if k not in RUN_RECORD_KEYS}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"{path}: unknown training config fields {sorted(unknown)}")
    tc = TrainConfig(**data)
    check_train_config(tc, str(path))
    return tc


MAX_TRAIN_SEED = 2**32 - 1  # accelerate's set_seed seeds NumPy's global generator, which takes 0..2^32-1
MIXED_PRECISIONS = ("no", "fp16", "bf16")  # what the loop runs (accelerate's autocast); "fp8" is not supported
LR_SCHEDULES = ("constant", "cosine")
MODES = ("alignment", "refinement", "multiview")

# (field, low, high) of the integer fields: an int (not a bool) in [low, high] (None: no upper bound)
_INT_FIELDS = (
    ("seed", 0, MAX_TRAIN_SEED),
    ("batch_size", 1, None),
    ("max_steps", 1, None),
    ("warmup_steps", 0, None),
    ("attn_min_side", 1, None),
    ("synthetic_pool", 1, None),
    ("synthetic_size", 16, None),  # the procedural renderer needs at least 16 px
    ("photo_max_side", 16, None),
    ("num_workers", 0, None),
    ("log_every", 1, None),
    ("eval_every", 0, None),  # 0: no evaluation
    ("checkpoint_every", 1, None),
    ("keep_checkpoints", 1, None),
)
# (field, low, high, high included) of the real fields: a finite int or float (not a bool)
_REAL_FIELDS = (
    ("lr_unet", 0.0, None, True),  # 0 freezes a part (a run that only exports its init weights)
    ("lr_projector", 0.0, None, True),
    ("lr_encoder", 0.0, None, True),
    ("weight_decay", 0.0, None, True),
    ("grad_clip", 0.0, None, True),  # 0: no clipping
    ("cond_drop", 0.0, 1.0, True),  # a probability
    ("hole_weight", 0.0, None, True),
    ("attn_weight", 0.0, None, True),  # 0: the paper's plain Eq. 2
    ("synthetic_weight", 0.0, 1.0, True),  # a share
    ("ema_decay", 0.0, 1.0, False),  # 0 disables EMA; 1 would never move the EMA weights
)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cross_attention_levels(mcfg: ModelConfig) -> list[int]:
    """The resolution levels (halvings) at which the configured U-Net has cross-attention (as
    models.attention.layer_level counts them)."""
    u = mcfg.unet
    n = len(u.block_out_channels)
    levels = [i for i, t in enumerate(u.down_block_types) if "CrossAttn" in t]
    levels += [n - 1 - i for i, t in enumerate(u.up_block_types) if "CrossAttn" in t]
    if u.mid_block_type and "CrossAttn" in u.mid_block_type:
        levels.append(n - 1)
    return levels


def check_train_config(tc: TrainConfig, source: str = "training config") -> None:
    """Refuse a recipe whose values the loop cannot run with, as one InputError (a ValueError)
    naming ``source`` (the recipe file), the field, its allowed range and the value found."""

    def bad(name: str, want: str) -> InputError:
        return InputError(f"{source}: {name} must be {want}, got {getattr(tc, name)!r}")

    for name, low, high in _INT_FIELDS:
        v = getattr(tc, name)
        if not _is_int(v) or v < low or (high is not None and v > high):
            top = "2^32-1" if high == MAX_TRAIN_SEED else high
            raise bad(name, f"an integer in {low}..{top}" if high is not None else f"an integer >= {low}")
    for name, low, high, closed in _REAL_FIELDS:
        v = getattr(tc, name)
        if not _is_real(v) or v < low or (high is not None and (v > high if closed else v >= high)):
            if high is None:
                want = f"a finite number >= {low:g}"
            else:
                want = f"a number in [{low:g}, {high:g}{']' if closed else ')'}"
            raise bad(name, want)
    if not _is_real(tc.attn_sigma) or tc.attn_sigma <= 0:
        raise bad("attn_sigma", "a finite number > 0 (tokens)")
    if tc.mixed_precision not in MIXED_PRECISIONS:
        raise bad("mixed_precision", f"one of {', '.join(MIXED_PRECISIONS)}")
    if tc.lr_schedule not in LR_SCHEDULES:
        raise bad("lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
    for name in ("data_root", "init_from"):
        if getattr(tc, name) is not None and not (isinstance(getattr(tc, name), str) and getattr(tc, name)):
            raise bad(name, "a path (a non-empty string) or null")
    if not isinstance(tc.model, str):
        raise bad("model", "a model preset name (a string)")
    if not isinstance(tc.model_overrides, dict):
        raise bad("model_overrides", "an object of model config fields")
    mw = tc.mode_weights
    if not isinstance(mw, dict) or not mw or set(mw) - set(MODES) or not all(_is_real(w) and w >= 0 for w in mw.values()):
        raise bad("mode_weights", f"an object of weights >= 0 for {', '.join(MODES)}")
    if not any(w > 0 for w in mw.values()):
        raise bad("mode_weights", "an object with a positive weight")
    try:
        mcfg = tc.model_config()
    except (ValueError, TypeError) as e:
        raise InputError(f"{source}: model '{tc.model}'{' with its model_overrides' if tc.model_overrides else ''}: {e}") from None
    if tc.attn_weight > 0:
        levels = _cross_attention_levels(mcfg)
        side = (mcfg.resolution // mcfg.latent_downsample) // (2 ** min(levels)) if levels else 0
        if tc.attn_min_side > side:
            raise bad("attn_min_side", f"at most {side} (the widest cross-attention map of this model: a larger value supervises "
                                       "no layer; attn_weight 0 turns the supervision off)")


def init_weights(model: RefineByAlignModel, folder: str | Path) -> None:
    """Copy the weights of a saved model folder (safetensors only) into ``model``; every tensor
    must match by name and shape (the configs may differ only in sampling fields such as
    ``prediction_type``, which is how a split run changes parameterisation). One exception: a
    model with the warp's trust channel (``warp_channel``) starts from one without it, its U-Net's
    first convolution widened with zero weights for the new channel (denoiser.widen_conv_in), so
    that it starts out computing what the saved model computes."""
    from ..models.denoiser import widen_conv_in

    loaded = RefineByAlignModel.load(folder)
    want = model.unet.conv_in.in_channels
    if loaded.unet.conv_in.in_channels < want and model.cfg.warp_channel and not loaded.cfg.warp_channel:
        widen_conv_in(loaded.unet, want)
    src = loaded.state_dict()
    dst = model.state_dict()
    missing = sorted(set(dst) - set(src))
    unexpected = sorted(set(src) - set(dst))
    wrong = sorted(k for k in set(src) & set(dst) if src[k].shape != dst[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"init_from '{folder}' does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatches {wrong[:3]}"
        )
    model.load_state_dict(src)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    ckpts = [c for c in ckpts if (c / "state.json").exists()]
    return ckpts[-1] if ckpts else None


class _StepSampler(torch.utils.data.Sampler):
    """Deterministic sample indices that resume mid-run: step k of process r reads indices
    [(k * world + r) * B, ... + B). The dataset draws each sample from (seed, index)."""

    def __init__(self, start_step: int, batch_size: int, rank: int, world: int, total_steps: int):
        self.start, self.b, self.rank, self.world, self.total = start_step, batch_size, rank, world, total_steps

    def __iter__(self):
        for k in range(self.start, self.total):
            base = (k * self.world + self.rank) * self.b
            yield from range(base, base + self.b)

    def __len__(self):
        return max(0, self.total - self.start) * self.b


def build_dataset(tc: TrainConfig, mcfg: ModelConfig, seed_offset: int = 0):
    """Synthetic objects (+ the multi-view photos when ``tc.data_root`` exists, validation subjects
    excluded), both modes mixed by ``tc.mode_weights``; sample i is a pure function of (seed, i)."""
    from ..data.pairs import PairConfig, PairDataset
    from ..data.readers import MultiViewFolder
    from ..data.synthetic import SyntheticSource

    sources, weights = [SyntheticSource(size=tc.synthetic_size, pool_size=tc.synthetic_pool, seed=tc.seed + seed_offset)], [1.0]
    mode_weights = dict(tc.mode_weights)
    root = resolve_data_root(tc.data_root) if tc.data_root else None  # (a recipe's relative path: from the repository root too)
    if root is not None and root.is_dir():
        sources.append(MultiViewFolder(root, max_side=tc.photo_max_side))
        weights = [tc.synthetic_weight, 1.0 - tc.synthetic_weight]
    else:
        if root is not None:
            print(f"note: no multi-view photos at '{root}': training on synthetic objects only")
        mode_weights.pop("multiview", None)
    pair_cfg = PairConfig(
        size=mcfg.resolution, ref_size=mcfg.encoder_image_size, grow=mcfg.zoom_grow, min_size=mcfg.zoom_min_size,
        warp_prefill=mcfg.hole_fill == "warp",  # pairs carry the (imperfect) warped reference and its trust map
        prefill=mcfg.hole_fill if mcfg.hole_fill in CLASSICAL_FILLS else None,  # filled in the workers, not the step
    )
    return PairDataset(
        sources,
        mode_weights=mode_weights,
        size=mcfg.resolution,
        ref_size=mcfg.encoder_image_size,
        seed=tc.seed + seed_offset,
        length=2**62,
        cfg=pair_cfg,
        source_weights=weights,
    )


def _worker_init(_: int) -> None:
    # (cv2.setNumThreads here deadlocks in a forked worker once the parent has used OpenCV)
    torch.set_num_threads(1)
    # a terminal's Ctrl-C reaches the workers too: the main process stops the loop at the end of
    # the step (_StopOnInterrupt) and then ends them; a worker that died of it would fail that step
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def supervised_layers(model: RefineByAlignModel, min_side: int) -> list[str]:
    """Cross-attention layers whose query map is at least ``min_side`` wide (at the model's crop)."""
    side0 = model.cfg.resolution // model.cfg.latent_downsample
    n_levels = len(model.cfg.unet.block_out_channels)
    return [name for name in model.cross_attention_layers if side0 // (2 ** layer_level(name, n_levels)) >= min_side]


@torch.no_grad()
def evaluate(model: RefineByAlignModel, batch: dict, noise_scheduler, layer: str, grid: int, sigma: float) -> dict:
    """The reference-use gate and an alignment check on a fixed batch.

    - ``hole_mse_right`` / ``hole_mse_shuffled``: Eq. 2 error inside the hole at t = 500 with the
      right reference vs the references of other samples (the right one must win clearly);
    - ``align_top1``: share of hole query pixels whose most-attended token lies within one token
      of the true one, at the alignment layer, t = 0 (the true token's target: a Gaussian of
      ``sigma`` tokens, the recipe's ``attn_sigma``, as in the training loss)."""
    model.eval()
    dev = next(model.parameters()).device
    warp, trust, prefill = (batch[k].to(dev) if k in batch else None for k in ("warp", "trust", "prefill"))  # as the pairs carry them
    x0, _, masked, mask = model.inpainting_inputs(batch["image"].to(dev), batch["mask"].to(dev), warp=warp, trust=trust, prefill=prefill)  # one autoencoder pass
    g = torch.Generator("cpu").manual_seed(1234)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    t = torch.full((x0.shape[0],), 500, dtype=torch.long, device=dev)
    zt = noise_scheduler.add_noise(x0, noise, t)
    ref = batch["reference"].to(dev)
    res = {}
    target = diffusion_target(noise_scheduler, x0, noise, t)
    for name, r in (("right", ref), ("shuffled", ref.roll(1, dims=0))):
        pred = model(zt, t, masked, mask, reference=r)
        err = (pred - target).pow(2).mean(dim=1, keepdim=True)
        res[f"hole_mse_{name}"] = float((err * mask).sum() / mask.sum().clamp_min(1))
    t0 = torch.zeros_like(t)
    with recording(model.unet, [layer]) as store:  # the training loop's recording is back on leaving
        model(x0, t0, masked, mask, reference=ref)
    probs = store[layer]  # (B, Q, T)
    side = int(round(probs.shape[1] ** 0.5))
    target, valid = token_targets(on_object(batch["ref_coords"].to(dev), ref), side, grid, sigma)
    hole = torch.nn.functional.interpolate(batch["mask"].to(dev), size=(side, side), mode="area").reshape(probs.shape[0], -1) > 0.5
    sel = valid & hole
    if sel.any():
        pi, ti = probs.argmax(-1), target.argmax(-1)
        dx = (pi % grid - ti % grid).abs()
        dy = (pi // grid - ti // grid).abs()
        res["align_top1"] = float(((dx <= 1) & (dy <= 1))[sel].float().mean())
    model.train()
    return res


def _atomic_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def _precision_for_device(tc: TrainConfig) -> tuple[TrainConfig, str]:
    """``tc`` with bf16 mixed precision turned off where it would run emulated (the CPU, no CUDA
    GPU, without AMX or AVX-512 BF16: a step of the default recipe took 47-48 s against 5.9 s in
    fp32 on a 2-core AVX2 host), and the note that says so ("" where nothing changed). The run's
    saved train_config.json records the precision it ran with."""
    if tc.mixed_precision != "bf16" or torch.cuda.is_available():
        return tc, ""
    from ..perf.ceiling import native_bf16

    if native_bf16("cpu"):
        return tc, ""
    return dataclasses.replace(tc, mixed_precision="no"), (
        "note: mixed_precision 'bf16' on a CPU without native bf16 (no AMX or AVX-512 BF16) runs emulated, "
        "about 8x slower: training in fp32 (set \"mixed_precision\": \"no\" in the recipe to say so)"
    )


RUN_PARTS = ("checkpoints", "log.jsonl", "weights")  # what a started run leaves in its folder


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a run folder that is a file, or (without ``resume``) one that already holds a run:
    training into it would replace its weights, append to its log and leave its checkpoints for a
    later ``--resume`` to pick up. An empty (or unrelated) existing folder is fine."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--output '{run_dir}' is a file, not a run folder")
    held = [name for name in RUN_PARTS if (run_dir / name).exists()] if not resume else []
    if held:
        raise InputError(
            f"--output '{run_dir}' already holds a run ({', '.join(held)}): pass --resume to continue it, or choose another folder"
        )


LOCK_FILE = ".train.lock"  # in the run folder: held while a run trains there (_RunLock)


class _RunLock:
    """An exclusive advisory lock on a run folder (:func:`~..locks.hold_lock` on its LOCK_FILE, not waiting), held
    by the main process from before the run's first write until it stops: a second ``train`` on the
    folder (a ``--resume`` while the run goes on) is refused in one line instead of interleaving its
    log and checkpoints with the first's. Closing the file releases the lock (a killed process
    releases it too). Where fcntl is missing: trust the user."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.file = run_dir, None

    def take(self, accelerator: Accelerator) -> None:
        """Take it where the folder exists (a no-op once held); in a multi-process run the main
        process takes it and every process refuses together."""
        busy = 0.0
        if accelerator.is_main_process and self.file is None and self.run_dir.is_dir():
            self.file = hold_lock(self.run_dir / LOCK_FILE)  # (None: another process holds it)
            busy = 0.0 if self.file is not None else 1.0
        if accelerator.num_processes > 1:
            busy = float(accelerator.reduce(torch.tensor(busy, device=accelerator.device), reduction="max"))
        if busy:
            raise InputError(
                f"--output '{self.run_dir}': another training process is writing to this run folder right now "
                f"(it holds {LOCK_FILE} there): wait for it to stop, or choose another folder"
            )

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at the end of a step, with a checkpoint of that step (``checkpoint``)
    and the exported weights: ``--resume`` continues from there (the command exits 130)."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}: checkpoint written to {checkpoint}; resume with --resume")
        self.step, self.checkpoint = step, checkpoint


class _StopOnInterrupt:
    """While the loop runs, Ctrl-C (SIGINT) asks it to stop at the end of the current step as a time
    limit does (log line, checkpoint, exported weights; no evaluation), then raise Interrupted. A
    second Ctrl-C stops a single process at once (KeyboardInterrupt: the last checkpoint stands); a
    multi-process run ignores it, as the launcher passes a terminal's Ctrl-C on to its processes a
    second time (and kills them 30 s later if they have not stopped). Signal handlers can be set
    only in the main thread: elsewhere Ctrl-C is left as it is."""

    def __init__(self, accelerator: Accelerator):
        self.main, self.single = accelerator.is_main_process, accelerator.num_processes == 1
        self.requested, self.installed, self.previous = False, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous, self.installed = signal.signal(signal.SIGINT, self._handle), True
        return self

    def __exit__(self, *exc) -> bool:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL)
        return False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.single:
                raise KeyboardInterrupt
            return
        self.requested = True
        if self.main:
            again = " (Ctrl-C again: at once, without one)" if self.single else ""
            print(f"interrupt: stopping at the end of this step, with a checkpoint{again}", file=sys.stderr, flush=True)


def _find_folder(path: str | Path) -> Path | None:
    """The folder a recipe or an option names, absolute: a relative path from the current folder,
    then from the repository root (data.readers.resolve_data_root); None where neither holds it."""
    p = resolve_data_root(path)
    return Path(os.path.abspath(p)) if p.is_dir() else None


def _looked(path: str | Path) -> str:
    return "" if Path(path).expanduser().is_absolute() else " (looked from the current folder and the repository root)"


def _check_same_photos(saved: dict, photos: Path | None, data_root: str | None, given: bool, run_dir: Path) -> str:
    """Whether a resumed run reads the photos it read before (``data_root_resolved`` in its saved
    train_config.json): "" where it does; a note where it was saved before that was recorded, or
    where ``--data-root`` was given (a change asked for); else an InputError that says what differs
    and how to go on (a relative data_root resolved from another current folder names other photos,
    or none)."""
    now = f"the photos in '{photos}'" if photos else "synthetic objects only"
    if "data_root_resolved" not in saved:
        return f"note: the run's train_config.json does not record which photos it trained on (saved before data_root_resolved was): resuming with {now}"
    before = saved["data_root_resolved"]
    if before == (str(photos) if photos else None):
        return ""
    was = f"the photos in '{before}'" if before else "synthetic objects only"
    if given:
        return f"note: --data-root: the run trained on {was} until now; it goes on with {now}"
    if before is None:
        fix = "pass --data-root none to go on with synthetic objects only"
    elif Path(before).is_dir():
        fix = f"pass --data-root '{before}' to go on with those photos"
    else:
        fix = f"'{before}' is gone: pass --data-root with where those photos are now"
    found = f"it would now read {now}" if photos else f"data_root '{data_root}' names no photos from here{_looked(data_root)}" if data_root else "it would now read no photos"
    raise InputError(f"--resume: the run in '{run_dir}' trained on {was} (data_root_resolved in its train_config.json), but {found}: {fix}")


def _init_folder(init_from: str, source: str) -> Path:
    """The model folder ``init_from`` names, absolute (looked for as data_root is); an InputError
    naming the field and ``source`` where there is none."""
    found = _find_folder(init_from)
    if found is None:
        raise InputError(f"init_from in {source}: model folder '{init_from}' does not exist{_looked(init_from)}")
    return found


def _check_resumable(ckpt: Path, processes: int, run_dir: Path) -> str | None:
    """``--resume`` from checkpoint ``ckpt`` with ``processes`` processes: refused in one line
    (InputError) where the run that wrote it had another number of processes: the samples each
    step reads (:class:`_StepSampler`) and the learning-rate schedule's position (stepped once per
    process) follow that number, so the run would go on as another run. A note (returned) names
    the libraries whose versions differ from those it was written with: the run goes on, its later
    steps no longer bit for bit an uninterrupted run's. None: nothing to say (the same
    versions, or a checkpoint written before its record was kept)."""
    from ..provenance import library_versions

    try:
        rec = json.loads((ckpt / "train_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    was = rec.get("processes")
    if _is_int(was) and was != processes:
        on = f"{was} process" + ("" if was == 1 else "es")
        raise InputError(
            f"--resume: the checkpoint {ckpt.name} of '{run_dir}' was written by a run on {on} and this one has {processes}; "
            f"the samples each step reads and the learning-rate schedule follow the process count: resume it on {on} "
            f"(accelerate launch --num_processes {was} ...), or start a new run from its weights (init_from '{run_dir / 'weights'}')"
        )
    env = rec.get("environment")
    saved = env.get("versions") if isinstance(env, dict) else None
    if not isinstance(saved, dict):
        return None
    now = library_versions()
    changed = [f"{k} {v} -> {now.get(k, 'not installed')}" for k, v in sorted(saved.items()) if now.get(k) != v]
    if not changed:
        return None
    return f"note: --resume: other library versions than checkpoint {ckpt.name} was written with ({', '.join(changed)}): the steps from here may differ from an uninterrupted run's"


def _end_reason(step: int, run_max_steps: int, max_steps: int | None) -> str:
    """Why a run that reached its stop step stopped: the recipe's end, or --max-steps."""
    if step >= run_max_steps:
        return f"the recipe's last step (max_steps {run_max_steps}) reached"
    return f"--max-steps {max_steps} reached"


def _run_record(accelerator: Accelerator, tc: TrainConfig, photos: Path | None, init_from: Path | None, invocation: dict) -> dict:
    """What the run's saved configs record beside the recipe (RUN_RECORD_KEYS): the photo folder
    and init_from as found (absolute; data_root_resolved null: synthetic objects only), the processes
    and the batch (``batch_size`` is per process: each process reads its own batch_size samples a
    step), the device, this invocation's options and the environment (library versions, CPU, commit)."""
    from ..provenance import environment

    dev = accelerator.device
    return {
        "data_root_resolved": str(photos) if photos else None,
        "init_from_resolved": str(init_from) if init_from else None,
        "processes": accelerator.num_processes,
        "batch_size_is": "per process",
        "global_batch_size": tc.batch_size * accelerator.num_processes * accelerator.gradient_accumulation_steps,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "invocation": invocation,
        "environment": environment(),
    }


def train(
    tc: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    time_limit: float | None = None,
    data_root: str | Path | None = None,
    recipe: str | None = None,
) -> dict:
    """Train (or resume) a run in ``run_dir`` (a folder that already holds a run only with
    ``resume``). ``max_steps`` (>= 1) stops this invocation early at that global step (the run's
    schedule still follows ``tc.max_steps``, and the run still ends there: a larger value says so
    in a note and stops at ``tc.max_steps``). ``time_limit`` (seconds from
    the start of this call) stops it at the first step past that time, with a checkpoint and the
    exported weights, as at ``max_steps`` (for a lease of fixed length; ``--resume`` continues;
    0 stops after the first step). ``data_root`` (``--data-root``) replaces the config's photo
    folder (it must exist; ``"none"``: synthetic objects only). ``recipe`` names the config in
    messages. The run folder is locked while the run goes on; Ctrl-C stops it at the end of the
    step, with a checkpoint, and raises :class:`Interrupted`.
    Returns the last log record, with ``stopped``: why the run stopped."""
    lock = _RunLock(Path(run_dir))
    try:
        return _train(tc, Path(run_dir), resume, max_steps, progress, time_limit, data_root, recipe, lock)
    finally:
        lock.release()


def _train(tc, run_dir: Path, resume, max_steps, progress, time_limit, data_root, recipe, lock: _RunLock) -> dict:
    """The run itself (train holds the run folder's lock around it)."""
    t_start = time.perf_counter()
    # 1. Setup: the run's config (a resumed run's own), checked before anything is written; the
    # photos and init_from as found from here; accelerate, the run folder's lock, seeds. (The
    # config files are written once the model and data are set up.)
    check_run_dir(run_dir, resume)
    if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
        raise InputError(f"--max-steps must be an integer >= 1, got {max_steps!r}")
    notes, saved_record = [], None
    named = f"recipe '{recipe}'" if recipe else "the training config"  # (in messages)
    if resume and (run_dir / "train_config.json").exists():
        saved = _config_from_file(run_dir / "train_config.json")
        saved_record = json.loads((run_dir / "train_config.json").read_text())
        named = f"'{run_dir / 'train_config.json'}'"
        if saved != tc:
            notes.append("note: --resume uses the run's saved train_config.json")
            tc = saved
    else:
        check_train_config(tc)
    if data_root is not None:  # --data-root: the recipe's replaced ("none": no photos)
        if not str(data_root):
            raise InputError("--data-root: give a folder of multi-view photos, or none (synthetic objects only)")
        tc = dataclasses.replace(tc, data_root=None if str(data_root) == "none" else str(data_root))
        if tc.data_root is not None and _find_folder(tc.data_root) is None:
            raise InputError(f"--data-root '{data_root}': no folder there{_looked(data_root)}")
    photos = _find_folder(tc.data_root) if tc.data_root else None  # absolute; None: synthetic objects only
    if tc.data_root and photos is None:
        notes.append(f"note: no multi-view photos at '{tc.data_root}'{_looked(tc.data_root)}: training on synthetic objects only")
    if saved_record is not None:
        note = _check_same_photos(saved_record, photos, tc.data_root, data_root is not None, run_dir)
        notes += [note] if note else []
    if max_steps is not None and max_steps > tc.max_steps:
        notes.append(
            f"note: --max-steps {max_steps} is past the run's max_steps {tc.max_steps}, where its schedule ends: "
            f"stopping at step {tc.max_steps} (--max-steps only stops a run early; to train longer, raise max_steps in the recipe)"
        )
    resume_ckpt = latest_checkpoint(run_dir) if resume else None
    init_from = _init_folder(tc.init_from, named) if tc.init_from and not resume_ckpt else None
    tc, why = _precision_for_device(tc)
    notes += [why] if why else []
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=not torch.cuda.is_available())
    lock.take(accelerator)  # (a new folder: once it is made, below)
    if resume_ckpt is not None:
        note = _check_resumable(resume_ckpt, accelerator.num_processes, run_dir)
        notes += [note] if note else []
    for note in notes:
        accelerator.print(note)
    set_seed(tc.seed)
    mcfg = tc.model_config()
    invocation = {"--max-steps": max_steps, "--time-limit": time_limit, "--resume": resume, "--data-root": None if data_root is None else str(data_root)}
    run_record = _run_record(accelerator, tc, photos, init_from, invocation)
    if saved_record is not None and "invocation" in saved_record:  # (a resumed run keeps what its earlier invocations ran on)
        earlier = saved_record.get("earlier_invocations") or []
        run_record["earlier_invocations"] = [*earlier, {k: saved_record.get(k) for k in INVOCATION_KEYS}]

    # 2. Model, noise schedule, optimiser with separate learning rates, LR schedule, EMA.
    model = RefineByAlignModel.from_model_config(mcfg)
    for part, source in (("U-Net", mcfg.unet_pretrained), ("autoencoder", mcfg.vae_pretrained if model.vae is not None else None), ("reference encoder", mcfg.encoder.pretrained)):
        if source:
            accelerator.print(f"{part}: pretrained weights from {source}")
    if init_from is not None:
        try:
            init_weights(model, init_from)
        except ValueError as e:
            raise InputError(f"init_from in {named}: {e}") from None
        accelerator.print(f"initialised the weights from {init_from}")
    model.train()
    noise_scheduler = DDPMScheduler(**mcfg.noise_schedule())
    enc = model.reference_encoder
    groups = [
        {"params": list(model.unet.parameters()), "lr": tc.lr_unet},
        {"params": list(enc.projector.parameters()) + [enc.null_tokens], "lr": tc.lr_projector},
    ]
    vit_params = [p for p in enc.vit.parameters() if p.requires_grad]
    if vit_params:
        groups.append({"params": vit_params, "lr": tc.lr_encoder})
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    # the prepared scheduler steps once per process each step, hence the factor
    n_proc = accelerator.num_processes
    lr_scheduler = get_scheduler(
        "constant_with_warmup" if tc.lr_schedule == "constant" else "cosine",
        optimizer,
        num_warmup_steps=tc.warmup_steps * n_proc,
        num_training_steps=tc.max_steps * n_proc,
    )
    ema = EMAModel(model.parameters(), decay=tc.ema_decay) if tc.ema_decay > 0 else None
    layers = supervised_layers(model, tc.attn_min_side) if tc.attn_weight > 0 else []
    if tc.attn_weight > 0 and not layers:  # (check_train_config reads the same from the config)
        raise InputError(f"attn_min_side {tc.attn_min_side}: no cross-attention layer of this model is that wide (or set attn_weight 0)")

    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # 3. Resume from the last complete checkpoint.
    step = 0
    if resume:
        if resume_ckpt is None:
            accelerator.print(f"no checkpoint in {run_dir}/checkpoints: starting from step 0")
        else:
            accelerator.load_state(str(resume_ckpt))
            step = json.loads((resume_ckpt / "state.json").read_text())["step"]
            accelerator.print(f"resumed from {resume_ckpt} at step {step}")
    if ema is not None:  # its shadow copy was taken (or restored by load_state) on the CPU
        ema.to(accelerator.device)

    # 4. Data: deterministic per (seed, index), so a resumed run sees the same samples; the photos
    # from the folder found above (recorded as data_root_resolved).
    data_tc = dataclasses.replace(tc, data_root=str(photos) if photos else None)
    dataset = build_dataset(data_tc, mcfg)
    stop = min(tc.max_steps, max_steps) if max_steps is not None else tc.max_steps
    sampler = _StepSampler(step, tc.batch_size, accelerator.process_index, accelerator.num_processes, stop)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=tc.batch_size,
        sampler=sampler,
        num_workers=tc.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init,
        # its own generator: creating the iterator must not draw from the (restored) global RNG
        generator=torch.Generator().manual_seed(tc.seed),
    )
    eval_batch = None
    if accelerator.is_main_process and tc.eval_every > 0:
        eval_ds = build_dataset(data_tc, mcfg, seed_offset=10_000)  # fixed, never-trained-on samples
        eval_batch = torch.utils.data.default_collate([eval_ds[i] for i in range(min(32, 4 * tc.batch_size))])

    # The run folder (locked) and its configs, now that the model and the data are set up (a
    # recipe refused above leaves no folder behind).
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    lock.take(accelerator)
    # (the folder checked again under the lock: another new run may have written here since the
    # first check; every process refuses together, as for the lock)
    taken = None
    if not resume and accelerator.is_main_process:
        try:
            check_run_dir(run_dir, resume)
        except InputError as e:
            taken = e
    stale = float(taken is not None)
    if accelerator.num_processes > 1:
        stale = float(accelerator.reduce(torch.tensor(stale, device=accelerator.device), reduction="max"))
    if stale:
        raise taken or InputError(f"--output '{run_dir}': another run wrote to this folder meanwhile; choose another folder")
    if accelerator.is_main_process:
        _atomic_json(run_dir / "train_config.json", {**dataclasses.asdict(tc), **run_record})
        _atomic_json(run_dir / "model_config.json", mcfg.to_dict())
    accelerator.wait_for_everyone()

    log_path = run_dir / "log.jsonl"
    unwrapped: RefineByAlignModel = accelerator.unwrap_model(model)
    grid = mcfg.grid_size
    bar = tqdm(total=stop, initial=step, disable=not (progress and accelerator.is_main_process), desc="train", unit="step")
    # images/s counts the training steps' time only (reading the batch and the step), not the
    # evaluations, checkpoints and log writes between them
    t_mark, train_s, seen, record = time.perf_counter(), 0.0, 0, {}
    sums = {"loss": 0.0, "loss_eps": 0.0, "loss_attn": 0.0, "n": 0}
    why, ckpt = None, resume_ckpt  # why the run stops (set at its last step), its last checkpoint

    # 5. The loop, recording the supervised layers' attention (kept in the autograd graph); Ctrl-C
    # stops it at the end of a step, as a time limit does.
    with recording(unwrapped.unet, layers, keep_grad=True) as store, _StopOnInterrupt(accelerator) as interrupt:
        for batch in loader:
            image = batch["image"].to(accelerator.device)  # (B, 3, S, S) in [0, 1]
            mask = batch["mask"].to(accelerator.device)  # (B, 1, S, S)
            reference = batch["reference"].to(accelerator.device)  # (B, 3, R, R)
            ref_coords = batch["ref_coords"].to(accelerator.device)  # (B, 2, S, S)
            b = image.shape[0]
            with accelerator.accumulate(model), accelerator.autocast():
                with torch.no_grad():  # z_0 (B, C, h, w), masked input, mask at sample resolution: one autoencoder pass
                    warp, trust, prefill = (batch[k].to(accelerator.device) if k in batch else None for k in ("warp", "trust", "prefill"))
                    x0, _, masked, lmask = unwrapped.inpainting_inputs(image, mask, warp=warp, trust=trust, prefill=prefill)
                noise = torch.randn_like(x0)
                t = torch.randint(0, mcfg.num_train_timesteps, (b,), device=x0.device)
                zt = noise_scheduler.add_noise(x0, noise, t)
                drop = torch.rand(b, device=x0.device) < tc.cond_drop
                store.clear()
                pred = model(zt, t, masked, lmask, reference=reference, drop=drop)
                loss_eps = masked_noise_loss(pred, diffusion_target(noise_scheduler, x0, noise, t), lmask, tc.hole_weight)
                loss_attn = torch.zeros((), device=x0.device)
                if layers:
                    use = batch["has_correspondence"].to(x0.device).bool() & ~drop
                    ref_coords = on_object(ref_coords, reference)
                    for name in layers:
                        loss_attn = loss_attn + attention_supervision_loss(store[name], ref_coords, mask, use, grid, tc.attn_sigma)
                    loss_attn = loss_attn / len(layers)
                loss = loss_eps + tc.attn_weight * loss_attn
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}")
            if ema is not None:
                ema.step(unwrapped.parameters())
            step += 1
            seen += b * accelerator.num_processes
            sums["loss"] += float(loss.detach())
            sums["loss_eps"] += float(loss_eps.detach())
            sums["loss_attn"] += float(loss_attn.detach())
            sums["n"] += 1
            bar.update(1)
            late = time_limit is not None and time.perf_counter() - t_start > time_limit
            asked = interrupt.requested
            if accelerator.num_processes > 1:  # every process stops at the same step (a checkpoint waits for all of them)
                flags = accelerator.reduce(torch.tensor([float(late), float(asked)], device=accelerator.device), reduction="max")
                late, asked = bool(flags[0] > 0), bool(flags[1] > 0)
            if asked:
                stop, why = step, "interrupted"
            elif late and step < stop:
                stop, why = step, f"time limit of {time_limit:g} s reached"
            elif step >= stop:
                why = _end_reason(step, tc.max_steps, max_steps)
            train_s += time.perf_counter() - t_mark

            if accelerator.is_main_process and (step % tc.log_every == 0 or step == stop):
                n = max(sums["n"], 1)
                record = {
                    "step": step,
                    "loss": sums["loss"] / n,
                    "loss_eps": sums["loss_eps"] / n,
                    "loss_attn": sums["loss_attn"] / n,
                    "lr_unet": lr_scheduler.get_last_lr()[0],
                    "images_per_s": seen / max(train_s, 1e-9),
                    "time": time.time(),
                    **({"stopped": why} if why else {}),  # the last record of an invocation: why it stopped
                }
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                train_s, seen = 0.0, 0
                sums = {"loss": 0.0, "loss_eps": 0.0, "loss_attn": 0.0, "n": 0}

            if eval_batch is not None and why != "interrupted" and (step % tc.eval_every == 0 or step == stop):
                ev = evaluate(unwrapped, eval_batch, noise_scheduler, unwrapped.alignment_layer_name, grid, tc.attn_sigma)
                ev = {"step": step, "eval": True, **ev}
                with open(log_path, "a") as f:
                    f.write(json.dumps(ev) + "\n")
                bar.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()))

            if step % tc.checkpoint_every == 0 or step == stop:
                ckpt = save_checkpoint(accelerator, run_dir, step, tc, mcfg, run_record)
            if step >= stop:  # at max_steps, or where a time limit or Ctrl-C moved stop: no further batch is read
                break
            t_mark = time.perf_counter()
    bar.close()
    why = why or _end_reason(step, tc.max_steps, max_steps)  # (no step ran: a resumed run at its end already)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_weights(unwrapped, ema, run_dir / "weights", tc, step, run_record)
    accelerator.end_training()
    if why == "interrupted":
        stopped = Interrupted(step, ckpt)
        if accelerator.is_main_process:
            print(stopped, file=sys.stderr, flush=True)
        raise stopped
    accelerator.print(f"stopped at step {step}: {why}; weights in {run_dir / 'weights'}")
    return {"step": step, **record, "stopped": why}


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, tc: TrainConfig, mcfg: ModelConfig, run_record: dict | None = None) -> Path:
    """A complete, resumable checkpoint (model, optimiser, LR schedule, EMA, RNG states, step,
    configs: the train config with ``run_record``, _run_record), written to a temporary folder then
    renamed, so a kill -9 never leaves a half one."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every process has written its RNG state before the rename
    if accelerator.is_main_process:
        _atomic_json(tmp / "train_config.json", {**dataclasses.asdict(tc), **(run_record or {})})
        _atomic_json(tmp / "model_config.json", mcfg.to_dict())
        _atomic_json(tmp / "state.json", {"step": step})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(p for p in ckpt_root.glob("step_*"))[: -tc.keep_checkpoints]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_weights(model: RefineByAlignModel, ema: EMAModel | None, out_dir: Path, tc: TrainConfig, step: int, run_record: dict | None = None) -> Path:
    """Weights-only model folder (EMA weights when kept) loadable by ``--model DIR``; its
    train_config.json: the train config with ``run_record`` (_run_record) and ``trained_steps``."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if ema is not None:
            ema.restore(model.parameters())
    _atomic_json(out_dir / "train_config.json", {**dataclasses.asdict(tc), **(run_record or {}), "trained_steps": step})
    return out_dir
