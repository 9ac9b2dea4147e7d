"""Artifact detection (issue 15 part 2): a proposed artifact mask from an image and a reference.

No mask is given, so the field is fitted over the whole image: point matches between the whole
image and the reference object (:func:`~.matching.sift_matches` and, where its weights are
found, :func:`~.matching.aliked_matches`, each with an empty exclusion mask, in both
orientations of the reference), a robust homography plus thin-plate-spline residual
(:func:`~.fields.fit_field`) evaluated on every pixel (:func:`~.fields.dense_field`).
Artifacts are few and local, so RANSAC treats the matches on them as outliers and the field follows
the rest of the object. The fit leaves a smooth residual where the object bends; a dense optical
flow between the image and the warp, smoothed over many pixels (:func:`settle_field`), takes it
up, too coarse to follow an artifact.

Where the image disagrees with the reference warped through the field is scored by
:func:`disagreement`, built to ignore what differs between two honest photos of the object:

* colour: the warp is colour-matched to the image over the object (per-channel gain and offset)
  and the comparison is made on locally normalised values (each pixel against the mean and spread
  of its neighbourhood), so a change of light or white balance scores nothing;
* small misalignments: each pixel is compared with the best of the warp's pixels within
  ``tolerance_px`` (a shift-tolerant difference), so a field a pixel or two off scores nothing at
  edges;
* structure: the difference of local gradient structure (detail present on one side and missing
  on the other: smears, lost detail, a wrong texture).

The score is thresholded relative to its own spread over the object (median + ``k`` x MAD), and
cleaned (small specks opened away, gaps closed, holes filled, pieces under ``min_area`` dropped).
:func:`colour_difference` is the plain baseline: the colour difference after the same warp and
colour match, thresholded and cleaned the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..io import MAX_MASK_SHARE
from ..zoom import Box, rescaled
from .fields import DenseField, dense_field, field_at_full_scale, field_scaled_back, fit_field, on_reference_object, reference_upscale, upscaled_reference
from .matching import Matches, aliked_matches, sift_matches
from .warp import colour_transfer, normalised_blur

__all__ = [
    "FEATURES", "WEIGHTS", "Detection", "detect", "load_matcher", "evaluate_cases", "fit_image_field", "features", "disagreement", "fit_weights",
    "colour_difference", "clean_mask", "propose_mask", "mask_scores",
]


@dataclass
class Detection:
    """A proposed artifact mask."""

    mask: np.ndarray  # (H, W) bool: the proposed artifact mask
    heatmap: np.ndarray  # (H, W) float32 in [0, 1]: the disagreement score (0 off the compared area)
    valid: np.ndarray  # (H, W) bool: where the image could be compared (its pixels land on the reference object)
    field: DenseField | None  # the image -> reference field (None: no consistent field)
    info: dict = field(default_factory=dict)  # matches, inliers, mirrored, settled, threshold, notes


def _disk(r: int) -> np.ndarray:
    r = max(int(r), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _subsample(m: Matches, n: int, seed: int = 0) -> Matches:
    if len(m) <= n:
        return m
    idx = np.sort(np.random.default_rng(seed).choice(len(m), n, replace=False))
    return Matches(m.img_xy[idx], m.ref_xy[idx], m.weight[idx], dict(m.counts))


def fit_image_field(
    image: np.ndarray,
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    aliked=None,
    mirror: bool = True,
    max_matches: int = 800,
    erode_px: int = 8,
) -> tuple[DenseField | None, dict]:
    """A field over the whole ``image`` (H, W, 3 uint8) onto ``reference`` (its object
    ``reference_mask``): matches from SIFT (and ALIKED when ``aliked`` is the model) with nothing
    excluded, fitted for each orientation of the reference (the mirrored one when ``mirror``); per
    source set the orientation with more inliers wins. With ALIKED there are two candidates, SIFT
    alone (few, precise matches: the better field under an affine change) and SIFT + ALIKED (many:
    the better one where the object bends); the one whose colour-matched warp agrees better with
    the image (normalised cross-correlation of the grey values where both land on the object,
    ``erode_px`` inside it) is kept. Returns (field or None, info)."""
    h, w = image.shape[:2]
    nothing = np.zeros((h, w), bool)
    info: dict = {"matches": {}, "candidates": {}}
    per: dict[bool, tuple[Matches, Matches | None]] = {}
    for mirrored in (False, True) if mirror else (False,):
        s = sift_matches(image, nothing, reference, reference_mask, flip=mirrored)
        a = aliked_matches(image, nothing, reference, reference_mask, aliked, flip=mirrored) if aliked is not None else None
        per[mirrored] = (s, a)
        key = "mirrored" if mirrored else "as given"
        info["matches"][key] = {"sift": len(s)} | ({"aliked": len(a)} if a is not None else {})
    fields = {}
    for name in ("sift", "sift+aliked") if aliked is not None else ("sift",):
        best = None
        for mirrored, (s, a) in per.items():
            m = s if name == "sift" else s + a
            fit = fit_field(_subsample(m, max_matches), mirrored=mirrored)
            if fit is not None and (best is None or fit.inliers > best[0].inliers):
                best = (fit, mirrored, m)
        if best is not None:
            fit, mirrored, m = best
            fld = dense_field(fit, Box(0, 0, w, h), reference_mask)
            fld.counts, fld.source = dict(m.counts), name
            fields[name] = (fld, mirrored)
    if not fields:
        return None, info
    name = next(iter(fields))
    if len(fields) > 1:
        valids = {k: _valid(f, erode_px) for k, (f, _) in fields.items()}
        common = np.logical_and.reduce(list(valids.values()))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        for k, (f, _) in fields.items():
            warped = cv2.cvtColor(_matched_warp(image, reference, f, valids[k]), cv2.COLOR_RGB2GRAY)
            info["candidates"][k] = round(_ncc(grey[common], warped[common]), 4) if common.sum() >= 64 else -1.0
        name = max(info["candidates"], key=info["candidates"].get)
    fld, mirrored = fields[name]
    fit = fld.fit
    info.update(source=name, inliers=fit.inliers, mirrored=mirrored, smoothing=fit.smoothing, residual_px=round(fit.residual_px, 3))
    return fld, info


#: px: the Gaussian over which :func:`settle_field` smooths the flow (chosen on the seed-1 cases)
SETTLE_SIGMA = 10.0
#: the share of the flow's vectors, those farthest from its median, that :func:`settle_field`
#: leaves out of the smoothing (an artifact's own flow is wild)
SETTLE_OUTLIERS = 0.1


def settle_field(
    image: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray | None, fld: DenseField, erode_px: int = 8, sigma: float = SETTLE_SIGMA
) -> DenseField:
    """The whole-image field with the smooth residual its fit left taken up by optical flow.

    The homography plus thin-plate spline through the matches leaves a few pixels of error on a
    bent object, and at that error every edge of the object disagrees with the warp (false
    alarms). Here DIS optical flow (Kroeger et al., ECCV 2016, OpenCV's MEDIUM preset) from the
    image to the colour-matched warp gives each pixel's remaining shift; the shifts of the pixels
    that land on the object (``erode_px`` inside it) are averaged by a Gaussian of ``sigma`` px
    (normalised convolution), leaving out the :data:`SETTLE_OUTLIERS` share farthest from their
    median, so the result is a smooth correction that an artifact (a few per cent of the image)
    cannot pull toward itself. The field is composed with it (``xy(p + shift(p))``) and its
    on-object mask recomputed (:func:`~.fields.on_reference_object`). The settled field is
    kept only where its colour-matched warp correlates with the image better than the fitted
    field's (grey values where both land on the object): on a thin or see-through object the flow
    follows the background showing through it. Detection IoU on the nonrigid cases of the
    validation sets rises most (README, "Artifact detection"). Returns the settled field or the
    given one (also where fewer than 500 pixels land on the object)."""
    valid = _valid(fld, erode_px)
    if valid.sum() < 500:
        return fld
    warped = _matched_warp(image, reference, fld, valid)
    g_image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    g_warp = cv2.cvtColor(warped.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(g_image, g_warp, None)  # (H, W, 2): image p ~ warp p + flow
    dev = np.linalg.norm(flow - np.median(flow[valid], axis=0), axis=-1)
    used = valid & (dev <= np.quantile(dev[valid], 1.0 - SETTLE_OUTLIERS))
    shift = normalised_blur(flow, used, sigma)  # (H, W, 2)
    h, w = g_image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xs + shift[..., 0], ys + shift[..., 1]
    xy = np.stack([cv2.remap(np.ascontiguousarray(fld.xy[..., c]), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in range(2)], -1)
    xy = xy.astype(np.float32)
    settled = replace(fld, xy=xy, on_object=on_reference_object(xy, reference_mask))
    # kept only where its warp agrees with the image better than the fit's did (on a thin or
    # see-through object the flow follows what shows through it, and the warp falls apart)
    both = valid & _valid(settled, erode_px)
    if both.sum() < 500:
        return fld
    grey = g_image.astype(np.float32)
    before = _ncc(grey[both], cv2.cvtColor(_matched_warp(image, reference, fld, both), cv2.COLOR_RGB2GRAY)[both])
    after = _ncc(grey[both], cv2.cvtColor(_matched_warp(image, reference, settled, both), cv2.COLOR_RGB2GRAY)[both])
    return settled if after > before else fld


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two sets of values (0 when either is constant)."""
    a = a.astype(np.float64).ravel() - float(a.mean())
    b = b.astype(np.float64).ravel() - float(b.mean())
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


def _valid(fld: DenseField, erode_px: int) -> np.ndarray:
    """The image pixels that land on the reference object, away from its outline."""
    return cv2.erode(fld.on_object.astype(np.uint8), _disk(erode_px)).astype(bool)


def _matched_warp(image: np.ndarray, reference: np.ndarray, fld: DenseField, valid: np.ndarray) -> np.ndarray:
    """The reference warped through ``fld`` and colour-matched to the image over ``valid``: (H, W, 3) float32."""
    warped = fld.sample(reference).astype(np.float32)
    gain, offset = colour_transfer(warped, image, valid if valid.sum() >= 64 else np.ones(valid.shape, bool))
    return np.clip(warped * gain + offset, 0, 255).astype(np.float32)


def _shift_min(a: np.ndarray, b: np.ndarray, r: int, fn) -> np.ndarray:
    """min over shifts |d| <= r of fn(a, b shifted by d): (H, W)."""
    if r <= 0:
        return fn(a, b)
    pad = [(r, r), (r, r)] + [(0, 0)] * (b.ndim - 2)
    bp = np.pad(b, pad, mode="edge")
    h, w = a.shape[:2]
    out = None
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > r * r:
                continue
            d = fn(a, bp[r + dy : r + dy + h, r + dx : r + dx + w])
            out = d if out is None else np.minimum(out, d)
    return out


def _local_norm(x: np.ndarray, sigma: float, floor: float) -> np.ndarray:
    """Each channel against its local (Gaussian ``sigma``) mean, divided by the local spread (at
    least ``floor``): invariant to a local gain and offset."""
    mu = cv2.GaussianBlur(x, (0, 0), sigma)
    var = cv2.GaussianBlur(x * x, (0, 0), sigma) - mu * mu
    return (x - mu) / np.sqrt(np.maximum(var, 0.0) + floor * floor)


def _structure(x: np.ndarray, sigma: float) -> np.ndarray:
    """Local gradient energy of a grey image (how much detail is there), (H, W)."""
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), sigma))


#: Names of the per-pixel features of :func:`features`, in order.
FEATURES = ("colour", "colour_blurred", "normalised_tolerant", "structure", "detail_added", "detail_lost")

#: Logistic-regression weights on log(1 + max(feature, 0)) of each feature (MADs above its median
#: over the compared area), the last one the bias: fitted by :func:`fit_weights` on the 24 cases
#: of ``make-cases --seed 1 --per-subject 6`` (all pixels of the artifacts, 20,000 others a case,
#: classes balanced) with the fields settled by :func:`settle_field` (thirty-first session; the
#: weights fitted on the fit alone were [-0.031, 1.266, 0.773, 0.837, -0.35, 0.125, -2.631]), and
#: measured on the seed-0 set (README).
WEIGHTS = np.array([0.303, 0.994, 1.078, 0.781, -0.197, 0.3, -3.472])


def features(image: np.ndarray, warped: np.ndarray, valid: np.ndarray, tolerance_px: int = 2, sigma: float = 6.0) -> np.ndarray:
    """Per-pixel disagreement features between ``image`` (H, W, 3) and the colour-matched
    ``warped`` reference (H, W, 3 float), each as MADs above its median over ``valid`` (so each
    image sets its own scale): (H, W, len(FEATURES)) float32. See :data:`FEATURES`: the colour
    difference (plain and blurred), the locally normalised difference (invariant to a local gain
    and offset) taken at the best shift within ``tolerance_px``, and the log ratio of local
    gradient energy (detail present on one side only; both signs and either)."""
    img = image.astype(np.float32)
    warped = warped.astype(np.float32)
    col = np.abs(img - warped).mean(-1)
    col_b = cv2.GaussianBlur(col, (0, 0), 3.0)
    ni, nw = _local_norm(img, sigma, 6.0), _local_norm(warped, sigma, 6.0)
    d_norm = cv2.GaussianBlur(_shift_min(ni, nw, tolerance_px, lambda a, b: np.abs(a - b).mean(-1)), (0, 0), 2.0)
    gi, gw = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY)
    st = np.log((_structure(gi, sigma / 2) + 4.0) / (_structure(gw, sigma / 2) + 4.0))
    out = []
    for f in (col, col_b, d_norm, np.abs(st), np.maximum(st, 0.0), np.maximum(-st, 0.0)):
        x = f[valid] if valid.any() else f.ravel()
        med = float(np.median(x))
        mad = float(np.median(np.abs(x - med))) * 1.4826 + 1e-6
        out.append(np.clip((f - med) / mad, -5.0, 50.0))
    return np.stack(out, -1).astype(np.float32)


def _design(f: np.ndarray) -> np.ndarray:
    return np.concatenate([np.log1p(np.clip(f, 0.0, None)), np.ones(f.shape[:-1] + (1,), np.float32)], -1)


def disagreement(image: np.ndarray, warped: np.ndarray, valid: np.ndarray, weights: np.ndarray | None = None, tolerance_px: int = 2) -> np.ndarray:
    """The probability (H, W) float32 in [0, 1] that each pixel is an artifact, from
    :func:`features` and the logistic weights (default :data:`WEIGHTS`); 0 off ``valid``."""
    w = WEIGHTS if weights is None else np.asarray(weights, np.float64)
    z = _design(features(image, warped, valid, tolerance_px)) @ w
    p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    return np.where(valid, p, 0.0).astype(np.float32)


def fit_weights(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], negatives: int = 20000, l2: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Logistic-regression weights for :func:`disagreement` from ``samples`` of (features (H, W, F)
    as :func:`features` gives them, valid (H, W) bool, the true artifact mask (H, W) bool): every
    artifact pixel, ``negatives`` other pixels a sample, the classes balanced; Newton's method."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for f, valid, true in samples:
        pos = f[valid & true]
        neg = f[valid & ~true]
        neg = neg[rng.choice(len(neg), min(negatives, len(neg)), replace=False)] if len(neg) else neg
        xs += [pos, neg]
        ys += [np.ones(len(pos)), np.zeros(len(neg))]
    x = _design(np.concatenate(xs)).astype(np.float64)
    y = np.concatenate(ys)
    sw = np.where(y > 0, (y == 0).sum() / max((y > 0).sum(), 1), 1.0)
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], 2.0 * l2 * len(x))  # the mean loss + l2 |w|^2, times the sample count
    reg[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        g = x.T @ (sw * (p - y)) + reg * w
        hess = (x * (sw * p * (1 - p))[:, None]).T @ x + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, g)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def colour_difference(image: np.ndarray, warped: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The baseline score: the plain colour difference between the image and the colour-matched
    warp (mean absolute over the channels, 0..255), 0 off ``valid``."""
    d = np.abs(image.astype(np.float32) - warped).mean(-1)
    return np.where(valid, d, 0.0).astype(np.float32)


def clean_mask(m: np.ndarray, min_area: float = 0.0005, close_px: int = 3) -> np.ndarray:
    """Open away specks, close gaps of ``close_px``, fill holes, drop pieces under ``min_area`` of the image."""
    m = np.asarray(m, bool).astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(1))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(close_px))
    h, w = m.shape
    flood = np.pad(m, 1).copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    m = m | (1 - flood[1:-1, 1:-1])
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= max(min_area * h * w, 4)
    return keep[labels]


def propose_mask(score: np.ndarray, valid: np.ndarray, k: float = 6.0, min_area: float = 0.0005, close_px: int = 3) -> tuple[np.ndarray, float]:
    """The baseline's threshold: ``score`` above median + ``k`` x MAD over ``valid`` (robust: the
    artifact is a small part), cleaned by :func:`clean_mask`. Returns (mask, the threshold)."""
    v = score[valid]
    if v.size < 64:
        return np.zeros(score.shape, bool), float("inf")
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    thr = med + k * max(mad, 1e-6)
    return clean_mask((score > thr) & valid, min_area, close_px), thr


def mask_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """IoU, recall and precision of a proposed mask against the true one."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    inter = float((pred & true).sum())
    union = float((pred | true).sum())
    return {
        "iou": inter / union if union else 1.0,
        "recall": inter / float(true.sum()) if true.any() else 1.0,
        "precision": inter / float(pred.sum()) if pred.any() else float(not true.any()),
    }


def load_matcher(weights=None):
    """The ALIKED model for :func:`detect` (``weights``: a .safetensors file or folder; default: the
    ``REFINE_BY_ALIGN_WEIGHTS`` folder or ``../shared/weights``), or None when its weights are not
    found or cannot be loaded (detection then runs on SIFT alone; :func:`~..models.aliked.load_aliked`
    says why)."""
    from ..models.aliked import load_aliked

    return load_aliked(weights)[0]


#: :func:`detect` compares the image at most this many px on its longer side: a larger image is
#: scaled down to it (by area) and the proposal, its map and field are scaled back. Its pixel sizes
#: (``erode_px``, the shift tolerance, the structure's blur, the smallest piece) are set on 512 px
#: cases; on val2 built at 2048 px the full-resolution comparison took 21 s for a case (dog6_01)
#: and its proposal met the artifact at IoU 0.16 (MODEL_CARD.md, "Large pictures"). None: always at
#: full resolution.
DETECT_MAX_SIDE = 512


def detect(
    image,
    reference,
    reference_mask: np.ndarray | None = None,
    aliked=None,
    method: str = "learned",
    threshold: float | None = None,
    erode_px: int = 8,
    estimate_object: bool = True,
    max_side: int | None = DETECT_MAX_SIDE,
    settle: bool = True,
    names: dict[str, str] | None = None,
) -> Detection:
    """Propose the artifact mask of ``image`` (PIL image or (H, W, 3) uint8) against ``reference``
    (its object ``reference_mask`` (Hr, Wr) bool; None: the reference's alpha, else the whole
    photo). ``aliked``: the ALIKED model, to add its matches (None: SIFT alone). ``method``:
    ``learned`` (default: :func:`disagreement`, pixels above probability ``threshold``, default
    0.8) or ``colour`` (the plain baseline: :func:`colour_difference` above median + ``threshold``
    MADs, default 6). Only pixels that land at least ``erode_px`` inside the reference object are
    compared (``Detection.valid``). With no reference mask and no alpha the object is estimated
    from the photo (``estimate_object``; else the whole photo), and ``info["notes"]`` says so.
    When no consistent field is found the mask is empty and ``info["note"]`` says why. An image
    over ``max_side`` px is compared scaled down to it, the results read back at its own size
    (``info["working_scale"]``; the reference as given). A reference picture at least
    :data:`~.fields.REFERENCE_UPSCALE_ABOVE` times smaller than the (working) image is compared
    scaled up to the image's size, as the alignment matches it (``info["reference_scale"]`` and a
    note; the field returned on the reference as given). ``settle``: the fitted field's smooth
    residual taken up by a smoothed optical flow first (:func:`settle_field`; False: the fit alone,
    as before the thirty-first session). ``names``: role (``reference``, ``reference_mask``) -> file
    name, for the messages of a refused input."""
    from ..io import InputError, alpha_mask, as_mask, check_detect_settings, check_reference_mask, to_rgb

    check_detect_settings(method, threshold)
    if isinstance(erode_px, bool) or not isinstance(erode_px, (int, np.integer)) or not 0 <= erode_px <= 64:
        raise InputError(f"erode_px must be an integer in 0..64 (px inside the reference object; default 8), got {erode_px!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 64):
        raise InputError(f"max_side must be None or an integer of at least 64 (px; default {DETECT_MAX_SIDE}), got {max_side!r}")
    names = names or {}

    if not isinstance(image, np.ndarray):
        image = np.asarray(to_rgb(image))
    from_alpha = False
    if not isinstance(reference, np.ndarray):
        if reference_mask is None:
            reference_mask = alpha_mask(reference)
            from_alpha = reference_mask is not None
        reference = np.asarray(to_rgb(reference))
    if image.ndim != 3 or reference.ndim != 3 or image.shape[2] < 3 or reference.shape[2] < 3:
        raise InputError(f"image {image.shape} and reference {reference.shape} must be (H, W, 3) colour images")
    for what, arr in (("image", image), ("reference", reference)):
        if arr.dtype != np.uint8:  # (0..1 floats cast to uint8 were a black picture, and no word)
            raise InputError(f"{what}: a {arr.dtype} array; give 8-bit (uint8) pixels or a PIL image")
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    reference = np.ascontiguousarray(reference[..., :3]).astype(np.uint8)
    if min(image.shape[:2]) < 16 or min(reference.shape[:2]) < 16:
        raise InputError("image and reference must be at least 16x16 to detect artifacts")
    if reference_mask is not None:
        reference_mask = as_mask(reference_mask, "reference_mask")
    check_reference_mask(
        reference_mask, (reference.shape[1], reference.shape[0]), lambda role: f"{role} '{names[role]}'" if role in names else role, from_alpha
    )
    h, w = image.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        return _detect_scaled(image, reference, reference_mask, aliked, method, threshold, erode_px, estimate_object, int(max_side), settle)
    notes = []
    if reference_mask is None and estimate_object:  # as the pipeline does: the object estimated by GrabCut
        from ..data.foreground import estimate_foreground, estimate_note

        reference_mask = estimate_foreground(reference)
        notes.append(estimate_note(reference_mask))
    # a reference picture much smaller than the image is compared scaled up to the image's size,
    # as the alignment matches it (fields.reference_upscale); the field is returned on it as given
    given_mask, f = reference_mask, None  # (f: the scale factors (fx, fy) where it was scaled)
    factor = reference_upscale(image.shape, reference.shape)
    if factor > 1.0:
        reference, (reference_mask,), f = upscaled_reference(reference, (reference_mask,), factor)
    fld, info = fit_image_field(image, reference, reference_mask, aliked, erode_px=erode_px)
    if fld is not None and settle:
        fitted, fld = fld, settle_field(image, reference, reference_mask, fld, erode_px)
        info["settled"] = fld is not fitted  # False: the flow's warp agreed with the image less than the fit's
    info["method"] = method
    info["notes"] = notes
    if f is not None:
        info["reference_scale"] = round(float(np.sqrt(f[0] * f[1])), 4)
        notes.append(f"the reference is {info['reference_scale']:.1f}x smaller than the image: it was compared scaled up to the image's size")
    if fld is None:
        info["note"] = "no consistent field between the image and the reference (too few agreeing matches): nothing proposed"
        z = np.zeros((h, w), bool)
        return Detection(z, np.zeros((h, w), np.float32), z, None, info)
    valid = _valid(fld, erode_px)
    warped = _matched_warp(image, reference, fld, valid)
    if method == "learned":
        heat = disagreement(image, warped, valid)
        thr = 0.8 if threshold is None else float(threshold)
        mask = clean_mask((heat > thr) & valid)
    else:
        score = colour_difference(image, warped, valid)
        mask, thr = propose_mask(score, valid, k=6.0 if threshold is None else float(threshold))
        heat = np.clip(score / (2.0 * thr), 0.0, 1.0) if np.isfinite(thr) and thr > 0 else np.zeros_like(score)
    info.update(threshold=round(float(thr), 4), compared=round(float(valid.mean()), 4), proposed=round(float(mask.mean()), 5))
    if mask.mean() > MAX_MASK_SHARE:  # (a refine would take it for an inverted mask: say what it is instead)
        notes.append(
            f"the proposal marks {mask.mean():.0%} of the image, more than a refine takes (at most {MAX_MASK_SHARE:.0%}): "
            "the reference likely shows the object otherwise (another view, other light); draw the mask, or keep a part of the proposal"
        )
    return Detection(mask, heat.astype(np.float32), valid, fld if f is None else field_scaled_back(fld, f, given_mask), info)


def _detect_scaled(image, reference, reference_mask, aliked, method, threshold, erode_px, estimate_object, max_side: int, settle: bool) -> Detection:
    """:func:`detect` on ``image`` (H, W, 3) scaled down (by area) to ``max_side`` px on its longer
    side, and the reference by the same factor where it stays at least ``max_side`` px (val2 at
    2048 px: IoU 0.27 with the reference as given, 0.31 scaled with the image), its results read
    back at (H, W): the mask from its own scaled-up outline (bilinear, at half), the map
    bilinearly, the compared area by the nearest pixel, the field at each pixel's centre
    (:func:`~.fields.field_at_full_scale`) with its positions on the reference as given, and which
    of them land on the object (``on_object``) read at those positions on the given
    ``reference_mask`` (:func:`~.fields.on_reference_object`), as every field's is."""
    h, w = image.shape[:2]
    given_mask = reference_mask  # (Hr, Wr) bool or None: on the reference as given
    f = max_side / float(max(h, w))
    sw, sh = max(16, round(w * f)), max(16, round(h * f))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    # the reference by the same factor (the two keep their relative scale, at which the matchers
    # found the most matches), but not below max_side px on its longer side
    rh, rw = reference.shape[:2]
    g = min(1.0, max(f, max_side / float(max(rh, rw))))
    rsw, rsh = (rw, rh) if g >= 1.0 else (max(16, round(rw * g)), max(16, round(rh * g)))
    if (rsw, rsh) != (rw, rh):
        reference = cv2.resize(reference, (rsw, rsh), interpolation=cv2.INTER_AREA)
        if reference_mask is not None:
            reference_mask = cv2.resize(np.asarray(reference_mask, np.uint8), (rsw, rsh), interpolation=cv2.INTER_NEAREST).astype(bool)
    d = detect(small, reference, reference_mask, aliked, method, threshold, erode_px, estimate_object, max_side=None, settle=settle)
    if d.field is not None and (rsw, rsh) != (rw, rh):  # reference positions back on the reference as given
        d.field.xy = rescaled(d.field.xy, (rw / float(rsw), rh / float(rsh)))
    up = lambda a, interp: cv2.resize(np.asarray(a, np.float32), (w, h), interpolation=interp)  # noqa: E731
    mask = up(d.mask, cv2.INTER_LINEAR) >= 0.5
    valid = up(d.valid, cv2.INTER_NEAREST) > 0.5
    heat = np.clip(up(d.heatmap, cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)
    fld = None if d.field is None else field_at_full_scale(d.field, Box(0, 0, w, h), sw / float(w), sh / float(h))
    if fld is not None and given_mask is not None:
        # (where it lands on the object, read at the full-resolution positions: the scaled field's
        # nearest pixel is up to 1 / scale px off at the object's outline. An object estimated
        # inside the scaled call keeps its scaled-up nearest pixel: the estimate is not returned)
        fld = replace(fld, on_object=on_reference_object(fld.xy, given_mask))
    info = dict(d.info, working_scale=round(float(np.sqrt(sw * sh / float(w * h))), 4))
    if "proposed" in info:
        info.update(compared=round(float(valid.mean()), 4), proposed=round(float(mask.mean()), 5))
    return Detection(mask & valid, heat, valid, fld, info)


def evaluate_cases(folder, aliked=None, methods: tuple[str, ...] = ("learned", "colour"), settle: bool = True) -> dict:
    """Score the proposals on a folder of case folders (``make-cases``: image.png, mask.png = the
    true artifact mask, reference.png, reference_mask.png): per case and method IoU, recall,
    precision and seconds; and their means per case kind (the folder name's last part) and over all.
    A case with no consistent field counts as an empty proposal."""
    import time
    from pathlib import Path

    from ..io import load_image, load_mask

    rows = []
    for case in sorted(p for p in Path(folder).iterdir() if (p / "mask.png").exists()):
        image, reference = load_image(case / "image.png"), load_image(case / "reference.png", "reference")
        true = load_mask(case / "mask.png")
        rm = load_mask(case / "reference_mask.png", "reference_mask") if (case / "reference_mask.png").exists() else None
        for method in methods:
            t = time.perf_counter()
            det = detect(image, reference, rm, aliked=aliked, method=method, settle=settle)
            rows.append({"case": case.name, "kind": case.name.rsplit("_", 1)[-1], "method": method,
                         **{k: round(v, 4) for k, v in mask_scores(det.mask, true).items()},
                         "seconds": round(time.perf_counter() - t, 3), "field": det.field is not None})
    summary: dict = {}
    for method in methods:
        for kind in ["all", *sorted({r["kind"] for r in rows})]:
            sel = [r for r in rows if r["method"] == method and (kind == "all" or r["kind"] == kind)]
            if sel:
                summary.setdefault(method, {})[kind] = {
                    k: round(float(np.mean([r[k] for r in sel])), 4) for k in ("iou", "recall", "precision", "seconds")
                } | {"cases": len(sel)}
    return {"cases": rows, "summary": summary}
