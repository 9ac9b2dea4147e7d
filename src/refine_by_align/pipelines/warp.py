"""The reference warped into the crop through a :class:`~.fields.DenseField`, colour-matched to
the image around the mask, and the agreement that decides whether it is trusted.

:func:`warp_agreement` (normalised cross-correlation of the colour-matched warp with the image in a
ring outside the mask) ranks candidate fields and gates the warp; :func:`detail_agreement` tells the
image's own photo brought into place from another view of the object; :func:`warp_fill` gives the
patch, the pixels it is trusted for and its blend weight (:func:`colour_maps`: a 3 x 3 colour map in a
gamma-adjusted space, per-channel gains off the ring's colours). The candidates are ranked and
trusted on a bicubic warp; the patch pasted is sampled with Lanczos, bicubic near the reference
object's outline (:data:`PASTE_INTERPOLATION`, :data:`PASTE_OUTLINE_PX`), and blurred as much as
the image is softer than the reference (:func:`match_sharpness`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..memo import ContentCache
from ..zoom import mask_bbox
from .fields import MISFIT_PX, DenseField, with_confidence
from .matching import Matches, _disk, _gray

__all__ = [
    "TRUST_MIN_NCC",
    "match_error",
    "ring",
    "clear_ring_cache",
    "colour_transfer",
    "colour_affine",
    "COLOUR_GAMMAS",
    "COLOUR_RANGE_PERCENTILE",
    "COLOUR_RANGE_MARGIN",
    "grey_slope",
    "ColourMap",
    "colour_maps",
    "colour_support",
    "detail_agreement",
    "WarpFill",
    "warp_agreement",
    "misfit_weight",
    "warp_fill",
    "PASTE_INTERPOLATION",
    "PASTE_OUTLINE_PX",
    "SHARPNESS_SIGMAS",
    "match_sharpness",
    "normalised_blur",
]


#: The warp is trusted only where its ring agreement (NCC) reaches this (:func:`warp_fill`).
TRUST_MIN_NCC = 0.5

#: How :func:`warp_fill` samples the reference for the patch it pastes: Lanczos (8 x 8 taps) keeps
#: more of the reference's fine detail through the resampling than the bicubic sampling the
#: candidate fields are ranked and trusted with (both are interpolating; Lanczos's response falls
#: later toward the Nyquist frequency). Measured on the affine and nonrigid cases of the seven
#: validation and check sets: MODEL_CARD.md, thirtieth session.
PASTE_INTERPOLATION = cv2.INTER_LANCZOS4

#: Lanczos's taps reach 4 px, bicubic's 2: within this many px of where the field leaves the
#: reference object (beyond it the reference holds its background, a cut-out's black), the pasted
#: warp is sampled bicubic, so that less of that background is mixed into the object's outline.
PASTE_OUTLINE_PX = 3

#: Gaussian blurs (sigma, image px) the pasted warp may take to match the image's own sharpness
#: (:func:`match_sharpness`: a generated, re-compressed or resized image is softer than the photo
#: it is repaired from); 0 first: the warp as sampled.
SHARPNESS_SIGMAS: tuple[float, ...] = (0.0, 0.5, 0.8, 1.2)

#: A blur is taken only where it lowers the colour-matched warp's squared error on the ring by at
#: least this share (:func:`match_sharpness`).
SHARPNESS_MIN_GAIN = 0.05


def match_error(fld: DenseField, matches: Matches, min_matches: int = 4) -> float | None:
    """Median distance (px on the reference) between where ``fld`` sends the matches' image points
    inside its box and where the matches say they go; None with fewer than ``min_matches`` there."""
    b = fld.box
    xy = matches.img_xy
    inside = (xy[:, 0] >= b.x0) & (xy[:, 0] <= b.x1 - 1) & (xy[:, 1] >= b.y0) & (xy[:, 1] <= b.y1 - 1)
    if inside.sum() < min_matches:
        return None
    qx = (xy[inside, 0] - b.x0).astype(np.float32)[None]  # (1, K)
    qy = (xy[inside, 1] - b.y0).astype(np.float32)[None]
    pred = np.stack([cv2.remap(np.ascontiguousarray(fld.xy[..., k]), qx, qy, cv2.INTER_LINEAR)[0] for k in (0, 1)], 1)  # (K, 2)
    return float(np.median(np.linalg.norm(pred - matches.ref_xy[inside], axis=1)))


_RINGS = ContentCache(16)  # (mask, inner, outer) -> the band, read-only


def clear_ring_cache() -> None:
    """Forget the remembered rings (:func:`ring`): a benchmark's cold timing of a mask seen before."""
    _RINGS.clear()


def ring(mask: np.ndarray, inner: int = 2, outer: int = 10) -> np.ndarray:
    """The band between ``inner`` and ``outer`` pixels outside ``mask`` (read-only: remembered for
    the last few masks, as an alignment asks for the same rings of one mask about ten times and
    each costs two dilations)."""
    m = np.asarray(mask, bool)
    key = ContentCache.key(m, int(inner), int(outer))
    band = _RINGS.get(key)
    if band is None:
        u8 = m.astype(np.uint8)
        band = cv2.dilate(u8, _disk(outer)).astype(bool) & ~cv2.dilate(u8, _disk(inner)).astype(bool)
        band.flags.writeable = False
        _RINGS.put(key, band)
    return band


def colour_transfer(source: np.ndarray, target: np.ndarray, where: np.ndarray, max_gain: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset making ``source`` match ``target`` on ``where`` (least squares,
    gain clipped to [1 / max_gain, max_gain]); (3,) each, for values in 0..255."""
    s = source[where].astype(np.float64)
    t = target[where].astype(np.float64)
    if len(s) < 8:
        return np.ones(3), np.zeros(3)
    sm, tm = s.mean(0), t.mean(0)
    var = ((s - sm) ** 2).mean(0)
    cov = ((s - sm) * (t - tm)).mean(0)
    gain = np.where(var > 1e-3, cov / np.maximum(var, 1e-3), 1.0)
    gain = np.clip(gain, 1.0 / max_gain, max_gain)
    return gain, tm - gain * sm


def colour_affine(
    source: np.ndarray, target: np.ndarray, where: np.ndarray, ridge: float = 0.05, max_gain: float = 3.0, per_channel: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A 3 x 3 colour matrix and offset making ``source`` match ``target`` on ``where``:
    (matrix (3, 3), offset (3,)), ``source @ matrix + offset``. Least squares, pulled toward
    :func:`colour_transfer`'s per-channel gains by ``ridge`` (a fraction of the mean colour
    variance): a hue rotation or a saturation change mixes the channels, which per-channel gains
    cannot undo; the pull keeps a ring of nearly one colour from giving a wild matrix.
    ``per_channel``: colour_transfer's (gain, offset) on the same pixels, when already computed."""
    gain, offset = colour_transfer(source, target, where, max_gain) if per_channel is None else per_channel
    s = source[where].astype(np.float64)
    t = target[where].astype(np.float64)
    if len(s) < 24:
        return np.diag(gain), offset
    sm, tm = s.mean(0), t.mean(0)
    S, T = s - sm, t - tm
    C, X = S.T @ S / len(s), S.T @ T / len(s)
    lam = ridge * np.trace(C) / 3.0 + 1e-3
    M = np.linalg.solve(C + lam * np.eye(3), X + lam * np.diag(gain))
    return M, tm - sm @ M


#: The exponents :func:`colour_maps` tries for the gamma of the colour change between the reference
#: and the image (0.05 apart; a photo's exposure and tone curve change it, and a 3 x 3 matrix alone
#: cannot undo a power law).
COLOUR_GAMMAS = tuple(float(g) for g in np.round(np.linspace(0.5, 2.0, 31), 3))

#: The per-channel colour map (:func:`colour_maps`' fallback for colours the ring does not hold)
#: applies its gains to each channel's values between this percentile of the ring's and 100 minus
#: it, widened by COLOUR_RANGE_MARGIN of that range on each side, and goes on at the ring's
#: grey-level slope beyond. A real photo pair whose ring is magenta keeps its white label white
#: (it turned lavender); on the 192 suite cases the outputs move by -0.0015 dB pooled (+0.004 on the
#: deciding sets; their colour changes are global, so there extrapolating the gains is right) and
#: the badge example keeps its 29.9 dB (MODEL_CARD.md, forty-ninth session).
COLOUR_RANGE_PERCENTILE = 1.0
COLOUR_RANGE_MARGIN = 0.25


def grey_slope(source: np.ndarray, target: np.ndarray, max_gain: float = 3.0) -> float:
    """The least-squares slope of the target's grey level (the channels' mean) on the source's,
    over the (N, 3) pixels given, clipped to [1 / ``max_gain``, ``max_gain``] (1 where the source's
    grey does not vary)."""
    gs, gt = np.asarray(source, np.float64).mean(1), np.asarray(target, np.float64).mean(1)
    var = float(gs.var())
    if var <= 1e-3:
        return 1.0
    return float(np.clip(((gs - gs.mean()) * (gt - gt.mean())).mean() / var, 1.0 / max_gain, max_gain))


@dataclass(frozen=True)
class ColourMap:
    """A global colour change from a warped reference to the image: a 3 x 3 matrix and offset in a
    gamma-adjusted space, ``255 * clip((rgb @ matrix + offset) / 255, 0, 1) ** gamma`` for values
    in 0..255 (``gamma`` 1: the plain affine map of :func:`colour_affine`). With ``lo`` and ``hi``
    the map is applied to the colour clipped to them channel by channel, and what a channel lies
    beyond its limit is added back times ``slope`` (a map fitted on a few colours is not
    extrapolated far from them)."""

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)
    gamma: float = 1.0
    lo: np.ndarray | None = None  # (3,) per channel, the source values the map is applied to as fitted (None: no limit)
    hi: np.ndarray | None = None  # (3,)
    slope: float = 1.0  # beyond [lo, hi] a channel goes on at this slope from the map's value at the limit

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) values in 0..255 -> (..., 3) float64 in 0..255."""
        rgb = np.asarray(rgb, np.float64)
        inside = rgb if self.lo is None else np.clip(rgb, self.lo, self.hi)
        x = np.clip((inside @ self.matrix + self.offset) / 255.0, 0.0, 1.0)
        y = 255.0 * (x if self.gamma == 1.0 else np.power(x, self.gamma))
        if self.lo is None:
            return y
        return np.clip(y + self.slope * (rgb - inside), 0.0, 255.0)


def colour_maps(
    source: np.ndarray, target: np.ndarray, where: np.ndarray, ridge: float = 0.05, gammas: tuple[float, ...] = COLOUR_GAMMAS, max_samples: int = 1000
) -> tuple[ColourMap, ColourMap]:
    """The colour change from ``source`` to ``target`` ((H, W, 3), 0..255) on ``where``: (the full
    map, the per-channel map), both :class:`ColourMap` with one gamma. For each gamma g of
    ``gammas`` the target is brought into the linear space 255 (t / 255)^(1/g), the per-channel
    gains (:func:`colour_transfer`) and the 3 x 3 map pulled toward them (:func:`colour_affine`,
    ``ridge``) are fitted there, and the g whose full map, raised back, is nearest the target (mean
    squared error on at most ``max_samples`` evenly taken pixels) is kept; both maps are then
    fitted on all the pixels at that g. A change of exposure or tone curve (a power law) followed
    by a white-balance or hue change (a channel mix) is undone whole, where the 3 x 3 map alone
    leaves a bend. Measured on the warped pixels of 95 affine and nonrigid validation cases: +0.42
    dB over the 3 x 3 map alone (MODEL_CARD.md, "A gamma in the colour map"). The per-channel map
    is limited to the values each channel takes on ``where`` and a margin past them
    (:data:`COLOUR_RANGE_PERCENTILE`, :data:`COLOUR_RANGE_MARGIN`) and goes on at the grey-level
    slope (:func:`grey_slope`) beyond."""
    s = np.asarray(source)[where].reshape(-1, 3).astype(np.float64)
    t = np.asarray(target)[where].reshape(-1, 3).astype(np.float64)
    if len(s) < 24:
        gain, offset = colour_transfer(s, t, np.ones(len(s), bool))
        return ColourMap(np.diag(gain), offset), ColourMap(np.diag(gain), offset)
    step = max(1, len(s) // max_samples)
    ss, ts = s[::step], t[::step]
    everywhere = np.ones(len(ss), bool)
    t01 = np.clip(ts / 255.0, 0.0, 1.0)
    best = None
    for g in gammas:
        lin = 255.0 * np.power(t01, 1.0 / g)  # (n, 3): the target in the map's linear space
        matrix, offset = colour_affine(ss, lin, everywhere, ridge=ridge)
        err = float(((ColourMap(matrix, offset, g)(ss) - ts) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, g)
    g = best[1]
    lin = 255.0 * np.power(np.clip(t / 255.0, 0.0, 1.0), 1.0 / g)
    every = np.ones(len(s), bool)
    gain, offset = colour_transfer(s, lin, every)
    matrix, moffset = colour_affine(s, lin, every, ridge=ridge, per_channel=(gain, offset))
    # the per-channel map, the fallback for colours the ring does not hold, is limited to the
    # values each channel takes on the ring and a margin past them: a channel seen over a narrow
    # range (the green of a magenta ring) would otherwise extrapolate its gain to colours far
    # outside it (a white label turned pink); beyond, the channel goes on at the ring's grey slope
    lo, hi = np.percentile(s, COLOUR_RANGE_PERCENTILE, axis=0), np.percentile(s, 100.0 - COLOUR_RANGE_PERCENTILE, axis=0)
    reach = COLOUR_RANGE_MARGIN * (hi - lo)  # (3,): how far past the ring's values a gain is still taken
    return ColourMap(matrix, moffset, g), ColourMap(np.diag(gain), offset, g, lo - reach, hi + reach, grey_slope(s, t))


def colour_support(image: np.ndarray, where: np.ndarray, reach: float = 20.0, max_samples: int = 4000, at: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how near each pixel's colour of ``image`` (H, W, 3) lies to the
    colours of ``where``'s pixels, exp(-(d / ``reach``)^2) with d the distance in RGB (0..255) to
    the nearest of them (at most ``max_samples``, evenly taken). ``at`` ((H, W) bool): only those
    pixels are measured, the rest are 0 (the nearest-colour search is most of the cost)."""
    from scipy.spatial import cKDTree

    out = np.zeros(image.shape[:2], np.float32)
    pts = image[where].reshape(-1, 3).astype(np.float32)
    if len(pts) == 0:
        return out
    pts = pts[:: max(1, len(pts) // max_samples)]
    query = image.reshape(-1, 3) if at is None else image[at]  # (K, 3)
    d, _ = cKDTree(pts).query(query.astype(np.float32), k=1)
    values = np.exp(-((d / reach) ** 2)).astype(np.float32)
    if at is None:
        return values.reshape(image.shape[:2])
    out[at] = values
    return out


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if len(a) < 8:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


def detail_agreement(image_box: np.ndarray, mask_box: np.ndarray, reference: np.ndarray, fld: DenseField, ring_px: tuple[int, int] = (5, 14), sigma: float = 2.0) -> float:
    """How much of the image's fine detail the warp carries around the mask: the correlation of the
    high-passed grey values (each minus its Gaussian blur of ``sigma`` px) of the image and of the
    warped reference on the ring ``ring_px`` outside the mask, on the reference object. A warp of
    the image's own photo brought into place carries its texture (0.8-0.96 on the validation
    cases after the flow); another photo of the object only its shading (0.56-0.72; MODEL_CARD.md,
    "Trust after the flow"). (h, w, 3) image, (h, w) mask, the field over the same box."""
    band = ring(np.asarray(mask_box, bool), *ring_px) & fld.on_object
    g_img = _gray(np.clip(image_box, 0, 255).astype(np.uint8)).astype(np.float32)
    g_warp = _gray(np.clip(fld.sample(reference), 0, 255).astype(np.uint8)).astype(np.float32)
    hp_img = g_img - cv2.GaussianBlur(g_img, (0, 0), sigma)
    hp_warp = g_warp - cv2.GaussianBlur(g_warp, (0, 0), sigma)
    return _ncc(hp_img[band], hp_warp[band])


@dataclass
class WarpFill:
    """The reference warped into the box and colour-matched to the image around the mask."""

    patch: np.ndarray  # (h, w, 3) uint8: colour-corrected warp (the 3 x 3 map in the mask, per-channel gains off it)
    use: np.ndarray  # (h, w) bool: the pixels of the mask the warp is trusted for (none where misfit_factor is 0)
    weight: np.ndarray  # (h, w) float32 in [0, 1]: how much of the warp to blend in (0 off ``use``)
    ncc: float  # agreement of the corrected warp with the image in the ring outside the mask (at most the field's trust_cap)
    coverage: float  # fraction of the mask whose source lies on the reference object
    gain: np.ndarray  # (3,) per-channel colour gain the agreement ``ncc`` is measured with
    offset: np.ndarray  # (3,) and its offset
    misfit_factor: float = 1.0  # what the blend weight was scaled by for the field's misfit (misfit_weight; 1: none)
    sharpness: float = 0.0  # the Gaussian sigma (image px) the patch was blurred by to match the image (match_sharpness; 0: none)


def normalised_blur(values: np.ndarray, weight: np.ndarray, sigma: float, empty: float | np.ndarray = 0.0) -> np.ndarray:
    """``values`` (h, w, C) smoothed by a Gaussian of ``sigma`` px over the pixels ``weight`` (h, w)
    counts (normalised convolution: the others neither count nor dilute it), float32; ``empty``
    (a number, or an array like ``values``) where no counted pixel is within the Gaussian's reach."""
    w = np.asarray(weight, np.float32)
    num = cv2.GaussianBlur(values * w[..., None], (0, 0), sigma).reshape(values.shape)
    den = cv2.GaussianBlur(w, (0, 0), sigma)[..., None]
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), empty).astype(np.float32)


def match_sharpness(
    warped: np.ndarray, image_box: np.ndarray, band: np.ndarray, on_object: np.ndarray,
    sigmas: tuple[float, ...] = SHARPNESS_SIGMAS, min_gain: float = SHARPNESS_MIN_GAIN,
) -> tuple[np.ndarray, float]:
    """The warp blurred as much as the image is softer than it: (warp (h, w, 3) float32, sigma).

    Each Gaussian blur of ``sigmas`` (image px; 0: none) is applied to the warp within
    ``on_object`` (a normalised blur: the reference's background, a cut-out's black, is not mixed
    in), the blurred warp is matched to the image on ``band`` by per-channel gains and offsets
    (:func:`colour_transfer`), and the blur whose squared error there is least is taken, if it is
    at least ``min_gain`` below the unblurred warp's. The colour map fitted afterwards
    (:func:`colour_maps`) cannot make a sharp warp as soft as the image."""
    if band.sum() < 16 or not any(s > 0 for s in sigmas):
        return warped, 0.0
    img = image_box.astype(np.float32)

    def error(a: np.ndarray) -> float:
        gain, offset = colour_transfer(a, img, band)
        return float(((a[band] * gain + offset - img[band]) ** 2).mean())

    best, best_sigma, base = warped, 0.0, error(warped)
    best_err = base
    for sigma in sigmas:
        if sigma <= 0:
            continue
        blurred = normalised_blur(warped, on_object, sigma, empty=warped)
        e = error(blurred)
        if e < best_err:
            best, best_sigma, best_err = blurred, float(sigma), e
    if best_err > (1.0 - min_gain) * base:
        return warped, 0.0
    return best, best_sigma


#: The ring (px outside the mask) whose remaining colour difference the patch takes on, carried
#: into the mask harmonically (:func:`_carry_seam`); None: not.
SEAM_RING_PX: tuple[int, int] | None = (1, 4)
SEAM_SIGMA = 3.0  # px: the difference is averaged along the ring by a Gaussian of this sigma first
SEAM_MAX = 40.0  # grey levels: the most the carried difference may change a pixel


def _carry_seam(corrected: np.ndarray, image_box: np.ndarray, m: np.ndarray, edge: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """``corrected`` (h, w, 3) with the colour difference left on ``edge``, a thin ring outside the
    mask ``m`` (the image against ``mapped``, the colour-mapped warp there, averaged along the ring)
    carried into the mask by Laplace's equation: a light that changes across the object, which one
    colour map cannot follow."""
    from ..fill import harmonic_interpolate

    d = np.zeros(corrected.shape, np.float32)
    d[edge] = image_box[edge].astype(np.float32) - mapped[edge]
    # the averaged difference around the mask (0 where no rim pixel is near) bounds the solve,
    # which runs on the mask's pixels alone
    carried = harmonic_interpolate(normalised_blur(d, edge, SEAM_SIGMA), m)
    out = corrected.copy()
    out[m] = np.clip(corrected[m] + np.clip(carried[m], -SEAM_MAX, SEAM_MAX), 0, 255)
    return out


def _agreement_band(mask_box: np.ndarray, fld: DenseField, ring_px: tuple[int, int]) -> np.ndarray:
    """The ring a warp's colours are matched and its agreement measured on: ``ring_px`` outside the
    mask, on the reference object where that leaves 16 pixels or more."""
    band = ring(mask_box, *ring_px) & fld.on_object
    return band if band.sum() >= 16 else ring(mask_box, *ring_px)


def _warp_agreement(image_box, mask_box, reference, fld: DenseField, ring_px: tuple[int, int], ring_only: bool = False):
    """The reference warped into the box ((h, w, 3) float32), the ring its colours are matched
    and its agreement measured on (``ring_px`` outside the mask, on the reference object where
    that leaves 16 pixels or more), the per-channel gain and offset there, the warp after them,
    and the agreement: the grey values' ncc on the ring, at most the field's ``trust_cap``.
    ``ring_only``: the warp is built on the ring's bounding box alone, and the arrays returned
    cover that box (the agreement is the same: every step reads the ring's pixels, in order)."""
    band = _agreement_band(mask_box, fld, ring_px)
    window = None
    if ring_only and band.any():
        b = mask_bbox(band)
        window = (slice(b.y0, b.y1), slice(b.x0, b.x1))
        band, image_box = band[window], image_box[window]
    warped = fld.sample(reference, window=window).astype(np.float32)  # (h, w, 3), or the window's
    gain, offset = colour_transfer(warped, image_box, band)
    per_channel = np.clip(warped * gain + offset, 0, 255)
    g_img = _gray(image_box.astype(np.uint8)).astype(np.float32)
    g_warp = _gray(np.rint(per_channel).astype(np.uint8)).astype(np.float32)
    ncc = min(_ncc(g_warp[band], g_img[band]), fld.trust_cap)
    return warped, band, gain, offset, per_channel, ncc


def warp_agreement(image_box: np.ndarray, mask_box: np.ndarray, reference: np.ndarray, fld: DenseField, ring_px: tuple[int, int] = (2, 12)) -> float:
    """:func:`warp_fill`'s ``ncc`` (the warp's agreement with the image on the ring outside the
    mask) without building the colour-matched patch: what the alignment's candidate fields are
    ranked by (the patch's colour check cost up to 0.2 s a call when it searched the whole crop,
    about 0.05 s on the badge example's mask alone)."""
    return _warp_agreement(image_box, mask_box, reference, fld, ring_px, ring_only=True)[-1]


def misfit_weight(misfit: float | None, limits: tuple[float, float] | None = MISFIT_PX) -> float:
    """The factor :func:`warp_fill` scales a warp's blend weight by for a field whose fit misses its
    own matches by ``misfit`` px (:func:`~.fields.field_misfit`): 1 up to ``limits[0]``, falling linearly to
    0 at ``limits[1]``; 1 where either is None."""
    if misfit is None or limits is None:
        return 1.0
    lo, hi = limits
    if hi <= lo:
        return 1.0 if misfit <= lo else 0.0
    return float(np.clip((hi - misfit) / (hi - lo), 0.0, 1.0))


def warp_fill(
    image_box: np.ndarray,
    mask_box: np.ndarray,
    reference: np.ndarray,
    fld: DenseField,
    ring_px: tuple[int, int] = (2, 12),
    min_ncc: float = TRUST_MIN_NCC,
    full_ncc: float = 0.95,
    min_confidence: float = 0.05,
    colour_reach: float = 20.0,
    misfit_px: tuple[float, float] | None = MISFIT_PX,
    interpolation: int = PASTE_INTERPOLATION,
) -> WarpFill:
    """Warp the reference into the box, match its colours to the image in a ring outside the mask
    (a 3 x 3 colour map and offset in a gamma-adjusted space, :func:`colour_maps`), and decide where to trust it: pixels of
    the mask whose source lies on the reference object with confidence >= ``min_confidence`` (any
    confidence where the agreement below reaches ``full_ncc``), and
    only if the warp agrees with the image in the ring (normalised cross-correlation of the grey
    values after per-channel gains and offsets, :func:`colour_transfer`, >= ``min_ncc``; otherwise
    nothing). The blend weight rises linearly from 0 at ``min_ncc`` to 1 at ``full_ncc``: a warp
    that agrees only roughly (a real second view) is mixed with the fallback fill rather than
    pasted whole. The agreement counted is at most the field's ``trust_cap`` (a field refined on
    this ring itself, by :func:`~.field_refinement.refine_field_flow`, is trusted as it was before). With
    ``misfit_px`` (lo, hi) the weight is also scaled by how well the field's fit explains its own
    matches (the field's ``misfit_px``, :func:`~.fields.field_misfit`): in full up to lo px, falling
    linearly to 0 at hi px, where no pixel is trusted (a warp that misplaces its own matches by
    that much misplaces the mask's detail too, however well the ring around the mask agrees).
    ``interpolation``: how the pasted patch samples the reference (:data:`PASTE_INTERPOLATION`,
    bicubic near the reference object's outline: :data:`PASTE_OUTLINE_PX`); the patch is then
    blurred by :func:`match_sharpness` where the image is softer (``WarpFill.sharpness``); the
    agreement is measured on the bicubic warp the candidate fields were ranked by."""
    # the agreement, and the per-channel gains it is measured with, as the candidates were ranked
    # (the bicubic warp, on the ring's box alone: the same values as on the whole box)
    _, _, gain, offset, _, ncc = _warp_agreement(image_box, mask_box, reference, fld, ring_px, ring_only=True)
    band = _agreement_band(mask_box, fld, ring_px)
    # the pasted warp: sampled with ``interpolation`` (Lanczos; bicubic within PASTE_OUTLINE_PX of
    # the reference object's outline), low-passed first where the reference is sharper than the
    # image (antialias)
    warped = fld.sample(reference, interpolation, antialias=True).astype(np.float32)
    if interpolation != cv2.INTER_CUBIC and PASTE_OUTLINE_PX > 0:
        inner = cv2.erode(fld.on_object.astype(np.uint8), _disk(PASTE_OUTLINE_PX)).astype(bool)
        if not inner.all():
            near_outline = fld.sample(reference, cv2.INTER_CUBIC, antialias=True).astype(np.float32)
            warped = np.where(inner[..., None], warped, near_outline)
    warped, sharpness = match_sharpness(warped, image_box, band, fld.on_object) if SHARPNESS_SIGMAS else (warped, 0.0)
    # (a blurred patch gets its per-channel gains refitted; the trust, and the gains it is reported
    # with, stay the bicubic warp's)
    patch_gain, patch_offset = colour_transfer(warped, image_box, band) if sharpness > 0 else (gain, offset)
    per_channel = np.clip(warped * patch_gain + patch_offset, 0, 255)
    # the patch takes the freer colour map (a 3 x 3 matrix in a gamma-adjusted space); the trust
    # stays measured after the per-channel gains: the map's parameters would also raise the ring
    # agreement of a rough warp
    full, per_channel_map = colour_maps(warped, image_box, band)
    # ... where the ring shows colours like the pixel's own: elsewhere (letters of a colour the ring
    # does not hold) the matrix would extrapolate, and the per-channel gains (with the same gamma)
    # take over (measured on the mask only: the pipeline and the training pairs read the patch
    # there; outside it the patch holds the per-channel linear match)
    m = np.asarray(mask_box, bool)
    # (and on the rim whose remaining difference is carried in: _carry_seam)
    edge = ring(m, *SEAM_RING_PX) & fld.on_object if SEAM_RING_PX is not None else np.zeros_like(m)
    at = m | edge
    support = colour_support(warped, band, colour_reach, at=at)[..., None]  # (h, w, 1) in [0, 1], 0 elsewhere
    mapped = np.zeros_like(per_channel)
    mapped[at] = support[at] * full(warped[at]) + (1.0 - support[at]) * per_channel_map(warped[at])
    corrected = per_channel.copy()
    corrected[m] = mapped[m]
    if edge.sum() >= 16:
        corrected = _carry_seam(corrected, image_box, m, edge, mapped)
    # a warp that agrees with the ring in full has been checked around the mask itself: its matches'
    # distance no longer limits it (a picture showing little of the object beyond the mask, its
    # matches far from it, kept 32% of a warp at a ring correlation of 0.98; MODEL_CARD.md)
    trusted = fld.on_object if ncc >= full_ncc else fld.on_object & (with_confidence(fld).confidence >= min_confidence)
    coverage = float((fld.on_object & m).sum() / max(m.sum(), 1))
    factor = misfit_weight(fld.misfit_px, misfit_px)
    use = m & trusted if ncc >= min_ncc and factor > 0 else np.zeros_like(m)
    a = 1.0 if full_ncc <= min_ncc else float(np.clip((ncc - min_ncc) / (full_ncc - min_ncc), 0.0, 1.0))
    weight = use.astype(np.float32) * (a * factor)
    return WarpFill(patch=np.rint(corrected).astype(np.uint8), use=use, weight=weight, ncc=ncc, coverage=coverage, gain=gain, offset=offset, misfit_factor=factor, sharpness=sharpness)
