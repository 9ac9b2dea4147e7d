"""Baselines run in the same harness as Refine-by-Align.

* :class:`KeypointMethod` (``keypoint``): classical reference-guided fill in the spirit of TransFill:
  SIFT matches from the reference object to the image outside the artifact mask (Lowe's ratio
  test), a RANSAC homography, the reference warped into the image fills the mask and is
  Poisson-blended (``cv2.seamlessClone``). Its region (M*) is the artifact mask mapped back onto
  the reference by the inverse homography. When matching fails it falls back to Telea inpainting,
  predicts no region, and flags ``fallback``.
* :class:`FeatureNNMethod` (``feature-nn``): alignment by nearest neighbours between the model's own
  encoder patch tokens (DIFT / DHF-style point matching, Fig. 2): every token of the zoom-in crop
  under the mask votes for its most cosine-similar reference token; the largest blob of votes is
  the region that then guides the unchanged refinement stage.
* :class:`OracleAlignMethod` (``oracle-align``): the refinement stage guided by the true region
  (``correspondence.png``); an upper bound on what alignment can give. Cases without a true region
  are aligned normally and flagged ``fallback``.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..fill import poisson_fill
from ..io import to_rgb
from ..zoom import Box, crop_resize, mask_bbox
from .cases import Case
from .methods import ImageField, MethodOutput, RefineByAlignMethod, TeleaMethod

__all__ = [
    "KeypointMethod",
    "KeypointFit",
    "fit_homography",
    "homography_field",
    "poisson_fill",
    "FeatureNNMethod",
    "feature_nn_region",
    "OracleAlignMethod",
]


# ----------------------------------------------------------------------------------------- keypoint


class KeypointFit:
    """A homography from reference pixels to image pixels, with its match statistics."""

    def __init__(self, H: np.ndarray | None, matches: int, inliers: int, reason: str = ""):
        self.H = H
        self.matches = matches
        self.inliers = inliers
        self.reason = reason

    @property
    def ok(self) -> bool:
        return self.H is not None


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def fit_homography(
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    image: np.ndarray,
    mask: np.ndarray,
    ratio: float = 0.75,
    min_matches: int = 8,
    min_inliers: int = 8,
    ransac_threshold: float = 3.0,
    exclude_px: int = 4,
    max_features: int = 4000,
) -> KeypointFit:
    """SIFT on the reference object and on the image outside the artifact mask (grown by
    ``exclude_px`` so no descriptor centre sits on the artifact), ratio-test matches, RANSAC
    homography reference -> image. ``H`` is None (with ``reason``) when it fails or is degenerate."""
    sift = cv2.SIFT_create(nfeatures=max_features)
    ref_det_mask = None if reference_mask is None else (np.asarray(reference_mask, bool).astype(np.uint8) * 255)
    outside = ~cv2.dilate(np.asarray(mask, bool).astype(np.uint8), _disk(exclude_px)).astype(bool)
    kr, dr = sift.detectAndCompute(_gray(reference), ref_det_mask)
    ki, di = sift.detectAndCompute(_gray(image), outside.astype(np.uint8) * 255)
    if dr is None or di is None or len(kr) < 2 or len(ki) < 2:
        return KeypointFit(None, 0, 0, f"too few keypoints (reference {len(kr)}, image {len(ki)})")
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dr, di, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < min_matches:
        return KeypointFit(None, len(good), 0, f"too few matches ({len(good)} < {min_matches})")
    src = np.float32([kr[m.queryIdx].pt for m in good]).reshape(-1, 1, 2)
    dst = np.float32([ki[m.trainIdx].pt for m in good]).reshape(-1, 1, 2)
    H, inl = cv2.findHomography(src, dst, cv2.RANSAC, ransac_threshold)
    n_in = int(inl.sum()) if inl is not None else 0
    if H is None or n_in < min_inliers:
        return KeypointFit(None, len(good), n_in, f"too few RANSAC inliers ({n_in} < {min_inliers})")
    if not np.isfinite(H).all() or abs(H[2, 2]) < 1e-12:
        return KeypointFit(None, len(good), n_in, "degenerate homography")
    H = H / H[2, 2]
    det = float(np.linalg.det(H[:2, :2]))
    if not 1e-2 < det < 1e2:
        return KeypointFit(None, len(good), n_in, f"degenerate homography (scale det {det:.3g})")
    # the artifact's box must map back in front of the camera (positive perspective denominator)
    ys, xs = np.nonzero(mask)
    corners = np.float64([[xs.min(), ys.min(), 1], [xs.max(), ys.min(), 1], [xs.min(), ys.max(), 1], [xs.max(), ys.max(), 1]])
    w = corners @ np.linalg.inv(H)[2]
    if (w <= 1e-6).any():
        return KeypointFit(None, len(good), n_in, "homography folds over the artifact")
    return KeypointFit(H, len(good), n_in)


class KeypointMethod:
    """TransFill-style classical fill: SIFT + RANSAC homography + warp + Poisson blending.

    ``min_coverage``: the warped reference object must cover at least this fraction of the mask,
    else the case falls back to Telea. Pixels of the mask the warp does not cover are filled by
    Telea before blending."""

    def __init__(
        self,
        ratio: float = 0.75,
        min_matches: int = 8,
        min_inliers: int = 8,
        ransac_threshold: float = 3.0,
        dilate_px: int = 3,
        min_coverage: float = 0.5,
        blend: bool = True,
        name: str = "keypoint",
    ):
        self.ratio = ratio
        self.min_matches = min_matches
        self.min_inliers = min_inliers
        self.ransac_threshold = ransac_threshold
        self.dilate_px = dilate_px
        self.min_coverage = min_coverage
        self.blend = blend
        self.name = name
        self._telea = TeleaMethod()

    def _fallback(self, case: Case, reason: str, fit: KeypointFit | None, t0: float) -> MethodOutput:
        out = self._telea(case)
        out.fallback = True
        out.info = {"reason": reason, "matches": fit.matches if fit else 0, "inliers": fit.inliers if fit else 0}
        out.timings = {"total": time.perf_counter() - t0}
        return out

    def __call__(self, case: Case) -> MethodOutput:
        t0 = time.perf_counter()
        img = np.asarray(case.image.convert("RGB"), dtype=np.uint8)
        ref = np.asarray(case.reference.convert("RGB"), dtype=np.uint8)
        mask = np.asarray(case.mask, dtype=bool)
        obj = case.reference_mask
        if obj is not None and not np.asarray(obj).any():
            obj = None
        fit = fit_homography(ref, obj, img, mask, self.ratio, self.min_matches, self.min_inliers, self.ransac_threshold)
        if not fit.ok:
            return self._fallback(case, fit.reason, fit, t0)
        h, w = mask.shape
        hr, wr = ref.shape[:2]
        warped = cv2.warpPerspective(ref, fit.H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        obj_u8 = (np.ones((hr, wr), np.uint8) if obj is None else np.asarray(obj, bool).astype(np.uint8)) * 255
        valid = cv2.warpPerspective(obj_u8, fit.H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT) >= 250
        coverage = float((valid & mask).sum() / mask.sum())
        if coverage < self.min_coverage:
            return self._fallback(case, f"warped reference covers {coverage:.0%} of the mask", fit, t0)
        fill = np.asarray(self._telea(case).image, dtype=np.uint8).copy()
        fill[valid] = warped[valid]
        if self.blend:
            result = poisson_fill(img, fill, mask, self.dilate_px)
        else:
            result = img.copy()
            result[mask] = fill[mask]
        # the region: the artifact mask mapped back onto the reference by H^-1
        back = cv2.warpPerspective(mask.astype(np.uint8) * 255, np.linalg.inv(fit.H), (wr, hr), flags=cv2.INTER_NEAREST) > 127
        if obj is not None and (back & np.asarray(obj, bool)).any():
            back &= np.asarray(obj, bool)
        return MethodOutput(
            image=Image.fromarray(result, "RGB"),
            region=back,
            timings={"total": time.perf_counter() - t0},
            info={"matches": fit.matches, "inliers": fit.inliers, "coverage": coverage},
            field=homography_field(np.linalg.inv(fit.H), mask_bbox(mask)),
        )


def homography_field(H: np.ndarray, box: Box) -> ImageField:
    """The field of a homography ``H`` (image (x, y, 1) -> reference) over ``box`` of the image."""
    ys, xs = np.mgrid[box.y0 : box.y1, box.x0 : box.x1].astype(np.float64)
    hom = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.asarray(H, np.float64).T  # (h, w, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.where(hom[..., 2:] > 1e-9, hom[..., :2] / hom[..., 2:], np.nan)
    return ImageField(box, xy.astype(np.float32))


# ----------------------------------------------------------------------------------------- feature-nn


def feature_nn_region(
    pipe: Any,
    image: Image.Image,
    mask: np.ndarray,
    reference: Image.Image,
    reference_mask: np.ndarray | None = None,
    threshold: float = 0.5,
    min_cover: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour alignment with the pipeline's reference encoder.

    The zoom-in crop of ``image`` (the crop the refinement sees) and the reference object (its
    square box, as the alignment stage sees it) are encoded by
    ``pipe.model.reference_encoder.patch_tokens``. Every crop token at least ``min_cover`` under the
    mask (else the most covered one) votes, with its mask coverage as weight, for the most
    cosine-similar reference token on the object; the vote grid is thresholded at ``threshold`` of
    its maximum and its largest blob kept (``clean_correspondence`` without the ViT-peak filter,
    which would delete a one-token vote), then mapped onto the reference like M*.

    Returns (the region (Hr, Wr) bool, heat map (Hr, Wr) float32 in [0, 1])."""
    from ..pipelines.alignment import clean_correspondence, grid_to_reference

    p = pipe.prepare(image, mask, reference, reference_mask)
    crop, cmask = pipe.crop_tensors(p)
    ref_t = pipe.reference_tensor(p.reference, p.reference_box)
    enc = pipe.model.reference_encoder
    with torch.no_grad():
        q = enc.patch_tokens(crop)[0].float().cpu()  # (N, d)
        r = enc.patch_tokens(ref_t)[0].float().cpu()  # (N, d)
    g = round(q.shape[0] ** 0.5)
    cover = F.interpolate(cmask.float().cpu(), size=(g, g), mode="area")[0, 0].flatten()  # (N,)
    sel = cover >= min_cover
    if not sel.any():
        sel = cover >= cover.max()
    on_obj = torch.from_numpy(crop_resize(p.reference_mask.astype(np.float32), p.reference_box, g).flatten() >= 0.5)
    if not on_obj.any():
        on_obj = torch.ones_like(on_obj)
    sim = F.normalize(q[sel], dim=-1) @ F.normalize(r, dim=-1).T  # (n_sel, N)
    sim[:, ~on_obj] = -float("inf")
    nn_idx = sim.argmax(dim=1).numpy()
    votes = np.zeros(g * g, np.float64)
    np.add.at(votes, nn_idx, cover[sel].double().numpy())
    grid_region, norm = clean_correspondence(votes.reshape(g, g), threshold=threshold, peak_ratio=np.inf)
    shape = p.reference_mask.shape
    region = grid_to_reference(grid_region, p.reference_box, shape) & p.reference_mask
    if not region.any():
        region = grid_to_reference(grid_region, p.reference_box, shape)
    heat = grid_to_reference(norm, p.reference_box, shape, smooth=True) * p.reference_mask
    return region, np.clip(heat, 0.0, 1.0).astype(np.float32)


class _GuidedPipelineMethod(RefineByAlignMethod):
    """A pipeline method whose region on the reference is chosen outside the pipeline."""

    def _run(self, case: Case, region: np.ndarray | None, heat: np.ndarray | None, fallback: bool, t0: float) -> MethodOutput:
        out = self.pipeline(
            case.image,
            case.mask,
            case.reference,
            reference_mask=case.reference_mask,
            align=True,
            region=region,
            **self.call_kwargs,
        )
        image = to_rgb(out.image)
        used = getattr(out, "region", None)
        used = None if used is None else np.asarray(used).astype(bool)
        heat = heat if heat is not None else getattr(out, "heatmap", None)
        timings = dict(getattr(out, "timings", None) or {})
        timings["total_method"] = time.perf_counter() - t0
        return MethodOutput(
            image=image,
            region=used,
            heatmap=None if heat is None else np.asarray(heat, np.float32),
            timings=timings,
            fallback=fallback,
        )


class FeatureNNMethod(_GuidedPipelineMethod):
    """Alignment by nearest neighbours of encoder patch tokens, then the pipeline's refinement."""

    runs_dense_alignment = False  # (its region is found here, never by the pipeline's matchers)

    def __init__(self, pipeline: Any, name: str = "feature-nn", threshold: float = 0.5, min_cover: float = 0.25, **call_kwargs: Any):
        super().__init__(pipeline, align=True, name=name, **call_kwargs)
        self.threshold = threshold
        self.min_cover = min_cover

    def __call__(self, case: Case) -> MethodOutput:
        t0 = time.perf_counter()
        region, heat = feature_nn_region(
            self.pipeline, case.image, case.mask, case.reference, case.reference_mask, self.threshold, self.min_cover
        )
        align_s = time.perf_counter() - t0
        out = self._run(case, region, heat, False, t0)
        out.timings["align"] = align_s
        return out


class OracleAlignMethod(_GuidedPipelineMethod):
    """The refinement stage guided by the case's true region (``correspondence.png``)."""

    def __init__(self, pipeline: Any, name: str = "oracle-align", **call_kwargs: Any):
        super().__init__(pipeline, align=True, name=name, **call_kwargs)

    def __call__(self, case: Case) -> MethodOutput:
        t0 = time.perf_counter()
        truth = case.region
        if truth is None or not np.asarray(truth).any():
            out = self._run(case, None, None, True, t0)
            out.info = {"reason": "no correspondence.png: aligned by the model"}
            return out
        return self._run(case, np.asarray(truth, bool), None, False, t0)
