import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from refine_by_align.data.masks import dilate
from refine_by_align.data.pairs import (
    MODES,
    PairConfig,
    PairDataset,
    grid_shape,
    make_alignment_pair,
    make_multiview_pair,
    make_refinement_pair,
    show_pairs,
)
from refine_by_align.data.perturb import GeomConfig, random_transform
from refine_by_align.data.readers import DatasetError, MultiViewFolder
from refine_by_align.data.synthetic import SyntheticSource, render_object
from refine_by_align.zoom import mask_bbox


def _open(path):
    """Read an image fully and close the file."""
    with Image.open(path) as im:
        im.load()
        return im.copy()

def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _inside_fraction(p, dil=1):
    """Share of hole pixels whose ref_coords fall in the (dilated) region."""
    hole = p.mask[0] > 0.5
    rc = p.ref_coords[:, hole]
    rc = rc[:, np.isfinite(rc).all(axis=0)]
    r = p.reference.shape[1]
    ij = np.clip(np.floor(rc * r).astype(int), 0, r - 1)
    return dilate(p.region[0] > 0.5, dil)[ij[1], ij[0]].mean(), rc.shape[1] / hole.sum()


def test_affine_pair_region_is_the_warped_mask():
    img, obj = render_object(np.random.default_rng(7), size=128)
    art = np.zeros_like(obj)
    ys, xs = np.nonzero(obj)
    cx, cy = int(np.median(xs)), int(np.median(ys))
    cv2.ellipse(art.view(np.uint8), (cx, cy), (14, 8), 30, 0, 360, 1, -1)
    art &= obj
    cfg = PairConfig(size=64, ref_size=64, region_coverage=0.5)
    for k in range(4):
        rng = np.random.default_rng(k)
        t = random_transform(rng, obj.shape, GeomConfig(p_nonrigid=0.0), box=mask_bbox(obj))
        fn = make_alignment_pair if k % 2 == 0 else make_refinement_pair
        p = fn(img, obj, rng, cfg, artifact_mask=art, transform=t)
        assert p.has_correspondence and p.meta["transform"] is t
        # warp the artifact mask directly into the reference: T, then the reference crop + resize
        b = p.meta["ref_box"]
        s = 64 / b.width
        crop = np.array([[s, 0, -(b.x0 - 0.5) * s - 0.5], [0, s, -(b.y0 - 0.5) * s - 0.5], [0, 0, 1]])
        direct = cv2.warpAffine(art.astype(np.float32), (crop @ t.matrix)[:2], (64, 64), flags=cv2.INTER_LINEAR) >= 0.5
        assert _iou(direct, p.region[0] > 0.5) > 0.95
        inside, finite = _inside_fraction(p)
        assert finite == 1.0 and inside > 0.95


def test_nonrigid_pair_region_is_the_warped_mask():
    img, obj = render_object(np.random.default_rng(8), size=128)
    art = np.zeros_like(obj)
    ys, xs = np.nonzero(obj)
    cv2.circle(art.view(np.uint8), (int(np.median(xs)), int(np.median(ys))), 12, 1, -1)
    art &= obj
    cfg = PairConfig(size=64, ref_size=64, region_coverage=0.5)
    for k in range(3):
        rng = np.random.default_rng(k)
        t = random_transform(rng, obj.shape, GeomConfig(p_nonrigid=1.0, perspective=0.06), box=mask_bbox(obj))
        assert t.field is not None
        p = make_alignment_pair(img, obj, rng, cfg, artifact_mask=art, transform=t)
        # pull every reference pixel back through T^-1 and sample the source mask there
        b = p.meta["ref_box"]
        u = (np.arange(64) + 0.5) * b.width / 64 - 0.5
        qx, qy = np.meshgrid(u + b.x0, u + b.y0)
        src = t.inverse_points(np.stack([qx.ravel(), qy.ravel()], 1)).astype(np.float32)
        direct = cv2.remap(art.astype(np.float32), src[:, 0].reshape(64, 64), src[:, 1].reshape(64, 64), cv2.INTER_LINEAR) >= 0.5
        assert _iou(direct, p.region[0] > 0.5) > 0.9
        inside, finite = _inside_fraction(p)
        assert finite == 1.0 and inside > 0.9


@pytest.mark.parametrize("mode", ["alignment", "refinement"])
def test_ref_coords_land_in_region(mode):
    ds = PairDataset([SyntheticSource(size=96, pool_size=8, seed=3)], {mode: 1.0}, size=32, ref_size=32, seed=5, length=30)
    fr = []
    for i in range(30):
        p = ds.pair(i)
        inside, finite = _inside_fraction(p)
        assert finite > 0.99  # the hole is on the object: it is on the reference
        fr.append(inside)
    assert np.mean(fr) > 0.95 and min(fr) > 0.5


def test_refinement_ref_coords_nan_outside():
    img, obj = render_object(np.random.default_rng(1), size=128)
    p = make_refinement_pair(img, obj, np.random.default_rng(2), PairConfig(min_size=96))
    rc = p.ref_coords
    finite = np.isfinite(rc).all(axis=0)
    assert finite.any() and not finite.all()  # the local reference does not cover the whole crop
    assert (rc[:, finite] >= 0).all() and (rc[:, finite] <= 1).all()


def test_multiview_pair(tiny_multiview):
    mv = MultiViewFolder(tiny_multiview)
    i1, m1, i2, m2 = mv.sample_pair(np.random.default_rng(0))
    cfg = PairConfig(size=16, ref_size=24)
    for p_whole in (0.0, 1.0):
        cfg.p_whole_object = p_whole
        p = make_multiview_pair(i1, m1, i2, m2, np.random.default_rng(1), cfg)
        assert p.image.shape == (3, 16, 16) and p.reference.shape == (3, 24, 24)
        assert np.isnan(p.ref_coords).all() and not p.has_correspondence and p.region.sum() == 0
        assert p.mask.sum() > 0
    assert p.mask.mean() > 0.3  # whole eroded object


def _check_item(d, s, r):
    assert d["image"].shape == (3, s, s) and d["image"].dtype == torch.float32
    assert d["mask"].shape == (1, s, s) and d["reference"].shape == (3, r, r)
    assert d["ref_coords"].shape == (2, s, s) and d["region"].shape == (1, r, r)
    for k in ("image", "reference"):
        assert 0 <= d[k].min() and d[k].max() <= 1
    assert set(d["mask"].unique().tolist()) <= {0.0, 1.0} and d["mask"].sum() > 0
    assert set(d["region"].unique().tolist()) <= {0.0, 1.0}
    rc = d["ref_coords"][~torch.isnan(d["ref_coords"])]
    assert (rc >= 0).all() and (rc <= 1).all()
    mode = MODES[int(d["mode"])]
    assert bool(d["has_correspondence"]) == (mode != "multiview")
    assert bool(d["has_correspondence"]) == bool(d["region"].sum() > 0)


def test_pair_dataset_deterministic_and_shapes(tiny_multiview):
    sources = [SyntheticSource(size=96, pool_size=6, seed=0), MultiViewFolder(tiny_multiview, max_side=128)]
    ds = PairDataset(sources, {"alignment": 1, "refinement": 1, "multiview": 1}, size=16, ref_size=16, seed=11, length=40)
    items = [ds[i] for i in range(24)]
    assert {int(d["mode"]) for d in items} == {0, 1, 2}
    for d in items:
        _check_item(d, 16, 16)
    fresh = PairDataset(
        [SyntheticSource(size=96, pool_size=6, seed=0), MultiViewFolder(tiny_multiview, max_side=128)],
        {"alignment": 1, "refinement": 1, "multiview": 1}, size=16, ref_size=16, seed=11, length=40,
    )
    for i in (23, 5, 0):  # any order, any instance
        a, b = items[i], fresh[i]
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)
    other = PairDataset(sources, size=16, ref_size=16, seed=12, length=40)[5]
    assert not torch.equal(other["image"], items[5]["image"])
    batch = torch.utils.data.default_collate(items[:4])
    assert batch["image"].shape == (4, 3, 16, 16) and batch["has_correspondence"].dtype == torch.bool
    with pytest.raises(IndexError):
        ds[40]


def test_pair_dataset_config_errors():
    syn = SyntheticSource(size=64, pool_size=2)
    assert PairDataset([syn]).mode_p[2] == 0  # default weights: no multiview without photos
    with pytest.raises(ValueError, match="multiview"):
        PairDataset([syn], {"multiview": 1.0})
    with pytest.raises(ValueError, match="unknown mode"):
        PairDataset([syn], {"align": 1.0})


def test_show_pairs_writes_grid(tmp_path, tiny_multiview):
    out = show_pairs("alignment", n=3, seed=0, output=tmp_path / "g.png", size=16, ref_size=16, scale=3, use_photos=False)
    assert out.exists() and out.stat().st_size > 1000
    h, w = grid_shape(3, 16, 16, 3)
    assert _open(out).size == (w, h)
    arr = np.asarray(_open(out))
    assert arr.std() > 10  # not blank
    out = show_pairs("multiview", n=2, seed=0, output=tmp_path / "m.png", size=16, ref_size=16, data_root=tiny_multiview)
    assert _open(out).size == grid_shape(2, 16, 16, 4)[::-1]
    with pytest.raises(DatasetError, match="multiview"):
        show_pairs("multiview", n=2, output=tmp_path / "x.png", data_root=tmp_path / "absent")


def test_pair_dataset_on_photos(dreambooth_root):
    mv = MultiViewFolder(dreambooth_root, max_side=128)
    ds = PairDataset([mv], size=16, ref_size=16, seed=0, length=6)
    for i in range(6):
        _check_item(ds[i], 16, 16)


def test_warp_prefill_pairs_shapes_trust_and_a_true_warp(tiny_multiview):
    """warp_prefill pairs carry the warped reference and a {0, 1} trust map inside the hole; with
    no noise, no colour change and no dropout the true-map warp reproduces the target where trusted;
    p_no_warp = 1 gives no warp at all."""
    import dataclasses

    from refine_by_align.data.perturb import ColorConfig, WarpNoiseConfig

    img, obj = render_object(np.random.default_rng(7), size=128)
    clean = WarpNoiseConfig(p_no_warp=0.0, jitter_px=(0.0, 0.0), p_wrong=0.0, p_dropout=0.0)
    same = ColorConfig(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0, gamma=(1.0, 1.0))
    cfg = PairConfig(size=32, ref_size=32, warp_prefill=True, warp_noise=clean, color=same, geom=GeomConfig(p_nonrigid=0.0))
    used = 0
    for k in range(6):
        fn = make_alignment_pair if k % 2 == 0 else make_refinement_pair
        p = fn(img, obj, np.random.default_rng(k), cfg)
        assert p.warp.shape == (3, 32, 32) and p.warp.dtype == np.float32 and 0 <= p.warp.min() and p.warp.max() <= 1
        assert p.trust.shape == (1, 32, 32) and set(np.unique(p.trust).tolist()) <= {0.0, 1.0}
        assert (p.trust <= p.mask).all()
        t = p.trust[0] > 0.5
        if t.sum() >= 4:
            used += 1
            assert np.abs(p.warp[:, t] - p.image[:, t]).mean() < 0.08
    assert used >= 3
    # noisy warps still give valid maps; p_no_warp = 1: zeros
    noisy = dataclasses.replace(cfg, warp_noise=WarpNoiseConfig())
    for k in range(4):
        p = make_alignment_pair(img, obj, np.random.default_rng(k), noisy)
        assert set(np.unique(p.trust).tolist()) <= {0.0, 1.0} and (p.trust <= p.mask).all()
    none = dataclasses.replace(cfg, warp_noise=WarpNoiseConfig(p_no_warp=1.0))
    p = make_alignment_pair(img, obj, np.random.default_rng(0), none)
    assert not p.trust.any() and not p.warp.any()
    # multi-view pairs (an estimated field) and the dataset's items
    mv = MultiViewFolder(tiny_multiview)
    i1, m1, i2, m2 = mv.sample_pair(np.random.default_rng(0))
    p = make_multiview_pair(i1, m1, i2, m2, np.random.default_rng(1), dataclasses.replace(cfg, p_whole_object=0.0))
    assert p.warp.shape == (3, 32, 32) and p.trust.shape == (1, 32, 32) and (p.trust <= p.mask).all()
    ds = PairDataset([SyntheticSource(size=64, pool_size=4, seed=0), mv], size=16, ref_size=16, seed=0, length=6, cfg=PairConfig(warp_prefill=True))
    for i in range(6):
        d = ds[i]
        assert d["warp"].shape == (3, 16, 16) and d["trust"].shape == (1, 16, 16)
        assert set(d["trust"].unique().tolist()) <= {0.0, 1.0}
    assert "warp" not in PairDataset([SyntheticSource(size=64, pool_size=4, seed=0)], size=16, ref_size=16, length=1)[0]
