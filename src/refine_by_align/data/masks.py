"""Free-form artifact masks: the random mask generator G of Sec. 3.4, ``M_a = G(M_o)``.

The paper samples "a free-form artifacts mask M_a = G(M_o) within M_o" (Sec. 3.4) and motivates
the design by its analysis of the PAL artifact dataset (App. A.2): generative artifacts are
*tiny* (under 4% of the image area in more than half of the cases) and *irregular-shaped*.

:func:`random_artifact_mask` draws one of three shape families

* ``stroke``: a random-walk polyline with round joints and a random thickness (brush strokes);
* ``blob``: a rotated ellipse or a thresholded, smoothed-noise blob (irregular outline);
* ``union``: 2-3 smaller strokes / blobs near each other,

always intersected with the object mask, never empty.

Size distribution (documented, checked by the tests): the *target* area is drawn log-uniformly
between ``area_min`` and ``area_max`` (fractions of the whole image area, default 0.2% .. 12%), so
its median is ``sqrt(area_min * area_max)`` ~ 1.5% of the image and P(area < 4%) ~ 0.75; it is
further capped at ``max_object_fraction`` of the object's own area. Clipping to the object only
makes masks smaller, so on any object more than half the masks cover under 4% of the image, as in
App. A.2. Realised areas scatter around the target by roughly a factor 1.5 (shapes are random).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SHAPES", "MaskConfig", "dilate", "erode", "random_artifact_mask"]

SHAPES = ("stroke", "blob", "union")


@dataclass
class MaskConfig:
    """Parameters of the artifact-mask generator G (Sec. 3.4, App. A.2)."""

    p_stroke: float = 0.35  # probability of a single brush stroke
    p_blob: float = 0.40  # probability of a single blob (ellipse or noise blob); rest: union
    area_min: float = 0.002  # smallest target area, fraction of the image (H*W)
    area_max: float = 0.12  # largest target area, fraction of the image; log-uniform in between
    max_object_fraction: float = 0.5  # target area never exceeds this fraction of the object area
    min_pixels: int = 4  # a mask smaller than this (after clipping to the object) is redrawn
    stroke_vertices: tuple[int, int] = (2, 7)  # number of polyline vertices, inclusive range
    stroke_thickness: tuple[float, float] = (0.12, 0.45)  # thickness / sqrt(target area)
    stroke_turn_deg: float = 70.0  # max change of heading between consecutive segments
    p_noise_blob: float = 0.5  # within "blob": probability of a noise blob instead of an ellipse
    ellipse_aspect: tuple[float, float] = (1.0, 3.5)  # major/minor axis ratio of ellipses
    center_inset: float = 0.25  # centres are drawn from the object eroded by this * shape radius
    retries: int = 6  # redraws before the fallback disc


def _kernel(px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Erode a (H, W) bool mask by ``px`` pixels (elliptical structuring element). px <= 0: copy."""
    mask = np.asarray(mask, dtype=bool)
    if px <= 0:
        return mask.copy()
    # border value 0 outside the image would erode masks that touch the border; treat it as inside
    out = cv2.erode(mask.astype(np.uint8), _kernel(int(px)), borderType=cv2.BORDER_REPLICATE)
    return out.astype(bool)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate a (H, W) bool mask by ``px`` pixels (elliptical structuring element). px <= 0: copy."""
    mask = np.asarray(mask, dtype=bool)
    if px <= 0:
        return mask.copy()
    return cv2.dilate(mask.astype(np.uint8), _kernel(int(px))).astype(bool)


def _pick_center(obj: np.ndarray, radius: float, rng: np.random.Generator, inset: float) -> tuple[float, float]:
    """A random pixel of the object, preferably ``inset * radius`` px away from its border."""
    px = int(round(inset * radius))
    core = erode(obj, px) if px > 0 else obj
    ys, xs = np.nonzero(core)
    if len(xs) == 0:
        ys, xs = np.nonzero(obj)
    k = int(rng.integers(len(xs)))
    return float(xs[k]) + rng.uniform(-0.5, 0.5), float(ys[k]) + rng.uniform(-0.5, 0.5)


def _draw_stroke(canvas: np.ndarray, c: tuple[float, float], area: float, rng: np.random.Generator, cfg: MaskConfig) -> None:
    """Random-walk polyline of total length ~ area / thickness, drawn in place on a uint8 canvas."""
    r = np.sqrt(area)
    thick = max(1.0, r * rng.uniform(*cfg.stroke_thickness))
    n = int(rng.integers(cfg.stroke_vertices[0], cfg.stroke_vertices[1] + 1))
    length = max(area / thick, thick)
    seg = length / (n - 1)
    heading = rng.uniform(0, 2 * np.pi)
    pts = [np.array(c, dtype=np.float64)]
    for _ in range(n - 1):
        heading += np.deg2rad(rng.uniform(-cfg.stroke_turn_deg, cfg.stroke_turn_deg))
        step = seg * rng.uniform(0.6, 1.4)
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    pts_arr = np.array(pts)
    pts_arr -= pts_arr.mean(axis=0) - np.array(c)  # centre the stroke on c
    # shift=2: sub-pixel precision (coordinates * 4)
    ipts = np.round(pts_arr * 4).astype(np.int32)
    t = int(round(thick))
    cv2.polylines(canvas, [ipts.reshape(-1, 1, 2)], False, 255, thickness=max(t, 1), lineType=cv2.LINE_8, shift=2)
    for p in ipts:  # round joints and caps
        cv2.circle(canvas, (int(p[0]), int(p[1])), max(int(round(thick * 2)), 2), 255, -1, lineType=cv2.LINE_8, shift=2)


def _draw_ellipse(canvas: np.ndarray, c: tuple[float, float], area: float, rng: np.random.Generator, cfg: MaskConfig) -> None:
    aspect = rng.uniform(*cfg.ellipse_aspect)
    a = np.sqrt(area * aspect / np.pi)
    b = max(a / aspect, 0.5)
    angle = rng.uniform(0, 180)
    cv2.ellipse(
        canvas,
        (int(round(c[0] * 4)), int(round(c[1] * 4))),
        (max(int(round(a * 4)), 2), max(int(round(b * 4)), 2)),
        angle, 0, 360, 255, -1, lineType=cv2.LINE_8, shift=2,
    )


def _draw_noise_blob(canvas: np.ndarray, c: tuple[float, float], area: float, rng: np.random.Generator) -> None:
    """Smoothed random noise times a radial falloff, thresholded: an irregular lobed blob."""
    h, w = canvas.shape
    rad = np.sqrt(area / np.pi)  # radius of a disc with the target area
    half = int(np.ceil(rad * 2.0)) + 1  # patch half-size: the blob can reach 2x the radius
    g = int(rng.integers(3, 7))  # coarse noise grid: 3..6 cells -> a few lobes
    noise = rng.standard_normal((g, g)).astype(np.float32)
    size = 2 * half + 1
    field = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    field = (field - field.mean()) / (field.std() + 1e-6)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    sx, sy = rng.uniform(0.7, 1.4, size=2)
    d2 = (xx * sx) ** 2 + (yy * sy) ** 2
    # falloff: 1 at the centre, 0 at 1 radius; noise moves the outline by up to ~+-0.7 radius
    level = 1.0 - d2 / (rad * rad + 1e-6) + 0.35 * field
    blob = (level > 0).astype(np.uint8) * 255
    cx, cy = int(round(c[0])), int(round(c[1]))
    x0, y0 = cx - half, cy - half
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + size, w), min(y0 + size, h)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    sub = blob[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    np.maximum(canvas[sy0:sy1, sx0:sx1], sub, out=canvas[sy0:sy1, sx0:sx1])


def _draw_shape(kind: str, canvas: np.ndarray, c, area, rng, cfg: MaskConfig) -> None:
    if kind == "stroke":
        _draw_stroke(canvas, c, area, rng, cfg)
    elif rng.random() < cfg.p_noise_blob:
        _draw_noise_blob(canvas, c, area, rng)
    else:
        _draw_ellipse(canvas, c, area, rng, cfg)


def random_artifact_mask(
    object_mask: np.ndarray,
    rng: np.random.Generator,
    cfg: MaskConfig | None = None,
    *,
    center: tuple[float, float] | None = None,
    shape: str | None = None,
) -> np.ndarray:
    """Sample a free-form artifact mask ``M_a = G(M_o)`` inside ``object_mask`` (Sec. 3.4).

    Args:
        object_mask: (H, W) bool object mask M_o; must not be empty.
        rng: the random generator (all randomness comes from it).
        cfg: size / shape parameters (see :class:`MaskConfig` and the module docstring for the
            area distribution, skewed small as App. A.2 reports).
        center: optional (x, y) pixel to centre the mask on (e.g. a detailed spot); else random
            inside the object.
        shape: force "stroke", "blob" or "union"; else drawn with cfg's probabilities.

    Returns:
        (H, W) bool mask, a non-empty subset of ``object_mask``. If the object is too small for
        any shape to survive the clipping, a small disc around an object pixel (or, for a tiny
        object, the object itself) is returned.
    """
    cfg = cfg or MaskConfig()
    obj = np.asarray(object_mask, dtype=bool)
    if obj.ndim != 2:
        raise ValueError(f"object_mask must be (H, W), got shape {obj.shape}")
    obj_area = int(obj.sum())
    if obj_area == 0:
        raise ValueError("object_mask is empty: no object to place an artifact on")
    h, w = obj.shape
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    min_px = min(cfg.min_pixels, obj_area)

    canvas = np.zeros((h, w), dtype=np.uint8)
    for _ in range(max(cfg.retries, 1)):
        ratio = float(np.exp(rng.uniform(np.log(cfg.area_min), np.log(cfg.area_max))))
        area = min(ratio * h * w, cfg.max_object_fraction * obj_area)
        area = max(area, 2.0)
        kind = shape or (
            "stroke" if (u := rng.random()) < cfg.p_stroke else "blob" if u < cfg.p_stroke + cfg.p_blob else "union"
        )
        canvas[:] = 0
        radius = np.sqrt(area / np.pi)
        c = center if center is not None else _pick_center(obj, radius, rng, cfg.center_inset)
        if kind == "union":
            k = int(rng.integers(2, 4))
            parts = rng.dirichlet(np.full(k, 2.0)) * area
            for j in range(k):
                sub_kind = "stroke" if rng.random() < 0.5 else "blob"
                if j == 0:
                    cj = c
                else:  # place the next piece near the first, so the union is one irregular region
                    off = rng.uniform(0.3, 1.1) * radius
                    ang = rng.uniform(0, 2 * np.pi)
                    cj = (c[0] + off * np.cos(ang), c[1] + off * np.sin(ang))
                _draw_shape(sub_kind, canvas, cj, float(parts[j]), rng, cfg)
        else:
            _draw_shape(kind, canvas, c, area, rng, cfg)
        out = (canvas > 0) & obj
        if int(out.sum()) >= min_px:
            return out

    # fallback: a disc around an object pixel, clipped to the object (the object itself if tiny)
    ys, xs = np.nonzero(obj)
    k = int(rng.integers(len(xs)))
    rad = max(1, int(round(np.sqrt(max(cfg.area_min * h * w, 4.0) / np.pi))))
    canvas[:] = 0
    cv2.circle(canvas, (int(xs[k]), int(ys[k])), rad, 255, -1)
    out = (canvas > 0) & obj
    if not out.any():
        out = obj.copy()
    return out
