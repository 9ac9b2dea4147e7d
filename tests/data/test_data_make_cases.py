import json

import numpy as np
import pytest
from PIL import Image

from refine_by_align.data.make_cases import ARTIFACTS, make_cases, simulate_artifact
from refine_by_align.data.readers import DatasetError
from refine_by_align.data.synthetic import render_object


def _open(path):
    """Read an image fully and close the file."""
    with Image.open(path) as im:
        im.load()
        return im.copy()

FILES = ("image.png", "mask.png", "reference.png", "reference_mask.png", "target.png", "meta.json")


def test_make_cases_tiny_folder(tmp_path, tiny_multiview):
    paths = make_cases(tiny_multiview, tmp_path / "cases", seed=3, subjects=["alpha", "beta"], cases_per_subject=3)
    assert len(paths) == 6
    kinds = set()
    for case in paths:
        meta = json.loads((case / "meta.json").read_text())
        kinds.add(meta["kind"])
        assert meta["artifact"] in ARTIFACTS
        for f in FILES:
            assert (case / f).exists(), f
        img = np.asarray(_open(case / "image.png"))
        tgt = np.asarray(_open(case / "target.png"))
        mask = np.asarray(_open(case / "mask.png")) > 127
        ref = _open(case / "reference.png")
        assert img.shape == tgt.shape == (128, 160, 3) and mask.shape == (128, 160)
        assert ref.size == _open(case / "reference_mask.png").size == (160, 128)
        assert mask.any() and (img[~mask] == tgt[~mask]).all()  # artifact only inside the mask
        assert (img[mask] != tgt[mask]).any()
        has_corr = (case / "correspondence.png").exists()
        assert has_corr == (meta["kind"] != "multiview") == meta["has_correspondence"]
        if has_corr:
            corr = np.asarray(_open(case / "correspondence.png")) > 127
            rmask = np.asarray(_open(case / "reference_mask.png")) > 127
            assert corr.any() and not (corr & ~rmask).any()
            assert 0.5 < corr.sum() / mask.sum() < 2.0  # scale range 0.75..1
    assert kinds == {"affine", "nonrigid", "multiview"}
    again = make_cases(tiny_multiview, tmp_path / "again", seed=3, subjects=["alpha"], cases_per_subject=1)
    assert (again[0] / "image.png").read_bytes() == (paths[0] / "image.png").read_bytes()


def test_make_cases_errors(tmp_path, tiny_multiview):
    with pytest.raises(DatasetError, match="validation subjects"):
        make_cases(tiny_multiview, tmp_path / "c", seed=0)  # defaults not in the tiny folder
    with pytest.raises(DatasetError, match="not found"):
        make_cases(tmp_path / "nope", tmp_path / "c", seed=0)


@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_artifact_simulators(name):
    img, obj = render_object(np.random.default_rng(4), size=96)
    mask = np.zeros_like(obj)
    ys, xs = np.nonzero(obj)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    mask[cy - 6 : cy + 6, cx - 8 : cx + 8] = True
    out = simulate_artifact(img, mask, name, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[~mask] == img[~mask]).all()
    assert np.abs(out[mask].astype(int) - img[mask]).mean() > 3


def test_make_cases_dreambooth(tmp_path, dreambooth_root):
    paths = make_cases(dreambooth_root, tmp_path, seed=0, subjects=["candle"], cases_per_subject=1)
    img = _open(paths[0] / "image.png")
    assert max(img.size) == 512


def test_extra_references_leave_the_case_as_it_was(tmp_path, tiny_multiview):
    """``extra_references``: a distractor from another subject, another view and a partial view,
    written as reference_2.png ...; the image, mask and first reference are the same bytes as
    without extras, and the order to pass them in is a permutation of 1..n."""
    from refine_by_align.evaluation.cases import load_case

    plain = make_cases(tiny_multiview, tmp_path / "plain", seed=3, subjects=["alpha"], cases_per_subject=3)
    extra = make_cases(tiny_multiview, tmp_path / "extra", seed=3, subjects=["alpha"], cases_per_subject=3,
                       extra_references=["distractor", "view", "partial"])
    for a, b in zip(plain, extra):
        for f in ("image.png", "mask.png", "reference.png", "target.png"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
        meta = json.loads((b / "meta.json").read_text())
        roles = [r["role"] for r in meta["references"]]
        assert roles == ["right", "distractor", "view", "partial"]
        assert meta["references"][1]["view"].startswith("beta/")  # another subject
        assert sorted(meta["reference_order"]) == [1, 2, 3, 4]
        case = load_case(b)
        assert len(case.extra_references) == 3
        partial_mask = case.extra_references[2][1]
        full_mask = case.extra_references[1][1]
        assert 0.3 < partial_mask.sum() / full_mask.sum() < 0.8  # a part of the object
        refs, masks = case.references("all")
        assert len(refs) == 4 and refs[meta["reference_order"].index(1)] is case.reference
        one, _ = case.references(3)
        assert one == [case.extra_references[1][0]]
    with pytest.raises(ValueError, match="unknown extra reference role"):
        make_cases(tiny_multiview, tmp_path / "bad", seed=3, subjects=["alpha"], extra_references=["mirror"])
    # a rebuild without extras removes the old extra files
    again = make_cases(tiny_multiview, tmp_path / "extra", seed=3, subjects=["alpha"], cases_per_subject=3)
    assert not list(again[0].glob("reference_2.png"))


def test_image_scale_shrinks_the_image_side_not_the_reference(tmp_path, tiny_multiview):
    """``image_scale``: the image, mask and target scaled down (the artifact kept inside the scaled
    mask), the reference and its region the same bytes as at full size; meta records the scale."""
    full = make_cases(tiny_multiview, tmp_path / "full", seed=3, subjects=["alpha"], cases_per_subject=2)
    half = make_cases(tiny_multiview, tmp_path / "half", seed=3, subjects=["alpha"], cases_per_subject=2, image_scale=0.5)
    for a, b in zip(full, half):
        for f in ("reference.png", "reference_mask.png"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
        big, small = np.asarray(_open(a / "image.png")), np.asarray(_open(b / "image.png"))
        assert small.shape[0] == round(big.shape[0] * 0.5) and small.shape[1] == round(big.shape[1] * 0.5)
        m = np.asarray(_open(b / "mask.png").convert("L")) > 127
        target = np.asarray(_open(b / "target.png"))
        assert m.any() and m.shape == small.shape[:2]
        assert np.array_equal(small[~m], target[~m])  # the artifact stays inside the mask
        assert not np.array_equal(small[m], target[m])
        assert json.loads((b / "meta.json").read_text())["image_scale"] == 0.5
    with pytest.raises(ValueError, match="image_scale"):
        make_cases(tiny_multiview, tmp_path / "bad", seed=3, subjects=["alpha"], cases_per_subject=1, image_scale=1.5)


def test_upscale_gives_the_same_case_on_a_larger_picture(tmp_path, tiny_multiview):
    """``upscale``: every picture and mask of the case (the extra references and the true region
    too) scaled up by the whole factor, each mask exactly the nearest-scaled original, each picture
    the original where it is block-averaged back; meta records the factor; bad factors refused."""
    kw = dict(seed=3, subjects=["alpha"], cases_per_subject=2, extra_references=["view"])
    one = make_cases(tiny_multiview, tmp_path / "one", **kw)
    big = make_cases(tiny_multiview, tmp_path / "big", upscale=3, **kw)
    for a, b in zip(one, big):
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert "correspondence.png" in {p.name for p in a.iterdir()} or "multiview" in a.name
        for f in [p.name for p in a.iterdir() if p.suffix == ".png"]:
            small, large = np.asarray(_open(a / f)), np.asarray(_open(b / f))
            assert large.shape[:2] == (3 * small.shape[0], 3 * small.shape[1]), f
            if "mask" in f or f == "correspondence.png":
                assert np.array_equal(large[1::3, 1::3], small), f  # nearest: each 3 x 3 block is its pixel
            else:
                h, w = small.shape[:2]
                back = large.reshape(h, 3, w, 3, -1).astype(np.float64).mean(axis=(1, 3)).reshape(small.shape)
                assert np.abs(back - small).mean() < 4.0, f
        image, target = np.asarray(_open(b / "image.png")), np.asarray(_open(b / "target.png"))
        m = np.asarray(_open(b / "mask.png").convert("L")) > 127
        assert np.array_equal(image[~m], target[~m]) and not np.array_equal(image[m], target[m])  # the artifact stays inside the mask
        meta_a, meta_b = (json.loads((c / "meta.json").read_text()) for c in (a, b))
        assert meta_b.pop("upscale") == 3 and meta_b == meta_a
    for bad in (0, 9, 1.5):
        with pytest.raises(ValueError, match="upscale"):
            make_cases(tiny_multiview, tmp_path / "bad", seed=3, subjects=["alpha"], cases_per_subject=1, upscale=bad)


def _gray(a):
    return np.asarray(a, np.float32).mean(axis=-1)


@pytest.mark.parametrize("upscale, image_scale", [(1, 1.0), (2, 1.0), (1, 0.5)])
def test_true_field_is_where_the_image_truly_lands_on_the_reference(tmp_path, tiny_multiview, upscale, image_scale):
    """``true_field.npz`` (affine and nonrigid cases only; multiview has none): the reference sampled
    at the true positions matches the artifact-free target inside the mask better than sampled
    half a pixel off in any direction, at full size, scaled up and with the image scaled down; on
    affine cases it is the homography in meta.json (the case's pixel centres mapped as the
    scaling maps them); the case loader reads it back."""
    import cv2

    from refine_by_align.evaluation.cases import load_case

    paths = make_cases(tiny_multiview, tmp_path / "c", seed=5, subjects=["alpha", "beta"], cases_per_subject=3, upscale=upscale, image_scale=image_scale)
    seen = set()
    for case_dir in paths:
        case = load_case(case_dir)
        meta = json.loads((case_dir / "meta.json").read_text())
        assert (case.true_field is None) == (meta["kind"] == "multiview") == (not (case_dir / "true_field.npz").exists())
        if case.true_field is None:
            continue
        seen.add(meta["kind"])
        (x0, y0), xy = case.true_field.origin, case.true_field.xy
        h, w = xy.shape[:2]
        inside = case.mask[y0 : y0 + h, x0 : x0 + w]
        assert inside.sum() == case.mask.sum()  # the box covers the whole mask
        assert np.isfinite(xy[inside]).all()
        # (compared where the truth lands inside the reference object, away from its black surround)
        eroded = cv2.erode(case.reference_mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
        inside &= cv2.remap(eroded, xy[..., 0], xy[..., 1], cv2.INTER_NEAREST) > 0
        assert inside.sum() > 0.5 * case.mask.sum()
        target = _gray(case.target)[y0 : y0 + h, x0 : x0 + w][inside]
        ref = _gray(case.reference)

        def agreement(dx, dy):
            s = cv2.remap(ref, xy[..., 0] + np.float32(dx), xy[..., 1] + np.float32(dy), cv2.INTER_CUBIC)[inside]
            return np.corrcoef(target, s)[0, 1]

        at = agreement(0.0, 0.0)
        assert at > 0.85, (case.id, at)
        for dx, dy in ((0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5)):
            assert at > agreement(dx, dy), (case.id, dx, dy)
        if meta["kind"] == "affine":
            ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
            fx = meta["size"][0] / (case.image.width / upscale)  # the target photo's px per (unscaled) image px
            fy = meta["size"][1] / (case.image.height / upscale)
            px = ((xs + 0.5) / upscale) * fx - 0.5
            py = ((ys + 0.5) / upscale) * fy - 0.5
            hom = np.stack([px, py, np.ones_like(px)], -1) @ np.asarray(meta["transform"]["matrix"]).T
            want = (hom[..., :2] / hom[..., 2:] + 0.5) * upscale - 0.5
            assert np.abs(xy - want).max() < 1e-3
    assert seen == {"affine", "nonrigid"}
