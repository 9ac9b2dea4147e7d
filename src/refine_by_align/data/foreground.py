"""Estimating a reference photo's object when no mask is given (a classical estimate, no model)."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from PIL import Image

from ..memo import ContentCache

__all__ = ["estimate_foreground", "estimate_note", "clear_foreground_cache", "plain_frame", "on_plain_background"]

_ESTIMATES = ContentCache(8)  # (pixels, settings) -> (H, W) bool estimate


def clear_foreground_cache() -> None:
    """Forget the remembered estimates (a benchmark's cold timing, or to free memory)."""
    _ESTIMATES.clear()


def estimate_foreground(image: Image.Image | np.ndarray, work_side: int = 256, margin: float = 0.05,
                        iterations: int = 5, min_fraction: float = 0.1, beside: Callable[[], object] | None = None) -> np.ndarray:
    """The object of an object photo (a reference) as an (H, W) bool mask, found with no trained model.

    GrabCut (OpenCV) started from a rectangle: a frame of ``margin`` x the width / height around
    the picture is background, everything inside it may be object; ``iterations`` rounds of
    colour models and graph cut, on a copy whose longer side is ``work_side`` px. Then the
    connected parts of at least a fifth of the largest one are kept, their holes are filled, and
    the mask is scaled back to the picture's size. Deterministic (OpenCV's RNG is seeded).

    It assumes what reference photos usually are: one object, inside the frame, apart from its
    background in colour. Measured against the salient-object masks of all 105 photos in
    ``../shared/data/dreambooth-train`` (README, "reference mask"): mean IoU 0.70 (0.78 without the
    ``min_fraction`` floor), 0.77 (0.83) on the 21 photos of the four held-out subjects, against
    0.23 / 0.26 for the whole photo; 0.99 on both shipped demo references. Returns an all-True mask (the
    whole picture is the object, as when no estimate is made) when nothing plausible is found: no
    part at all, or parts covering under ``min_fraction`` or over 95% of the picture. (A reference
    photo shows its object large; a small part is rather one detail of a picture that is all
    object, such as a texture or a scene, where cutting the rest away would hide the match.)
    On a plain background (:func:`plain_frame`: a cut-out or studio shot, whose frame is nearly one
    colour) the floor is 1% instead (``PLAIN_MIN_FRACTION``), as a small object is still the object:
    on the 48 plain-background references of three case sets (the affine and nonrigid cases of val,
    val2 and the training-subject set: the photo warped and cut out onto black, the object 2-38%
    of the picture) the floor threw away 15 good estimates (mean IoU 0.69 with it, 0.95 without);
    no photo of the dataset has a frame that plain (at most 77% of it one colour). There the
    outline GrabCut found on its small copy is then redrawn at full resolution from the
    background's colour (:data:`PLAIN_OUTLINE_PX`): on the 128 cut-out references of the validation
    suite the IoU goes 0.959 -> 0.976 (median 0.977 -> 0.996).

    The estimates of the last 8 pictures are remembered, keyed by a digest of the pixels and the
    settings (a user refining several masks against one reference without a mask pays GrabCut's
    0.2-0.7 s once); each call returns its own copy. ``beside``: called just before GrabCut runs,
    and only then (not for a remembered estimate), to start work of its own on the core GrabCut
    leaves idle (the pipeline starts the image's side of the matching there).
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"estimate_foreground needs an 8-bit RGB picture, got {rgb.dtype} of shape {rgb.shape}")
    key = ContentCache.key(rgb, work_side, margin, iterations, min_fraction)
    hit = _ESTIMATES.get(key)
    if hit is not None:
        return hit.copy()
    if beside is not None:
        beside()
    estimate = _grabcut_estimate(rgb, work_side, margin, iterations, min_fraction)
    _ESTIMATES.put(key, estimate.copy())
    return estimate


#: A frame in which at least this share of the pixels is within PLAIN_TOLERANCE grey levels (every
#: channel) of its median colour is a plain background (:func:`plain_frame`).
PLAIN_SHARE = 0.85
PLAIN_TOLERANCE = 8


def estimate_note(mask: np.ndarray) -> str:
    """The one-line note that says what :func:`estimate_foreground` gave (the refinement's and the
    detection's, worded the same)."""
    if mask.all():
        return "no reference mask, and no object stands out from the photo's background: the whole photo is the reference"
    return f"no reference mask: the object was estimated from the photo ({mask.mean():.0%} of it); give a reference mask to set it"


def plain_frame(rgb: np.ndarray, margin_px: tuple[int, int], share: float = PLAIN_SHARE, tolerance: int = PLAIN_TOLERANCE) -> bool:
    """Whether the frame of ``margin_px`` (x, y) px around ``rgb`` (H, W, 3) uint8 is a plain
    background: at least ``share`` of its pixels within ``tolerance`` levels of the frame's median
    colour in every channel (an object cut out onto one colour, a studio shot). Photos of the
    dataset reach at most 0.77; the cut-out references of the validation cases 0.87-1.0."""
    px = _frame_pixels(rgb, margin_px)
    if len(px) == 0:
        return False
    median = np.median(px, axis=0)
    return bool((np.abs(px - median).max(axis=1) <= tolerance).mean() >= share)


def _frame_pixels(rgb: np.ndarray, margin_px: tuple[int, int]) -> np.ndarray:
    """The colours of the frame of ``margin_px`` (x, y) px around ``rgb`` (H, W, 3) uint8: (N, 3) int16."""
    h, w = rgb.shape[:2]
    mx, my = margin_px
    frame = np.ones((h, w), bool)
    frame[my : h - my, mx : w - mx] = False
    return rgb[frame].astype(np.int16)


def on_plain_background(rgb: np.ndarray, work_side: int = 256, margin: float = 0.05) -> bool:
    """Whether a photo's frame is a plain background (:func:`plain_frame` on the copy and frame
    :func:`estimate_foreground` looks at with the same ``work_side`` and ``margin``): an object
    cut out onto one colour or a studio shot, whose object the estimate finds closely (IoU 0.98 on
    the project's cut-out references), as opposed to a photo with a background, where it can miss
    a whole part of the object (0.70 on the dataset's photos)."""
    small, frame = _working_copy(np.asarray(rgb), work_side, margin)
    return min(frame) >= 1 and plain_frame(small, frame)


def _working_copy(rgb: np.ndarray, work_side: int, margin: float) -> tuple[np.ndarray, tuple[int, int]]:
    """(the picture scaled down by area until its longer side is at most ``work_side``, contiguous;
    its frame's width and height in px, ``margin`` of each side): what GrabCut and
    :func:`plain_frame` look at."""
    h, w = rgb.shape[:2]
    scale = min(1.0, work_side / max(h, w))
    small = rgb
    if scale < 1.0:
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small)
    return small, (round(margin * small.shape[1]), round(margin * small.shape[0]))


#: On a plain background the estimate's floor is this share of the picture instead of min_fraction
#: (a speck of dust or a stray pixel is still not an object; the cut-out references measured: 2-38%).
PLAIN_MIN_FRACTION = 0.01


def _grabcut_estimate(rgb: np.ndarray, work_side: int, margin: float, iterations: int, min_fraction: float) -> np.ndarray:
    """:func:`estimate_foreground` without the memory."""
    h, w = rgb.shape[:2]
    small, (mx, my) = _working_copy(rgb, work_side, margin)
    sh, sw = small.shape[:2]
    if sw - 2 * mx < 2 or sh - 2 * my < 2 or mx < 1 or my < 1:  # too small to have a frame and an inside
        return np.ones((h, w), bool)

    gc = np.zeros((sh, sw), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(small, gc, (mx, my, sw - 2 * mx, sh - 2 * my), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a degenerate colour model (a flat picture): no estimate
        return np.ones((h, w), bool)
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)

    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.ones((h, w), bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    fg = np.isin(comp, np.flatnonzero(areas >= 0.2 * areas.max()) + 1).astype(np.uint8)
    padded = np.pad(fg, 1)  # holes: the background not connected to the outside
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)
    fg = (padded | (1 - outside))[1:-1, 1:-1]
    plain = plain_frame(small, (mx, my))
    floor = min(min_fraction, PLAIN_MIN_FRACTION) if plain else min_fraction  # a small object on a plain background is still the object
    if not floor <= fg.mean() <= 0.95:
        return np.ones((h, w), bool)
    if (sh, sw) != (h, w):
        fg = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    fg = fg.astype(bool)
    if plain and PLAIN_OUTLINE_PX > 0:
        fg = _outline_on_plain(rgb, fg, (round(margin * w), round(margin * h)), PLAIN_OUTLINE_PX)
    return fg


#: On a plain background, :func:`estimate_foreground` redraws the estimate's outline at the
#: picture's full resolution within this many px of it (:func:`_outline_on_plain`; 0: not). GrabCut
#: works on a copy of at most 256 px, and its outline, scaled back, is rounded by a pixel or two:
#: on the 128 cut-out references of the validation suite the IoU with the true masks goes 0.959 ->
#: 0.976 (median 0.977 -> 0.996) for 0.015 s (MODEL_CARD.md, thirty-fifth session).
PLAIN_OUTLINE_PX = 3


def _outline_on_plain(rgb: np.ndarray, fg: np.ndarray, frame_px: tuple[int, int], reach: int, tolerance: int = PLAIN_TOLERANCE) -> np.ndarray:
    """``fg`` ((H, W) bool, an estimate of the object on ``rgb``, (H, W, 3) uint8, whose frame of
    ``frame_px`` (x, y) px is a plain background) with each pixel within ``reach`` px of its outline
    decided again at full resolution: background where its colour is within ``tolerance`` levels
    (every channel) of the frame's median colour, object elsewhere. Away from the outline the
    estimate stands (an object's own dark or background-coloured parts stay the object)."""
    px = _frame_pixels(rgb, frame_px)
    if len(px) == 0:
        return fg
    background = np.median(px, axis=0)  # (3,)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    f8 = fg.astype(np.uint8)
    near = (cv2.dilate(f8, disk) > 0) & ~(cv2.erode(f8, disk) > 0)  # (H, W) bool: within reach of the outline
    out = fg.copy()
    out[near] = np.abs(rgb[near].astype(np.int16) - background).max(axis=1) > tolerance
    return out
