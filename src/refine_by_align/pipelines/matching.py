"""Point matches between the image around the artifact and the reference object.

Each source returns :class:`Matches` (positions on the image and on the reference, a weight each):

* ``sift``: OpenCV SIFT keypoints with Lowe's ratio test (few, very precise on rigid views), the
  mirrored reference matched from the same descriptors (:func:`mirrored_sift`);
* ``aliked``: the pretrained ALIKED matcher (``models/aliked.py``; many, robust under deformation);
* ``attention``: the model's own cross-attention at Algorithm 1's layer, read at sub-token
  precision (a soft-argmax around each query's peak token; :func:`attention_matches`);
* where no source agrees on anything, the object itself searched for by rotation and scale
  (:func:`template_matches`).

The reference's features are remembered (keyed by its pixels), so several masks refined against one
reference describe it once. :mod:`.fields` fits a field to the matches.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import scipy.fft as sf

from ..config import MATCH_SOURCES  # (the sources :func:`~.fields.dense_field` understands)
from ..memo import ContentCache
from ..threads import side_by_side, torch_threads
from ..zoom import Box, rescaled

__all__ = [
    "MATCH_SOURCES",
    "Matches",
    "outside_mask",
    "sift_matches",
    "mirrored_sift",
    "sift_features_ahead",
    "image_features_ahead",
    "sift_whole",
    "ALIKED_KEYPOINTS",
    "AlikedImage",
    "aliked_features",
    "aliked_image",
    "aliked_image_side",
    "aliked_reference_features",
    "clear_reference_cache",
    "aliked_matches",
    "template_matches",
    "masked_ncc",
    "grow_box",
    "attention_matches",
]


#: SIFT's settings in the alignment: at most this many keypoints per picture, described at most
#: SIFT_MAX_SIDE px on the longer side
SIFT_MAX_FEATURES = 4000
SIFT_MAX_SIDE = 1024


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


def _oriented(reference: np.ndarray, reference_mask: np.ndarray | None, flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference and its mask (None stays None) as given, or mirrored left to right (a view;
    positions found on it map back by x -> W - 1 - x)."""
    if not flip:
        return reference, reference_mask
    return reference[:, ::-1], None if reference_mask is None else np.asarray(reference_mask)[:, ::-1]


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
    max_features: int = SIFT_MAX_FEATURES,
    flip: bool = False,
    max_side: int = SIFT_MAX_SIDE,
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
    max_features: int = SIFT_MAX_FEATURES,
    max_side: int = SIFT_MAX_SIDE,
) -> None:
    """Describe, side by side on :func:`~refine_by_align.threads.worker_threads` threads, the
    pictures :func:`sift_matches` reads with the same settings (the image outside the grown mask,
    and the reference: each orientation of ``flips`` is matched from its descriptors), so its
    calls find them remembered. OpenCV's SIFT runs mostly on one core (0.039 s a 512 px picture
    with 2 threads, 0.045 s with one): two pictures side by side take 0.047 s where one after the
    other take 0.078 s. The features are the ones computed one at a time (SIFT is deterministic)."""
    jobs = [(image, outside_mask(mask, exclude_px))] + ([(reference, reference_mask)] if len(flips) else [])
    side_by_side(lambda job: _sift_features(job[0], job[1], max_features, max_side), jobs)


_AHEAD: ThreadPoolExecutor | None = None  # image_features_ahead's thread, made on first use
_AHEAD_LOCK = threading.Lock()


def image_features_ahead(image: np.ndarray, mask: np.ndarray, crop_box: Box, aliked=None, exclude_px: int = 4, reference: np.ndarray | None = None) -> Future:
    """Start describing the image's side of the alignment's matching on a background thread: SIFT
    of the image outside the grown mask (as :func:`sift_features_ahead` describes it) and, with the
    ALIKED model ``aliked``, the image's ALIKED keypoints around the crop with the best
    :data:`ALIKED_KEYPOINTS` described (:func:`aliked_image_side`, as
    :func:`~.alignment.dense_alignment` asks for them). The alignment then finds them remembered, or waits for the
    ones still being made; the same values as made in line. For a step that keeps one core busy
    and leaves the other idle (GrabCut's estimate of the reference object, 0.1-0.5 s on one core:
    the pipeline's ``prepare``); elsewhere it competes with the caller. The image's ALIKED pass is
    wasted where the cheap sources settle the field (ALIKED is not run then). ``reference``: a
    reference photo to be matched as it is, its object not known yet: described whole
    (:func:`sift_whole`), its SIFT features in the object's mask are then those keypoints. Returns the job's
    future (its exceptions are the caller's to read, or dropped: the alignment computes anew what
    failed here)."""
    global _AHEAD
    image = np.ascontiguousarray(image)
    mask = np.asarray(mask, bool)

    def work() -> None:  # (ALIKED on one thread, ALIKED_THREADS: GrabCut keeps its core)
        sift_features_ahead(image, mask, None, None, flips=(), exclude_px=exclude_px)  # (the image alone)
        if reference is not None:
            sift_whole(reference)
        if aliked is not None:
            aliked_image_side(aliked, image, mask, crop_box, exclude_px)

    with _AHEAD_LOCK:
        if _AHEAD is None:
            _AHEAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refine-by-align-ahead")
        return _AHEAD.submit(work)


def _forget_ahead_thread() -> None:
    """A forked child has no ahead thread (only the forking thread is copied): it makes its own."""
    global _AHEAD, _AHEAD_LOCK
    _AHEAD, _AHEAD_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ahead_thread)


def _sift_features(rgb: np.ndarray, det_mask: np.ndarray | None, max_features: int, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """SIFT's keypoint positions at full resolution ((N, 2) float32) and descriptors ((N, 128)
    float32, None where none) of ``rgb`` where ``det_mask`` is True, described at most
    ``max_side`` px on the longer side. Remembered for the last few pictures, keyed by a digest of
    the pixels, the mask and the settings: the alignment matches the image's side against both
    orientations of the reference, and a reference seen before is not described again (SIFT is
    deterministic: the same values as computing them anew). Read-only arrays."""
    mask_part = None if det_mask is None else np.packbits(np.asarray(det_mask, bool))
    key = ContentCache.key(rgb, mask_part, max_features, max_side)

    def described() -> tuple[np.ndarray, np.ndarray | None]:
        whole = None if det_mask is None else _SIFT_WHOLE.get_or_wait(ContentCache.key(rgb, max_features, max_side))
        if whole is not None:  # (the picture described whole, ahead: its keypoints in the mask)
            return _in_mask(whole, rgb.shape, det_mask, max_side)
        small, det, f = _bounded(rgb, det_mask, max_side)
        raw, desc = _sift_detect(small, det, max_features)
        pts = rescaled(raw, f)
        pts.flags.writeable = False
        return pts, desc

    return _SIFT_FEATURES.get_or_compute(key, described)  # (one being described ahead is waited for)


def _sift_detect(small: np.ndarray, det: np.ndarray | None, max_features: int) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV's SIFT on ``small`` (h, w, 3) uint8 where ``det`` (h, w) bool is True (None: all of
    it): (keypoint positions at that size (N, 2) float32, descriptors (N, 128) float32 read-only,
    or None). The one SIFT call of :func:`_sift_features` and :func:`sift_whole`, whose results
    must be the same keypoints for :func:`_in_mask` to stand in for a masked call."""
    kp, desc = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(_gray(small), None if det is None else det.astype(np.uint8) * 255)
    if desc is not None:
        desc.flags.writeable = False
    return np.float32([k.pt for k in kp]).reshape(-1, 2), desc


_SIFT_WHOLE = ContentCache(4)  # (pixels, settings) -> (keypoints at the described size, descriptors, factor), no detection mask


def sift_whole(rgb: np.ndarray, max_features: int = SIFT_MAX_FEATURES, max_side: int = SIFT_MAX_SIDE) -> tuple[np.ndarray, np.ndarray | None, float]:
    """SIFT of the whole picture ``rgb`` (no detection mask), remembered: (keypoints at the size it
    was described at (N, 2) float32, descriptors (N, 128) float32 or None, the factor back to full
    size). OpenCV's SIFT keeps its ``max_features`` best keypoints before it applies a detection
    mask, so :func:`_sift_features` with a mask is this with the keypoints outside the mask dropped
    (identical keypoints and descriptors: on all 48 references of val and val2, photos with 4,000
    keypoints among them; MODEL_CARD.md, fortieth session): a reference photo can be described
    before its object is known (:func:`image_features_ahead`, beside GrabCut's estimate)."""

    def described() -> tuple[np.ndarray, np.ndarray | None, float]:
        small, _, f = _bounded(rgb, None, max_side)
        raw, desc = _sift_detect(small, None, max_features)
        raw.flags.writeable = False
        return raw, desc, f

    return _SIFT_WHOLE.get_or_compute(ContentCache.key(rgb, max_features, max_side), described)


def _in_mask(whole: tuple, shape: tuple[int, ...], det_mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_sift_features`' result from :func:`sift_whole`'s: the keypoints whose rounded
    position (OpenCV's rule: row int(y + 0.5), column int(x + 0.5), at the described size) is in the
    detection mask, in their order, with their descriptors."""
    raw, desc, f = whole
    size, _ = _bounded_size(shape, max_side)
    det = np.asarray(det_mask, bool)
    if size is not None:
        det = cv2.resize(det.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    iy = np.clip((raw[:, 1] + np.float32(0.5)).astype(np.int64), 0, det.shape[0] - 1)
    ix = np.clip((raw[:, 0] + np.float32(0.5)).astype(np.int64), 0, det.shape[1] - 1)
    keep = det[iy, ix] if len(raw) else np.zeros(0, bool)
    pts = rescaled(raw[keep].reshape(-1, 2), f)
    pts.flags.writeable = False
    if desc is None or not keep.any():
        return pts, None
    d = np.ascontiguousarray(desc[keep])
    d.flags.writeable = False
    return pts, d


#: ALIKED keypoints per picture in the alignment's first matching (the image side's best-scored ones)
ALIKED_KEYPOINTS = 1024

#: torch threads each ALIKED pass runs on (None: torch's setting). ALIKED gains little from a
#: second core (a pass at 384 px: about the same time on one thread as on two), and the alignment
#: runs its passes two at a time on threads of their own (the image's beside the reference's, or
#: beside GrabCut's estimate of the reference object): one thread each keeps them off each other's
#: core. The values are the same wherever a pass runs (the sums in its convolutions are split by
#: the thread count: two threads and one differ by about 1e-6).
ALIKED_THREADS = 1


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
        with torch_threads(ALIKED_THREADS):
            self._kpts, scores, self._feature_map = detect(model, sub, msub, max_keypoints=max_keypoints)  # (N, 2) working px, (N,), the (D, h, w) map (a SparseFeatureMap)
        k = self._kpts.float().cpu().numpy().astype(np.float32)
        fx, fy = b.width / sub.shape[1], b.height / sub.shape[0]
        self.keypoints = rescaled(k, (fx, fy)) + np.float32([b.x0, b.y0]) if len(k) else k
        self.scores = scores.float().cpu().numpy().astype(np.float32)
        self.keypoints.flags.writeable = self.scores.flags.writeable = False  # (shared by every caller of a remembered one)
        self._desc = np.zeros((0, int(self._feature_map.shape[0])), np.float32)
        self._lock = threading.Lock()  # (a remembered one may be described further by a later caller)

    def __len__(self) -> int:
        return len(self.keypoints)

    def features(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keypoints (n, 2), descriptors (n, D) L2-normalised, scores (n,)) of the ``n`` best (all
        by default); descriptors already computed are reused."""
        n = len(self) if n is None else min(int(n), len(self))
        with self._lock:
            if len(self._desc) < n:
                import torch

                with torch.no_grad(), torch_threads(ALIKED_THREADS):
                    more = self.model.describe(self._feature_map, self._kpts[len(self._desc) : n])
                self._desc = np.concatenate([self._desc, more.float().cpu().numpy().astype(np.float32)])
                self._desc.flags.writeable = False  # (shared by every caller of a remembered one)
            return self.keypoints[:n], self._desc[:n], self.scores[:n]


_ALIKED_IMAGES = ContentCache(2)  # (pixels, mask, box, sizes, model) -> AlikedImage (its best ALIKED_KEYPOINTS described)


def aliked_image(model, rgb: np.ndarray, mask: np.ndarray | None, box: Box | None = None, max_side: int = 384, max_keypoints: int = ALIKED_KEYPOINTS) -> AlikedImage:
    """:class:`AlikedImage` of the same arguments with its best :data:`ALIKED_KEYPOINTS` already
    described, remembered for the last two pictures (keyed by a digest of the pixels, the mask, the
    box and the settings; :func:`clear_reference_cache` forgets them): the image side the
    alignment matches every reference against, made once per image and mask, and made ahead
    beside the reference object's estimate where that runs (:func:`image_features_ahead`: one
    being made is waited for). The same keypoints and descriptors as made in line (ALIKED is
    deterministic); a remembered one holds ALIKED's feature maps of its box (tens of MB)."""
    mask_part = None if mask is None else np.packbits(np.asarray(mask, bool))
    where = None if box is None else (int(box.x0), int(box.y0), int(box.x1), int(box.y1))
    key = ContentCache.key(rgb, mask_part, where, max_side, max_keypoints, id(model))

    def made() -> AlikedImage:
        side = AlikedImage(model, rgb, mask, box, max_side, max_keypoints)
        side.features(ALIKED_KEYPOINTS)
        return side

    return _ALIKED_IMAGES.get_or_compute(key, made)  # (the model is kept by the value: its id is not reused while cached)


def aliked_image_side(model, image: np.ndarray, mask: np.ndarray, crop_box: Box, exclude_px: int = 4) -> AlikedImage:
    """The image's side of the alignment's ALIKED matching (:func:`aliked_image`): its keypoints
    outside the mask grown by ``exclude_px`` px, in the crop box grown three times, up to twice
    :data:`ALIKED_KEYPOINTS` of them (the best half described). The one place these settings are
    written: :func:`~.alignment.dense_alignment` asks for it, :func:`image_features_ahead` makes it
    ahead, and the two must ask for the same to find it remembered."""
    return aliked_image(model, image, outside_mask(mask, exclude_px), grow_box(crop_box, 3.0), max_keypoints=2 * ALIKED_KEYPOINTS)


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
    _SIFT_WHOLE.clear()
    _ALIKED_IMAGES.clear()


def aliked_reference_features(model, reference: np.ndarray, reference_mask: np.ndarray | None, flip: bool = False, max_side: int = 384, max_keypoints: int = ALIKED_KEYPOINTS):
    """ALIKED's (keypoints, descriptors) of the reference object (the box of ``reference_mask``
    plus 8 px; the whole photo without one), on the reference as given or mirrored (``flip``;
    keypoints on the mirrored picture), remembered for the last few references: a user refining
    several masks against one reference (the web page, a batch over one product photo) pays the
    reference's ALIKED pass once per orientation. Keyed by a digest of the pixels and the mask, so
    a changed reference is never served stale features; thread-safe (the alignment computes the
    second orientation's ahead, beside the first's matching). Read-only arrays."""
    mask_part = None if reference_mask is None else np.packbits(np.asarray(reference_mask, bool))
    key = ContentCache.key(reference, mask_part, flip, max_side, max_keypoints, id(model))
    hit = _REFERENCE_FEATURES.get(key)
    if hit is not None:
        return hit[1], hit[2]
    rsrc, rmask = _oriented(reference, reference_mask, flip)
    rbox = None
    if rmask is not None and np.asarray(rmask).any():
        ys, xs = np.nonzero(rmask)
        rbox = Box(int(xs.min()) - 8, int(ys.min()) - 8, int(xs.max()) + 9, int(ys.max()) + 9)
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
    kr, dr = aliked_reference_features(model, reference, reference_mask, flip, max_side, max_keypoints)
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


#: :func:`template_matches` first searches every rotation and scale with the object and the search
#: area scaled down this many times more, then only the best ``TEMPLATE_COARSE_KEEP`` again at the
#: search's own scale (None: every one at that scale): the same placement in 187 of 192 searches
#: on val-val4 (the rest weak ones where point matches give the field), 149 -> 85 ms a search.
TEMPLATE_COARSE = 2
TEMPLATE_COARSE_KEEP = 32


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
    flip: bool = False,
    coarse: int | None = TEMPLATE_COARSE,
    coarse_keep: int = TEMPLATE_COARSE_KEEP,
) -> tuple[Matches, float]:
    """Where point matching finds nothing consistent (a small, plain object: its few keypoints all
    matched to one spot), the reference object itself is searched for around the mask: rotated by
    each of ``angles`` (degrees) and scaled by each of ``scales``, it is correlated with the image
    (:func:`masked_ncc`: OpenCV's masked ``TM_CCOEFF_NORMED``, over the object's own pixels, every
    placement of one pass in one batch; the mask filled by Telea first) in the crop box grown
    ``search_factor`` times. The search runs with the object and the search area scaled down
    together so the object's longer side is at most ``max_side`` px and the area's at most
    ``max_area`` px (a placement to a few pixels, which ECC refines; the cost stays bounded: a
    median 40 ms an orientation, at most 0.17 s, on the validation cases that reach it). The best
    placement, if it correlates at ``min_score`` or more, is returned as matches on a ``step``-px
    lattice over the reference object (coarser where that would give more than about
    ``max_points``; a similarity: ECC, the optical flow and the trust gate take it from there),
    with its score; otherwise (no matches, the best score: -1 where no placement fits the search
    area, or the reference object covers more than ``max_fraction`` of its photo, so no object is
    isolated, e.g. the whole photo as the reference) (MODEL_CARD.md, "Template search where no
    point matches agree"). ``flip``: search for the mirrored reference object (the matches' reference
    positions are on the reference as given). With ``coarse``, the whole grid of rotations and
    scales is first searched with the object and the area scaled down ``coarse`` times more, and
    only the ``coarse_keep`` best placements' rotations and scales are searched again at the
    search's own scale (None: every one at that scale; MODEL_CARD.md, "Template search coarse to
    fine")."""
    width = reference.shape[1]
    reference, reference_mask = _oriented(reference, reference_mask, flip)
    rmask = np.asarray(reference_mask, bool)
    rows, cols = np.nonzero(rmask)
    if len(rows) == 0 or len(rows) > max_fraction * rmask.size:
        return Matches.empty(), -1.0  # (no object isolated in the reference: nothing to search for)
    y0, x0, y1, x1 = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
    search = grow_box(crop_box, search_factor)
    sx0, sy0 = max(search.x0, 0), max(search.y0, 0)
    side = max(min(search.y1, image.shape[0]) - sy0, min(search.x1, image.shape[1]) - sx0)
    f = min(1.0, max_side / float(max(y1 - y0, x1 - x0)), max_area / float(side))  # the search's scale
    grey = cv2.inpaint(_gray(image), np.asarray(mask, np.uint8), 5, cv2.INPAINT_TELEA)
    object_grey, object_mask = _gray(reference)[y0:y1, x0:x1], rmask[y0:y1, x0:x1].astype(np.uint8) * 255
    search_grey = grey[sy0 : min(search.y1, grey.shape[0]), sx0 : min(search.x1, grey.shape[1])]

    def scaled(a: np.ndarray, g: float, interp: int = cv2.INTER_AREA) -> np.ndarray:
        return a if g >= 1.0 else cv2.resize(a, (max(1, round(a.shape[1] * g)), max(1, round(a.shape[0] * g))), interpolation=interp)

    def search_at(g: float, combos) -> list[tuple[float, float, float, np.ndarray, tuple[int, int]]]:
        """Each (scale, angle) of ``combos`` placed on the search area with everything scaled by
        ``g``: (score, scale, angle, M (2, 3): template px -> rotated px, the best location), for
        the placements that fit."""
        templ, tmask, area = scaled(object_grey, g), scaled(object_mask, g, cv2.INTER_NEAREST), scaled(search_grey, g)
        h, w = templ.shape
        min_pixels = 200 * g * g  # (the object's pixels a placement must keep: 200 at full size)
        placed = []  # (scale, angle, M, rotated template, its mask)
        for scale, angle in combos:
            M = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), float(scale))  # (2, 3): template px -> rotated px
            corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ M.T
            M[:, 2] -= corners.min(axis=0)
            tw, th = (int(np.ceil(v)) for v in corners.max(axis=0) - corners.min(axis=0))
            if tw >= area.shape[1] or th >= area.shape[0] or min(tw, th) < 16 * g:
                continue  # (larger than the search area: a close-up, which point matching handles)
            t = cv2.warpAffine(templ, M, (tw, th), flags=cv2.INTER_LINEAR)
            tm = cv2.warpAffine(tmask, M, (tw, th), flags=cv2.INTER_NEAREST)
            if int((tm > 0).sum()) < min_pixels:
                continue
            placed.append((scale, angle, M, t, tm))
        found = []
        for (scale, angle, M, _, _), score in zip(placed, masked_ncc(area, [p[3] for p in placed], [p[4] for p in placed])):
            at = int(np.argmax(score))  # (the first maximum in row-major order, as cv2.minMaxLoc)
            y, x = divmod(at, score.shape[1])
            found.append((float(score[y, x]), scale, angle, M, (x, y)))
        return found

    combos = [(scale, angle) for scale in scales for angle in angles]
    if coarse is not None and coarse > 1:
        ranked = sorted(search_at(f / coarse, combos), key=lambda r: -r[0])  # (stable: grid order among ties)
        if ranked:  # the best few rotations and scales, searched again at the search's own scale
            leading = {(r[1], r[2]) for r in ranked[:coarse_keep]}
            combos = [c for c in combos if c in leading]
    best, placement = -1.0, None
    for top, _, _, M, loc in search_at(f, combos):
        if top > best:
            best, placement = top, (M.copy(), loc)
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
    if flip:
        ref_xy[:, 0] = (width - 1) - ref_xy[:, 0]
    n = len(img_xy)
    return Matches(img_xy.astype(np.float32), ref_xy.astype(np.float32), np.ones(n, np.float32), {"template": n}), best


#: :func:`masked_ncc` scores -1 a window, or a template over its mask, whose grey values vary by
#: less than this (mean squared deviation, grey levels squared): one flat colour, which has no
#: normalised correlation (OpenCV gives it no finite score, or one made of its float32 rounding,
#: which can reach 0.7); the float32 transforms' own rounding on 8-bit pictures stays below 0.01.
FLAT_WINDOW_VARIANCE = 0.1
#: :func:`masked_ncc` transforms at most this many values a batch (templates x the transform's
#: size: 327 templates on an 80 x 80 px search area, the template search's first pass, in one).
NCC_BATCH_VALUES = 2**21


def masked_ncc(area: np.ndarray, templates: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
    """``cv2.matchTemplate(area, t, cv2.TM_CCOEFF_NORMED, mask=m)`` for every template ``t`` and its
    mask ``m`` (nonzero: the template's pixels that count), computed together by FFT: the area's
    transforms are made once a batch and the templates' in one batch, where OpenCV makes them again
    for every template (:func:`template_matches` correlates 200-360 rotations and scales with one
    search area; batches of at most :data:`NCC_BATCH_VALUES` values). (H, W) uint8 area, (h_k, w_k)
    uint8 templates and masks, each no larger than the area -> a (H - h_k + 1, W - w_k + 1) float32
    score map each; a flat window, and every window for a template flat over its mask (grey
    variance under :data:`FLAT_WINDOW_VARIANCE`), scores -1.

    The normalised cross-correlation over the mask's n pixels at each offset: with T' the template
    minus its mean over the mask (0 off it), corr(I, T') / sqrt(sum T'^2 * (corr(I^2, M) -
    corr(I, M)^2 / n)), the three correlations of each template with the area by the
    cross-correlation theorem (float32, the area centred on its mean; what float32 leaves of T''s
    mean is taken out of corr(I, T') through corr(I, M)). On the suite's 384 searches the scores
    are within 3.1e-4 of OpenCV's, and every search places the object where OpenCV's does
    (MODEL_CARD.md, "The template search's correlations in one batch")."""
    if len(templates) != len(masks):
        raise ValueError(f"masked_ncc: {len(templates)} templates but {len(masks)} masks")
    if not templates:
        return []
    area = np.asarray(area)
    if area.ndim != 2 or area.dtype != np.uint8:
        raise ValueError(f"masked_ncc: the area must be one 8-bit grey picture (H, W) uint8, got {area.shape} {area.dtype}")
    H, W = area.shape
    k = len(templates)
    for t, m in zip(templates, masks):
        if t.ndim != 2 or t.dtype != np.uint8 or t.shape != m.shape:
            raise ValueError(f"masked_ncc: each template must be (h, w) uint8 with a mask of its own shape, got {t.shape} {t.dtype} and {m.shape}")
        if t.shape[0] > H or t.shape[1] > W:
            raise ValueError(f"masked_ncc: a {t.shape[0]} x {t.shape[1]} template does not fit the {H} x {W} area")
    size = (sf.next_fast_len(H, real=True), sf.next_fast_len(W, real=True))  # (zeros past the area: no offset that fits wraps round)
    per = max(1, NCC_BATCH_VALUES // (size[0] * size[1]))
    if k > per:  # (in batches: the arrays below stay a few MB each)
        return [score for i in range(0, k, per) for score in masked_ncc(area, templates[i : i + per], masks[i : i + per])]
    a = area.astype(np.float32)
    a = (a - a.mean()) * np.float32(1.0 / 255.0)  # (H, W), centred: the squares' sums keep their precision
    tpl = np.zeros((k, H, W), np.float32)  # (K, H, W): each template at the top left, zeros past it
    msk = np.zeros((k, H, W), np.float32)  # (K, H, W): its mask, 0 / 1
    for i, (t, m) in enumerate(zip(templates, masks)):
        tpl[i, : t.shape[0], : t.shape[1]] = t
        msk[i, : m.shape[0], : m.shape[1]] = m != 0
    n = msk.sum((1, 2))  # (K,) pixels counted
    if (n == 0).any():
        raise ValueError("masked_ncc: a template's mask counts no pixel")
    tpl *= np.float32(1.0 / 255.0)
    tpl -= ((tpl * msk).sum((1, 2), dtype=np.float64) / n).astype(np.float32)[:, None, None]
    tpl *= msk  # T': zero mean over the mask (up to float32's rounding, taken out below), 0 off it
    left = tpl.sum((1, 2), dtype=np.float64) / n  # (K,) what rounding left of T''s mean
    t_energy = (np.einsum("kij,kij->k", tpl, tpl, dtype=np.float64) - n * left**2).astype(np.float32)  # (K,) sum (T' - left M)^2
    fa, fa2 = sf.rfft2(a, s=size, workers=1), sf.rfft2(a * a, s=size, workers=1)
    ft, fm = np.conjugate(sf.rfft2(tpl, s=size, workers=1)), np.conjugate(sf.rfft2(msk, s=size, workers=1))  # (K, H', W' / 2 + 1)
    num = sf.irfft2(ft * fa, s=size, workers=1)  # (K, H', W') corr(I, T')
    s2 = sf.irfft2(fm * fa2, s=size, workers=1)  # corr(I^2, M)
    s1 = sf.irfft2(fm * fa, s=size, workers=1)  # corr(I, M)
    num -= left.astype(np.float32)[:, None, None] * s1  # corr(I, T' - left M)
    var = s2 - s1 * s1 / n[:, None, None]  # (K, H', W') n times the window's variance
    flat = var <= n[:, None, None] * np.float32(FLAT_WINDOW_VARIANCE / 255.0**2)
    flat |= (t_energy <= n * np.float32(FLAT_WINDOW_VARIANCE / 255.0**2))[:, None, None]  # a template flat over its mask: no score anywhere
    with np.errstate(divide="ignore", invalid="ignore"):
        score = num / np.sqrt(np.maximum(var, 1e-20) * np.maximum(t_energy, 1e-20)[:, None, None])
    score[flat] = -1.0
    return [score[i, : H - t.shape[0] + 1, : W - t.shape[1] + 1].astype(np.float32) for i, t in enumerate(templates)]


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
