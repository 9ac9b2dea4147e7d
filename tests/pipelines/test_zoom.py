import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_by_align.zoom import crop_resize, mask_bbox, paste_back, zoom_box


@given(
    h=st.integers(8, 90), w=st.integers(8, 90), y=st.integers(0, 89), x=st.integers(0, 89),
    mh=st.integers(1, 40), mw=st.integers(1, 40), grow=st.floats(1.0, 3.0), min_size=st.integers(1, 64),
)
@settings(max_examples=60, deadline=None)
def test_zoom_box_is_square_inside_and_covers_the_mask(h, w, y, x, mh, mw, grow, min_size):
    mask = np.zeros((h, w), bool)
    mask[min(y, h - 1) : min(y, h - 1) + mh, min(x, w - 1) : min(x, w - 1) + mw] = True
    box = zoom_box(mask, grow=grow, min_size=min_size)
    b = mask_bbox(mask)
    assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
    if box.width < w and box.height < h:
        assert box.width == box.height  # square unless the image is too small
    side = max(b.width, b.height)
    if side <= min(h, w):
        assert box.x0 <= b.x0 and box.x1 >= b.x1 and box.y0 <= b.y0 and box.y1 >= b.y1


@given(seed=st.integers(0, 10_000), dilate=st.integers(0, 4), feather=st.integers(0, 4))
@settings(max_examples=40, deadline=None)
def test_paste_back_changes_nothing_outside_the_dilated_mask(seed, dilate, feather):
    import cv2

    rng = np.random.default_rng(seed)
    h, w = rng.integers(16, 64, 2)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        mask[max(cy - 3, 0) : cy + 3, max(cx - 4, 0) : cx + 4] = True
    box = zoom_box(mask, 1.5, 8)
    patch = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = paste_back(image, patch, box, mask, dilate, feather)
    assert out.shape == image.shape and out.dtype == np.uint8
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    region = cv2.dilate(mask.astype(np.uint8), k).astype(bool) if dilate else mask
    assert np.array_equal(out[~region], image[~region])


def test_paste_back_replaces_the_mask_fully():
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    box = zoom_box(mask, 2.0, 8)
    patch = np.full((8, 8, 3), 200, np.uint8)
    out = paste_back(image, patch, box, mask, 3, 3)
    assert (out[mask] == 200).all()


def test_crop_resize_pads_outside_the_image():
    from refine_by_align.zoom import Box

    arr = np.ones((10, 10), np.float32)
    out = crop_resize(arr, Box(-10, -10, 10, 10), 4, interpolation=0)
    assert out.shape == (4, 4)
    assert out[:2, :2].max() == 0 and out[2:, 2:].min() == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.001, 0.3), st.integers(0, 2**31 - 1), st.sampled_from(["bool", "uint8", "float32"]))
def test_mask_bbox_is_the_box_of_the_nonzero_pixels(h, w, density, seed, dtype):
    """mask_bbox reads the rows and columns that hold a pixel (not every pixel's position, 15 times
    sooner on a 512 px mask): the same box as the nonzero pixels' extremes, for any truthy dtype."""
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) < density
    m = m.astype(dtype) * (rng.random((h, w)) + 0.5).astype(np.float32) if dtype == "float32" else m.astype(dtype)
    if not m.any():
        with pytest.raises(ValueError):
            mask_bbox(m)
        return
    ys, xs = np.nonzero(m)
    b = mask_bbox(m)
    assert (b.x0, b.y0, b.x1, b.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert all(isinstance(v, int) for v in (b.x0, b.y0, b.x1, b.y1))


def test_mask_bbox_empty_raises():
    with pytest.raises(ValueError):
        mask_bbox(np.zeros((4, 4), bool))
