"""ComfyUI nodes for refine-by-align (issue 15 part 3).

ComfyUI's tensor conventions: ``IMAGE`` is a float32 tensor (B, H, W, C) in [0, 1] (C = 3; a 4th,
alpha, channel is dropped), ``MASK`` a float tensor (B, H, W) (a single (H, W) mask is taken as
B = 1), values of 0.5 or more marking the artifact (a mask with none that high but some above 0,
e.g. a faint soft mask, marks every nonzero pixel: ``refine_by_align.io.mask_from_levels``). Every node works item by item over the batch; a
reference (and its mask) of batch 1 is used for every item, a mask of batch 1 for every image.
The Refine node takes up to two more references (``reference_2`` / ``reference_3``, IMAGE, each with
an optional MASK): each part of the artifact is then taken from the reference that fits it best.
Any shape mismatch is a ``ValueError`` naming the inputs. ComfyUI itself is not imported here: the
nodes are plain classes, so they can be called (and tested) without it.

The pipeline is loaded once per model name and kept (:func:`get_pipeline`). Imports are absolute
(``refine_by_align....``) so the package also works when ComfyUI imports this folder under another
module name (a symlink in ``ComfyUI/custom_nodes``).
"""

from __future__ import annotations

import contextlib
import threading

import cv2
import numpy as np
import torch
from PIL import Image

from refine_by_align.config import DETECT_METHODS

CATEGORY = "refine-by-align"

_PIPELINES: dict[str, object] = {}
_LOCK = threading.Lock()


def get_pipeline(name: str = "default"):
    """The pipeline for ``name`` (``default``: the shipped model, or a model folder), loaded on first
    use and cached for the life of the process."""
    name = str(name or "default").strip() or "default"
    with _LOCK:
        pipe = _PIPELINES.get(name)
        if pipe is None:
            from refine_by_align.loading import load_pipeline

            pipe = load_pipeline(name)
            _PIPELINES[name] = pipe
        return pipe


# ------------------------------------------------------------------------------ tensor conversion


def _images(t, what: str) -> torch.Tensor:
    """An IMAGE input as a (B, H, W, 3) float32 CPU tensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what}: expected an IMAGE tensor (B, H, W, C), got {type(t).__name__}")
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an IMAGE tensor (B, H, W, C) with C = 3, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{what}: empty batch")
    t = t.detach().to("cpu", torch.float32)
    _check_values(t, what)
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:3], 3)
    return t[..., :3]


def _check_values(t: torch.Tensor, what: str) -> None:
    """ComfyUI's IMAGE and MASK hold values in 0..1: a picture in 0..255 or -1..1 (another node's
    scale), NaN or inf is a ValueError naming the input (it was clipped, black or passed on)."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise ValueError(f"{what}: {int((~finite).sum())} values are NaN or infinite")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"{what}: values must be in 0..1 (ComfyUI's IMAGE and MASK), got {lo:g}..{hi:g}")


def _masks(t, what: str) -> torch.Tensor:
    """A MASK input as a (B, H, W) float32 CPU tensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what}: expected a MASK tensor (B, H, W), got {type(t).__name__}")
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 4 and t.shape[-1] == 1:  # (B, H, W, 1)
        t = t[..., 0]
    if t.ndim != 3:
        raise ValueError(f"{what}: expected a MASK tensor (B, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{what}: empty batch")
    t = t.detach().to("cpu", torch.float32)
    _check_values(t, what)
    return t


def _check_pair(images: torch.Tensor, masks: torch.Tensor, what_i: str, what_m: str) -> None:
    if tuple(masks.shape[1:]) != tuple(images.shape[1:3]):
        raise ValueError(
            f"{what_m} is {masks.shape[2]}x{masks.shape[1]} (W x H) but {what_i} is {images.shape[2]}x{images.shape[1]}: "
            "they must be the same size"
        )
    if masks.shape[0] not in (1, images.shape[0]):
        give = "a batch of 1" if images.shape[0] == 1 else f"a batch of 1 or {images.shape[0]}"
        raise ValueError(f"{what_m} has a batch of {masks.shape[0]} but {what_i} has {images.shape[0]}: give {what_m} {give}")


def _batch(n: int, t: torch.Tensor | None, what: str) -> None:
    if t is not None and t.shape[0] not in (1, n):
        raise ValueError(f"{what} has a batch of {t.shape[0]} but image has {n}: give 1 (used for every image) or {n}")


def _item(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if t is None else t[i if t.shape[0] > 1 else 0]


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (H, W, 3) uint8."""
    a = np.nan_to_num(img.numpy(), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def to_bool(mask: torch.Tensor) -> np.ndarray:
    """A MASK item (H, W) in [0, 1] -> bool, read as a mask file's grey levels are."""
    from refine_by_align.io import mask_from_levels

    return mask_from_levels(mask.numpy(), 1.0)


def _inputs(image, mask, reference, reference_mask):
    images = _images(image, "image")
    masks = _masks(mask, "mask")
    refs = _images(reference, "reference")
    _check_pair(images, masks, "image", "mask")
    n = images.shape[0]
    _batch(n, refs, "reference")
    ref_masks = None
    if reference_mask is not None:
        ref_masks = _masks(reference_mask, "reference_mask")
        _check_pair(refs, ref_masks, "reference", "reference_mask")
        _batch(n, ref_masks, "reference_mask")
    return images, masks, refs, ref_masks


EXTRA_REFERENCES = (2, 3)  # the Refine node's optional reference_2 / reference_3


def _extra_references(n: int, given: dict) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The optional further references (``reference_k`` / ``reference_mask_k``) that were connected, in
    order, checked as the first one is; a mask without its reference is a ValueError."""
    extra = []
    for k in EXTRA_REFERENCES:
        ref, ref_mask = given.get(f"reference_{k}"), given.get(f"reference_mask_{k}")
        if ref is None:
            if ref_mask is not None:
                raise ValueError(f"reference_mask_{k} is connected but reference_{k} is not: connect the reference it belongs to")
            continue
        refs = _images(ref, f"reference_{k}")
        _batch(n, refs, f"reference_{k}")
        masks = None
        if ref_mask is not None:
            masks = _masks(ref_mask, f"reference_mask_{k}")
            _check_pair(refs, masks, f"reference_{k}", f"reference_mask_{k}")
            _batch(n, masks, f"reference_mask_{k}")
        extra.append((refs, masks))
    return extra


def _item_arrays(images, masks, refs, ref_masks, i):
    img = Image.fromarray(to_uint8(images[i]))
    m = to_bool(_item(masks, i))
    ref = Image.fromarray(to_uint8(_item(refs, i)))
    rm = None if ref_masks is None else to_bool(_item(ref_masks, i))
    return img, m, ref, rm


# ------------------------------------------------------------------------------------------ nodes


class RefineByAlignRefine:
    """Redraw the masked artifacts of each image from the reference. Pixels outside the (slightly
    dilated) mask are returned exactly as given; an item whose mask is empty is returned unchanged."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "refine"
    DESCRIPTION = "Repair the masked artifacts of an image from a reference photo of the same object (Refine-by-Align)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "mask": ("MASK",),
                "reference": ("IMAGE",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "sampling steps; 0: the model's own default "
                                                                                  "(1 for the shipped model)"}),
            },
            "optional": {
                "reference_mask": ("MASK",),
                "model": ("STRING", {"default": "default"}),
                "reference_2": ("IMAGE", {"tooltip": "another photo of the object (optional): each part of the "
                                                     "artifact comes from the reference that fits it best"}),
                "reference_mask_2": ("MASK",),
                "reference_3": ("IMAGE", {"tooltip": "a third photo of the object (optional)"}),
                "reference_mask_3": ("MASK",),
            },
        }

    def refine(self, image, mask, reference, seed=0, steps=0, reference_mask=None, model="default",
               reference_2=None, reference_mask_2=None, reference_3=None, reference_mask_3=None):
        images, masks, refs, ref_masks = _inputs(image, mask, reference, reference_mask)
        extra = _extra_references(images.shape[0], {
            "reference_2": reference_2, "reference_mask_2": reference_mask_2,
            "reference_3": reference_3, "reference_mask_3": reference_mask_3,
        })
        pipe = None
        out = images.clone()
        n = images.shape[0]
        items = []
        for i in range(n):
            img, m, ref, rm = _item_arrays(images, masks, refs, ref_masks, i)
            if not m.any():
                continue
            if extra:  # several references: lists, one mask (or None) each
                ref = [ref] + [Image.fromarray(to_uint8(_item(r, i))) for r, _ in extra]
                rm = [rm] + [None if mk is None else to_bool(_item(mk, i)) for _, mk in extra]
            items.append((i, img, m, ref, rm))
        if items:
            pipe = get_pipeline(model)
            _check_items(pipe, items, n)  # (every item's inputs before any is refined)
        for i, img, m, ref, rm in items:
            with _item_errors(i, n):
                res = pipe(img, m, ref, rm, num_inference_steps=int(steps) or None, seed=int(seed))  # (0: the model's default)
            refined_u8 = np.asarray(res.image, dtype=np.uint8)
            # the pipeline leaves pixels outside the dilated mask bit-identical in uint8; take only
            # the pixels it changed there, so every other pixel keeps its exact float value
            r = int(pipe.model.cfg.paste_dilate) + 1
            region = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))).astype(bool)
            region &= (refined_u8 != np.asarray(img)).any(-1)
            sel = torch.from_numpy(region)
            out[i][sel] = torch.from_numpy(refined_u8[region].astype(np.float32) / 255.0)
        return (out,)


@contextlib.contextmanager
def _item_errors(i: int, n: int):
    """A refused input of a batch's item ``i`` (0-based) of ``n`` says which item it is."""
    from refine_by_align.io import InputError

    try:
        yield
    except InputError as e:
        if n == 1:
            raise
        raise InputError(f"item {i + 1} of {n}: {e}") from None


def _check_items(pipe, items, n: int) -> None:
    """Every item's inputs checked (the pipeline's own checks, its crops) before any is refined: a
    bad third item was found only after the first two had run."""
    for i, img, m, ref, rm in items:
        with _item_errors(i, n):
            pipe.prepare_references(img, m, ref, rm)


class RefineByAlignAlign:
    """The alignment stage alone: for each image, where its masked part lies on the reference
    (M*, a MASK of the reference's size) and a heat-map picture of it over the reference (IMAGE)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("reference_region", "heatmap")
    FUNCTION = "align"
    DESCRIPTION = "Find the region of the reference that corresponds to the masked part of the image."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "mask": ("MASK",),
                "reference": ("IMAGE",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
            },
            "optional": {
                "reference_mask": ("MASK",),
                "method": (["dense", "attention"], {"default": "dense"}),
                "model": ("STRING", {"default": "default"}),
            },
        }

    def align(self, image, mask, reference, seed=0, reference_mask=None, method="dense", model="default"):
        from refine_by_align.visualize import render_heatmap_overlay

        images, masks, refs, ref_masks = _inputs(image, mask, reference, reference_mask)
        n = images.shape[0]
        hr, wr = refs.shape[1:3]
        regions = torch.zeros((n, hr, wr), dtype=torch.float32)
        heat = torch.zeros((n, hr, wr, 3), dtype=torch.float32)
        items = []
        for i in range(n):
            img, m, ref, rm = _item_arrays(images, masks, refs, ref_masks, i)
            if not m.any():  # nothing to align: an empty region, the reference as it is
                heat[i] = _item(refs, i)
                continue
            items.append((i, img, m, ref, rm))
        if items:
            _check_items(get_pipeline(model), items, n)
        for i, img, m, ref, rm in items:
            with _item_errors(i, n):
                res = get_pipeline(model).align(img, m, ref, rm, seed=int(seed), alignment=method)
            regions[i] = torch.from_numpy(res.region.astype(np.float32))
            pic = render_heatmap_overlay(ref, res.heatmap, alpha=0.6)
            heat[i] = torch.from_numpy(np.asarray(pic, dtype=np.float32) / 255.0)
        return (regions, heat)


_MATCHER: list = []


def get_matcher():
    """The ALIKED matcher for detection (None where its weights are not found), loaded once."""
    with _LOCK:
        if not _MATCHER:
            from refine_by_align.pipelines.detect import load_matcher

            _MATCHER.append(load_matcher())
        return _MATCHER[0]


class RefineByAlignDetect:
    """Propose the artifact mask of each image: where it disagrees with the reference warped onto
    it (a MASK of the image's size) and the disagreement as a heat-map picture over the image."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "heatmap")
    FUNCTION = "detect"
    DESCRIPTION = "Suggest an artifact mask: where the image disagrees with the aligned reference."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "reference": ("IMAGE",),
            },
            "optional": {
                "reference_mask": ("MASK",),
                "method": (list(DETECT_METHODS), {"default": "learned"}),
                "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                        "tooltip": "0: the method's default (learned: probability 0.8; colour: 6 MADs)"}),
            },
        }

    def detect(self, image, reference, reference_mask=None, method="learned", threshold=0.0):
        from refine_by_align.pipelines.detect import detect
        from refine_by_align.visualize import render_heatmap_overlay

        images = _images(image, "image")
        refs = _images(reference, "reference")
        n = images.shape[0]
        _batch(n, refs, "reference")
        ref_masks = None
        if reference_mask is not None:
            ref_masks = _masks(reference_mask, "reference_mask")
            _check_pair(refs, ref_masks, "reference", "reference_mask")
            _batch(n, ref_masks, "reference_mask")
        h, w = images.shape[1:3]
        masks = torch.zeros((n, h, w), dtype=torch.float32)
        heat = torch.zeros((n, h, w, 3), dtype=torch.float32)
        for i in range(n):
            img = to_uint8(images[i])
            rm = None if ref_masks is None else to_bool(_item(ref_masks, i))
            det = detect(img, to_uint8(_item(refs, i)), rm, aliked=get_matcher(), method=method,
                         threshold=float(threshold) if threshold and threshold > 0 else None)
            masks[i] = torch.from_numpy(det.mask.astype(np.float32))
            pic = render_heatmap_overlay(Image.fromarray(img), det.heatmap, alpha=0.6)
            heat[i] = torch.from_numpy(np.asarray(pic, dtype=np.float32) / 255.0)
        return (masks, heat)


NODE_CLASS_MAPPINGS = {
    "RefineByAlignRefine": RefineByAlignRefine,
    "RefineByAlignAlign": RefineByAlignAlign,
    "RefineByAlignDetect": RefineByAlignDetect,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RefineByAlignRefine": "Refine-by-Align: Refine",
    "RefineByAlignAlign": "Refine-by-Align: Align",
    "RefineByAlignDetect": "Refine-by-Align: Detect",
}
