"""The dense field: matches, robust fit, M* pushed through it, the gated warp, ECC and flow (pipelines/correspondence.py:
matching.py, fields.py, warp.py, field_refinement.py; the dense alignment that puts them together, alignment.py)."""

import cv2
import numpy as np
import pytest

from refine_by_align.pipelines.alignment import dense_alignment
from refine_by_align.pipelines.correspondence import (
    PASTE_INTERPOLATION,
    PASTE_OUTLINE_PX,
    DenseField,
    Matches,
    attention_matches,
    ColourMap,
    colour_affine,
    colour_maps,
    colour_support,
    colour_transfer,
    dense_field,
    fit_field,
    global_model,
    grey_slope,
    match_error,
    refine_field_ecc,
    refine_field_flow,
    ring,
    sift_matches,
    warp_agreement,
    warp_fill,
    with_confidence,
)
from refine_by_align.zoom import Box, zoom_box


def _texture(h, w, seed=0):
    """A photo-like texture with corners SIFT can find: blurred noise plus random rectangles."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 1.5)
    for _ in range(60):
        x, y = rng.integers(0, w - 20), rng.integers(0, h - 20)
        cv2.rectangle(img, (int(x), int(y)), (int(x + rng.integers(6, 20)), int(y + rng.integers(6, 20))), rng.integers(0, 256, 3).tolist(), -1)
    return img


def _case(H_img_to_ref, size=(240, 240), mirror=False, seed=0, colour=(1.0, 0.0)):
    """(image, mask, reference, reference_mask, H): the reference is the image seen through H (with an
    optional mirror and a colour gain / offset); the image's mask hides a block in the middle."""
    h, w = size
    image = _texture(h, w, seed)
    ref = cv2.warpPerspective(image, H_img_to_ref, (w, h), flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H_img_to_ref, (w, h)) == 255
    H = H_img_to_ref
    if mirror:
        F = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])
        ref, valid, H = ref[:, ::-1].copy(), valid[:, ::-1].copy(), F @ H_img_to_ref
    ref = np.clip(ref.astype(np.float32) * colour[0] + colour[1], 0, 255).astype(np.uint8)
    ref[~valid] = 0
    mask = np.zeros((h, w), bool)
    mask[100:140, 95:150] = True
    return image, mask, ref, valid, H


def _sim(angle=12.0, scale=0.9, tx=10.0, ty=-6.0, c=(120, 120)):
    A = cv2.getRotationMatrix2D(c, angle, scale)
    A[:, 2] += (tx, ty)
    return np.vstack([A, [0, 0, 1]])


def _apply(H, xy):
    p = np.c_[xy, np.ones(len(xy))] @ H.T
    return p[:, :2] / p[:, 2:]


def _lattice_matches(H, start: float, stop: float, step: float = 10.0) -> Matches:
    """Exact "sift" matches on a square lattice of image points (``start`` to ``stop`` every
    ``step`` px on both axes), each with its reference position through H."""
    src = np.stack(np.meshgrid(np.arange(start, stop, step), np.arange(start, stop, step)), -1).reshape(-1, 2)
    return Matches(src.astype(np.float32), _apply(H, src).astype(np.float32), np.ones(len(src), np.float32), {"sift": len(src)})


def test_global_model_recovers_a_homography_and_rejects_outliers():
    rng = np.random.default_rng(0)
    H = _sim()
    H[2, :2] = (2e-4, -1e-4)
    src = rng.uniform(0, 240, (80, 2))
    dst = _apply(H, src)
    dst[:20] = rng.uniform(0, 240, (20, 2))  # 25% outliers
    got = global_model(src, dst)
    assert got is not None
    pts = rng.uniform(20, 220, (50, 2))
    assert np.abs(_apply(got, pts) - _apply(H, pts)).max() < 0.5
    # a mirrored relation is refused unless it is asked for
    Fm = np.array([[-1.0, 0, 239], [0, 1, 0], [0, 0, 1]])
    assert global_model(src[20:], _apply(Fm @ H, src[20:])) is None
    assert global_model(src[20:], _apply(Fm @ H, src[20:]), mirrored=True) is not None


def test_fit_field_prefers_a_smooth_residual_for_a_nonrigid_map():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 240, (300, 2))

    def warp(xy):
        return xy * 0.95 + 5 + np.stack([6 * np.sin(xy[:, 1] / 40.0), 5 * np.cos(xy[:, 0] / 35.0)], 1)

    m = Matches(src.astype(np.float32), warp(src).astype(np.float32), np.ones(300, np.float32), {"test": 300})
    fit = fit_field(m, focus=Box(90, 90, 150, 150), ransac_px=3.0, outlier_px=20.0)
    assert fit is not None and fit.smoothing is not None  # the homography alone does not explain it
    pts = rng.uniform(80, 160, (100, 2))
    assert np.median(np.linalg.norm(fit(pts) - warp(pts), axis=1)) < 0.5
    # a homography fits a projective map exactly: the residual is not chosen there
    H = _sim()
    m2 = Matches(src.astype(np.float32), _apply(H, src).astype(np.float32), np.ones(300, np.float32))
    fit2 = fit_field(m2, focus=Box(90, 90, 150, 150))
    assert fit2 is not None and np.abs(fit2(pts) - _apply(H, pts)).max() < 0.1


@pytest.mark.parametrize("mirror", [False, True])
def test_dense_alignment_is_pixel_accurate_and_pushes_the_mask(mirror):
    H = _sim()
    image, mask, ref, valid, H_true = _case(H, mirror=mirror)
    box = zoom_box(mask, 2.0, 64)
    fld, info = dense_alignment(image, mask, ref, valid, box, ("sift",))
    assert fld is not None, info
    assert info["mirrored"] == mirror
    ys, xs = np.mgrid[box.y0 : box.y1 : 7, box.x0 : box.x1 : 7]
    truth = _apply(H_true, np.stack([xs.ravel(), ys.ravel()], 1))
    got = fld.xy[ys.ravel() - box.y0, xs.ravel() - box.x0]
    assert np.median(np.linalg.norm(got - truth, axis=1)) < 0.7
    region = fld.push_mask(mask[box.y0 : box.y1, box.x0 : box.x1], ref.shape[:2])
    true_region = cv2.warpPerspective(mask.astype(np.uint8), H_true, (ref.shape[1], ref.shape[0]), flags=cv2.INTER_NEAREST).astype(bool)
    iou = (region & true_region).sum() / (region | true_region).sum()
    assert iou > 0.9


def test_warp_fill_matches_colour_and_gates_an_unrelated_reference():
    image, mask, ref, valid, _ = _case(_sim(), colour=(0.7, 30.0))
    box = zoom_box(mask, 2.0, 64)
    fld, _ = dense_alignment(image, mask, ref, valid, box, ("sift",))
    w = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    wf = warp_fill(image[w], mask[w], ref, fld)
    assert wf.ncc > 0.9 and wf.use[mask[w]].mean() > 0.95
    err = np.abs(wf.patch.astype(float) - image[w].astype(float))[mask[w]].mean()
    assert err < 12, err  # colour-corrected: the raw reference is ~40 levels off
    # a reference of another texture, seen through the same field: the ring disagrees, nothing is used
    other = _texture(*ref.shape[:2], seed=5)
    bad = warp_fill(image[w], mask[w], other, fld)
    assert bad.ncc < 0.4 and not bad.use.any() and not bad.weight.any()


def test_colour_transfer_recovers_a_gain_and_offset():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 200, (50, 50, 3)).astype(np.float32)
    tgt = src * np.array([0.8, 1.1, 1.3]) + np.array([10, -5, 3])
    gain, off = colour_transfer(src, tgt, np.ones((50, 50), bool))
    assert np.allclose(gain, [0.8, 1.1, 1.3], atol=1e-3) and np.allclose(off, [10, -5, 3], atol=0.1)
    # gains beyond max_gain either way are clipped to it (a ring of nearly one colour, matched to a
    # textured one, would otherwise blow the warp's contrast up), the offset kept consistent with
    # the means; fewer than 8 pixels: no correction
    steep = src * np.array([5.0, 0.1, 1.0]) + 20
    gain, off = colour_transfer(src, steep, np.ones((50, 50), bool))
    assert np.allclose(gain, [3.0, 1 / 3.0, 1.0], atol=1e-6)
    assert np.allclose(src.reshape(-1, 3).mean(0) * gain + off, steep.reshape(-1, 3).mean(0), atol=1e-3)
    few = np.zeros((50, 50), bool)
    few[0, :7] = True
    gain, off = colour_transfer(src, steep, few)
    assert np.array_equal(gain, np.ones(3)) and np.array_equal(off, np.zeros(3))


def _hue_rotation(deg: float) -> np.ndarray:
    """(3, 3) RGB matrix rotating hue by ``deg`` about the grey axis (it mixes the channels)."""
    a = np.deg2rad(deg)
    k = np.ones(3) / np.sqrt(3.0)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def test_colour_affine_undoes_a_channel_mixing_change_and_stays_tame_on_one_colour():
    """A hue rotation plus gain and offset is undone by the 3 x 3 colour map (per-channel gains
    cannot); on a ring of nearly one colour the map stays near the per-channel gains."""
    rng = np.random.default_rng(3)
    src = rng.uniform(20, 220, (40, 40, 3)).astype(np.float32)
    M_true = _hue_rotation(25.0) * 0.9
    tgt = src.reshape(-1, 3) @ M_true + np.array([8.0, -4.0, 6.0])
    tgt = tgt.reshape(src.shape)
    where = np.ones((40, 40), bool)
    M, off = colour_affine(src, tgt, where)
    err = np.abs(src.reshape(-1, 3) @ M + off - tgt.reshape(-1, 3)).mean()
    gain, goff = colour_transfer(src, tgt, where)
    err_gain = np.abs(src * gain + goff - tgt).mean()
    assert err < 1.0 and err_gain > 8 * err, (err, err_gain)
    flat = np.full((40, 40, 3), 120.0, np.float32) + rng.normal(0, 0.5, (40, 40, 3)).astype(np.float32)
    Mf, _ = colour_affine(flat, flat * 1.1, where)
    assert np.abs(Mf - np.diag(np.diag(Mf))).max() < 0.2 and np.all(np.abs(np.diag(Mf) - 1.1) < 0.3)


def test_colour_maps_undo_a_tone_curve_and_channel_mix_that_the_matrix_alone_cannot():
    """A power law (exposure / tone curve) after a hue rotation, gain and offset: colour_maps finds
    the gamma and undoes the change to within a grey level; the 3 x 3 map alone leaves the bend."""
    rng = np.random.default_rng(4)
    src = rng.uniform(20, 230, (60, 60, 3))
    lin = np.clip((src.reshape(-1, 3) @ (_hue_rotation(15.0) * 0.85) + np.array([10.0, -6.0, 4.0])) / 255.0, 0, 1)
    tgt = (255.0 * lin**1.3).reshape(src.shape)
    where = np.ones((60, 60), bool)
    full, per_channel = colour_maps(src, tgt, where)
    assert abs(full.gamma - 1.3) <= 0.05 and per_channel.gamma == full.gamma
    assert np.abs(full(src) - tgt).mean() < 1.0
    M, off = colour_affine(src, tgt, where)
    assert np.abs(np.clip(src @ M + off, 0, 255) - tgt).mean() > 3.0
    assert np.count_nonzero(per_channel.matrix - np.diag(np.diag(per_channel.matrix))) == 0  # gains only
    # a plain affine change keeps gamma near 1 and is undone as colour_affine undoes it
    aff = src * np.array([0.9, 1.1, 1.0]) + np.array([5.0, -3.0, 2.0])
    full_a, _ = colour_maps(src, aff, where)
    assert abs(full_a.gamma - 1.0) <= 0.05 and np.abs(full_a(src) - np.clip(aff, 0, 255)).mean() < 1.0
    # too few pixels to fit a matrix: per-channel gains, no gamma
    few = np.zeros((60, 60), bool)
    few[0, :10] = True
    f_few, _ = colour_maps(src, tgt, few)
    assert f_few.gamma == 1.0 and np.count_nonzero(f_few.matrix - np.diag(np.diag(f_few.matrix))) == 0


def test_colour_map_limits_apply_the_map_inside_and_the_slope_beyond():
    """A ColourMap with limits is the plain map on colours inside them; a channel beyond its limit
    takes the map's value at the limit plus ``slope`` times the excess, clipped to 0..255."""
    plain = ColourMap(np.diag([1.2, 0.5, 0.9]), np.array([4.0, -2.0, 6.0]), 1.0)
    limited = ColourMap(plain.matrix, plain.offset, 1.0, np.array([20.0, 10.0, 30.0]), np.array([200.0, 60.0, 150.0]), 1.1)
    inside = np.array([[100.0, 40.0, 90.0], [20.0, 10.0, 150.0]])
    assert np.allclose(limited(inside), plain(inside))
    beyond = np.array([120.0, 160.0, 10.0])  # G 100 above its limit, B 20 below its own
    at_limit = plain(np.array([120.0, 60.0, 30.0]))
    assert np.allclose(limited(beyond), [at_limit[0], at_limit[1] + 110.0, at_limit[2] - 22.0])
    assert limited(np.array([255.0, 255.0, 0.0])).max() <= 255.0 and limited(np.array([255.0, 255.0, 0.0])).min() >= 0.0


def test_colour_maps_do_not_extrapolate_a_narrow_channel_to_colours_the_ring_does_not_hold():
    """A magenta ring (green only 5-50) whose green is darkened: the per-channel map, the fallback
    for colours the ring does not hold, keeps a white label near neutral (its green goes on at
    the ring's grey-level slope past the ring's range and a margin) where green's own gain,
    extrapolated, tints it pink; on the ring's own colours it is the plain per-channel map."""
    rng = np.random.default_rng(11)
    n = 3000
    src = np.stack([rng.uniform(30, 230, n), rng.uniform(5, 50, n), rng.uniform(40, 110, n)], 1).reshape(50, 60, 3)
    tgt = np.clip(src * np.array([1.05, 0.55, 0.95]) + np.array([8.0, 2.0, 5.0]) + rng.normal(0, 1.0, src.shape), 0, 255)
    where = np.ones((50, 60), bool)
    full, per_channel = colour_maps(src, tgt, where)
    assert full.lo is None  # (the 3 x 3 map is used only near the ring's colours: not limited)
    # (the limits: the ring's 1st and 99th percentiles, widened by a quarter of that range)
    p1, p99 = np.percentile(src.reshape(-1, 3), [1, 99], axis=0)
    assert np.allclose(per_channel.lo, p1 - 0.25 * (p99 - p1)) and np.allclose(per_channel.hi, p99 + 0.25 * (p99 - p1))
    assert per_channel.hi[1] < 62
    plain = ColourMap(per_channel.matrix, per_channel.offset, per_channel.gamma)
    ring_colours = src.reshape(-1, 3)[::50]
    inside = np.all((ring_colours >= per_channel.lo) & (ring_colours <= per_channel.hi), axis=1)
    assert inside.sum() > 40 and np.allclose(per_channel(ring_colours[inside]), plain(ring_colours[inside]))
    white = np.array([220.0, 220.0, 220.0])
    assert np.ptp(plain(white)) > 100  # the plain map's green gain makes it pink (green 123)
    # green and blue beyond the ring's ranges go on at the grey slope (about 1) from their limits;
    # red, inside its range, keeps its own gain and offset
    assert np.ptp(per_channel(white)) < 45 and per_channel(white)[1] > 190
    assert abs(grey_slope(src.reshape(-1, 3), tgt.reshape(-1, 3)) - per_channel.slope) < 1e-9


def test_grey_slope_is_the_grey_levels_least_squares_slope():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 200, (500, 3))
    assert abs(grey_slope(src, src * 1.3 + 7.0) - 1.3) < 1e-9
    assert grey_slope(src, src * 9.0) == 3.0  # clipped to max_gain
    assert grey_slope(np.full((50, 3), 80.0), rng.uniform(0, 255, (50, 3))) == 1.0  # no grey variation


def test_colour_support_is_one_on_the_ring_colours_and_fades_away_from_them():
    """The 3 x 3 colour map is used where the ring shows the pixel's colour: support 1 on a ring
    colour, exp(-1) at ``reach`` from the nearest, ~0 on a colour the ring does not hold."""
    img = np.zeros((20, 30, 3), np.float32)
    img[:, :10] = (200, 40, 40)  # the ring: two reds
    img[:, 10:20] = (180, 60, 40)
    img[:5, 20:] = (200, 60, 40)  # 20 levels from the second red
    img[5:, 20:] = (30, 30, 220)  # a blue the ring does not hold
    ring_px = np.zeros((20, 30), bool)
    ring_px[:, :20] = True
    sup = colour_support(img, ring_px, reach=20.0)
    assert sup.shape == (20, 30) and sup.dtype == np.float32
    assert np.allclose(sup[:, :20], 1.0)
    assert np.allclose(sup[:5, 20:], np.exp(-1.0), atol=1e-5)
    assert sup[5:, 20:].max() < 1e-6
    assert not colour_support(img, np.zeros((20, 30), bool)).any()  # no ring: no support anywhere
    at = np.zeros((20, 30), bool)
    at[3:9, 15:25] = True  # measured there only: the same values, 0 elsewhere
    part = colour_support(img, ring_px, reach=20.0, at=at)
    assert np.array_equal(part[at], sup[at]) and not part[~at].any()


def test_warp_fill_pastes_in_the_image_colours_but_trusts_by_the_per_channel_match():
    """A hue-rotated reference: the pasted warp is colour-matched by the 3 x 3 map (within a few
    grey levels of the image); the trust (ring correlation) is measured after the per-channel
    gains, as before, so that the freer colour map does not raise it."""
    image, mask, ref, valid, _ = _case(_sim())
    M = _hue_rotation(30.0)
    ref = np.where(valid[..., None], np.clip(ref.reshape(-1, 3) @ M + 5.0, 0, 255).reshape(ref.shape), 0).astype(np.uint8)
    box = zoom_box(mask, 2.0, 64)
    fld, _ = dense_alignment(image, mask, ref, valid, box, ("sift",))
    w = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    wf = warp_fill(image[w], mask[w], ref, fld)
    err = np.abs(wf.patch.astype(float) - image[w].astype(float))[mask[w]].mean()
    warped = fld.sample(ref).astype(np.float32)
    band = ring(mask[w], 2, 12) & fld.on_object
    gain, off_ = colour_transfer(warped, image[w], band)
    err_gain = np.abs(np.clip(warped * gain + off_, 0, 255) - image[w].astype(float))[mask[w]].mean()
    assert err < 6 and err < 0.5 * err_gain, (err, err_gain)
    g = lambda a: cv2.cvtColor(np.clip(np.rint(a), 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float64)[band]
    a, b = g(warped * gain + off_), g(image[w])
    ncc = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(wf.ncc - min(ncc, fld.trust_cap)) < 1e-3
    # the candidates are ranked by the same agreement without the patch being built
    assert warp_agreement(image[w], mask[w], ref, fld) == wf.ncc
    # off the mask (read by nothing downstream) the patch holds the per-channel match, with the
    # gains measured on the bicubic warp applied to the pasted (Lanczos) one
    outside = ~mask[w]
    inner = cv2.erode(fld.on_object.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * PASTE_OUTLINE_PX + 1,) * 2)).astype(bool)
    pasted = np.where(inner[..., None], fld.sample(ref, PASTE_INTERPOLATION, antialias=True), fld.sample(ref, cv2.INTER_CUBIC, antialias=True)).astype(np.float32)
    assert np.array_equal(wf.patch[outside], np.rint(np.clip(pasted * gain + off_, 0, 255))[outside].astype(np.uint8))


def test_warp_fill_pastes_a_lanczos_warp_that_keeps_fine_detail():
    """The pasted patch samples the reference with Lanczos (PASTE_INTERPOLATION): a fine pattern
    (period 3.3 px) moved by a sub-pixel shift comes back closer to the truth than with the bicubic
    sampling the agreement is measured with, and the agreement (the trust) is the same either way."""
    h, w = 96, 96
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def pattern(x, y):  # (h, w, 3) in 0..255: two fine gratings and a slow ramp
        g = 128 + 50 * np.sin(2 * np.pi * x / 3.3) * np.cos(2 * np.pi * y / 4.1) + 0.3 * (x - y)
        return np.stack([g, 0.8 * g + 20, 255 - g], axis=-1)

    shift = (0.4, 0.3)  # the reference is the image moved by this much: image(x, y) = ref(x + 0.4, y + 0.3)
    image = np.clip(np.rint(pattern(xx, yy)), 0, 255).astype(np.uint8)
    ref = np.clip(np.rint(pattern(xx - shift[0], yy - shift[1])), 0, 255).astype(np.uint8)
    xy = np.stack([xx + shift[0], yy + shift[1]], axis=-1)
    fld = DenseField(Box(0, 0, w, h), xy, np.ones((h, w), np.float32), np.ones((h, w), bool))
    mask = np.zeros((h, w), bool)
    mask[30:66, 30:66] = True
    lanczos = warp_fill(image, mask, ref, fld)
    cubic = warp_fill(image, mask, ref, fld, interpolation=cv2.INTER_CUBIC)
    assert PASTE_INTERPOLATION == cv2.INTER_LANCZOS4
    assert lanczos.ncc == cubic.ncc and np.array_equal(lanczos.weight, cubic.weight)
    err = lambda wf: float(np.abs(wf.patch.astype(float) - image.astype(float))[mask].mean())  # noqa: E731
    assert err(lanczos) < 0.8 * err(cubic), (err(lanczos), err(cubic))


def test_warp_fill_samples_bicubic_near_the_reference_objects_outline(monkeypatch):
    """Beyond a cut-out reference's object lies its black background. Within PASTE_OUTLINE_PX of
    where the field leaves the object the pasted warp is sampled bicubic (taps 2 px out) instead
    of Lanczos (4 px out): the object's pixels beside its outline take in less of the black (the
    sampling alone: the rim's colour, carried in afterwards, is left out here)."""
    import refine_by_align.pipelines.warp as W

    monkeypatch.setattr(W, "SEAM_RING_PX", None)
    h, w = 96, 96
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 140 + 60 * np.sin(2 * np.pi * xx / 5.3) * np.cos(2 * np.pi * yy / 6.1)
    image = np.clip(np.rint(np.stack([g, g, g], axis=-1)), 0, 255).astype(np.uint8)
    shift = 0.5
    ref = np.clip(np.rint(np.stack([140 + 60 * np.sin(2 * np.pi * (xx - shift) / 5.3) * np.cos(2 * np.pi * yy / 6.1)] * 3, axis=-1)), 0, 255).astype(np.uint8)
    ref[:, 48:] = 0  # the reference object ends at x = 47.5 on the reference, black beyond
    xy = np.stack([xx + shift, yy], axis=-1)
    on_object = xy[..., 0] <= 47.5
    fld = DenseField(Box(0, 0, w, h), xy, np.ones((h, w), np.float32), on_object)
    mask = np.zeros((h, w), bool)
    mask[30:66, 20:47] = True  # on the object, up to its outline
    near = mask & (xx >= 44)  # the mask's pixels within 3 px of the outline
    err = lambda wf, where: float(np.abs(wf.patch.astype(float) - image.astype(float))[where].mean())  # noqa: E731
    with_rule = warp_fill(image, mask, ref, fld)
    monkeypatch.setattr(W, "PASTE_OUTLINE_PX", 0)
    lanczos_everywhere = warp_fill(image, mask, ref, fld)
    assert err(with_rule, near) < 0.8 * err(lanczos_everywhere, near), (err(with_rule, near), err(lanczos_everywhere, near))
    inside = mask & (xx < 40)  # farther in, both are the Lanczos warp (colour-matched on a ring that crosses the outline)
    assert np.abs(with_rule.patch[inside].astype(int) - lanczos_everywhere.patch[inside].astype(int)).max() <= 2


def test_attention_matches_reads_sub_token_positions():
    g, side = 4, 2
    att = np.zeros((side * side, g * g))
    # query 0 attends half to token (1, 1), half to (1, 2): its position is x = 1.5 tokens, y = 1
    att[0, 1 * g + 1] = att[0, 1 * g + 2] = 0.5
    att[1:, 0] = 1.0
    m = attention_matches(att, Box(0, 0, 20, 20), Box(0, 0, 40, 40), g)
    assert len(m) == 4
    assert np.allclose(m.ref_xy[0], [(1.5 + 0.5) * 10 - 0.5, (1 + 0.5) * 10 - 0.5])
    assert np.allclose(m.img_xy[0], [4.5, 4.5])
    with pytest.raises(ValueError):
        attention_matches(np.ones((3, 16)), Box(0, 0, 20, 20), Box(0, 0, 40, 40), 4)


def test_no_field_from_too_few_matches():
    img = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    assert len(sift_matches(img, mask, img, None)) == 0
    fld, info = dense_alignment(img, mask, img, None, zoom_box(mask, 2.0, 32), ("sift",))
    assert fld is None and info["candidates"] == {}
    assert dense_field is not None


def test_fit_field_with_matches_crowded_into_one_cell():
    """Cross-validation holds out whole cells of a coarse grid: where nearly all matches lie in one
    cell, the other folds keep fewer than the three a spline with a linear part needs. That fold
    cannot check a residual (it counts as missed), and the homography is fitted as usual; it
    used to raise SciPy's ValueError and end the refine (found on a validation case whose
    estimated object left ALIKED's loose matches in one clump)."""
    H = np.array([[1.1, 0.05, 5.0], [0.02, 0.95, -3.0], [0.0, 0.0, 1.0]])
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = np.concatenate([rng.uniform(100, 110, (18, 2)), [[300.0, 300.0], [301.0, 100.0]]]).astype(np.float32)
        b = (a @ H[:2, :2].T + H[:2, 2] + rng.normal(0, 0.3, a.shape)).astype(np.float32)
        fit = fit_field(Matches(a, b, np.ones(len(a), np.float32)), seed=seed)
        assert fit is not None and fit.inliers >= 18
        np.testing.assert_allclose(fit(np.array([[105.0, 105.0]])), [[H[0, 0] * 105 + H[0, 1] * 105 + H[0, 2], H[1, 0] * 105 + H[1, 1] * 105 + H[1, 2]]], atol=1.0)


def _photo_like_case():
    """A textured scene, its artifact, and a reference that is the same scene rotated and scaled."""
    H = _sim(angle=10.0, scale=0.95)
    image, mask, ref, valid, H_true = _case(H, seed=3)
    target = image.copy()
    garbled = image.copy()
    garbled[mask] = 255 - garbled[mask]  # the artifact: inverted colours
    return garbled, target, mask, ref, valid


def test_pipeline_dense_alignment_redraws_from_the_warped_reference(tiny_pipe):
    from PIL import Image

    from refine_by_align.evaluation.metrics import masked_psnr

    garbled, target, mask, ref, valid = _photo_like_case()
    tiny_pipe.set_matcher(enabled=False)  # SIFT alone: no dependence on ../shared
    try:
        out = tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, seed=0)
    finally:
        tiny_pipe._aliked = None
    assert out.alignment == "dense" and out.warp_fraction > 0.95, (out.info, out.notes)
    got = np.asarray(out.image)
    assert masked_psnr(got, target, mask) > 28.0  # the random-weight model alone would give noise
    region = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.array_equal(got[~region], garbled[~region])
    # M* is pixel-accurate: the mask pushed through the true map
    assert out.region.shape == ref.shape[:2] and out.region.any()
    # the paper's variant stays selectable and gives a token-grid region
    paper = tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, seed=0, alignment="attention")
    assert paper.alignment == "attention" and paper.warp_fraction == 0.0


def test_an_estimated_object_that_leaves_out_the_masked_part_still_gives_the_warp(tiny_pipe, monkeypatch):
    """No reference mask on a photo with a background: the object is estimated (GrabCut), and the
    estimate can leave out the very part the mask covers (the same photo as the reference,
    unmasked: 39.4 dB on 48 cases where the warp sampled the estimate alone, 46.8 once it samples
    the whole photo; MODEL_CARD.md). The matchers look inside the estimate, the warp samples the
    whole photo, and the model's tokens still see the estimate alone. A mask given by the user is
    the object: the warp stays cut to it."""
    from PIL import Image

    import refine_by_align.data.foreground as F
    from refine_by_align.evaluation.metrics import masked_psnr

    garbled, target, mask, ref, valid = _photo_like_case()
    assert not F.on_plain_background(ref)  # a photo, not a cut-out
    ys, xs = np.nonzero(mask)
    pushed = np.zeros(mask.shape, np.uint8)
    to = np.rint(_apply(_sim(angle=10.0, scale=0.95), np.c_[xs, ys])).astype(int).clip(0, 239)
    pushed[to[:, 1], to[:, 0]] = 1
    estimate = valid & ~cv2.dilate(pushed, np.ones((15, 15), np.uint8)).astype(bool)  # the masked part left out
    monkeypatch.setattr(F, "estimate_foreground", lambda rgb, *a, **k: estimate.copy())
    tiny_pipe.set_matcher(enabled=False)  # SIFT alone: no dependence on ../shared
    try:
        given = tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), estimate, seed=0)
        estimated = tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), seed=0)
    finally:
        tiny_pipe._aliked = None
    assert given.warp_fraction < 0.05, given.notes  # the object as given holds none of the mask's source
    assert estimated.warp_fraction > 0.95 and any("estimated" in n for n in estimated.notes), (estimated.info, estimated.notes)
    assert masked_psnr(np.asarray(estimated.image), target, mask) > 28.0 > masked_psnr(np.asarray(given.image), target, mask)
    p = tiny_pipe.prepare(Image.fromarray(garbled), mask, Image.fromarray(ref))
    assert np.array_equal(p.reference_mask, estimate) and not p.reference[~estimate].any()  # what the encoder sees
    assert np.array_equal(p.matched[0], ref) and p.matched[1].all()  # what the warp samples
    q = tiny_pipe.prepare(Image.fromarray(garbled), mask, Image.fromarray(ref), estimate)
    assert q.photo is None and q.matched[0] is q.reference


def test_the_image_side_is_made_beside_grabcut_and_the_refine_is_the_same(tiny_pipe, monkeypatch):
    """No reference mask: GrabCut's estimate of the object runs on one core, and the pipeline
    describes the image's side of the matching beside it (matching.image_features_ahead), and the
    reference photo's SIFT whole: once per estimate computed, not for a remembered estimate, a given
    mask or Algorithm 1's alignment. The refine is the same, bit for bit, as without it (a random ALIKED as the matcher: no weights
    needed)."""
    import torch
    from PIL import Image

    import refine_by_align.pipelines.pipeline as P
    from refine_by_align.data.foreground import clear_foreground_cache
    from refine_by_align.models.aliked import ALIKED, ALIKEDConfig
    from refine_by_align.pipelines import matching as C

    garbled, _, mask, ref, valid = _photo_like_case()
    torch.manual_seed(0)
    started, real = [], P.image_features_ahead
    monkeypatch.setattr(P, "image_features_ahead", lambda *a, **k: started.append(real(*a, **k)) or started[-1])

    def refine(rmask=None, **kw):
        return np.asarray(tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), rmask, seed=0, **kw).image)

    def forget():
        C.clear_reference_cache()
        clear_foreground_cache()

    tiny_pipe._aliked = ALIKED(ALIKEDConfig(8, 16, 32, 64, 64, 3, 16)).eval()
    try:
        forget()
        ahead = refine()
        assert len(started) == 1
        started[0].result(30)  # (its work done, without an error)
        assert len(C._SIFT_WHOLE) == 1  # (the reference photo described whole, before its object was known)
        again = refine()  # the estimate remembered: nothing started
        forget()
        refine(valid)  # a mask given: no estimate
        forget()
        refine(alignment="attention")  # no matching to describe for
        assert len(started) == 1
        monkeypatch.setattr(P, "image_features_ahead", lambda *a, **k: None)
        forget()
        without = refine()
    finally:
        tiny_pipe._aliked = None
        forget()
    assert np.array_equal(ahead, without) and np.array_equal(ahead, again)


def test_pipeline_says_when_the_matcher_weights_are_missing(tiny_pipe, tmp_path):
    from PIL import Image

    garbled, target, mask, ref, valid = _photo_like_case()
    assert not tiny_pipe.set_matcher(tmp_path / "nowhere.safetensors")
    assert tiny_pipe.matcher_weights is None  # (SIFT alone: no weights in use)
    try:
        out = tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, seed=0)
        assert any("ALIKED matcher unavailable" in n and "SIFT alone" in n for n in out.notes), out.notes
        assert out.alignment == "dense" and out.warp_fraction > 0.95
        # (one line that says the run stops, why, and what to do: not the note that it goes on with SIFT)
        with pytest.raises(ValueError, match=r"matchers 'aliked': the ALIKED matcher is not available: .*not found.*; give its weights .*set_matcher / require_matcher\) or choose sift") as err:
            tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, matchers="aliked")
        assert "SIFT alone" not in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ValueError, match="choose sources"):
            tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, matchers="orb")
        with pytest.raises(ValueError, match="alignment method"):
            tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, alignment="magic")
    finally:
        tiny_pipe._aliked = None


def test_pipeline_without_a_shared_reference_refines_without_the_warp(tiny_pipe):
    from PIL import Image

    garbled, target, mask, ref, valid = _photo_like_case()
    other = _texture(*ref.shape[:2], seed=11)
    out = tiny_pipe(Image.fromarray(garbled), mask, Image.fromarray(other), seed=0, matchers="sift")
    assert out.warp_fraction == 0.0
    assert any("refined without the warp" in n or "no consistent dense field" in n for n in out.notes), out.notes


def test_the_fallbacks_attention_pass_started_beside_the_template_search_is_the_one_run_after(tiny_pipe, monkeypatch):
    """Where no point matches agree, the dense stage calls ``fallback_ahead`` as its template
    search starts, and the pipeline starts Algorithm 1's pass then on a thread of its own: the
    fallback's M* and heat map are those of the pass run after the stage (one thread), at the
    caller's torch thread setting even where a thread made meanwhile would get another."""
    import threading

    import torch
    from PIL import Image

    from refine_by_align.pipelines import pipeline as P

    garbled, _, mask, _, _ = _photo_like_case()
    other = _texture(200, 180, seed=11)  # (shares nothing with the image)
    omask = np.zeros(other.shape[:2], bool)
    omask[30:170, 40:150] = True
    tiny_pipe.set_matcher(enabled=False)
    calls = []
    real_align = P.RefineByAlignPipeline._align

    def spy(self, p, *args, **kw):
        method = args[5] if len(args) > 5 else kw.get("method")
        if method == "attention":
            calls.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return real_align(self, p, *args, **kw)

    monkeypatch.setattr(P.RefineByAlignPipeline, "_align", spy)
    try:
        monkeypatch.setattr(P, "worker_threads", lambda: 1)
        after = tiny_pipe.align(Image.fromarray(garbled), mask, Image.fromarray(other), omask, seed=0)
        assert calls == [(True, torch.get_num_threads())], calls  # (one thread: run after the stage)
        monkeypatch.setattr(P, "worker_threads", lambda: 2)
        calls.clear()
        threads = torch.get_num_threads()
        # (torch's setting made on another thread, as ALIKED's passes make theirs, is what threads
        # made afterwards start with: the pass must run at the caller's own)
        other_thread = threading.Thread(target=torch.set_num_threads, args=(threads + 1,))
        other_thread.start()
        other_thread.join()
        ahead = tiny_pipe.align(Image.fromarray(garbled), mask, Image.fromarray(other), omask, seed=0)
    finally:
        tiny_pipe._aliked = None
        other_thread = threading.Thread(target=torch.set_num_threads, args=(torch.get_num_threads(),))
        other_thread.start()
        other_thread.join()
    assert after.method == ahead.method == "attention" and "template_score" in ahead.info, ahead.info
    assert calls == [(False, threads)], calls  # (started ahead, on its own thread, at the caller's setting)
    assert np.array_equal(after.region, ahead.region) and np.array_equal(after.heatmap, ahead.heatmap)


def test_the_fallbacks_attention_pass_is_waited_for_where_the_dense_stage_raises(tiny_pipe, monkeypatch):
    """The pass started ahead sets the U-Net's attention processors: where the dense stage raises
    after starting it, the alignment still waits for it before the error leaves (a server's next
    call must not meet it)."""
    import time

    from PIL import Image

    from refine_by_align.pipelines import pipeline as P

    garbled, _, mask, ref, valid = _photo_like_case()
    finished = []
    real_align = P.RefineByAlignPipeline._align

    def slow_attention(self, p, *args, **kw):
        method = args[5] if len(args) > 5 else kw.get("method")
        out = real_align(self, p, *args, **kw)
        if method == "attention":
            time.sleep(0.3)
            finished.append(True)
        return out

    def stage_that_raises(*args, fallback_ahead=None, **kw):
        fallback_ahead()
        raise RuntimeError("the stage failed")

    monkeypatch.setattr(P.RefineByAlignPipeline, "_align", slow_attention)
    monkeypatch.setattr(P, "dense_alignment", stage_that_raises)
    monkeypatch.setattr(P, "worker_threads", lambda: 2)
    tiny_pipe.set_matcher(enabled=False)
    try:
        with pytest.raises(RuntimeError, match="the stage failed"):
            tiny_pipe.align(Image.fromarray(garbled), mask, Image.fromarray(ref), valid, seed=0)
    finally:
        tiny_pipe._aliked = None
    assert finished == [True]


def test_sift_on_a_bounded_resolution_returns_full_resolution_positions():
    """A reference 4x the matcher's side is described at max_side px; the matches still follow the
    true mapping at full resolution (a bounded cost, not a coarser answer)."""
    image, mask, ref, valid, H = _case(_sim(), size=(240, 240))
    big = cv2.resize(ref, (960, 960), interpolation=cv2.INTER_CUBIC)
    big_valid = cv2.resize(valid.astype(np.uint8), (960, 960), interpolation=cv2.INTER_NEAREST).astype(bool)
    m = sift_matches(image, mask, big, big_valid, max_side=240)
    assert len(m) >= 20
    up = np.array([[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]])  # reference px -> 4x reference px (centres: (x + 0.5) * 4 - 0.5)
    truth = _apply(up @ H, m.img_xy)
    err = np.linalg.norm(truth - m.ref_xy, axis=1)
    assert np.median(err) < 4.0, np.median(err)  # within one small-reference pixel (4 px here)


def test_ecc_refinement_that_drifts_from_the_matches_is_refused():
    """match_error reads the field at the matches; a field shifted by 6 px is 6 px off, and ECC is not
    allowed to move a field away from the candidate's own matches."""
    image, mask, ref, valid, H = _case(_sim())
    box = Box(60, 60, 200, 200)
    m = _lattice_matches(H, 70, 190)
    fit = fit_field(m, focus=box)
    fld = dense_field(fit, box, valid)
    assert match_error(fld, m) < 0.5
    shifted = dense_field(fit, box, valid)
    shifted.xy = shifted.xy + np.float32([6.0, 0.0])
    assert abs(match_error(shifted, m) - 6.0) < 0.5
    # matches that disagree with the image (all 8 px off): a refinement towards the image drifts from
    # them by more than the allowed 1.5x / 1.5 px and is refused; without them it is kept
    image_box, mask_box = image[60:200, 60:200], mask[60:200, 60:200]
    wrong = Matches(m.img_xy, m.ref_xy + np.float32([8.0, 0.0]), m.weight, m.counts)
    start = dense_field(fit_field(wrong, focus=box), box, valid)
    _, kept_free = refine_field_ecc(start, image_box, mask_box, ref)
    _, kept_tied = refine_field_ecc(start, image_box, mask_box, ref, matches=wrong)
    assert kept_free and not kept_tied


def test_ecc_refinement_refuses_a_jump_of_a_quarter_box(monkeypatch):
    """ECC's homography is a refinement only while it moves the box's pixels by less than a quarter
    of the box: a warp that moves them farther (another place the ring happens to fit) is refused
    even where the ring would agree better; one that moves them a few pixels is kept."""
    import refine_by_align.pipelines.field_refinement as FR

    image, mask, ref, valid, H = _case(_sim())
    box = Box(60, 60, 200, 200)
    m = _lattice_matches(H, 70, 190)
    fld = dense_field(fit_field(m, focus=box), box, valid)
    image_box, mask_box = image[60:200, 60:200], mask[60:200, 60:200]
    # (the ring agrees better with any moved field than with the start)
    monkeypatch.setattr(FR, "warp_agreement", lambda image_box, mask_box, reference, f: 0.5 if np.array_equal(f.xy, fld.xy) else 0.9)
    for shift, kept in ((0.26 * 140, False), (3.0, True)):
        W = np.array([[1, 0, shift], [0, 1, 0], [0, 0, 1]], np.float32)
        monkeypatch.setattr(FR, "find_homography_ecc", lambda *args, W=W, **kwargs: (0.9, W, 10))
        _, changed = refine_field_ecc(fld, image_box, mask_box, ref)
        assert changed is kept, (shift, changed)


def test_ecc_refinement_moves_on_object_and_confidence_with_the_positions():
    """A field refined by ECC says which of its positions land on the reference object for its own
    positions, not the start's (a stale on_object kept the warp off pixels it lands on, val4
    backpack_04_nonrigid 26.66 -> 29.33 dB): 8 px off near the object's outline, the refined
    field's on_object is on_reference_object of its refined xy, bar a pixel's rounding at the
    outline (away from the box's edge), where the start's differs; the confidence moves with it."""
    from refine_by_align.pipelines.fields import on_reference_object

    image, mask, ref, valid, H = _case(_sim())
    valid = valid & (np.arange(valid.shape[1]) < 150)[None, :]  # the object's outline crosses the box
    box = Box(60, 60, 200, 200)
    src = np.stack(np.meshgrid(np.arange(70, 190, 10.0), np.arange(70, 190, 10.0)), -1).reshape(-1, 2)
    wrong = Matches(src.astype(np.float32), (_apply(H, src) + np.float32([8.0, 0.0])).astype(np.float32), np.ones(len(src), np.float32), {"sift": len(src)})
    start = with_confidence(dense_field(fit_field(wrong, focus=box), box, valid))
    assert np.array_equal(start.on_object, on_reference_object(start.xy, valid))
    refined, kept = refine_field_ecc(start, image[60:200, 60:200], mask[60:200, 60:200], ref)
    assert kept and np.abs(refined.xy - start.xy).max() > 4.0
    now = on_reference_object(refined.xy, valid)
    inner = (slice(12, -12), slice(12, -12))  # (where the composition reaches past the box, its positions are the edge's, copied)
    assert (refined.on_object != now)[inner].mean() < 0.01 < (start.on_object != now)[inner].mean()
    on = cv2.erode(refined.on_object.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # (on the object, not at its outline)
    moved = (on & ~start.on_object)[inner]  # where the refined field lands on the object and the start did not
    assert moved.sum() > 100 and (refined.confidence[inner][moved] > 0).all() and (start.confidence[inner][moved] == 0).all()


def test_the_aligned_fields_on_object_is_that_of_its_final_positions():
    """Whatever refined it (ECC, the flow's rounds, the polish, each carrying on_object along by
    composition), the field the alignment returns says which of its positions land on the
    reference object by the rule itself (on_reference_object of its final xy), here with the
    object's outline crossing the zoom-in crop."""
    from refine_by_align.pipelines.fields import on_reference_object

    image, mask, ref, valid, _ = _case(_sim())
    valid = valid & (np.arange(valid.shape[1]) < 150)[None, :]
    ref = np.where(valid[..., None], ref, 0).astype(np.uint8)
    box = zoom_box(mask, 2.0, 64)
    fld, info = dense_alignment(image, mask, ref, valid, box, ("sift",))
    assert fld is not None and "flow" in info, info
    on = fld.on_object
    assert np.array_equal(on, on_reference_object(fld.xy, valid)) and 0.05 < (~on).mean() < 0.95


def test_ecc_polish_takes_a_rigid_field_to_hundredths_of_a_pixel():
    """A field a small homography off the true one (0.41 px mean in the mask, a colour-shifted
    reference): the first ECC's settings (5 px smoothing, a 1-16 px ring) leave about 0.2 px, the
    polish (no smoothing, 1-48 px) about 0.02 px, from the start or after the first ECC. The
    agreements compared are the warps' own: a field trusted at a cap below its agreement (flow-
    refined) is still polished, and keeps its cap."""
    from refine_by_align.pipelines.correspondence import DenseField, polish_field_ecc

    image, mask, ref, valid, H = _case(_sim(), colour=(0.8, 20.0))
    box = Box(60, 60, 200, 200)
    yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    truth = _apply(H, pts).reshape(*xx.shape, 2)
    off = _apply(H @ _sim(angle=0.3, scale=1.004, tx=0.4, ty=-0.3, c=(130, 120)), pts).reshape(*xx.shape, 2).astype(np.float32)
    start = DenseField(box, off, np.ones(xx.shape, np.float32), np.ones(xx.shape, bool), trust_cap=0.9)
    image_box, mask_box = image[60:200, 60:200], mask[60:200, 60:200]

    def err(f):
        return float(np.linalg.norm(f.xy - truth, axis=-1)[mask_box].mean())

    first, changed_first = refine_field_ecc(start, image_box, mask_box, ref)
    polished, changed = polish_field_ecc(start, image_box, mask_box, ref)
    after_first, changed_after = polish_field_ecc(first, image_box, mask_box, ref)
    assert changed_first and changed and changed_after
    assert err(start) > 0.3 and err(first) > 0.1, (err(start), err(first))
    assert err(polished) < 0.05 and err(after_first) < 0.05 and err(polished) < 0.4 * err(first), (err(polished), err(after_first), err(first))
    assert polished.trust_cap == 0.9


def _plain_object_case():
    """(image, mask, reference, reference_mask, box, A): a smooth, keypoint-poor object (an ellipse
    of heavily blurred noise) on black in the reference, rotated by 25 degrees, scaled 1.15 and
    moved (A: reference -> image) onto a flat ground in the image; the mask hides part of it."""
    rng = np.random.default_rng(0)
    obj = cv2.normalize(cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3)).astype(np.uint8), (0, 0), 5), None, 0, 255, cv2.NORM_MINMAX)
    rmask = np.zeros((256, 256), np.uint8)
    cv2.ellipse(rmask, (128, 128), (50, 35), 0, 0, 360, 1, -1)
    A = cv2.getRotationMatrix2D((128, 128), -25, 1.15)
    A[:, 2] += (10, -6)
    inside = cv2.warpAffine(rmask, A, (256, 256), flags=cv2.INTER_NEAREST).astype(bool)
    image = np.where(inside[..., None], cv2.warpAffine(obj, A, (256, 256), flags=cv2.INTER_LINEAR), np.uint8([90, 140, 60]))
    mask = np.zeros((256, 256), bool)
    mask[118:140, 120:150] = True
    return image, mask, obj * rmask[..., None], rmask.astype(bool), zoom_box(mask, 2.0, 64), A


def test_template_search_places_a_plain_object_point_matching_misses():
    """SIFT finds no consistent matches on a smooth object; the reference object searched for by
    rotation and scale around the mask gives matches within a few pixels of the truth (the 10 degree
    angle grid), and the dense alignment built on them (ECC, flow) ends within a fraction of a pixel
    inside the mask; template=False leaves no field. In a search area smaller than the object only
    wrong, smaller placements fit, none correlates at min_score, and no matches come back; with the
    whole photo as the reference object there is no object to search for."""
    from refine_by_align.pipelines.correspondence import template_matches

    image, mask, ref, rmask, box, A = _plain_object_case()
    found, score = template_matches(image, mask, ref, rmask, box)
    back = cv2.invertAffineTransform(A)  # image -> reference
    err = np.linalg.norm(np.c_[found.img_xy, np.ones(len(found))] @ back.T - found.ref_xy, axis=1)
    assert len(found) > 50 and found.counts == {"template": len(found)} and score > 0.7, (len(found), score)
    assert np.median(err) < 4.0 and err.max() < 8.0, (np.median(err), err.max())
    none, info_none = dense_alignment(image, mask, ref, rmask, box, ("sift",), template=False)
    fld, info = dense_alignment(image, mask, ref, rmask, box, ("sift",))
    assert none is None and "template" not in info_none["matches"]
    assert fld is not None and info["source"] == "template" and info["ring_ncc"] > 0.9, info
    yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
    truth = np.stack([xx, yy, np.ones_like(xx)], -1).astype(np.float64) @ back.T
    inside = mask[box.y0 : box.y1, box.x0 : box.x1]
    assert np.median(np.linalg.norm(fld.xy - truth, axis=-1)[inside]) < 0.5
    small, small_score = template_matches(image, mask, ref, rmask, box, search_factor=1.0)  # (64 px: the object is 115)
    assert len(small) == 0 and small_score < 0.5, small_score  # (only placements at half size fit; none correlates)
    whole, whole_score = template_matches(image, mask, ref, np.ones_like(rmask), box)  # (the whole photo as the reference)
    assert len(whole) == 0 and whole_score == -1.0


def test_template_placement_given_up_after_a_first_flow_round_without_detail(monkeypatch):
    """A template placement whose field, after the flow's first round, carries less of the image's
    detail than ``template_give_up`` is given up there: no field, the fallback reason of a placement
    rejected at the end, and no second flow round or polish run. On the plain object's own photo
    the placement carries the detail, so the shipped threshold keeps the field exactly as without
    the check."""
    from refine_by_align.pipelines import alignment as A

    image, mask, ref, rmask, box, _ = _plain_object_case()
    kept, info = dense_alignment(image, mask, ref, rmask, box, ("sift",))
    unchecked, _ = dense_alignment(image, mask, ref, rmask, box, ("sift",), template_give_up=None)
    assert kept is not None and info["source"] == "template" and np.array_equal(kept.xy, unchecked.xy), info
    assert kept.trust_cap == unchecked.trust_cap
    calls, real = [], A.polish_field_ecc
    monkeypatch.setattr(A, "polish_field_ecc", lambda *args, **kwargs: calls.append("polish") or real(*args, **kwargs))
    none, info_none = dense_alignment(image, mask, ref, rmask, box, ("sift",), template_give_up=1.01)  # (no detail reaches it)
    assert none is None and info_none["fallback_reason"] == "template placement without the image's detail", info_none
    assert info_none["flow"]["gave_up"] == "detail" and info_none["flow"]["detail"] < 1.01 and "rounds" not in info_none["flow"]
    assert calls == []


def test_template_give_up_leaves_point_matched_fields_alone():
    """The give-up is for template placements only: a field fitted to point matches (a bent
    object SIFT matches) is refined through every flow round and polished exactly as without it,
    even with a threshold no field reaches."""
    image, mask, ref, valid, box, _ = _bent_case(_bump())
    fld, info = dense_alignment(image, mask, ref, valid, box, ("sift",), template_give_up=1.01)
    plain, info_plain = dense_alignment(image, mask, ref, valid, box, ("sift",), template_give_up=None)
    assert fld is not None and info["source"] == "sift" and info["flow"]["kept"], info
    assert np.array_equal(fld.xy, plain.xy) and fld.trust_cap == plain.trust_cap and info["flow"] == info_plain["flow"]
    assert "gave_up" not in info["flow"]


def test_flow_gives_up_after_a_first_round_below_the_given_detail():
    """refine_field_flow with ``give_up_detail_below`` stops after its first round where the field it
    leaves carries less of the image's detail than that (the field as given, the round's info with
    "detail" and "gave_up"); at or below the round's detail every round runs as without it."""
    from refine_by_align.pipelines.correspondence import refine_field_flow

    image, mask, ref, valid, box, _ = _bent_case(_bump())
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    fld, _ = dense_alignment(image, mask, ref, valid, box, ("sift",), flow=False, polish=False)
    full, info = refine_field_flow(fld, image[window], mask[window], ref)
    first, info_first = refine_field_flow(fld, image[window], mask[window], ref, rounds=1)
    kept, info_kept = refine_field_flow(fld, image[window], mask[window], ref, give_up_detail_below=info_first["detail"] - 1e-4)
    assert info_kept == info and np.array_equal(kept.xy, full.xy) and kept.trust_cap == full.trust_cap
    given, info_given = refine_field_flow(fld, image[window], mask[window], ref, give_up_detail_below=info_first["detail"] + 1e-3)
    assert info_given["gave_up"] == "detail" and info_given["detail"] == info_first["detail"] and "rounds" not in info_given
    assert np.array_equal(given.xy, fld.xy)


def test_deepflow_runs_in_the_first_flow_round_only(monkeypatch):
    """The flow's first round computes every flow of ``flows`` (DeepFlow among them); the rounds
    after it only ``later_flows`` (shipped LATER_FLOWS: DIS and DIS on the filled image), and
    with ``later_flows=None`` every round computes them all. A name outside FLOW_METHODS is a
    ValueError."""
    import refine_by_align.pipelines.field_refinement as FR
    from refine_by_align.pipelines.correspondence import refine_field_flow

    image, mask, ref, valid, box, _ = _bent_case(_bump())
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    fld, _ = dense_alignment(image, mask, ref, valid, box, ("sift",), flow=False, polish=False, ecc=False)  # (a field the flow takes two rounds on)
    calls, real = [], FR._flow
    monkeypatch.setattr(FR, "_flow", lambda method, *args: calls.append(method) or real(method, *args))
    _, info = refine_field_flow(fld, image[window], mask[window], ref)
    n_first = len(FR.FLOWS)
    assert info["rounds"] >= 1 and len(calls) > n_first, (info, calls)  # (a second round ran)
    assert sorted(calls[:n_first]) == sorted(FR.FLOWS) and "deepflow" in calls[:n_first]
    assert "deepflow" not in calls[n_first:] and set(calls[n_first:]) == set(FR.LATER_FLOWS), calls
    calls.clear()
    refine_field_flow(fld, image[window], mask[window], ref, later_flows=None)
    rounds_run = len(calls) // n_first
    assert len(calls) == rounds_run * n_first and calls.count("deepflow") == rounds_run >= 2, calls
    with pytest.raises(ValueError, match="later_flows"):
        refine_field_flow(fld, image[window], mask[window], ref, later_flows=("dis", "raft"))


def test_template_search_coarse_to_fine_finds_the_full_grids_placement(monkeypatch):
    """The grid of rotations and scales searched coarse to fine (all of it with the object and the
    area scaled down twice more, then only the ``coarse_keep`` best at the search's own scale)
    places the plain object exactly where the whole grid at the search's scale does, with the same
    score; the search's own scale correlates only ``coarse_keep`` placements."""
    from refine_by_align.pipelines import matching
    from refine_by_align.pipelines.correspondence import template_matches

    image, mask, ref, rmask, box, _ = _plain_object_case()
    full, full_score = template_matches(image, mask, ref, rmask, box, coarse=None)
    areas, real = [], matching.masked_ncc

    def counted(area, templates, masks):
        areas.extend([area.shape] * len(templates))  # (one entry per placement correlated)
        return real(area, templates, masks)

    monkeypatch.setattr(matching, "masked_ncc", counted)
    found, score = template_matches(image, mask, ref, rmask, box, coarse=2, coarse_keep=8)
    assert score == full_score and np.array_equal(found.img_xy, full.img_xy) and np.array_equal(found.ref_xy, full.ref_xy)
    fine = max(areas)
    assert sum(a == fine for a in areas) == 8 and len(areas) > 8 and all(a[0] < fine[0] for a in areas if a != fine)


def test_masked_ncc_matches_opencvs_masked_template_matching(monkeypatch):
    """masked_ncc correlates a batch of templates with one area as cv2.matchTemplate's masked
    TM_CCOEFF_NORMED does one at a time: every score within 1e-3 of OpenCV's off the flat strip,
    the maximum at the same offset, on textured templates of several sizes with rotated masks (zero
    corners; the unrotated one found where it was cut) and on a nearly flat one (what float32
    leaves of a template's mean taken out), and the same scores computed a few templates a batch.
    A window of one flat colour scores -1, and so does every window for a template flat over its
    mask (no correlation to measure; never NaN). A template without its own mask's shape, larger
    than the area or counting no pixel, or an area that is not 8-bit grey, is a ValueError."""
    from refine_by_align.pipelines import matching
    from refine_by_align.pipelines.matching import masked_ncc

    rng = np.random.default_rng(3)
    area = cv2.GaussianBlur(rng.integers(0, 256, (70, 83)).astype(np.uint8), (0, 0), 1.5)
    area[:, :20] = 140  # a flat strip, wider than every template
    templates, masks = [], []
    for size, angle in [(12, 0), (17, 30), (24, 45), (31, 70), (16, 10)]:
        y, x = rng.integers(0, 70 - 40), rng.integers(20, 83 - 40)
        t = np.ascontiguousarray(area[y : y + size, x : x + size + 3])
        M = cv2.getRotationMatrix2D(((size + 3) / 2, size / 2), angle, 1.0)
        masks.append(cv2.warpAffine(np.full(t.shape, 255, np.uint8), M, t.shape[::-1], flags=cv2.INTER_NEAREST))
        templates.append(cv2.warpAffine(t, M, t.shape[::-1], flags=cv2.INTER_LINEAR))
    nearly_flat = np.full((14, 15), 201, np.uint8)
    nearly_flat[rng.integers(0, 14, 12), rng.integers(0, 15, 12)] = 204  # (a few specks: variance about 0.6 grey levels squared)
    templates.append(nearly_flat), masks.append(np.full(nearly_flat.shape, 255, np.uint8))
    ours = masked_ncc(area, templates, masks)
    for t, m, got in zip(templates, masks, ours):
        want = cv2.matchTemplate(area, t, cv2.TM_CCOEFF_NORMED, mask=m)
        on_strip = np.zeros(want.shape, bool)
        on_strip[:, : max(0, 21 - t.shape[1])] = True  # (windows wholly on the flat strip)
        assert got.shape == want.shape and got.dtype == np.float32 and np.isfinite(got).all()
        assert (got[on_strip] == -1.0).all() and (got[~on_strip] > -1.0).all()
        assert np.abs(got - want)[~on_strip].max() < 1e-3, np.abs(got - want)[~on_strip].max()
        assert np.argmax(got) == np.argmax(np.where(on_strip | ~np.isfinite(want), -1.0, want))
    assert ours[0].max() > 0.99  # (the unrotated template: cut from the area, found where it was cut)
    flat = masked_ncc(area, [np.full((10, 12), 90, np.uint8)], [np.full((10, 12), 255, np.uint8)])[0]
    assert flat.shape == (61, 72) and (flat == -1.0).all()

    monkeypatch.setattr(matching, "NCC_BATCH_VALUES", 2 * 72 * 90)  # (two templates a batch: 72 x 90 is the transform's size)
    batched = masked_ncc(area, templates, masks)
    assert all(np.array_equal(x, y) for x, y in zip(batched, ours)) and len(batched) == len(ours)
    assert masked_ncc(area, [], []) == []
    with pytest.raises(ValueError, match="mask of its own shape"):
        masked_ncc(area, templates[:1], [masks[0][1:]])
    with pytest.raises(ValueError, match="does not fit"):
        masked_ncc(area[:10, :10], templates[:1], masks[:1])
    with pytest.raises(ValueError, match="no pixel"):
        masked_ncc(area, templates[:1], [np.zeros_like(masks[0])])
    with pytest.raises(ValueError, match="8-bit grey"):
        masked_ncc(area.astype(np.float32) / 255.0, templates[:1], masks[:1])
    with pytest.raises(ValueError, match="1 templates but 2 masks"):
        masked_ncc(area, templates[:1], masks[:2])


def test_template_search_reads_the_placement_as_x_then_y():
    """The plain object searched for from a crop box moved sideways: its best placement lies at
    another column of the search area but the same row, and the matches still land on the object
    (a placement read as (row, column) instead of (x, y) would put them tens of pixels off)."""
    from refine_by_align.pipelines.correspondence import template_matches

    image, mask, ref, rmask, box, A = _plain_object_case()
    back = cv2.invertAffineTransform(A)  # image -> reference
    for dx in (0, 14, -10):
        moved = Box(box.x0 + dx, box.y0, box.x1 + dx, box.y1)
        found, score = template_matches(image, mask, ref, rmask, moved)
        err = np.linalg.norm(np.c_[found.img_xy, np.ones(len(found))] @ back.T - found.ref_xy, axis=1)
        assert len(found) > 50 and score > 0.7 and np.median(err) < 4.0, (dx, len(found), score, np.median(err))


def test_template_search_places_a_mirrored_reference_too():
    """A plain object whose reference is the mirror image of its view in the picture (the affine
    cases' random transforms include mirroring): the search in the reference as given finds no
    placement that correlates, the mirrored one does, and the field built on it is as close as for
    the reference as given; without ``mirror`` there is no field."""
    image, mask, ref, rmask, box, A = _plain_object_case()
    w = ref.shape[1]
    mref, mmask = np.ascontiguousarray(ref[:, ::-1]), np.ascontiguousarray(rmask[:, ::-1])
    fld, info = dense_alignment(image, mask, mref, mmask, box, ("sift",))
    assert fld is not None and info["source"] == "template" and info["mirrored"] and info["ring_ncc"] > 0.9, info
    back = cv2.invertAffineTransform(A)  # image -> the reference as given; mirrored: x -> w - 1 - x
    yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
    truth = np.stack([xx, yy, np.ones_like(xx)], -1).astype(np.float64) @ back.T
    truth[..., 0] = (w - 1) - truth[..., 0]
    inside = mask[box.y0 : box.y1, box.x0 : box.x1]
    assert np.median(np.linalg.norm(fld.xy - truth, axis=-1)[inside]) < 0.5
    none, info_none = dense_alignment(image, mask, mref, mmask, box, ("sift",), mirror=False)
    assert none is None and info_none.get("template_score", 1.0) < 0.7, info_none


def test_ring_is_the_band_between_two_dilations_remembered_read_only():
    """ring() gives the band between ``inner`` and ``outer`` px outside the mask, remembered by the
    mask's content (an alignment asks for the same rings about ten times): a mask with the same
    pixels gets an equal band, a changed one its own, and the band cannot be written to."""
    mask = np.zeros((90, 100), bool)
    mask[30:60, 35:70] = True
    disk = lambda r: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    u8 = mask.astype(np.uint8)
    expected = (cv2.dilate(u8, disk(12)) > 0) & ~(cv2.dilate(u8, disk(2)) > 0)
    band = ring(mask, 2, 12)
    assert np.array_equal(band, expected) and band.dtype == bool
    assert not band.flags.writeable
    with pytest.raises(ValueError):
        band[0, 0] = True
    assert np.array_equal(ring(mask.copy(), 2, 12), expected)  # the same pixels, another array
    moved = np.roll(mask, 5, axis=1)
    assert np.array_equal(ring(moved, 2, 12), np.roll(expected, 5, axis=1))
    assert not np.array_equal(ring(mask, 2, 8), expected)  # the widths are part of what is remembered


def test_warp_agreement_on_the_rings_box_alone_is_the_whole_boxs():
    """warp_agreement warps only the ring's bounding box (it reads nothing else); warp_fill, which
    needs the whole patch, warps the box: the two agreements are equal to the last bit, with the
    ring cut to the reference object and where too little of it is on the object (the whole ring)."""
    image, mask, ref, valid, H = _case(_sim())
    box = Box(40, 40, 220, 220)
    m = _lattice_matches(H, 50, 210)
    fld = dense_field(fit_field(m, focus=box), box, valid)
    image_box, mask_box = image[40:220, 40:220], mask[40:220, 40:220]
    band = ring(mask_box, 2, 12)
    ys, xs = np.nonzero(band)
    assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) < 0.8 * band.size  # a real cut
    from dataclasses import replace

    for f in (fld, replace(fld, on_object=np.zeros_like(fld.on_object))):  # (the second: the whole ring)
        assert warp_agreement(image_box, mask_box, ref, f) == warp_fill(image_box, mask_box, ref, f).ncc


def test_candidate_fields_without_confidence_rank_the_same_and_get_it_later():
    """A candidate only ranked is built without its confidence (the nearest-match search is most of
    dense_field's time); warp_agreement does not read it, ECC's agreement argument spares a second
    measurement, and with_confidence adds exactly what dense_field would have given."""
    image, mask, ref, valid, H = _case(_sim())
    box = Box(60, 60, 200, 200)
    m = _lattice_matches(H, 70, 190)
    fit = fit_field(m, focus=box)
    full, bare = dense_field(fit, box, valid), dense_field(fit, box, valid, confidence=False)
    assert bare.confidence is None and full.confidence is not None and 0.0 < float(full.confidence.max()) <= 1.0
    assert np.array_equal(bare.xy, full.xy) and np.array_equal(bare.on_object, full.on_object)
    image_box, mask_box = image[60:200, 60:200], mask[60:200, 60:200]
    ncc = warp_agreement(image_box, mask_box, ref, bare)
    assert ncc == warp_agreement(image_box, mask_box, ref, full)
    added = with_confidence(bare)
    assert np.array_equal(added.confidence, full.confidence) and added.confidence.dtype == np.float32
    assert with_confidence(full) is full  # one that has it is returned as is
    # the functions that read the confidence take a ranked-only field too, with the same results
    wa, wb = warp_fill(image_box, mask_box, ref, bare), warp_fill(image_box, mask_box, ref, full)
    assert np.array_equal(wa.weight, wb.weight) and np.array_equal(wa.patch, wb.patch)
    fa, _ = refine_field_flow(bare, image_box, mask_box, ref)
    fb, _ = refine_field_flow(full, image_box, mask_box, ref)
    assert np.array_equal(fa.xy, fb.xy) and np.array_equal(fa.confidence, fb.confidence)
    # ECC given the agreement the ranking measured refines exactly as when it measures it itself
    # (a field 8 px off, which ECC does move)
    wrong = Matches(m.img_xy, m.ref_xy + np.float32([8.0, 0.0]), m.weight, m.counts)
    start = dense_field(fit_field(wrong, focus=box), box, valid, confidence=False)
    own = warp_agreement(image_box, mask_box, ref, start)
    a, changed_a = refine_field_ecc(start, image_box, mask_box, ref)
    b, changed_b = refine_field_ecc(start, image_box, mask_box, ref, agreement=own)
    assert changed_a and changed_b and np.array_equal(a.xy, b.xy)
    # a wrong agreement passed in is believed: ECC then refuses a refinement that does not beat it
    _, changed_c = refine_field_ecc(start, image_box, mask_box, ref, agreement=1.0)
    assert not changed_c


def test_reference_features_are_remembered_per_reference_and_never_stale(monkeypatch):
    """A second match against the same reference reuses its matcher features (same matches); a changed
    reference or mask is described anew (the cache is keyed by content, not by object)."""
    from refine_by_align.pipelines import matching as C

    calls = []

    def counting(model, rgb, mask, box=None, max_side=384, max_keypoints=1024):
        calls.append(rgb.shape)
        k = np.float32([[10, 10], [20, 30], [40, 12]])
        d = np.eye(3, 8, dtype=np.float32)
        return k, d, np.ones(3, np.float32)

    C.clear_reference_cache()
    ref = _texture(64, 64)
    refmask = np.ones((64, 64), bool)
    args = (None, ref, refmask, False)
    monkeypatch.setattr(C, "aliked_features", counting)  # count the matcher passes
    try:
        a = C.aliked_reference_features(*args)
        b = C.aliked_reference_features(*args)
        assert len(calls) == 1 and np.array_equal(a[0], b[0])
        assert not a[0].flags.writeable and not a[1].flags.writeable  # (shared by every later match)
        changed = ref.copy()
        changed[0, 0] ^= 1
        C.aliked_reference_features(None, changed, refmask, False)
        other_mask = refmask.copy()
        other_mask[:5] = False
        C.aliked_reference_features(None, ref, other_mask, False)
        C.aliked_reference_features(None, ref, refmask, True)  # the mirrored orientation
        assert len(calls) == 4
        C.clear_reference_cache()
        C.aliked_reference_features(*args)
        assert len(calls) == 5
    finally:
        C.clear_reference_cache()


def test_sift_features_are_remembered_and_match_a_fresh_computation(monkeypatch):
    """SIFT's features of a picture are described once (the image's side serves both orientations
    of the reference, a reference seen before is not described again), are the same values as a
    fresh computation, are read-only, and a changed picture or mask is described anew; the flipped
    matching's positions never leak into the memory."""
    import refine_by_align.pipelines.matching as C

    image, mask, ref, valid, H = _case(_sim())
    C.clear_reference_cache()
    fresh = sift_matches(image, mask, ref, valid)
    fresh_flip = sift_matches(image, mask, ref, valid, flip=True)
    calls = []
    real = cv2.SIFT_create

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(C.cv2, "SIFT_create", counting)
    try:
        again = sift_matches(image, mask, ref, valid)
        again_flip = sift_matches(image, mask, ref, valid, flip=True)
        assert calls == []  # both pictures remembered (the mirrored reference is matched from the reference's descriptors)
        for x, y in ((fresh, again), (fresh_flip, again_flip)):
            assert np.array_equal(x.img_xy, y.img_xy) and np.array_equal(x.ref_xy, y.ref_xy) and np.array_equal(x.weight, y.weight)
        pts, desc = C._sift_features(ref, valid, 4000, 1024)
        assert not pts.flags.writeable and not desc.flags.writeable
        changed = ref.copy()
        changed[0, 0] ^= 1
        sift_matches(image, mask, changed, valid)
        assert len(calls) == 1  # the changed reference only
        sift_matches(image, mask, ref, valid & (np.arange(valid.shape[1]) < valid.shape[1] - 4))
        assert len(calls) == 2  # another reference mask
        C.clear_reference_cache()
        monkeypatch.setattr(C.cv2, "SIFT_create", real)
        cold = sift_matches(image, mask, ref, valid)
        assert np.array_equal(cold.ref_xy, fresh.ref_xy)
    finally:
        C.clear_reference_cache()


@pytest.mark.parametrize("size", [(240, 240), (900, 1300)])
def test_sift_in_a_mask_from_the_whole_picture_is_sift_with_the_mask(size):
    """SIFT described on the whole picture (sift_whole, ahead of the object's estimate) and cut to a
    detection mask gives the keypoints and descriptors SIFT described with that mask gives, bit for
    bit and in order (OpenCV keeps its best keypoints before it applies the mask): on a picture
    under the described size and on one over it (1300 px, described at 1024; over 4,000 keypoints
    there, so the cap counts)."""
    from refine_by_align.pipelines import matching as C

    h, w = size
    rgb = _texture(h, w, seed=5)
    if size != (240, 240):  # (fine texture everywhere: thousands of keypoints)
        rgb = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2.0)
        rgb = cv2.normalize(rgb, None, 0, 255, cv2.NORM_MINMAX)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h * 0.45) / (h * 0.35)) ** 2 + ((xx - w * 0.5) / (w * 0.3)) ** 2 < 1.0  # an object's outline
    C.clear_reference_cache()
    try:
        direct = C._sift_features(rgb, blob, C.SIFT_MAX_FEATURES, C.SIFT_MAX_SIDE)
        C.clear_reference_cache()
        raw, _, _ = C.sift_whole(rgb)
        derived = C._sift_features(rgb, blob, C.SIFT_MAX_FEATURES, C.SIFT_MAX_SIDE)  # (from the whole picture's)
        assert len(derived[0]) == len(direct[0]) < len(raw)
        assert np.array_equal(derived[0], direct[0]) and np.array_equal(derived[1], direct[1])
        if size != (240, 240):
            assert len(raw) >= C.SIFT_MAX_FEATURES  # (the cap reached: OpenCV keeps ties at it)
    finally:
        C.clear_reference_cache()


def test_mirrored_sift_is_what_describing_the_mirrored_picture_gives():
    """The reference's SIFT descriptors rearranged (mirrored_sift) are the mirrored picture's at the
    mirrored keypoints: on the keypoints both pictures find (OpenCV's positions mirror to
    W - 0.5 - x, orientations to 180 - theta), the median cosine is above 0.999, where the
    descriptors as they are give well under that; mirroring twice gives them back."""
    from refine_by_align.pipelines.correspondence import mirrored_sift

    img = cv2.cvtColor(_texture(200, 240, seed=4), cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(nfeatures=4000)
    k1, d1 = sift.detectAndCompute(img, None)
    k2, d2 = sift.detectAndCompute(np.ascontiguousarray(img[:, ::-1]), None)
    p1 = np.float32([k.pt for k in k1])
    a1 = np.float32([k.angle for k in k1])
    mirrored, plain, sums = [], [], []
    cos = lambda x, y: float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    dm = mirrored_sift(d1)
    for k, d in zip(k2, d2):
        gap = np.abs(p1[:, 0] - (img.shape[1] - 0.5 - k.pt[0])) + np.abs(p1[:, 1] - k.pt[1])
        turn = np.abs((a1 - (180.0 - k.angle)) % 360.0)
        j = int(np.argmin(gap + 0.01 * np.minimum(turn, 360.0 - turn)))
        if gap[j] < 0.6 and min(turn[j], 360.0 - turn[j]) < 2.0:
            mirrored.append(cos(dm[j], d))
            sums.append(p1[j, 0] + k.pt[0])
            plain.append(cos(d1[j], d))
    assert len(mirrored) >= 0.6 * min(len(k1), len(k2)), (len(mirrored), len(k1), len(k2))
    assert np.median(mirrored) > 0.999 and np.median(plain) < 0.95, (np.median(mirrored), np.median(plain))
    assert np.array_equal(mirrored_sift(dm), d1) and dm.flags.c_contiguous
    # OpenCV's keypoints sit a quarter pixel right of the feature: mirrored, x goes to W - 0.5 - x
    # (not W - 1 - x), which sift_matches(flip=True) corrects the reference's positions by
    assert abs(np.median(sums) - (img.shape[1] - 0.5)) < 0.05, np.median(sums)


class _StandInImage:
    """Stands in for AlikedImage (as aliked_image_side makes it): remembers how many keypoints each features() call asked for."""

    asked: list = []

    def __init__(self, *args, **kwargs):
        pass

    def features(self, n=None):
        self.asked.append(n)
        return ("best", n) if n is not None else ("all", None)


def _grid_outside(mask):
    src = np.stack(np.meshgrid(np.arange(30, 211, 12.0), np.arange(30, 211, 12.0)), -1).reshape(-1, 2)
    return src[~mask[src[:, 1].astype(int), src[:, 0].astype(int)]]


@pytest.mark.parametrize("solid", [True, False, "consistent but wrong"])
def test_mirrored_aliked_pass_only_when_the_reference_as_given_does_not_fit(monkeypatch, solid):
    """ALIKED runs on the mirrored reference only when the reference as given gave no fit on 30+
    agreeing matches at ring correlation >= 0.5 (a stand-in matcher returns the true mapping, junk,
    or a consistent mapping 40 px off: many inliers, but its warp disagrees with the image)."""
    from refine_by_align.pipelines import alignment as A

    image, mask, ref, valid, H = _case(_sim())
    src = _grid_outside(mask)
    rng = np.random.default_rng(0)
    flips = []

    def matcher(image_, mask_, reference, reference_mask, model, flip=False, image_features=None, min_similarity=None):
        if min_similarity is None:  # the first, strict matching (the loose one is tested below)
            flips.append(flip)
        if flip or not solid:
            dst = rng.uniform(0, 240, src.shape)
        else:
            dst = _apply(H, src) + (0.0 if solid is True else np.array([40.0, 0.0]))
        return Matches(src.astype(np.float32), dst.astype(np.float32), np.ones(len(src), np.float32), {"aliked": len(src)})

    monkeypatch.setattr(A, "aliked_image_side", _StandInImage)
    monkeypatch.setattr(A, "aliked_matches", matcher)
    fld, info = dense_alignment(image, mask, ref, valid, zoom_box(mask, 2.0, 64), sources=("aliked",), aliked=object())
    if solid is True:
        assert flips == [False] and info["source"] == "aliked" and not info["mirrored"] and info["inliers"] >= 30
    else:
        assert flips == [False, True]
        if solid:  # the wrong mapping was fitted on many inliers, yet did not stop the search
            assert info["candidates"]["aliked"] < 0.5


def test_reference_passes_are_computed_ahead_once(monkeypatch):
    """The reference's ALIKED pass in each orientation the strict matching tries runs on a thread of
    its own, beside the image's pass and the first orientation's matching, and is then read
    remembered: each orientation is described exactly once, and the candidates are those of the
    alignment without it (one worker thread: no pass ahead)."""
    import threading

    import refine_by_align.threads
    from refine_by_align.pipelines import alignment as A
    from refine_by_align.pipelines import matching as C

    image, mask, ref, valid, _ = _case(_sim())
    rng = np.random.default_rng(0)
    src = _grid_outside(mask).astype(np.float32)
    di = rng.normal(size=(len(src), 16)).astype(np.float32)
    di /= np.linalg.norm(di, axis=1, keepdims=True)
    passes, where, lock = [], {}, threading.Lock()

    class ImageSide:  # the image's keypoints and descriptors, fixed
        def __init__(self, *args, **kwargs):
            pass

        def features(self, n=None):
            return src, di, np.ones(len(src), np.float32)

    def reference_side(model, rgb, mask_, box=None, max_side=384, max_keypoints=1024):
        with lock:
            side = "mirrored" if np.array_equal(rgb, ref[:, ::-1]) else "as given" if np.array_equal(rgb, ref) else "other"
            passes.append(side)
            where[side] = threading.current_thread() is threading.main_thread()
        r = np.random.default_rng(len(rgb) + int(rgb[0, 0, 0]))  # (descriptors unlike the image's: nothing fits)
        d = r.normal(size=(50, 16)).astype(np.float32)
        return r.uniform(0, 200, (50, 2)).astype(np.float32), d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(50, np.float32)

    monkeypatch.setattr(A, "aliked_image_side", ImageSide)
    monkeypatch.setattr(C, "aliked_features", reference_side)
    box = zoom_box(mask, 2.0, 64)
    runs = {}
    for threads in (2, 1):
        for module in (A, refine_by_align.threads):  # (the pass ahead, and every step side by side)
            monkeypatch.setattr(module, "worker_threads", lambda threads=threads: threads)
        C.clear_reference_cache()
        passes.clear()
        try:
            _, info = dense_alignment(image, mask, ref, None, box, sources=("aliked",), aliked=object(), loose_similarity=None, template=False)
        finally:
            C.clear_reference_cache()
        assert sorted(passes) == ["as given", "mirrored"]  # each orientation described once (the pass ahead reused)
        assert where == {"as given": threads == 1, "mirrored": threads == 1}  # (ahead, on a thread of their own, where there are two)
        runs[threads] = info
    assert runs[2]["matches"] == runs[1]["matches"] and runs[2]["candidates"] == runs[1]["candidates"]
    assert set(runs[2]["matches"]) == {"aliked", "aliked/mirrored"}


@pytest.mark.parametrize("loose", [0.6, None])
def test_loose_aliked_matching_only_where_the_strict_one_finds_no_solid_fit(monkeypatch, loose):
    """A colour-changed reference, or a plain object on a textured ground, can leave the strict
    ALIKED matching (the image's best-scored keypoints, similarity >= 0.75) without a fit: the
    matching is then run again on all the image's keypoints at a looser similarity, and its
    candidates compete with the rest. A stand-in matcher gives junk to the strict matching and the
    true mapping to the loose one on all keypoints; ``loose_similarity=None`` turns the second off."""
    from refine_by_align.pipelines import alignment as A

    image, mask, ref, valid, H = _case(_sim())
    src = _grid_outside(mask)
    rng = np.random.default_rng(0)
    calls = []

    def matcher(image_, mask_, reference, reference_mask, model, flip=False, image_features=None, min_similarity=None):
        calls.append((image_features[0], min_similarity, flip))
        right = image_features[0] == "all" and min_similarity == 0.6 and not flip
        dst = _apply(H, src) if right else rng.uniform(0, 240, src.shape)
        return Matches(src.astype(np.float32), dst.astype(np.float32), np.ones(len(src), np.float32), {"aliked": len(src)})

    _StandInImage.asked = []
    monkeypatch.setattr(A, "aliked_image_side", _StandInImage)
    monkeypatch.setattr(A, "aliked_matches", matcher)
    box = zoom_box(mask, 2.0, 64)
    fld, info = dense_alignment(image, mask, ref, valid, box, sources=("aliked",), aliked=object(), loose_similarity=loose)
    strict = [(f, m, fl) for f, m, fl in calls if m is None]
    assert strict == [("best", None, False), ("best", None, True)]  # both orientations, the best keypoints
    if loose is None:
        assert fld is None and len(calls) == 2
        return
    assert [c for c in calls if c[1] is not None] == [("all", 0.6, False), ("all", 0.6, True)]
    assert _StandInImage.asked == [A.ALIKED_KEYPOINTS, None]
    assert info["source"] == "aliked-loose" and not info["mirrored"]
    ys, xs = np.nonzero(mask[box.y0 : box.y1, box.x0 : box.x1])
    want = _apply(H, np.c_[xs + box.x0, ys + box.y0].astype(np.float64))
    assert np.abs(fld.xy[ys, xs] - want).max() < 0.5


def test_aliked_image_describes_on_demand_as_all_at_once():
    """AlikedImage describes its best keypoints first and the rest only when asked; the descriptors
    are those detect_and_describe gives all at once (a random ALIKED; no weights needed)."""
    import torch

    from refine_by_align.models.aliked import ALIKED, ALIKEDConfig, detect_and_describe
    from refine_by_align.pipelines.correspondence import AlikedImage, aliked_features

    torch.manual_seed(0)
    model = ALIKED(ALIKEDConfig(8, 16, 32, 64, 64, 3, 16)).eval()
    rgb = _texture(96, 128, seed=3)
    box = Box(16, 8, 112, 88)
    img = AlikedImage(model, rgb, None, box, max_side=384, max_keypoints=40)
    k10, d10, s10 = img.features(10)
    assert len(img._desc) == 10  # only the best ten were described
    k, d, s = img.features()
    assert len(img) == len(k) == 40 and len(img._desc) == 40
    assert np.array_equal(k[:10], k10) and np.array_equal(d[:10], d10) and np.array_equal(s[:10], s10)
    kw, dw, sw = detect_and_describe(model, np.ascontiguousarray(rgb[8:88, 16:112]), max_keypoints=40)
    np.testing.assert_allclose(k, kw + [16, 8], atol=1e-4)  # full-image coordinates
    np.testing.assert_allclose(d, dw, atol=1e-5)
    ka, da, _ = aliked_features(model, rgb, None, box, 384, 40)
    assert np.array_equal(ka, k)
    np.testing.assert_allclose(da, d, atol=1e-5)  # (batched in one call: equal up to rounding)


def test_the_image_side_made_ahead_is_the_one_made_in_line_and_waited_for(monkeypatch):
    """image_features_ahead describes the image's side on a thread of its own (SIFT of the image
    outside the grown mask; ALIKED around the crop with its best keypoints described), and the
    alignment's calls find it: the same values, bit for bit, as made in line on the caller's
    thread (each ALIKED pass runs single-threaded wherever it runs: ALIKED_THREADS), made once,
    and waited for while it is being made (a random ALIKED; no weights needed)."""
    import threading
    import time

    import torch

    from refine_by_align.models.aliked import ALIKED, ALIKEDConfig
    from refine_by_align.pipelines import matching as C

    torch.manual_seed(0)
    model = ALIKED(ALIKEDConfig(8, 16, 32, 64, 64, 3, 16)).eval()
    image, mask, _, _, _ = _case(_sim())
    box = zoom_box(mask, 2.0, 64)
    args = (model, image, C.outside_mask(mask, 4), C.grow_box(box, 3.0))
    kw = dict(max_keypoints=2 * C.ALIKED_KEYPOINTS)
    C.clear_reference_cache()
    try:
        in_line = C.AlikedImage(*args, **kw)  # (the caller's thread, torch's own thread setting around it)
        want = in_line.features(C.ALIKED_KEYPOINTS)
        sift_want = C._sift_features(image, C.outside_mask(mask, 4), C.SIFT_MAX_FEATURES, C.SIFT_MAX_SIDE)
        C.clear_reference_cache()
        made, release = [], threading.Event()
        real = C.AlikedImage

        class Held(real):  # made on the ahead thread, held there until the caller waits for it
            def __init__(self, *a, **k):
                made.append(threading.current_thread().name)
                assert release.wait(10), "hung"
                super().__init__(*a, **k)

        monkeypatch.setattr(C, "AlikedImage", Held)
        job = C.image_features_ahead(image, mask, box, model)
        deadline = time.monotonic() + 20
        while not made:  # (until the ahead thread is making it)
            assert time.monotonic() < deadline, "hung"
            time.sleep(0.001)
        waiter = threading.Thread(target=lambda: made.append(C.aliked_image(*args, **kw)))
        waiter.start()
        (pending,) = C._ALIKED_IMAGES._pending.values()
        while not pending._condition._waiters:  # (until the caller waits for it)
            assert time.monotonic() < deadline, "the caller never waited"
            time.sleep(0.001)
        release.set()
        waiter.join(20)
        job.result(20)
        side = C.aliked_image(*args, **kw)  # remembered
        assert made[0].startswith("refine-by-align-ahead") and made[1] is side and len(made) == 2  # made once, there
        got = side.features(C.ALIKED_KEYPOINTS)
        for a, b in zip(want, got):
            assert np.array_equal(a, b)  # bit for bit
        calls = []
        monkeypatch.setattr(C.cv2, "SIFT_create", lambda *a, **k: calls.append(1))
        sift_got = C._sift_features(image, C.outside_mask(mask, 4), C.SIFT_MAX_FEATURES, C.SIFT_MAX_SIDE)
        assert calls == [] and np.array_equal(sift_got[0], sift_want[0]) and np.array_equal(sift_got[1], sift_want[1])
    finally:
        C.clear_reference_cache()


def test_ecc_candidates_refined_side_by_side_as_one_after_another():
    """best_after_ecc (threads) picks the same field as refining the leading candidates in turn."""
    from refine_by_align.pipelines.alignment import _Candidates

    image, mask, ref, valid, H = _case(_sim())
    box = Box(60, 60, 200, 200)
    window = (slice(60, 200), slice(60, 200))
    src = np.stack(np.meshgrid(np.arange(66, 196, 9.0), np.arange(66, 196, 9.0)), -1).reshape(-1, 2)
    pool = _Candidates(image[window], mask[window], ref, valid, box, 15)
    for k, off in enumerate((0.0, 2.5, -4.0)):  # three candidates, two of them off by a few pixels
        m = Matches(src.astype(np.float32), (_apply(H, src) + off).astype(np.float32), np.ones(len(src), np.float32), {"sift": len(src)})
        pool.consider(f"c{k}", False, m)
    best, changed = pool.best_after_ecc(3)
    ranked = []
    for c in sorted(pool.items, key=pool.score, reverse=True)[:3]:
        f2, ch = refine_field_ecc(c[4], image[window], mask[window], ref, matches=c[5])
        n2 = warp_fill(image[window], mask[window], ref, f2).ncc if ch else c[0]
        ranked.append(((n2, *c[1:4], f2, c[5]), ch))
    want, want_changed = max(ranked, key=lambda r: pool.score(r[0]))
    assert best[2] == want[2] and changed == want_changed and best[0] == want[0]
    assert np.array_equal(best[4].xy, want[4].xy)


def _wave(amplitude):
    """A smooth bend over the whole picture: up to ``amplitude`` px, periods of 2 pi x 60 / 70 px."""
    return lambda x, y: np.stack([amplitude * np.sin(y / 60.0), amplitude * np.cos(x / 70.0)], -1)


def _bump(amplitude=5.0, sigma=25.0, centre=(122.0, 120.0)):
    """A local bend around the mask (a Gaussian bump of displacement): the matches around it see
    little of it, so the spline through them leaves a residual of a pixel or two inside."""
    cx, cy = centre

    def d(x, y):
        g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        return np.stack([amplitude * g, -0.5 * amplitude * g], -1)

    return d


def _bent_case(displacement=None):
    """(image, mask, reference, valid, box, truth): the reference is the image bent by a smooth
    displacement d (reference(q) = image(q - d(q)); default ``_wave(3)``), and ``truth`` (h, w, 2)
    the true reference position of each pixel p of ``box`` (q = p + d(q), solved by iteration)."""
    d = _wave(3.0) if displacement is None else displacement
    h = w = 240
    image = _texture(h, w, seed=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dq = d(xx, yy)
    ref = cv2.remap(image, xx - dq[..., 0], yy - dq[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    valid = np.ones((h, w), bool)
    mask = np.zeros((h, w), bool)
    mask[100:140, 95:150] = True
    box = Box(60, 60, 200, 200)
    p = np.stack([xx[60:200, 60:200], yy[60:200, 60:200]], -1)
    q = p.copy()
    for _ in range(30):
        q = p + d(q[..., 0], q[..., 1])
    return image, mask, ref, valid, box, q.astype(np.float32)


def _identity_field(box):
    """Each pixel of ``box`` at its own position on the reference, fully confident, on the object."""
    from refine_by_align.pipelines.correspondence import DenseField

    yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)
    return DenseField(box, np.stack([xx, yy], -1), np.ones(xx.shape, np.float32), np.ones(xx.shape, bool))


def test_flow_refinement_removes_a_smooth_residual_the_spline_missed():
    """A field that is the identity, 1-3 px off a bent reference everywhere, is brought to within a
    fraction of a pixel inside the mask by the optical flow carried in from around it, and the
    check on the held-out band keeps it."""
    from refine_by_align.pipelines.correspondence import refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start = _identity_field(box)
    inside = mask[window]
    before = np.linalg.norm(start.xy - truth, axis=-1)[inside]
    fld, info = refine_field_flow(start, image[window], inside, ref, detail_trust=None)
    after = np.linalg.norm(fld.xy - truth, axis=-1)[inside]
    assert info["kept"] and info["ncc_flow"] > info["ncc"], info
    assert np.median(before) > 2.0 and np.median(after) < 0.6, (np.median(before), np.median(after))
    # fitted on the ring its trust is measured on: trusted at most as much as before the flow
    # (detail_trust=None; the shipped setting may raise it, test_flow_refined_own_photo_...)
    assert start.trust_cap == 1.0 and fld.trust_cap == warp_fill(image[window], inside, ref, start).ncc < 1.0
    far = np.ones_like(inside)
    far[10:110, 5:120] = False  # beyond the flow's reach of the mask (28 px, the box around it) the field is unchanged
    assert np.array_equal(fld.xy[far], start.xy[far])


def test_flows_see_only_a_window_around_the_mask():
    """Each flow of a round is computed on the box of the mask grown by grow + check_px + reach +
    FLOW_CONTEXT px (48 px at the defaults), not on the whole crop: on a crop that is the whole
    240 px picture, repainting it beyond that window (another texture in the top, bottom and right
    strips) leaves the refined field bit-identical; a change inside the window's context does move
    it (what the flows see there counts)."""
    from refine_by_align.pipelines.correspondence import FLOW_CONTEXT, refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case()
    whole = Box(0, 0, 240, 240)
    start = _identity_field(whole)
    fld, info = refine_field_flow(start, image, mask, ref, detail_trust=None)
    assert info["kept"] and FLOW_CONTEXT == 16
    other = _texture(240, 240, seed=11)
    far = image.copy()  # the mask is rows 100..139, columns 95..149: the window ends 48 px beyond
    far[:45], far[195:], far[:, 205:] = other[:45], other[195:], other[:, 205:]
    fld_far, info_far = refine_field_flow(start, far, mask, ref, detail_trust=None)
    assert info_far == info and np.array_equal(fld_far.xy, fld.xy) and np.array_equal(fld_far.on_object, fld.on_object)
    near = image.copy()  # 4 rows inside the window, 40 px from the mask (beyond the rings the check reads)
    near[56:60, 60:190] = other[56:60, 60:190]
    fld_near, _ = refine_field_flow(start, near, mask, ref, detail_trust=None)
    assert not np.array_equal(fld_near.xy, fld.xy)


def test_a_settled_band_runs_no_flow(monkeypatch):
    """Where the warp already agrees with the image on the held-out band within FLOW_SETTLED of 1
    (the reference is the image itself and the field the identity), the round computes no flow and
    says so; with the rule off the three flows run and the round is refused: the same field."""
    from refine_by_align.pipelines import field_refinement as corr

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start, inside = _identity_field(box), mask[window]
    calls = []
    real = corr._flow
    monkeypatch.setattr(corr, "_flow", lambda method, *a: calls.append(method) or real(method, *a))
    settled, info = corr.refine_field_flow(start, image[window], inside, image, detail_trust=None)
    assert info["settled"] and not info["kept"] and info["ncc"] > 1 - corr.FLOW_SETTLED and calls == []
    monkeypatch.setattr(corr, "FLOW_SETTLED", 0.0)
    run, info_run = corr.refine_field_flow(start, image[window], inside, image, detail_trust=None)
    assert sorted(calls) == sorted(corr.FLOWS) and not info_run["kept"] and "settled" not in info_run
    assert np.array_equal(settled.xy, start.xy) and np.array_equal(run.xy, start.xy)


def test_two_flows_the_round_takes_the_one_the_held_out_band_prefers():
    """With DIS and DeepFlow each round takes the flow whose carried values predict the held-out
    band better (the round says which it took), and that agreement is at least DIS's alone; on a
    textured 3 px bend the field inside the mask stays under 0.6 px and within a tenth of a pixel
    of DIS's (on this synthetic texture the two are close; on the validation photos DeepFlow is
    often much closer, MODEL_CARD.md, "Two flows"); flows=("dis",) is DIS alone; an unknown flow is
    refused by name."""
    from refine_by_align.pipelines.correspondence import FLOW_METHODS, FLOWS, refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start, inside = _identity_field(box), mask[window]
    both, info = refine_field_flow(start, image[window], inside, ref, detail_trust=None, flows=("dis", "deepflow"))
    dis, info_dis = refine_field_flow(start, image[window], inside, ref, detail_trust=None, flows=("dis",))
    assert FLOWS[:2] == ("dis", "deepflow") and info["flow"] in FLOW_METHODS and info_dis["flow"] == "dis"
    err = lambda f: float(np.median(np.linalg.norm(f.xy - truth, axis=-1)[inside]))
    assert info["ncc_flow"] >= info_dis["ncc_flow"]
    assert err(both) < 0.6 and err(both) <= err(dis) + 0.1, (err(both), err(dis))
    if info["flow"] == "dis":  # (DeepFlow did not predict the band better: the same field)
        assert np.array_equal(both.xy, dis.xy)
    with pytest.raises(ValueError, match="flows"):
        refine_field_flow(start, image[window], inside, ref, flows=("raft",))


def test_artifact_filled_only_inside_the_grown_mask():
    """The "dis-filled" flow's picture: the grey image as given outside the mask grown by 1 px;
    inside, Telea's continuation of the ring around it (here a vertical ramp, continued within
    7 grey levels on average; the bright artifact gone)."""
    from refine_by_align.pipelines.correspondence import ARTIFACT_FILL_GROW, artifact_filled

    ramp = np.tile(np.linspace(40, 200, 80, dtype=np.float32)[:, None], (1, 90)).astype(np.uint8)  # (80, 90)
    mask = np.zeros(ramp.shape, bool)
    mask[30:50, 35:60] = True
    img = ramp.copy()
    img[mask] = 255  # the artifact
    out = artifact_filled(img, mask)
    grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ARTIFACT_FILL_GROW + 1,) * 2)).astype(bool)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[~grown], img[~grown])
    err = np.abs(out[mask].astype(int) - ramp[mask].astype(int))
    assert err.mean() < 8 and err.max() < 30 and out[mask].max() < 160  # (the ramp's own spread there: 12 grey levels mean)


def test_the_filled_flow_taken_where_the_artifact_misleads_dis():
    """A patch of another part of the image pasted into the mask (a wrong texture): DIS's patches
    next to the mask see it and the flow carried in from there is off; the round takes the flow
    from the image with the artifact filled, whose carried values predict the held-out band better,
    and the field inside the mask is closer to the true bend than with DIS and DeepFlow alone. On
    the image without an artifact the round keeps DIS, and the same field as without the third
    flow. (The crop lies within the flows' window, so they see all of it.)"""
    from refine_by_align.pipelines.correspondence import FLOWS, refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case()
    box, truth = Box(60, 60, 186, 186), truth[:126, :126]
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start, inside = _identity_field(box), mask[window]
    err = lambda f: float(np.mean(np.linalg.norm(f.xy - truth, axis=-1)[inside]))
    swapped = image.copy()
    swapped[100:140, 95:150] = image[20:60, 170:225][:, ::-1]
    three, info = refine_field_flow(start, swapped[window], inside, ref, detail_trust=None)
    two, info_two = refine_field_flow(start, swapped[window], inside, ref, detail_trust=None, flows=("dis", "deepflow"))
    assert FLOWS == ("dis", "deepflow", "dis-filled") and info["flow"] == "dis-filled" and info_two["flow"] != "dis-filled"
    assert info["ncc_flow"] > info_two["ncc_flow"] and err(three) < err(two) - 0.005, (err(three), err(two))
    clean, info_clean = refine_field_flow(start, image[window], inside, ref, detail_trust=None)
    clean_two, _ = refine_field_flow(start, image[window], inside, ref, detail_trust=None, flows=("dis", "deepflow"))
    assert info_clean["flow"] != "dis-filled" and np.array_equal(clean.xy, clean_two.xy)


def test_two_flows_side_by_side_give_the_fields_of_one_thread(monkeypatch):
    """Each round computes its flows (DIS and DeepFlow) side by side on two threads: the refined
    field and the round's choice are exactly those computed one after another on one thread."""
    from refine_by_align import threads
    from refine_by_align.pipelines import field_refinement as corr

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start, inside = _identity_field(box), mask[window]
    monkeypatch.setattr(threads, "worker_threads", lambda: 2)  # (the threads side_by_side runs the flows on)
    two, info_two = corr.refine_field_flow(start, image[window], inside, ref, detail_trust=None)
    monkeypatch.setattr(threads, "worker_threads", lambda: 1)
    one, info_one = corr.refine_field_flow(start, image[window], inside, ref, detail_trust=None)
    assert info_two == info_one and info_one["kept"]
    assert np.array_equal(two.xy, one.xy) and np.array_equal(two.on_object, one.on_object)


def test_flow_refined_own_photo_trusted_as_the_held_out_band_says():
    """The identity field on a 3 px bend of the image itself (its own photo): after the flow its
    warp carries the image's fine detail on the ring (detail agreement over 0.9), so it is trusted up
    to the held-out band's agreement of the last kept round, above its agreement before the flow;
    with detail_trust=None, or a threshold it does not reach, the cap stays at the agreement before.
    The same bend of a picture whose fine texture differs (another photo of the same shading)
    carries none of it."""
    from refine_by_align.pipelines.correspondence import DETAIL_TRUST, detail_agreement, refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start, inside = _identity_field(box), mask[window]
    before = warp_fill(image[window], inside, ref, start).ncc
    fld, info = refine_field_flow(start, image[window], inside, ref)
    plain, info_plain = refine_field_flow(start, image[window], inside, ref, detail_trust=None)
    strict, _ = refine_field_flow(start, image[window], inside, ref, detail_trust=1.0)
    assert info["kept"] and info["detail"] > 0.9 > DETAIL_TRUST, info
    assert fld.trust_cap == info["ncc_flow"] > before, (fld.trust_cap, before)  # (one round kept here)
    assert plain.trust_cap == strict.trust_cap == before and info_plain["detail"] == info["detail"]
    assert np.array_equal(fld.xy, plain.xy)  # the field is the same; only its trust differs
    # another photo: the same shading (a 4 px blur) with other fine texture, the same bend
    shading = cv2.GaussianBlur(image, (0, 0), 4.0).astype(np.float32)
    other = np.clip(shading + (_texture(*mask.shape, seed=5).astype(np.float32) - cv2.GaussianBlur(_texture(*mask.shape, seed=5), (0, 0), 4.0)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:240, 0:240].astype(np.float32)
    dq = _wave(3.0)(xx, yy)
    other_ref = cv2.remap(other, xx - dq[..., 0], yy - dq[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    exact = type(start)(box, truth, np.ones(inside.shape, np.float32), np.ones(inside.shape, bool))
    own, foreign = detail_agreement(image[window], inside, ref, exact), detail_agreement(image[window], inside, other_ref, exact)
    assert own > 0.9 and foreign < 0.3, (own, foreign)


def test_flow_refinement_leaves_an_exact_field_exact_and_skips_a_tiny_band():
    """Started from the true field the refinement moves nothing by more than a fraction of a pixel
    (kept or not); with no reference object around the mask there is no band to judge it on, and
    the field is returned as it was."""
    from refine_by_align.pipelines.correspondence import DenseField, refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    inside = mask[window]
    exact = DenseField(box, truth.astype(np.float32), np.ones(inside.shape, np.float32), np.ones(inside.shape, bool))
    fld, info = refine_field_flow(exact, image[window], inside, ref)
    assert np.median(np.linalg.norm(fld.xy - truth, axis=-1)[inside]) < 0.3, info
    off = DenseField(box, truth.astype(np.float32), np.ones(inside.shape, np.float32), inside.copy())  # on the object only in the mask
    same, info = refine_field_flow(off, image[window], inside, ref)
    assert same is off and info == {}


def test_dense_alignment_runs_the_flow_only_on_a_field_past_the_trust_gate():
    """A local bend the spline through the surrounding matches misses: the winner is flow-refined
    (info["flow"] says how it went) when its ring agreement reaches flow_min_ncc, closer to the
    truth inside the mask than the field ECC gave, and, its warp carrying the image's own detail,
    trusted above its agreement before the flow (refine_field_flow's detail_trust); with
    flow=False (and polish=False) or a gate it does not reach, it is left as ECC gave it."""
    image, mask, ref, valid, box, truth = _bent_case(_bump())
    inside = mask[box.y0 : box.y1, box.x0 : box.x1]
    fld, info = dense_alignment(image, mask, ref, valid, box, ("sift",))
    plain, info_plain = dense_alignment(image, mask, ref, valid, box, ("sift",), flow=False, polish=False)
    gated, info_gated = dense_alignment(image, mask, ref, valid, box, ("sift",), flow_min_ncc=1.01)
    assert info["ring_ncc"] >= 0.5 and info["flow"]["kept"] and info["flow"]["ncc_flow"] > info["flow"]["ncc"], info
    err = np.median(np.linalg.norm(fld.xy - truth, axis=-1)[inside])
    err_plain = np.median(np.linalg.norm(plain.xy - truth, axis=-1)[inside])
    assert err_plain > 1.3 and err < 0.8 * err_plain, (err, err_plain)
    assert info["flow"]["detail"] >= 0.75 and 1.0 > fld.trust_cap > info["ring_ncc"] and plain.trust_cap == 1.0
    assert "flow" not in info_plain and "flow" not in info_gated
    assert "polish" in info and "polish" not in info_gated  # (the ECC polish has the same gate)
    assert np.array_equal(plain.xy, gated.xy)


@pytest.mark.parametrize("settled", [0.5, 1.01, None])
def test_aliked_is_not_run_where_the_cheap_field_settles_under_the_flow(monkeypatch, settled):
    """Where the cheap sources' leader is short of ``good_ncc`` but past the flow's gate, it is
    refined (ECC, the flow) before ALIKED runs; if its refined field predicts the flow's held-out
    band at ``cheap_settled`` or more, ALIKED is not run at all. Below that (or with
    ``cheap_settled=None``) ALIKED runs as before and the refinement is done again on the pool's
    leader. A stand-in ALIKED that finds nothing leaves SIFT's field the winner either way."""
    from refine_by_align.pipelines import alignment as A

    image, mask, ref, valid, box, _ = _bent_case(_bump())
    calls = []

    class ImageSide:  # ALIKED's image pass, counted
        def __init__(self, *args, **kwargs):
            calls.append("image")

        def features(self, n=None):
            return ("best", n)

    monkeypatch.setattr(A, "aliked_image_side", ImageSide)
    monkeypatch.setattr(A, "aliked_matches", lambda *args, **kwargs: Matches.empty())
    monkeypatch.setattr(A, "aliked_reference_features", lambda *args, **kwargs: None)
    refined, real_ecc = [], A.refine_field_ecc

    def ecc(fld, *args, **kwargs):  # each candidate's ECC, counted
        refined.append(id(fld))
        return real_ecc(fld, *args, **kwargs)

    monkeypatch.setattr(A, "refine_field_ecc", ecc)
    first_rounds = []

    class Counted(A.FlowRefinement):  # each flow refinement's first round, counted by its candidate
        def __init__(self, fld, *args, **kwargs):
            super().__init__(fld, *args, **kwargs)
            first_rounds.append(fld.xy.tobytes())

    monkeypatch.setattr(A, "FlowRefinement", Counted)
    fld, info = dense_alignment(image, mask, ref, valid, box, ("sift", "aliked"), aliked=object(), good_ncc=1.01, cheap_settled=settled, template=False)
    assert refined and len(refined) == len(set(refined))  # (a candidate refined by ECC is not refined again after ALIKED)
    assert first_rounds and len(first_rounds) == len(set(first_rounds))  # (nor its first flow round)
    plain, _ = dense_alignment(image, mask, ref, valid, box, ("sift",), good_ncc=1.01)
    assert info["source"] == "sift" and info["flow"]["kept"] and np.array_equal(fld.xy, plain.xy), info
    if settled == 0.5:
        assert calls == [] and info["cheap_settled"] >= 0.5
    else:
        assert calls == ["image"]
        assert ("cheap_settled" in info) == (settled is not None)


def test_flow_refinement_takes_refine_field_flows_settings_and_defaults():
    """FlowRefinement repeats refine_field_flow's parameter list (the function keeps its documented
    signature): the two must name the same settings with the same defaults, the give-ups aside, so
    that dense_alignment's rivals (FlowRefinement with its defaults) are refined as the function
    refines a field."""
    import inspect

    from refine_by_align.pipelines.field_refinement import FlowRefinement

    function = inspect.signature(refine_field_flow).parameters
    cls = inspect.signature(FlowRefinement.__init__).parameters
    give_ups = {"give_up_below", "give_up_detail_below"}
    settings = [(n, p.default) for n, p in function.items() if n not in give_ups]
    assert settings == [(n, p.default) for n, p in cls.items() if n != "self"]
    assert give_ups <= set(function) and not give_ups & set(cls)


def test_flow_refinement_round_by_round_is_refine_field_flow():
    """FlowRefinement run a round, then the rest, gives refine_field_flow's field and info (and
    after one round, refine_field_flow's with rounds=1); run again after the last round, nothing
    changes. On the 5 px bend with the settings before the thirteenth session, which take several
    rounds (test_flow_rounds_each_checked_and_counted), and on the shipped settings."""
    from refine_by_align.pipelines.field_refinement import FlowRefinement, held_out_agreement

    image_box, mask_box, ref, start, _ = _bent_flow_case(artifact=True)
    several = dict(preset=cv2.DISOPTICAL_FLOW_PRESET_FAST, upsample=1, carry="harmonic", finest_scale=None, detail_trust=None, flows=("dis",))
    for kw in (several, {}):
        full, info = refine_field_flow(start, image_box, mask_box, ref, **kw)
        one, info_one = refine_field_flow(start, image_box, mask_box, ref, rounds=1, **kw)
        stepped = FlowRefinement(start, image_box, mask_box, ref, **kw).run(1)
        assert stepped.ran == 1 and stepped.gives_up() is None
        held = held_out_agreement(info_one, info_one["ncc"])
        for below, detail in ((held + 1e-3, None), (held - 1e-3, None), (None, info_one["detail"] + 1e-3), (None, info_one["detail"] - 1e-3)):
            _, given = refine_field_flow(start, image_box, mask_box, ref, give_up_below=below, give_up_detail_below=detail, **kw)
            assert stepped.gives_up(below, detail) == (given if "gave_up" in given else None), (below, detail, given)
        first, info_first = stepped.result()
        assert np.array_equal(first.xy, one.xy) and info_first == info_one and first.trust_cap == one.trust_cap
        last, info_last = stepped.run().result()
        assert np.array_equal(last.xy, full.xy) and info_last == info and last.trust_cap == full.trust_cap
        ran = stepped.ran
        assert stepped.run().ran == ran and np.array_equal(stepped.result()[0].xy, full.xy)
        if kw:
            assert info["rounds"] >= 2 and not np.array_equal(full.xy, one.xy), info  # (the later rounds did change it)


def test_rivals_are_refined_past_their_first_round_only_when_chosen(monkeypatch):
    """_refine_leader refines the leader and its rivals by one flow round each, chooses on that
    round's held-out agreement, and runs the later rounds for the chosen field alone: the field is
    the one refine_field_flow gives it, the other stops after one round."""
    from dataclasses import replace

    from refine_by_align.pipelines.field_refinement import held_out_agreement
    from refine_by_align.pipelines import alignment as A

    image, mask, ref, valid, box, _ = _bent_case(_bump())
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    m = sift_matches(image, mask, ref, valid)
    pool = A._Candidates(image[window], mask[window], ref, valid, box, 15)
    pool.consider("sift", False, m)
    ncc0, inliers, _, _, fld0, _ = pool.items[0]
    # a rival: the other orientation's candidate, its field 0.7 px off and its agreement a little lower
    pool.items.append((ncc0 - 0.01, inliers, "sift", True, replace(fld0, xy=fld0.xy + 0.7), m))
    made = []

    class Counted(A.FlowRefinement):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(A, "FlowRefinement", Counted)
    ncc, _, _, mirrored, fld = A._refine_leader(pool, ref, False, 3, True, 0.5, 0.1)
    assert len(made) == 2 and len(pool.info["rivals"]) == 1, pool.info
    # (made side by side: in either order) the chosen one's field is the candidate's it reports
    chosen = next(r for r in made if np.array_equal(r.given.xy, pool.items[int(mirrored)][4].xy))
    other = next(r for r in made if r is not chosen)
    assert chosen.ran >= 2 and other.ran == 1 and other.first.get("kept"), (chosen.ran, other.first)  # (kept: it would have gone on)
    alone, info = refine_field_flow(with_confidence(pool.items[int(mirrored)][4]), image[window], mask[window], ref, agreement=ncc)
    firsts = [refine_field_flow(with_confidence(c[4]), image[window], mask[window], ref, agreement=c[0], rounds=1)[1] for c in pool.items]
    held = [round(held_out_agreement(f, c[0]), 4) for f, c in zip(firsts, pool.items)]
    assert pool.info["rivals"] == [{"rival": "sift/mirrored", "held_out": held[0], "rival_held_out": held[1]}], (pool.info["rivals"], held)
    assert np.array_equal(fld.xy, alone.xy) and pool.info["flow"] == info and fld.trust_cap == alone.trust_cap


def test_flow_gives_up_after_a_first_round_below_the_given_agreement():
    """refine_field_flow with ``give_up_below`` stops after its first round where that round's
    held-out agreement is below it (the field as given, the round's info, "gave_up"); at or above
    it, every round runs and the result is the one without it."""
    from refine_by_align.pipelines.correspondence import refine_field_flow

    image, mask, ref, valid, box, _ = _bent_case(_bump())
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    fld, _ = dense_alignment(image, mask, ref, valid, box, ("sift",), flow=False, polish=False)
    full, info = refine_field_flow(fld, image[window], mask[window], ref)
    assert info["kept"] and info["rounds"] >= 1, info
    held = info["ncc_flow"]
    kept, info_kept = refine_field_flow(fld, image[window], mask[window], ref, give_up_below=held)
    assert info_kept == info and np.array_equal(kept.xy, full.xy) and kept.trust_cap == full.trust_cap
    given, info_given = refine_field_flow(fld, image[window], mask[window], ref, give_up_below=held + 1e-3)
    assert info_given["gave_up"] and info_given["ncc_flow"] == held and "rounds" not in info_given
    assert np.array_equal(given.xy, fld.xy)


def test_warp_fill_trusts_a_field_at_most_its_trust_cap():
    """The ring agreement counted for trust and blend weight is capped by the field's trust_cap:
    a flow-refined field is trusted as it was before the flow; the warped pixels are the same."""
    from refine_by_align.pipelines.correspondence import DenseField

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    inside = mask[window]
    on = np.ones(inside.shape, bool)

    def fill(cap):
        return warp_fill(image[window], inside, ref, DenseField(box, truth, np.ones(inside.shape, np.float32), on, trust_cap=cap))

    free, capped, low = fill(1.0), fill(0.7), fill(0.3)
    assert free.ncc > 0.95 and free.use.any() and np.allclose(free.weight[free.use], 1.0)
    assert capped.ncc == 0.7 and np.array_equal(capped.use, free.use)
    assert np.allclose(capped.weight[capped.use], (0.7 - 0.5) / (0.95 - 0.5))
    assert low.ncc == 0.3 and not low.use.any() and not low.weight.any()
    assert np.array_equal(free.patch, capped.patch)


def test_a_warp_agreeing_in_full_is_trusted_however_far_its_matches_are():
    """A field's confidence falls with the distance to its nearest inlier match; below
    ``min_confidence`` a pixel is not given by the warp. Where the warp agrees with the ring around
    the mask at ``full_ncc`` or more it has been checked around the mask itself, and every pixel of
    the mask on the reference object is given; a warp that agrees only partly is still limited by
    the confidence."""
    from refine_by_align.pipelines.correspondence import DenseField

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    inside = mask[window]
    on = np.ones(inside.shape, bool)

    def fill(confidence, cap):
        return warp_fill(image[window], inside, ref, DenseField(box, truth, np.full(inside.shape, confidence, np.float32), on, trust_cap=cap))

    far, near = fill(0.01, 1.0), fill(1.0, 1.0)  # matches far from the mask / next to it
    assert far.ncc > 0.95 and np.array_equal(far.use, inside) and np.array_equal(far.use, near.use)
    assert np.array_equal(far.weight, near.weight) and np.array_equal(far.patch, near.patch)
    assert not fill(0.01, 0.8).use.any()  # agreeing in part: the confidence still limits it
    assert np.array_equal(fill(1.0, 0.8).use, inside)


def test_the_warp_is_blurred_as_much_as_the_image_is_softer():
    """match_sharpness: an image softer than the reference (a Gaussian of 0.8 px, and a colour
    change) gets the warp blurred by the same sigma, chosen on the ring alone; an image as sharp
    as the warp leaves it as it is. The blur is normalised on the reference object: a cut-out's
    black background does not darken the object's outline."""
    from refine_by_align.pipelines.warp import match_sharpness

    warp = _texture(80, 90, seed=5).astype(np.float32)
    mask = np.zeros((80, 90), bool)
    mask[25:55, 30:60] = True
    band = ring(mask, 2, 12)
    on = np.ones(mask.shape, bool)
    soft = np.clip(cv2.GaussianBlur(warp, (0, 0), 0.8) * 0.9 + 12.0, 0, 255)
    got, sigma = match_sharpness(warp, soft, band, on)
    assert sigma == 0.8
    np.testing.assert_allclose(got, cv2.GaussianBlur(warp, (0, 0), 0.8), atol=1e-3)
    same, none = match_sharpness(warp, warp * 0.9 + 12.0, band, on)
    assert none == 0.0 and same is warp
    # a blur is taken only where it lowers the ring's error by SHARPNESS_MIN_GAIN (5%) or more: a
    # touch softer (the best blur gains about 1% on the noisy ring) keeps the warp, softer takes it
    noise = np.random.default_rng(0).normal(0, 6, warp.shape).astype(np.float32)
    touch = np.clip(warp + 0.23 * (cv2.GaussianBlur(warp, (0, 0), 0.8) - warp) + noise, 0, 255)
    softer = np.clip(warp + 0.26 * (cv2.GaussianBlur(warp, (0, 0), 0.8) - warp) + noise, 0, 255)
    assert match_sharpness(warp, touch, band, on)[1] == 0.0 and match_sharpness(warp, touch, band, on, min_gain=0.0)[1] == 0.5
    assert match_sharpness(warp, softer, band, on)[1] == 0.5
    # on the object only: the left third is background (black), the object flat grey
    flat = np.full((80, 90, 3), 150.0, np.float32)
    obj = np.ones(mask.shape, bool)
    obj[:, :30] = False
    flat[~obj] = 0.0
    blurred, _ = match_sharpness(flat, cv2.GaussianBlur(_texture(80, 90, seed=6).astype(np.float32), (0, 0), 1.2), band, obj, sigmas=(0.0, 1.2), min_gain=-1.0)
    assert np.allclose(blurred[obj], 150.0, atol=1e-3)


def test_warp_fill_reports_the_blur_it_gave_the_patch(monkeypatch):
    """warp_fill pastes the warp blurred by match_sharpness (WarpFill.sharpness) and keeps the
    trust and the gains it reports measured on the bicubic warp, as the candidates were ranked."""
    import refine_by_align.pipelines.warp as W
    from refine_by_align.pipelines.correspondence import DenseField

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    inside = mask[window]
    fld = DenseField(box, truth, np.ones(inside.shape, np.float32), np.ones(inside.shape, bool))
    sharp = warp_fill(image[window], inside, ref, fld)
    soft_image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.2)
    soft = warp_fill(np.clip(soft_image, 0, 255).astype(np.uint8)[window], inside, ref, fld)
    assert sharp.sharpness == 0.0 and soft.sharpness > 0.0
    monkeypatch.setattr(W, "SHARPNESS_SIGMAS", ())
    plain = W.warp_fill(np.clip(soft_image, 0, 255).astype(np.uint8)[window], inside, ref, fld)
    assert plain.sharpness == 0.0 and plain.ncc == soft.ncc and np.array_equal(plain.gain, soft.gain)
    truth_soft = np.clip(soft_image, 0, 255)[window][inside]
    err = lambda wf: float(np.abs(wf.patch[inside].astype(np.float32) - truth_soft).mean())
    assert err(soft) < 0.8 * err(plain)  # the blurred patch is the closer to the softer image


def test_the_colour_left_on_the_rim_is_carried_into_the_patch(monkeypatch):
    """A light that changes across the object (the image's own photo under a gradient of gain)
    leaves a difference on the thin ring around the mask that one colour map cannot take out:
    carried into the mask by Laplace's equation (_carry_seam), it brings the patch closer to the
    truth; a warp that already matches its rim is left as it is."""
    import refine_by_align.pipelines.warp as W
    from refine_by_align.pipelines.correspondence import DenseField

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    inside = mask[window]
    fld = DenseField(box, truth, np.ones(inside.shape, np.float32), np.ones(inside.shape, bool))
    h, w = image.shape[:2]
    light = (0.7 + 0.6 * np.mgrid[0:h, 0:w][1] / (w - 1))[..., None]  # 0.7 .. 1.3 from left to right
    lit = np.clip(image.astype(np.float32) * light, 0, 255).astype(np.uint8)
    carried = warp_fill(lit[window], inside, ref, fld)
    monkeypatch.setattr(W, "SEAM_RING_PX", None)
    plain = W.warp_fill(lit[window], inside, ref, fld)
    err = lambda wf: float(np.abs(wf.patch[inside].astype(np.float32) - lit[window][inside]).mean())
    assert err(carried) < 0.8 * err(plain), (err(carried), err(plain))
    assert carried.ncc == plain.ncc and np.array_equal(carried.use, plain.use)  # the trust is not touched
    # a patch that already matches its rim: nothing to carry
    flat = np.full(inside.shape + (3,), 120.0, np.float32)
    same = W._carry_seam(flat, flat.astype(np.uint8), inside, W.ring(inside, 1, 4), flat)
    assert np.allclose(same, flat)


def test_flow_rounds_each_checked_and_counted():
    """Each round starts from the field the last one left and is kept only if it passes the check;
    info["rounds"] counts the kept ones. With DIS's FAST preset at the crop's own resolution and the
    flow carried into the mask harmonically, the trust never raised (the settings before the
    thirteenth session), a 5 px
    bend is more than one round of flow carried in from around the mask takes out: the later
    rounds take most of the rest."""
    from refine_by_align.pipelines.correspondence import refine_field_flow

    image, mask, ref, valid, box, truth = _bent_case(_wave(5.0))
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    start = _identity_field(box)
    inside = mask[window]
    kw = dict(preset=cv2.DISOPTICAL_FLOW_PRESET_FAST, upsample=1, carry="harmonic", finest_scale=None, detail_trust=None, flows=("dis",))
    one, info_one = refine_field_flow(start, image[window], inside, ref, rounds=1, **kw)
    more, info_more = refine_field_flow(start, image[window], inside, ref, rounds=4, **kw)
    assert info_one["rounds"] == 1 and 1 < info_more["rounds"] <= 4, (info_one, info_more)
    assert info_one["ncc"] == info_more["ncc"]  # the first round's figures
    err_one = np.median(np.linalg.norm(one.xy - truth, axis=-1)[inside])
    err_more = np.median(np.linalg.norm(more.xy - truth, axis=-1)[inside])
    assert err_more < 0.5 * err_one, (err_one, err_more)  # (here about 0.66 px after one round, 0.12 after more)
    assert one.trust_cap == more.trust_cap  # both capped at the agreement of the field they started from


def _bent_flow_case(artifact: bool):
    """A 5 px bend (``_bent_case(_wave(5))``), optionally with another texture painted into the mask
    (a repair case's artifact), cut to its box: (image_box, mask_box, reference, the identity field
    as the start, the true field)."""
    image, mask, ref, valid, box, truth = _bent_case(_wave(5.0))
    if artifact:
        image = image.copy()
        image[mask] = _texture(*mask.shape, seed=9)[mask]
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    return image[window], mask[window], ref, _identity_field(box), truth


def _median_error(fld, truth, inside):
    """The field's median distance from the truth over the ``inside`` pixels, px."""
    return float(np.median(np.linalg.norm(fld.xy - truth, axis=-1)[inside]))


def test_flow_carried_into_an_artifact_closer_with_the_shipped_settings():
    """With an artifact in the mask (another texture painted there, as a repair case has) DIS's
    flow at the mask's edge sees it; the shipped settings (MEDIUM preset on the crop upsampled
    twice, the flow carried into the mask by a smoothing spline; DIS alone) bring the field closer to the
    truth inside the mask than the FAST preset at the crop's own resolution carried harmonically
    (here about 0.17 against 0.70 px on a 5 px bend)."""
    from refine_by_align.pipelines.correspondence import FLOW_UPSAMPLE, refine_field_flow

    image_box, inside, ref, start, truth = _bent_flow_case(artifact=True)
    shipped, info = refine_field_flow(start, image_box, inside, ref, flows=("dis",))  # (DIS alone: its settings compared)
    before, info_before = refine_field_flow(
        start, image_box, inside, ref, preset=cv2.DISOPTICAL_FLOW_PRESET_FAST, upsample=1, carry="harmonic", finest_scale=None, flows=("dis",)
    )
    assert FLOW_UPSAMPLE == 2 and info["kept"] and info_before["kept"], (info, info_before)
    err, err_before = _median_error(shipped, truth, inside), _median_error(before, truth, inside)
    assert err < 0.4 * err_before and err < 0.3, (err, err_before)


@pytest.mark.parametrize("artifact", [False, True])
def test_flow_carried_by_the_spline_closer_than_harmonically(artifact):
    """The flow around the mask carried in by a smoothing thin-plate spline (the shipped ``carry``)
    continues a bend's curvature into the mask, where the harmonic solution only averages its rim:
    on a 5 px bend, clean or with an artifact painted into the mask, the field inside the mask ends
    at most 60% as far from the truth (here about 0.12 / 0.17 px against 0.26 / 0.34); an unknown
    carry is refused by name."""
    from refine_by_align.pipelines.correspondence import refine_field_flow

    image_box, inside, ref, start, truth = _bent_flow_case(artifact)
    spline, info = refine_field_flow(start, image_box, inside, ref, flows=("dis",))  # (one flow: the carries compared)
    harmonic, info_h = refine_field_flow(start, image_box, inside, ref, carry="harmonic", flows=("dis",))
    assert info["kept"] and info_h["kept"], (info, info_h)
    err, err_h = _median_error(spline, truth, inside), _median_error(harmonic, truth, inside)
    assert err < 0.6 * err_h, (err, err_h)
    with pytest.raises(ValueError, match="carry 'nearest'"):
        refine_field_flow(start, image_box, inside, ref, carry="nearest")


def test_dis_flow_upsampled_is_in_the_crops_pixels():
    """_dis_flow on the pictures upsampled k times returns the flow at the crop's size and in its
    pixels: a texture moved by (-1.5, 0.75) px gives that displacement (to a tenth of a pixel in
    the middle) with and without upsampling, at the preset's finest scale and at 0; k = 1 is DIS
    as it is, and a finest scale given is DIS's own setting."""
    from refine_by_align.pipelines.field_refinement import _dis_flow

    a = cv2.cvtColor(_texture(96, 96, seed=4), cv2.COLOR_RGB2GRAY)
    shift = np.float32([[1, 0, -1.5], [0, 1, 0.75]])  # b(p) = a(p + (1.5, -0.75)), so a(p) = b(p + (-1.5, 0.75))
    b = cv2.warpAffine(a, shift, (96, 96), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    for k in (1, 2):
        for finest in (None, 0):  # (0, the ablation: DIS down to the upsampled pictures' own grid)
            f = _dis_flow(a, b, cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, k, finest)
            assert f.shape == (96, 96, 2) and f.dtype == np.float32
            mid = f[24:72, 24:72].reshape(-1, 2)
            assert np.allclose(np.median(mid, 0), [-1.5, 0.75], atol=0.1), (k, finest, np.median(mid, 0))
    plain = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
    assert np.array_equal(_dis_flow(a, b, cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 1), plain)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    assert np.array_equal(_dis_flow(a, b, cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 1, 0), dis.calc(a, b, None))


def test_flow_smoothing_is_a_normalised_convolution_over_the_kept_pixels():
    """The ablation's smoothing (refine_field_flow's ``smooth``) is over the pixels the flow is
    kept at only: a constant flow stays that constant right up to the hole (the hole's pixels
    neither count nor dilute it), a noisy one comes out closer to its mean, and sigma 0 returns it
    as given."""
    from refine_by_align.pipelines.field_refinement import _smoothed

    known = np.ones((60, 80), bool)
    known[20:40, 30:50] = False
    const = np.broadcast_to(np.float32([1.5, -2.0]), (60, 80, 2)).copy()
    const[~known] = 99.0  # (what DIS said in the hole: ignored)
    out = _smoothed(const, known, 8.0)
    assert np.allclose(out[known], [1.5, -2.0], atol=1e-5) and not out[~known].any()
    noisy = const + np.random.default_rng(0).normal(0, 1, const.shape).astype(np.float32)
    assert np.abs(_smoothed(noisy, known, 8.0)[known] - [1.5, -2.0]).mean() < 0.3 * np.abs(noisy[known] - [1.5, -2.0]).mean()
    assert _smoothed(noisy, known, 0.0) is noisy


def test_loose_matching_aligns_a_colour_changed_plain_object(tiny_pipe, tmp_path, monkeypatch):
    """A real case the strict ALIKED matching cannot align (validation set 2's candle_04_nonrigid,
    rebuilt from the shared photos: a plain white jar on grass, its reference colour-changed,
    mirrored and bent; SIFT's matches are wrong): the loose matching finds the field, M* close to
    the true region; without it the template search finds the jar in the mirrored reference, and
    without both the alignment falls back to Algorithm 1."""
    import functools
    import json
    from pathlib import Path

    from PIL import Image

    from refine_by_align.data.make_cases import make_cases
    from refine_by_align.models.aliked import find_weights
    from refine_by_align.pipelines import alignment as A
    from refine_by_align.pipelines import pipeline as P

    photos = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dreambooth-train"
    if not (photos / "candle").is_dir():
        pytest.skip(f"{photos}/candle not found (the shared photos are absent)")
    if find_weights("aliked-n16") is None:
        pytest.skip("../shared/weights/aliked/aliked-n16.safetensors not found (the matcher's weights are absent)")
    make_cases(photos, tmp_path, seed=1, subjects=["backpack", "candle"], cases_per_subject=5)  # (a case draws from (seed, subject's place, k))
    case = tmp_path / "candle_04_nonrigid"
    assert json.loads((case / "meta.json").read_text())["transform"]["params"]["flip"]
    rgb = lambda name: Image.open(case / name).convert("RGB")
    gray = lambda name: np.asarray(Image.open(case / name).convert("L")) > 127
    args = (rgb("image.png"), gray("mask.png"), rgb("reference.png"), gray("reference_mask.png"))
    truth = gray("correspondence.png")

    res = tiny_pipe.align(*args)
    assert res.method == "dense" and res.info["source"].endswith("loose") and res.info["mirrored"]
    iou = (res.region & truth).sum() / (res.region | truth).sum()
    assert iou > 0.6, iou

    monkeypatch.setattr(P, "dense_alignment", functools.partial(A.dense_alignment, loose_similarity=None))
    placed = tiny_pipe.align(*args)  # no loose matching: the template search, mirrored, places the jar
    assert placed.method == "dense" and placed.info["source"] == "template" and placed.info["mirrored"], placed.info
    assert (placed.region & truth).sum() / (placed.region | truth).sum() > 0.9
    monkeypatch.setattr(P, "dense_alignment", functools.partial(A.dense_alignment, loose_similarity=None, template=False))
    strict = tiny_pipe.align(*args)
    assert strict.method == "attention" and "no consistent dense field" in strict.info["fallback"]


def test_misfit_weight_ramp():
    """1 up to the first limit, linear to 0 at the second, 1 where the misfit is unknown."""
    from refine_by_align.pipelines.correspondence import MISFIT_PX, misfit_weight

    lo, hi = MISFIT_PX
    assert misfit_weight(None) == 1.0 and misfit_weight(100.0, None) == 1.0
    assert misfit_weight(0.0) == 1.0 and misfit_weight(lo) == 1.0
    assert misfit_weight(hi) == 0.0 and misfit_weight(hi + 5.0) == 0.0
    assert abs(misfit_weight((lo + hi) / 2) - 0.5) < 1e-9
    assert misfit_weight(4.0, (4.0, 4.0)) == 1.0 and misfit_weight(4.01, (4.0, 4.0)) == 0.0


def test_field_misfit_is_in_image_pixels_at_512():
    """The fit's residual (reference px) divided by the field's scale (reference px per image px)
    and by the image's size over 512."""
    from refine_by_align.pipelines.correspondence import DenseField, FieldFit, field_misfit

    box = Box(10, 20, 74, 84)
    yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)
    xy = np.stack([2.0 * xx + 5.0, 2.0 * yy - 3.0], -1)  # the reference at twice the image's scale
    fit = FieldFit(np.eye(3), None, 1.0, np.zeros(2), 40, 30, None, 6.0, np.zeros((30, 2)))
    fld = DenseField(box, xy, None, np.ones(xy.shape[:2], bool), fit)
    assert abs(field_misfit(fld, (512, 400)) - 3.0) < 1e-6  # 6 ref px = 3 image px
    assert abs(field_misfit(fld, (1024, 768)) - 1.5) < 1e-6  # 3 px of a 1024 px picture = 1.5 at 512
    assert field_misfit(DenseField(box, xy, None, np.ones(xy.shape[:2], bool), None), (512, 512)) is None
    # mirrored and stretched: |det| = 3 x 1 (the scale sqrt(3)), whatever the orientation
    bent = np.stack([-3.0 * xx + 400.0, 1.0 * yy + 0.5 * xx], -1).astype(np.float32)
    assert abs(field_misfit(DenseField(box, bent, None, np.ones(xy.shape[:2], bool), fit), (512, 512)) - 6.0 / np.sqrt(3.0)) < 1e-6
    # a non-finite pixel does not move the scale; a field with no scale or a box under 2 px gives None
    holed = xy.copy()
    holed[5, 7] = np.nan
    assert abs(field_misfit(DenseField(box, holed, None, np.ones(xy.shape[:2], bool), fit), (512, 400)) - 3.0) < 1e-6
    flat = np.full_like(xy, 7.0)
    assert field_misfit(DenseField(box, flat, None, np.ones(xy.shape[:2], bool), fit), (512, 512)) is None
    thin = Box(10, 20, 74, 21)
    assert field_misfit(DenseField(thin, xy[:1], None, np.ones((1, 64), bool), fit), (512, 512)) is None


def test_warp_fill_discounts_a_field_that_misses_its_own_matches():
    """A warp whose fit misses its own matches by more than MISFIT_PX[0] px is blended in at less
    weight, not at all past MISFIT_PX[1]; the pixels it would paste are the same."""
    from refine_by_align.pipelines.correspondence import MISFIT_PX, DenseField

    image, mask, ref, valid, box, truth = _bent_case()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    inside = mask[window]
    on = np.ones(inside.shape, bool)

    def fill(misfit, **kw):
        fld = DenseField(box, truth, np.ones(inside.shape, np.float32), on, misfit_px=misfit)
        return warp_fill(image[window], inside, ref, fld, **kw)

    lo, hi = MISFIT_PX
    good, unknown, mid, bad = fill(lo - 1.0), fill(None), fill((lo + hi) / 2), fill(hi + 1.0)
    assert good.use.any() and np.allclose(good.weight[good.use], 1.0)
    assert np.array_equal(unknown.weight, good.weight)
    assert np.allclose(mid.weight[mid.use], 0.5) and np.array_equal(mid.use, good.use)
    assert not bad.weight.any() and not bad.use.any() and bad.misfit_factor == 0.0 and np.array_equal(bad.patch, good.patch)
    assert np.array_equal(fill(hi + 1.0, misfit_px=None).weight, good.weight)  # the discount switched off


def test_dense_alignment_reports_the_winner_misfit():
    """The winning field carries its misfit (image px at 512), also in the info; on a warp of the
    same photo it is well under MISFIT_PX[0]."""
    from refine_by_align.pipelines.correspondence import MISFIT_PX, field_misfit

    image, mask, ref, valid, H = _case(_sim())
    box = zoom_box(mask, 2.0, 64)
    fld, info = dense_alignment(image, mask, ref, valid, box, ("sift",))
    assert fld is not None and fld.misfit_px is not None
    assert fld.misfit_px == field_misfit(fld, image.shape[:2]) and 0 < fld.misfit_px < MISFIT_PX[0]
    assert info["misfit_px"] == round(fld.misfit_px, 3)


def _badge_example():
    """The shipped badge example as the pipeline sees it: (image, mask, reference black outside its
    object, reference mask, the zoom-in crop box)."""
    from pathlib import Path

    from PIL import Image

    d = Path(__file__).resolve().parents[2] / "src/refine_by_align/demo/examples/badge"
    image = np.array(Image.open(d / "image.png").convert("RGB"))
    mask = np.array(Image.open(d / "mask.png").convert("L")) > 127
    ref = np.array(Image.open(d / "reference.png").convert("RGB"))
    rmask = np.array(Image.open(d / "reference_mask.png").convert("L")) > 127
    ref[~rmask] = 0
    return image, mask, ref, rmask, zoom_box(mask, grow=2.0, min_size=32)


def test_sift_alone_matches_again_at_a_looser_ratio_where_no_fit_is_solid():
    """The badge example 20% brighter, SIFT alone: at Lowe's ratio 0.8 the best fit rests on 16
    matches but agrees with the ring at 0.40, and ECC cannot lift it. The looser round (ratio 0.85,
    fits kept on 15 agreeing matches) finds a field that agrees at 0.9 or more; without it
    (``loose_ratio=None``) the strict fit stays the leader."""
    image, mask, ref, rmask, box = _badge_example()
    image = np.clip(image.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
    strict, info0 = dense_alignment(image, mask, ref, rmask, box, sources=("sift",), loose_ratio=None, flow=False, polish=False, template=False)
    loose, info1 = dense_alignment(image, mask, ref, rmask, box, sources=("sift",), flow=False, polish=False, template=False)
    assert "sift-loose" not in info0["matches"]
    assert strict is None or info0["ring_ncc"] < 0.6, info0
    assert loose is not None and info1["source"] == "sift-loose" and info1["ring_ncc"] > 0.9, info1
    assert info1["matches"]["sift-loose"] > info1["matches"]["sift"]


def test_ecc_is_tried_again_unsmoothed_where_the_smoothed_run_is_refused():
    """The badge example with SIFT alone: the homography from its matches is a few pixels off (ring
    agreement about 0.7). ECC smoothed by 5 px slides off to a sheared map the matches reject
    (refused); unsmoothed it converges, and refine_field_ecc takes that second run: the agreement
    rises above 0.85 and the field stays with its matches. Without the retry the field is left
    as it was, and the dense alignment takes a mirrored fit on 10 matches instead."""
    image, mask, ref, rmask, box = _badge_example()
    window = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    image_box, mask_box = image[window], mask[window]
    m = sift_matches(image, mask, ref, rmask)
    fld = dense_field(fit_field(m, focus=box), box, rmask)
    before = warp_agreement(image_box, mask_box, ref, fld)
    assert before < 0.8, before
    unchanged, tried_once = refine_field_ecc(fld, image_box, mask_box, ref, matches=m, retry_blur=None)
    refined, retried = refine_field_ecc(fld, image_box, mask_box, ref, matches=m)
    assert not tried_once and unchanged is fld
    assert retried
    assert warp_agreement(image_box, mask_box, ref, refined) > 0.85
    assert match_error(refined, m) < match_error(fld, m) + 1.5
    chosen, info = dense_alignment(image, mask, ref, rmask, box, sources=("sift",), flow=False, polish=False)
    assert chosen is not None and not info["mirrored"] and info["ring_ncc"] > 0.85, info


def test_ecc_retry_only_on_a_field_that_is_a_homography_alone(monkeypatch):
    """The unsmoothed retry is for ECC's own model: a field with a spline residual (a bent object)
    gets the smoothed run only, a homography-alone field both, unless its warp agrees with the
    image below the retry's gate (the runs are recorded here, and refused so that the retry is
    reached)."""
    import refine_by_align.pipelines.field_refinement as corr

    image, mask, ref, valid, H = _case(_sim())
    box = Box(60, 60, 200, 200)
    m = _lattice_matches(H, 70, 190)
    fit = corr.replace(fit_field(m, focus=box), tps=None, smoothing=None)  # a homography alone
    blurs = []

    def recorded(*args, blur, before, **kwargs):
        blurs.append(blur)
        return None, before  # (not kept)

    monkeypatch.setattr(corr, "_ecc_attempt", recorded)
    image_box, mask_box = image[60:200, 60:200], mask[60:200, 60:200]
    rigid = dense_field(fit, box, valid)
    _, changed = refine_field_ecc(rigid, image_box, mask_box, ref)
    assert not changed and blurs == [5, 1]
    blurs.clear()
    bent = dense_field(fit, box, valid)
    bent.fit = corr.replace(fit, tps=lambda xy: np.zeros_like(xy), smoothing=1.0)
    refine_field_ecc(bent, image_box, mask_box, ref)
    assert blurs == [5]
    blurs.clear()
    refine_field_ecc(rigid, image_box, mask_box, ref, retry_blur=None)
    assert blurs == [5]
    blurs.clear()
    refine_field_ecc(rigid, image_box, mask_box, ref, retry_min_ncc=1.01)  # (a warp below the gate)
    assert blurs == [5]


def test_held_out_agreement_of_a_flow_refined_field():
    """The rival check compares the band the flow did not see: after the first round where it was
    kept, before it where not, and the ring agreement where the band was too small to judge."""
    from refine_by_align.pipelines.field_refinement import held_out_agreement as _held_out

    assert _held_out({}, 0.7) == 0.7
    assert _held_out({"ncc": 0.71, "ncc_flow": 0.98, "kept": True}, 0.7) == 0.98
    assert _held_out({"ncc": 0.71, "ncc_flow": 0.705, "kept": False}, 0.7) == 0.71


def test_rivals_the_flow_checks_beside_the_winner():
    """_Candidates.rivals: the candidates scoring within the margin of the winner at the trust gate
    or above (fewer than solid_inliers matches discount the score); where the winner's agreement
    is below every_below all of them, best first, else only the best of the other orientation."""
    from refine_by_align.pipelines.alignment import _Candidates

    pool = _Candidates(None, None, None, None, Box(0, 0, 10, 10), solid_inliers=15)
    best = (0.80, 40, "aliked", True, None, None)
    near = (0.74, 40, "aliked", False, None, None)
    nearer_but_few = (0.78, 3, "sift", False, None, None)  # score 0.78 - 0.2 * 0.8 = 0.62
    same_side = (0.79, 40, "sift", True, None, None)
    pool.items = [best, near, nearer_but_few, same_side]
    assert pool.rivals(best, 0.1, 0.5) == [near]  # (the winner agrees at 0.80: the other orientation only)
    assert pool.rivals(best, 0.1, 0.5, every_below=0.9) == [same_side, near]
    assert pool.rivals(best, 0.1, 0.5, every_below=0.75) == [near]
    assert pool.rivals(best, 0.05, 0.5) == []
    assert pool.rivals(best, 0.1, 0.75) == []  # (below the gate)
    pool.refined = [best, nearer_but_few]  # the ECC-refined leading candidates, where ECC ran
    assert pool.rivals(best, 0.1, 0.5) == [] and pool.rivals(best, 0.2, 0.5) == [nearer_but_few]


def test_a_field_that_shrinks_the_reference_is_sampled_without_aliasing():
    """A field that maps each image pixel onto 3 x 3 reference pixels (a reference at three times
    the image's resolution): minification() reads 3; the antialiased sample is near the reference
    scaled down by area, plain point sampling of fine noise is not (aliasing); a field at the
    image's scale is sampled the same either way."""
    from refine_by_align.pipelines.correspondence import MINIFY_ABOVE, DenseField

    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, (300, 300, 3)).astype(np.uint8)  # detail at the pixel scale
    yy, xx = np.mgrid[0:90, 0:90].astype(np.float32)
    box = Box(0, 0, 90, 90)
    f = 3.0
    shrink = DenseField(box, np.stack([(xx + 0.5) * f - 0.5 + 5, (yy + 0.5) * f - 0.5 + 5], -1), np.ones(xx.shape, np.float32), np.ones(xx.shape, bool))
    assert abs(shrink.minification() - f) < 1e-3 and f > MINIFY_ABOVE
    area = cv2.resize(ref[5:275, 5:275], (90, 90), interpolation=cv2.INTER_AREA).astype(np.float64)
    err = lambda a: float(np.abs(a.astype(np.float64) - area).mean())
    aa, point = shrink.sample(ref, antialias=True), shrink.sample(ref)
    assert aa.shape == point.shape == (90, 90, 3)
    assert err(aa) < 0.5 * err(point), (err(aa), err(point))
    same = DenseField(box, np.stack([xx * 1.2 + 3, yy * 1.2 + 3], -1), np.ones(xx.shape, np.float32), np.ones(xx.shape, bool))
    assert abs(same.minification() - 1.2) < 1e-3
    assert np.array_equal(same.sample(ref, antialias=True), same.sample(ref))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_push_mask_takes_the_pixels_the_mask_covers_most_of(scale):
    """M* by the samples' vote: with an exact field (a rotation and a scale of 1 or 3, the
    reference then larger than the image) the pushed mask matches the mask warped onto the
    reference by the inverse map (bilinear, threshold at half, as make-cases draws the true
    region) to an IoU of 0.95 or more, without the border of a pixel it used to gain, and with
    no holes where the reference is larger."""
    from refine_by_align.pipelines.correspondence import DenseField

    h = w = 80
    mask = np.zeros((h, w), bool)
    cv2.ellipse(mask.view(np.uint8), (40, 38), (22, 13), 20, 0, 360, 1, -1)
    a = np.deg2rad(17.0)
    A = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    t = np.array([30.0, 45.0])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xy = (np.stack([xx, yy], -1) @ A.T + t).astype(np.float32)
    shape = (int(scale * 80 + 120), int(scale * 80 + 120))
    fld = DenseField(Box(0, 0, w, h), xy, np.ones((h, w), np.float32), np.ones((h, w), bool))
    region = fld.push_mask(mask, shape)
    M = np.hstack([A, t[:, None]])
    true = cv2.warpAffine(mask.astype(np.uint8) * 255, M, (shape[1], shape[0]), flags=cv2.INTER_LINEAR) >= 128
    iou = (region & true).sum() / (region | true).sum()
    assert iou >= 0.95, iou
    assert 0.95 < region.sum() / true.sum() < 1.05
    assert not fld.push_mask(np.zeros((h, w), bool), shape).any()


def test_on_reference_object_keeps_positions_a_pixel_inside_the_outline():
    """The rule every field's on_object follows, read directly: on a 20 x 20 px square object, a
    position lands on it only a pixel or more inside its outline (the outline itself is not
    copied) and only where its bilinear sample is whole: half a pixel short of that is off, as is
    anything off the picture or not finite; without an object mask every finite position counts."""
    from refine_by_align.pipelines.fields import on_reference_object

    obj = np.zeros((40, 40), bool)
    obj[10:30, 10:30] = True  # columns and rows 10..29
    xs = np.array([20.0, 11.0, 10.5, 10.0, 28.0, 28.5, 29.0, -5.0, np.nan], np.float32)
    xy = np.stack([xs, np.full_like(xs, 20.0)], -1)[None]  # (1, 9, 2): along row 20
    assert on_reference_object(xy, obj)[0].tolist() == [True, True, False, False, True, False, False, False, False]
    assert on_reference_object(xy[..., ::-1].copy(), obj)[0].tolist() == [True, True, False, False, True, False, False, False, False]  # (down column 20)
    assert on_reference_object(xy, None)[0].tolist() == [True] * 8 + [False]


def test_matches_add_up_by_source_and_keypoints_keep_clear_of_the_artifact():
    """Matches joined from several sources count each source's matches (summed where a source
    comes twice, as SIFT's two ratio rounds do) and keep every point in order; ``outside_mask``
    keeps a margin of ``exclude_px`` around the artifact (no descriptor there sees it)."""
    from refine_by_align.pipelines.matching import outside_mask

    def points(n, source, offset):
        xy = np.arange(2 * n, dtype=np.float32).reshape(n, 2) + offset
        return Matches(xy, xy + 1, np.full(n, 0.5, np.float32), {source: n})

    joined = points(3, "sift", 0) + points(2, "aliked", 100) + points(4, "sift", 200)
    assert joined.counts == {"sift": 7, "aliked": 2} and len(joined) == 9
    assert joined.img_xy[3, 0] == 100 and joined.img_xy[5, 0] == 200 and np.array_equal(joined.ref_xy, joined.img_xy + 1)
    assert len(Matches.empty() + joined) == 9 and (Matches.empty() + joined).counts == joined.counts
    mask = np.zeros((40, 40), bool)
    mask[15:25, 15:25] = True
    keep = outside_mask(mask, 4)
    assert not keep[15:25, 15:25].any() and not keep[20, 11] and not keep[11, 20] and keep[20, 10] and keep[10, 20]
    assert keep[0, 0] and (outside_mask(mask, 0) == ~mask).all()


def test_push_mask_closes_gaps_but_not_over_pixels_the_outside_won():
    """A mask of two blocks a pixel apart, pushed onto a reference three times larger: the
    closing that fills the gaps between the samples' votes does not fill the reference pixels
    where the gap's own samples outvote the mask's (about a third of the gap's rows, those no
    sample reaches, are closed over); the blocks themselves are whole."""
    from refine_by_align.pipelines.correspondence import DenseField

    h = w = 80
    mask = np.zeros((h, w), bool)
    mask[20:60, 20:38] = True
    mask[20:60, 39:60] = True  # (the gap: column 38)
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    fld = DenseField(Box(0, 0, w, h), np.stack([3 * xx + 10, 3 * yy + 10], -1), np.ones((h, w), np.float32), np.ones((h, w), bool))
    region = fld.push_mask(mask, (260, 260))
    rows = slice(3 * 20 + 10 + 3, 3 * 60 + 10 - 3)  # (inside the blocks' rows)
    assert region[rows, 3 * 37 + 10].all() and region[rows, 3 * 39 + 10 + 1].all()
    gap = region[rows, 3 * 38 + 10 - 1 : 3 * 38 + 10 + 2]  # (the gap's samples land on columns 123 and 125)
    assert gap[:, 0].mean() < 0.5 and gap[:, 2].mean() < 0.5, (gap[:, 0].mean(), gap[:, 2].mean())


def test_sift_against_a_mirrored_reference_lands_on_the_mirrored_pixel():
    """SIFT matched against the mirrored reference (its own descriptors rearranged): on an exact
    mirror image, each match's reference position is the image position's mirror, x -> W - 1 - x,
    to a hundredth of a pixel at the median (OpenCV's quarter-pixel keypoint offset, mirrored,
    would leave it half a pixel off)."""
    from .test_pipeline import _textured_pair

    image, mask, _ = _textured_pair()
    w = image.shape[1]
    m = sift_matches(image, mask, np.ascontiguousarray(image[:, ::-1]), None, flip=True)
    assert len(m) > 50
    dx = m.ref_xy[:, 0] - (w - 1 - m.img_xy[:, 0])
    dy = m.ref_xy[:, 1] - m.img_xy[:, 1]
    assert abs(np.median(dx)) < 0.01 and abs(np.median(dy)) < 0.01, (np.median(dx), np.median(dy))


def test_minification_is_the_geometric_mean_and_confidence_falls_off_over_half_the_box():
    """A field stretched 2 times along x and 8 times along y spans 4 reference pixels an image
    pixel (the geometric mean of the two steps, not their larger or their average). A field's
    confidence is exp(-d / reach), d the distance to the nearest inlier match, reach half the box's
    longer side by default: 1 at an inlier, falling off across the box away from the matches."""
    from refine_by_align.pipelines.correspondence import DenseField

    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stretched = DenseField(Box(0, 0, w, h), np.stack([2 * xx, 8 * yy], -1), np.ones((h, w), np.float32), np.ones((h, w), bool))
    assert stretched.minification() == pytest.approx(4.0, abs=1e-3)

    box = Box(100, 100, 180, 140)  # 80 x 40 px: the reach is 40 px
    src = np.stack(np.meshgrid(np.arange(105.0, 135.0, 5.0), np.arange(105.0, 125.0, 5.0)), -1).reshape(-1, 2).astype(np.float32)  # (the box's left part)
    m = Matches(src, src + np.float32([5.0, -3.0]), np.ones(len(src), np.float32), {"sift": len(src)})
    fld = with_confidence(dense_field(fit_field(m, focus=box), box, None, confidence=False))
    inliers = fld.fit.inlier_xy
    assert len(inliers) == len(src)
    for x, y in [(110, 110), (160, 139), (179, 100)]:
        d = np.linalg.norm(inliers - np.float32([x, y]), axis=1).min()
        assert fld.confidence[y - 100, x - 100] == pytest.approx(np.exp(-d / 40.0), rel=1e-4), (x, y, d)
    assert fld.confidence[10, 10] == pytest.approx(1.0)
