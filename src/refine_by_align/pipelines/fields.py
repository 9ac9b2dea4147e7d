"""A dense field fitted to point matches: for each pixel of the zoom-in crop, its position on the
reference, with a confidence.

:func:`fit_field` fits a robust model to :class:`~.matching.Matches`: a global homography by RANSAC
(MAGSAC), then a smooth thin-plate-spline residual where the matches support one (its smoothing
chosen by cross-validation, "homography only" among the choices). :func:`dense_field` samples it on
the crop as a :class:`DenseField`, whose :meth:`DenseField.push_mask` gives M*, the artifact mask
pushed through the field (pixel-accurate); :func:`field_misfit` says how far the fit misses its own
matches. :mod:`.field_refinement` refines a field photometrically, :mod:`.warp` warps the reference
through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..threads import worker_threads
from ..zoom import Box, rescaled
from .matching import Matches, _disk

__all__ = [
    "global_model",
    "FieldFit",
    "fit_field",
    "MINIFY_ABOVE",
    "ANTIALIAS_SIGMA",
    "DenseField",
    "dense_field",
    "on_reference_object",
    "MISFIT_PX",
    "field_misfit",
    "with_confidence",
    "field_at_full_scale",
]


def _apply_h(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ H.T
    return p[:, :2] / np.where(np.abs(p[:, 2:]) < 1e-9, 1e-9, p[:, 2:])


def _sane(H: np.ndarray | None, max_anisotropy: float = 8.0, mirrored: bool = False) -> bool:
    """Finite, orientation-preserving (orientation-reversing if ``mirrored``), not collapsing: the
    2 x 2 part's singular values within ``max_anisotropy`` of each other, its scale within 1/10 .. 10."""
    if H is None or not np.isfinite(H).all() or abs(H[2, 2]) < 1e-12:
        return False
    A = H[:2, :2] / H[2, 2]
    s = np.linalg.svd(A, compute_uv=False)
    return bool((np.linalg.det(A) < 0) == mirrored and s[1] > 1e-6 and s[0] / s[1] < max_anisotropy and 0.1 < np.sqrt(s[0] * s[1]) < 10.0)


def global_model(src: np.ndarray, dst: np.ndarray, ransac_px: float = 3.0, min_inliers: int = 8, mirrored: bool = False) -> np.ndarray | None:
    """A robust src -> dst homography (MAGSAC), or an affine map (RANSAC) where the homography is
    degenerate (few, nearly collinear matches); None when neither has ``min_inliers`` inliers."""
    if len(src) < max(min_inliers, 4):
        return None
    H, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, ransac_px, maxIters=5000, confidence=0.999)
    if H is not None and inl is not None and int(inl.sum()) >= min_inliers and _sane(H, mirrored=mirrored):
        return H / H[2, 2]
    A, inl = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px, maxIters=5000, confidence=0.999)
    if A is not None and inl is not None and int(inl.sum()) >= min_inliers:
        H = np.vstack([A, [0.0, 0.0, 1.0]])
        if _sane(H, mirrored=mirrored):
            return H
    return None


@dataclass
class FieldFit:
    """A robust image -> reference mapping: homography ``H`` plus an optional smooth residual."""

    H: np.ndarray  # (3, 3) image -> reference
    tps: object | None  # scipy RBFInterpolator on scaled image coordinates, or None (homography only)
    scale: float  # image coordinates are divided by this before the residual is evaluated
    centre: np.ndarray  # (2,) and centred on this
    matches: int  # matches given
    inliers: int  # matches the final mapping explains within ``inlier_px``
    smoothing: float | None  # the residual's smoothing (None: homography only)
    residual_px: float  # median cross-validated error of the chosen mapping on its matches
    inlier_xy: np.ndarray  # (K, 2) the inlier matches' image positions (for the confidence)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Reference positions (N, 2) of image positions ``xy`` (N, 2)."""
        out = _apply_h(self.H, np.asarray(xy, np.float64))
        if self.tps is not None:
            out = out + self.tps((np.asarray(xy, np.float64) - self.centre) / self.scale)
        return out


def _tps(xy, res, weight, smoothing):
    from scipy.interpolate import RBFInterpolator

    # per-point smoothing: low-weight matches are trusted less
    return RBFInterpolator(xy, res, kernel="thin_plate_spline", smoothing=smoothing / np.maximum(weight, 1e-3), degree=1)


def fit_field(
    matches: Matches,
    focus: Box | None = None,
    ransac_px: float = 3.0,
    outlier_px: float = 12.0,
    inlier_px: float = 3.0,
    min_inliers: int = 8,
    smoothings: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01),
    folds: int = 5,
    seed: int = 0,
    mirrored: bool = False,
    min_gain: float = 0.8,
) -> FieldFit | None:
    """Fit image -> reference: RANSAC (MAGSAC) homography, then a thin-plate-spline residual.

    The residual is fitted on the matches within ``outlier_px`` of the homography (those nearest
    ``focus``, the zoom-in crop, count most: matches farther than two crop sides are dropped), with
    its smoothing chosen by ``folds``-fold spatial cross-validation (whole cells of a coarse grid
    held out) among ``smoothings`` and "homography only", which a residual must beat by a factor
    ``min_gain`` of the error; matches the chosen mapping misses by more than ``outlier_px`` in cross-validation are
    removed and it is refitted once. ``mirrored``: the reference is a mirror image of the view (the
    matches came from the flipped reference). Returns None when fewer than ``min_inliers`` agree."""
    n = len(matches)
    if n < max(min_inliers, 4):
        return None
    src, dst, w = matches.img_xy.astype(np.float64), matches.ref_xy.astype(np.float64), matches.weight.astype(np.float64)
    H = global_model(src, dst, ransac_px, min_inliers, mirrored)
    if H is None:
        return None
    H, err_h = _prefer_local_model(H, src, dst, focus, ransac_px, min_inliers, mirrored)
    cand = _residual_matches(err_h < outlier_px, src, focus, min_inliers)
    scale = float(max(np.ptp(src[cand], axis=0).max(), 1.0)) / 2.0
    centre = src[cand].mean(0)
    inliers_h = err_h < inlier_px
    best = FieldFit(H, None, scale, centre, n, int(inliers_h.sum()), None, float(np.median(err_h[cand])), src[inliers_h])
    k = int(cand.sum())
    if k < 3 * folds or k < 12:
        return best
    xs, ys, ws = (src[cand] - centre) / scale, dst[cand] - _apply_h(H, src[cand]), w[cand]
    fold = _spatial_folds(xs, folds, seed)
    smooth, err = _choose_smoothing(xs, ys, ws, fold, folds, smoothings, outlier_px, min_gain)
    if smooth is None:
        return FieldFit(H, None, scale, centre, n, int(inliers_h.sum()), None, float(np.median(err)), src[inliers_h])
    ok = err < outlier_px
    if int(ok.sum()) < 3:
        return best
    try:
        tps = _tps(xs[ok], ys[ok], ws[ok], smooth)
    except np.linalg.LinAlgError:
        return best
    fitted = _apply_h(H, src) + tps((src - centre) / scale)
    res = np.linalg.norm(fitted - dst, axis=1)
    return FieldFit(H, tps, scale, centre, n, int((res < inlier_px).sum()), smooth, float(np.median(err[ok])), src[res < inlier_px])


def _focus_centre(focus: Box) -> np.ndarray:
    return np.array([(focus.x0 + focus.x1) / 2.0, (focus.y0 + focus.y1) / 2.0])


def _prefer_local_model(H, src, dst, focus: Box | None, ransac_px: float, min_inliers: int, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
    """(H, its errors per match): a homography fitted on the matches within 1.5 crop sides of
    ``focus`` replaces the global one where the matches there support it better."""
    err_h = np.linalg.norm(_apply_h(H, src) - dst, axis=1)
    if focus is None:
        return H, err_h
    near = np.abs(src - _focus_centre(focus)).max(1) < 1.5 * max(focus.width, focus.height)
    if near.sum() >= 2 * min_inliers:
        H_loc = global_model(src[near], dst[near], ransac_px, min_inliers, mirrored)
        if H_loc is not None:
            err_loc = np.linalg.norm(_apply_h(H_loc, src) - dst, axis=1)
            if ((err_loc < ransac_px) & near).sum() > ((err_h < ransac_px) & near).sum():
                return H_loc, err_loc
    return H, err_h


def _residual_matches(cand: np.ndarray, src: np.ndarray, focus: Box | None, min_inliers: int) -> np.ndarray:
    """The matches the residual is fitted on: ``cand`` (near the homography), cut to those within
    two crop sides of ``focus`` where at least ``min_inliers`` are."""
    if focus is not None:
        near = np.abs(src - _focus_centre(focus)).max(1) < 2.0 * max(focus.width, focus.height)
        if (cand & near).sum() >= min_inliers:
            cand &= near
    return cand


def _spatial_folds(xs: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The cross-validation fold of each match: matches are grouped in cells of a coarse grid and
    whole cells held out, so a residual is scored on how it bridges gaps between matches (as it
    must across the mask) rather than on how it interpolates between close neighbours."""
    rng = np.random.default_rng(seed)
    cells = max(2, int(np.ceil(np.sqrt(2 * folds))))
    lo, hi = xs.min(0), xs.max(0)
    cell = np.floor((xs - lo) / np.maximum(hi - lo, 1e-9) * (cells - 1e-6)).astype(int)
    cell_id = cell[:, 1] * cells + cell[:, 0]
    return rng.permutation(cells * cells)[cell_id] % folds


def _cv_errors(xs, ys, ws, fold: np.ndarray, folds: int, smooth: float | None) -> np.ndarray:
    """Each match's held-out error: of the residual with ``smooth`` fitted on the other folds, or
    (None) of the homography alone."""
    err = np.empty(len(xs))
    for f in range(folds):
        te = fold == f
        if smooth is None:
            err[te] = np.linalg.norm(ys[te], axis=1)
            continue
        if int((~te).sum()) < 3:  # the other folds hold too few matches for a spline with a linear part
            err[te] = np.inf  # (matches crowded into one cell of the grid): this residual cannot be checked there
            continue
        try:
            err[te] = np.linalg.norm(_tps(xs[~te], ys[~te], ws[~te], smooth)(xs[te]) - ys[te], axis=1)
        except np.linalg.LinAlgError:
            err[te] = np.inf
    return err


def _choose_smoothing(xs, ys, ws, fold, folds: int, smoothings, outlier_px: float, min_gain: float) -> tuple[float | None, np.ndarray]:
    """(the smoothing, None for the homography alone; its held-out errors): the lowest typical
    error (robust to the remaining outliers), a residual kept only where it beats the homography
    alone by the factor ``min_gain``."""
    choices = [None, *smoothings]
    errs = [_cv_errors(xs, ys, ws, fold, folds, s) for s in choices]
    scores = [float(np.mean(np.minimum(e, outlier_px))) for e in errs]
    i = int(np.argmin(scores))
    if i > 0 and scores[i] > min_gain * scores[0]:  # a residual must earn its flexibility
        i = 0
    return choices[i], errs[i]


#: Where a field shrinks the reference by more than this (reference pixels per image pixel: a
#: reference photo at a higher resolution than the image), the pasted warp is low-passed first
#: (:meth:`DenseField.sample` with ``antialias``; `make-cases`' scale changes, up to 1.25, are
#: sampled as they are).
MINIFY_ABOVE = 1.5


#: The low-pass's Gaussian, in reference pixels: this times sqrt(f^2 - 1) for a field that shrinks
#: the reference f times (0.5 is the textbook choice; photos are softer than their pixel grid, and
#: 0.35 kept more of their detail on the scaled validation cases, MODEL_CARD.md, "A reference
#: sharper than the image").
ANTIALIAS_SIGMA = 0.35


def _antialiased_sample(reference: np.ndarray, xy: np.ndarray, factor: float, interpolation: int) -> np.ndarray:
    """``reference`` sampled at ``xy`` ((h, w, 2) float32) after a Gaussian low-pass of
    :data:`ANTIALIAS_SIGMA` x sqrt(``factor``^2 - 1) px, applied to the part of it the positions
    reach (point sampling of a picture shrunk ``factor`` times aliases its fine detail into
    moire). (h, w, C) as :meth:`DenseField.sample` returns it."""
    ref = np.asarray(reference)
    hr, wr = ref.shape[:2]
    finite = xy[np.isfinite(xy).all(axis=-1)]
    if not len(finite):
        return cv2.remap(np.ascontiguousarray(ref), xy[..., 0], xy[..., 1], interpolation, borderMode=cv2.BORDER_REFLECT)
    sigma = ANTIALIAS_SIGMA * float(np.sqrt(factor**2 - 1.0))
    pad = int(np.ceil(3 * sigma)) + 4
    x0, y0 = (int(np.clip(np.floor(v) - pad, 0, n - 1)) for v, n in zip(finite.min(0), (wr, hr)))
    x1, y1 = (int(np.clip(np.ceil(v) + pad + 1, lo + 1, n)) for v, n, lo in zip(finite.max(0), (wr, hr), (x0, y0)))
    part = np.ascontiguousarray(ref[y0:y1, x0:x1])
    blurred = cv2.GaussianBlur(part, (0, 0), sigma).reshape(part.shape)
    out = cv2.remap(blurred, (xy[..., 0] - x0).astype(np.float32), (xy[..., 1] - y0).astype(np.float32), interpolation, borderMode=cv2.BORDER_REFLECT)
    return out.reshape(xy.shape[:2] + ref.shape[2:])


#: :meth:`DenseField.push_mask` samples the box at twice its resolution up to this many samples, and
#: more sparsely beyond (a 2048 px crop's 16.8 million took 3 s; the 512 px pictures' crops need at
#: most 1 million).
PUSH_SAMPLES = 4_000_000


@dataclass
class DenseField:
    """Reference positions and their confidence for every pixel of ``box`` on the image, and the
    ring agreement its warp may be trusted at, at most (``trust_cap``: 1, no cap, unless the field
    was refined on that ring itself by :func:`~.field_refinement.refine_field_flow`)."""

    box: Box  # the image region covered (the zoom-in crop at full resolution)
    xy: np.ndarray  # (h, w, 2) float32: (x, y) on the reference for each pixel of box
    confidence: np.ndarray | None  # (h, w) float32 in [0, 1]; None on a candidate only ranked (dense_field, with_confidence)
    on_object: np.ndarray  # (h, w) bool: the position falls on the reference object
    fit: FieldFit | None = None  # in the image's pixels at the alignment's working scale (dense_alignment's info["working_scale"], else 1)
    counts: dict[str, int] = field(default_factory=dict)  # matches per source
    source: str = ""
    trust_cap: float = 1.0  # the ring agreement its warp may be trusted at, at most (a field refined on the ring: its agreement before)
    misfit_px: float | None = None  # the fit's cross-validated error on its own matches, image px at 512 px (field_misfit; None: not measured)

    def sample(self, reference: np.ndarray, interpolation: int = cv2.INTER_CUBIC, window: tuple[slice, slice] | None = None, antialias: bool = False) -> np.ndarray:
        """The reference warped into the box: (h, w, C) of ``reference`` sampled at ``xy`` (only
        the box's pixels in ``window``, a pair of slices, when given). With ``antialias``, where the
        field shrinks the reference by more than :data:`MINIFY_ABOVE` (a reference photo at a
        higher resolution than the image), the reference is low-passed first
        (:func:`_antialiased_sample`): point sampling would alias its fine detail. (The alignment
        compares warps unfiltered; the pasted warp is filtered, :func:`~.warp.warp_fill`.)"""
        xy = self.xy if window is None else np.ascontiguousarray(self.xy[window])
        f = self.minification() if antialias else 1.0
        if f > MINIFY_ABOVE:
            return _antialiased_sample(reference, xy, f, interpolation)
        return cv2.remap(np.ascontiguousarray(reference), xy[..., 0], xy[..., 1], interpolation, borderMode=cv2.BORDER_REFLECT)

    def median_steps(self, step: int = 1) -> tuple[np.floating | None, np.floating | None]:
        """The median lengths (reference px, in the field's own precision) of the field's one-pixel
        steps along x and along y, read every ``step`` px (None for an axis too short to read)."""
        xy = self.xy
        s = max(1, min(int(step), (min(xy.shape[:2]) - 1) // 2 or 1))
        jx = np.linalg.norm(xy[::s, s::s] - xy[::s, :-s:s], axis=-1) / s
        jy = np.linalg.norm(xy[s::s, ::s] - xy[:-s:s, ::s], axis=-1) / s
        return (np.median(jx) if jx.size else None, np.median(jy) if jy.size else None)

    def minification(self, step: int = 8) -> float:
        """How many reference pixels one image pixel spans, typically: the geometric mean of the
        median steps along x and along y (:meth:`median_steps`, read every ``step`` px; 1: the
        reference at the image's scale; 3: the reference three times the image's resolution)."""
        mx, my = self.median_steps(step)
        return 1.0 if mx is None or my is None else float(np.sqrt(mx * my))

    def push_mask(self, mask_box: np.ndarray, reference_shape: tuple[int, int]) -> np.ndarray:
        """M*: the mask (h, w) bool over ``box`` pushed through the field onto the reference (Hr, Wr)
        bool. Every pixel of the box, sampled at twice the image's resolution (so no holes open
        where the reference is larger; more sparsely on a box of over :data:`PUSH_SAMPLES` / 4
        pixels, a crop over 1000 px, whose field is then at most as fine as the reference), votes
        for the reference pixel it lands on: inside the mask
        or outside it; a reference pixel is in M* where the mask's votes outnumber the others (the
        pixels the mask covers more than half of, as `make-cases` draws the true region). Gaps no
        sample reached are closed at the field's local scale. (Marking every pixel a mask sample
        touched, as before the seventeenth session, grew M* by 7-17 % of its area: mIoU on the
        affine validation cases 0.940 -> 0.981 with the vote.)"""
        hr, wr = reference_shape
        h, w = mask_box.shape
        k = 2.0 if 4 * h * w <= PUSH_SAMPLES else float(np.sqrt(PUSH_SAMPLES / float(h * w)))  # samples per pixel, each way
        size = (2 * w, 2 * h) if k == 2.0 else (max(1, round(k * w)), max(1, round(k * h)))
        xy2 = cv2.resize(self.xy, size, interpolation=cv2.INTER_LINEAR)  # (kh, kw, 2) float32
        m2 = cv2.resize(np.asarray(mask_box, bool).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).view(bool).ravel()
        rx, ry = np.rint(xy2[..., 0]).ravel(), np.rint(xy2[..., 1]).ravel()  # (4hw,) float32 each
        ok = (rx >= 0) & (rx < wr) & (ry >= 0) & (ry < hr)  # (NaN compares False)
        if not (ok & m2).any():
            return np.zeros((hr, wr), bool)
        ix, iy, m2 = rx[ok].astype(np.intp), ry[ok].astype(np.intp), m2[ok]
        x0, y0 = int(ix.min()), int(iy.min())
        x1, y1 = int(ix.max()) + 1, int(iy.max()) + 1
        bw, bh = x1 - x0, y1 - y0
        idx = (iy - y0) * bw + (ix - x0)  # votes counted on the box the samples reach
        # the mask's votes minus the others': every sample counted once, the mask's (usually the
        # fewer) once more (two bincounts instead of two over boolean-indexed copies: a 2048 px
        # crop's 16.8 million samples took 5 s)
        lead = (2 * np.bincount(idx[m2], minlength=bw * bh) - np.bincount(idx, minlength=bw * bh)).reshape(bh, bw)
        region = (lead > 0).astype(np.uint8)
        # close at the field's local scale: a reference larger than the image leaves gaps (never
        # over pixels the outside's votes won)
        every = max(1, int(np.sqrt(h * w / 262_144.0)))  # (every pixel's steps up to a 512 px box, then a lattice of as many)
        r = int(np.ceil(max(1.0 if v is None else float(v) for v in self.median_steps(every)) / k))
        pad = max(r, 1) + 1
        closed = cv2.morphologyEx(np.pad(region, pad), cv2.MORPH_CLOSE, _disk(max(r, 1)))[pad:-pad, pad:-pad].astype(bool)
        out = np.zeros((hr, wr), bool)
        out[y0:y1, x0:x1] = closed & ~(lead < 0)
        return out


def on_reference_object(xy: np.ndarray, reference_mask: np.ndarray | None) -> np.ndarray:
    """Which positions ``xy`` (..., 2) float32 (x, y on the reference) land on the reference
    object: inside ``reference_mask`` (Hr, Wr) eroded by 1 px, so its outline is not copied, where
    its bilinear sample is at least 0.99 (off the reference: off the object); every finite
    position without a mask. The rule every field's ``on_object`` follows."""
    if reference_mask is None:
        return np.isfinite(xy).all(-1)
    obj = cv2.erode(np.asarray(reference_mask, bool).astype(np.uint8), _disk(1)).astype(np.float32)
    return cv2.remap(obj, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0) >= 0.99


def dense_field(
    fit: FieldFit, box: Box, reference_mask: np.ndarray | None, step: int = 4, reach: float | None = None, confidence: bool = True
) -> DenseField:
    """Evaluate ``fit`` on every pixel of ``box`` (on a ``step``-px lattice, bilinearly upsampled).

    Confidence: 1 near inlier matches, falling off as exp(-d / reach) with the distance d to the
    nearest one (``reach``: half the box side by default), times 0 where the position falls off the
    reference object (eroded by 1 px, so its outline is not copied). Without ``confidence`` the
    field's ``confidence`` is None (a candidate that is only ranked, by :func:`~.warp.warp_agreement`,
    which does not read it: the nearest-match search over the box is most of this function's
    time); :func:`with_confidence` adds it later, the same values."""
    h, w = box.height, box.width
    gy = np.arange(0, h + step, step, dtype=np.float64)
    gx = np.arange(0, w + step, step, dtype=np.float64)
    xx, yy = np.meshgrid(box.x0 + gx, box.y0 + gy)
    coarse = fit(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(len(gy), len(gx), 2).astype(np.float32)
    # bilinear upsampling of the lattice to pixels (lattice point k sits at pixel k * step)
    py, px = np.arange(h) / step, np.arange(w) / step
    xy = cv2.remap(coarse, *np.meshgrid(px.astype(np.float32), py.astype(np.float32)), cv2.INTER_LINEAR)
    fld = DenseField(box, xy, None, on_reference_object(xy, reference_mask), fit)
    return with_confidence(fld, reach) if confidence else fld


#: The fit's cross-validated error (:func:`field_misfit`, image pixels at 512 px) from which a warp's
#: blend weight falls, and where it reaches 0 (:func:`~.warp.warp_fill`).
MISFIT_PX = (3.5, 6.0)


def field_misfit(fld: DenseField, image_shape: tuple[int, int]) -> float | None:
    """How far the field's own mapping misses the matches it was fitted on, in image pixels of a
    512 px picture: the fit's median cross-validated error (``FieldFit.residual_px``, measured on
    the reference) divided by the field's scale over its box (reference px per image px, the square
    root of the Jacobian's absolute determinant, median over the finite pixels) and by max(H, W) /
    512 of the image (the matchers run at a bounded resolution and their positions are scaled up,
    so their errors grow with the picture). None where the field has no fit, or no scale can be
    measured (a box under 2 px a side, a degenerate field). On the project's cases the image's own
    photo warped by an affine or smooth non-rigid transform is fitted within 0.1-4.0 px (all but a
    few under 3.2); another photo of the object, whose parallax no homography with a smooth
    residual explains, within 0.9-7.4 px, its warp losing to no warp in most pairs over 3.5 px
    (MODEL_CARD.md, "Warps that miss their own matches")."""
    if fld.fit is None or not np.isfinite(fld.fit.residual_px) or min(fld.xy.shape[:2]) < 2:
        return None
    gx_y, gx_x = np.gradient(fld.xy[..., 0].astype(np.float64))  # d(ref x)/d(image y), d(ref x)/d(image x)
    gy_y, gy_x = np.gradient(fld.xy[..., 1].astype(np.float64))
    det = np.abs(gx_x * gy_y - gx_y * gy_x)
    det = det[np.isfinite(det)]
    scale = float(np.sqrt(np.median(det))) if det.size else 0.0
    if not np.isfinite(scale) or scale <= 1e-6:
        return None
    return float(fld.fit.residual_px / scale * 512.0 / max(image_shape[:2]))


def with_confidence(fld: DenseField, reach: float | None = None) -> DenseField:
    """``fld`` with its confidence, as :func:`dense_field` gives it (``fld`` itself when it has
    one): exp(-d / ``reach``) with d the distance from each pixel of the box to the nearest inlier
    match of ``fld.fit`` (``reach``: half the box side by default), 0 off the reference object."""
    if fld.confidence is not None:
        return fld
    box, fit = fld.box, fld.fit
    h, w = box.height, box.width
    reach = 0.5 * max(h, w) if reach is None else reach
    if fit is not None and len(fit.inlier_xy):
        from scipy.spatial import cKDTree

        pix = np.stack(np.meshgrid(box.x0 + np.arange(w), box.y0 + np.arange(h)), -1).reshape(-1, 2)
        d, _ = cKDTree(fit.inlier_xy).query(pix, k=1, workers=worker_threads())  # exact; the query split over the cores
        conf = np.exp(-d.reshape(h, w) / max(reach, 1.0)).astype(np.float32)
    else:
        conf = np.zeros((h, w), np.float32)
    return replace(fld, confidence=(conf * fld.on_object).astype(np.float32))


#: A reference picture whose longer side is this many times shorter than the image's (at the
#: working scale) or more is matched scaled up to the image's size (:func:`reference_upscale`), by
#: at most :data:`REFERENCE_UPSCALE_MAX`: ALIKED, the template search and the rings' fine detail
#: want the object at about the image's scale (a product photo at half the image's resolution lost
#: every field on val2's plain candles; MODEL_CARD.md, thirty-third session). None: never.
REFERENCE_UPSCALE_ABOVE = 1.5
REFERENCE_UPSCALE_MAX = 4.0


def reference_upscale(image_shape: tuple, reference_shape: tuple, above: float | None = REFERENCE_UPSCALE_ABOVE) -> float:
    """The factor a reference is matched scaled up by: the image's longer side over the
    reference's, where that is at least ``above`` (at most :data:`REFERENCE_UPSCALE_MAX`), else 1."""
    if above is None:
        return 1.0
    ratio = max(image_shape[:2]) / float(max(reference_shape[:2]))
    return min(ratio, REFERENCE_UPSCALE_MAX) if ratio >= above else 1.0


def upscaled_reference(reference: np.ndarray, masks: tuple, factor: float) -> tuple[np.ndarray, list, tuple[float, float]]:
    """``reference`` (Hr, Wr, 3) scaled up by ``factor`` (Lanczos), each of ``masks`` ((Hr, Wr)
    bool or None) by the nearest pixel, and the exact factors (fx, fy) of the whole-pixel size."""
    hr, wr = reference.shape[:2]
    sw, sh = max(1, round(wr * factor)), max(1, round(hr * factor))
    big = cv2.resize(np.ascontiguousarray(reference), (sw, sh), interpolation=cv2.INTER_LANCZOS4)
    grown = [None if m is None else cv2.resize(np.asarray(m, np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST).astype(bool) for m in masks]
    return big, grown, (sw / float(wr), sh / float(hr))


def field_scaled_back(fld: DenseField, f: tuple[float, float], reference_mask: np.ndarray | None) -> DenseField:
    """A field onto a reference scaled up by ``f`` = (fx, fy) with its positions on the reference as
    given (pixel centres kept) and its object test made again on ``reference_mask``; ``fit`` stays
    in the scaled reference's pixels."""
    xy = np.stack([rescaled(fld.xy[..., 0], 1.0 / f[0]), rescaled(fld.xy[..., 1], 1.0 / f[1])], axis=-1).astype(np.float32)
    return replace(fld, xy=xy, on_object=on_reference_object(xy, reference_mask), counts=dict(fld.counts))


def field_at_full_scale(fld: DenseField, box: Box, fx: float, fy: float) -> DenseField:
    """A field computed on a picture scaled by (``fx``, ``fy``) (its box that picture's pixels)
    read back over ``box`` of the full-resolution picture: each full-resolution pixel reads the
    scaled field at its own centre, (X + 0.5) * fx - 0.5 (bilinear in floating point, the edge
    replicated; the object mask by the nearest pixel). The reference positions are as they are
    (the reference was not scaled); ``fit`` stays in the scaled picture's pixels."""
    small = fld.box
    u = rescaled(np.arange(box.x0, box.x1, dtype=np.float64), fx) - small.x0  # (w,)
    v = rescaled(np.arange(box.y0, box.y1, dtype=np.float64), fy) - small.y0  # (h,)
    near = np.ix_(np.clip(np.rint(v), 0, small.height - 1).astype(int), np.clip(np.rint(u), 0, small.width - 1).astype(int))
    return replace(
        fld,
        box=box,
        xy=_bilinear_at(fld.xy, u, v),  # (h, w, 2)
        confidence=None if fld.confidence is None else _bilinear_at(fld.confidence, u, v),
        on_object=fld.on_object[near],
        counts=dict(fld.counts),
    )


def _bilinear_at(a: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``a`` (h, w) or (h, w, C) read bilinearly at columns ``u`` (W,) and rows ``v`` (H,) (pixel
    coordinates, the edge replicated beyond them): (H, W) or (H, W, C) float32, separable and in
    floating point (OpenCV's remap rounds positions to a 32nd of a pixel: 0.03 px off on a field
    that steps 3 px a pixel)."""

    def along(a: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        t = np.clip(t, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(t).astype(int), max(n - 2, 0))
        i1 = np.minimum(i0 + 1, n - 1)
        wt = (t - i0).reshape([-1 if k == axis else 1 for k in range(a.ndim)])
        return np.take(a, i0, axis) * (1.0 - wt) + np.take(a, i1, axis) * wt

    return along(along(np.asarray(a, np.float64), u, 1), v, 0).astype(np.float32)
