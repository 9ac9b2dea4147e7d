"""Evaluation metrics: correspondence IoU, masked PSNR, box SSIM and the field's error.

All functions are pure: they take numpy arrays and return a Python float.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..zoom import Box, mask_bbox

__all__ = ["iou", "miou", "masked_psnr", "box_ssim", "grown_box", "field_error", "PSNR_CAP_DB", "FIELD_ERROR_CAP_PX"]

#: PSNR returned for identical pixels (and the upper bound of every PSNR value).
PSNR_CAP_DB = 100.0

#: :func:`field_error`'s cap on one pixel's error: a field that misses by more is wrong there, and
#: how far it misses says little (one wrong pixel must not outweigh a thousand right ones).
FIELD_ERROR_CAP_PX = 3.0

_SSIM_SIGMA = 1.5
_SSIM_WIN = 11  # skimage's Gaussian window for sigma 1.5 (truncate 3.5): 2 * int(3.5 * 1.5 + 0.5) + 1


def _as_bool_mask(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {a.shape}")
    return a.astype(bool, copy=False)


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two boolean (H, W) masks.

    ``pred`` is resized to ``true``'s size with nearest-neighbour sampling when the sizes differ.
    Two empty masks agree perfectly and give 1.0.
    """
    pred = _as_bool_mask(pred, "pred")
    true = _as_bool_mask(true, "true")
    if pred.shape != true.shape:
        resized = cv2.resize(
            pred.astype(np.uint8), (true.shape[1], true.shape[0]), interpolation=cv2.INTER_NEAREST
        )
        pred = resized.astype(bool)
    union = np.logical_or(pred, true).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, true).sum() / union)


#: The per-image IoU; the benchmark's mIoU is its mean over cases.
miou = iou


def _check_pair(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    output = np.asarray(output)
    target = np.asarray(target)
    if output.shape != target.shape:
        raise ValueError(f"output shape {output.shape} does not match target shape {target.shape}")
    if output.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got {output.shape}")
    mask = _as_bool_mask(mask, "mask")
    if mask.shape != output.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image size {output.shape[:2]}")
    if not mask.any():
        raise ValueError("mask is empty: nothing to measure")
    return output, target, mask


def masked_psnr(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB (peak 255) over the pixels where ``mask`` is True, all channels together.

    ``output``/``target``: uint8 (H, W, 3) (or (H, W)); ``mask``: bool (H, W), non-empty.
    Identical pixels give :data:`PSNR_CAP_DB` (100 dB); no value exceeds it.
    """
    output, target, mask = _check_pair(output, target, mask)
    diff = output[mask].astype(np.float64) - target[mask].astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse <= 0.0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * math.log10(255.0 * 255.0 / mse)))


def grown_box(mask: np.ndarray, grow: int, min_size: int = 1) -> Box:
    """The mask's bounding box grown by ``grow`` px on every side and clamped to the image; then, if
    still smaller than ``min_size`` on a side, widened around its centre (as far as the image allows)."""
    h, w = mask.shape
    b = mask_bbox(mask)
    x0, y0 = max(b.x0 - grow, 0), max(b.y0 - grow, 0)
    x1, y1 = min(b.x1 + grow, w), min(b.y1 + grow, h)

    def widen(lo: int, hi: int, size: int) -> tuple[int, int]:
        need = min(min_size, size)
        if hi - lo >= need:
            return lo, hi
        lo = max(0, min(lo - (need - (hi - lo)) // 2, size - need))
        return lo, lo + need

    x0, x1 = widen(x0, x1, w)
    y0, y1 = widen(y0, y1, h)
    return Box(x0, y0, x1, y1)


def box_ssim(output: np.ndarray, target: np.ndarray, mask: np.ndarray, grow: int = 16) -> float:
    """SSIM (mean over RGB channels, Gaussian window sigma 1.5 / 11 px, data range 255) on the mask's
    bounding box grown by ``grow`` px and clamped to the image.

    Boxes smaller than the 11 px window are widened inside the image; images smaller than the window
    are reflect-padded. Identical inputs give 1.0.
    """
    from skimage.metrics import structural_similarity  # lazy: skimage is slow to import

    output, target, mask = _check_pair(output, target, mask)
    b = grown_box(mask, grow, min_size=_SSIM_WIN)
    o = output[b.y0 : b.y1, b.x0 : b.x1].astype(np.float64)
    t = target[b.y0 : b.y1, b.x0 : b.x1].astype(np.float64)
    ph, pw = max(0, _SSIM_WIN - o.shape[0]), max(0, _SSIM_WIN - o.shape[1])
    if ph or pw:
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)) + ((0, 0),) * (o.ndim - 2)
        o = np.pad(o, pad, mode="reflect" if min(o.shape[:2]) > 1 else "edge")
        t = np.pad(t, pad, mode="reflect" if min(t.shape[:2]) > 1 else "edge")
    value = structural_similarity(
        o,
        t,
        gaussian_weights=True,
        sigma=_SSIM_SIGMA,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1 if o.ndim == 3 else None,
    )
    return float(value)


def field_error(
    box: Box, xy: np.ndarray, truth_origin: tuple[int, int], truth_xy: np.ndarray, mask: np.ndarray, cap: float = FIELD_ERROR_CAP_PX
) -> tuple[float, float, float] | None:
    """How far a correspondence field is from the true one inside the mask (end-point error, in
    reference pixels).

    ``box`` / ``xy`` (h, w, 2): the field's reference position (x, y) for each image pixel of
    ``box``; ``truth_origin`` (x0, y0) / ``truth_xy`` (h', w', 2): the true positions of the image
    pixels of the box starting there, NaN where the truth leaves the reference; ``mask`` (H, W)
    bool over the image. Returns (mean error with each pixel's capped at ``cap`` px, median
    error, the fraction of the mask's pixels measured) over the mask pixels that both cover
    with a finite position, or None where there are none."""
    mask = _as_bool_mask(mask, "mask")
    xy = np.asarray(xy, dtype=np.float64)
    truth_xy = np.asarray(truth_xy, dtype=np.float64)
    if xy.shape != (box.height, box.width, 2):
        raise ValueError(f"field shape {xy.shape} does not match its box {box.width}x{box.height} (expected (h, w, 2))")
    if truth_xy.ndim != 3 or truth_xy.shape[2] != 2:
        raise ValueError(f"true field must be (h, w, 2), got {truth_xy.shape}")
    tx0, ty0 = int(truth_origin[0]), int(truth_origin[1])
    tb = Box(tx0, ty0, tx0 + truth_xy.shape[1], ty0 + truth_xy.shape[0])
    h, w = mask.shape
    x0, y0 = max(box.x0, tb.x0, 0), max(box.y0, tb.y0, 0)
    x1, y1 = min(box.x1, tb.x1, w), min(box.y1, tb.y1, h)
    total = int(mask.sum())
    if x1 <= x0 or y1 <= y0 or total == 0:
        return None
    pred = xy[y0 - box.y0 : y1 - box.y0, x0 - box.x0 : x1 - box.x0]
    true = truth_xy[y0 - tb.y0 : y1 - tb.y0, x0 - tb.x0 : x1 - tb.x0]
    inside = mask[y0:y1, x0:x1] & np.isfinite(pred).all(axis=-1) & np.isfinite(true).all(axis=-1)
    if not inside.any():
        return None
    err = np.linalg.norm(pred[inside] - true[inside], axis=-1)
    return float(np.minimum(err, cap).mean()), float(np.median(err)), float(inside.sum() / total)
