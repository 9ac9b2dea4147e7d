"""Photometric refinement of a fitted field, around the mask: ECC on a ring (a homography,
:func:`refine_field_ecc`, :func:`polish_field_ecc`) and dense optical flow carried into the mask
(:func:`refine_field_flow`: DIS, DeepFlow and DIS on the artifact-filled image, the one that predicts
a held-out band best, round after round while the band says it helps).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from ..ecc import ECCNotConverged, find_homography_ecc
from ..threads import side_by_side
from .fields import DenseField, with_confidence
from .matching import Matches, _disk, _gray
from .warp import TRUST_MIN_NCC, _ncc, colour_transfer, detail_agreement, match_error, normalised_blur, ring, warp_agreement

__all__ = [
    "ECC_RETRY_BLUR",
    "composed_field",
    "held_out_agreement",
    "refine_field_ecc",
    "polish_field_ecc",
    "POLISH_EPS",
    "FLOW_UPSAMPLE",
    "FLOW_CARRY",
    "DETAIL_TRUST",
    "FLOW_METHODS",
    "FLOWS",
    "LATER_FLOWS",
    "ARTIFACT_FILL_GROW",
    "FLOW_CONTEXT",
    "FLOW_SETTLED",
    "artifact_filled",
    "refine_field_flow",
    "FlowRefinement",
]


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
    inside it; the matches see the inside). ``agreement``: ``fld``'s own :func:`~.warp.warp_agreement`
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


def composed_field(fld: DenseField, qx: np.ndarray, qy: np.ndarray) -> DenseField:
    """``fld`` composed with a map of its box's pixels: each pixel p takes what ``fld`` holds at
    (qx, qy)[p] ((h, w) float32 each, box pixels): its position (bilinear, the edge replicated),
    its confidence (likewise) and whether it lands on the reference object (the nearest pixel;
    off the box: not), so that a refined field's ``on_object`` is that of its own positions. The
    composition both ECC's homography and the flow's rounds refine a field by."""
    xy = cv2.remap(fld.xy, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    conf = None if fld.confidence is None else cv2.remap(fld.confidence, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    obj = cv2.remap(fld.on_object.astype(np.uint8), qx, qy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return replace(fld, xy=xy, confidence=conf, on_object=obj, counts=dict(fld.counts))


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
    try:
        _, W, _ = find_homography_ecc(template, warped, band[cut], iterations=iterations, eps=eps, blur=blur)
    except ECCNotConverged:
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
    new = composed_field(fld, qx, qy)
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


#: :func:`polish_field_ecc` stops where ECC's update is below this (OpenCV's ``eps``). Against the
#: earlier 1e-6, on the 145 polished fields of the 192 validation and check cases: 72-81 -> 48-60 ms
#: a call, 18 outputs changed by at most 0.25 dB (val2-val4 +0.001 dB a case, the check sets +0.002;
#: MODEL_CARD.md, twenty-fourth session).
POLISH_EPS = 1e-5


def polish_field_ecc(
    fld: DenseField,
    image_box: np.ndarray,
    mask_box: np.ndarray,
    reference: np.ndarray,
    ring_px: tuple[int, int] = (1, 48),
    iterations: int = 100,
    eps: float = POLISH_EPS,
) -> tuple[DenseField, bool]:
    """The field's last tenths of a pixel: :func:`refine_field_ecc` again on the finished field
    (after the optical flow), with no Gaussian smoothing, a ring three times as wide and up to 100
    iterations (``eps``: :data:`POLISH_EPS`). The first ECC's smoothing (5 px) and narrow ring let
    it converge from a pixel or two off, and also leave it a tenth or a few off; on a rigid view
    change (a homography) this pass brings the field inside the mask from 0.13 to 0.08 px mean
    (median 0.11 to 0.06) on the 16 affine cases of val2 / val3, where 0.1 px still costs up to a
    decibel on fur or print (MODEL_CARD.md, "Spline-carried flow and ECC polish"). Kept, as every
    ECC step, only where the ring agreement improves. Returns (the field, whether it changed)."""
    return refine_field_ecc(fld, image_box, mask_box, reference, ring_px=ring_px, iterations=iterations, blur=1, eps=eps)


#: :func:`refine_field_flow` runs DIS on the crop upsampled by this factor (sub-pixel precision).
FLOW_UPSAMPLE = 2


FLOW_CARRY = ("harmonic", "spline")  # how refine_field_flow carries the flow into the mask


#: A flow-refined field whose warp carries at least this much of the image's fine detail on the ring
#: (:func:`~.warp.detail_agreement`) is trusted up to its held-out agreement after the flow (None: never;
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


#: The flows the rounds of :func:`refine_field_flow` after the first compute (those of :data:`FLOWS`
#: among them; None: every round computes :data:`FLOWS`). DeepFlow is most of a round's cost (about
#: 60-150 ms on a 160-200 px window where DIS takes 6-10 ms) and is left to the first round: on the
#: 192 validation and check cases 11 outputs change, masked PSNR +0.03 dB pooled (deciding sets
#: +0.03, check sets +0.03; one case holds most of it), and the alignment's median on val2-val4
#: 0.593 -> 0.494 s (MODEL_CARD.md, "DeepFlow in the flow's first round only").
LATER_FLOWS = ("dis", "dis-filled")


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
    return np.where(known[..., None], normalised_blur(flow, known, sigma), np.float32(0.0))


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
    later_flows: tuple[str, ...] | None = LATER_FLOWS,
    give_up_below: float | None = None,
    give_up_detail_below: float | None = None,
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

    The refined field is fitted on the ring its warp's trust is measured on (:func:`~.warp.warp_fill`), so
    its ``trust_cap`` is set to the agreement before the flow (``agreement``, where the caller has
    measured it with :func:`~.warp.warp_agreement`), except where its warp carries the image's fine
    detail on the ring (:func:`~.warp.detail_agreement` at least ``detail_trust``: the image's own photo
    brought into place, not another view of the object): then it may be trusted up to the held-out
    agreement of the last kept round (the band the flow did not see). A field a pixel or two off
    before the flow and within one after it was otherwise blended at a third to two thirds
    (MODEL_CARD.md, "Trust after the flow"); ``detail_trust=None`` never raises the cap.
    A round is not run (counted as refused) where the warp already agrees with the image on that
    band within :data:`FLOW_SETTLED` of 1: there the flows were refused all but once in 320 rounds.
    ``later_flows``: the flows of the rounds after the first (those of ``flows`` among them; None:
    ``flows`` in every round; shipped :data:`LATER_FLOWS`, DeepFlow in the first round only).
    Returns (the field, info: the first round's {"ncc": before, "ncc_flow": after, "kept": bool}
    on the band ({"ncc": before, "kept": False, "settled": True} where it was not run), "rounds":
    how many were kept and "detail": the refined warp's detail agreement; {} where the band is too
    small to judge). ``give_up_below``: where the first round's held-out agreement
    (:func:`held_out_agreement`: its band after the round where it was kept, else before it) is
    below this, the later rounds are not run and the field comes back as given with that round's
    info and ``"gave_up": True`` (a caller that discards such a field:
    :func:`~.alignment.dense_alignment`'s check of the cheap sources' field; None: every round
    runs). ``give_up_detail_below``: likewise where the field after the first round (the round's
    if kept, else as given) carries less of the image's fine detail than this
    (:func:`~.warp.detail_agreement`; the round's info then has ``"detail"`` too, and ``"gave_up"``
    is ``"detail"``; None: not checked): a caller that keeps the field only above :data:`DETAIL_TRUST` at the end
    (:func:`~.alignment.dense_alignment`'s template placements) learns early that it will not."""
    refinement = FlowRefinement(
        fld, image_box, mask_box, reference, grow=grow, check_px=check_px, reach=reach, min_gain=min_gain, rounds=rounds,
        preset=preset, check=check, agreement=agreement, smooth=smooth, upsample=upsample, carry=carry,
        finest_scale=finest_scale, detail_trust=detail_trust, flows=flows, later_flows=later_flows,
    )
    gave_up = refinement.run(1).gives_up(give_up_below, give_up_detail_below)
    if gave_up is not None:
        return refinement.given, gave_up
    return refinement.run().result()


class FlowRefinement:
    """:func:`refine_field_flow` a round at a time (the same arguments but the give-ups, the same
    field and info): :meth:`run` the first round, :meth:`gives_up` after it, :meth:`run` the rest
    and take the :meth:`result`. For a caller that refines several candidate fields and chooses
    among them on their first round (:func:`held_out_agreement` reads only that round):
    :func:`~.alignment.dense_alignment` runs the rest of the rounds for the chosen one only."""

    def __init__(
        self,
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
        later_flows: tuple[str, ...] | None = LATER_FLOWS,
    ):
        from ..fill import harmonic_interpolate, spline_interpolate

        if carry not in FLOW_CARRY:
            raise ValueError(f"unknown flow carry '{carry}' (choose {', '.join(FLOW_CARRY)})")
        flows = tuple(flows)
        if not flows or any(f not in FLOW_METHODS for f in flows):
            raise ValueError(f"flows must name one or more of {', '.join(FLOW_METHODS)}, got {flows}")
        if later_flows is not None and any(f not in FLOW_METHODS for f in later_flows):
            raise ValueError(f"later_flows must name flows of {', '.join(FLOW_METHODS)} (or be None), got {tuple(later_flows)}")
        self.given = with_confidence(fld)  # (moved with the field; a ranked-only candidate gets it here)
        self.image_u8 = np.ascontiguousarray(np.clip(image_box, 0, 255).astype(np.uint8))
        self.m = np.asarray(mask_box, bool)
        self.reference = reference
        self.flows = flows if check else flows[:1]
        # the later rounds' flows: ``later_flows`` among this refinement's own, in its order (all of
        # them where none is left)
        later = self.flows if later_flows is None else tuple(f for f in self.flows if f in later_flows)
        self.later_flows = later or self.flows
        self.rounds = rounds if check else 1
        self.agreement, self.detail_trust = agreement, detail_trust
        interpolate = spline_interpolate if carry == "spline" else harmonic_interpolate
        self._settings = (grow, check_px, reach, min_gain, preset, check, smooth, upsample, interpolate, finest_scale)
        self.filled = artifact_filled(_gray(self.image_u8), self.m) if "dis-filled" in self.flows else None  # (the same in every round)
        self.current, self.kept, self.held_out = self.given, 0, None  # the last kept round's field, kept rounds, its band's agreement
        self.first: dict | None = None  # the first round's info (None before it runs)
        self.first_field = self.given  # the field the first round leaves (its own where kept)
        self.ran, self.stopped = 0, False  # rounds run; whether one was refused (no more are run)

    def run(self, rounds: int | None = None) -> "FlowRefinement":
        """Run rounds, each on the field the last kept one left, until ``rounds`` have run in all
        (None, or more than the refinement's own number: that number, 1 with ``check=False``) or
        one is refused. Returns self."""
        limit = self.rounds if rounds is None else min(rounds, self.rounds)
        while not self.stopped and self.ran < limit:
            flows = self.flows if self.ran == 0 else self.later_flows
            refined, info = _flow_round(self.current, self.image_u8, self.m, self.reference, *self._settings, flows, self.filled)
            self.ran += 1
            if self.first is None:
                self.first, self.first_field = info, refined if info.get("kept") else self.given
            if not info.get("kept"):
                self.stopped = True
                break
            self.current, self.kept, self.held_out = refined, self.kept + 1, info.get("ncc_flow")
        return self

    def gives_up(self, give_up_below: float | None = None, give_up_detail_below: float | None = None) -> dict | None:
        """After the first round: the info :func:`refine_field_flow` returns for a field it gives up
        with these thresholds (its ``give_up_below`` and ``give_up_detail_below``), None where it
        goes on (or no round has run)."""
        info = self.first
        if info is None:
            return None
        if give_up_below is not None and "ncc" in info and held_out_agreement(info, info["ncc"]) < give_up_below:
            return {**info, "gave_up": True}
        if give_up_detail_below is not None:
            detail = detail_agreement(self.image_u8, self.m, self.reference, self.first_field)
            if detail < give_up_detail_below:
                return {**info, "detail": round(detail, 4), "gave_up": "detail"}
        return None

    def result(self) -> tuple[DenseField, dict]:
        """(the field, info) as :func:`refine_field_flow` returns them after the rounds run so far.
        Sets the returned field's ``trust_cap`` in place (recomputed from the given field's on every
        call, so a result taken between rounds does not change the final one)."""
        fld, current = self.given, self.current
        if not self.kept:
            return fld, self.first or {}
        cap = warp_agreement(self.image_u8, self.m, self.reference, fld) if self.agreement is None else self.agreement
        detail = detail_agreement(self.image_u8, self.m, self.reference, current)
        if self.detail_trust is not None and self.held_out is not None and detail >= self.detail_trust:
            cap = max(cap, self.held_out)  # (the image's own photo, brought into place: trusted as the band it did not see says)
        current.trust_cap = min(fld.trust_cap, cap)
        return current, {**self.first, "rounds": self.kept, "detail": round(detail, 4)}


def held_out_agreement(info: dict, ncc: float) -> float:
    """A flow-refined field's agreement on the band its flow did not see, as
    :func:`refine_field_flow`'s info gives it: after its first round where that round was kept,
    else before it (later kept rounds are not counted); its ring agreement ``ncc`` where the band
    was too small to judge."""
    if "ncc" not in info:
        return ncc
    return info["ncc_flow"] if info.get("kept") and "ncc_flow" in info else info["ncc"]


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
        computed = dict(zip(flows, side_by_side(flow_of, flows)))
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
        return composed_field(fld, px + f[..., 0], py + f[..., 1])

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
