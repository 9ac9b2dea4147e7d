"""Hole filling of the U-Net's masked-image input (fill.py)."""

import cv2
import numpy as np
import pytest
import torch

from refine_by_align.fill import fill_hole


def _inputs():
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    img = torch.stack([xx / 15, yy / 15, torch.full_like(xx, 0.5)])[None].repeat(2, 1, 1, 1)  # smooth ramps
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 5:10, 6:11] = 1
    return img, mask


def test_zero_fill_blanks_only_the_hole():
    img, mask = _inputs()
    out = fill_hole(img, mask, "zero")
    assert (out[0, :, 5:10, 6:11] == 0).all()
    assert torch.equal(out[mask.expand_as(out) == 0], img[mask.expand_as(img) == 0])


def test_telea_continues_a_smooth_ramp_and_keeps_the_rest():
    img, mask = _inputs()
    out = fill_hole(img, mask, "telea")
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], img[outside])  # bit-identical outside the hole
    err = (out[0, :, 5:10, 6:11] - img[0, :, 5:10, 6:11]).abs().max()
    assert err < 0.1  # a ramp is continued within 10% (zero fill would be off by up to 0.67)
    assert torch.equal(out[1], img[1])  # no hole: unchanged


def test_warp_fill_takes_the_warp_only_where_it_is_trusted_inside_the_hole():
    """hole_fill "warp": the warped reference fills the hole's trusted pixels, Telea the untrusted
    ones, and nothing outside the hole changes, trusted or not; without a warp or a trust map it
    is Telea's fill; a warp or trust of another shape is a ValueError."""
    img, mask = _inputs()
    warp = torch.full_like(img, 0.25)
    trust = torch.zeros_like(mask)
    trust[:, :, :, :8] = 1.0  # the left half of the picture, hole and surroundings alike
    out = fill_hole(img, mask, "warp", warp, trust)
    telea = fill_hole(img, mask, "telea")
    hole = (mask > 0.5).expand_as(out)
    trusted = (trust > 0.5).expand_as(out)
    assert (out[hole & trusted] == 0.25).all() and hole[trusted].any()
    assert torch.equal(out[hole & ~trusted], telea[hole & ~trusted]) and (telea[hole & ~trusted] != 0.25).all()
    assert torch.equal(out[~hole], img[~hole])  # (trusted pixels outside the hole keep the image)
    assert torch.equal(fill_hole(img, mask, "warp"), telea) and torch.equal(fill_hole(img, mask, "warp", warp), telea)
    with pytest.raises(ValueError, match="do not match"):
        fill_hole(img, mask, "warp", warp[:, :, :8], trust)


def test_bad_method_and_shapes():
    img, mask = _inputs()
    with pytest.raises(ValueError, match="hole fill"):
        fill_hole(img, mask, "mean")
    with pytest.raises(ValueError, match="fill_hole wants"):
        fill_hole(img[:, :1], mask, "telea")


def test_residual_patch_without_correction_is_the_full_resolution_telea_fill():
    import cv2

    from refine_by_align.fill import FULL_TELEA_RADIUS, residual_patch

    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)  # non-square on purpose
    mask = np.zeros((48, 40), bool)
    mask[10:30, 12:28] = True
    small = rng.random((16, 16, 3)).astype(np.float32)
    got = residual_patch(crop, mask, small, small.copy())
    want = cv2.inpaint(crop, mask.astype(np.uint8) * 255, FULL_TELEA_RADIUS, cv2.INPAINT_TELEA)
    assert np.array_equal(got, want)
    brighter = residual_patch(crop, mask, np.clip(small + 0.1, 0, 1), small)
    assert brighter.astype(int).sum() > got.astype(int).sum()  # a positive correction brightens
    with pytest.raises(ValueError, match="shapes"):
        residual_patch(crop, mask[:10], small, small)


def test_residual_patch_corrects_only_inside_the_mask():
    from refine_by_align.fill import residual_patch

    rng = np.random.default_rng(1)
    crop = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[12:28, 12:28] = True
    prefill = rng.random((16, 16, 3)).astype(np.float32)
    out = np.clip(prefill + 0.2 * rng.standard_normal((16, 16, 3)).astype(np.float32), 0, 1)  # corrected everywhere
    hole = np.zeros((16, 16), np.float32)
    hole[5:11, 5:11] = 1.0
    got = residual_patch(crop, mask, out, prefill, hole)
    assert np.array_equal(got[~mask], crop[~mask])  # outside the mask: the input itself
    assert not np.array_equal(got[mask], residual_patch(crop, mask, prefill, prefill)[mask])  # inside: corrected
    # the model's hole (small) covering the left part of the mask only: the correction stays in it,
    # and the mask's right columns, beyond the cubic upsampling's reach, are the plain fill
    left = np.zeros((16, 16), np.float32)
    left[5:11, 5:8] = 1.0  # (full-resolution columns 12-20 of the mask's 12-27)
    part = residual_patch(crop, mask, out, prefill, left)
    plain = residual_patch(crop, mask, prefill, prefill)
    assert np.array_equal(part[12:28, 26:28], plain[12:28, 26:28]) and not np.array_equal(part[12:28, 12:20], plain[12:28, 12:20])
    assert np.array_equal(part[~mask], crop[~mask])


def test_residual_patch_blur_removes_speckle_and_keeps_a_colour_shift():
    from refine_by_align.fill import residual_patch

    crop = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    prefill = np.full((16, 16, 3), 100 / 255, np.float32)
    hole = np.ones((16, 16), np.float32)
    checker = (np.indices((16, 16)).sum(0) % 2 * 2 - 1).astype(np.float32)[..., None] * 0.2  # +-0.2 speckle
    base = residual_patch(crop, mask, prefill, prefill, hole)[mask].astype(float)
    sharp = residual_patch(crop, mask, prefill + checker, prefill, hole)[mask].astype(float) - base
    smooth = residual_patch(crop, mask, prefill + checker, prefill, hole, blur=2.0)[mask].astype(float) - base
    assert smooth.std() < 0.2 * sharp.std()  # the speckle is gone ...
    shifted = residual_patch(crop, mask, prefill + 0.1, prefill, hole, blur=2.0)[mask].astype(float) - base
    assert abs(shifted[20:-20].mean() - 25.5) < 1.0  # ... a uniform correction passes unchanged


def test_residual_patch_shrinks_an_uncertain_correction_toward_the_fill():
    """Wiener shrinkage: no sample variance -> the full correction; a variance far above the
    correction's power -> (almost) the classical fill; in between, in between."""
    from refine_by_align.fill import residual_patch

    rng = np.random.default_rng(2)
    crop = rng.integers(60, 200, (48, 48, 3), dtype=np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[12:36, 12:36] = True
    prefill = np.full((16, 16, 3), 0.5, np.float32)
    out = prefill + 0.1
    base = residual_patch(crop, mask, prefill, prefill)[mask].astype(float)

    def shift(var):
        got = residual_patch(crop, mask, out, prefill, blur=2.0, mean_var=np.full((16, 16), var, np.float32), shrink=16.0)
        return (got[mask].astype(float) - base).mean()

    full = residual_patch(crop, mask, out, prefill, blur=2.0)[mask].astype(float).mean() - base.mean()
    assert shift(0.0) == pytest.approx(full, abs=0.6)  # (up to rounding to integers)
    assert abs(shift(1.0)) < 0.05 * full  # power 0.01 against 16 x 1.0: nearly nothing passes
    assert 0.2 * full < shift(0.01 / 16) < 0.8 * full  # equal power and scaled variance: about half


# ----------------------------------------------------------------------------- the harmonic fill


def test_harmonic_fill_solves_laplace_and_keeps_the_rest():
    """Each hole pixel is the mean of its four neighbours (the discrete Laplace equation), a linear
    ramp (harmonic) comes back exactly, and pixels outside the hole are untouched."""
    from refine_by_align.fill import harmonic_fill

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[8:20, 10:31] = True
    mask[20:24, 12:15] = True  # not a rectangle
    out = harmonic_fill(img, mask)
    assert np.array_equal(out[~mask], img[~mask])
    f = out.astype(float)
    mean4 = (f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:]) / 4.0
    inner = mask[1:-1, 1:-1]
    assert np.abs(f[1:-1, 1:-1][inner] - mean4[inner]).max() <= 1.0  # within the uint8 rounding of the neighbours
    assert np.abs(f[1:-1, 1:-1][inner] - mean4[inner]).mean() < 0.5
    ramp = np.stack(np.broadcast_arrays(*np.meshgrid(np.arange(40) * 5, np.arange(30) * 3), np.full((30, 40), 77)), -1).astype(np.uint8)
    assert np.array_equal(harmonic_fill(ramp, mask), ramp)
    # Telea does not reproduce the ramp exactly (the test above would fail for it)
    import cv2

    assert not np.array_equal(cv2.inpaint(ramp, mask.astype(np.uint8) * 255, 5.0, cv2.INPAINT_TELEA), ramp)


def test_harmonic_fill_edges_and_bad_input():
    from refine_by_align.fill import harmonic_fill

    img = np.zeros((10, 12, 3), np.uint8)
    img[:, :6] = 200
    mask = np.zeros((10, 12), bool)
    mask[0:5, 4:8] = True  # touches the top edge: only the neighbours inside the picture count
    out = harmonic_fill(img, mask)
    assert out[0, 4, 0] > out[0, 7, 0] and 0 < out[2, 6, 0] < 200
    assert np.array_equal(harmonic_fill(img, np.ones((10, 12), bool)), img)  # nothing around the hole: as given
    assert np.array_equal(harmonic_fill(img, np.zeros((10, 12), bool)), img)
    with pytest.raises(ValueError, match="harmonic_fill wants"):
        harmonic_fill(img, mask[:5])


def test_fill_hole_and_residual_patch_with_the_harmonic_fill():
    from refine_by_align.fill import harmonic_fill, residual_patch

    img, mask = _inputs()
    out = fill_hole(img, mask, "harmonic")
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], img[outside])
    assert (out[0, :, 5:10, 6:11] - img[0, :, 5:10, 6:11]).abs().max() < 1.5 / 255  # the ramp, to uint8 rounding
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
    m = np.zeros((48, 40), bool)
    m[10:30, 12:28] = True
    small = rng.random((16, 16, 3)).astype(np.float32)
    assert np.array_equal(residual_patch(crop, m, small, small.copy(), fill="harmonic"), harmonic_fill(crop, m))
    with pytest.raises(ValueError, match="classical fill"):
        residual_patch(crop, m, small, small.copy(), fill="mean")


def test_harmonic_fill_coarse_to_fine_matches_the_exact_solution():
    """A hole larger than ``max_direct`` is solved at half size and smoothed at full size: within a
    few grey levels of the exact (one LU) solution on this sharp-edged picture (about 1 on average),
    closer still on smooth photos; the rest of the picture untouched."""
    import cv2

    from refine_by_align.fill import harmonic_fill

    rng = np.random.default_rng(2)
    img = cv2.resize(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8), (140, 120), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((120, 140), bool)
    mask[10:110, 20:130] = True
    mask[10:40, 20:50] = False  # an L shape
    mask[115:, 60:70] = True  # a second part, on the bottom edge
    exact = harmonic_fill(img, mask)
    for max_direct, worst, mean in ((5000, 8, 2.0), (500, 16, 5.0)):  # one halving; three halvings
        fast = harmonic_fill(img, mask, max_direct=max_direct)
        assert np.array_equal(fast[~mask], img[~mask])
        diff = np.abs(fast.astype(int) - exact.astype(int))[mask]
        assert diff.max() <= worst and diff.mean() < mean, (max_direct, diff.max(), diff.mean())
    smooth = cv2.GaussianBlur(img, (0, 0), 6)
    diff = np.abs(harmonic_fill(smooth, mask, max_direct=5000).astype(int) - harmonic_fill(smooth, mask).astype(int))[mask]
    assert diff.max() <= 3 and diff.mean() < 1.0, (diff.max(), diff.mean())
    with pytest.raises(ValueError, match="8-bit"):
        harmonic_fill(img.astype(np.uint16), mask)


def test_harmonic_fill_single_pixel_and_corner():
    from refine_by_align.fill import harmonic_fill

    img = np.zeros((5, 6, 3), np.uint8)
    img[1, 2], img[3, 2], img[2, 1], img[2, 3] = 40, 80, 120, 160
    hole = np.zeros((5, 6), bool)
    hole[2, 2] = True
    assert (harmonic_fill(img, hole)[2, 2] == 100).all()  # the mean of its four neighbours
    corner = np.zeros((5, 6), bool)
    corner[0, 0] = True
    img[0, 1], img[1, 0] = 10, 30
    assert (harmonic_fill(img, corner)[0, 0] == 20).all()  # only the two neighbours inside the picture


def test_harmonic_interpolate_carries_a_smooth_field_into_a_hole():
    """A linear field (harmonic everywhere) is reproduced inside the hole, negative values and
    fractions included, exactly by the direct solve and within a small error by the scaled-down one;
    the pixels outside the hole are returned as given."""
    from refine_by_align.fill import harmonic_interpolate

    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    field = np.stack([0.1 * xx - 3.25, -0.05 * yy + 1.5], -1)  # (H, W, 2)
    hole = np.zeros((120, 160), bool)
    hole[20:100, 30:140] = True
    given = field.copy()
    given[hole] = 99.0
    exact = harmonic_interpolate(given, hole)
    assert exact.dtype == np.float32 and exact.shape == field.shape
    assert np.abs(exact - field)[hole].max() < 1e-4
    assert np.array_equal(exact[~hole], given[~hole])
    coarse = harmonic_interpolate(given, hole, max_direct=1000)  # 8,800 hole pixels: solved scaled down
    assert np.abs(coarse - field)[hole].max() < 0.05
    assert np.array_equal(coarse[~hole], given[~hole])
    assert np.array_equal(harmonic_interpolate(given, np.zeros_like(hole)), given)
    # a steep field and a hole reaching the picture's edge: the scaled-down solve, smoothed at full
    # size, stays within a fraction of a coarse pixel of the exact solution
    steep = np.stack([xx, 0.5 * yy], -1)
    edge = np.zeros_like(hole)
    edge[20:, 30:140] = True
    steep[edge] = 99.0
    exact_edge = harmonic_interpolate(steep, edge)
    coarse_edge = harmonic_interpolate(steep, edge, max_direct=1000)  # coarse pixels of about 3.3 px
    diff = np.abs(coarse_edge - exact_edge)[edge]
    assert diff.max() < 1.0 and diff.mean() < 0.2, (diff.max(), diff.mean())
    with pytest.raises(ValueError, match="harmonic_interpolate"):
        harmonic_interpolate(given[..., 0], hole)


def test_harmonic_interpolate_takes_more_channels_than_opencv_resizes_at_once():
    """The flow carry passes three flows side by side (six channels): a hole over the direct
    solve's size crashed in cv2.resize (at most 4 channels), a refine's traceback. Each channel is
    solved as on its own."""
    from refine_by_align.fill import harmonic_interpolate

    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    field = np.stack([0.1 * xx, -0.05 * yy, xx * 0.02 + yy * 0.01, 1.0 + 0 * xx, -xx / 80, yy / 60], -1)  # (H, W, 6)
    hole = np.zeros((120, 160), bool)
    hole[20:100, 30:140] = True
    given = field.copy()
    given[hole] = 99.0
    six = harmonic_interpolate(given, hole, max_direct=1000)  # (scaled down: the path that crashed)
    apart = np.concatenate([harmonic_interpolate(np.ascontiguousarray(given[..., c : c + 3]), hole, max_direct=1000) for c in (0, 3)], -1)
    assert six.shape == field.shape and np.abs(six - apart).max() < 1e-4
    assert np.abs(six - field)[hole].max() < 0.05


def test_spline_interpolate_continues_a_curved_field_and_averages_noise():
    """A curved field (x^2 + y^2 is not harmonic: the harmonic solution sags in the middle of the
    hole) is carried into the hole by the smoothing spline to within a few hundredths, several
    times closer than harmonic_interpolate; noise of 0.3 around the hole is averaged out to well
    under 0.3 inside; the known pixels come back as given, and a bad shape is refused by name."""
    from refine_by_align.fill import harmonic_interpolate, spline_interpolate

    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    field = np.stack([((xx - 80) ** 2 + (yy - 60) ** 2) / 400.0, 0.02 * xx * yy / 40.0], -1)  # (H, W, 2)
    hole = np.zeros((120, 160), bool)
    hole[40:80, 55:105] = True
    given = field.copy()
    given[hole] = 99.0
    spline = spline_interpolate(given, hole)
    harmonic = harmonic_interpolate(given, hole)
    assert spline.dtype == np.float32 and spline.shape == field.shape
    assert np.array_equal(spline[~hole], given[~hole])
    err, err_h = np.abs(spline - field)[hole].mean(), np.abs(harmonic - field)[hole].mean()
    assert err < 0.05 and err < 0.25 * err_h, (err, err_h)
    noisy = given + np.random.default_rng(0).normal(0, 0.3, given.shape).astype(np.float32)
    noisy[hole] = 99.0
    assert np.abs(spline_interpolate(noisy, hole) - field)[hole].mean() < 0.1
    assert np.array_equal(spline_interpolate(given, np.zeros_like(hole)), given)
    with pytest.raises(ValueError, match="spline_interpolate"):
        spline_interpolate(given[..., 0], hole)


def test_spline_interpolate_on_a_coarse_lattice_matches_every_pixel():
    """The spline evaluated on a 4-px lattice and resampled (the default) gives what evaluating it
    at every pixel gives to within 0.005, on a curved field and a noisy one, and on a hole
    that touches the picture's edge (the lattice runs past it)."""
    from refine_by_align.fill import spline_interpolate

    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    field = np.stack([((xx - 80) ** 2 + (yy - 60) ** 2) / 400.0, np.sin(xx / 30.0) + 0.02 * xx * yy / 40.0], -1)
    noisy = field + np.random.default_rng(1).normal(0, 0.3, field.shape).astype(np.float32)
    for hole_box in ((slice(40, 80), slice(55, 105)), (slice(0, 50), slice(120, 160))):
        hole = np.zeros((120, 160), bool)
        hole[hole_box] = True
        for values in (field, noisy):
            every = spline_interpolate(values, hole, eval_step=1)
            coarse = spline_interpolate(values, hole, eval_step=4)
            assert np.array_equal(coarse[~hole], values[~hole])
            assert np.abs(coarse - every)[hole].max() < 0.005, np.abs(coarse - every)[hole].max()


def test_bicubic_resampling_on_the_hole_box_grid_is_fitpacks_point_evaluation_bit_for_bit():
    """The resampling of spline_interpolate's lattice reads FITPACK's grid evaluation over the
    hole's box where the hole fills a tenth of it or more: the same values, bit for bit, as
    evaluating at each hole pixel (RectBivariateSpline.ev), on a compact hole, a ragged one and a
    thin diagonal across a wide box (which is evaluated point by point)."""
    from scipy.interpolate import RectBivariateSpline

    from refine_by_align.fill import _bicubic_at

    rng = np.random.default_rng(5)
    gy, gx = np.arange(-4.0, 132.0, 4.0), np.arange(-4.0, 172.0, 4.0)
    spline = RectBivariateSpline(gy, gx, rng.normal(0, 3, (len(gy), len(gx))), kx=3, ky=3, s=0)
    yy, xx = np.mgrid[0:120, 0:160]
    compact = ((yy - 60) / 40.0) ** 2 + ((xx - 80) / 50.0) ** 2 <= 1
    ragged = compact & (rng.random(compact.shape) < 0.3)
    thin = np.abs(yy * 160 / 120 - xx) < 1
    for hole in (compact, ragged, thin):
        ys, xs = np.nonzero(hole)
        assert np.array_equal(_bicubic_at(spline, ys, xs), spline.ev(ys, xs))
    ys, xs = np.nonzero(compact)
    assert not np.array_equal(_bicubic_at(spline, ys, xs), spline.ev(ys + 1, xs))  # (the positions matter)


def test_spline_interpolate_carries_channels_side_by_side_as_one_at_a_time():
    """Several fields over one hole carried in one call (their channels side by side: one system
    solved for all, as each flow round carries its flows) give, to within 1e-5, what each gives
    carried alone; the harmonic carry too."""
    from refine_by_align.fill import harmonic_interpolate, spline_interpolate

    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    rng = np.random.default_rng(3)
    fields = [np.stack([np.sin(xx / (20.0 + 5 * i)) + 0.01 * i * yy, 0.02 * xx * yy / (40.0 + i)], -1) + rng.normal(0, 0.2, (120, 160, 2)).astype(np.float32) for i in range(3)]
    hole = np.zeros((120, 160), bool)
    hole[30:75, 50:110] = True
    for carry in (spline_interpolate, harmonic_interpolate):
        together = carry(np.concatenate(fields, axis=-1), hole)
        for i, f in enumerate(fields):
            alone = carry(f, hole)
            assert np.abs(together[..., 2 * i : 2 * i + 2] - alone).max() < 1e-5, (carry.__name__, i)


def _stripes(h=96, w=96, period=12):
    yy, xx = np.mgrid[0:h, 0:w]
    v = 128 + 90 * np.sin(2 * np.pi * xx / period)
    return np.stack([v, 255 - v, np.full_like(v, 60.0)], -1).round().astype(np.uint8)


def test_fsr_fill_continues_stripes_that_the_harmonic_fill_blurs():
    """FSR continues a periodic pattern across the hole; the harmonic fill (and Telea) can only
    carry the rim's mean into it. Both keep every pixel outside the hole."""
    from refine_by_align.fill import classical_fill, fsr_fill, harmonic_fill

    img = _stripes()
    mask = np.zeros(img.shape[:2], bool)
    mask[30:62, 34:58] = True
    given = img.copy()
    given[mask] = 0  # the hole's own pixels must not leak in
    err = {}
    for name, out in (("fsr", fsr_fill(given, mask)), ("harmonic", harmonic_fill(given, mask)), ("classical", classical_fill(given, mask, "fsr"))):
        assert np.array_equal(out[~mask], img[~mask]), name
        err[name] = float(np.abs(out[mask].astype(float) - img[mask]).mean())
    assert err["fsr"] == err["classical"]
    assert err["fsr"] < 8.0 and err["harmonic"] > 30.0, err  # (measured: 1.0 and 40.6 grey levels)


def test_fsr_fill_on_its_window_equals_the_whole_picture():
    """fsr_fill solves on a window that starts on FSR's 16 px block grid: the result is the one of
    OpenCV's inpainting over the whole picture."""
    import cv2

    from refine_by_align.fill import fsr_fill

    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8), (0, 0), 3)
    mask = np.zeros(img.shape[:2], bool)
    mask[70:95, 101:130] = True  # off the block grid on every side
    whole = np.zeros_like(img)
    cv2.xphoto.inpaint(img, np.where(mask, 0, 255).astype(np.uint8), whole, cv2.xphoto.INPAINT_FSR_FAST)
    out = fsr_fill(img, mask)
    assert np.array_equal(out[mask], whole[mask])


def test_fsr_fill_edges_grey_and_bad_input():
    from refine_by_align.fill import fsr_fill

    img = _stripes(40, 44)
    mask = np.zeros(img.shape[:2], bool)
    mask[0:8, 0:10] = True  # a corner
    out = fsr_fill(img, mask)
    assert np.array_equal(out[~mask], img[~mask]) and np.abs(out[mask].astype(float) - img[mask]).mean() < 20
    grey = fsr_fill(img[..., :1], mask)
    assert grey.shape == (40, 44, 1) and np.array_equal(grey[~mask], img[..., :1][~mask])
    assert np.array_equal(fsr_fill(img, np.ones(mask.shape, bool)), img)  # nothing around the hole: as given
    assert np.array_equal(fsr_fill(img, np.zeros(mask.shape, bool)), img)
    for bad, match in (((img, mask[:5]), "fsr_fill wants"), ((img.astype(np.float32), mask), "8-bit"), ((img[..., :2], mask), "fsr_fill wants")):
        with pytest.raises(ValueError, match=match):
            fsr_fill(*bad)
    with pytest.raises(ValueError, match="FSR quality"):
        fsr_fill(img, mask, quality="slow")


def test_mixed_fill_weighs_each_fill_by_its_error_on_the_ring():
    """Stripes: FSR predicts the ring of known pixels far better than the biharmonic fill, so it
    gets nearly all the weight and the mix is close to the truth. A linear ramp: the biharmonic
    fill is exact there (FSR is not quite), so it gets nearly all of it. The mix lies between the
    two fills and keeps the rest."""
    from refine_by_align.fill import biharmonic_fill, classical_fill, fsr_fill, mixed_fill, mixed_fill_weights

    img = _stripes()
    mask = np.zeros(img.shape[:2], bool)
    mask[30:62, 34:58] = True
    w = mixed_fill_weights(img, mask)
    assert set(w) == {"fsr", "biharmonic"} and abs(sum(w.values()) - 1) < 1e-9 and w["fsr"] > 0.95, w
    out = mixed_fill(img, mask)
    f, b = fsr_fill(img, mask).astype(float), biharmonic_fill(img, mask).astype(float)
    assert np.array_equal(out[~mask], img[~mask])
    assert np.array_equal(out, classical_fill(img, mask, "mixed"))
    lo, hi = np.minimum(f, b)[mask], np.maximum(f, b)[mask]
    assert ((out[mask] >= lo - 0.5) & (out[mask] <= hi + 0.5)).all()
    assert np.abs(out[mask] - np.rint(w["fsr"] * f + w["biharmonic"] * b)[mask]).max() <= 1
    assert np.abs(out[mask].astype(float) - img[mask]).mean() < 3.0

    yy, xx = np.mgrid[0:64, 0:64]
    ramp = np.stack([2 * xx + 20, 3 * yy + 10, xx + yy + 30], -1).astype(np.uint8)
    m2 = np.zeros((64, 64), bool)
    m2[20:40, 24:44] = True
    assert mixed_fill_weights(ramp, m2)["biharmonic"] > 0.95
    assert np.abs(mixed_fill(ramp, m2)[m2].astype(float) - ramp[m2]).max() <= 2


def _stripes_then_ramp(w=192):
    """Stripes on the left half (FSR continues them), a smooth ramp on the right (FSR is no better
    than a smooth fill there), and a hole across both."""
    yy, xx = np.mgrid[0:64, 0:w]
    ramp = np.stack([xx // 2 + 40, yy + 30, (xx + yy) // 3 + 20], -1).astype(np.uint8)
    img = np.where((xx < w // 2)[..., None], _stripes(64, w), ramp).astype(np.uint8)
    mask = np.zeros((64, w), bool)
    mask[24:40, 12 : w - 12] = True
    return img, mask


def test_local_mixed_fill_weighs_each_fill_where_it_does_well():
    """The mixed fill gives FSR nearly all the weight everywhere (its ring error over the whole
    ring is far lower); the local mix gives it nearly all of it on the stripes and much less on the
    ramp, and comes closer to the truth than the mixed fill on both sides."""
    from refine_by_align.fill import LOCAL_FILLS, classical_fill, local_mixed_fill, local_mixed_weights, mixed_fill, mixed_fill_weights

    img, mask = _stripes_then_ramp()
    cols = np.nonzero(mask)[1]
    stripes, ramp = cols < 60, cols > 140
    w = local_mixed_weights(img, mask)
    assert w.shape == (int(mask.sum()), len(LOCAL_FILLS)) and np.allclose(w.sum(1), 1.0) and (w >= 0).all()
    fsr = LOCAL_FILLS.index("fsr")
    assert mixed_fill_weights(img, mask)["fsr"] > 0.95
    assert w[stripes, fsr].mean() > 0.99 and w[ramp, fsr].mean() < 0.8, (w[stripes].mean(0), w[ramp].mean(0))  # (measured: 1.00, 0.64)
    out, mixed = local_mixed_fill(img, mask), mixed_fill(img, mask)
    assert np.array_equal(out[~mask], img[~mask]) and np.array_equal(out, classical_fill(img, mask, "mixed-local"))
    err = np.abs(out[mask].astype(float) - img[mask])
    err_mixed = np.abs(mixed[mask].astype(float) - img[mask])
    for side in (stripes, ramp):  # (measured: 0.84 / 1.50 against 1.25 / 2.43 grey levels)
        assert err[side].mean() < 0.8 * err_mixed[side].mean(), (err[side].mean(), err_mixed[side].mean())


def test_local_mixed_weights_on_the_window_equal_the_whole_picture():
    """The ring errors are gathered on a window around the grown hole; the Gaussian reaches 4
    sigma, so the weights equal those computed over the whole picture (also for a hole at the
    picture's edge, where both reflect the same pixels)."""
    from refine_by_align.fill import LOCAL_FILLS, LOCAL_POWER, LOCAL_PRIOR, LOCAL_SIGMA, MIXED_RING, _disk_kernel, classical_fill, local_mixed_weights

    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8), (0, 0), 3)
    for box in ((slice(50, 70), slice(60, 90)), (slice(0, 14), slice(120, 150))):
        mask = np.zeros(img.shape[:2], bool)
        mask[box] = True
        grown = cv2.dilate(mask.astype(np.uint8), _disk_kernel(MIXED_RING)) > 0
        band = grown & ~mask
        density = cv2.GaussianBlur(band.astype(np.float64), (0, 0), LOCAL_SIGMA)[mask]
        inv = []
        for name in LOCAL_FILLS:
            err = ((classical_fill(img, grown, name).astype(np.float64) - img) ** 2).mean(-1) * band
            local = (cv2.GaussianBlur(err, (0, 0), LOCAL_SIGMA)[mask] + LOCAL_PRIOR * err[band].mean()) / (density + LOCAL_PRIOR)
            inv.append(1.0 / np.maximum(local, 1e-6) ** LOCAL_POWER)
        inv = np.stack(inv, -1)
        assert np.allclose(local_mixed_weights(img, mask), inv / inv.sum(1, keepdims=True), rtol=1e-9, atol=1e-12)


def test_local_mixed_fill_edge_cases_large_holes_and_bad_input():
    from refine_by_align.fill import LOCAL_FILLS, local_mixed_fill, local_mixed_weights

    img = _stripes(32, 32)
    assert np.allclose(local_mixed_weights(img, np.ones((32, 32), bool)), 1.0 / len(LOCAL_FILLS))  # no known pixel: no evidence
    assert np.array_equal(local_mixed_fill(img, np.ones((32, 32), bool)), img)
    assert np.array_equal(local_mixed_fill(img, np.zeros((32, 32), bool)), img)
    with pytest.raises(ValueError, match="local_mixed_fill wants"):
        local_mixed_fill(img, np.zeros((31, 32), bool))
    with pytest.raises(ValueError, match="ring"):
        local_mixed_weights(img, np.zeros((32, 32), bool), ring=0)
    with pytest.raises(ValueError, match="sigma and prior"):
        local_mixed_weights(img, np.zeros((32, 32), bool), sigma=0.0)
    for bad in (("fsr",), ("fsr", "fsr"), ("fsr", "mixed"), ("fsr", "blur")):
        with pytest.raises(ValueError, match="two or more distinct classical fills"):
            local_mixed_weights(img, np.zeros((32, 32), bool), fills=bad)
    mask = np.zeros((32, 32), bool)
    mask[10:20, 12:22] = True
    two = local_mixed_weights(img, mask, fills=("fsr", "biharmonic"))
    assert two.shape == (100, 2) and np.allclose(two.sum(1), 1.0)
    # a hole over max_hole pixels: filled on the picture scaled down, the rest kept
    yy, xx = np.mgrid[0:120, 0:160]
    ramp = np.stack([xx + 40, yy + 60, (xx + yy) // 2 + 20], -1).astype(np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:120] = True  # 4,800 pixels
    out = local_mixed_fill(ramp, mask, max_hole=1_000)
    assert np.array_equal(out[~mask], ramp[~mask]) and np.abs(out[mask].astype(float) - ramp[mask]).mean() < 3.0
    grey = local_mixed_fill(ramp[..., :1], mask)
    assert grey.shape == (120, 160, 1) and np.array_equal(grey[~mask], ramp[..., :1][~mask])


def test_biharmonic_fill_continues_gradients_and_keeps_the_rest():
    """A quadratic bowl: the harmonic fill can only flatten it (each pixel the mean of its
    neighbours), the biharmonic one follows its curvature."""
    from refine_by_align.fill import biharmonic_fill, harmonic_fill

    yy, xx = np.mgrid[0:48, 0:48].astype(float)
    bowl = (40 + 0.15 * ((xx - 24) ** 2 + (yy - 24) ** 2))[..., None].repeat(3, -1).round().astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[14:34, 14:34] = True
    b, h = biharmonic_fill(bowl, mask), harmonic_fill(bowl, mask)
    assert np.array_equal(b[~mask], bowl[~mask])
    eb, eh = (np.abs(x[mask].astype(float) - bowl[mask]).mean() for x in (b, h))
    assert eb < 0.7 * eh, (eb, eh)  # (measured: 5.9 and 10.2 grey levels)
    assert np.array_equal(biharmonic_fill(bowl, np.zeros((48, 48), bool)), bowl)
    with pytest.raises(ValueError, match="8-bit"):
        biharmonic_fill(bowl.astype(np.float32), mask)


def test_mixed_fill_edge_cases_and_bad_input():
    from refine_by_align.fill import MIXED_FILLS, mixed_fill, mixed_fill_weights

    img = _stripes(32, 32)
    assert mixed_fill_weights(img, np.ones((32, 32), bool)) == {n: 0.5 for n in MIXED_FILLS}  # no known pixel: no evidence either way
    assert np.array_equal(mixed_fill(img, np.ones((32, 32), bool)), img)
    assert np.array_equal(mixed_fill(img, np.zeros((32, 32), bool)), img)
    with pytest.raises(ValueError, match="mixed_fill wants"):
        mixed_fill(img, np.zeros((31, 32), bool))
    with pytest.raises(ValueError, match="ring"):
        mixed_fill_weights(img, np.zeros((32, 32), bool), ring=0)


def test_mixed_fill_solves_a_large_hole_scaled_down():
    """A hole over max_hole pixels is filled on the picture scaled down (bounded time on a huge
    mask) and scaled back: the rest of the picture is kept, and a smooth ramp comes back closely."""
    from refine_by_align.fill import mixed_fill

    yy, xx = np.mgrid[0:120, 0:160]
    ramp = np.stack([xx + 40, yy + 60, (xx + yy) // 2 + 20], -1).astype(np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:120] = True  # 4,800 pixels
    out = mixed_fill(ramp, mask, max_hole=1_000)  # scaled down by 3
    assert np.array_equal(out[~mask], ramp[~mask])
    assert np.abs(out[mask].astype(float) - ramp[mask]).mean() < 3.0
    grey = mixed_fill(ramp[..., :1], mask, max_hole=1_000)
    assert grey.shape == (120, 160, 1) and np.array_equal(grey[~mask], ramp[..., :1][~mask])


@pytest.mark.parametrize("channels", [3, 1])
def test_fsr_fill_at_the_right_and_bottom_edge_fills_every_hole_pixel(channels):
    """OpenCV's FSR leaves the pixels of a block cut off by the picture's edge unfilled (a bright
    green in colour, the hole's own values in grey): fsr_fill pads the window to whole blocks."""
    from refine_by_align.fill import fsr_fill

    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.integers(0, 255, (70, 62, 3), dtype=np.uint8), (0, 0), 4)[..., :channels].reshape(70, 62, channels)
    mask = np.zeros((70, 62), bool)
    mask[20:40, 48:62] = True  # touches the right edge; 62 is not a multiple of 16
    mask[60:70, 10:30] = True  # and the bottom edge; nor is 70
    given = img.copy()
    given[mask] = 0  # a leak of the hole's own values would show as black
    out = fsr_fill(given, mask)
    assert np.array_equal(out[~mask], img[~mask])
    err = np.abs(out[mask].astype(float) - img[mask].astype(float))
    assert err.mean() < 25 and (out[mask].astype(int).sum(-1) > 0).all(), err.mean()
    if channels == 3:
        assert not (out[mask] == [0, 135, 0]).all(-1).any()


def test_mixed_fill_scaled_down_never_brings_back_the_holes_own_pixels():
    """A hole that leaves only a thin strip of known pixels: the scaled-down picture is made of the
    known pixels alone (or the harmonic fill takes over), never of the hole's content."""
    from refine_by_align.fill import mixed_fill

    img = np.full((60, 60, 3), 255, np.uint8)
    img[:, 0] = 40  # the only known column
    mask = np.ones((60, 60), bool)
    mask[:, 0] = False
    out = mixed_fill(img, mask, max_hole=500)
    assert np.array_equal(out[~mask], img[~mask]) and np.abs(out[mask].astype(float) - 40).max() <= 2
    img2 = np.full((60, 60, 3), 255, np.uint8)
    img2[:, :6] = 40  # known columns wider than the scaling factor
    m2 = np.ones((60, 60), bool)
    m2[:, :6] = False
    out2 = mixed_fill(img2, m2, max_hole=500)
    assert np.abs(out2[m2].astype(float) - 40).mean() < 3


def test_warp_at_takes_cells_at_least_half_trusted():
    """The warp and its trust at the model's size, as training pairs and inference both make
    them: the warp resized by area, a cell trusted where at least half of its full-resolution
    pixels are (a cell a quarter trusted is not; a size already the model's is kept as given)."""
    from refine_by_align.fill import warp_at

    warp = np.zeros((8, 8, 3), np.uint8)
    warp[:, 4:] = 200
    use = np.zeros((8, 8), bool)
    use[0:2, 0:2] = True  # cell (0, 0) of a 4 x 4 grid: whole
    use[2:4, 2] = True  # cell (1, 1): half
    use[4, 4] = True  # cell (2, 2): a quarter
    small, trust = warp_at(warp, use, 4)
    assert small.shape == (4, 4, 3) and small.dtype == np.uint8 and (small[:, :2] == 0).all() and (small[:, 2:] == 200).all()
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = expected[1, 1] = True
    assert np.array_equal(trust, expected)
    same, same_trust = warp_at(warp, use, 8)
    assert same is warp and np.array_equal(same_trust, use)
