"""Dense correspondence: for each pixel around the artifact, its position on the reference.

The paper's alignment (Algorithm 1) gives a region M* on a 16 x 16 token grid; its stated limit
(Sec. 5: "the accuracy of our alignment method is limited by the number of vision tokens") is what
this module lifts. Point matches between the image *outside* the artifact mask and the reference
object come from one or more sources, each returning :class:`Matches`:

* ``sift``: OpenCV SIFT keypoints with Lowe's ratio test (few, very precise on rigid views);
* ``aliked``: the pretrained ALIKED matcher (``models/aliked.py``; many, robust under deformation);
* ``attention``: the model's own cross-attention at Algorithm 1's layer, read at sub-token
  precision (a soft-argmax around each query's peak token; :func:`attention_matches`).

:func:`fit_field` fits a robust model to them: a global homography by RANSAC (MAGSAC), then a smooth
thin-plate-spline residual where the matches support one (its smoothing chosen by
cross-validation, "homography only" among the choices); :func:`refine_field_ecc` (a homography
on a ring around the mask, by ECC) and :func:`refine_field_flow` (optical flow around the mask,
carried into it) refine it photometrically. :class:`DenseField` is the result sampled
on the zoom-in crop, with a confidence per pixel; :meth:`DenseField.push_mask` gives M* as the
artifact mask pushed through the field (pixel-accurate), and :func:`warp_fill` the reference warped
into the crop, colour-matched to the image around the mask, with the ring agreement that gates it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..memo import ContentCache
from ..threads import worker_threads
from ..zoom import Box

__all__ = [
    "MATCH_SOURCES",
    "TRUST_MIN_NCC",
    "worker_threads",
    "Matches",
    "sift_matches",
    "aliked_matches",
    "aliked_features",
    "AlikedImage",
    "grow_box",
    "template_matches",
    "attention_matches",
    "FieldFit",
    "global_model",
    "fit_field",
    "DenseField",
    "dense_field",
    "with_confidence",
    "field_misfit",
    "misfit_weight",
    "MISFIT_PX",
    "colour_transfer",
    "colour_affine",
    "colour_maps",
    "MINIFY_ABOVE",
    "ANTIALIAS_SIGMA",
    "ColourMap",
    "COLOUR_GAMMAS",
    "colour_support",
    "ring",
    "WarpFill",
    "warp_agreement",
    "detail_agreement",
    "DETAIL_TRUST",
    "warp_fill",
    "refine_field_ecc",
    "polish_field_ecc",
    "refine_field_flow",
    "FLOW_METHODS",
    "FLOWS",
]

logger = logging.getLogger(__name__)

#: Point-match sources :func:`dense_field` understands (combine with "+", e.g. "sift+aliked").
MATCH_SOURCES = ("sift", "aliked", "attention")
#: The warp is trusted only where its ring agreement (NCC) reaches this (:func:`warp_fill`).
TRUST_MIN_NCC = 0.5


def _disk(r: int) -> np.ndarray:
    r = max(int(r), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


@dataclass
class Matches:
    """Point correspondences, image pixel -> reference pixel (x right, y down)."""

    img_xy: np.ndarray  # (N, 2) float32 on the image
    ref_xy: np.ndarray  # (N, 2) float32 on the reference
    weight: np.ndarray  # (N,) float32 in (0, 1]
    counts: dict[str, int] = field(default_factory=dict)  # matches per source

    @staticmethod
    def empty() -> "Matches":
        z = np.zeros((0, 2), np.float32)
        return Matches(z, z.copy(), np.zeros(0, np.float32), {})

    def __len__(self) -> int:
        return len(self.img_xy)

    def __add__(self, other: "Matches") -> "Matches":
        counts = dict(self.counts)
        for k, v in other.counts.items():
            counts[k] = counts.get(k, 0) + v
        return Matches(
            np.concatenate([self.img_xy, other.img_xy]).astype(np.float32),
            np.concatenate([self.ref_xy, other.ref_xy]).astype(np.float32),
            np.concatenate([self.weight, other.weight]).astype(np.float32),
            counts,
        )


def outside_mask(mask: np.ndarray, exclude_px: int) -> np.ndarray:
    """Pixels at least ``exclude_px`` away from the artifact: no descriptor there sees it."""
    return ~cv2.dilate(np.asarray(mask, bool).astype(np.uint8), _disk(exclude_px)).astype(bool)


def _bounded(rgb: np.ndarray, mask: np.ndarray | None, max_side: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(``rgb`` and ``mask`` at most ``max_side`` px on the longer side, the factor back to full size)."""
    size, factor = _bounded_size(rgb.shape[:2], max_side)
    if size is None:
        return rgb, None if mask is None else np.asarray(mask, bool), 1.0
    small = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
    m = None if mask is None else cv2.resize(np.asarray(mask, bool).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return small, m, factor


def _bounded_size(shape: tuple[int, ...], max_side: int) -> tuple[tuple[int, int] | None, float]:
    """(the (width, height) :func:`_bounded` shrinks a picture of ``shape`` to, or None where it is
    kept as it is; the factor back to full size)."""
    h, w = shape[:2]
    f = max(h, w) / float(max_side)
    if f <= 1.0:
        return None, 1.0
    size = (max(int(round(w / f)), 8), max(int(round(h / f)), 8))
    return size, np.float32(w / size[0])


def sift_matches(
    image: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    ratio: float = 0.8,
    exclude_px: int = 4,
    max_features: int = 4000,
    flip: bool = False,
    max_side: int = 1024,
) -> Matches:
    """SIFT on the reference object and on the image outside the (grown) artifact mask, Lowe's
    ratio test. ``image``/``reference`` (H, W, 3) uint8; masks (H, W) bool. ``flip``: match against
    the mirrored reference (SIFT is not mirror-invariant); positions are returned on the reference
    as given. Each picture is described at most ``max_side`` px on its longer side (SIFT's cost
    grows with the pixels: a 4096 px reference would take tens of seconds), positions are returned
    at full resolution. The mirrored reference's features are the reference's own, rearranged
    (:func:`mirrored_sift`): SIFT is not mirror-invariant, but it is mirror-equivariant."""
    pr, dr = _sift_features(reference, reference_mask, max_features, max_side)
    if flip and dr is not None:
        # OpenCV places SIFT's keypoints a quarter of a (described) pixel right of and below the
        # feature (a keypoint at x on a picture W px wide is found at W - 0.5 - x on the mirrored
        # one): the image's keypoints carry that shift, and the reference's, mirrored, carry it
        # leftwards, as describing the mirrored picture gives them
        dr = mirrored_sift(dr)
        pr = pr - np.float32([0.5 * _bounded_size(reference.shape, max_side)[1], 0.0])
    pi, di = _sift_features(image, outside_mask(mask, exclude_px), max_features, max_side)
    if dr is None or di is None or len(pr) < 2 or len(pi) < 2:
        return Matches.empty()
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(di, dr, k=2)
    good = [(p[0], p[0].distance / max(p[1].distance, 1e-6)) for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if not good:
        return Matches.empty()
    img_xy = pi[[m.queryIdx for m, _ in good]]
    ref_xy = pr[[m.trainIdx for m, _ in good]]
    weight = np.float32([1.2 - r for _, r in good])  # a clearer ratio-test winner weighs more
    return Matches(img_xy, ref_xy, np.clip(weight, 0.05, 1.0), {"sift": len(good)})


def _sift_mirror_order(d: int = 4, n: int = 8) -> np.ndarray:
    """The column order that turns a SIFT descriptor into the mirrored picture's at the mirrored
    keypoint (see :func:`mirrored_sift`)."""
    idx = np.arange(d * d * n).reshape(d, d, n)  # (row, column, orientation) of the keypoint's frame
    return idx[::-1][:, :, (-np.arange(n)) % n].reshape(-1)


_SIFT_MIRROR = _sift_mirror_order()


def mirrored_sift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors ((N, 128), OpenCV's layout: 4 x 4 cells of 8 orientation bins in the
    keypoint's frame) as the mirrored picture gives them at the mirrored keypoints. Mirrored left
    to right, a keypoint's orientation theta becomes 180 - theta; in its frame the samples keep
    their column, their row goes to the other side (r -> 3 - r), and each gradient's angle to the
    frame's axis changes sign (bin o -> -o mod 8, the interpolation between bins mirrored with
    it). The same descriptors as describing the mirrored picture (median cosine 1.0000 on the
    keypoints both find; 90 % of them do, the rest differ by OpenCV's pyramid, which is not
    symmetric), without describing it: a third of SIFT's time in the alignment."""
    return np.ascontiguousarray(np.asarray(descriptors)[:, _SIFT_MIRROR])


_SIFT_FEATURES = ContentCache(16)  # (pixels, detection mask, settings) -> (positions, descriptors)


def sift_features_ahead(
    image: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    flips: tuple[bool, ...] = (False, True),
    exclude_px: int = 4,
    max_features: int = 4000,
    max_side: int = 1024,
) -> None:
    """Describe, side by side on :func:`~refine_by_align.threads.worker_threads` threads, the
    pictures :func:`sift_matches` reads with the same settings (the image outside the grown mask,
    and the reference: each orientation of ``flips`` is matched from its descriptors), so its
    calls find them remembered. OpenCV's SIFT runs mostly on one core (0.039 s a 512 px picture
    with 2 threads, 0.045 s with one): two pictures side by side take 0.047 s where one after the
    other take 0.078 s. The features are the ones computed one at a time (SIFT is deterministic)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(image, outside_mask(mask, exclude_px))] + ([(reference, reference_mask)] if len(flips) else [])
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), worker_threads()))) as pool:
        list(pool.map(lambda job: _sift_features(job[0], job[1], max_features, max_side), jobs))


def _sift_features(rgb: np.ndarray, det_mask: np.ndarray | None, max_features: int, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """SIFT's keypoint positions at full resolution ((N, 2) float32) and descriptors ((N, 128)
    float32, None where none) of ``rgb`` where ``det_mask`` is True, described at most
    ``max_side`` px on the longer side. Remembered for the last few pictures, keyed by a digest of
    the pixels, the mask and the settings: the alignment matches the image's side against both
    orientations of the reference, and a reference seen before is not described again (SIFT is
    deterministic: the same values as computing them anew). Read-only arrays."""
    mask_part = None if det_mask is None else np.packbits(np.asarray(det_mask, bool))
    key = ContentCache.key(rgb, mask_part, max_features, max_side)
    hit = _SIFT_FEATURES.get(key)
    if hit is not None:
        return hit
    small, det, f = _bounded(rgb, det_mask, max_side)
    kp, desc = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(_gray(small), None if det is None else det.astype(np.uint8) * 255)
    pts = (np.float32([k.pt for k in kp]).reshape(-1, 2) + 0.5) * f - 0.5
    pts.flags.writeable = False
    if desc is not None:
        desc.flags.writeable = False
    _SIFT_FEATURES.put(key, (pts, desc))
    return pts, desc


#: ALIKED keypoints per picture in the alignment's first matching (the image side's best-scored ones)
ALIKED_KEYPOINTS = 1024


class AlikedImage:
    """ALIKED on ``rgb`` inside ``box`` (the whole image by default), computed at most ``max_side``
    px on the longer side (the matcher's cost grows with the pixels: about 0.3 s at 384 px on 2
    CPU cores), its keypoints (at most ``max_keypoints``, where ``mask`` is True) best first and
    in the full image's pixel coordinates. Descriptors are computed on demand for the best ``n``
    (:meth:`features`): SDDH's cost grows with the keypoints (about 0.07 s per 1,024), and a
    caller that may need more of them than usual pays for the rest only when it does."""

    def __init__(self, model, rgb: np.ndarray, mask: np.ndarray | None, box: Box | None = None, max_side: int = 384, max_keypoints: int = ALIKED_KEYPOINTS):
        from ..models.aliked import detect

        h, w = rgb.shape[:2]
        b = Box(0, 0, w, h) if box is None else Box(max(box.x0, 0), max(box.y0, 0), min(box.x1, w), min(box.y1, h))
        sub = np.ascontiguousarray(rgb[b.y0 : b.y1, b.x0 : b.x1])
        msub = None if mask is None else np.ascontiguousarray(np.asarray(mask, bool)[b.y0 : b.y1, b.x0 : b.x1])
        f = min(1.0, max_side / max(b.width, b.height))
        if f < 1.0:
            size = (max(int(round(b.width * f)), 8), max(int(round(b.height * f)), 8))
            sub = cv2.resize(sub, size, interpolation=cv2.INTER_AREA)
            msub = None if msub is None else cv2.resize(msub.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        self.model = model
        self._kpts, scores, self._feature_map = detect(model, sub, msub, max_keypoints=max_keypoints)  # (N, 2) working px, (N,), the (D, h, w) map (a SparseFeatureMap)
        k = self._kpts.float().cpu().numpy().astype(np.float32)
        fx, fy = b.width / sub.shape[1], b.height / sub.shape[0]
        self.keypoints = np.stack([(k[:, 0] + 0.5) * fx - 0.5 + b.x0, (k[:, 1] + 0.5) * fy - 0.5 + b.y0], 1).astype(np.float32) if len(k) else k
        self.scores = scores.float().cpu().numpy().astype(np.float32)
        self._desc = np.zeros((0, int(self._feature_map.shape[0])), np.float32)

    def __len__(self) -> int:
        return len(self.keypoints)

    def features(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keypoints (n, 2), descriptors (n, D) L2-normalised, scores (n,)) of the ``n`` best (all
        by default); descriptors already computed are reused."""
        n = len(self) if n is None else min(int(n), len(self))
        if len(self._desc) < n:
            import torch

            with torch.no_grad():
                more = self.model.describe(self._feature_map, self._kpts[len(self._desc) : n])
            self._desc = np.concatenate([self._desc, more.float().cpu().numpy().astype(np.float32)])
        return self.keypoints[:n], self._desc[:n], self.scores[:n]


def aliked_features(model, rgb: np.ndarray, mask: np.ndarray | None, box: Box | None = None, max_side: int = 384, max_keypoints: int = ALIKED_KEYPOINTS):
    """ALIKED keypoints and descriptors of ``rgb`` inside ``box`` (the whole image by default),
    computed at most ``max_side`` px on the longer side and returned in the full image's pixel
    coordinates (:class:`AlikedImage`, all described)."""
    return AlikedImage(model, rgb, mask, box, max_side, max_keypoints).features()


_REFERENCE_FEATURES = ContentCache(8)  # (reference, mask, flip, sizes, model) -> (model, keypoints, descriptors)


def clear_reference_cache() -> None:
    """Forget the remembered matcher features (ALIKED's of the references, SIFT's of every
    picture): a benchmark's cold timing, or to free memory."""
    _REFERENCE_FEATURES.clear()
    _SIFT_FEATURES.clear()


def _reference_features(model, reference, reference_mask, flip, rsrc, rmask, rbox, max_side, max_keypoints):
    """ALIKED's (keypoints, descriptors) of the reference object, remembered for the last few
    references: a user refining several masks against one reference (the web page, a batch over
    one product photo) pays the reference's ALIKED pass once per orientation. Keyed by a digest of
    the pixels and the mask, so a changed reference is never served stale features."""
    mask_part = None if reference_mask is None else np.packbits(np.asarray(reference_mask, bool))
    key = ContentCache.key(reference, mask_part, flip, max_side, max_keypoints, id(model))
    hit = _REFERENCE_FEATURES.get(key)
    if hit is not None:
        return hit[1], hit[2]
    kr, dr, _ = aliked_features(model, np.ascontiguousarray(rsrc), None if rmask is None else np.ascontiguousarray(rmask), rbox, max_side, max_keypoints)
    kr.flags.writeable = dr.flags.writeable = False  # shared by every later match against this reference
    _REFERENCE_FEATURES.put(key, (model, kr, dr))  # the model is kept with its features, so its id is not reused while cached
    return kr, dr


def aliked_matches(
    image: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    model,
    exclude_px: int = 4,
    max_keypoints: int = ALIKED_KEYPOINTS,
    min_similarity: float = 0.75,
    flip: bool = False,
    image_features: tuple | None = None,
    focus: Box | None = None,
    max_side: int = 384,
) -> Matches:
    """ALIKED keypoints + descriptors (``models/aliked.py``) on the reference object and on the image
    outside the grown artifact mask (around ``focus`` when given: three times its side), mutual
    nearest neighbours by cosine similarity. ``flip``: match against the mirrored reference;
    ``image_features``: the image side's (keypoints, descriptors, scores) when already computed."""
    from ..models.aliked import mutual_nn_matches

    if image_features is None:
        image_features = aliked_features(model, image, outside_mask(mask, exclude_px), grow_box(focus, 3.0) if focus else None, max_side, max_keypoints)
    ki, di, _ = image_features
    rsrc, rmask = (reference[:, ::-1], None if reference_mask is None else reference_mask[:, ::-1]) if flip else (reference, reference_mask)
    rbox = None
    if rmask is not None and np.asarray(rmask).any():
        ys, xs = np.nonzero(rmask)
        rbox = Box(int(xs.min()) - 8, int(ys.min()) - 8, int(xs.max()) + 9, int(ys.max()) + 9)
    kr, dr = _reference_features(model, reference, reference_mask, flip, rsrc, rmask, rbox, max_side, max_keypoints)
    kr = kr.copy()
    if flip and len(kr):
        kr[:, 0] = reference.shape[1] - 1 - kr[:, 0]
    if len(ki) < 2 or len(kr) < 2:
        return Matches.empty()
    ij = mutual_nn_matches(di, dr, min_similarity=min_similarity)
    if len(ij) == 0:
        return Matches.empty()
    sim = (di[ij[:, 0]] * dr[ij[:, 1]]).sum(-1)
    weight = np.clip((sim - min_similarity) / max(1.0 - min_similarity, 1e-6), 0.05, 1.0)
    return Matches(ki[ij[:, 0]].astype(np.float32), kr[ij[:, 1]].astype(np.float32), weight.astype(np.float32), {"aliked": len(ij)})


def template_matches(
    image: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    reference_mask: np.ndarray,
    crop_box: Box,
    angles: tuple[float, ...] = tuple(range(0, 360, 10)),
    scales: tuple[float, ...] = tuple(2.0 ** np.linspace(-1.0, 1.0, 9)),
    min_score: float = 0.5,
    step: int = 8,
    search_factor: float = 3.0,
    max_side: int = 64,
    max_area: int = 160,
    max_fraction: float = 0.5,
    max_points: int = 150,
) -> tuple[Matches, float]:
    """Where point matching finds nothing consistent (a small, plain object: its few keypoints all
    matched to one spot), the reference object itself is searched for around the mask: rotated by
    each of ``angles`` (degrees) and scaled by each of ``scales``, it is correlated with the image
    (``cv2.matchTemplate``, mean-subtracted and normalised, over the object's own pixels; the mask
    filled by Telea first) in the crop box grown ``search_factor`` times. The search runs with the
    object and the search area scaled down together so the object's longer side is at most
    ``max_side`` px and the area's at most ``max_area`` px (a placement to a few pixels, which ECC
    refines; the cost stays bounded: 0.05-0.3 s on the validation cases that reach it). The best
    placement, if it correlates at ``min_score`` or more, is returned as matches on a ``step``-px
    lattice over the reference object (coarser where that would give more than about
    ``max_points``; a similarity: ECC, the optical flow and the trust gate take it from there),
    with its score; otherwise (no matches, the best score: -1 where no placement fits the search
    area, or the reference object covers more than ``max_fraction`` of its photo, so no object is
    isolated, e.g. the whole photo as the reference) (MODEL_CARD.md, "Template search where no
    point matches agree")."""
    rmask = np.asarray(reference_mask, bool)
    rows, cols = np.nonzero(rmask)
    if len(rows) == 0 or len(rows) > max_fraction * rmask.size:
        return Matches.empty(), -1.0  # (no object isolated in the reference: nothing to search for)
    y0, x0, y1, x1 = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
    search = grow_box(crop_box, search_factor)
    sx0, sy0 = max(search.x0, 0), max(search.y0, 0)
    side = max(min(search.y1, image.shape[0]) - sy0, min(search.x1, image.shape[1]) - sx0)
    f = min(1.0, max_side / float(max(y1 - y0, x1 - x0)), max_area / float(side))  # the search's scale
    small = lambda a, interp=cv2.INTER_AREA: a if f >= 1.0 else cv2.resize(a, (max(1, round(a.shape[1] * f)), max(1, round(a.shape[0] * f))), interpolation=interp)
    templ = small(_gray(reference)[y0:y1, x0:x1])
    tmask = small(rmask[y0:y1, x0:x1].astype(np.uint8) * 255, cv2.INTER_NEAREST)
    grey = cv2.inpaint(_gray(image), np.asarray(mask, np.uint8), 5, cv2.INPAINT_TELEA)
    area = small(grey[sy0 : min(search.y1, grey.shape[0]), sx0 : min(search.x1, grey.shape[1])])
    h, w = templ.shape
    min_pixels = 200 * f * f  # (the object's pixels a placement must keep: 200 at full size)
    best, placement = -1.0, None
    for scale in scales:
        for angle in angles:
            M = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), float(scale))  # (2, 3): template px -> rotated px
            corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ M.T
            M[:, 2] -= corners.min(axis=0)
            tw, th = (int(np.ceil(v)) for v in corners.max(axis=0) - corners.min(axis=0))
            if tw >= area.shape[1] or th >= area.shape[0] or min(tw, th) < 16 * f:
                continue  # (larger than the search area: a close-up, which point matching handles)
            t = cv2.warpAffine(templ, M, (tw, th), flags=cv2.INTER_LINEAR)
            tm = cv2.warpAffine(tmask, M, (tw, th), flags=cv2.INTER_NEAREST)
            if int((tm > 0).sum()) < min_pixels:
                continue
            score = cv2.matchTemplate(area, t, cv2.TM_CCOEFF_NORMED, mask=tm)
            score[~np.isfinite(score)] = -1.0
            _, top, _, loc = cv2.minMaxLoc(score)
            if top > best:
                best, placement = float(top), (M.copy(), loc)
    if placement is None or best < min_score:
        return Matches.empty(), best
    M, (lx, ly) = placement
    step = max(step, int(np.ceil(np.sqrt(len(rows) / max_points))))  # (a large object: about max_points, the fit's cost bounded)
    gy, gx = np.mgrid[0 : y1 - y0 : step, 0 : x1 - x0 : step]
    keep = rmask[y0:y1, x0:x1][gy, gx]
    uv = np.stack([gx[keep], gy[keep]], axis=1).astype(np.float64)  # (N, 2) full-size template px
    on_small = np.c_[uv * f, np.ones(len(uv))] @ M.T + np.array([lx, ly], np.float64)  # (N, 2) in the small search area
    img_xy = on_small / f + np.array([sx0, sy0], np.float64)
    ref_xy = uv + np.array([x0, y0], np.float64)
    n = len(img_xy)
    return Matches(img_xy.astype(np.float32), ref_xy.astype(np.float32), np.ones(n, np.float32), {"template": n}), best


def grow_box(box: Box, factor: float) -> Box:
    """``box`` scaled by ``factor`` about its centre (may extend past the image)."""
    cx, cy = (box.x0 + box.x1) / 2.0, (box.y0 + box.y1) / 2.0
    hw, hh = box.width * factor / 2.0, box.height * factor / 2.0
    return Box(int(round(cx - hw)), int(round(cy - hh)), int(round(cx + hw)), int(round(cy + hh)))


def attention_matches(
    attention: np.ndarray,
    crop_box: Box,
    reference_box: Box,
    grid_size: int,
    min_peak: float = 0.0,
    window: int = 1,
) -> Matches:
    """Cross-attention read at sub-token precision: one match per query position of the layer.

    ``attention`` (HW, T): heads-averaged probabilities of one cross-attention layer (Eq. 4) for
    the zoom-in crop (``crop_box`` on the image) against the reference tokens (a ``grid_size`` ^ 2
    grid over ``reference_box``). For each query, a soft-argmax over the (2 window + 1)^2 tokens
    around its peak token gives a sub-token position; its weight is the attention mass in that
    window (how peaked the query is)."""
    attention = np.asarray(attention, np.float64)
    hw, t = attention.shape
    side = int(round(hw**0.5))
    if side * side != hw or t != grid_size * grid_size:
        raise ValueError(f"attention_matches: attention {attention.shape} is not (side^2, {grid_size}^2)")
    a = attention.reshape(hw, grid_size, grid_size)
    peak = a.reshape(hw, -1).argmax(1)
    py, px = np.divmod(peak, grid_size)
    offs = np.arange(-window, window + 1)
    ys = np.clip(py[:, None, None] + offs[None, :, None], 0, grid_size - 1)  # (HW, w, 1)
    xs = np.clip(px[:, None, None] + offs[None, None, :], 0, grid_size - 1)  # (HW, 1, w)
    ys, xs = np.broadcast_arrays(ys, xs)
    win = a[np.arange(hw)[:, None, None], ys, xs]  # (HW, w, w)
    mass = win.sum((1, 2))
    gy = (win * ys).sum((1, 2)) / np.maximum(mass, 1e-12)  # token units
    gx = (win * xs).sum((1, 2)) / np.maximum(mass, 1e-12)
    keep = mass >= min_peak
    qy, qx = np.divmod(np.arange(hw), side)
    img_xy = np.stack([crop_box.x0 + (qx + 0.5) * crop_box.width / side - 0.5, crop_box.y0 + (qy + 0.5) * crop_box.height / side - 0.5], 1)
    ref_xy = np.stack(
        [reference_box.x0 + (gx + 0.5) * reference_box.width / grid_size - 0.5, reference_box.y0 + (gy + 0.5) * reference_box.height / grid_size - 0.5], 1
    )
    return Matches(img_xy[keep].astype(np.float32), ref_xy[keep].astype(np.float32), np.clip(mass[keep], 1e-3, 1.0).astype(np.float32), {"attention": int(keep.sum())})


# ------------------------------------------------------------------------------------------ fitting


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


# ------------------------------------------------------------------------------------------ the field


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


@dataclass
class DenseField:
    """Reference positions and their confidence for every pixel of ``box`` on the image, and the
    ring agreement its warp may be trusted at, at most (``trust_cap``: 1, no cap, unless the field
    was refined on that ring itself by :func:`refine_field_flow`)."""

    box: Box  # the image region covered (the zoom-in crop at full resolution)
    xy: np.ndarray  # (h, w, 2) float32: (x, y) on the reference for each pixel of box
    confidence: np.ndarray | None  # (h, w) float32 in [0, 1]; None on a candidate only ranked (dense_field, with_confidence)
    on_object: np.ndarray  # (h, w) bool: the position falls on the reference object
    fit: FieldFit | None = None
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
        compares warps unfiltered; the pasted warp is filtered, :func:`warp_fill`.)"""
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
        where the reference is larger), votes for the reference pixel it lands on: inside the mask
        or outside it; a reference pixel is in M* where the mask's votes outnumber the others (the
        pixels the mask covers more than half of, as `make-cases` draws the true region). Gaps no
        sample reached are closed at the field's local scale. (Marking every pixel a mask sample
        touched, as before the seventeenth session, grew M* by 7-17 % of its area: mIoU on the
        affine validation cases 0.940 -> 0.981 with the vote.)"""
        hr, wr = reference_shape
        h, w = mask_box.shape
        xy2 = cv2.resize(self.xy, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR).reshape(-1, 2)
        m2 = cv2.resize(np.asarray(mask_box, bool).astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST).astype(bool).ravel()
        out = np.zeros((hr, wr), bool)
        with np.errstate(invalid="ignore"):
            pts = np.rint(xy2).astype(np.int64)
        ok = np.isfinite(xy2).all(axis=1) & (pts[:, 0] >= 0) & (pts[:, 0] < wr) & (pts[:, 1] >= 0) & (pts[:, 1] < hr)
        if not (ok & m2).any():
            return out
        pts, m2 = pts[ok], m2[ok]
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0) + 1
        bw, bh = int(x1 - x0), int(y1 - y0)
        idx = (pts[:, 1] - y0) * bw + (pts[:, 0] - x0)  # votes counted on the box the samples reach
        votes_in = np.bincount(idx[m2], minlength=bw * bh).reshape(bh, bw)
        votes_out = np.bincount(idx[~m2], minlength=bw * bh).reshape(bh, bw)
        region = (votes_in > votes_out).astype(np.uint8)
        # close at the field's local scale: a reference larger than the image leaves gaps (never
        # over pixels the outside's votes won)
        r = int(np.ceil(max(1.0 if v is None else float(v) for v in self.median_steps()) / 2.0))
        pad = max(r, 1) + 1
        closed = cv2.morphologyEx(np.pad(region, pad), cv2.MORPH_CLOSE, _disk(max(r, 1)))[pad:-pad, pad:-pad].astype(bool)
        out[y0:y1, x0:x1] = closed & ~(votes_out > votes_in)
        return out


def dense_field(
    fit: FieldFit, box: Box, reference_mask: np.ndarray | None, step: int = 4, reach: float | None = None, confidence: bool = True
) -> DenseField:
    """Evaluate ``fit`` on every pixel of ``box`` (on a ``step``-px lattice, bilinearly upsampled).

    Confidence: 1 near inlier matches, falling off as exp(-d / reach) with the distance d to the
    nearest one (``reach``: half the box side by default), times 0 where the position falls off the
    reference object (eroded by 1 px, so its outline is not copied). Without ``confidence`` the
    field's ``confidence`` is None (a candidate that is only ranked, by :func:`warp_agreement`,
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
    if reference_mask is not None:
        obj = cv2.erode(np.asarray(reference_mask, bool).astype(np.uint8), _disk(1))
        on = cv2.remap(obj.astype(np.float32), xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0) >= 0.99
    else:
        hr_ok = np.isfinite(xy).all(-1)
        on = hr_ok
    fld = DenseField(box, xy, None, on, fit)
    return with_confidence(fld, reach) if confidence else fld


#: The fit's cross-validated error (:func:`field_misfit`, image pixels at 512 px) from which a warp's
#: blend weight falls, and where it reaches 0 (:func:`warp_fill`).
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


#: :func:`refine_field_ecc` tries ECC again smoothed by this many px (1: not at all) where its
#: smoothed run is not kept (None: it does not).
ECC_RETRY_BLUR = 1


def refine_field_ecc(
    fld: DenseField,
    image_box: np.ndarray,
    mask_box: np.ndarray,
    reference: np.ndarray,
    ring_px: tuple[int, int] = (1, 16),
    iterations: int = 60,
    matches: Matches | None = None,
    max_drift: tuple[float, float] = (1.5, 1.5),
    margin: int = 16,
    agreement: float | None = None,
    blur: int = 5,
    eps: float = 1e-5,
    retry_blur: int | None = ECC_RETRY_BLUR,
    retry_min_ncc: float = TRUST_MIN_NCC,
) -> tuple[DenseField, bool]:
    """A local photometric refinement of the field: the homography W (on the box's pixels) that
    best aligns the warped reference with the image in a ring around the mask by enhanced
    correlation (ECC; invariant to gain and offset, so the colour shift between the photos does not
    bias it), composed into the field: xy'(p) = xy(W p). Kept only if the ring agreement improves
    and, with ``matches``, if it does not drift away from them: the median distance between the
    field and the matches inside the box may grow by at most a factor ``max_drift[0]`` or
    ``max_drift[1]`` px, whichever is larger (a ring can be matched by a mapping that is wrong
    inside it; the matches see the inside). ``agreement``: ``fld``'s own :func:`warp_agreement`
    where the caller has it (not measured again). ``blur``: the Gaussian ECC smooths both images
    by (px, odd; 1: none) and ``eps`` its stopping rule: the defaults converge from a field a
    pixel or two off; :func:`polish_field_ecc` runs it again unblurred on a wider ring. Where the
    smoothed ECC is not kept and the field is a homography alone (no spline residual: ECC's own
    model), it is tried once more smoothed by ``retry_blur`` (None: not): on flat graphics with
    thin detail (the badge example's letters and border) the smoothing blurs away what pins the
    warp down and ECC slides off to a sheared map its matches reject, while unsmoothed it
    converges. On a field with a spline residual (a bent object) the unsmoothed homography trades
    the inside for the ring's texture, and on a field whose warp agrees with the image around the
    mask below ``retry_min_ncc`` (the warp's trust gate: another view, mostly) it seldom matters
    and costs a multiview refine 0.15 s; neither is retried (MODEL_CARD.md, "ECC again,
    unsmoothed"). The
    agreements compared are the warps' own, not capped by the field's ``trust_cap``, which the
    refined field keeps. Returns (the field, whether it changed)."""
    band = ring(mask_box, *ring_px) & fld.on_object
    if band.sum() < 64:
        return fld, False
    before = agreement if agreement is not None and fld.trust_cap >= 1.0 else None
    new, before = _ecc_attempt(fld, image_box, mask_box, reference, band, blur=blur, before=before, matches=matches, iterations=iterations, max_drift=max_drift, margin=margin, eps=eps)
    if new is not None:
        return new, True
    rigid = fld.fit is None or fld.fit.tps is None  # (a homography alone: ECC's own model)
    if retry_blur is None or retry_blur == blur or not rigid:
        return fld, False
    if before is None:
        before = warp_agreement(image_box, mask_box, reference, replace(fld, trust_cap=1.0))
    if before < retry_min_ncc:  # (a warp this far off is not trusted, and rarely lifted over the gate)
        return fld, False
    new, _ = _ecc_attempt(fld, image_box, mask_box, reference, band, blur=retry_blur, before=before, matches=matches, iterations=iterations, max_drift=max_drift, margin=margin, eps=eps)
    return (fld, False) if new is None else (new, True)


def _ecc_attempt(
    fld, image_box, mask_box, reference, band, *, blur, before, matches, iterations, max_drift, margin, eps
) -> tuple[DenseField | None, float | None]:
    """One ECC run of :func:`refine_field_ecc` on ``band`` smoothed by ``blur`` px, with that
    function's checks and settings (``matches``, ``iterations``, ``max_drift``, ``margin``,
    ``eps``): (the refined field, or None where it is not kept; ``fld``'s agreement where it was
    measured, else ``before``, the agreement a caller measured already or None)."""
    # ECC's cost grows with the pixels: it runs on the box cut to the band's bounding box plus
    # ``margin`` px (room for the smoothing and for the warp to move), both images the same cut
    # (OpenCV wants equal sizes); W_cut on the cut's pixels is W = T(o) W_cut T(-o) on the box's
    ys, xs = np.nonzero(band)
    y0, x0 = max(int(ys.min()) - margin, 0), max(int(xs.min()) - margin, 0)
    y1, x1 = min(int(ys.max()) + margin + 1, band.shape[0]), min(int(xs.max()) + margin + 1, band.shape[1])
    cut = (slice(y0, y1), slice(x0, x1))
    template = _gray(np.ascontiguousarray(image_box[cut])).astype(np.float32)
    warped = _gray(np.clip(fld.sample(reference, window=cut), 0, 255).astype(np.uint8)).astype(np.float32)
    W = np.eye(3, dtype=np.float32)
    try:
        _, W = cv2.findTransformECC(
            template, warped, W, cv2.MOTION_HOMOGRAPHY,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps), np.ascontiguousarray(band[cut]).astype(np.uint8), blur,
        )
    except cv2.error:
        return None, before
    if not np.isfinite(W).all():
        return None, before
    shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)  # T(o)
    W = shift @ W.astype(np.float64) @ np.linalg.inv(shift)
    h, w = mask_box.shape
    px, py = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    q = np.stack([px, py, np.ones_like(px)], -1) @ W.astype(np.float64).T  # (h, w, 3)
    qx, qy = (q[..., 0] / q[..., 2]).astype(np.float32), (q[..., 1] / q[..., 2]).astype(np.float32)
    if np.abs(qx - px).max() > 0.25 * max(h, w) or np.abs(qy - py).max() > 0.25 * max(h, w):
        return None, before  # a jump, not a refinement
    xy = cv2.remap(fld.xy, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    new = replace(fld, xy=xy, counts=dict(fld.counts))
    # (the warps themselves are compared, not capped; the result keeps fld's trust_cap)
    if before is None:
        before = warp_agreement(image_box, mask_box, reference, replace(fld, trust_cap=1.0))
    after = warp_agreement(image_box, mask_box, reference, replace(new, trust_cap=1.0))
    if after <= before:
        return None, before
    if matches is not None:
        e0, e1 = match_error(fld, matches), match_error(new, matches)
        if e0 is not None and e1 is not None and e1 > max(max_drift[0] * e0, e0 + max_drift[1]):
            return None, before
    return new, before


def polish_field_ecc(
    fld: DenseField,
    image_box: np.ndarray,
    mask_box: np.ndarray,
    reference: np.ndarray,
    ring_px: tuple[int, int] = (1, 48),
    iterations: int = 100,
    eps: float = 1e-6,
) -> tuple[DenseField, bool]:
    """The field's last tenths of a pixel: :func:`refine_field_ecc` again on the finished field
    (after the optical flow), with no Gaussian smoothing, a ring three times as wide and a tighter
    stopping rule. The first ECC's smoothing (5 px) and narrow ring let it converge from a pixel or
    two off, and also leave it a tenth or a few off; on a rigid view change (a homography) this
    pass brings the field inside the mask from 0.13 to 0.08 px mean (median 0.11 to 0.06) on the
    16 affine cases of val2 / val3, where 0.1 px still costs up to a decibel on fur or print
    (MODEL_CARD.md, "Spline-carried flow and ECC polish"). Kept, as every ECC step, only where the
    ring agreement improves. Returns (the field, whether it changed)."""
    return refine_field_ecc(fld, image_box, mask_box, reference, ring_px=ring_px, iterations=iterations, blur=1, eps=eps)


#: :func:`refine_field_flow` runs DIS on the crop upsampled by this factor (sub-pixel precision).
FLOW_UPSAMPLE = 2
FLOW_CARRY = ("harmonic", "spline")  # how refine_field_flow carries the flow into the mask
#: A flow-refined field whose warp carries at least this much of the image's fine detail on the ring
#: (:func:`detail_agreement`) is trusted up to its held-out agreement after the flow (None: never;
#: between the other views' 0.56-0.72 and the own photos' 0.81-0.96 on the validation cases).
DETAIL_TRUST = 0.75


def _dis_flow(a: np.ndarray, b: np.ndarray, preset: int, upsample: int = 1, finest_scale: int | None = None) -> np.ndarray:
    """DIS optical flow from grey ``a`` to grey ``b`` ((h, w) uint8): (h, w, 2) float32 with a(p) ~
    b(p + flow(p)), computed on both upsampled ``upsample`` times (bicubic) and scaled back (area,
    the displacements divided by the factor) where ``upsample`` > 1. ``finest_scale``: the
    coarsest-to-finest pyramid's last level DIS stops at (0: the pictures as given; None: the
    preset's, 1 for ``MEDIUM``, which on twice-upsampled pictures is the crop's own grid; 0 there,
    an ablation, is measured in MODEL_CARD.md, "Spline-carried flow and ECC polish")."""
    dis = cv2.DISOpticalFlow_create(preset)
    if finest_scale is not None:
        dis.setFinestScale(int(finest_scale))
    if upsample <= 1:
        return dis.calc(a, b, None)
    h, w = a.shape
    size = (w * int(upsample), h * int(upsample))
    fine = dis.calc(cv2.resize(a, size, interpolation=cv2.INTER_CUBIC), cv2.resize(b, size, interpolation=cv2.INTER_CUBIC), None)
    return (cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA) / float(upsample)).astype(np.float32)


#: The dense flows :func:`refine_field_flow` can run: "dis" (:func:`_dis_flow`), "deepflow"
#: (OpenCV's variational DeepFlow, Weinzaepfel et al., ICCV 2013, at the crop's resolution) and
#: "dis-filled": DIS from the image with its artifact filled first (:func:`artifact_filled`).
FLOW_METHODS = ("dis", "deepflow", "dis-filled")
#: The flows each round of :func:`refine_field_flow` computes, the one that predicts its held-out
#: band best taken (MODEL_CARD.md, "Two flows, the better on the held-out band", and "The
#: artifact filled for a third flow").
FLOWS = ("dis", "deepflow", "dis-filled")
#: :func:`artifact_filled` fills the mask grown by this many px (the artifact's own blurred rim).
ARTIFACT_FILL_GROW = 1
#: Each flow of :func:`refine_field_flow` is computed on the box of the pixels it is read at (within
#: ``reach`` px of the mask grown for the check) plus this many px of context: 16 px brought the
#: nonrigid fields' error inside the mask 0.314 -> 0.298 px on val2-val4 (0 px: 0.294, but 0.602 ->
#: 0.614 on the check sets, where 16 px gave 0.570; MODEL_CARD.md, "Flows on a window around the mask").
FLOW_CONTEXT = 16
#: A round of :func:`refine_field_flow` is not run where the warp already agrees with the image on
#: its held-out band within this of 1 (NCC): of 320 rounds on 192 validation and check cases, the 32
#: that began there were all refused but one (its gain 0.0012), each costing three flows (MODEL_CARD.md,
#: "Flows on a window around the mask").
FLOW_SETTLED = 0.003


def artifact_filled(gray: np.ndarray, mask: np.ndarray, grow: int = ARTIFACT_FILL_GROW) -> np.ndarray:
    """The grey image ``gray`` ((h, w) uint8) with the mask grown by ``grow`` px filled by Telea's
    fast marching (radius 3 px): the picture the "dis-filled" flow starts from. DIS matches
    12-px patches; next to the mask they straddle the artifact, whose content (another part of
    the image, a swirl) pulls their matches off, and the flow the field is corrected by is off
    just where it is carried into the mask from. Filled, those patches see a continuation of the
    image around the mask instead. Which is better depends on the artifact (a smear or a blur
    keeps the true picture's low frequencies, which help the flow): each round of
    :func:`refine_field_flow` takes the flow that predicts its held-out band best."""
    hole = cv2.dilate(np.asarray(mask, bool).astype(np.uint8), _disk(grow))
    return cv2.inpaint(np.ascontiguousarray(gray), hole, 3, cv2.INPAINT_TELEA)


def _flow(method: str, a: np.ndarray, b: np.ndarray, preset: int, upsample: int, finest_scale: int | None) -> np.ndarray:
    """The dense flow ``method`` (one of :data:`FLOW_METHODS`) from grey ``a`` to grey ``b``, (h, w)
    uint8 each: (h, w, 2) float32 with a(p) ~ b(p + flow(p)). DIS takes ``preset``, ``upsample``
    and ``finest_scale`` (:func:`_dis_flow`); DeepFlow runs at the pictures' own resolution (a
    coarse-to-fine variational flow with a gradient-constancy term: sharper on textured bends, where
    DIS's patches average, and weaker on plain surfaces)."""
    if method in ("dis", "dis-filled"):  # (the filled picture is the caller's: "dis-filled" is DIS on it)
        return _dis_flow(a, b, preset, upsample, finest_scale)
    return cv2.optflow.createOptFlow_DeepFlow().calc(a, b, None).astype(np.float32)


def _smoothed(flow: np.ndarray, known: np.ndarray, sigma: float) -> np.ndarray:
    """``flow`` (h, w, 2) float32 smoothed by a Gaussian of ``sigma`` px over the ``known`` (h, w)
    bool pixels only (normalised convolution: the unknown ones neither count nor dilute it), the
    unknown pixels' values left to the caller's interpolation (0 here); as given for ``sigma`` 0."""
    if sigma <= 0:
        return flow
    k = known.astype(np.float32)
    num = cv2.GaussianBlur(flow * k[..., None], (0, 0), sigma).reshape(flow.shape)  # (h, w, 2)
    den = cv2.GaussianBlur(k, (0, 0), sigma)[..., None]  # (h, w, 1)
    return np.where((den > 1e-3) & known[..., None], num / np.maximum(den, 1e-3), 0.0).astype(np.float32)


def refine_field_flow(
    fld: DenseField,
    image_box: np.ndarray,
    mask_box: np.ndarray,
    reference: np.ndarray,
    grow: int = 4,
    check_px: int = 4,
    reach: int = 24,
    min_gain: float = 1e-3,
    rounds: int = 4,
    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    check: bool = True,
    agreement: float | None = None,
    smooth: float = 0.0,
    upsample: int = FLOW_UPSAMPLE,
    carry: str = "spline",
    finest_scale: int | None = None,
    detail_trust: float | None = DETAIL_TRUST,
    flows: tuple[str, ...] = FLOWS,
) -> tuple[DenseField, dict]:
    """A non-rigid photometric refinement of the field, after ECC's homography: the few pixels of
    smooth residual that a homography plus a spline through sparse matches leaves on a bent or
    non-rigidly deformed object, which are enough to put fine detail beside its place.

    Dense optical flow (DIS, Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV
    2016; OpenCV's ``preset``) from the image to the colour-matched warped reference gives, around
    the mask, how far each pixel's match is off: image(p) ~ warped(p + flow(p)); it is computed on
    both upsampled ``upsample`` times (bicubic) and scaled back (area), which gives DIS's patches
    and its sub-pixel search a finer grid (a fraction of a pixel off costs several dB on fine
    print; MODEL_CARD.md, "Sub-pixel flow"). With several ``flows`` (:data:`FLOW_METHODS`; shipped:
    DIS, OpenCV's DeepFlow at the crop's resolution, and DIS from the image with its artifact
    filled, :func:`artifact_filled`) each round computes each, side by side, and the one whose
    carried flow predicts the held-out band below best is the round's (the earlier one where they
    tie): DeepFlow is sharper on textured bends and weaker on plain surfaces, the filled image keeps
    the artifact's content out of DIS's patches next to the mask, and the band tells which is
    better here (MODEL_CARD.md, "Two flows, the better on the held-out band" and "The artifact
    filled for a third flow"). Inside the mask grown by ``grow`` px the image is the
    artifact, and where the field leaves the reference object the warp is its black surround: the
    flow there is discarded and carried in from the rest (``carry``): by a smoothing thin-plate
    spline (:func:`~refine_by_align.fill.spline_interpolate`, "spline", shipped: it continues the
    bend's curvature into the mask and averages the flow's noise, 0.59 -> 0.36 px mean inside the
    mask on 33 nonrigid validation cases) or by the harmonic solution
    (:func:`~refine_by_align.fill.harmonic_interpolate`, "harmonic", the last release's; MODEL_CARD.md,
    "Spline-carried flow and ECC polish"). With ``smooth`` > 0, an ablation, the flow is smoothed
    first by a Gaussian of that many px over the pixels it is kept at (it helped the flow at the
    crop's own resolution, not the upsampled one). ``finest_scale``: DIS's last pyramid level
    (None: the preset's; an ablation, see :func:`_dis_flow`). Within ``reach`` px of the grown mask the field
    becomes xy'(p) = xy(p + flow(p)) (its object mask and confidence moved with it); farther out it
    is unchanged. Up to ``rounds`` rounds, each on the field the last one left, while each
    passes the check.

    The check: a round is kept only if it predicts a band it was not given. The flow carried in
    from beyond ``grow + check_px`` px must raise the agreement (NCC of the grey values) of the warp
    with the image on the band 2 .. ``grow + check_px`` px outside the mask by at least
    ``min_gain``. (The band's own flow values are not used, though DIS's patches, 12 px at the
    ``MEDIUM`` preset's finest scale, see a few pixels of it.) Unchecked
    (``check=False``, an ablation: one round, always kept) the flow costs 3 dB on the validation
    cases: on real photos it is often wrong, and this check is what makes it safe (MODEL_CARD.md).

    The refined field is fitted on the ring its warp's trust is measured on (:func:`warp_fill`), so
    its ``trust_cap`` is set to the agreement before the flow (``agreement``, where the caller has
    measured it with :func:`warp_agreement`), except where its warp carries the image's fine
    detail on the ring (:func:`detail_agreement` at least ``detail_trust``: the image's own photo
    brought into place, not another view of the object): then it may be trusted up to the held-out
    agreement of the last kept round (the band the flow did not see). A field a pixel or two off
    before the flow and within one after it was otherwise blended at a third to two thirds
    (MODEL_CARD.md, "Trust after the flow"); ``detail_trust=None`` never raises the cap.
    A round is not run (counted as refused) where the warp already agrees with the image on that
    band within :data:`FLOW_SETTLED` of 1: there the flows were refused all but once in 320 rounds.
    Returns (the field, info: the first round's {"ncc": before, "ncc_flow": after, "kept": bool}
    on the band ({"ncc": before, "kept": False, "settled": True} where it was not run), "rounds":
    how many were kept and "detail": the refined warp's detail agreement; {} where the band is too
    small to judge)."""
    from ..fill import harmonic_interpolate, spline_interpolate

    if carry not in FLOW_CARRY:
        raise ValueError(f"unknown flow carry '{carry}' (choose {', '.join(FLOW_CARRY)})")
    flows = tuple(flows)
    if not flows or any(f not in FLOW_METHODS for f in flows):
        raise ValueError(f"flows must name one or more of {', '.join(FLOW_METHODS)}, got {flows}")
    interpolate = spline_interpolate if carry == "spline" else harmonic_interpolate
    fld = with_confidence(fld)  # (moved with the field; a ranked-only candidate gets it here)
    image_u8 = np.ascontiguousarray(np.clip(image_box, 0, 255).astype(np.uint8))
    m = np.asarray(mask_box, bool)
    flows = flows if check else flows[:1]
    filled = artifact_filled(_gray(image_u8), m) if "dis-filled" in flows else None  # (the same in every round)
    current, first, kept, held_out = fld, None, 0, None
    for _ in range(rounds if check else 1):
        refined, info = _flow_round(current, image_u8, m, reference, grow, check_px, reach, min_gain, preset, check, smooth, upsample, interpolate, finest_scale, flows, filled)
        first = info if first is None else first
        if not info.get("kept"):
            break
        current, kept, held_out = refined, kept + 1, info.get("ncc_flow")
    if not kept:
        return fld, first or {}
    cap = warp_agreement(image_u8, m, reference, fld) if agreement is None else agreement
    detail = detail_agreement(image_u8, m, reference, current)
    if detail_trust is not None and held_out is not None and detail >= detail_trust:
        cap = max(cap, held_out)  # (the image's own photo, brought into place: trusted as the band it did not see says)
    current.trust_cap = min(fld.trust_cap, cap)
    return current, {**first, "rounds": kept, "detail": round(detail, 4)}


def _flow_round(fld, image_u8, m, reference, grow, check_px, reach, min_gain, preset, check, smooth, upsample, interpolate, finest_scale, flows=("dis",), filled=None) -> tuple[DenseField, dict]:
    """One round of :func:`refine_field_flow` (``image_u8`` (h, w, 3) uint8, ``m`` (h, w) bool;
    ``interpolate`` the carry's function; each of ``flows`` computed, the first kept unless a later
    one predicts the held-out band better; ``filled``: the grey image with the artifact filled,
    :func:`artifact_filled`, which "dis-filled" starts from): (the refined field, or ``fld`` where
    the round is not kept; its info)."""
    on = fld.on_object
    band = ring(m, 2, 12) & on
    test = ring(m, 2, grow + check_px) & on
    if band.sum() < 64 or test.sum() < 32:
        return fld, {}
    warped = fld.sample(reference).astype(np.float32)  # (h, w, 3)
    gain, offset = colour_transfer(warped, image_u8, band)
    g_img = _gray(image_u8)
    g_warp = _gray(np.clip(np.rint(warped * gain + offset), 0, 255).astype(np.uint8))
    h, w = m.shape

    def agreement(f: DenseField) -> float:
        corrected = np.clip(np.rint(f.sample(reference).astype(np.float32) * gain + offset), 0, 255).astype(np.uint8)
        return _ncc(_gray(corrected)[test], g_img[test])

    before = _ncc(g_warp[test], g_img[test])  # (agreement(fld): g_warp is its colour-matched warp)
    if check and before > 1.0 - FLOW_SETTLED:
        # the band agrees so nearly that no round on the validation cases gained min_gain here: the
        # flows are not computed (the round as a rejected one, the field unchanged)
        return fld, {"ncc": round(before, 4), "kept": False, "settled": True}
    ys, xs = np.nonzero(m)  # the flows' window: the box of the mask grown by a disk of this radius
    r = grow + check_px + reach + FLOW_CONTEXT
    win = (slice(max(ys.min() - r, 0), ys.max() + r + 1), slice(max(xs.min() - r, 0), xs.max() + r + 1))

    def flow_of(method: str) -> np.ndarray:
        """(h, w, 2): the flow ``method``, g_img(p) ~ g_warp(p + flow(p)), computed only where it is
        read: on the box around the mask grown by ``grow + check_px + reach`` px plus
        ``FLOW_CONTEXT`` px of context (0 beyond). The rest of the crop costs time (DeepFlow 0.5 s
        on a 286 px box) and, through DIS's coarse pyramid levels, pulls the flow near the mask
        toward far-off motion: windowed, the nonrigid fields are closer (MODEL_CARD.md, "Flows on
        a window around the mask")."""
        first = (filled if filled is not None else artifact_filled(g_img, m)) if method == "dis-filled" else g_img
        out = np.zeros((h, w, 2), np.float32)
        out[win] = _flow(method, np.ascontiguousarray(first[win]), np.ascontiguousarray(g_warp[win]), preset, upsample, finest_scale)
        return out

    if check and len(flows) > 1:
        # every flow is compared on the held-out band below: they are computed side by side (OpenCV
        # releases Python's lock; DIS runs mostly on one thread, DeepFlow on two; the same flows as
        # one after another, about 20 ms a round sooner on 2 cores)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(len(flows), worker_threads()))) as pool:
            computed = dict(zip(flows, pool.map(flow_of, flows)))
    else:
        computed = {flows[0]: flow_of(flows[0])}
    px, py = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

    def carried(g: int, fs: list[np.ndarray]) -> list[np.ndarray]:
        """Each flow of ``fs`` ((h, w, 2) each) with the mask grown by ``g`` px (and the
        off-object pixels) filled from around it, within ``reach`` px of the grown mask; zero
        farther out. The flows share the hole and the spline's lattice: they are carried in one
        interpolation of their channels side by side (one system solved for all of them)."""
        grown = cv2.dilate(m.astype(np.uint8), _disk(g)).astype(bool)
        near = cv2.dilate(grown.astype(np.uint8), _disk(reach)).astype(bool)
        hole = grown | ~on
        outs = [np.zeros_like(f) for f in fs]
        ys, xs = np.nonzero(near)
        window = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        if not hole[window].all():  # (no flow to carry in: no correction)
            stacked = np.concatenate([_smoothed(f[window], ~hole[window], smooth) for f in fs], axis=-1)  # (h', w', 2 x len(fs))
            filled = interpolate(stacked, hole[window])
            for i, out in enumerate(outs):
                out[window] = np.where(near[window][..., None], filled[..., 2 * i : 2 * i + 2], 0.0)
        return outs

    def composed(f: np.ndarray) -> DenseField:
        qx, qy = px + f[..., 0], py + f[..., 1]
        xy = cv2.remap(fld.xy, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        conf = cv2.remap(fld.confidence, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        obj = cv2.remap(fld.on_object.astype(np.uint8), qx, qy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        return replace(fld, xy=xy, confidence=conf, on_object=obj, counts=dict(fld.counts))

    if check:
        scores = [agreement(composed(c)) for c in carried(grow + check_px, [computed[f] for f in flows])]
        best = int(np.argmax(scores))  # (the earliest where they tie)
        after, chosen = scores[best], flows[best]
        info = {"ncc": round(before, 4), "ncc_flow": round(after, 4), "kept": bool(after >= before + min_gain), "flow": chosen}
        if not info["kept"]:
            return fld, info
    else:
        info = {"ncc": round(before, 4), "kept": True}
    return composed(carried(grow, [computed[chosen if check else flows[0]]])[0]), info


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


# ------------------------------------------------------------------------------------------ warp fill


def ring(mask: np.ndarray, inner: int = 2, outer: int = 10) -> np.ndarray:
    """The band between ``inner`` and ``outer`` pixels outside ``mask``."""
    m = np.asarray(mask, bool).astype(np.uint8)
    return cv2.dilate(m, _disk(outer)).astype(bool) & ~cv2.dilate(m, _disk(inner)).astype(bool)


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


@dataclass(frozen=True)
class ColourMap:
    """A global colour change from a warped reference to the image: a 3 x 3 matrix and offset in a
    gamma-adjusted space, ``255 * clip((rgb @ matrix + offset) / 255, 0, 1) ** gamma`` for values
    in 0..255 (``gamma`` 1: the plain affine map of :func:`colour_affine`)."""

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)
    gamma: float = 1.0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) values in 0..255 -> (..., 3) float64 in 0..255."""
        x = np.clip((np.asarray(rgb, np.float64) @ self.matrix + self.offset) / 255.0, 0.0, 1.0)
        return 255.0 * (x if self.gamma == 1.0 else np.power(x, self.gamma))


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
    dB over the 3 x 3 map alone (MODEL_CARD.md, "A gamma in the colour map")."""
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
    return ColourMap(matrix, moffset, g), ColourMap(np.diag(gain), offset, g)


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


def _warp_agreement(image_box, mask_box, reference, fld: DenseField, ring_px: tuple[int, int]):
    """The reference warped into the box ((h, w, 3) float32), the ring its colours are matched
    and its agreement measured on (``ring_px`` outside the mask, on the reference object where
    that leaves 16 pixels or more), the per-channel gain and offset there, the warp after them,
    and the agreement: the grey values' ncc on the ring, at most the field's ``trust_cap``."""
    warped = fld.sample(reference).astype(np.float32)  # (h, w, 3)
    band = ring(mask_box, *ring_px) & fld.on_object
    if band.sum() < 16:
        band = ring(mask_box, *ring_px)
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
    return _warp_agreement(image_box, mask_box, reference, fld, ring_px)[-1]


def misfit_weight(misfit: float | None, limits: tuple[float, float] | None = MISFIT_PX) -> float:
    """The factor :func:`warp_fill` scales a warp's blend weight by for a field whose fit misses its
    own matches by ``misfit`` px (:func:`field_misfit`): 1 up to ``limits[0]``, falling linearly to
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
) -> WarpFill:
    """Warp the reference into the box, match its colours to the image in a ring outside the mask
    (a 3 x 3 colour map and offset in a gamma-adjusted space, :func:`colour_maps`), and decide where to trust it: pixels of
    the mask whose source lies on the reference object with confidence >= ``min_confidence``, and
    only if the warp agrees with the image in the ring (normalised cross-correlation of the grey
    values after per-channel gains and offsets, :func:`colour_transfer`, >= ``min_ncc``; otherwise
    nothing). The blend weight rises linearly from 0 at ``min_ncc`` to 1 at ``full_ncc``: a warp
    that agrees only roughly (a real second view) is mixed with the fallback fill rather than
    pasted whole. The agreement counted is at most the field's ``trust_cap`` (a field refined on
    this ring itself, by :func:`refine_field_flow`, is trusted as it was before). With
    ``misfit_px`` (lo, hi) the weight is also scaled by how well the field's fit explains its own
    matches (the field's ``misfit_px``, :func:`field_misfit`): in full up to lo px, falling
    linearly to 0 at hi px, where no pixel is trusted (a warp that misplaces its own matches by
    that much misplaces the mask's detail too, however well the ring around the mask agrees)."""
    warped, band, gain, offset, per_channel, ncc = _warp_agreement(image_box, mask_box, reference, fld, ring_px)
    if fld.minification() > MINIFY_ABOVE:  # a reference sharper than the image: the pasted warp low-passed
        warped = fld.sample(reference, antialias=True).astype(np.float32)
        per_channel = np.clip(warped * gain + offset, 0, 255)
    # the patch takes the freer colour map (a 3 x 3 matrix in a gamma-adjusted space); the trust
    # stays measured after the per-channel gains: the map's parameters would also raise the ring
    # agreement of a rough warp
    full, per_channel_map = colour_maps(warped, image_box, band)
    # ... where the ring shows colours like the pixel's own: elsewhere (letters of a colour the ring
    # does not hold) the matrix would extrapolate, and the per-channel gains (with the same gamma)
    # take over (measured on the mask only: the pipeline and the training pairs read the patch
    # there; outside it the patch holds the per-channel linear match)
    m = np.asarray(mask_box, bool)
    support = colour_support(warped, band, colour_reach, at=m)[..., None]  # (h, w, 1) in [0, 1], 0 off the mask
    corrected = per_channel.copy()
    corrected[m] = support[m] * full(warped[m]) + (1.0 - support[m]) * per_channel_map(warped[m])
    trusted = fld.on_object & (with_confidence(fld).confidence >= min_confidence)
    coverage = float((fld.on_object & m).sum() / max(m.sum(), 1))
    factor = misfit_weight(fld.misfit_px, misfit_px)
    use = m & trusted if ncc >= min_ncc and factor > 0 else np.zeros_like(m)
    a = 1.0 if full_ncc <= min_ncc else float(np.clip((ncc - min_ncc) / (full_ncc - min_ncc), 0.0, 1.0))
    weight = use.astype(np.float32) * (a * factor)
    return WarpFill(patch=np.rint(corrected).astype(np.uint8), use=use, weight=weight, ncc=ncc, coverage=coverage, gain=gain, offset=offset, misfit_factor=factor)
