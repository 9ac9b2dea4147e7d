import numpy as np

from refine_by_align.data.perturb import (
    ColorConfig,
    ColorParams,
    GeomConfig,
    apply_color,
    color_perturb,
    random_transform,
    warp,
)
from refine_by_align.zoom import Box

NONRIGID = GeomConfig(p_nonrigid=1.0, perspective=0.06)


def test_forward_inverse_consistent():
    rng = np.random.default_rng(0)
    for cfg in (GeomConfig(p_nonrigid=0.0), NONRIGID):
        t = random_transform(rng, (100, 120), cfg, box=Box(10, 20, 90, 95))
        p = rng.uniform(15, 85, (200, 2))
        q = t.forward_points(p)
        assert np.abs(t.inverse_points(q) - p).max() < 0.05


def test_warp_forward_map_gives_correspondence():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    m = np.zeros((96, 96), bool)
    m[30:60, 25:55] = True
    for cfg in (GeomConfig(), NONRIGID):
        t = random_transform(rng, (96, 96), cfg, box=Box(10, 10, 86, 86))
        out, (wm,), fmap = warp(img, [m], t)
        assert out.shape[:2] == t.out_shape == wm.shape and fmap.shape == (96, 96, 2)
        pts = fmap[m]
        assert np.isfinite(pts).all()  # the canvas holds the whole transformed box
        xi, yi = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        assert wm[yi, xi].mean() > 0.97
        # splatting the source mask through the forward map covers most of the warped mask
        hit = np.zeros_like(wm)
        hit[yi, xi] = True
        assert (hit & wm).sum() / wm.sum() > 0.6
        # and the warped pixel values are the source values at the mapped positions (nearest)
        src_vals = img[30:60, 25:55].reshape(-1, 3).astype(int)
        dst_vals = out[yi, xi].astype(int)
        assert np.median(np.abs(src_vals - dst_vals)) < 60


def test_identity_transform_and_out_shape():
    cfg = GeomConfig(rotation_deg=0, scale=(1, 1), aspect=(1, 1), shear_deg=0, translate=0, p_flip=0, p_nonrigid=0)
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    t = random_transform(rng, (40, 50), cfg, out_shape=(40, 50))
    out, _, fmap = warp(img, [], t)
    assert (out == img).all()
    ys, xs = np.mgrid[0:40, 0:50]
    assert np.allclose(fmap[..., 0], xs) and np.allclose(fmap[..., 1], ys)
    flip = random_transform(rng, (40, 50), GeomConfig(**{**cfg.__dict__, "p_flip": 1.0}), out_shape=(40, 50))
    assert (warp(img, [], flip)[0] == img[:, ::-1]).all()


def test_color_perturbation():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert np.abs(apply_color(img, ColorParams()).astype(int) - img).max() <= 1
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = color_perturb(img, rng, ColorConfig(brightness=0.3), mask)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (out[~mask] == img[~mask]).all()
    assert (out[mask] != img[mask]).any()
    f = apply_color(img.astype(np.float32) / 255, ColorParams(hue=0.2, saturation=0.5))
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
