"""Colour perturbation S and geometric transformation T of Sec. 3.4 (``I_r = S(T(I_o x M_o))``).

The paper designs "color perturbation S and affine transformations T on I_o x M_o to simulate the
lighting and view changes in the real world" (Sec. 3.4), and notes that they are "not sufficient to
simulate non-rigid or 3D pose changes"; we therefore also offer an optional perspective component
and a smooth non-rigid warp (a low-frequency random displacement field).

Geometric convention (OpenCV): pixel centres at integer coordinates, points are (x, y).
A :class:`GeomTransform` maps a *source* point p to an *output* point q. It is stored as a 3x3
homography ``matrix`` (p -> r = H p) followed by a smooth displacement field D defined on the
output canvas, in output pixels, through the *inverse* relation

    p = H^{-1}(q + D(q))                                     (exact, used for resampling)

so that images are resampled exactly with cv2.remap, and the forward correspondence
q = H p - D(q) is solved by fixed-point iteration (D is a contraction: small and low-frequency).
The forward map is what gives the ground-truth CORRESPONDENCE of a training pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

import cv2
import numpy as np

from refine_by_align.zoom import Box

__all__ = [
    "ColorConfig",
    "ColorParams",
    "GeomConfig",
    "GeomTransform",
    "WarpNoiseConfig",
    "apply_color",
    "imperfect_field",
    "color_perturb",
    "random_transform",
    "sample_color",
    "warp",
    "warp_image",
    "warp_mask",
]


# ----------------------------------------------------------------------------------------------
# colour perturbation S


@dataclass
class ColorConfig:
    """Ranges of the colour perturbation S (lighting / white-balance changes, Sec. 3.4)."""

    brightness: float = 0.12  # additive offset, uniform in [-b, b] (fraction of the full range)
    contrast: tuple[float, float] = (0.75, 1.3)  # factor around the mean grey of the object, uniform
    saturation: tuple[float, float] = (0.6, 1.4)  # chroma factor, uniform (0 = greyscale)
    hue: float = 0.04  # hue rotation, uniform in [-h, h] of a full turn (0.04 ~ +-14 degrees)
    gamma: tuple[float, float] = (0.75, 1.35)  # exponent on [0, 1] intensities, log-uniform


@dataclass(frozen=True)
class ColorParams:
    """One drawn colour perturbation (so the same S can be applied to several images)."""

    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # fraction of a turn
    gamma: float = 1.0


def sample_color(rng: np.random.Generator, cfg: ColorConfig | None = None) -> ColorParams:
    cfg = cfg or ColorConfig()
    return ColorParams(
        brightness=float(rng.uniform(-cfg.brightness, cfg.brightness)),
        contrast=float(rng.uniform(*cfg.contrast)),
        saturation=float(rng.uniform(*cfg.saturation)),
        hue=float(rng.uniform(-cfg.hue, cfg.hue)),
        gamma=float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1])))),
    )


# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation a scaling of it.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def apply_color(image: np.ndarray, params: ColorParams, mask: np.ndarray | None = None) -> np.ndarray:
    """Apply S to an (H, W, 3) uint8 or float [0, 1] image; returns the same dtype.

    Order: gamma, then one affine colour matrix (hue rotation + saturation in YIQ, contrast around
    the mean grey of the ``mask`` pixels, brightness offset). Pixels outside the (H, W) bool
    ``mask`` are returned unchanged (e.g. the black background of a reference).
    """
    is_uint8 = image.dtype == np.uint8
    x = image.astype(np.float32) / 255.0 if is_uint8 else image.astype(np.float32, copy=True)
    orig = x
    if params.gamma != 1.0:
        x = np.power(np.clip(x, 0.0, 1.0), params.gamma, dtype=np.float32)
    th = 2 * np.pi * params.hue
    c, s = np.cos(th), np.sin(th)
    chroma = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) * np.array([1, params.saturation, params.saturation])[:, None]
    m = _YIQ2RGB @ chroma @ _RGB2YIQ  # (3, 3)
    sel = mask if mask is not None and mask.any() else None
    grey = float((x[sel] if sel is not None else x.reshape(-1, 3)).mean()) if x.size else 0.0
    m = params.contrast * m
    b = (1.0 - params.contrast) * grey + params.brightness
    affine = np.concatenate([m, np.full((3, 1), b)], axis=1).astype(np.float32)  # (3, 4)
    y = cv2.transform(x, affine)
    y = np.clip(y, 0.0, 1.0)
    if mask is not None:
        y = np.where(mask[..., None], y, orig)
    if is_uint8:
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return y.astype(image.dtype)


def color_perturb(
    image: np.ndarray, rng: np.random.Generator, cfg: ColorConfig | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """Draw and apply a random colour perturbation S (see :func:`apply_color`)."""
    return apply_color(image, sample_color(rng, cfg), mask)


# ----------------------------------------------------------------------------------------------
# geometric transformation T


@dataclass
class GeomConfig:
    """Ranges of the geometric transformation T (view changes, Sec. 3.4)."""

    rotation_deg: float = 25.0  # rotation, uniform in [-r, r] degrees
    scale: tuple[float, float] = (0.8, 1.25)  # isotropic scale, log-uniform
    aspect: tuple[float, float] = (0.9, 1.1)  # extra x/y stretch ratio, log-uniform
    shear_deg: float = 10.0  # x-shear angle, uniform in [-s, s] degrees
    translate: float = 0.05  # shift, uniform in [-t, t] of the output side (irrelevant after a box crop)
    p_flip: float = 0.5  # probability of a horizontal mirror
    perspective: float = 0.0  # corner jitter of a random homography, fraction of the object size (0: off)
    p_nonrigid: float = 0.3  # probability of adding the smooth non-rigid warp
    nonrigid_amplitude: float = 0.03  # max displacement, fraction of the longer output side
    nonrigid_grid: int = 4  # control points per side of the coarse random field (low frequency)
    fixed_point_iters: int = 6  # iterations of the forward-map solve (error ~ (2*amp*grid)^iters)


@dataclass
class GeomTransform:
    """Source -> output transform: homography then smooth field (see the module docstring)."""

    matrix: np.ndarray  # (3, 3) float64 homography H, source (x, y, 1) -> output
    out_shape: tuple[int, int]  # (H_out, W_out) of the output canvas
    field: np.ndarray | None = None  # (H_out, W_out, 2) float32 D(q) in output pixels, or None
    iters: int = 6  # fixed-point iterations for forward_points
    params: dict = dc_field(default_factory=dict)  # the drawn parameters, for logs / meta.json

    @property
    def is_affine(self) -> bool:
        return self.field is None and np.allclose(self.matrix[2], [0.0, 0.0, 1.0])

    def _field_at(self, pts: np.ndarray) -> np.ndarray:
        """Bilinear sample of D at (N, 2) output points (clamped to the canvas)."""
        h, w = self.out_shape
        x = np.clip(pts[:, 0], 0, w - 1)
        y = np.clip(pts[:, 1], 0, h - 1)
        x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
        x1 = np.minimum(x0 + 1, w - 1)
        y1 = np.minimum(y0 + 1, h - 1)
        fx = (x - x0)[:, None]
        fy = (y - y0)[:, None]
        f = self.field
        top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
        bot = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
        return top * (1 - fy) + bot * fy

    def forward_points(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) source points (x, y) -> (N, 2) float64 output points; NaN where undefined
        (behind a perspective horizon). Points may land outside the canvas: check against out_shape."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ self.matrix.T
        wz = hom[:, 2:3]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(wz > 1e-9, hom[:, :2] / wz, np.nan)
        if self.field is None:
            return r
        q = r.copy()
        ok = np.isfinite(q).all(axis=1)
        for _ in range(self.iters):
            q[ok] = r[ok] - self._field_at(q[ok])
        return q

    def inverse_points(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) output points -> (N, 2) source points (exact)."""
        q = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if self.field is not None:
            q = q + self._field_at(q)
        hom = np.concatenate([q, np.ones((len(q), 1))], axis=1) @ np.linalg.inv(self.matrix).T
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(hom[:, 2:3] > 1e-9, hom[:, :2] / hom[:, 2:3], np.nan)

    def forward_map(self, src_shape: tuple[int, int]) -> np.ndarray:
        """(H_src, W_src, 2) float32: for every source pixel, its (x, y) in the output canvas;
        NaN where it lands outside the canvas (or is undefined)."""
        h, w = src_shape
        ys, xs = np.mgrid[0:h, 0:w]
        q = self.forward_points(np.stack([xs.ravel(), ys.ravel()], axis=1)).astype(np.float32)
        q[self.off_canvas(q)] = np.nan
        return q.reshape(h, w, 2)

    def off_canvas(self, q: np.ndarray) -> np.ndarray:
        """(N,) bool: which output points ``q`` (N, 2) fall outside the output canvas (by more
        than half a pixel); a NaN point is not flagged (check it apart)."""
        oh, ow = self.out_shape
        return (q[:, 0] < -0.5) | (q[:, 0] > ow - 0.5) | (q[:, 1] < -0.5) | (q[:, 1] > oh - 0.5)

    def inverse_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps (H_out, W_out) float32 x and y: the source position of each output pixel."""
        oh, ow = self.out_shape
        ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float32)
        if self.field is not None:
            xs = xs + self.field[..., 0]
            ys = ys + self.field[..., 1]
        hinv = np.linalg.inv(self.matrix)
        den = hinv[2, 0] * xs + hinv[2, 1] * ys + hinv[2, 2]
        den = np.where(np.abs(den) < 1e-9, 1e-9, den)
        mx = (hinv[0, 0] * xs + hinv[0, 1] * ys + hinv[0, 2]) / den
        my = (hinv[1, 0] * xs + hinv[1, 1] * ys + hinv[1, 2]) / den
        return mx.astype(np.float32), my.astype(np.float32)

    def then(self, matrix: np.ndarray, out_shape: tuple[int, int]) -> GeomTransform:
        """Append an *affine* output-space map A (e.g. a crop + resize) with a new canvas; only
        valid without a field (a field lives on the old canvas)."""
        if self.field is not None:
            raise ValueError("cannot compose an output transform after a non-rigid field")
        return GeomTransform(matrix @ self.matrix, out_shape, None, self.iters, dict(self.params))


def _resample(image: np.ndarray, t: GeomTransform, interpolation: int, maps=None) -> np.ndarray:
    oh, ow = t.out_shape
    if maps is None and t.field is None:
        if t.is_affine:
            return cv2.warpAffine(image, t.matrix[:2].astype(np.float64), (ow, oh), flags=interpolation,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return cv2.warpPerspective(image, t.matrix, (ow, oh), flags=interpolation,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mx, my = maps if maps is not None else t.inverse_maps()
    return cv2.remap(image, mx, my, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_image(image: np.ndarray, t: GeomTransform, interpolation: int = cv2.INTER_LINEAR, maps=None) -> np.ndarray:
    """Resample an (H, W) or (H, W, C) image into T's (H_out, W_out) canvas (zeros outside)."""
    return _resample(image, t, interpolation, maps)


def warp_mask(mask: np.ndarray, t: GeomTransform, maps=None) -> np.ndarray:
    """Resample an (H, W) bool mask (bilinear on 0/255, threshold at half)."""
    return _resample(mask.astype(np.uint8) * 255, t, cv2.INTER_LINEAR, maps) >= 128


def warp(
    image: np.ndarray, masks: list[np.ndarray] | tuple[np.ndarray, ...], t: GeomTransform, *, forward: bool = True
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
    """Apply T to an image and its masks and give the correspondence.

    Args:
        image: (H, W, 3) uint8 source image.
        masks: (H, W) bool masks in the source (object mask, artifact mask, ...).
        t: the transform (e.g. from :func:`random_transform`).
        forward: also compute the forward coordinate map (costs one pass over the source pixels).

    Returns:
        (warped image (H_out, W_out, 3), warped masks (H_out, W_out) bool,
         forward map (H, W, 2) float32: the output (x, y) of each source pixel, NaN outside).
    """
    maps = t.inverse_maps() if t.field is not None else None
    out = warp_image(image, t, maps=maps)
    outm = [warp_mask(m, t, maps=maps) for m in masks]
    fmap = t.forward_map(image.shape[:2]) if forward else None
    return out, outm, fmap


def _corners(box: Box) -> np.ndarray:
    # outer pixel-edge corners of the half-open box, in pixel-centre coordinates
    return np.array(
        [[box.x0 - 0.5, box.y0 - 0.5], [box.x1 - 0.5, box.y0 - 0.5], [box.x1 - 0.5, box.y1 - 0.5], [box.x0 - 0.5, box.y1 - 0.5]],
        dtype=np.float64,
    )


def random_transform(
    rng: np.random.Generator,
    src_shape: tuple[int, int],
    cfg: GeomConfig | None = None,
    *,
    box: Box | None = None,
    out_shape: tuple[int, int] | None = None,
    margin: float = 2.0,
) -> GeomTransform:
    """Draw a random T (affine, optional perspective, optional non-rigid field) about ``box``.

    Args:
        rng: random generator.
        src_shape: (H, W) of the source image.
        cfg: ranges (:class:`GeomConfig`).
        box: the region that matters (e.g. the object's box); T rotates / scales about its centre.
            Default: the whole image.
        out_shape: (H_out, W_out) canvas. ``None``: a canvas just large enough to hold the
            transformed ``box`` (plus ``margin`` px and the field amplitude), so nothing of it is
            cut off. Given: the transformed box is centred (plus the random translation) and then
            shifted to lie inside the canvas where it fits.

    Returns:
        GeomTransform; ``params`` records the drawn values.
    """
    cfg = cfg or GeomConfig()
    h, w = src_shape
    box = box or Box(0, 0, w, h)
    cx, cy = (box.x0 + box.x1 - 1) / 2.0, (box.y0 + box.y1 - 1) / 2.0
    extent = float(max(box.width, box.height))

    drawn = _draw_affine(rng, cfg)
    hmat = _draw_perspective(rng, cfg, extent) @ _affine_about(cx, cy, drawn)
    q = _project(hmat, _corners(box))
    lo, hi = q.min(axis=0), q.max(axis=0)
    nonrigid = bool(rng.random() < cfg.p_nonrigid) and cfg.nonrigid_amplitude > 0
    if out_shape is None:
        pad = margin + (cfg.nonrigid_amplitude * float((hi - lo).max()) if nonrigid else 0.0)
        oh, ow, shift = _fitting_canvas(lo, hi, pad)
    else:
        oh, ow = out_shape
        shift = _shift_into_canvas(lo, hi, out_shape, drawn["translate"], margin)
    hmat = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]], dtype=np.float64) @ hmat
    hmat = hmat / hmat[2, 2]

    fld = None
    if nonrigid:
        g = max(int(cfg.nonrigid_grid), 1)
        amp = cfg.nonrigid_amplitude * max(oh, ow)
        coarse = rng.uniform(-amp, amp, size=(g + 1, g + 1, 2)).astype(np.float32)
        fld = cv2.resize(coarse, (ow, oh), interpolation=cv2.INTER_CUBIC)
    params = drawn | {"perspective": cfg.perspective, "nonrigid": nonrigid}
    return GeomTransform(hmat, (int(oh), int(ow)), fld, cfg.fixed_point_iters, params)


def _draw_affine(rng: np.random.Generator, cfg: GeomConfig) -> dict:
    """The affine part's random values, drawn in this order: rotation, scale, aspect, shear, flip,
    translation (the order seeded transforms depend on)."""
    rot = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = float(np.exp(rng.uniform(np.log(cfg.scale[0]), np.log(cfg.scale[1]))))
    aspect = float(np.exp(rng.uniform(np.log(cfg.aspect[0]), np.log(cfg.aspect[1]))))
    shear = float(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    flip = bool(rng.random() < cfg.p_flip)
    tx, ty = (float(v) for v in rng.uniform(-cfg.translate, cfg.translate, size=2))
    return {"rotation_deg": rot, "scale": scale, "aspect": aspect, "shear_deg": shear, "flip": flip, "translate": (tx, ty)}


def _affine_about(cx: float, cy: float, d: dict) -> np.ndarray:
    """R Sh S F about (cx, cy): the point (cx, cy) goes to the origin."""
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    f = np.diag([-1.0 if d["flip"] else 1.0, 1.0, 1.0])
    s = np.diag([d["scale"] * np.sqrt(d["aspect"]), d["scale"] / np.sqrt(d["aspect"]), 1.0])
    sh = np.array([[1, np.tan(np.deg2rad(d["shear_deg"])), 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    th = np.deg2rad(d["rotation_deg"])
    r = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]], dtype=np.float64)
    return r @ sh @ s @ f @ to_origin


def _draw_perspective(rng: np.random.Generator, cfg: GeomConfig, extent: float) -> np.ndarray:
    """A random perspective about the origin: the corners of a square of side ``extent`` moved by up
    to ``cfg.perspective`` x extent (the identity, drawing nothing, when that is 0)."""
    if cfg.perspective <= 0:
        return np.eye(3)
    half = extent / 2.0
    src = np.array([[-half, -half], [half, -half], [half, half], [-half, half]], dtype=np.float32)
    dst = src + rng.uniform(-cfg.perspective, cfg.perspective, size=(4, 2)).astype(np.float32) * extent
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def _project(mat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ mat.T
    return hom[:, :2] / hom[:, 2:3]


def _fitting_canvas(lo: np.ndarray, hi: np.ndarray, pad: float) -> tuple[int, int, np.ndarray]:
    """(H_out, W_out, shift): a canvas just holding the transformed box [lo, hi] plus ``pad`` px."""
    ow = int(np.ceil(hi[0] - lo[0] + 2 * pad))
    oh = int(np.ceil(hi[1] - lo[1] + 2 * pad))
    return oh, ow, np.array([pad - lo[0] - 0.5, pad - lo[1] - 0.5])


def _shift_into_canvas(lo: np.ndarray, hi: np.ndarray, out_shape: tuple[int, int], translate, margin: float) -> np.ndarray:
    """The shift centring the transformed box [lo, hi] on the canvas (plus the random translation,
    a fraction of its sides), then moving it inside, ``margin`` px from the edges, where it fits."""
    oh, ow = out_shape
    tx, ty = translate
    centre = np.array([(ow - 1) / 2.0 + tx * ow, (oh - 1) / 2.0 + ty * oh])
    shift = centre - (lo + hi) / 2.0
    for k, side in ((0, ow), (1, oh)):
        a0, a1 = lo[k] + shift[k], hi[k] + shift[k]
        if a1 - a0 <= side - 2 * margin:
            if a0 < margin - 0.5:
                shift[k] += margin - 0.5 - a0
            elif a1 > side - 0.5 - margin:
                shift[k] -= a1 - (side - 0.5 - margin)
    return shift


# ----------------------------------------------------------------------------------------------
# imperfect dense fields (the warp prefill of issue 13)


@dataclass
class WarpNoiseConfig:
    """How a true correspondence field is made as imperfect as the inference warps are (the dense
    alignment's homography + thin-plate spline, pipelines/correspondence.py): the model must learn
    when not to trust the warp. Distances are in pixels of the source image (the zoom-in crop at
    full resolution) or fractions of the hole box's longer side."""

    p_no_warp: float = 0.15  # no warp at all: Telea everywhere, trust 0 (the model keeps working without one)
    jitter_px: tuple[float, float] = (0.0, 3.0)  # peak of a smooth random displacement, uniform in this range
    jitter_grid: int = 4  # control points per side of that displacement (low frequency)
    p_wrong: float = 0.5  # a blob of the field taken from a shifted position (a partly wrong warp)
    wrong_radius: tuple[float, float] = (0.15, 0.5)  # the blob's radius, x the hole box's longer side
    wrong_shift: tuple[float, float] = (0.15, 0.6)  # where it is taken from, x the hole box's longer side
    p_dropout: float = 0.3  # some trusted pixels dropped (Telea there, trust 0) ...
    dropout_blobs: tuple[int, int] = (1, 3)  # ... in this many blobs (inclusive)
    dropout_radius: tuple[float, float] = (0.1, 0.35)  # of this radius, x the hole box's longer side


def _soft_blob(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """(h, w) float32 weight: 1 inside a disk of ``radius`` about ``centre`` (x, y), a smooth edge."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2)
    edge = max(1.0, 0.3 * radius)
    return np.clip((radius + edge - d) / edge, 0.0, 1.0).astype(np.float32)


def imperfect_field(xy: np.ndarray, hole: np.ndarray, rng: np.random.Generator, cfg: WarpNoiseConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A true field made imperfect: ``xy`` (h, w, 2) float32, for each pixel of the crop its (x, y)
    on the reference; ``hole`` (h, w) bool, the artifact mask in the crop. Adds a smooth random
    displacement (peak uniform in ``jitter_px``) and, with ``p_wrong``, a blob inside the hole whose
    positions are those of the field at a shifted place (its content comes from elsewhere on the
    reference; the ring around the hole that gates the warp at inference does not see it). Returns (the field (h, w, 2) float32, the dropout (h, w) bool: pixels whose warp
    must not be trusted, drawn with ``p_dropout``)."""
    cfg = cfg or WarpNoiseConfig()
    h, w = hole.shape
    out = np.array(xy, dtype=np.float32, copy=True)
    amp = float(rng.uniform(*cfg.jitter_px))
    if amp > 0:
        g = max(2, int(cfg.jitter_grid))
        coarse = rng.normal(size=(g, g, 2)).astype(np.float32)
        d = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        out += d * (amp / max(float(np.abs(d).max()), 1e-6))
    ys, xs = np.nonzero(hole)
    dropout = np.zeros((h, w), bool)
    if len(xs) == 0:
        return out, dropout
    side = float(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    if rng.random() < cfg.p_wrong:
        k = int(rng.integers(len(xs)))
        r = float(rng.uniform(*cfg.wrong_radius)) * side
        ang = float(rng.uniform(0, 2 * np.pi))
        dist = float(rng.uniform(*cfg.wrong_shift)) * side
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = (gx + np.float32(dist * np.cos(ang))).astype(np.float32), (gy + np.float32(dist * np.sin(ang))).astype(np.float32)
        shifted = cv2.remap(out, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # inside the hole (grown by 2 px): the ring outside it, which gates the warp, stays right
        inside = cv2.GaussianBlur(cv2.dilate(hole.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32), (0, 0), 1.0)
        wgt = (_soft_blob((h, w), (float(xs[k]), float(ys[k])), r) * inside)[..., None]
        out = out * (1.0 - wgt) + shifted * wgt
    if rng.random() < cfg.p_dropout:
        for _ in range(int(rng.integers(cfg.dropout_blobs[0], cfg.dropout_blobs[1] + 1))):
            k = int(rng.integers(len(xs)))
            dropout |= _soft_blob((h, w), (float(xs[k]), float(ys[k])), float(rng.uniform(*cfg.dropout_radius)) * side) > 0.5
    return out.astype(np.float32), dropout
