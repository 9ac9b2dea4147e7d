import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_by_align.data.masks import (
    SHAPES,
    MaskConfig,
    dilate,
    erode,
    random_artifact_mask,
)
from refine_by_align.data.synthetic import render_object


def _large_object(h=128, w=128):
    m = np.zeros((h, w), bool)
    m[6 : h - 6, 6 : w - 6] = True
    return m


@pytest.mark.parametrize("shape", SHAPES + (None,))
def test_masks_inside_object_and_non_empty(shape):
    rng = np.random.default_rng(0)
    for k in range(15):
        _, obj = render_object(np.random.default_rng(k), size=96)
        m = random_artifact_mask(obj, rng, shape=shape)
        assert m.shape == obj.shape and m.dtype == bool
        assert m.any()
        assert not (m & ~obj).any()


def test_mask_size_distribution_skewed_small():
    """App. A.2: more than half of the artifacts cover under 4% of the image."""
    obj = _large_object()
    rng = np.random.default_rng(1)
    areas = np.array([random_artifact_mask(obj, rng).mean() for _ in range(200)])
    assert np.median(areas) < 0.04
    assert (areas < 0.04).mean() > 0.5
    assert areas.max() > 0.03  # but not all tiny: some larger masks
    assert areas.min() > 0


def test_masks_are_irregular():
    obj = _large_object()
    rng = np.random.default_rng(2)
    solidity = []
    for _ in range(40):
        m = random_artifact_mask(obj, rng).astype(np.uint8)
        cnts, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        hull = cv2.convexHull(np.concatenate(cnts))
        solidity.append(m.sum() / max(cv2.contourArea(hull), 1.0))
    assert min(solidity) < 0.7  # strokes / lobed blobs are far from convex


def test_tiny_and_thin_objects_fallback():
    rng = np.random.default_rng(3)
    one = np.zeros((64, 64), bool)
    one[10, 20] = True
    assert (random_artifact_mask(one, rng) == one).all()
    line = np.zeros((64, 64), bool)
    line[30, 5:60] = True
    for _ in range(10):
        m = random_artifact_mask(line, rng)
        assert m.any() and not (m & ~line).any()
    with pytest.raises(ValueError):
        random_artifact_mask(np.zeros((8, 8), bool), rng)


def test_mask_deterministic_and_centre():
    obj = _large_object()
    a = random_artifact_mask(obj, np.random.default_rng(5))
    b = random_artifact_mask(obj, np.random.default_rng(5))
    assert (a == b).all()
    m = random_artifact_mask(obj, np.random.default_rng(6), MaskConfig(area_max=0.01), center=(30.0, 90.0), shape="blob")
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() - 30) < 12 and abs(ys.mean() - 90) < 12


def test_erode_dilate():
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    assert (erode(m, 0) == m).all() and (dilate(m, 0) == m).all()
    e, d = erode(m, 3), dilate(m, 3)
    assert e.sum() == 14 * 14 and (e <= m).all() and (m <= d).all()
    assert d[10, 7] and not d[10, 6]
    full = np.ones((10, 10), bool)
    assert erode(full, 2).all()  # the image border does not erode


@settings(max_examples=40, deadline=None)
@given(
    x0=st.integers(0, 60), y0=st.integers(0, 40), w=st.integers(1, 60), h=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_mask_property_inside_any_box(x0, y0, w, h, seed):
    obj = np.zeros((80, 120), bool)
    obj[y0 : y0 + h, x0 : x0 + w] = True
    m = random_artifact_mask(obj, np.random.default_rng(seed))
    assert m.any() and not (m & ~obj).any()
