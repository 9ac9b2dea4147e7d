"""RefineByAlignPipeline: alignment (Algorithm 1) then zoomed-in, reference-guided refinement.

Sec. 3.5: given an image with artifacts I_a, the artifact mask M_a and a reference object I_r,
the alignment stage finds M*, the region of I_r that corresponds to the artifacts; the refinement
stage inpaints a zoomed-in crop of I_a guided by the tokens of I_r x M* and pastes it back.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from PIL import Image

from ..config import CONFIG_NAMES, get_config
from ..fill import CLASSICAL_FILLS, MIXED_FILLS, classical_fill, local_mixed_fill, residual_patch, warm_up_fills, warp_at, warp_composite
from ..io import InputError, alpha_mask, as_image, as_mask, check_mask_picture, check_matchers, check_seed, check_settings, in_input_mode, to_rgb, validate_inputs
from ..models.refiner import RefineByAlignModel
from ..threads import torch_threads, worker_threads
from ..zoom import Box, crop_resize, mask_bbox, paste_back, square_pad_box, zoom_box
from .alignment import (
    ALIGN_MAX_CROP,
    ALIGNMENT_METHODS,
    AlignmentResult,
    attention_at,
    attention_grid,
    clean_correspondence,
    correspondence_map,
    dense_alignment,
    grid_to_reference,
)
from .fields import REFERENCE_UPSCALE_MAX
from .matching import attention_matches, image_features_ahead
from .references import CombinedWarp, ReferenceResult, as_reference_list, combine_warps, pick_guide
from .warp import WarpFill, warp_fill

__all__ = [
    "RefineByAlignPipeline", "ReferenceResult", "CropInputs", "check_settings", "resolve_device", "RefineOutput", "PreparedInputs", "default_model_dir",
    "make_scheduler", "forget_remembered",
]

logger = logging.getLogger(__name__)


class NonFiniteResultError(InputError):
    """The model's output held NaN or inf (broken weights or settings): refused, never pasted as a
    black area. An :class:`~refine_by_align.io.InputError`, so the CLI and batch report it in one
    line (exit 2) and the server answers 422."""


def forget_remembered() -> None:
    """Drop what pipelines remember between calls, keyed by content (a reference's matcher
    features, its estimated object, the rings around a mask): a benchmark's cold timing of a
    case it ran before, or to free memory. Results do not change (what is remembered is exact)."""
    from ..data.foreground import clear_foreground_cache
    from .matching import clear_reference_cache
    from .warp import clear_ring_cache

    clear_reference_cache()
    clear_foreground_cache()
    clear_ring_cache()


def default_model_dir() -> Path:
    """Folder of the embedded default model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "weights" / "default"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` / ``"auto"``: the GPU where one is visible, else the CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible")
    return device


def make_scheduler(model: RefineByAlignModel):
    """The sampler on the model's training noise schedule.

    Pixel space: DDIM with x0 clipped to [-1, 1] and trailing timesteps (DPM-Solver++ diverges
    there at the cosine schedule's last step, where alpha_bar is ~1e-8). Latent space: DPM-Solver++ (2M)."""
    c = model.cfg
    if c.latent == "pixel":
        return DDIMScheduler(
            **c.noise_schedule(),
            clip_sample=True,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
        )
    return DPMSolverMultistepScheduler(
        **c.noise_schedule(),
        algorithm_type="dpmsolver++",
        solver_order=2,
    )


@dataclass
class RefineOutput:
    """Result of one refinement."""

    image: Image.Image  # the refined image, same size and kind as the input (grey stays grey, an alpha channel is kept: io.in_input_mode)
    region: np.ndarray | None  # (Hr, Wr) bool: M*, the aligned region on the guiding reference (None when align=False)
    heatmap: np.ndarray | None  # (Hr, Wr) float32 in [0, 1]: the guiding reference's cleaned alignment map
    crop_box: Box  # the zoom-in crop on the input image
    reference_box: Box  # the square region of the guiding reference that guided the model
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    random_weights: bool = False  # True when the model is an untrained stand-in
    alignment: str | None = None  # the alignment method that gave M* ("dense", "attention"; None: none ran)
    warp_fraction: float = 0.0  # fraction of the mask redrawn from the warped reference(s) (dense alignment)
    notes: list[str] = field(default_factory=list)  # one line each: fallbacks the user should know of
    info: dict = field(default_factory=dict)  # alignment diagnostics (matches per source, inliers, ring NCC ...)
    references: list[ReferenceResult] = field(default_factory=list)  # what each reference gave, in the order given
    guide: int = 0  # index of the reference whose tokens guided the model's redraw
    source: np.ndarray | None = None  # (H, W) int16 over the image: -1 outside the mask, 0 drawn by the model, k from reference k's warp (1-based)
    sampling: dict = field(default_factory=dict)  # what the model drew with: steps, guidance, samples (the defaults filled in), seed

    @property
    def correspondence_mask(self) -> np.ndarray | None:
        """Deprecated name of :attr:`region` (goes in the next release)."""
        warnings.warn("RefineOutput.correspondence_mask is deprecated, use .region", DeprecationWarning, stacklevel=2)
        return self.region

    @property
    def correspondence_map(self) -> np.ndarray | None:
        """Deprecated name of :attr:`heatmap` (goes in the next release)."""
        warnings.warn("RefineOutput.correspondence_map is deprecated, use .heatmap", DeprecationWarning, stacklevel=2)
        return self.heatmap


@dataclass
class CropInputs:
    """The zoom-in crop of one call and its U-Net inputs (see :meth:`RefineByAlignPipeline.crop_inputs`)."""

    crop: torch.Tensor  # (1, 3, S, S) in [0, 1]
    cmask: torch.Tensor  # (1, 1, S, S) pixel mask
    sample: torch.Tensor | None  # (1, C, h, w) z_0 of the crop (alignment only)
    prefill: torch.Tensor  # (1, 3, S, S) the crop with its hole filled (cfg.hole_fill)
    masked: torch.Tensor  # (1, C, h, w) the masked-image input ((1, C + 1, h, w) with cfg.warp_channel: + the trust map)
    lmask: torch.Tensor  # (1, 1, h, w) the mask at the sample resolution
    trust: torch.Tensor | None = None  # (1, 1, S, S) hole_fill "warp": where the prefill is the warp (None: no warp)
    base: np.ndarray | None = None  # (N, N, 3) uint8: the full-resolution fill the correction goes on (the warp composite for hole_fill "warp")


@dataclass
class PreparedInputs:
    """Validated inputs as arrays, plus the crops the model sees."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, the artifact mask M_a
    reference: np.ndarray  # (Hr, Wr, 3) uint8, black outside the reference object
    reference_mask: np.ndarray  # (Hr, Wr) bool, the reference object
    crop_box: Box
    reference_box: Box  # square box around the reference object (what the encoder sees)
    notes: list[str] = field(default_factory=list)  # e.g. that the reference object was estimated
    photo: np.ndarray | None = None  # (Hr, Wr, 3) uint8: the whole reference photo where its object was only estimated on a background

    @property
    def matched(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference (Hr, Wr, 3), its object (Hr, Wr) bool) as the warp samples it: the reference
        cut to its object; but where that object was estimated on a photo with a background (no
        mask given), the whole photo, every pixel counted as object (the matchers still look only
        inside the estimate: ``dense_alignment(search_mask=)``). An estimate that leaves out the
        part under the mask would hide it from the warp (MODEL_CARD.md, thirty-second session);
        the model's tokens and the region shown stay the estimate's."""
        if self.photo is None:
            return self.reference, self.reference_mask
        return self.photo, np.ones(self.reference_mask.shape, bool)


def region_heat(region: np.ndarray) -> np.ndarray:
    """The dense alignment's map for display: M* (Hr, Wr) bool blurred by a Gaussian of 1% of the
    reference's longer side (at least 2 px), scaled to a maximum of 1; (Hr, Wr) float32. The blur
    runs on M*'s box grown by the kernel's reach (4 sigma), the rest being 0: the same values as
    over the whole reference (a 4096 px reference's took 1.8 s)."""
    sigma = max(2.0, 0.01 * max(region.shape))
    heat = np.zeros(region.shape, np.float32)
    if region.any():
        reach = int(np.ceil(4 * sigma)) + 1
        b = mask_bbox(region)
        window = (slice(max(b.y0 - reach, 0), b.y1 + reach), slice(max(b.x0 - reach, 0), b.x1 + reach))
        heat[window] = cv2.GaussianBlur(region[window].astype(np.float32), (0, 0), sigma)
    return (heat / max(float(heat.max()), 1e-6)).astype(np.float32)


def _blend(patch: np.ndarray, combined: CombinedWarp) -> np.ndarray:
    """The model's crop pixels with the combined warp blended in by its weight ((N, N, 3) uint8)."""
    if not combined.weight.any():
        return patch
    wt = combined.weight[..., None]
    return np.clip(np.rint(patch.astype(np.float32) * (1.0 - wt) + combined.patch.astype(np.float32) * wt), 0, 255).astype(np.uint8)


def _match_count(result: AlignmentResult | None) -> int:
    """The most descriptor matches any of the dense alignment's sources found (0: none ran; the
    template search's lattice points are not descriptor matches and do not count)."""
    counts = (result.info.get("matches") or {}) if result is not None else {}
    return int(max((v for k, v in counts.items() if not k.startswith("template")), default=0))


def _one_call_at_a_time(method):
    """The pipeline's calls hold its lock: one refine or alignment at a time per pipeline, whichever
    thread calls (the scheduler's timesteps, the recorded attention and the remembered features are
    the pipeline's own state; four threads sharing one pipeline got wrong pixels, silently, when
    their step counts differed). Calls from several threads wait for each other."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._call_lock:
            return method(self, *args, **kwargs)

    return locked


class RefineByAlignPipeline(DiffusionPipeline):
    """Two-stage reference-guided artifact refinement. Build with :meth:`from_pretrained`."""

    model_cpu_offload_seq = "model"

    def __init__(self, model: RefineByAlignModel, scheduler):
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)
        self.random_weights = False
        self._aliked = None  # the ALIKED matcher: None = not looked for yet, False = unavailable / off
        self._aliked_reason = ""  # why the matcher is unavailable ("" where it is in use, turned off or not looked for)
        # set by enable_compile(): compiled stand-ins for the U-Net of the denoising loop ("unet")
        # and the autoencoder's encode / decode ("encode", "decode"); None = eager
        self._compiled: dict[str, object] = {}
        # called with a stage's name before it starts ("align", before each reference's; "warp";
        # "redraw", the classical fill and the model; "denoise", after the fill; "paste"); an
        # exception it raises stops the run there (the web server stops a job cancelled or past its
        # time limit this way: the denoising loop's progress bar is its only other check, and with
        # one step it comes once)
        self.stage_callback: Callable[[str], None] | None = None
        self._call_lock = threading.RLock()  # (_one_call_at_a_time)
        warm_up_fills()

    def _stage(self, name: str) -> None:
        """Tell :attr:`stage_callback` (if set) that the stage ``name`` starts."""
        if self.stage_callback is not None:
            self.stage_callback(name)

    def enable_compile(self, freezing: bool = True, mode: str | None = None, vae: bool = True) -> bool:
        """Compile the U-Net for the denoising loop with torch.compile (inductor; with weight
        freezing, as inference-only), and with ``vae`` the autoencoder's encode and decode
        (latent-space models, where they are a large share of a refine on a CPU; the measured gains
        are in the README's speed section). ``mode``: torch.compile's mode, e.g. ``"max-autotune"``
        (for ``paper`` on a CPU it compiled longer and refined slower than the default mode; README).
        The alignment pass keeps the eager U-Net, whose attention
        processors it swaps. Shapes are static: a new batch size (another ``num_samples``, or the
        default's one sample where a warp gives almost all of the mask) compiles again, and past
        dynamo's recompile limit that part runs eager. Returns False (and stays eager) where
        compilation is unavailable; a compiled part that fails when called falls back to eager
        alone, with a warning."""
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = freezing
            compiled = {"unet": torch.compile(self.model.unet, dynamic=False, mode=mode)}
            if vae and self.model.vae is not None:
                compiled["encode"] = torch.compile(self.model.vae.encode, dynamic=False, mode=mode)
                compiled["decode"] = torch.compile(self.model.vae.decode, dynamic=False, mode=mode)
        except Exception as e:  # no compiler toolchain, unsupported platform...
            logger.warning("torch.compile unavailable (%s): staying eager", e)
            self._compiled = {}
            return False
        self._compiled = compiled
        return True

    def _compiled_or_eager(self, name: str, run):
        """``run(fn)`` with the compiled stand-in ``name`` (compilation happens lazily, on the first
        call). If the compiled call itself raises, warn, drop it for good and ``run(None)`` (eager);
        an error anywhere else in ``run`` propagates as it is."""
        fn = self._compiled.get(name)
        if fn is None:
            return run(None)
        failed: list[Exception] = []

        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                failed.append(e)
                raise

        try:
            return run(guarded)
        except Exception:
            if not failed:
                raise
            e = failed[0]
            logger.warning("compiled %s failed (%s): falling back to eager", name, str(e).splitlines()[0] if str(e) else e)
            self._compiled[name] = None
        return run(None)

    def enable_channels_last(self) -> None:
        """Store the U-Net and autoencoder weights channels-last (NHWC), the layout oneDNN's and
        cuDNN's convolutions run fastest in; the inputs follow. In bf16 on a CPU it speeds up the
        paper U-Net's steps and, more, its VAE decode (README, speed section). ``from_pretrained``
        turns it on for latent-space models."""
        self.model.unet.to(memory_format=torch.channels_last)
        if self.model.vae is not None:
            self.model.vae.to(memory_format=torch.channels_last)

    def step(self, x, t, masked, mask, context) -> torch.Tensor:
        """One denoising step's (guided-batch) U-Net prediction in float32, compiled where enabled."""
        return self._compiled_or_eager("unet", lambda fn: self.model.denoise(x, t, masked, mask, context, unet=fn)).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images in [0, 1] with the autoencoder's decode, compiled where enabled."""
        return self._compiled_or_eager("decode", lambda fn: self.model.from_latent(z, decode=fn))

    def compiled_parts(self) -> dict[str, object]:
        """The parts :meth:`enable_compile` compiled that still run compiled ("unet", "encode",
        "decode"): name -> the compiled callable."""
        return {k: fn for k, fn in self._compiled.items() if fn is not None}

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "default",
        seed: int = 0,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = "auto",
    ) -> "RefineByAlignPipeline":
        """``default`` = the shipped model; ``tiny`` / ``paper`` (or ``default`` when no weights are
        shipped) = a random-init stand-in of that config (flagged, warned about); anything else is a
        folder saved by :meth:`save_pretrained`. ``torch_dtype`` (e.g. torch.bfloat16) casts the
        weights; sampling itself stays in float32. ``device``: ``auto`` picks the GPU where one is
        visible, else the CPU (outputs match across devices only up to float rounding)."""
        name = str(name_or_path)
        random_weights = False
        if name == "default" and (default_model_dir() / "config.json").exists():
            model = RefineByAlignModel.load(default_model_dir())
        elif name in CONFIG_NAMES:
            torch.manual_seed(seed)
            model = RefineByAlignModel.from_model_config(get_config(name))
            model.eval()
            random_weights = True
            logger.warning("model '%s' has no trained weights here: using RANDOM weights (outputs are meaningless)", name)
        else:
            model = RefineByAlignModel.load(name)
        pipe = cls.from_model(model, name if name in CONFIG_NAMES else os.path.abspath(name), torch_dtype, device)
        pipe.random_weights = random_weights
        return pipe

    @classmethod
    def from_model(
        cls, model: RefineByAlignModel, model_name: str, torch_dtype: torch.dtype | None = None, device: str | torch.device | None = "auto"
    ) -> "RefineByAlignPipeline":
        """The pipeline around a loaded ``model`` (:meth:`from_pretrained`'s, or a training
        checkpoint's: ``loading``), on ``device`` in ``torch_dtype``; ``model_name``: what it was
        loaded as (the records beside results name it)."""
        model.to(resolve_device(device))
        if torch_dtype is not None:  # (nn.Module.to: diffusers' ModelMixin.to warns about float32-only modules on
            torch.nn.Module.to(model, torch_dtype)  # every dtype cast, and this model has none)
        pipe = cls(model=model, scheduler=make_scheduler(model))
        pipe.model_name = model_name
        if model.vae is not None:  # large convolutions: NHWC pays (tiny pixel-space models: it does not)
            pipe.enable_channels_last()
        return pipe

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True, **kwargs) -> None:
        """One folder: config.json + diffusion_pytorch_model.safetensors (the scheduler derives from
        the config). Other keyword arguments go to the model's ``save_pretrained`` (diffusers'
        ``max_shard_size``, ``is_main_process``, ...); the weights are safetensors only."""
        if not safe_serialization:
            raise ValueError("save_pretrained writes safetensors only (pickled weights are refused when loading)")
        self.model.save_pretrained(save_directory, safe_serialization=True, **kwargs)

    # ------------------------------------------------------------------ input preparation
    def prepare(
        self,
        image: Image.Image,
        mask: np.ndarray | Image.Image,
        reference: Image.Image,
        reference_mask: np.ndarray | Image.Image | None = None,
        names: dict[str, str] | None = None,
        ahead: bool = False,
        labels: dict[str, str] | None = None,
    ) -> PreparedInputs:
        """Check the inputs (one clear InputError on any problem) and compute the crops. ``names``:
        role -> file name, ``labels``: role -> how messages call it (``reference #2``). ``ahead``
        (for a dense alignment with the default matchers to follow): where the reference object is
        estimated (GrabCut, on one core), the image's side of the matching is described beside it
        (:func:`~.matching.image_features_ahead`), for the alignment to find remembered."""
        cfg = self.model.cfg
        labels = labels or {}
        image, reference = as_image(image, "image"), as_image(reference, labels.get("reference", "reference"))
        if isinstance(mask, (Image.Image, np.ndarray)):  # (a photo given as the mask: said in one line, as for a file)
            check_mask_picture(mask, "mask")
        mask = as_mask(mask, "mask")
        # (the mask is the reference's alpha channel where none was given; else validate_inputs reads
        # it off ``names``: named files without a mask file, as the command line passes the alpha it read)
        from_alpha = True if reference_mask is None else None
        if reference_mask is not None:
            reference_mask = as_mask(reference_mask, labels.get("reference_mask", "reference_mask"))
        else:
            reference_mask = alpha_mask(reference)
        rgb = to_rgb(image)
        ref_rgb = to_rgb(reference)
        validate_inputs(rgb, mask, ref_rgb, reference_mask, names, labels, from_alpha=from_alpha)
        notes = []
        photo = None
        crop_box = zoom_box(mask, grow=cfg.zoom_grow, min_size=cfg.zoom_min_size)
        if reference_mask is None:  # no mask and no alpha: estimate the object (data/foreground.py)
            from ..data.foreground import estimate_foreground, estimate_note, on_plain_background

            ref_photo = np.asarray(ref_rgb)
            plain = on_plain_background(ref_photo)  # (a cut-out or studio shot, not a photo with a background)
            beside = None
            if ahead and max(crop_box.width, crop_box.height) <= ALIGN_MAX_CROP:  # (a larger crop is aligned scaled down)
                self._match_sources(None)  # (loads the ALIKED matcher where its weights are found)
                image_rgb = np.asarray(rgb)
                # (a photo is matched as it is, its object searched inside the estimate: its SIFT can
                # be described before the estimate is known; a cut-out is matched cut to the estimate)
                whole = None if plain else ref_photo
                beside = lambda: image_features_ahead(image_rgb, mask, crop_box, self._aliked or None, reference=whole)  # noqa: E731
            reference_mask = estimate_foreground(ref_rgb, beside=beside)
            notes.append(estimate_note(reference_mask))
            if not reference_mask.all() and not plain:
                photo = ref_photo  # matched whole (PreparedInputs.matched)
        ref = np.asarray(ref_rgb).copy()
        ref[~reference_mask] = 0
        ref_box = square_pad_box(mask_bbox(reference_mask), cfg.reference_margin, reference_mask.shape)
        return PreparedInputs(np.asarray(rgb), mask, ref, reference_mask, crop_box, ref_box, notes, photo)

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 -> (1, 3, S, S) in [0, 1]; (S, S) bool -> (1, 1, S, S)."""
        if array.ndim == 2:
            t = torch.from_numpy(array.astype(np.float32))[None, None]
        else:
            t = torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        w = self._weight()
        return t.to(w.device, w.dtype)

    def _weight(self) -> torch.Tensor:
        """One parameter of the model: its device and dtype, without DiffusionPipeline.device's
        walk over every module (slow for a model of many modules, and needed several times per
        alignment)."""
        return next(self.model.parameters())

    def crop_tensors(self, p: PreparedInputs) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.model.cfg.resolution
        crop = self._to_tensor(crop_resize(p.image, p.crop_box, s))  # (1, 3, S, S)
        cmask = self._to_tensor(crop_resize(p.mask, p.crop_box, s))  # (1, 1, S, S)
        if cmask.sum() == 0:  # a mask thinner than one crop pixel still counts
            cy, cx = np.array(np.nonzero(p.mask)).mean(axis=1)
            iy = int((cy - p.crop_box.y0) / p.crop_box.height * s)
            ix = int((cx - p.crop_box.x0) / p.crop_box.width * s)
            cmask[..., min(iy, s - 1), min(ix, s - 1)] = 1.0
        return crop, cmask

    def crop_inputs(self, p: PreparedInputs, with_sample: bool = True, warp: tuple[np.ndarray, np.ndarray] | None = None) -> CropInputs:
        """The zoom-in crop and its U-Net inputs, computed once per call and shared by the
        alignment and refinement stages (one autoencoder pass for both images).

        ``warp`` (``hole_fill="warp"`` models): (the colour-matched warped reference (N, N, 3)
        uint8 over the crop box at full resolution, the mask pixels (N, N) bool it is trusted for).
        The U-Net's prefill is then the warp at S px where trusted and Telea elsewhere, the trust
        map its extra channel, and ``base`` the same composite at full resolution."""
        crop, cmask = self.crop_tensors(p)
        warp_t = trust_t = base = None
        if warp is not None and self.model.cfg.hole_fill == "warp":
            b = p.crop_box
            window = (slice(b.y0, b.y1), slice(b.x0, b.x1))
            image_box, mask_box = p.image[window], p.mask[window]
            patch_full, use_full = warp[0], np.asarray(warp[1], bool) & mask_box
            warp_s, trust_s = warp_at(patch_full, use_full, self.model.cfg.resolution)  # as the training pairs do
            warp_t = self._to_tensor(warp_s)
            trust_t = self._to_tensor(trust_s) * (cmask > 0.5).to(cmask.dtype)
            base = warp_composite(image_box, mask_box, patch_full, use_full)
        sample, prefill, masked, lmask = self._compiled_or_eager(
            "encode", lambda fn: self.model.inpainting_inputs(crop, cmask, with_sample, encode=fn, warp=warp_t, trust=trust_t)
        )
        return CropInputs(crop, cmask, sample, prefill, masked, lmask, trust_t, base)

    def reference_tensor(self, reference: np.ndarray, box: Box) -> torch.Tensor:
        return self._to_tensor(crop_resize(reference, box, self.model.cfg.encoder_image_size))

    # ------------------------------------------------------------------ alignment stage
    @torch.no_grad()
    @_one_call_at_a_time
    def align(
        self,
        image: Image.Image,
        mask: np.ndarray | Image.Image,
        reference: Image.Image,
        reference_mask: np.ndarray | Image.Image | None = None,
        alignment_timestep: int | None = None,
        alignment_layer: int | None = None,
        threshold: float | None = None,
        seed: int = 0,
        names: dict[str, str] | None = None,
        alignment: str | None = None,
        matchers: str | None = None,
        timestep: int | None = None,
        layer: int | None = None,
        method: str | None = None,
    ) -> AlignmentResult:
        """The alignment stage alone: ``alignment`` ``dense`` (default: the field and M* pushed
        through it) or ``attention`` (Algorithm 1 at one (t, l) = (``alignment_timestep``,
        ``alignment_layer``), Eq. 5, A.4), as the pipeline's call takes it; ``matchers`` the dense
        field's sources joined by "+" (default: sift+aliked where ALIKED's weights are found, else
        sift). The result's ``field`` (:class:`~.fields.DenseField`, dense) gives, for every pixel of
        the zoom-in crop ``field.box`` on the image, its (x, y) on the reference (``field.xy``, (h, w,
        2) float32 in the reference's full-resolution pixels), its ``confidence`` (h, w) in [0, 1]
        and whether it lands on the reference object (``on_object``). ``timestep`` / ``layer`` /
        ``method`` are the deprecated names of ``alignment_timestep`` / ``alignment_layer`` /
        ``alignment``."""
        for old, new in (("timestep", "alignment_timestep"), ("layer", "alignment_layer"), ("method", "alignment")):
            if locals()[old] is not None:  # (stacklevel: past torch.no_grad's and _one_call_at_a_time's wrappers, the caller's line)
                warnings.warn(f"align(): '{old}' is deprecated, use '{new}'", DeprecationWarning, stacklevel=4)
        alignment_timestep = timestep if alignment_timestep is None else alignment_timestep
        alignment_layer = layer if alignment_layer is None else alignment_layer
        method = method if alignment is None else alignment
        seed = check_seed(seed)
        p = self.prepare(image, mask, reference, reference_mask, names, ahead=(method or "dense") == "dense" and matchers is None)
        self._stage("align")
        res = self._align(p, alignment_timestep, alignment_layer, threshold, seed, method=method, matchers=matchers)
        if p.notes:
            res.info["notes"] = p.notes + res.info.get("notes", [])
        return res

    def alignment_maps(
        self, p: PreparedInputs, timesteps: list[int], layers: list[int] | None, seed: int = 0, inputs: CropInputs | None = None
    ) -> np.ndarray:
        """Eq. 5 maps M^{t,l} of one prepared input for every (t, l): (T, L, grid, grid).

        One U-Net pass per timestep on the zoom-in crop noised to t (Algorithm 1). ``inputs``:
        the crop's U-Net inputs when already computed (:meth:`crop_inputs`)."""
        n = self.model.cfg.num_train_timesteps
        for t in timesteps:
            if not 0 <= int(t) < n:
                raise InputError(f"alignment timestep {t} out of range 0..{n - 1}")
        if inputs is None or inputs.sample is None:
            inputs = self.crop_inputs(p)
        context = self.model.encode_reference(self.reference_tensor(p.reference, p.reference_box))
        generator = torch.Generator("cpu").manual_seed(seed)
        maps = attention_grid(
            self.model, inputs.sample, inputs.masked, inputs.lmask, context, [int(t) for t in timesteps], layers, self.scheduler, generator
        )
        return maps[:, :, 0].numpy()

    def region_on_reference(
        self, p: PreparedInputs, raw: np.ndarray, threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A.4 on one raw (g, g) map, then onto the reference: (M* (Hr, Wr) bool, heat map (Hr, Wr)
        float in [0, 1], M* on the token grid (g, g), the cleaned grid map (g, g) in [0, 1]).
        ``threshold``: A.4's, relative to the map's range (None: the model's ``alignment_threshold``)."""
        threshold = self.model.cfg.alignment_threshold if threshold is None else float(threshold)
        grid_region, norm = clean_correspondence(raw, threshold=threshold)
        shape = p.reference_mask.shape
        region = grid_to_reference(grid_region, p.reference_box, shape) & p.reference_mask
        if not region.any():  # the blob fell outside the object: keep it unclipped
            region = grid_to_reference(grid_region, p.reference_box, shape)
        smooth = grid_to_reference(norm, p.reference_box, shape, smooth=True)
        heat = smooth * p.reference_mask
        if not region.any():  # the blob maps to no pixel (a reference of a few pixels): keep its strongest one
            region[np.unravel_index(int(np.argmax(heat if heat.any() else smooth)), shape)] = True
        return region, heat.astype(np.float32), grid_region, norm

    def correspondence_on_reference(self, p: PreparedInputs, raw: np.ndarray, threshold: float | None = None):
        """Deprecated name of :meth:`region_on_reference` (goes in the next release)."""
        warnings.warn("correspondence_on_reference is deprecated, use region_on_reference", DeprecationWarning, stacklevel=2)
        return self.region_on_reference(p, raw, threshold)

    # ------------------------------------------------------------------ the dense field's matchers
    def set_matcher(self, weights: str | Path | torch.nn.Module | None = None, enabled: bool = True) -> bool:
        """Use the pretrained ALIKED matcher for the dense alignment (``models/aliked.py``):
        ``weights`` a .safetensors file or a folder holding ``aliked-n16.safetensors`` (default: the
        ``REFINE_BY_ALIGN_WEIGHTS`` folder or ``../shared/weights``), or a matcher already loaded
        (:func:`~refine_by_align.models.aliked.load_aliked`'s, used as it is). ``enabled=False``
        turns it off. Returns whether it is in use; when its weights cannot be found the dense
        alignment runs on SIFT alone and says so in the result's ``notes``."""
        self._aliked = None
        self._aliked_reason = ""
        if not enabled:
            self._aliked = False
            return False
        if isinstance(weights, torch.nn.Module):
            self._aliked = weights
            return True
        try:
            from ..models.aliked import load_aliked

            model, self._aliked_reason = load_aliked(weights)
        except ImportError as e:
            model, self._aliked_reason = None, str(e).splitlines()[0] if str(e) else type(e).__name__
        if model is None:
            self._aliked = False
            return False
        self._aliked = model
        return True

    def require_matcher(self, weights: str | Path | torch.nn.Module, what: str = "matcher weights") -> None:
        """:meth:`set_matcher` where the matcher must be had: weights that cannot be loaded are one
        InputError, "``what`` '``weights``': cannot load the ALIKED matcher: " and why."""
        if not self.set_matcher(weights):
            raise InputError(f"{what} '{weights}': cannot load the ALIKED matcher: {self._aliked_reason}")

    @property
    def matcher_weights(self) -> str | None:
        """The file the ALIKED matcher in use was loaded from (a matcher given as a module without
        one: its class name); None where the alignment runs on SIFT alone or has not looked for
        the matcher yet."""
        m = getattr(self, "_aliked", None)
        if m is None or m is False:
            return None
        path = getattr(m, "weights_path", None)
        return str(path) if path is not None else type(m).__name__

    @property
    def _aliked_note(self) -> str:
        """The note that says the matcher could not be loaded, and why ("" where it was not tried
        or was loaded)."""
        return f"ALIKED matcher unavailable ({self._aliked_reason}): dense alignment uses SIFT alone" if self._aliked_reason else ""

    def alignment_matchers(self, matchers: str | None = None) -> dict:
        """What the dense alignment will match with, asked as a call's ``matchers`` would ask
        (None: SIFT plus ALIKED where its weights are found; the matcher is looked for now if it
        was not yet): {"matchers": "sift+aliked" or "sift" ..., "matcher_weights": the file ALIKED
        was loaded from or None, "notes": the note a result would carry (ALIKED not found)}. For a
        benchmark's record and its one note before the cases run; the same InputError as a call
        where ``matchers`` asks for a matcher that is not available."""
        sources, notes = self._match_sources(matchers)
        return {"matchers": "+".join(sources), "matcher_weights": self.matcher_weights if "aliked" in sources else None, "notes": notes}

    def _match_sources(self, matchers: str | None) -> tuple[tuple[str, ...], list[str]]:
        """The dense alignment's match sources and any note about them. ``None``: SIFT plus ALIKED
        where its weights are found."""
        notes: list[str] = []
        if getattr(self, "_aliked", None) is None:
            self.set_matcher()
        if matchers is None:
            sources = ("sift", "aliked") if self._aliked else ("sift",)
            if not self._aliked and self._aliked_note:
                notes.append(self._aliked_note)
            return sources, notes
        sources = check_matchers(matchers)
        if "aliked" in sources and not self._aliked:
            why = self._aliked_reason or "turned off by set_matcher(enabled=False)"
            raise InputError(
                f"matchers '{matchers}': the ALIKED matcher is not available: {why}; give its weights (--matcher-weights or "
                f"REFINE_BY_ALIGN_WEIGHTS; in Python set_matcher / require_matcher) or choose sift"
            )
        return sources, notes

    def _align(
        self,
        p: PreparedInputs,
        timestep,
        layer,
        threshold,
        seed,
        inputs: CropInputs | None = None,
        method: str | None = None,
        matchers: str | None = None,
    ) -> AlignmentResult:
        """The alignment stage by ``method`` (``dense``, the default, or ``attention``, Algorithm 1).

        Algorithm 1 at (t, l): the U-Net's attention A^{t,l} of the crop noised to t, summed over
        the mask (Eq. 5), cleaned (A.4). Dense: the matches of ``matchers`` (and the same A^{t,l}
        read per query, when "attention" is among them) fitted into a field over the crop; M* is
        the mask pushed through it. Where no consistent field exists it falls back to Algorithm 1
        and says so in ``info["fallback"]``."""
        cfg = self.model.cfg
        method = "dense" if method is None else str(method)
        if method not in ALIGNMENT_METHODS:
            raise InputError(f"unknown alignment method '{method}' (choose {', '.join(ALIGNMENT_METHODS)})")
        t = cfg.alignment_timestep if timestep is None else int(timestep)
        l = cfg.alignment_layer if layer is None else int(layer)
        n_layers = len(self.model.cross_attention_layers)
        if not 0 <= l < n_layers:
            raise InputError(f"alignment layer {l} out of range 0..{n_layers - 1}")
        if not 0 <= t < cfg.num_train_timesteps:
            raise InputError(f"alignment timestep {t} out of range 0..{cfg.num_train_timesteps - 1}")
        sources, notes = self._match_sources(matchers) if method == "dense" else ((), [])
        raw = att = None
        if method == "attention" or "attention" in sources:
            if inputs is None or inputs.sample is None:
                inputs = self.crop_inputs(p)
            context = self.model.encode_reference(self.reference_tensor(p.reference, p.reference_box))
            generator = torch.Generator("cpu").manual_seed(seed)
            att = attention_at(self.model, inputs.sample, inputs.masked, inputs.lmask, context, t, l, self.scheduler, generator)  # (1, HW, T)
            raw = correspondence_map(att, inputs.lmask, cfg.grid_size)[0].float().cpu().numpy().astype(np.float32)  # (g, g)
        if method == "attention":
            region, heat, grid_region, _ = self.region_on_reference(p, raw, threshold)
            return AlignmentResult(region, heat, raw, grid_region, t, l, "attention")
        attn = None if att is None else attention_matches(att[0].float().cpu().numpy(), p.crop_box, p.reference_box, cfg.grid_size)
        matched, matched_mask = p.matched
        # Where the dense stage falls to its template search (no point matches agree), it ends
        # without a field in most cases (35 of 39 suite cases) and Algorithm 1's pass below is the
        # fallback: that pass starts then on a thread of its own, beside the search and the
        # single-threaded refinement of its placements (val-val4's 32 multiview alignments: mean
        # 0.594 -> 0.577 s; MODEL_CARD.md, fifty-second session). The same result as run after
        # (torch's thread setting taken with it), and always waited for: it sets the U-Net's
        # attention processors, which the redraw must find restored.
        ahead: list = []
        threads = torch.get_num_threads()

        def fallback_ahead() -> None:
            def attention_pass() -> AlignmentResult:
                with torch.no_grad(), torch_threads(threads):
                    return self._align(p, t, l, threshold, seed, inputs, "attention")

            if not ahead:
                worker = ThreadPoolExecutor(max_workers=1)
                ahead.append(worker.submit(attention_pass))
                worker.shutdown(wait=False)

        try:
            fld, info = dense_alignment(
                p.image, p.mask, matched, matched_mask, p.crop_box, sources, self._aliked or None, attn, search_mask=p.reference_mask,
                fallback_ahead=fallback_ahead if worker_threads() > 1 else None,
            )
        finally:  # (waited for even where the stage raises: the next call's redraw must not meet it)
            wait(ahead)
        info["notes"] = notes
        if fld is None:
            res = ahead[0].result() if ahead else self._align(p, t, l, threshold, seed, inputs, "attention")
            info["fallback"] = "no consistent dense field (too few agreeing matches): M* from the attention map (Algorithm 1)"
            res.info = info
            return res
        b = p.crop_box
        region = fld.push_mask(p.mask[b.y0 : b.y1, b.x0 : b.x1], p.reference_mask.shape)
        if (region & p.reference_mask).any():
            region &= p.reference_mask
        if not region.any():  # pushed entirely off the reference: nothing to show but the nearest pixel
            ys, xs = np.nonzero(p.mask[b.y0 : b.y1, b.x0 : b.x1])
            x, y = fld.xy[ys[len(ys) // 2], xs[len(xs) // 2]]
            region[int(np.clip(round(float(y)), 0, region.shape[0] - 1)), int(np.clip(round(float(x)), 0, region.shape[1] - 1))] = True
        return AlignmentResult(region, region_heat(region), raw, None, t, l, "dense", fld, info)

    # ------------------------------------------------------------------ refinement stage
    @torch.no_grad()
    @_one_call_at_a_time
    def __call__(
        self,
        image: Image.Image,
        mask: np.ndarray | Image.Image,
        reference: Image.Image | list[Image.Image],
        reference_mask: np.ndarray | Image.Image | list | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        align: bool = True,
        region: np.ndarray | None = None,
        alignment_timestep: int | None = None,
        alignment_layer: int | None = None,
        names: dict | None = None,
        num_samples: int | None = None,
        alignment: str | None = None,
        matchers: str | None = None,
        warp: bool = True,
        correspondence: np.ndarray | None = None,
    ) -> RefineOutput:
        """Refine the masked artifacts of ``image`` from ``reference``.

        ``reference``: one image or a list (several references: each is aligned and warped on its
        own and, per pixel, the most trusted warp gives the pixels; ``reference_mask`` is then None
        or a list of one per reference). ``alignment``: ``dense`` (default; a per-pixel field, and
        the mask is redrawn from the reference warped through it wherever the warp agrees with the
        image around the mask) or ``attention`` (the paper's Algorithm 1 region only);
        ``matchers``: the dense field's match sources ("sift", "aliked", "attention" joined by "+");
        ``warp=False`` keeps the dense M* but redraws with the model alone. ``align=False`` is the
        single-stage ablation (the whole reference guides, Table 3); ``region`` (bool (Hr, Wr), one
        reference only) skips alignment and uses the given M* (oracle; ``correspondence`` is its
        deprecated name). ``num_samples`` K > 1 draws K samples in one batch and returns their
        mean, an estimate of the posterior mean (K = 1 is one plain sample); None: the model's
        default K, or one sample where the warps leave the model little of the mask
        (:meth:`_default_samples`)."""
        cfg = self.model.cfg
        seed = check_seed(seed)
        image = as_image(image, "image")  # (an 8-bit array as a picture: the result comes back in its kind)
        steps, guidance, k = self._sampling_settings(num_inference_steps, guidance_scale, num_samples, alignment)
        if correspondence is not None:
            warnings.warn("the 'correspondence' argument is deprecated, use 'region'", DeprecationWarning, stacklevel=3)
            region = correspondence if region is None else region
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        # 1. Validate the inputs (every reference) and cut the zoom-in crop.
        dense_ahead = align and region is None and (alignment or "dense") == "dense" and matchers is None
        ps = self.prepare_references(image, mask, reference, reference_mask, names, ahead=dense_ahead)
        region = self._given_region(region, ps)
        p = ps[0]  # the image, mask and crop are the same for every reference
        b = p.crop_box
        window = (slice(b.y0, b.y1), slice(b.x0, b.x1))
        image_box, mask_box = p.image[window], p.mask[window]  # (N, N, 3) uint8, (N, N) bool at full resolution
        timings["prepare"] = time.perf_counter() - t0

        # 2. Alignment stage: M* on each reference (dense field, or Algorithm 1).
        t1 = time.perf_counter()
        results, inputs = self._align_all(ps, align and region is None, alignment, matchers, alignment_timestep, alignment_layer, seed)
        timings["align"] = time.perf_counter() - t1

        # 3. The warps: each reference sampled through its field, colour-matched to the image around
        #    the mask, trusted where it agrees with the image there and lands on the object; per
        #    pixel the most trusted reference gives the pixels.
        self._stage("warp")
        t2 = time.perf_counter()
        warps, combined, guide = self._warps(ps, results, image_box, mask_box, warp)
        given = region
        if region is None and results[guide] is not None:
            region = results[guide].region
        timings["warp"] = time.perf_counter() - t2

        # 4. The model redraws what the warps do not cover (all of the mask without a warp), guided
        #    by the tokens of the guiding reference cut down to its M* (the whole object where the
        #    dense field is trusted nowhere, see _guide_region). A warp-input model (hole_fill
        #    "warp") redraws the whole mask over the warp composite, the trust map as an extra input.
        guide_region = self._guide_region(region, given, results[guide], combined, warp and (alignment or "dense") == "dense")
        if num_samples is None:
            k = self._default_samples(k, combined, mask_box)
        self._stage("redraw")
        patch = self._model_patch(ps[guide], inputs, combined, guide_region, steps, guidance, k, seed, timings)  # (N, N, 3) uint8

        # 5. Composite and paste the crop back: pixels outside the dilated mask stay bit-identical.
        self._stage("paste")
        t4 = time.perf_counter()
        if cfg.hole_fill != "warp":  # (a warp-input model has used the warp already)
            patch = _blend(patch, combined)
        if not np.isfinite(patch.astype(np.float32)).all():
            raise NonFiniteResultError("the refinement produced non-finite values (NaN or inf): the model's weights or the settings are broken")
        result_image = paste_back(p.image, patch, p.crop_box, p.mask, cfg.paste_dilate, cfg.paste_feather)
        timings["paste"] = time.perf_counter() - t4
        timings["total"] = time.perf_counter() - t0
        out = self._output(ps, results, warps, combined, guide, region, guide_region, in_input_mode(image, p.image, result_image), timings)
        out.sampling = {"steps": steps, "guidance": guidance, "samples": k, "seed": seed}
        return out

    @staticmethod
    def _guide_region(region, given, result, combined: CombinedWarp, dense_warp: bool) -> np.ndarray | None:
        """The M* whose tokens guide the model: the given or aligned one, except after a dense
        alignment whose warp (allowed: ``dense_warp``) is trusted nowhere in the mask. Then the
        field disagrees with the image around the mask (typically another view of the object, or
        no consistent field at all and Algorithm 1's region as the fallback), its M* is a guess,
        and the whole reference object guides instead, as in the single-stage variant (measured on
        four case sets in MODEL_CARD.md, "Harmonic prefill")."""
        if given is not None or result is None or not dense_warp or combined.use.any():
            return region
        return None

    def _align_all(self, ps, align: bool, alignment, matchers, timestep, layer, seed) -> tuple[list[AlignmentResult | None], CropInputs | None]:
        """Step 2: each reference's alignment (None for all when ``align`` is off), and the crop's
        U-Net inputs where an attention pass needed them (shared by every reference)."""
        if not align:
            return [None] * len(ps), None
        method = alignment or "dense"
        inputs = None
        if method == "attention" or (matchers is not None and "attention" in matchers):
            inputs = self.crop_inputs(ps[0], with_sample=True)
        results = []
        for q in ps:
            self._stage("align")
            results.append(self._align(q, timestep, layer, None, seed, inputs, method, matchers))
        return results, inputs

    def _sampling_settings(self, steps, guidance, samples, alignment) -> tuple[int, float, int]:
        """(steps, guidance, K) with the model's defaults filled in, checked; an unknown alignment
        method is refused here too."""
        cfg = self.model.cfg
        steps = cfg.default_steps if steps is None else steps
        guidance = cfg.default_guidance if guidance is None else guidance
        samples = cfg.default_samples if samples is None else samples
        check_settings(steps, guidance, samples, names={"steps": "num_inference_steps", "guidance": "guidance_scale"})
        if alignment is not None and alignment not in ALIGNMENT_METHODS:
            raise InputError(f"unknown alignment method '{alignment}' (choose {', '.join(ALIGNMENT_METHODS)})")
        return steps, guidance, samples

    @staticmethod
    def _warps(ps, results, image_box, mask_box, warp: bool) -> tuple[list[WarpFill | None], CombinedWarp, int]:
        """Step 3: each reference's warp through its field (None without one, or with ``warp``
        off), the warps combined per pixel, and the index of the reference that guides the model."""
        warps: list[WarpFill | None] = [
            warp_fill(image_box, mask_box, q.matched[0], r.field) if warp and r is not None and r.field is not None else None
            for q, r in zip(ps, results)
        ]
        combined = combine_warps(warps, mask_box.shape)
        return warps, combined, pick_guide(warps, mask_box, combined, [_match_count(r) for r in results])

    def prepare_references(self, image, mask, reference, reference_mask=None, names: dict | None = None, ahead: bool = False) -> list[PreparedInputs]:
        """:meth:`prepare` for one reference or a list (``reference_mask``: None or one per
        reference); with several, an error names the reference (its file where ``names`` gives
        ``reference`` as a list). ``ahead``: as :meth:`prepare`'s."""
        refs, masks, per_names, per_labels = as_reference_list(reference, reference_mask, names)
        ps = []
        for i, (ref, rmask, nm, lb) in enumerate(zip(refs, masks, per_names, per_labels)):
            q = self.prepare(image, mask, ref, rmask, nm, ahead=ahead, labels=lb)
            if len(refs) > 1:
                q.notes = [f"reference #{i + 1}: {n}" for n in q.notes]
            ps.append(q)
        return ps

    @staticmethod
    def _given_region(region: np.ndarray | None, ps: list[PreparedInputs]) -> np.ndarray | None:
        """A caller's M* (oracle): one reference only, at its size; an empty one counts as none."""
        if region is None:
            return None
        if len(ps) > 1:
            raise InputError(f"a given region (M*) needs exactly one reference, got {len(ps)}")
        region = np.asarray(region).astype(bool)
        if region.shape != ps[0].reference_mask.shape:
            raise InputError(f"region {region.shape[::-1]} does not match the reference {ps[0].reference_mask.shape[::-1]}")
        return region if region.any() else None

    def _model_patch(self, p: PreparedInputs, inputs, combined: CombinedWarp, region, steps, guidance, k, seed, timings) -> np.ndarray:
        """The crop's pixels as the model redraws them ((N, N, 3) uint8), or the crop as it is when
        the warps cover the whole mask (a Telea-prefill model has nothing left to draw)."""
        b = p.crop_box
        mask_box = p.mask[b.y0 : b.y1, b.x0 : b.x1]
        timings["encode_reference"] = timings["denoise"] = timings["fill"] = 0.0
        if self.model.cfg.hole_fill == "warp":
            if combined.use.any():
                inputs = self.crop_inputs(p, with_sample=False, warp=(combined.patch, combined.use))
            elif inputs is None:
                inputs = self.crop_inputs(p, with_sample=False)
        elif not (mask_box & (combined.weight < 1.0)).any():
            return p.image[b.y0 : b.y1, b.x0 : b.x1].copy()
        if inputs is None:
            inputs = self.crop_inputs(p, with_sample=False)  # crop (1, 3, S, S), U-Net inputs (1, C, h, w)
        if self.model.cfg.hole_fill in CLASSICAL_FILLS:
            t = time.perf_counter()
            inputs = replace(inputs, base=self._fill_around_warp(p, combined))
            timings["fill"] = time.perf_counter() - t
            self._stage("denoise")
        return self._redraw(p, inputs, region, steps, guidance, k, seed, timings)

    def _default_samples(self, k: int, combined: CombinedWarp, mask_box: np.ndarray) -> int:
        """The model's default K samples, or one where the warps leave the model little of the
        mask: the mean of K samples lowers the variance of the model's part of each pixel, whose
        weight in the masked squared error is the mean over the mask of the model's squared share;
        where that is at most :attr:`ONE_SAMPLE_SHARE` squared (as if the model had 10% of every
        pixel, or all of 1% of them) one sample is drawn. One sample also has no spread to shrink
        the correction by (``correction_shrink``): the measured figures below include both. The
        badge example (98% of every mask pixel from the warp): 0.84 -> 0.15 s of denoising, the
        same masked PSNR to 0.01 dB. On the
        validation sets val2 / val3 this rule changes 3 of 48 cases, mean masked PSNR -0.001 /
        +0.010 dB; twice the limit (0.02) would cost -0.019 dB on val2, one sample everywhere about
        -0.5 dB (MODEL_CARD.md). A caller's explicit ``num_samples`` is always used."""
        if self.model.cfg.hole_fill == "warp" or not mask_box.any():
            return k
        share = 1.0 - combined.weight[mask_box].astype(np.float64)  # the model's share of each mask pixel
        return 1 if float((share**2).mean()) <= self.ONE_SAMPLE_SHARE**2 else k

    #: Where the model's root-mean-square share of the mask's pixels is at most this, it draws one
    #: sample instead of its default K (:meth:`_default_samples`; chosen on val2 / val3).
    ONE_SAMPLE_SHARE = 0.1

    #: Where the warps leave the model at most this share of every mask pixel, the base fill is the
    #: harmonic one (0.02 s) instead of a slower base_fill such as "mixed" (about 1 s for the badge
    #: example's 8,000-pixel hole, where the warp's weight is 0.976): a different fill changes the
    #: result by at most this share of the difference (3 grey levels at most on the badge).
    CHEAP_FILL_SHARE = 0.1

    def _base_fill(self, share: float = 1.0) -> str:
        """The classical fill the model's correction is added to at full resolution (cfg.base_fill),
        or, where that is a slow one ("mixed", "mixed-local" or "fsr"), the harmonic fill when the model's largest
        ``share`` of a mask pixel is at most :attr:`CHEAP_FILL_SHARE`."""
        cfg = self.model.cfg
        name = "telea" if cfg.hole_fill == "warp" else cfg.hole_fill if cfg.base_fill == "same" else cfg.base_fill
        return "harmonic" if share <= self.CHEAP_FILL_SHARE and name in ("mixed", "mixed-local", "fsr") else name

    def _fill_around_warp(self, p: PreparedInputs, combined: CombinedWarp) -> np.ndarray:
        """The full-resolution fill the model's correction goes on ((N, N, 3) uint8), filled on the
        whole picture and cut to the crop box: FSR then sees the image's context and block grid as
        the `mixed` baseline does (on the crop alone, multiview -0.24 / -0.10 dB on val4 / val3).
        Where warps cover part of the mask, the fully trusted warp pixels are pasted and count as
        known; only the rest of the mask is filled (:meth:`_base_fill`), from them and the image
        around it: the warp pixels are what the result shows there (step 5 blends them in), and
        what they leave is continued from them (with :attr:`CHEAP_FILL_SHARE`, on the four
        validation sets: ALL +0.12 to +0.61 dB, affine +0.16 to +1.65, over filling the whole mask
        from the image around it; MODEL_CARD.md, "Mixed fill"). With the "mixed-local" base fill,
        what they leave (slivers along the warp's edge and the object's outline) is mixed from FSR
        and the biharmonic fill alone: with the harmonic fill as a third the local mix lost there
        (affine -0.03 / -0.06 dB on the deciding / checking sets), without it it gains (+0.022 /
        +0.027 over the whole-ring "mixed" fill; MODEL_CARD.md, "A fill mixed pixel by pixel")."""
        b = p.crop_box
        window = (slice(b.y0, b.y1), slice(b.x0, b.x1))
        image, hole = p.image.copy(), p.mask.copy()  # filled on the whole picture (all of the mask, also where the crop box cuts it)
        covered = hole[window] & (combined.weight >= 1.0)
        image[window][covered] = combined.patch[covered]
        hole[window][covered] = False
        rest = hole[window]
        share = float(1.0 - combined.weight[rest].min()) if rest.any() else 0.0  # the model's largest share of a pixel
        name = self._base_fill(share)
        if name == "mixed-local" and covered.any():
            # what fully trusted warp pixels leave: slivers along the warp's edge and the object's
            # outline, where the harmonic fill lost (MODEL_CARD.md, "A fill mixed pixel by pixel")
            return local_mixed_fill(image, hole, fills=MIXED_FILLS)[window]
        return classical_fill(image, hole, name)[window]

    def _output(self, ps, results, warps, combined: CombinedWarp, guide: int, region, guide_region, result_image: Image.Image, timings) -> RefineOutput:
        """Gather one refinement's result: the guiding reference's region and map, the reference
        box whose tokens guided (cut to ``guide_region``, the whole object for None), what each
        reference gave, and the per-pixel source map."""
        p = ps[0]
        b = p.crop_box
        mask_box = p.mask[b.y0 : b.y1, b.x0 : b.x1]
        several = len(ps) > 1
        guide_keep = self._guide_keep(ps[guide], guide_region)  # (None: the whole object guided)
        refs, notes = [], [n for q in ps for n in q.notes]
        for i, (r, wf) in enumerate(zip(results, warps)):
            shared = [] if r is None else list(r.info.get("notes", []))  # about the matchers, the same for every reference
            own = [r.info["fallback"]] if r is not None and "fallback" in r.info else []
            if r is not None and r.info.get("reference_scale", 1.0) > 1.0:
                up = r.info["reference_scale"]
                capped = " (the most it is scaled up: a smaller reference is matched at a smaller size than the image's)" if up >= REFERENCE_UPSCALE_MAX - 0.05 else ""
                own.insert(0, f"the reference is much smaller than the image: it was matched scaled up {up:.1f}x{capped}")
            misfit = None if r is None or r.field is None else r.field.misfit_px
            if wf is not None and wf.misfit_factor <= 0:
                own.append(f"the field misses its own matches by {misfit:.1f} px (another view of the object?): its warp is not used")
            elif wf is not None and not wf.use.any():
                own.append(
                    f"the warped reference does not match the image around the mask (ring correlation {wf.ncc:.2f} < 0.5): "
                    + ("its warp is not used" if several else "refined without the warp")
                )
            elif wf is not None and wf.misfit_factor < 1.0 and (combined.source[mask_box] == i).any() and self.model.cfg.hole_fill != "warp":
                # (a warp-input model takes a used warp whole)
                own.append(
                    f"the field misses its own matches by {misfit:.1f} px (another view of the object?): "
                    f"its warp is blended in at {max(1, round(100 * wf.misfit_factor))}% of its trust"
                )
            if i == guide and guide_region is None and region is not None:
                own.append("no warp is trusted in the mask: the whole reference object guided the model (its region is a guess there)")
            elif i == guide and guide_region is not None and guide_keep is None:
                own.append("the aligned region lies off the reference object: the whole reference object guided the model")
            share = float(combined.weight[(combined.source == i) & mask_box].sum() / max(int(mask_box.sum()), 1))
            refs.append(ReferenceResult(
                region=None if r is None else r.region, heatmap=None if r is None else r.heatmap,
                alignment=None if r is None else r.method, ring_ncc=None if wf is None else round(float(wf.ncc), 4),
                warp_fraction=share, notes=shared + own, info={} if r is None else {k_: v for k_, v in r.info.items() if k_ != "notes"},
                field=None if r is None else r.field,
            ))
            notes += shared + ([f"reference #{i + 1}: {n}" for n in own] if several else own)
        notes = list(dict.fromkeys(notes))  # a matcher note is said once, however many references
        source = np.full(p.mask.shape, -1, np.int16)
        drawn = np.where(combined.weight >= 0.5, combined.source + 1, 0).astype(np.int16)
        source[b.y0 : b.y1, b.x0 : b.x1][mask_box] = drawn[mask_box]
        g = refs[guide]
        info = dict(g.info) | ({"ring_ncc": g.ring_ncc} if g.ring_ncc is not None else {})
        return RefineOutput(
            image=result_image, region=region, heatmap=g.heatmap, crop_box=p.crop_box,
            reference_box=self._guide_box(ps[guide], guide_keep), timings=timings, random_weights=self.random_weights,
            alignment=g.alignment, notes=notes, info=info, references=refs, guide=guide, source=source,
            warp_fraction=float(combined.weight[mask_box].mean()) if mask_box.any() else 0.0,
        )

    def _guide_box(self, p: PreparedInputs, keep: np.ndarray | None) -> Box:
        """The square region of the reference whose tokens guide the model: around ``keep``
        (:meth:`_guide_keep`), with ``local_margin``; the whole object's box for None."""
        return p.reference_box if keep is None else square_pad_box(mask_bbox(keep), self.model.cfg.local_margin, keep.shape)

    def _guide(self, p: PreparedInputs, region: np.ndarray | None) -> tuple[np.ndarray, Box]:
        """(the reference pixels whose tokens guide the model, black elsewhere; the square box the
        encoder sees): M* grown on the object (:meth:`_guide_keep`), or the whole object."""
        keep = self._guide_keep(p, region)
        if keep is None:
            return p.reference, p.reference_box
        local = p.matched[0] * keep[..., None]  # (the same pixels as the cut reference's on its object)
        return local, self._guide_box(p, keep)

    def _guide_keep(self, p: PreparedInputs, region: np.ndarray | None) -> np.ndarray | None:
        """The reference pixels that guide ((Hr, Wr) bool): M* grown by ``local_dilate`` x its box
        side, on the object; M* itself where it lies off an estimated object on a photo (the photo
        has pixels there). None: the whole object guides (no region; or one off a given or cut-out
        object, where the reference is black: its tokens would describe black, a dark blotch)."""
        cfg = self.model.cfg
        if region is None:
            return None
        rb = mask_bbox(region)
        grow = max(1, int(round(cfg.local_dilate * max(rb.width, rb.height))))
        # grow by a distance threshold inside M*'s box (a dilation's cost would grow with the kernel)
        pad = grow + 1
        hr, wr = region.shape
        y0, y1, x0, x1 = max(rb.y0 - pad, 0), min(rb.y1 + pad, hr), max(rb.x0 - pad, 0), min(rb.x1 + pad, wr)
        sub = region[y0:y1, x0:x1]
        dist = cv2.distanceTransform((~sub).astype(np.uint8), cv2.DIST_L2, 5)
        keep = np.zeros_like(region)
        keep[y0:y1, x0:x1] = dist <= grow
        keep &= p.reference_mask
        if not keep.any():  # M* off the object: M* itself from the photo where there is one, else the whole object
            return region if p.photo is not None else None
        return keep

    def _redraw(self, p: PreparedInputs, inputs: CropInputs, region, steps, guidance, k, seed, timings) -> np.ndarray:
        """Steps 3-5 of the paper's refinement: the reference cut down to M* guides the denoising of
        the zoom-in crop; returns the crop's new pixels at full resolution ((N, N, 3) uint8)."""
        cfg = self.model.cfg
        # Guidance tokens: the reference cut down to the aligned region (or the whole object).
        t2 = time.perf_counter()
        local, guide_box = self._guide(p, region)
        context = self.model.encode_reference(self.reference_tensor(local, guide_box))  # (1, T, C)
        guided = guidance != 1.0
        if guided:
            context = torch.cat([self.model.reference_encoder.unconditional(1), context])  # (2, T, C)
        timings["encode_reference"] = time.perf_counter() - t2

        # Denoise the crop: inpainting input [z_t, masked image, mask], guided by the tokens.
        t3 = time.perf_counter()
        masked, lmask = inputs.masked, inputs.lmask  # (1, C, h, w), (1, 1, h, w)
        generator = torch.Generator("cpu").manual_seed(seed)
        device = self._weight().device
        shape = (k, cfg.latent_channels) + tuple(masked.shape[2:])  # (masked may carry the trust channel too)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)  # (K, C, h, w) float32 sampler state
        self.scheduler.set_timesteps(steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        batch = (2 if guided else 1) * k  # [uncond x K, cond x K] in one forward
        context = context.repeat_interleave(k, dim=0)  # (batch, T, C)
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for t in self.scheduler.timesteps:
                x = self.scheduler.scale_model_input(torch.cat([latents] * (batch // k)), t)
                eps = self.step(x, t.expand(batch), masked.expand(batch, -1, -1, -1), lmask.expand(batch, -1, -1, -1), context)
                if guided:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + guidance * (eps_c - eps_u)
                latents = self.scheduler.step(eps, t, latents).prev_sample
                bar.update()
        timings["denoise"] = time.perf_counter() - t3

        # Decode, at the crop's full resolution.
        z = latents.to(self._weight().dtype)
        samples = self.decode(z).float()  # (K, 3, S, S)
        if not torch.isfinite(samples).all():
            raise NonFiniteResultError("the model produced non-finite values (NaN or inf): its weights or the settings are broken")
        out = samples.mean(0).permute(1, 2, 0).cpu().numpy()  # (S, S, 3)
        b = p.crop_box
        window = (slice(b.y0, b.y1), slice(b.x0, b.x1))
        if cfg.hole_fill in (*CLASSICAL_FILLS, "warp"):  # the model corrected a classical (or warp) prefill: apply the correction at full resolution
            t4 = time.perf_counter()
            patch = residual_patch(
                p.image[window],
                p.mask[window],
                out,
                inputs.prefill[0].permute(1, 2, 0).float().cpu().numpy(),
                inputs.cmask[0, 0].float().cpu().numpy(),
                blur=cfg.correction_blur,
                mean_var=(samples.var(0, unbiased=False).mean(0) / k).cpu().numpy(),  # (S, S) variance of the mean
                shrink=cfg.correction_shrink,
                base=inputs.base,  # the warp composite, or the fill around the warps (None: the classical fill at full resolution)
                fill=self._base_fill(),
            )
            timings["fill"] += time.perf_counter() - t4  # the full-resolution fill the correction goes on
            return patch
        small = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        return cv2.resize(small, (b.width, b.height), interpolation=cv2.INTER_CUBIC)
