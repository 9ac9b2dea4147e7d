"""Zoom-in crop and paste-back (Sec. 3.4-3.5), shared by training-pair construction and inference.

The same square crop is used to build training inputs and to refine at test time, so the model
always sees artifacts at the scale it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Box", "zoom_box", "mask_bbox", "crop_resize", "paste_back", "feather_alpha", "square_pad_box", "rescaled"]


@dataclass(frozen=True)
class Box:
    """Half-open pixel box [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def mask_bbox(mask: np.ndarray) -> Box:
    """Tight box of the True pixels of a (H, W) mask. Raises ValueError on an empty mask."""
    m = np.asarray(mask)
    rows, cols = m.any(axis=1), m.any(axis=0)  # (the rows and columns holding a pixel: not every pixel's position)
    if not rows.any():
        raise ValueError("mask is empty")
    y0, x0 = int(rows.argmax()), int(cols.argmax())
    y1, x1 = len(rows) - int(rows[::-1].argmax()), len(cols) - int(cols[::-1].argmax())
    return Box(x0, y0, x1, y1)


def zoom_box(mask: np.ndarray, grow: float = 2.0, min_size: int = 32) -> Box:
    """A square around the mask: its box's longer side times ``grow``, at least ``min_size``, kept
    inside the image (shifted inward where it can, shrunk only if the image is smaller)."""
    h, w = mask.shape
    b = mask_bbox(mask)
    side = int(round(max(b.width, b.height) * grow))
    side = max(side, min_size, 1)
    side = min(side, h, w) if side > min(h, w) else side
    side = min(side, max(h, w))
    cx = (b.x0 + b.x1) / 2.0
    cy = (b.y0 + b.y1) / 2.0
    sw = min(side, w)
    sh = min(side, h)
    x0 = int(round(cx - sw / 2.0))
    y0 = int(round(cy - sh / 2.0))
    x0 = min(max(x0, 0), w - sw)
    y0 = min(max(y0, 0), h - sh)
    return Box(x0, y0, x0 + sw, y0 + sh)


def square_pad_box(box: Box, margin: float, shape: tuple[int, int]) -> Box:
    """Grow ``box`` by ``margin`` (fraction of its longer side) on each side and make it square.
    The result may extend outside the image (``crop_resize`` pads with zeros there)."""
    side = max(box.width, box.height)
    side = int(round(side * (1.0 + 2.0 * margin)))
    side = max(side, 1)
    cx = (box.x0 + box.x1) / 2.0
    cy = (box.y0 + box.y1) / 2.0
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    return Box(x0, y0, x0 + side, y0 + side)


def crop_resize(array: np.ndarray, box: Box, size: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """Crop ``box`` out of an (H, W) or (H, W, C) array (zero padding outside) and resize to size^2."""
    h, w = array.shape[:2]
    pad_shape = (box.height, box.width) + array.shape[2:]
    out = np.zeros(pad_shape, dtype=array.dtype)
    sx0, sy0 = max(box.x0, 0), max(box.y0, 0)
    sx1, sy1 = min(box.x1, w), min(box.y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - box.y0 : sy1 - box.y0, sx0 - box.x0 : sx1 - box.x0] = array[sy0:sy1, sx0:sx1]
    if out.dtype == bool:
        resized = cv2.resize(out.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_AREA)
        return resized >= 128
    if out.shape[0] == size and out.shape[1] == size:
        return out
    if size > max(out.shape[:2]) and interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_CUBIC
    return cv2.resize(out, (size, size), interpolation=interpolation)


def feather_alpha(mask: np.ndarray, dilate_px: int, feather_px: int) -> np.ndarray:
    """Blend weights: 1 on the dilated mask's core, a smooth ramp of ``feather_px`` pixels toward its
    edge, and exactly 0 outside the dilation of ``mask`` by ``dilate_px`` pixels."""
    m = mask.astype(np.uint8)
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        region = cv2.dilate(m, k)
    else:
        region = m
    if feather_px <= 0:
        return region.astype(np.float32)
    # distance from outside the region, in pixels; ramp over feather_px, but never below 1 on mask
    dist = cv2.distanceTransform(region, cv2.DIST_L2, 5)
    alpha = np.clip(dist / float(feather_px), 0.0, 1.0)
    alpha[m > 0] = 1.0  # the artifact itself is always fully replaced
    alpha[region == 0] = 0.0
    return alpha.astype(np.float32)


def paste_back(
    image: np.ndarray,
    patch: np.ndarray,
    box: Box,
    mask: np.ndarray,
    dilate_px: int = 3,
    feather_px: int = 3,
) -> np.ndarray:
    """Resize ``patch`` (S, S, 3 uint8) to ``box`` and blend it into ``image`` (H, W, 3 uint8) inside
    the dilated ``mask`` (H, W bool). Pixels outside the dilated mask are returned bit-identical."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    out = image.copy()
    resized = cv2.resize(patch, (box.width, box.height), interpolation=cv2.INTER_CUBIC)
    # the weights computed on the box grown by more than the dilation and the ramp reach: within the
    # box they are those of the whole image (a 2048 px picture's took 1 s)
    h, w = mask.shape
    g = max(int(dilate_px), 0) + max(int(feather_px), 0) + 2
    y0, x0 = max(box.y0 - g, 0), max(box.x0 - g, 0)
    window = feather_alpha(mask[y0 : min(box.y1 + g, h), x0 : min(box.x1 + g, w)], dilate_px, feather_px)
    alpha = window[box.y0 - y0 : box.y1 - y0, box.x0 - x0 : box.x1 - x0, None]
    region = out[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)
    blended = region * (1.0 - alpha) + resized.astype(np.float32) * alpha
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    keep = alpha[..., 0] <= 0.0
    blended[keep] = out[box.y0 : box.y1, box.x0 : box.x1][keep]
    out[box.y0 : box.y1, box.x0 : box.x1] = blended
    return out


def rescaled(p: np.ndarray, f) -> np.ndarray:
    """Pixel positions ``p`` (pixel centres at whole numbers; (N, 2) x, y with ``f`` = (fx, fy), or
    positions along one axis with a number ``f``) on a picture scaled by ``f``: (p + 0.5) * f - 0.5,
    in ``p``'s dtype. The one convention the matchers' bounded resolutions, the alignment's working
    scale (:func:`~refine_by_align.pipelines.fields.field_at_full_scale`) and detection use to move
    positions between scales."""
    p = np.asarray(p)
    return ((p + 0.5) * np.asarray(f, p.dtype) - 0.5).astype(p.dtype)
