"""The reference object estimated when no mask is given (data/foreground.py and its use in the pipeline).

Thresholds are below what was measured (README, "reference mask"): demo references 0.993 / 0.994,
the 21 photos of the four held-out subjects 0.765 on average (the whole photo: 0.26).
"""

import cv2
import numpy as np
import pytest
from PIL import Image

from refine_by_align.data.foreground import estimate_foreground
from refine_by_align.data.readers import VALIDATION_SUBJECTS
from refine_by_align.demo.examples import EXAMPLES_DIR


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _example(name):
    d = EXAMPLES_DIR / name
    return (Image.open(d / "image.png"), np.asarray(Image.open(d / "mask.png").convert("L")) >= 128,
            Image.open(d / "reference.png"), np.asarray(Image.open(d / "reference_mask.png").convert("L")) >= 128)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "reference_mask.png").exists()))
def test_shipped_examples_without_their_reference_masks(tiny_pipe, name):
    """Every shipped example run without its reference mask finds the object the mask marks."""
    image, mask, reference, ref_mask = _example(name)
    estimate = estimate_foreground(reference)
    assert estimate.shape == ref_mask.shape and estimate.dtype == bool
    assert _iou(estimate, ref_mask) > 0.95, _iou(estimate, ref_mask)
    assert _iou(np.ones_like(ref_mask), ref_mask) < 0.4  # the old answer (the whole photo) was far off
    p = tiny_pipe.prepare(image, mask, reference)  # no reference mask, no alpha
    assert np.array_equal(p.reference_mask, estimate)
    assert not p.reference[~estimate].any()  # the encoder sees the object alone
    assert len(p.notes) == 1 and "object was estimated" in p.notes[0], p.notes


def test_the_note_reaches_the_result_and_a_given_mask_or_alpha_is_used_as_it_is(tiny_pipe):
    image, mask, reference, ref_mask = _example("badge")
    out = tiny_pipe(image, mask, reference, seed=0, num_inference_steps=1, num_samples=1)
    assert any("object was estimated" in n for n in out.notes), out.notes
    assert tiny_pipe.prepare(image, mask, reference, ref_mask).notes == []
    given = np.zeros_like(ref_mask)
    given[10:50, 20:90] = True
    assert np.array_equal(tiny_pipe.prepare(image, mask, reference, given).reference_mask, given)
    rgba = reference.convert("RGBA")
    rgba.putalpha(Image.fromarray(given.astype(np.uint8) * 255))
    p = tiny_pipe.prepare(image, mask, rgba)
    assert np.array_equal(p.reference_mask, given) and p.notes == []


def test_no_object_in_noise_means_the_whole_picture():
    """Noise, a flat picture, one too small for a frame, or a part under a tenth of a picture whose
    ground is not plain (a detail of a picture that is all object): no estimate, the whole picture.
    On a plain ground the same small part is the object (a cut-out or studio shot)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    assert estimate_foreground(noise).all()
    assert estimate_foreground(np.full((40, 60, 3), 128, np.uint8)).all()  # flat
    assert estimate_foreground(np.zeros((6, 6, 3), np.uint8)).all()  # too small to have a frame
    yy, xx = np.mgrid[0:120, 0:160]
    stripes = np.stack([150 + 60 * ((xx // 6) % 2), 170 + 40 * ((yy // 5) % 2), 180 + 0 * xx], -1).astype(np.uint8)  # a patterned ground
    speck = stripes.copy()
    speck[50:62, 70:86] = (20, 30, 160)  # 1% of the picture
    assert estimate_foreground(speck).all()
    assert estimate_foreground(speck, min_fraction=0.0).sum() == 12 * 16
    plain = np.full((120, 160, 3), 200, np.uint8)
    plain[50:66, 70:90] = (20, 30, 160)  # 1.7% of the picture
    assert estimate_foreground(plain).sum() == 16 * 20  # a small object cut out onto one colour
    dot = np.full((120, 160, 3), 200, np.uint8)
    dot[60:62, 80:83] = (20, 30, 160)  # a speck on a plain ground (under 1%): not an object
    assert estimate_foreground(dot).all()
    with pytest.raises(ValueError, match="8-bit RGB"):
        estimate_foreground(np.zeros((40, 60), np.uint8))


def test_plain_frame_tells_a_cut_out_from_a_gradient_or_a_pattern():
    """A frame mostly of one colour (within the tolerance, every channel) is plain; a gradient or a
    patterned ground is not."""
    from refine_by_align.data.foreground import plain_frame

    rng = np.random.default_rng(1)
    black = np.zeros((100, 120, 3), np.uint8)
    black[20:80, 30:90] = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)  # an object inside the frame
    assert plain_frame(black, (6, 5))
    grainy = np.clip(black.astype(int) + rng.integers(-6, 7, black.shape), 0, 255).astype(np.uint8)  # sensor noise on the ground
    assert plain_frame(grainy, (6, 5))
    cut = black.copy()
    cut[:, :4] = 255  # a fifth of the frame another colour: still mostly one
    assert plain_frame(cut, (6, 5), share=0.7) and not plain_frame(cut, (6, 5), share=0.95)
    yy, xx = np.mgrid[0:100, 0:120]
    assert not plain_frame(np.stack([xx * 2, yy * 2, 0 * xx], -1).astype(np.uint8), (6, 5))  # a gradient
    stripes = np.stack([150 + 60 * ((xx // 6) % 2), 170 + 0 * xx, 180 + 0 * xx], -1).astype(np.uint8)
    assert not plain_frame(stripes, (6, 5))


def test_no_photo_of_the_shared_set_has_a_plain_frame(dreambooth_root):
    """Every photo of the shared set, as the estimate sees it (scaled to 256 px, a 5% frame), has a
    frame that is not plain (measured: at most 77% of one is within the tolerance of one colour)."""
    from refine_by_align.data.foreground import _working_copy, plain_frame

    photos = sorted(dreambooth_root.glob("*/[0-9][0-9].jpg"))
    assert len(photos) >= 20
    for photo in photos:
        small, margin = _working_copy(np.asarray(Image.open(photo).convert("RGB")), 256, 0.05)
        assert not plain_frame(small, margin), photo


def test_object_on_a_plain_background_and_determinism():
    yy, xx = np.mgrid[0:120, 0:160]
    picture = np.stack([90 + yy // 4, 100 + xx // 8, 110 + 0 * xx], -1).astype(np.uint8)  # a gradient ground
    obj = ((xx - 70) / 40.0) ** 2 + ((yy - 65) / 30.0) ** 2 <= 1
    picture[obj] = (200, 40, 30)
    picture[obj & (xx > 70)] = (30, 160, 60)  # two colours: one object, not two
    a = estimate_foreground(picture)
    assert _iou(a, obj) > 0.95
    from refine_by_align.data.foreground import clear_foreground_cache

    clear_foreground_cache()  # computed again, not served from memory
    assert np.array_equal(a, estimate_foreground(picture))


def test_held_out_subjects_of_the_shared_photos(dreambooth_root):
    """Mean IoU against the shared salient-object masks on the four subjects never trained on."""
    ious = []
    for subject in VALIDATION_SUBJECTS:
        photos = sorted((dreambooth_root / subject).glob("*.jpg"))
        assert photos, f"no photos of {subject} in {dreambooth_root}"
        for photo in photos:
            truth = np.asarray(Image.open(photo.with_name(photo.stem + "_mask.png")).convert("L")) >= 128
            ious.append(_iou(estimate_foreground(Image.open(photo)), truth))
    assert len(ious) >= 16
    assert np.mean(ious) > 0.7, np.round(ious, 3)


def test_estimates_are_remembered_by_content_and_never_shared(monkeypatch):
    """A second estimate of the same picture with the same settings is served from memory (GrabCut
    is not run again) as a copy the caller may change; another picture or other settings are
    estimated anew."""
    from refine_by_align.data import foreground as F

    calls = []
    real = F._grabcut_estimate

    def counting(rgb, *args):
        calls.append(rgb.shape)
        return real(rgb, *args)

    monkeypatch.setattr(F, "_grabcut_estimate", counting)
    F.clear_foreground_cache()
    picture = np.full((120, 160, 3), 200, np.uint8)
    picture[30:90, 40:120] = (20, 30, 160)
    first = estimate_foreground(picture)
    kept = first.copy()
    first[:] = False  # the caller's copy
    second = estimate_foreground(picture)
    assert len(calls) == 1 and kept.any() and np.array_equal(second, kept)
    estimate_foreground(picture, iterations=3)
    other = picture.copy()
    other[0, 0] = (0, 0, 0)
    estimate_foreground(other)
    assert len(calls) == 3
    F.clear_foreground_cache()
    estimate_foreground(picture)
    assert len(calls) == 4


def test_cut_out_outline_is_redrawn_at_full_resolution(monkeypatch):
    """On a plain background the estimate's outline is decided again at full resolution
    (PLAIN_OUTLINE_PX): GrabCut's 256 px outline, scaled back, is a pixel or two off; the redrawn one
    follows the object's own edge. A background-coloured part inside the object stays the object."""
    import refine_by_align.data.foreground as fg_module
    from refine_by_align.data.foreground import clear_foreground_cache

    yy, xx = np.mgrid[0:600, 0:640]
    angle = np.arctan2(yy - 300, xx - 320)
    radius = np.hypot(yy - 300, xx - 320)
    obj = radius <= 150 + 40 * np.cos(7 * angle)  # a seven-pointed flower: an outline with sharp bends
    picture = np.zeros((600, 640, 3), np.uint8)
    picture[obj] = (210, 150, 60)
    picture[obj & (xx > 320)] = (60, 120, 200)
    picture[(np.abs(yy - 300) < 12) & (np.abs(xx - 320) < 12)] = 0  # a black patch in the object's middle
    clear_foreground_cache()
    redrawn = estimate_foreground(picture)
    monkeypatch.setattr(fg_module, "PLAIN_OUTLINE_PX", 0)
    clear_foreground_cache()
    scaled_back = estimate_foreground(picture)
    assert _iou(scaled_back, obj) < 0.995  # (what the test is about: GrabCut's outline alone is off)
    assert _iou(redrawn, obj) > max(0.997, _iou(scaled_back, obj))
    assert redrawn[300, 320]  # the black middle is inside the object: away from the outline, the estimate stands
    near = np.abs(redrawn.astype(int) - scaled_back.astype(int)).astype(bool)
    # distance of each pixel to GrabCut's outline (to the nearest pixel of the other side)
    dist = np.minimum(cv2.distanceTransform(scaled_back.astype(np.uint8), cv2.DIST_L2, 5), cv2.distanceTransform((~scaled_back).astype(np.uint8), cv2.DIST_L2, 5))
    assert dist[near].max() <= fg_module.PLAIN_OUTLINE_PX + 1  # only pixels near the outline changed
