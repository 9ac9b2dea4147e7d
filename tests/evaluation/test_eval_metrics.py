import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_by_align.evaluation.metrics import PSNR_CAP_DB, box_ssim, grown_box, iou, masked_psnr, miou


def _square(h, w, y, x, s):
    m = np.zeros((h, w), bool)
    m[y : y + s, x : x + s] = True
    return m


def test_iou_identical_and_disjoint():
    a = _square(32, 32, 4, 4, 10)
    assert iou(a, a) == 1.0
    assert iou(a, _square(32, 32, 20, 20, 10)) == 0.0
    assert miou is iou


def test_iou_known_shift():
    # 10x10 squares shifted by 5 px: intersection 50, union 150
    a = _square(32, 32, 4, 4, 10)
    b = _square(32, 32, 4, 9, 10)
    assert iou(a, b) == pytest.approx(1 / 3)
    # shifted diagonally by (2, 2): intersection 64, union 136
    assert iou(a, _square(32, 32, 6, 6, 10)) == pytest.approx(64 / 136)


def test_iou_resizes_pred_nearest():
    true = _square(32, 32, 8, 8, 16)
    pred = _square(16, 16, 4, 4, 8)  # the same region at half resolution
    assert iou(pred, true) == 1.0


def test_iou_both_empty_is_one():
    z = np.zeros((8, 8), bool)
    assert iou(z, z) == 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_iou_symmetric_and_bounded(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((12, 12)) > 0.5
    b = rng.random((12, 12)) > 0.5
    v = iou(a, b)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(iou(b, a))


def test_psnr_identical_is_cap():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    m = _square(20, 20, 2, 2, 8)
    assert masked_psnr(img, img, m) == PSNR_CAP_DB == 100.0


def test_psnr_uniform_offset():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 246, (20, 20, 3), dtype=np.uint8)
    out = target + 10
    m = _square(20, 20, 3, 3, 9)
    assert masked_psnr(out, target, m) == pytest.approx(20 * math.log10(255 / 10))


def test_psnr_only_inside_mask():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    out = target.copy()
    m = _square(20, 20, 3, 3, 6)
    out[~m] = 255 - out[~m]  # damage outside the mask only
    assert masked_psnr(out, target, m) == 100.0


def test_psnr_rejects_empty_mask_and_shape_mismatch():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        masked_psnr(a, a, np.zeros((8, 8), bool))
    with pytest.raises(ValueError):
        masked_psnr(a, np.zeros((8, 9, 3), np.uint8), np.ones((8, 8), bool))


def test_ssim_identical_is_one():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert box_ssim(img, img, _square(48, 48, 20, 20, 4)) == pytest.approx(1.0)


def test_ssim_uses_grown_box_only():
    rng = np.random.default_rng(5)
    target = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    m = _square(100, 100, 40, 40, 10)  # box [40, 50) grown by 16 -> [24, 66)
    far = target.copy()
    far[:20] = 0  # outside the grown box
    assert box_ssim(far, target, m) == pytest.approx(1.0)
    near = target.copy()
    near[30:60, 30:60] = 0  # inside
    assert box_ssim(near, target, m) < 0.5


def test_grown_box_clamps_and_widens():
    m = _square(40, 40, 0, 0, 2)
    b = grown_box(m, 16)
    assert b.as_tuple() == (0, 0, 18, 18)
    b = grown_box(m, 0, min_size=11)
    assert (b.width, b.height) == (11, 11)


def test_ssim_small_image_and_box():
    rng = np.random.default_rng(6)
    t = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    m = _square(8, 9, 3, 3, 1)
    assert box_ssim(t, t, m, grow=0) == pytest.approx(1.0)
    assert box_ssim(255 - t, t, m, grow=0) < 0.5


def test_field_error_exact_shifted_capped_and_partly_covered():
    """The field's end-point error inside the mask: 0 for the truth itself, the shift for a shifted
    field, each pixel's error capped (mean) but not the median, only over the pixels both fields
    cover with finite positions; None where they share none; a field not of its box's shape raises."""
    from refine_by_align.evaluation.metrics import FIELD_ERROR_CAP_PX, field_error
    from refine_by_align.zoom import Box

    mask = _square(40, 50, 10, 12, 8)  # rows 10..17, columns 12..19
    ys, xs = np.mgrid[5:25, 8:30].astype(np.float32)
    truth = np.stack([xs * 1.1 + 3.0, ys * 0.9 - 2.0], axis=-1)  # over the box from (8, 5)
    box = Box(8, 5, 30, 25)
    mean, median, covered = field_error(box, truth, (8, 5), truth, mask)
    assert mean == median == 0.0 and covered == 1.0
    shifted = truth + np.float32([0.6, 0.8])  # 1 px off
    assert field_error(box, shifted, (8, 5), truth, mask)[:2] == pytest.approx((1.0, 1.0), abs=1e-5)
    far = truth.copy()
    far[10 - 5, 12 - 8] += np.float32([100.0, 0.0])  # one of the 64 mask pixels 100 px off
    mean, median, _ = field_error(box, far, (8, 5), truth, mask)
    assert mean == pytest.approx(FIELD_ERROR_CAP_PX / 64, abs=1e-5) and median == 0.0
    part = truth.copy()
    part[:, : 16 - 8] = np.nan  # columns 12..15 of the mask have no truth: half of it
    assert field_error(box, shifted, (8, 5), part, mask)[2] == pytest.approx(0.5)
    small = Box(16, 10, 20, 18)  # a field over the mask's right half only
    assert field_error(small, shifted[5:13, 8:12], (8, 5), truth, mask) == pytest.approx((1.0, 1.0, 0.5), abs=1e-5)
    assert field_error(Box(40, 30, 45, 35), np.zeros((5, 5, 2), np.float32), (8, 5), truth, mask) is None
    with pytest.raises(ValueError, match="does not match its box"):
        field_error(box, truth[1:], (8, 5), truth, mask)
