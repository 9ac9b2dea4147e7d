"""The alignment stage: Algorithm 1 (Sec. 3.3), Eq. 5 and the post-processing of A.4, and its
pixel-accurate successor, the dense field (``correspondence.py``).

Two alignment methods (:data:`ALIGNMENT_METHODS`), selectable by name:

* ``attention`` (the paper): Eq. 5 sums one layer's cross-attention over the artifact mask into a
  map over the 16 x 16 reference tokens, A.4 cleans it and keeps the largest blob: M* is a region
  on the token grid;
* ``dense``: point matches between the image around the mask and the reference (SIFT, the ALIKED
  matcher, the same layer's cross-attention read at sub-token precision) are fitted by a robust
  homography plus a smooth residual (:func:`~.fields.fit_field`), in both orientations of
  the reference (a mirrored reference is a common generator "view"); the field gives every crop
  pixel a position on the full-resolution reference, and M* is the mask pushed through it.

Functions here work on plain tensors / arrays so each step can be tested alone:
``correspondence_map`` (Eq. 5), ``filter_token_peaks`` + ``clean_correspondence`` (A.4),
``grid_to_reference`` (token grid -> reference pixels), ``attention_at`` (one layer's attention
at one timestep), ``attention_grid`` (the T x L grid of maps used for the grid search of Fig. 4 /
Fig. 7) and ``dense_alignment`` (the field).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from dataclasses import replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..models.attention import AllLayersRecorded, recording
from ..threads import side_by_side, worker_threads
from ..zoom import Box, rescaled
from .field_refinement import DETAIL_TRUST, FlowRefinement, held_out_agreement, polish_field_ecc, refine_field_ecc
from .fields import (
    REFERENCE_UPSCALE_ABOVE,
    DenseField,
    dense_field,
    field_at_full_scale,
    field_misfit,
    field_scaled_back,
    fit_field,
    on_reference_object,
    reference_upscale,
    upscaled_reference,
    with_confidence,
)
from .matching import (
    ALIKED_KEYPOINTS,
    Matches,
    aliked_image_side,
    aliked_matches,
    aliked_reference_features,
    sift_features_ahead,
    sift_matches,
    template_matches,
)
from .warp import TRUST_MIN_NCC, detail_agreement, warp_agreement

ALIGNMENT_METHODS = ("dense", "attention")

__all__ = [
    "ALIGNMENT_METHODS",
    "attention_at",
    "dense_alignment",
    "correspondence_map",
    "filter_token_peaks",
    "clean_correspondence",
    "grid_to_reference",
    "attention_grid",
    "AlignmentResult",
]


def correspondence_map(attention: torch.Tensor, mask: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Eq. 5: M^{t,l} = sum_{i,j} M_a[i,j] * A[i,j,:], reshaped to the reference token grid.

    attention: (B, HW, T) heads-averaged probabilities of one layer; mask: (B, 1, H', W') artifact
    mask at any resolution (resized to the layer's square resolution with area weights).
    Returns (B, grid, grid)."""
    b, hw, t = attention.shape
    side = int(round(hw**0.5))
    if side * side != hw:
        raise ValueError(f"attention has {hw} query positions, not a square feature map")
    if t != grid_size * grid_size:
        raise ValueError(f"attention has {t} reference tokens, expected {grid_size}x{grid_size}")
    if mask.ndim != 4 or mask.shape[0] != b or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B={b}, 1, H, W), got {tuple(mask.shape)}")
    m = F.interpolate(mask.float(), size=(side, side), mode="area").reshape(b, hw, 1)  # (B, HW, 1)
    return (attention.float() * m).sum(dim=1).reshape(b, grid_size, grid_size)


def filter_token_peaks(raw: np.ndarray, ratio: float = 3.0) -> np.ndarray:
    """A.4, first half: remove the isolated high-norm peaks ViTs put on borders and corners.

    A token is a noise peak when it exceeds ``ratio`` times the largest of its 8 neighbours: an
    isolated spike. It is replaced by the median of its neighbours. A real match is a blob (some
    neighbour is strong too) and survives unchanged."""
    raw = np.asarray(raw, dtype=np.float64)
    footprint = np.ones((3, 3), dtype=bool)
    footprint[1, 1] = False
    neighbour_max = ndimage.maximum_filter(raw, footprint=footprint, mode="mirror")
    neighbour_med = ndimage.median_filter(raw, footprint=footprint, mode="mirror")
    floor = 1e-12 + 1e-3 * np.abs(raw).max()
    peaks = raw > ratio * np.maximum(neighbour_max, floor)
    out = raw.copy()
    out[peaks] = neighbour_med[peaks]
    return out


def clean_correspondence(raw: np.ndarray, threshold: float = 0.5, peak_ratio: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A.4: peak filtering, threshold, and the largest blob.

    raw: (g, g) map from Eq. 5. Returns (M* on the token grid: (g, g) bool, one 8-connected blob;
    the filtered map normalised to [0, 1]). ``threshold`` is relative to the filtered map's range. The blob kept
    is the one with the largest summed weight (a clustering by connectivity)."""
    filtered = filter_token_peaks(raw, peak_ratio)
    lo, hi = float(filtered.min()), float(filtered.max())
    norm = (filtered - lo) / (hi - lo) if hi > lo else np.zeros_like(filtered)
    binary = norm >= threshold
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        binary = norm >= norm.max()
        labels, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    mass = ndimage.sum(norm, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(mass)) + 1
    return labels == best, norm.astype(np.float32)


def grid_to_reference(grid: np.ndarray, box: Box, shape: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Map a (g, g) token-grid array onto reference pixels: token grid covers ``box`` (the square
    region of the reference the encoder saw), placed into an array of ``shape`` (H, W).

    Booleans are upsampled with nearest neighbour; floats bilinearly when ``smooth``."""
    h, w = shape
    is_bool = grid.dtype == bool
    src = grid.astype(np.float32)
    interp = cv2.INTER_LINEAR if (smooth and not is_bool) else cv2.INTER_NEAREST
    up = cv2.resize(src, (box.width, box.height), interpolation=interp)
    out = np.zeros((h, w), dtype=np.float32)
    sx0, sy0 = max(box.x0, 0), max(box.y0, 0)
    sx1, sy1 = min(box.x1, w), min(box.y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = up[sy0 - box.y0 : sy1 - box.y0, sx0 - box.x0 : sx1 - box.x0]
    return out >= 0.5 if is_bool else out


@dataclass
class AlignmentResult:
    """Output of the alignment stage for one image. The old attribute names ``mask``, ``grid_mask``,
    ``timestep`` and ``layer`` still read (deprecated: they go in the next release)."""

    region: np.ndarray  # (Hr, Wr) bool: M*, the aligned region on the reference
    heatmap: np.ndarray  # (Hr, Wr) float32 in [0, 1]: the cleaned map (attention) or M*'s confidence (dense), for display
    raw_grid: np.ndarray | None  # (g, g) float32: M^{t,l} straight from Eq. 5 (None when no attention pass ran)
    grid_region: np.ndarray | None  # (g, g) bool: M* on the token grid (attention method)
    alignment_timestep: int
    alignment_layer: int
    method: str = "attention"  # "attention" (Algorithm 1) or "dense" (the field)
    field: DenseField | None = None  # dense: reference positions for every pixel of the zoom-in crop
    info: dict = dataclass_field(default_factory=dict)  # matches per source, inliers, mirrored, fallback reason

    def _old(self, old: str, new: str):
        warnings.warn(f"AlignmentResult.{old} is deprecated, use .{new}", DeprecationWarning, stacklevel=3)
        return getattr(self, new)

    mask = property(lambda self: self._old("mask", "region"), doc="Deprecated name of :attr:`region`.")
    grid_mask = property(lambda self: self._old("grid_mask", "grid_region"), doc="Deprecated name of :attr:`grid_region`.")
    timestep = property(lambda self: self._old("timestep", "alignment_timestep"), doc="Deprecated name of :attr:`alignment_timestep`.")
    layer = property(lambda self: self._old("layer", "alignment_layer"), doc="Deprecated name of :attr:`alignment_layer`.")


@torch.no_grad()
def attention_grid(
    model,
    sample: torch.Tensor,  # (B, C, h, w) the artifact image in sample space (z_0)
    masked: torch.Tensor,  # (B, C, h, w)
    mask: torch.Tensor,  # (B, 1, h, w)
    context: torch.Tensor,  # (B, T, C_ctx)
    timesteps: list[int],
    layers: list[int] | None,
    scheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 5 for every (t, l): one U-Net pass per timestep t on z_t = the artifact image noised to
    t (same noise for every t), recording the listed cross-attention layers (None = all).

    Returns (len(timesteps), len(layers), B, grid, grid). Implements the grid search input of
    Algorithm 1 (Sec. 3.3, Fig. 4 and 7). Each pass stops as soon as the last listed layer has been
    recorded: nothing after it contributes to the maps."""
    names = model.cross_attention_layers
    layer_ids = list(range(len(names))) if layers is None else list(layers)
    for l in layer_ids:
        if not 0 <= l < len(names):
            raise ValueError(f"layer {l} out of range 0..{len(names) - 1}")
    noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device="cpu").to(sample.device)
    grid = model.cfg.grid_size
    out = torch.zeros(len(timesteps), len(layer_ids), sample.shape[0], grid, grid)
    with recording(model.unet, [names[l] for l in layer_ids], stop=True) as store:
        for i, t in enumerate(timesteps):
            tt = torch.full((sample.shape[0],), int(t), dtype=torch.long, device=sample.device)
            z_t = scheduler.add_noise(sample, noise, tt) if t > 0 else sample
            store.clear()
            try:
                model(z_t, tt, masked, mask, context)
            except AllLayersRecorded:
                pass
            for j, l in enumerate(layer_ids):
                out[i, j] = correspondence_map(store[names[l]], mask, grid).cpu()
    return out


@torch.no_grad()
def attention_at(
    model,
    sample: torch.Tensor,  # (B, C, h, w) z_0 of the crop
    masked: torch.Tensor,  # (B, C, h, w)
    mask: torch.Tensor,  # (B, 1, h, w)
    context: torch.Tensor,  # (B, T, C_ctx)
    timestep: int,
    layer: int,
    scheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Lines 2 and 6 of Algorithm 1 at one (t, l): noise z_0 to t, run the U-Net until layer l has
    been recorded, return its heads-averaged cross-attention probabilities A^{t,l}: (B, HW, T).
    Eq. 5 (:func:`correspondence_map`) sums them over the mask; the dense method also reads them
    per query (:func:`~.matching.attention_matches`)."""
    names = model.cross_attention_layers
    n_t = model.cfg.num_train_timesteps
    if not 0 <= int(timestep) < n_t:
        raise ValueError(f"alignment timestep {timestep} out of range 0..{n_t - 1}")
    if not 0 <= int(layer) < len(names):
        raise ValueError(f"alignment layer {layer} out of range 0..{len(names) - 1}")
    name = names[int(layer)]
    noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device="cpu").to(sample.device)
    tt = torch.full((sample.shape[0],), int(timestep), dtype=torch.long, device=sample.device)
    z_t = scheduler.add_noise(sample, noise, tt) if timestep > 0 else sample
    with recording(model.unet, [name], stop=True) as store:
        try:
            model(z_t, tt, masked, mask, context)
        except AllLayersRecorded:
            pass
    return store[name]


#: Where ALIKED does not run (its weights not found, or ``--matchers sift``) and SIFT's matches at
#: Lowe's ratio 0.8 leave no fit on ``solid_inliers`` matches at a ring correlation of 0.5,
#: :func:`dense_alignment` matches SIFT's keypoints again at this looser ratio, its fits kept only
#: on ``solid_inliers`` agreeing matches: SIFT alone's counterpart of ALIKED's looser matching
#: (None: not). With SIFT alone on the 192 suite cases, 0.85 / 0.9 / 0.95: the deciding sets
#: +0.220 / +0.191 / +0.148 dB a case, the checking sets +0.000 / +0.053 / +0.041; at 0.85 two
#: cases change, val2 backpack_01_nonrigid +15.91 and candle_03_affine -0.09 (MODEL_CARD.md, "SIFT
#: matched again at a looser ratio"). With ALIKED the outputs are unchanged.
SIFT_LOOSE_RATIO = 0.85

#: :func:`dense_alignment` also refines, by the flow, the leading candidates that score within this
#: much of the winner (:meth:`_Candidates.rivals`), and takes the field that predicts the flow's
#: held-out band best (None: not).
RIVAL_MARGIN = 0.1
#: Where the winner's ring agreement is below this, every such candidate is checked; at or above it,
#: only the best one of the other orientation (the reference mirrored, or as given).
RIVALS_BELOW_NCC = 0.9
#: Where the cheap sources' (SIFT's) leading field, refined by ECC and the flow, predicts the flow's
#: held-out band at this agreement or more, :func:`dense_alignment` keeps it and does not run
#: ALIKED (None: ALIKED runs wherever no cheap field reaches ``good_ncc`` before refinement). Of the
#: 192 validation and check cases 13 nonrigid ones stop there, their alignment 0.3-1.2 s sooner;
#: 10 outputs change, 6 up and 4 down, +0.003 dB a case (MODEL_CARD.md, "SIFT's field settled by
#: the flow").
CHEAP_SETTLED = 0.97
#: ... and only where that field agrees with the image on the ring at this much before its
#: refinement (a field farther off is seldom settled by the flow: of the 18 validation and check
#: cases and the badge example that tried it, the 6 below 0.75 settled in 3, the 13 above it all
#: did; a check that fails costs its ECC and one flow round, 0.3 s on the badge example).
CHEAP_TRY_NCC = 0.75
#: A template placement whose field carries less of the image's fine detail than this after the
#: flow's first round (:func:`~.warp.detail_agreement`) is given up there: it is kept only at
#: ``DETAIL_TRUST`` (0.75) after every round and the polish, and on the 192 validation and check
#: cases the kept ones had 0.81-0.96 after the first round, the rejected ones -0.06 to 0.66, and no
#: field gained more than 0.36 in its later rounds (before the polish, which moves a field by
#: tenths of a pixel). The same outputs on the 29 cases whose leader is a template placement, six of
#: them 0.3-1.2 s sooner (MODEL_CARD.md, twenty-sixth session). None: every round runs.
TEMPLATE_GIVE_UP_DETAIL = 0.35
#: :func:`dense_alignment` works on a zoom-in crop of at most this many px on its longer side: a
#: larger crop (a big mask on a picture of more than 512 px) is aligned on the picture scaled down
#: to it, and the field is scaled back up to the crop's full resolution (the warp still samples the
#: full-resolution reference). The stage's rings, flows and thresholds are set in pixels on 512 px
#: pictures, whose crops are 64-512 px (median 187 px on the 192 validation and check cases: none
#: is scaled); a 2048 px picture's crop aligned at its own size took 10 s (MODEL_CARD.md, "Large
#: pictures"). None: always at full resolution.
ALIGN_MAX_CROP = 512


def dense_alignment(
    image: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    crop_box: Box,
    sources: tuple[str, ...] = ("sift",),
    aliked=None,
    attention: Matches | None = None,
    mirror: bool = True,
    good_ncc: float = 0.95,
    solid_inliers: int = 15,
    ecc: bool = True,
    ecc_candidates: int = 3,
    flow: bool = True,
    flow_min_ncc: float = TRUST_MIN_NCC,
    loose_similarity: float | None = 0.6,
    loose_ratio: float | None = SIFT_LOOSE_RATIO,
    polish: bool = True,
    template: bool = True,
    rival_margin: float | None = RIVAL_MARGIN,
    max_crop: int | None = ALIGN_MAX_CROP,
    cheap_settled: float | None = CHEAP_SETTLED,
    template_give_up: float | None = TEMPLATE_GIVE_UP_DETAIL,
    search_mask: np.ndarray | None = None,
    reference_upscale_above: float | None = REFERENCE_UPSCALE_ABOVE,
    fallback_ahead: Callable[[], object] | None = None,
) -> tuple[DenseField | None, dict]:
    """The dense alignment: a field over ``crop_box`` from point matches.

    ``reference_mask`` is the reference object (None: all of it): the field's pixels that land on
    it are the ones its warp may give (:func:`~.fields.on_reference_object`), and the ring its
    agreement is measured on is cut to them. ``search_mask`` is where on the reference the point
    matchers and the template search look (None: ``reference_mask``): an estimated object on a
    photo, with the whole photo as ``reference_mask``, keeps the keypoints on the object and still
    lets the warp give a part of it the estimate left out.

    Where ``crop_box``'s longer side exceeds ``max_crop`` px, the whole stage runs on the image and
    mask scaled down so that it fits (:func:`_at_working_scale`) and the field is scaled back up to
    ``crop_box`` (``info["working_scale"]``); the reference is used as given. Where the
    reference's longer side is ``reference_upscale_above`` times shorter than the (working) image's
    or more, the stage matches it scaled up to the image's size (:func:`_with_reference_upscaled`,
    ``info["reference_scale"]``) and the field comes back in the given reference's pixels.

    Candidate fields (:func:`~.fields.fit_field`) are fitted for each orientation of the
    reference (as given, and mirrored when ``mirror``) from the cheap sources (SIFT, and the
    attention matches ``attention`` when given); where none of them reaches a ring agreement of
    ``good_ncc`` and "aliked" is among ``sources``, ALIKED's matches are added, alone and with the
    others (on the orientation the cheap sources chose with at least ``solid_inliers`` agreeing
    matches, else the reference as given and then, unless that gave a fit on twice
    ``solid_inliers`` matches agreeing at a ring correlation of 0.5 or more, mirrored); before
    that, where the cheap sources' leader reaches the flow's gate ``flow_min_ncc`` and
    :data:`CHEAP_TRY_NCC`, it is refined first (ECC and the flow, as below) and kept without
    ALIKED if its refined field predicts the flow's held-out band at ``cheap_settled`` or more
    (None: not tried; ``info["cheap_settled"]`` gives that agreement where it was tried). ALIKED's
    first matching uses the image's 1,024 best-scored keypoints and a similarity of 0.75; where it
    leaves no fit on ``solid_inliers`` matches at a ring correlation of 0.5 (a colour-changed
    reference lowers every similarity; a plain object on a textured ground gets few of the
    best-scored keypoints), it is run again in both orientations on twice as many keypoints at
    ``loose_similarity`` (None: not), its fits kept only on ``solid_inliers`` agreeing matches
    (a looser matching lets more chance matches in). Where ALIKED is not among ``sources``, SIFT's
    keypoints are matched again in the same case at Lowe's ratio ``loose_ratio`` (None: not;
    :data:`SIFT_LOOSE_RATIO`), on the same terms ("sift-loose"). Where no source gives any
    consistent fit and ``template`` is on, the reference object itself is searched for around the
    mask by rotation and scale (:func:`~.matching.template_matches`: a small plain object whose few
    keypoints all match one spot), as given and, with ``mirror``, mirrored, and its placements are the
    candidates, the winner kept only if, refined, its warp carries the image's fine detail
    (:func:`~.warp.detail_agreement` at least ``DETAIL_TRUST``: the image's own photo, not another
    view placed by its shading; a placement below ``template_give_up`` after the flow's first round
    is given up there, None: not). The candidate whose colour-matched warp
    agrees best with the image in a ring around the mask (normalised cross-correlation,
    :func:`~.warp.warp_agreement`, the trust :func:`~.warp.warp_fill` gives) wins,
    its agreement discounted by up to 0.2 when it rests on fewer than ``solid_inliers`` matches;
    with ``ecc`` the ``ecc_candidates`` leading candidates are refined by ECC on the same ring
    (:func:`~.field_refinement.refine_field_ecc`, kept only where it does not drift from the
    candidate's own matches) and the choice is made again on the refined fields; with ``flow`` the
    winner's last few pixels of non-rigid residual are taken out by optical flow around the mask
    (:func:`~.field_refinement.refine_field_flow`, kept only where it predicts a band of the image it
    did not see better), if its ring agreement is at least ``flow_min_ncc`` (the warp's trust gate,
    :func:`~.warp.warp_fill`): the flow refines a field that agrees with the image, it
    does not lift one that does not (another view of the object) over the gate. Nor does it raise
    the trust in the warp (the refined field's ``trust_cap`` is its agreement before the flow).
    Candidates that score within ``rival_margin`` of the winner (:meth:`_Candidates.rivals`: all
    of them where the winner's ring agreement is below :data:`RIVALS_BELOW_NCC`, else the best one
    of the other orientation, a symmetric object matched both as given and mirrored) are refined
    by the flow's first round too, and the field whose round predicts its held-out band best is
    taken and refined further (None: not checked; ``info["rivals"]`` gives each comparison).
    The winning field's ``misfit_px`` is set (:func:`~.fields.field_misfit`: how far its fit
    misses its own matches, which :func:`~.warp.warp_fill` discounts the warp by), and its
    ``on_object`` is read again at its final positions (:func:`~.fields.on_reference_object`; at
    the full-resolution positions where the crop was aligned scaled down).
    ``fallback_ahead`` (None: not) is called once, as the template search starts: most searches
    end without a field, and the caller may start the work its fallback needs then, on a thread
    of its own (the pipeline: Algorithm 1's attention pass), beside the search and the refinement
    of its placements, which leave a core free for most of their time.
    Returns (field or None when no source gives a consistent mapping, info:
    matches per source, inliers, mirrored, the winner, its ring agreement and misfit_px)."""
    unknown = [s for s in sources if s not in ("sift", "aliked", "attention")]
    if unknown:
        raise ValueError(f"unknown match source(s) {unknown} (choose from sift, aliked, attention)")
    if "aliked" in sources and aliked is None:
        raise ValueError("the 'aliked' match source needs the ALIKED model (models/aliked.py)")
    # (every setting the scaled runs below get as given)
    settings = dict(
        sources=sources, aliked=aliked, mirror=mirror, good_ncc=good_ncc, solid_inliers=solid_inliers, ecc=ecc,
        ecc_candidates=ecc_candidates, flow=flow, flow_min_ncc=flow_min_ncc, loose_similarity=loose_similarity, loose_ratio=loose_ratio, polish=polish,
        template=template, rival_margin=rival_margin, max_crop=None, cheap_settled=cheap_settled, template_give_up=template_give_up,
        fallback_ahead=fallback_ahead,
    )
    if max_crop is not None and max(crop_box.width, crop_box.height) > max_crop:
        fld, info = _at_working_scale(
            image, mask, crop_box, max_crop, attention,
            lambda im, m, box, att: dense_alignment(
                im, m, reference, reference_mask, box, attention=att, search_mask=search_mask,
                reference_upscale_above=reference_upscale_above, **settings,
            ),
        )
        # (where it lands on the object, read at the full-resolution positions: the scaled
        # field's nearest pixel is up to 1 / scale px off at the object's outline)
        return (None if fld is None else replace(fld, on_object=on_reference_object(fld.xy, reference_mask))), info
    factor = reference_upscale(image.shape, reference.shape, reference_upscale_above)
    if factor > 1.0:
        return _with_reference_upscaled(
            reference, reference_mask, search_mask, attention, factor,
            lambda ref, ref_mask, look_mask, att: dense_alignment(
                image, mask, ref, ref_mask, crop_box, attention=att, search_mask=look_mask, reference_upscale_above=None, **settings
            ),
        )
    look = reference_mask if search_mask is None else search_mask  # (Hr, Wr) bool or None: where the matchers look
    window = (slice(crop_box.y0, crop_box.y1), slice(crop_box.x0, crop_box.x1))
    pool = _Candidates(image[window], np.asarray(mask, bool)[window], reference, reference_mask, crop_box, solid_inliers)
    orientations = (False, True) if mirror else (False,)
    if "sift" in sources:  # the image and each orientation of the reference described side by side
        sift_features_ahead(image, mask, reference, look, orientations)
    cheap_name = "+".join(s for s in sources if s != "aliked")

    def cheap_matches(mirrored: bool, ratio: float | None = None) -> Matches:
        """The cheap sources' matches in one orientation: SIFT's (at Lowe's ``ratio``, None:
        sift_matches' own) and the attention's (as given only)."""
        m = Matches.empty()
        if "sift" in sources:
            m = m + sift_matches(image, mask, reference, look, flip=mirrored, **({} if ratio is None else {"ratio": ratio}))
        if "attention" in sources and attention is not None and not mirrored:
            m = m + attention
        return m

    cheap: dict[bool, Matches] = {}
    for mirrored in orientations:
        cheap[mirrored] = m = cheap_matches(mirrored)
        if len(m):
            pool.consider(cheap_name, mirrored, m)
    best = pool.best()
    leader = None  # (ncc, inliers, name, mirrored, field) once the winner is refined
    if "aliked" in sources and cheap_settled is not None and best is not None and flow and max(flow_min_ncc, CHEAP_TRY_NCC) <= best[0] < good_ncc:
        # the cheap sources' leader is refined first: where its flow-refined field predicts the
        # band the flow did not see near-exactly, ALIKED (the stage's largest cost) would not beat it
        leader = _refine_leader(pool, reference, ecc, ecc_candidates, flow, flow_min_ncc, rival_margin, give_up_below=cheap_settled)
        held = held_out_agreement(pool.info["flow"], leader[0]) if "flow" in pool.info else None
        pool.info["cheap_settled"] = None if held is None else round(held, 4)
        if held is None or held < cheap_settled:
            leader = None  # ALIKED's candidates join the pool; the refinement is run again on its leader
            for key in ("ecc", "flow", "rivals"):
                pool.info.pop(key, None)
    if leader is None and "aliked" in sources and (best is None or best[0] < good_ncc):
        tried = orientations if best is None or best[1] < solid_inliers else (best[3],)
        # the reference's ALIKED pass in each orientation tried is computed on a thread of its own,
        # beside the image's pass and then the first orientation's matching (two passes side by side
        # take about three quarters of the time of one after the other on 2 cores); aliked_matches
        # reads them remembered. The same features as computed in line.
        ahead = ThreadPoolExecutor(max_workers=1) if worker_threads() > 1 else None
        passes = [ahead.submit(aliked_reference_features, aliked, reference, look, m) for m in tried] if ahead is not None else []
        try:
            # (remembered per image and mask, and made ahead beside the reference object's estimate
            # where the pipeline runs one: matching.image_features_ahead)
            image_side = aliked_image_side(aliked, image, mask, crop_box)
            strict = image_side.features(ALIKED_KEYPOINTS)  # the best-scored half of the keypoints

            def consider_aliked(mirrored: bool, features, similarity: float | None = None, min_inliers: int = 0) -> None:
                """ALIKED's matches in one orientation as a candidate, alone and with the cheap
                sources' (named "...-loose" at a looser ``similarity`` than aliked_matches' own)."""
                kw, tag = ({}, "") if similarity is None else ({"min_similarity": similarity}, "-loose")
                a = aliked_matches(image, mask, reference, look, aliked, flip=mirrored, image_features=features, **kw)
                pool.consider("aliked" + tag, mirrored, a, min_inliers)
                if len(cheap[mirrored]):
                    pool.consider("+".join(sources) + tag, mirrored, cheap[mirrored] + a, min_inliers)

            for i, mirrored in enumerate(tried):
                if passes:
                    passes[i].exception()  # waits for its pass (one that failed is run again by aliked_matches, which raises)
                before = len(pool.items)
                consider_aliked(mirrored, strict)
                if any(c[1] >= 2 * solid_inliers and c[0] >= 0.5 for c in pool.items[before:]):
                    break  # a solid fit in this orientation: the other one's ALIKED pass is not needed
        finally:
            if ahead is not None:
                ahead.shutdown(wait=False)  # (after a solid fit the other orientation's pass is left to finish on its own)
        best = pool.best()
        if loose_similarity is not None and (best is None or best[1] < solid_inliers or best[0] < 0.5):
            # no solid fit: the ALIKED matches again, from all the image's keypoints (a plain object
            # on a textured ground gets few of the best-scored ones) at a looser similarity (a
            # colour-changed reference lowers every match's similarity); more chance matches get
            # in, so more must agree with a fit
            every = image_side.features()  # the other half described now
            for mirrored in orientations:
                consider_aliked(mirrored, every, loose_similarity, min_inliers=solid_inliers)
            best = pool.best()
    if leader is None and "aliked" not in sources and "sift" in sources and loose_ratio is not None and (best is None or best[1] < solid_inliers or best[0] < 0.5):
        # no solid fit and no ALIKED to look further: SIFT's keypoints (remembered) matched again at
        # a looser ratio test, as ALIKED's are; more chance matches get in, so more must agree
        for mirrored in orientations:
            m = cheap_matches(mirrored, loose_ratio)
            if len(m):
                pool.consider(cheap_name + "-loose", mirrored, m, min_inliers=solid_inliers)
        best = pool.best()
    if leader is None and best is None and template and look is not None:
        # no consistent point matches at all (a small plain object): search for the object itself,
        # in each orientation of the reference, as the point matches are (a mirrored view); the
        # orientations are searched side by side (OpenCV's matchTemplate runs on one core and
        # releases Python's lock: the same placements, candle_02 of val2 0.72 -> 0.44 s)
        if fallback_ahead is not None:
            fallback_ahead()  # (most searches end without a field: the caller's fallback starts beside them)
        placed = side_by_side(lambda m: template_matches(image, mask, reference, look, crop_box, flip=m), orientations)
        scores = []
        for mirrored, (found, score) in zip(orientations, placed):
            scores.append(score)
            if len(found):
                pool.consider("template", mirrored, found)
        pool.info["template_score"] = max(scores)
        best = pool.best()
    if leader is None:
        if best is None:
            return None, pool.info
        leader = _refine_leader(pool, reference, ecc, ecc_candidates, flow, flow_min_ncc, rival_margin, template_give_up=template_give_up)
    ncc, inliers, name, mirrored, fld = leader
    if name == "template" and pool.info.get("flow", {}).get("gave_up") == "detail":
        # (its first flow round left it far below the detail it would be kept at: the rounds and the
        # polish that would not change that are not run)
        pool.info["fallback_reason"] = "template placement without the image's detail"
        return None, pool.info
    if polish and ncc >= flow_min_ncc:
        unpolished = fld
        fld, pool.info["polish"] = polish_field_ecc(fld, pool.image_box, pool.mask_box, reference)
        if pool.info["polish"]:  # (fitted on the ring its trust is measured on: trusted as before)
            fld.trust_cap = warp_agreement(pool.image_box, pool.mask_box, reference, unpolished)  # (at most its cap)
    if name == "template" and detail_agreement(pool.image_box, pool.mask_box, reference, fld) < DETAIL_TRUST:
        # a placement found by correlation alone, not the image's own photo brought into place
        # (another view of the object: its warp carries the shading, not the detail): no field
        pool.info["fallback_reason"] = "template placement without the image's detail"
        return None, pool.info
    # (which positions land on the object, read again at the field's final positions: the
    # refinements carry it along by nearest-neighbour composition, a pixel off at the outline)
    fld = replace(fld, on_object=on_reference_object(fld.xy, reference_mask))
    fit = fld.fit
    fld.misfit_px = field_misfit(fld, image.shape[:2])
    pool.info.update(
        source=name, inliers=inliers, mirrored=mirrored, smoothing=fit.smoothing, residual_px=round(fit.residual_px, 3), ring_ncc=round(ncc, 4),
        misfit_px=None if fld.misfit_px is None else round(fld.misfit_px, 3)
    )
    return fld, pool.info


def _at_working_scale(image: np.ndarray, mask: np.ndarray, crop_box: Box, max_crop: int, attention: Matches | None, align) -> tuple[DenseField | None, dict]:
    """:func:`dense_alignment` on a crop larger than ``max_crop`` px: ``align(image, mask, box, attention)``
    run on the image (H, W, 3) and mask (H, W) scaled down by f = ``max_crop`` / the crop's longer
    side (the image by area; the mask keeps every scaled pixel it touches, so the artifact does
    not leak into the rings around it) with ``crop_box`` scaled to cover the same part, and its
    field scaled back up to ``crop_box``: each full-resolution pixel reads the scaled field at its
    own centre (bilinear; the object mask nearest, which :func:`dense_alignment` then reads again
    at the full-resolution positions), the reference positions as they are (the
    reference is not scaled). The ``attention`` matches' image positions are scaled with the
    image. The fitted ``fit`` stays in the scaled image's coordinates."""
    h, w = mask.shape
    f = max_crop / float(max(crop_box.width, crop_box.height))
    sw, sh = max(1, round(w * f)), max(1, round(h * f))
    fx, fy = sw / float(w), sh / float(h)
    small = cv2.resize(np.ascontiguousarray(image), (sw, sh), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(np.asarray(mask, bool).astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0
    box = Box(
        int(np.floor(crop_box.x0 * fx)), int(np.floor(crop_box.y0 * fy)),
        min(sw, int(np.ceil(crop_box.x1 * fx))), min(sh, int(np.ceil(crop_box.y1 * fy))),
    )
    if attention is not None:  # (x, y) image px -> scaled px (pixel centres kept)
        attention = replace(attention, img_xy=rescaled(attention.img_xy, (fx, fy)))
    fld, info = align(small, small_mask, box, attention)
    info["working_scale"] = round(float(np.sqrt(fx * fy)), 4)
    if fld is None:
        return None, info
    return field_at_full_scale(fld, crop_box, fx, fy), info


def _with_reference_upscaled(reference: np.ndarray, reference_mask, search_mask, attention: Matches | None, factor: float, align) -> tuple[DenseField | None, dict]:
    """:func:`dense_alignment` with a reference much smaller than the image: ``align(reference,
    reference_mask, search_mask, attention)`` run on the reference scaled up by ``factor`` (Lanczos;
    its masks by the nearest pixel, the ``attention`` matches' reference positions with it), and
    the field's reference positions scaled back to the reference as given (pixel centres kept, the
    object test made again on ``reference_mask``: :func:`~.fields.field_scaled_back`). SIFT finds
    its keypoints at every scale, but ALIKED, the template search and the rings' fine detail want
    the object at about the image's scale. The fitted ``fit`` stays in the scaled reference's
    pixels."""
    big, (big_mask, big_look), f = upscaled_reference(reference, (reference_mask, search_mask), factor)
    if attention is not None:
        attention = replace(attention, ref_xy=rescaled(attention.ref_xy, f))
    fld, info = align(big, big_mask, big_look, attention)
    info["reference_scale"] = round(float(np.sqrt(f[0] * f[1])), 4)
    return (None, info) if fld is None else (field_scaled_back(fld, f, reference_mask), info)


def _refine_leader(pool: "_Candidates", reference: np.ndarray, ecc: bool, ecc_candidates: int, flow: bool, flow_min_ncc: float, rival_margin: float | None, give_up_below: float | None = None, template_give_up: float | None = None) -> tuple:
    """:func:`dense_alignment`'s refinement of the pool's leading candidates: with ``ecc`` the
    ``ecc_candidates`` best are refined by ECC and the winner chosen again; with ``flow``, where its
    ring agreement is at least ``flow_min_ncc``, it and its close rivals are refined by the flow's
    first round, the one that predicts its held-out band best is taken, and its refinement goes on
    (:class:`~.field_refinement.FlowRefinement`: the choice reads only the first round, so the
    field is the one refining every candidate fully would give; the rivals' later rounds took up to
    1.9 s on a validation case). Returns (ncc, inliers, name, mirrored, field); ``pool.info`` gets
    "ecc", "flow" and "rivals". ``give_up_below``: the chosen field's refinement stops after its
    first round where that round's held-out agreement is below this (``give_up_below`` of
    :func:`~.field_refinement.refine_field_flow`), and a field that gave up is only for a caller
    that discards it. ``template_give_up``: the same for a template placement whose first round
    leaves it carrying less of the image's detail than this (``give_up_detail_below``); the
    caller discards such a field."""
    best = pool.best()
    if ecc:  # refine the leading candidates, then choose again: ECC can turn a close second into the best
        best, pool.info["ecc"] = pool.best_after_ecc(ecc_candidates)
    ncc, inliers, name, mirrored, fld, _ = best
    if not (flow and ncc >= flow_min_ncc):
        return ncc, inliers, name, mirrored, with_confidence(fld)  # (the candidates were ranked without it)
    # (the flow's refinement gives each field it refines its confidence: not computed here too)
    # close candidates (the same object matched mirrored and as given, or several sources' fits
    # none of which agrees near-exactly): each is refined by the flow too, and the one that
    # predicts the band its flow did not see best is taken. The first rounds are independent:
    # they run side by side (the same fields as one after another)
    rivals = pool.rivals(best, rival_margin, flow_min_ncc, RIVALS_BELOW_NCC) if rival_margin is not None else []
    jobs = [(best[4], ncc)] + [(r[4], r[0]) for r in rivals]  # (trust capped at each one's ncc)
    # the first rounds run side by side; the choice reads only them (held_out_agreement), so the
    # later rounds are run for the chosen field alone (the same field as refining each fully)
    flows = side_by_side(lambda job: pool.first_flow_round(job[0], job[1], reference), jobs)
    chosen = flows[0]
    for rival, theirs_flow in zip(rivals, flows[1:]):
        mine, theirs = held_out_agreement(chosen.first or {}, ncc), held_out_agreement(theirs_flow.first or {}, rival[0])
        pool.info.setdefault("rivals", []).append({"rival": f"{rival[2]}{'/mirrored' if rival[3] else ''}", "held_out": round(mine, 4), "rival_held_out": round(theirs, 4)})
        if theirs > mine:
            ncc, inliers, name, mirrored, chosen = rival[0], rival[1], rival[2], rival[3], theirs_flow
    gave_up = chosen.gives_up(give_up_below, template_give_up if name == "template" else None)
    fld, pool.info["flow"] = (chosen.given, gave_up) if gave_up is not None else chosen.run().result()
    return ncc, inliers, name, mirrored, fld


class _Candidates:
    """The dense alignment's candidate fields, each (ring ncc, inliers, name, mirrored, field,
    matches), and ``info``: matches per source and each candidate's ring agreement."""

    def __init__(self, image_box, mask_box, reference, reference_mask, crop_box: Box, solid_inliers: int):
        self.image_box, self.mask_box, self.reference, self.reference_mask = image_box, mask_box, reference, reference_mask
        self.crop_box, self.solid_inliers = crop_box, solid_inliers
        self.items: list[tuple[float, int, str, bool, DenseField, Matches]] = []
        self.info: dict = {"matches": {}, "candidates": {}}
        self.refined: list = []  # the leading candidates once refined by ECC (best_after_ecc; empty before it)
        self._ecc: dict[int, tuple] = {}  # each candidate's ECC refinement once computed, by its field's id (kept alive by items)
        self._flows: dict[tuple[int, float], FlowRefinement] = {}  # each candidate's first flow round, by its field's id and agreement

    def consider(self, name: str, mirrored: bool, m: Matches, min_inliers: int = 0) -> None:
        """Fit a field to the matches ``m`` and keep it with the agreement of its colour-matched
        warp, if at least ``min_inliers`` matches agree with it."""
        fit = fit_field(m, focus=self.crop_box, mirrored=mirrored)
        key = f"{name}{'/mirrored' if mirrored else ''}"
        self.info["matches"][key] = len(m)
        if fit is None or fit.inliers < min_inliers:
            return
        fld = dense_field(fit, self.crop_box, self.reference_mask, confidence=False)  # the winner's added in dense_alignment
        fld.counts, fld.source = dict(m.counts), name
        ncc = warp_agreement(self.image_box, self.mask_box, self.reference, fld)
        self.info["candidates"][key] = round(ncc, 4)
        self.items.append((ncc, fit.inliers, name, mirrored, fld, m))

    def score(self, c) -> float:
        """Ring agreement, discounted for a fit on few matches (chance agreement)."""
        return c[0] - 0.2 * max(0.0, 1.0 - c[1] / float(self.solid_inliers))

    def best(self):
        return max(self.items, key=self.score) if self.items else None

    def first_flow_round(self, candidate: DenseField, agreement: float, reference: np.ndarray) -> FlowRefinement:
        """The flow's first round on a candidate's field (given its confidence there), run once:
        after a failed check of the cheap sources' field (:func:`dense_alignment`) the same field
        can lead again once ALIKED's candidates have joined, and its first round is not run again
        (a refinement remembered here has run that round only: the check stops every one there)."""
        key = (id(candidate), float(agreement))
        if key not in self._flows:
            self._flows[key] = FlowRefinement(candidate, self.image_box, self.mask_box, reference, agreement=agreement).run(1)
        return self._flows[key]

    def best_after_ecc(self, n: int) -> tuple[tuple, bool]:
        """The best of the ``n`` leading candidates once each is refined by ECC (kept only where it
        does not drift from its own matches), and whether the winner's ECC changed it."""
        def refined(c):
            if id(c[4]) in self._ecc:  # (refined before: dense_alignment's check of the cheap field, then ALIKED's pool)
                return self._ecc[id(c[4])]
            f2, changed = refine_field_ecc(c[4], self.image_box, self.mask_box, self.reference, matches=c[5], agreement=c[0])
            n2 = warp_agreement(self.image_box, self.mask_box, self.reference, f2) if changed else c[0]
            return (n2, *c[1:4], f2, c[5]), changed

        leading = sorted(self.items, key=self.score, reverse=True)[:n]
        # OpenCV's ECC releases the GIL: the candidates are refined side by side (the same results
        # as one after another, in about 60% of the time on 2 cores)
        ranked = side_by_side(refined, leading)
        self._ecc.update((id(c[4]), r) for c, r in zip(leading, ranked))
        self.refined = [r[0] for r in ranked]
        return max(ranked, key=lambda r: self.score(r[0]))

    def rivals(self, best, margin: float, min_ncc: float, every_below: float | None = None) -> list:
        """The candidates the flow checks beside ``best``, among the ECC-refined ones where ECC ran:
        those scoring within ``margin`` of it with a ring agreement of ``min_ncc`` or more; all of
        them (best first) where ``best``'s own agreement is below ``every_below``, else only the
        best one in the other orientation (none: [])."""
        pool = self.refined or self.items
        close = sorted((c for c in pool if c is not best and c[0] >= min_ncc and self.score(c) >= self.score(best) - margin), key=self.score, reverse=True)
        if every_below is not None and best[0] < every_below:
            return close
        return [c for c in close if c[3] != best[3]][:1]
