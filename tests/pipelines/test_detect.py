"""Artifact detection (issue 15 part 2) on synthetic inputs: a textured object, the image a shifted
and recoloured copy of it with a patch damaged; the proposal must find the patch."""

import cv2
import numpy as np
import pytest

from refine_by_align.io import InputError
from refine_by_align.pipelines import detect as D
from refine_by_align.pipelines.fields import on_reference_object


def _scene(seed: int = 0, damage: bool = True):
    rng = np.random.default_rng(seed)
    # a reference full of corners (SIFT needs them): random rectangles and discs on noise
    ref = cv2.GaussianBlur(rng.integers(0, 255, (240, 240, 3)).astype(np.uint8), (0, 0), 2.0)
    for _ in range(120):
        x, y = rng.integers(0, 220, 2)
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            cv2.rectangle(ref, (int(x), int(y)), (int(x + rng.integers(5, 25)), int(y + rng.integers(5, 25))), c, -1)
        else:
            cv2.circle(ref, (int(x), int(y)), int(rng.integers(3, 12)), c, -1)
    ref_mask = np.ones(ref.shape[:2], bool)
    # the image: the reference shifted by (12, 8) and scaled 1.05, a colour shift, on a grey canvas
    M = np.float32([[1.05, 0, 12], [0, 1.05, 8]])
    img = cv2.warpAffine(ref, M, (272, 272), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
    img = np.clip(img.astype(np.float32) * np.float32([1.1, 0.95, 0.9]) + 8, 0, 255).astype(np.uint8)
    true = np.zeros(img.shape[:2], bool)
    if damage:  # a smeared, discoloured disc: what an artifact looks like
        cv2.circle(true.view(np.uint8), (140, 130), 22, 1, -1)
        smeared = cv2.GaussianBlur(img, (0, 0), 9.0)
        smeared = np.clip(smeared.astype(np.int16) + np.int16([40, -30, 20]), 0, 255).astype(np.uint8)
        img[true] = smeared[true]
    return img, ref, ref_mask, true


@pytest.mark.parametrize("method", ["learned", "colour"])
def test_detect_finds_the_damaged_patch(method):
    img, ref, ref_mask, true = _scene()
    det = D.detect(img, ref, ref_mask, method=method)
    assert det.field is not None and isinstance(det.info["settled"], bool)
    assert "settled" not in D.detect(img, ref, ref_mask, method=method, settle=False).info
    assert det.mask.shape == img.shape[:2] and det.mask.dtype == bool
    assert det.heatmap.shape == img.shape[:2] and det.heatmap.dtype == np.float32
    assert 0.0 <= float(det.heatmap.min()) and float(det.heatmap.max()) <= 1.0
    s = D.mask_scores(det.mask, true)
    assert s["recall"] > 0.6, s
    assert s["iou"] > 0.4, s
    # the heat is higher on the patch than elsewhere on the compared area
    assert det.heatmap[true & det.valid].mean() > 3 * det.heatmap[~true & det.valid].mean()


def test_detect_clean_image_proposes_little():
    img, ref, ref_mask, _ = _scene(damage=False)
    det = D.detect(img, ref, ref_mask)
    assert det.field is not None
    assert det.mask.mean() < 0.01


def test_a_proposal_over_half_the_image_says_a_refine_would_not_take_it(monkeypatch):
    """A proposal marking over half the image (another view: everything disagrees) is returned
    with a note saying a refine would refuse it, rather than leaving the user to meet "is it
    inverted?" there; a proposal of the usual size gets no such note."""
    img, ref, ref_mask, _ = _scene()
    det = D.detect(img, ref, ref_mask)
    assert not any("more than a refine takes" in n for n in det.info["notes"])
    monkeypatch.setattr(D, "clean_mask", lambda m: np.ones_like(m, bool) & (np.arange(m.shape[1]) < 0.6 * m.shape[1])[None, :])
    det = D.detect(img, ref, ref_mask)
    assert det.mask.mean() > 0.5
    assert any(n.startswith(f"the proposal marks {det.mask.mean():.0%} of the image, more than a refine takes (at most 50%)") for n in det.info["notes"])


def test_detect_no_field_is_empty_with_a_note():
    rng = np.random.default_rng(1)
    img = np.full((64, 64, 3), 128, np.uint8)  # nothing to match
    ref = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    det = D.detect(img, ref)
    assert det.field is None and not det.mask.any() and "note" in det.info


def test_detect_bad_inputs():
    img, ref, ref_mask, _ = _scene()
    with pytest.raises(InputError):
        D.detect(img, ref, ref_mask[:-1])
    with pytest.raises(InputError):
        D.detect(img, ref, np.zeros_like(ref_mask))
    with pytest.raises(InputError):
        D.detect(img, ref, ref_mask, method="nope")
    with pytest.raises(InputError):
        D.detect(img[:8, :8], ref, ref_mask)


def test_fit_weights_recovers_a_separating_direction():
    rng = np.random.default_rng(0)
    f = rng.gamma(1.0, 1.0, (64, 64, len(D.FEATURES))).astype(np.float32)
    true = np.zeros((64, 64), bool)
    true[20:40, 20:40] = True
    f[true, 1] += 8.0  # only the second feature tells the artifact apart
    w = D.fit_weights([(f, np.ones_like(true), true)])
    assert w.shape == (len(D.FEATURES) + 1,)
    assert w[1] > 1.0 and w[1] > 3 * np.abs(np.delete(w[:-1], 1)).max()


def test_clean_mask_fills_holes_and_drops_specks():
    m = np.zeros((100, 100), bool)
    m[20:60, 20:60] = True
    m[35:45, 35:45] = False  # a hole
    m[90, 90] = True  # a speck
    out = D.clean_mask(m)
    assert out[40, 40] and not out[90, 90]


def test_detect_with_aliked_chooses_between_two_fields():
    aliked = D.load_matcher()
    if aliked is None:
        pytest.skip("ALIKED weights not found (../shared/weights)")
    img, ref, ref_mask, true = _scene()
    det = D.detect(img, ref, ref_mask, aliked=aliked)
    assert set(det.info["candidates"]) == {"sift", "sift+aliked"}
    assert det.info["source"] == max(det.info["candidates"], key=det.info["candidates"].get)
    assert D.mask_scores(det.mask, true)["recall"] > 0.6


def test_a_large_image_is_compared_at_the_working_size_and_read_back():
    """An image over max_side is compared scaled down (here the 272 px scene upscaled 3x to 816 px,
    compared at 272 px): the same proposal read back at full size (IoU 0.9 with the 272 px one
    scaled up), the field's reference positions those of the small one at each pixel centre."""
    img, ref, ref_mask, true = _scene()
    small = D.detect(img, ref, ref_mask)
    big_img = cv2.resize(img, (816, 816), interpolation=cv2.INTER_CUBIC)
    big_true = cv2.resize(true.astype(np.uint8), (816, 816), interpolation=cv2.INTER_NEAREST).astype(bool)
    big = D.detect(big_img, ref, ref_mask, max_side=272)
    assert big.info["working_scale"] == pytest.approx(1 / 3, abs=1e-3)
    assert big.mask.shape == big.heatmap.shape == big.valid.shape == (816, 816)
    assert big.field is not None and big.field.xy.shape == (816, 816, 2)
    up = cv2.resize(small.mask.astype(np.uint8), (816, 816), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert D.mask_scores(big.mask, up)["iou"] > 0.9
    assert D.mask_scores(big.mask, big_true)["recall"] > 0.6
    # pixel (X, Y) of the large image reads the small field at ((X + 0.5) / 3 - 0.5, ...)
    assert np.allclose(big.field.xy[301, 451], small.field.xy[100, 150], atol=0.05)
    assert abs(big.info["proposed"] - float(big.mask.mean())) < 1e-4


def test_a_large_images_field_lands_on_the_object_by_its_full_resolution_positions():
    """An image compared scaled down, against a reference whose object ends inside the compared
    part (a disc of the reference): the field read back at full resolution says which pixels land
    on the object by its own positions (the rule every field follows), not by the scaled field's
    nearest pixel, which is up to a third of a pixel off along the disc's outline here."""
    img, ref, _, _ = _scene(damage=False)
    disc = np.zeros(ref.shape[:2], np.uint8)
    cv2.circle(disc, (120, 120), 80, 1, -1)
    big = D.detect(cv2.resize(img, (816, 816), interpolation=cv2.INTER_CUBIC), ref, disc.astype(bool), max_side=272)
    assert big.field is not None and big.info["working_scale"] == pytest.approx(1 / 3, abs=1e-3)
    expected = on_reference_object(big.field.xy, disc.astype(bool))
    assert 0.2 < expected.mean() < 0.9  # (the outline crosses the image)
    np.testing.assert_array_equal(big.field.on_object, expected)


def test_a_large_reference_is_scaled_with_the_image_and_its_positions_read_back():
    """Image and reference both 3x larger: the reference is compared at the image's working
    factor (kept at max_side or more), and the field's positions are on the reference as given."""
    img, ref, ref_mask, true = _scene()
    small = D.detect(img, ref, ref_mask)
    big_ref = cv2.resize(ref, (720, 720), interpolation=cv2.INTER_CUBIC)
    big = D.detect(cv2.resize(img, (816, 816), interpolation=cv2.INTER_CUBIC), big_ref, np.ones((720, 720), bool), max_side=272)
    assert big.field is not None
    up = cv2.resize(small.mask.astype(np.uint8), (816, 816), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert D.mask_scores(big.mask, up)["iou"] > 0.8
    # the small field's position p on the 240 px reference is 3 (p + 0.5) - 0.5 on the 720 px one
    assert np.allclose(big.field.xy[301, 451], 3 * (small.field.xy[100, 150] + 0.5) - 0.5, atol=1.5)


def test_a_reference_at_half_the_images_size_is_compared_scaled_up_and_its_positions_read_back():
    """A reference picture at half the image's size is compared scaled up to it (as the alignment
    matches it): the damaged patch is found, info["reference_scale"] says 2, and the field's
    positions are on the reference as given (half those found against the full-size one)."""
    img, ref, ref_mask, true = _scene()
    full = D.detect(img, ref, ref_mask)
    half = D.detect(img, cv2.resize(ref, (120, 120), interpolation=cv2.INTER_AREA), np.ones((120, 120), bool))
    assert half.info["reference_scale"] == pytest.approx(272 / 120, abs=0.01) and "reference_scale" not in full.info
    assert sum("smaller than the image" in n for n in half.info["notes"]) == 1 and not any("smaller" in n for n in full.info["notes"])
    assert half.field is not None and D.mask_scores(half.mask, true)["recall"] > 0.6
    ys, xs = np.nonzero(true & full.valid & half.valid)
    np.testing.assert_allclose(half.field.xy[ys, xs], (full.field.xy[ys, xs] + 0.5) / 2 - 0.5, atol=0.5)
    assert half.field.on_object[ys, xs].all()


def test_settle_field_takes_up_a_smooth_residual_but_not_an_artifact():
    """A field 1-2 px off by a smooth error, over an image that is the reference itself: the settled
    field is under half a pixel off away from a pasted artifact, and no farther off than before on
    the artifact (the smoothed flow cannot follow it)."""
    from refine_by_align.pipelines.fields import DenseField
    from refine_by_align.zoom import Box

    rng = np.random.default_rng(3)
    h = w = 192
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    reference = np.clip(128 + 60 * tex / tex.std(), 0, 255).astype(np.uint8)
    image = reference.copy()
    image[80:104, 90:114] = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)  # the artifact
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    err = np.stack([1.5 * np.sin(ys / 40.0), 1.2 * np.cos(xs / 35.0)], -1).astype(np.float32)  # smooth, 1-2 px
    fld = DenseField(Box(0, 0, w, h), np.stack([xs, ys], -1) + err, None, np.ones((h, w), bool))
    settled = D.settle_field(image, reference, np.ones((h, w), bool), fld, erode_px=2)
    before = np.linalg.norm(fld.xy - np.stack([xs, ys], -1), axis=-1)
    after = np.linalg.norm(settled.xy - np.stack([xs, ys], -1), axis=-1)
    art = np.zeros((h, w), bool)
    art[80:104, 90:114] = True
    inner = np.zeros((h, w), bool)
    inner[12:-12, 12:-12] = True  # the flow's own border is rough
    away = inner & ~cv2.dilate(art.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert before[away].mean() > 1.0
    assert after[away].mean() < 0.5, after[away].mean()
    assert after[art].mean() <= before[art].mean()
    assert settled.xy.shape == fld.xy.shape and settled.on_object[inner].all()  # recomputed: the 1 px eroded object
    # fewer than 500 pixels on the object: the field as given
    small = DenseField(Box(0, 0, w, h), fld.xy, None, np.zeros((h, w), bool))
    assert D.settle_field(image, reference, None, small) is small
