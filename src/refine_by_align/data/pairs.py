"""Training-pair construction of Sec. 3.4 (alignment mode, refinement mode, multi-view pairs).

Paper, Sec. 3.4:

* **Alignment mode**: "Use a complete reference object to guide object completion, forcing the model
  to learn to identify the corresponding local region from the reference." Given an object image
  I_o with object mask M_o, sample ``M_a = G(M_o)``; the reference is ``I_r = S(T(I_o x M_o))``; the
  input is I_o with the hole M_a and the target is I_o.
* **Refinement mode**: the reference is only the local region: ``I_r = S(T(I_o x M_a))``. We use
  ``dilate(M_a) & M_o`` so the local reference also shows a little context around the hole.
* **Multi-view pairs** (MVObj in the paper, here any :class:`MultiViewFolder`): "I_o1 x erode(M_o1) is
  used as the reference, and I_o2 x (1 - erode(M_o2)) is the input artifacts image", i.e. the hole
  is the whole eroded object; we also use, with probability ``1 - p_whole_object``, a random artifact
  mask inside the object.
* "We then adopt the zoom-in inpainting strategy [...] cropping around I_a": the input and target
  are the :func:`refine_by_align.zoom.zoom_box` crop around the hole, resized to S x S.
* **Warp prefill** (``PairConfig.warp_prefill``, for ``hole_fill="warp"`` models, issue 13): the
  pair also carries the reference warped into the crop and colour-matched through a ring outside
  the hole as at inference (:func:`refine_by_align.pipelines.correspondence.warp_fill`), with the
  map where it is trusted. Alignment / refinement pairs warp through the TRUE map T made imperfect
  (:func:`refine_by_align.data.perturb.imperfect_field`: a smooth displacement, a partly wrong
  blob, trust dropouts, sometimes no warp at all); multi-view pairs through a field estimated as
  at inference (SIFT matches outside the hole, :func:`fit_field`, :func:`dense_field`).

Coordinates: crop pixel (u, v) covers source pixels x = box.x0 + (u + 0.5) * box.width / S - 0.5
(OpenCV resize convention); a reference point at pixel-centre position x_r in the R x R reference
has the normalised coordinate (x_r + 0.5) / R, so 0 is the left edge and 1 the right edge.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from refine_by_align.data.masks import MaskConfig, dilate, erode, random_artifact_mask
from refine_by_align.data.perturb import (
    ColorConfig,
    GeomConfig,
    GeomTransform,
    WarpNoiseConfig,
    apply_color,
    imperfect_field,
    random_transform,
    sample_color,
    warp_image,
    warp_mask,
)
from refine_by_align.data.readers import (
    DatasetError,
    MultiViewFolder,
    default_data_root,
)
from refine_by_align.data.synthetic import SyntheticSource
from refine_by_align.fill import CLASSICAL_FILLS, TELEA_RADIUS, fill_hole, warp_at
from refine_by_align.io import save_image_atomic
from refine_by_align.pipelines.fields import DenseField, dense_field, field_misfit, fit_field, on_reference_object
from refine_by_align.pipelines.matching import Matches, outside_mask
from refine_by_align.pipelines.warp import warp_agreement, warp_fill
from refine_by_align.zoom import Box, crop_resize, mask_bbox, square_pad_box, zoom_box

__all__ = [
    "MODES",
    "PairConfig",
    "PairDataset",
    "TrainingPair",
    "grid_shape",
    "make_alignment_pair",
    "make_multiview_pair",
    "make_refinement_pair",
    "show_pairs",
]

MODES = ("alignment", "refinement", "multiview")  # "mode" index in PairDataset items


@dataclass
class PairConfig:
    """Parameters of the training-pair construction (Sec. 3.4)."""

    size: int = 32  # S: side of the input / target crop (model resolution)
    ref_size: int = 32  # R: side of the square reference
    grow: float = 2.0  # zoom_box: crop side = grow x the hole box's longer side ...
    min_size: int = 32  # ... but at least this many source pixels
    ref_margin: float = 0.05  # whole-object reference: margin around the object box (fraction of its side)
    local_margin: float = 0.15  # refinement reference: margin around the local region's box
    local_dilate: float = 0.25  # refinement: dilate M_a by this x its box's longer side ...
    local_dilate_min: int = 2  # ... and by at least this many pixels
    erode_frac: float = 0.015  # multiview: erode object masks by this x the longer image side (>= 1 px)
    p_whole_object: float = 0.5  # multiview: probability that the hole is the whole eroded object
    whole_object_grow: float = 1.1  # multiview, whole-object hole: zoom_box grow factor
    hole_coverage: float = 0.1  # a crop pixel is a hole if at least this fraction of it is artifact
    region_coverage: float = 0.25  # a reference pixel is in the region (M*) if >= this fraction is artifact
    multiview_color: bool = False  # multiview: also apply S to the reference (real photos already differ)
    mask: MaskConfig = field(default_factory=MaskConfig)  # artifact-mask generator G
    color: ColorConfig = field(default_factory=ColorConfig)  # colour perturbation S
    geom: GeomConfig = field(default_factory=GeomConfig)  # geometric transform T
    warp_prefill: bool = False  # pairs carry the warped reference and its trust map (hole_fill "warp" models)
    prefill: str | None = None  # a classical hole fill (fill.CLASSICAL_FILLS) computed in the data worker, not the training step
    warp_noise: WarpNoiseConfig = field(default_factory=WarpNoiseConfig)  # how the true field is made imperfect


@dataclass
class TrainingPair:
    image: np.ndarray  # (3, S, S) float32 in [0,1]: the artifact-free target crop I_o (zoom-in crop)
    mask: np.ndarray  # (1, S, S) float32 {0,1}: the hole / artifact mask M_a in the crop
    reference: np.ndarray  # (3, R, R) float32 in [0,1]: the reference, square, black (0) outside the object
    ref_coords: np.ndarray  # (2, S, S) float32: per crop pixel its (x, y) in the reference, in [0,1]; NaN if unknown / outside
    region: np.ndarray  # (1, R, R) float32 {0,1}: the true region M* on the reference (M_a through T); zeros if unknown
    has_correspondence: bool  # the correspondence (ref_coords, region) is known
    mode: str  # "alignment" | "refinement" | "multiview"
    source: str = ""  # where the object came from (for labels / debugging)
    meta: dict = field(default_factory=dict)  # debugging / tests: crop_box, ref_box (Box), transform (GeomTransform)
    # warp_prefill pairs only (else None): the colour-matched warped reference at S px (zeros where
    # there is no warp) and where it pre-fills the hole (1) instead of Telea (0); trust <= mask
    warp: np.ndarray | None = None  # (3, S, S) float32 in [0, 1]
    trust: np.ndarray | None = None  # (1, S, S) float32 {0, 1}


# ----------------------------------------------------------------------------------------------
# helpers


def _coverage(mask: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Fraction of each of the size x size cells of ``box`` covered by ``mask`` (bool or soft
    float in [0, 1]): (size, size) float32."""
    return np.clip(crop_resize(mask.astype(np.float32), box, size, cv2.INTER_AREA), 0.0, 1.0)


def _threshold_nonempty(cov: np.ndarray, thr: float) -> np.ndarray:
    """cov >= thr, but never empty if anything is covered (the best-covered cell is kept)."""
    out = cov >= thr
    if not out.any() and cov.max() > 0:
        out = cov >= cov.max()
    return out


def _crop_points(box: Box, size: int) -> np.ndarray:
    """Source (x, y) of the centres of the size x size crop pixels of ``box``: (size*size, 2)."""
    u = (np.arange(size) + 0.5) * (box.width / size) - 0.5 + box.x0
    v = (np.arange(size) + 0.5) * (box.height / size) - 0.5 + box.y0
    xs, ys = np.meshgrid(u, v)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _ref_coords(t: GeomTransform, crop_box: Box, size: int, ref_box: Box) -> np.ndarray:
    """(2, S, S) float32: each crop pixel through T into the reference crop ``ref_box``, in [0, 1];
    NaN outside the reference."""
    q = t.forward_points(_crop_points(crop_box, size))
    nx = (q[:, 0] - ref_box.x0 + 0.5) / ref_box.width
    ny = (q[:, 1] - ref_box.y0 + 0.5) / ref_box.height
    out = np.stack([nx, ny], axis=0).astype(np.float32)
    bad = ~np.isfinite(out).all(axis=0) | (out < 0).any(axis=0) | (out > 1).any(axis=0)
    out[:, bad] = np.nan
    return out.reshape(2, size, size)


def _chw(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def _check_object(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"object image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"object mask {mask.shape} does not match the image {image.shape[:2]}")
    if not mask.any():
        raise ValueError("object mask is empty")
    return mask


def _input_crop(image: np.ndarray, hole: np.ndarray, box: Box, cfg: PairConfig) -> tuple[np.ndarray, np.ndarray]:
    target = crop_resize(image, box, cfg.size)  # (S, S, 3) uint8
    m = _threshold_nonempty(_coverage(hole, box, cfg.size), cfg.hole_coverage)
    return _chw(target), m[None].astype(np.float32)


def _window(array: np.ndarray, box: Box) -> np.ndarray:
    """``box`` of ``array`` at full resolution (zoom_box keeps it inside the image)."""
    return array[max(box.y0, 0) : box.y1, max(box.x0, 0) : box.x1]


def _warp_inputs(
    image: np.ndarray, hole: np.ndarray, box: Box, reference: np.ndarray, fld: DenseField | None,
    mask_chw: np.ndarray, rng: np.random.Generator, cfg: PairConfig, perturb: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(warp (3, S, S) float32, trust (1, S, S) float32) of a pair: ``reference`` warped into the
    crop ``box`` of ``image`` through ``fld`` and colour-matched in a ring outside ``hole`` exactly
    as at inference (:func:`warp_fill`, with its ring-agreement gate), resized to S px as the
    pipeline does (:func:`warp_at`). ``perturb``: ``fld`` is a true map, to be made imperfect
    (:func:`imperfect_field`); otherwise (an estimated field) only trust dropouts are drawn. No
    field (or ``p_no_warp``): zeros, the model's Telea-only case."""
    s = cfg.size
    empty = np.zeros((3, s, s), np.float32), np.zeros((1, s, s), np.float32)
    if rng.random() < cfg.warp_noise.p_no_warp or fld is None:
        return empty
    image_box, hole_box = _window(image, box), _window(hole, box).astype(bool)
    if image_box.shape[:2] != fld.xy.shape[:2] or not hole_box.any():
        return empty
    noise = cfg.warp_noise if perturb else dataclasses.replace(cfg.warp_noise, jitter_px=(0.0, 0.0), p_wrong=0.0)
    xy, dropout = imperfect_field(fld.xy, hole_box, rng, noise)
    if perturb:
        fld = dataclasses.replace(fld, xy=xy)
    wf = warp_fill(image_box, hole_box, reference, fld)
    use = wf.use & ~dropout
    warp_s, trust_s = warp_at(wf.patch, use, s)
    trust_s &= mask_chw[0] > 0.5
    return _chw(warp_s), trust_s[None].astype(np.float32)


def _true_field(t: GeomTransform, box: Box, ref_obj: np.ndarray) -> DenseField:
    """The true map T over the crop ``box`` at full resolution: each pixel's position on T's
    canvas, on the (1-px eroded) reference object or not, as :func:`dense_field` gives it."""
    ys, xs = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
    q = t.forward_points(np.stack([xs.ravel(), ys.ravel()], 1)).astype(np.float32).reshape(box.height, box.width, 2)
    q[~np.isfinite(q)] = -1e4  # undefined (behind a perspective horizon): off the object
    on = on_reference_object(q, ref_obj)
    return DenseField(box, q, on.astype(np.float32), on)


SIFT_FEATURES = 4000  # as the inference matcher (pipelines/correspondence.sift_matches)


def sift_features(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints of a whole photo, once per photo: ((N, 2) float32 (x, y), (N, 128) float32)."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    kp, desc = cv2.SIFT_create(nfeatures=SIFT_FEATURES).detectAndCompute(gray, None)
    if desc is None or not kp:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    return np.float32([k.pt for k in kp]), desc.astype(np.float32)


def _at(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    xi = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, h - 1)
    return mask[yi, xi]


def _sift_field(hole, crop_box, ref_obj, image_features, ref_features, ratio: float, mirrored: bool) -> DenseField | None:
    (xi, di), (xr, dr) = image_features, ref_features
    ki = _at(outside_mask(hole, 4), xi) if len(xi) else np.zeros(0, bool)
    kr = _at(np.asarray(ref_obj, bool), xr) if len(xr) else np.zeros(0, bool)
    if ki.sum() < 2 or kr.sum() < 2:
        return None
    xi, di, xr, dr = xi[ki], di[ki], xr[kr], dr[kr]
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(di, dr, k=2)
    good = [(p[0], p[0].distance / max(p[1].distance, 1e-6)) for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if not good:
        return None
    m = Matches(
        np.float32([xi[g.queryIdx] for g, _ in good]), np.float32([xr[g.trainIdx] for g, _ in good]),
        np.clip(np.float32([1.2 - r for _, r in good]), 0.05, 1.0), {"sift": len(good)},
    )
    fit = fit_field(m, focus=crop_box, mirrored=mirrored)
    return None if fit is None else dense_field(fit, crop_box, ref_obj)


def estimated_field(
    image: np.ndarray, hole: np.ndarray, crop_box: Box, reference: np.ndarray, ref_obj: np.ndarray,
    image_features: tuple[np.ndarray, np.ndarray], ref_features: tuple, ratio: float = 0.8,
) -> DenseField | None:
    """A field from ``image`` (its ``hole`` excluded, as at inference) to the reference object
    ``ref_obj`` of ``reference`` estimated as the dense alignment does with SIFT: Lowe's ratio
    test, robust homography + thin-plate spline (:func:`fit_field` focused on ``crop_box``),
    :func:`dense_field`, for the reference as given and mirrored, the one whose colour-matched warp
    agrees best with the image in the ring around the hole winning. ``image_features``:
    :func:`sift_features` of the image; ``ref_features``: those of the reference and of the
    mirrored reference (x given on the reference as it is). None where no consistent fit exists.
    The winner's ``misfit_px`` is set (:func:`field_misfit`), as the dense alignment sets it."""
    window = (slice(crop_box.y0, crop_box.y1), slice(crop_box.x0, crop_box.x1))
    best, best_ncc = None, -np.inf
    for mirrored, feats in zip((False, True), ref_features):
        fld = _sift_field(hole, crop_box, ref_obj, image_features, feats, ratio, mirrored)
        if fld is not None:
            ncc = warp_agreement(image[window], hole[window], reference, fld)
            if ncc > best_ncc:
                best, best_ncc = fld, ncc
    if best is not None:  # as the dense alignment does: the warp's trust is discounted by how far the fit misses its matches
        best.misfit_px = field_misfit(best, image.shape[:2])
    return best


def reference_features(rgb: np.ndarray) -> tuple:
    """:func:`sift_features` of a reference photo as given and mirrored (x mapped back)."""
    xy, d = sift_features(rgb[:, ::-1])
    xy = xy.copy()
    xy[:, 0] = rgb.shape[1] - 1 - xy[:, 0]
    return sift_features(rgb), (xy, d)


def _perturbed_reference(
    obj_image: np.ndarray, keep: np.ndarray, artifact: np.ndarray, rng: np.random.Generator, cfg: PairConfig,
    obj_box: Box, t: GeomTransform | None = None,
) -> tuple[GeomTransform, np.ndarray, np.ndarray, np.ndarray]:
    """S(T(I_o x keep)) on T's canvas. Returns (T, warped image (H', W', 3) uint8, warped keep
    (H', W') bool, warped artifact (H', W') float32 in [0, 1], soft).

    S is pointwise, so it is applied to the source pixels (inside ``keep``) before resampling:
    ``T(S(x))`` equals ``S(T(x))`` up to interpolation, at a fraction of the cost."""
    if t is None:
        t = random_transform(rng, obj_image.shape[:2], cfg.geom, box=obj_box)
    b = mask_bbox(keep)
    src = np.zeros_like(obj_image)
    sub = np.where(keep[b.y0 : b.y1, b.x0 : b.x1, None], obj_image[b.y0 : b.y1, b.x0 : b.x1], 0).astype(np.uint8)
    src[b.y0 : b.y1, b.x0 : b.x1] = apply_color(sub, sample_color(rng, cfg.color), keep[b.y0 : b.y1, b.x0 : b.x1])
    maps = t.inverse_maps() if t.field is not None else None
    w_art = warp_image(artifact.astype(np.float32), t, cv2.INTER_LINEAR, maps=maps)  # soft: exact coverage later
    return t, warp_image(src, t, maps=maps), warp_mask(keep, t, maps=maps), w_art


def _finish_reference(
    t: GeomTransform, warped: np.ndarray, w_keep: np.ndarray, w_art: np.ndarray,
    margin: float, crop_box: Box, mode: str, cfg: PairConfig, image_chw, mask_chw, source: str,
) -> TrainingPair:
    visible = w_keep if w_keep.any() else np.ones(w_keep.shape, bool)
    ref_box = square_pad_box(mask_bbox(visible), margin, w_keep.shape)
    reference = crop_resize(warped, ref_box, cfg.ref_size)
    region = _threshold_nonempty(_coverage(w_art, ref_box, cfg.ref_size), cfg.region_coverage)
    coords = _ref_coords(t, crop_box, cfg.size, ref_box)
    return TrainingPair(
        image=image_chw,
        mask=mask_chw,
        reference=_chw(reference),
        ref_coords=coords,
        region=region[None].astype(np.float32),
        has_correspondence=bool(region.any()),
        mode=mode,
        source=source,
        meta={"crop_box": crop_box, "ref_box": ref_box, "transform": t},
    )


# ----------------------------------------------------------------------------------------------
# the three pair builders


def _hole_and_crop(obj_image, obj_mask, rng, cfg: PairConfig, artifact_mask):
    """Shared start of the single-image modes: object mask M_o, artifact mask M_a = G(M_o) (or the
    given one, clipped to the object), the zoom-in crop box and the (image, hole) crop tensors."""
    obj = _check_object(obj_image, obj_mask)
    art = artifact_mask.astype(bool) & obj if artifact_mask is not None else random_artifact_mask(obj, rng, cfg.mask)
    if not art.any():
        raise ValueError("artifact mask is empty inside the object")
    crop_box = zoom_box(art, cfg.grow, cfg.min_size)
    image_chw, mask_chw = _input_crop(obj_image, art, crop_box, cfg)
    return obj, art, crop_box, image_chw, mask_chw


def make_alignment_pair(
    obj_image: np.ndarray, obj_mask: np.ndarray, rng: np.random.Generator, cfg: PairConfig | None = None,
    *, artifact_mask: np.ndarray | None = None, transform: GeomTransform | None = None, source: str = "",
) -> TrainingPair:
    """Alignment-mode pair (Sec. 3.4): the whole perturbed object is the reference.

    Args:
        obj_image: (H, W, 3) uint8 object image I_o.
        obj_mask: (H, W) bool object mask M_o.
        rng: random generator (all randomness).
        cfg: :class:`PairConfig`.
        artifact_mask: optional fixed M_a (H, W) bool inside M_o (default: ``G(M_o)``).
        transform: optional fixed T (default: :func:`random_transform` about the object's box).
        source: a label stored in the pair.

    Returns: a :class:`TrainingPair` with ``I_r = S(T(I_o x M_o))`` cut to the transformed object's
    square box (``ref_margin``) and resized to R; the crop = zoom_box(M_a) resized to S.
    """
    cfg = cfg or PairConfig()
    obj, art, crop_box, image_chw, mask_chw = _hole_and_crop(obj_image, obj_mask, rng, cfg, artifact_mask)
    t, warped, w_obj, w_art = _perturbed_reference(obj_image, obj, art, rng, cfg, mask_bbox(obj), transform)
    pair = _finish_reference(t, warped, w_obj, w_art, cfg.ref_margin, crop_box, "alignment", cfg,
                             image_chw, mask_chw, source)
    return _with_true_warp(pair, obj_image, art, warped, w_obj, rng, cfg)


def make_refinement_pair(
    obj_image: np.ndarray, obj_mask: np.ndarray, rng: np.random.Generator, cfg: PairConfig | None = None,
    *, artifact_mask: np.ndarray | None = None, transform: GeomTransform | None = None, source: str = "",
) -> TrainingPair:
    """Refinement-mode pair (Sec. 3.4): the reference is only the local region around M_a,
    ``I_r = S(T(I_o x (dilate(M_a) & M_o)))`` cut to its square box with ``local_margin`` and
    resized to R; ref_coords are NaN where a crop pixel falls outside that reference crop."""
    cfg = cfg or PairConfig()
    obj, art, crop_box, image_chw, mask_chw = _hole_and_crop(obj_image, obj_mask, rng, cfg, artifact_mask)
    ab = mask_bbox(art)
    px = max(cfg.local_dilate_min, int(round(cfg.local_dilate * max(ab.width, ab.height))))
    local = dilate(art, px) & obj
    t, warped, w_loc, w_art = _perturbed_reference(obj_image, local, art, rng, cfg, mask_bbox(obj), transform)
    pair = _finish_reference(t, warped, w_loc, w_art, cfg.local_margin, crop_box, "refinement", cfg,
                             image_chw, mask_chw, source)
    return _with_true_warp(pair, obj_image, art, warped, w_loc, rng, cfg)


def _with_true_warp(pair: TrainingPair, obj_image, art, warped, w_keep, rng, cfg: PairConfig) -> TrainingPair:
    """``cfg.warp_prefill``: the pair's warp and trust through its true map T, made imperfect."""
    if cfg.warp_prefill:
        box = pair.meta["crop_box"]
        fld = _true_field(pair.meta["transform"], box, w_keep)
        pair.warp, pair.trust = _warp_inputs(obj_image, art, box, warped, fld, pair.mask, rng, cfg, perturb=True)
    return pair


def make_multiview_pair(
    img1: np.ndarray, mask1: np.ndarray, img2: np.ndarray, mask2: np.ndarray, rng: np.random.Generator,
    cfg: PairConfig | None = None, *, source: str = "", features: tuple | None = None,
) -> TrainingPair:
    """Multi-view pair (MVObj, Sec. 3.4): reference ``I_o1 x erode(M_o1)`` cut to the object's square
    box and resized to R; input = I_o2 with a hole: with probability ``p_whole_object`` the whole
    eroded object ``erode(M_o2)`` (as the paper does), else ``G(M_o2)``. No known correspondence:
    ref_coords all NaN, region zeros, has_correspondence False."""
    cfg = cfg or PairConfig()
    m1 = _check_object(img1, mask1)
    m2 = _check_object(img2, mask2)
    e1 = erode(m1, max(1, int(round(cfg.erode_frac * max(m1.shape)))))
    e1 = e1 if e1.any() else m1
    e2 = erode(m2, max(1, int(round(cfg.erode_frac * max(m2.shape)))))
    e2 = e2 if e2.any() else m2

    ref_box = square_pad_box(mask_bbox(e1), cfg.ref_margin, e1.shape)
    b = mask_bbox(e1)
    ref_src = np.zeros_like(img1)
    ref_src[b.y0 : b.y1, b.x0 : b.x1] = np.where(e1[b.y0 : b.y1, b.x0 : b.x1, None], img1[b.y0 : b.y1, b.x0 : b.x1], 0)
    reference = crop_resize(ref_src, ref_box, cfg.ref_size)
    if cfg.multiview_color:
        ref_obj = crop_resize(e1, ref_box, cfg.ref_size)
        reference = apply_color(reference, sample_color(rng, cfg.color), ref_obj)

    if rng.random() < cfg.p_whole_object:
        hole = e2
        crop_box = zoom_box(hole, cfg.whole_object_grow, cfg.min_size)
    else:
        hole = random_artifact_mask(m2, rng, cfg.mask)
        crop_box = zoom_box(hole, cfg.grow, cfg.min_size)
    image_chw, mask_chw = _input_crop(img2, hole, crop_box, cfg)
    s, r = cfg.size, cfg.ref_size
    warp = trust = None
    if cfg.warp_prefill:  # no known map: a field estimated as at inference, on the two photos
        f1, f2 = features if features is not None else (reference_features(img1), sift_features(img2))
        fld = estimated_field(img2, hole, crop_box, ref_src, e1, f2, f1)
        warp, trust = _warp_inputs(img2, hole, crop_box, ref_src, fld, mask_chw, rng, cfg, perturb=False)
    return TrainingPair(
        image=image_chw,
        mask=mask_chw,
        reference=_chw(reference),
        ref_coords=np.full((2, s, s), np.nan, np.float32),
        region=np.zeros((1, r, r), np.float32),
        has_correspondence=False,
        mode="multiview",
        source=source,
        meta={"crop_box": crop_box, "ref_box": ref_box, "transform": None},
        warp=warp,
        trust=trust,
    )


# ----------------------------------------------------------------------------------------------
# dataset


def _src_name(src: Any) -> str:
    return str(getattr(src, "name", type(src).__name__))


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset of training pairs; item i is a pure function of (seed, i).

    Args:
        sources: objects with ``sample_single(rng) -> (image, mask)`` (single object images:
            :class:`SyntheticSource`, :class:`MultiViewFolder`, :class:`ImageMaskFolder`) and/or
            ``sample_pair(rng) -> (img1, m1, img2, m2)`` (:class:`MultiViewFolder`).
        mode_weights: relative frequency of "alignment", "refinement", "multiview" (default
            0.4 / 0.3 / 0.3; multiview drops to 0 when no source has pairs and the weights are
            the default; an explicit multiview weight without a pair source is an error).
        size, ref_size: S and R (override ``cfg``).
        seed: base seed; item i uses ``np.random.default_rng([seed, i])`` (and ``[seed, i, k]``
            for its k-th retry), so training resumes reproducibly, with any number of workers.
        length: ``len(dataset)`` (pairs are generated on the fly).
        cfg: :class:`PairConfig`.
        source_weights: relative frequency of each single-image source (default uniform).

    Items are dicts of tensors: image (3, S, S) float32, mask (1, S, S), reference (3, R, R),
    ref_coords (2, S, S) (NaN = unknown), region (1, R, R) (the true M*), has_correspondence () bool,
    mode () int64 (index into :data:`MODES`); with ``cfg.warp_prefill`` also warp (3, S, S) and
    trust (1, S, S) (:class:`TrainingPair`); with ``cfg.prefill`` also prefill (3, S, S), the image
    with its hole filled as ``fill.fill_hole`` fills it in the model (bit-identical), so that the
    fill runs in the data workers instead of serially in the training step.
    """

    def __init__(
        self,
        sources: list[Any] | tuple[Any, ...],
        mode_weights: dict[str, float] | None = None,
        size: int = 32,
        ref_size: int = 32,
        seed: int = 0,
        length: int = 100_000,
        cfg: PairConfig | None = None,
        source_weights: list[float] | None = None,
    ):
        if not isinstance(sources, (list, tuple)):
            sources = [sources]
        if not sources:
            raise ValueError("PairDataset needs at least one source")
        self.cfg = dataclasses.replace(cfg or PairConfig(), size=int(size), ref_size=int(ref_size))
        if self.cfg.prefill is not None and self.cfg.prefill not in CLASSICAL_FILLS:
            raise ValueError(f"PairConfig.prefill '{self.cfg.prefill}': choose one of {', '.join(CLASSICAL_FILLS)} (or None)")
        self.sources = list(sources)
        self.singles = [s for s in self.sources if hasattr(s, "sample_single")]
        self.pairs = [s for s in self.sources if hasattr(s, "sample_pair")]
        default = mode_weights is None
        mw = dict(mode_weights or {"alignment": 0.4, "refinement": 0.3, "multiview": 0.3})
        unknown = set(mw) - set(MODES)
        if unknown:
            raise ValueError(f"unknown mode(s) {sorted(unknown)}; modes are {MODES}")
        if default and not self.pairs:
            mw["multiview"] = 0.0
        w = np.array([max(float(mw.get(m, 0.0)), 0.0) for m in MODES])
        if w.sum() <= 0:
            raise ValueError("mode_weights must have a positive entry")
        if (w[0] > 0 or w[1] > 0) and not self.singles:
            raise ValueError("alignment / refinement modes need a source with single object images")
        if w[2] > 0 and not self.pairs:
            raise ValueError("multiview mode needs a multi-view source (MultiViewFolder with >= 2 views per subject)")
        self.mode_p = w / w.sum()
        if source_weights is not None:
            if len(source_weights) != len(self.singles):
                raise ValueError("source_weights needs one weight per single-image source")
            sw = np.asarray(source_weights, dtype=np.float64)
            self.source_p = sw / sw.sum()
        else:
            self.source_p = np.full(len(self.singles), 1.0 / max(len(self.singles), 1))
        self.seed = int(seed)
        self.length = int(length)
        self._sift: dict = {}  # (source index, subject, view, as reference) -> its SIFT features (warp_prefill)

    def _features(self, src: Any, subject: str, k: int, image: np.ndarray, reference: bool):
        key = (self.pairs.index(src), subject, k, reference)
        if key not in self._sift:
            self._sift[key] = reference_features(image) if reference else sift_features(image)
        return self._sift[key]

    def __len__(self) -> int:
        return self.length

    def pair(self, i: int, retries: int = 5) -> TrainingPair:
        """The TrainingPair of item i (numpy), deterministic given (seed, i)."""
        last: Exception | None = None
        for k in range(retries + 1):
            rng = np.random.default_rng([self.seed, int(i)] + ([k] if k else []))
            mode = MODES[int(rng.choice(len(MODES), p=self.mode_p))]
            try:
                if mode == "multiview":
                    src = self.pairs[int(rng.integers(len(self.pairs)))]
                    feats = None
                    if self.cfg.warp_prefill and hasattr(src, "sample_pair_ids"):  # the same draw, with the views' ids
                        subject, v1, v2 = src.sample_pair_ids(rng)
                        (img1, m1), (img2, m2) = src.view(subject, v1), src.view(subject, v2)
                        feats = (self._features(src, subject, v1, img1, True), self._features(src, subject, v2, img2, False))
                    else:
                        img1, m1, img2, m2 = src.sample_pair(rng)
                    return make_multiview_pair(img1, m1, img2, m2, rng, self.cfg, source=_src_name(src), features=feats)
                src = self.singles[int(rng.choice(len(self.singles), p=self.source_p))]
                img, m = src.sample_single(rng)
                fn = make_alignment_pair if mode == "alignment" else make_refinement_pair
                return fn(img, m, rng, self.cfg, source=_src_name(src))
            except ValueError as e:  # degenerate object / mask: redraw deterministically
                if isinstance(e, DatasetError):
                    raise
                last = e
        raise RuntimeError(f"could not build pair {i} after {retries + 1} attempts: {last}")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for PairDataset of length {self.length}")
        item = to_tensors(self.pair(i))
        if self.cfg.prefill is not None:
            item["prefill"] = fill_hole(item["image"][None], item["mask"][None], self.cfg.prefill)[0]  # (3, S, S)
        return item


def to_tensors(p: TrainingPair) -> dict[str, torch.Tensor]:
    """TrainingPair -> dict of torch tensors (see :class:`PairDataset`)."""
    extra = {} if p.warp is None else {"warp": torch.from_numpy(p.warp), "trust": torch.from_numpy(p.trust)}
    return extra | {
        "image": torch.from_numpy(p.image),
        "mask": torch.from_numpy(p.mask),
        "reference": torch.from_numpy(p.reference),
        "ref_coords": torch.from_numpy(p.ref_coords),
        "region": torch.from_numpy(p.region),
        "has_correspondence": torch.tensor(p.has_correspondence),
        "mode": torch.tensor(MODES.index(p.mode), dtype=torch.int64),
    }


# ----------------------------------------------------------------------------------------------
# visual check

_LABEL_W = 120  # left column with row labels, px
_HEADER_H = 18  # top row with column titles, px
_PAD = 4  # gap between tiles, px
_COLUMNS = ("masked input", "mask", "reference + region", "target")
_WARP_COLUMN = "warp prefill + trust"


def grid_shape(n: int, size: int = 32, ref_size: int = 32, scale: int = 4, warp: bool = False) -> tuple[int, int]:
    """(height, width) in pixels of the :func:`show_pairs` grid for n rows (``warp``: one more column)."""
    tile = max(size, ref_size) * scale
    return _HEADER_H + n * (tile + _PAD) + _PAD, _LABEL_W + (len(_COLUMNS) + int(warp)) * (tile + _PAD) + _PAD


def _up(a: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def _to_u8(chw: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(chw.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def _pair_tiles(p: TrainingPair, scale: int) -> list[np.ndarray]:
    img = _to_u8(p.image)
    hole = p.mask[0] > 0.5
    masked = img.copy()
    masked[hole] = (128, 128, 128)
    mask_t = np.repeat((hole * 255).astype(np.uint8)[..., None], 3, axis=2)
    ref = _up(_to_u8(p.reference), scale)
    region = _up(p.region[0] > 0.5, scale)
    if region.any():  # tint + outline the true region
        ref[region] = (0.5 * ref[region] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
        cnts, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(ref, cnts, -1, (255, 255, 0), 1)
    # where the hole pixels land according to ref_coords: green dots
    rc = p.ref_coords[:, hole]
    rc = rc[:, np.isfinite(rc).all(axis=0)]
    if rc.shape[1]:
        r_px = ref.shape[0]
        step = max(1, rc.shape[1] // 64)
        for x, y in rc[:, ::step].T:
            cv2.circle(ref, (int(x * r_px), int(y * r_px)), max(1, scale // 3), (0, 255, 0), -1)
    tiles = [_up(masked, scale), _up(mask_t, scale), ref, _up(img, scale)]
    if p.warp is not None:  # the U-Net's prefill: the warp where trusted (outlined green), Telea elsewhere in the hole (red)
        trust = p.trust[0] > 0.5
        pre = cv2.inpaint(img, hole.astype(np.uint8), TELEA_RADIUS, cv2.INPAINT_TELEA) if hole.any() else img.copy()
        pre[trust] = _to_u8(p.warp)[trust]
        pre = _up(pre, scale)
        for m, colour in ((hole, (255, 0, 0)), (trust, (0, 255, 0))):
            if m.any():
                cnts, _ = cv2.findContours(_up(m, scale).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(pre, cnts, -1, colour, 1)
        tiles.append(pre)
    return tiles


def show_pairs(
    mode: str,
    n: int = 8,
    seed: int = 0,
    output: str | os.PathLike = "pairs.png",
    size: int = 32,
    ref_size: int = 32,
    data_root: str | os.PathLike | None = None,
    scale: int = 4,
    use_photos: bool = True,
    warp: bool = False,
    progress: bool = False,
) -> Path:
    """Write a PNG grid of ``n`` training pairs of ``mode`` for a check by eye; returns its path.
    ``progress``: a progress bar over the pairs (stderr).

    One row per pair: masked input (hole in grey), hole mask, reference with the true
    region (M*) tinted red with a yellow outline and the ref_coords of the hole pixels as green
    dots, target. Nearest-neighbour upscaled by ``scale``; rows labelled with index, mode, source.
    Sources: procedural objects, plus the photos of ``data_root`` (default: the shared
    dreambooth-train folder when present; validation subjects excluded) if ``use_photos``.
    Mode "multiview" requires the photo folder. ``warp``: the pairs of a ``hole_fill="warp"``
    model, with one more column: the hole pre-filled by the warp where trusted (outlined green)
    and Telea elsewhere (the hole outlined red). Grid size: :func:`grid_shape`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n < 1:
        raise ValueError("n must be >= 1")
    if min(size, ref_size, scale) < 1:
        raise ValueError(f"size, ref_size and scale must be >= 1, got {size}, {ref_size}, {scale}")
    root = Path(data_root) if data_root is not None else default_data_root()
    sources: list[Any] = []
    if mode == "multiview":
        if root is None or not root.is_dir():
            raise DatasetError(
                "show-pairs --mode multiview needs a multi-view photo folder (SUBJECT/NN.jpg + NN_mask.png): "
                + (f"'{root}' not found" if root is not None else "none given and ../shared/data/dreambooth-train is absent")
            )
        sources.append(MultiViewFolder(root, max_side=192))
    else:
        sources.append(SyntheticSource(size=128, pool_size=max(4 * n, 16), seed=seed))
        if use_photos and root is not None and root.is_dir():
            sources.append(MultiViewFolder(root, max_side=192))
    pcfg = PairConfig(warp_prefill=warp)
    ds = PairDataset(sources, {mode: 1.0}, size=size, ref_size=ref_size, seed=seed, length=n, cfg=pcfg)

    gh, gw = grid_shape(n, size, ref_size, scale, warp)
    tile = max(size, ref_size) * scale
    canvas = Image.new("RGB", (gw, gh), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for c, title in enumerate(_COLUMNS + ((_WARP_COLUMN,) if warp else ())):
        d.text((_LABEL_W + _PAD + c * (tile + _PAD), 3), title, fill=(0, 0, 0))
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc="pairs", unit="pair", disable=not progress, leave=False):
        p = ds.pair(i)
        y = _HEADER_H + _PAD + i * (tile + _PAD)
        d.text((4, y + 2), f"#{i} {p.mode}\n{p.source}\nhole {p.mask.mean() * 100:.0f}%", fill=(0, 0, 0))
        for c, t in enumerate(_pair_tiles(p, scale)):
            x = _LABEL_W + _PAD + c * (tile + _PAD)
            canvas.paste(Image.fromarray(t), (x, y))
    out = Path(output)
    save_image_atomic(canvas, out)
    return out
