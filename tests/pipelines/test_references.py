"""Several references at once (pipelines/references.py and the pipeline's list of references)."""

import cv2
import numpy as np
import pytest
from PIL import Image

from refine_by_align.io import InputError
from refine_by_align.pipelines.correspondence import WarpFill
from refine_by_align.pipelines.references import as_reference_list, combine_warps, pick_guide


def _wf(use, weight, ncc, value):
    use = np.asarray(use, bool)
    h, w = use.shape
    return WarpFill(patch=np.full((h, w, 3), value, np.uint8), use=use, weight=np.where(use, weight, 0).astype(np.float32),
                    ncc=ncc, coverage=float(use.mean()), gain=np.ones(3), offset=np.zeros(3))


def test_combine_warps_takes_the_most_trusted_warp_per_pixel():
    a = np.zeros((4, 6), bool)
    a[:, :4] = True
    b = np.zeros((4, 6), bool)
    b[:, 2:] = True
    c = _wf(a, 0.5, 0.93, 10)
    d = _wf(b, 0.9, 0.95, 200)
    out = combine_warps([c, None, d], (4, 6))
    assert (out.source[:, :2] == 0).all() and (out.source[:, 2:] == 2).all()
    assert (out.patch[:, :2] == 10).all() and (out.patch[:, 2:] == 200).all()
    assert np.allclose(out.weight[:, :2], 0.5) and np.allclose(out.weight[:, 2:], 0.9)
    assert out.use.all()
    # equal weights: the better ring agreement wins, whatever the order
    e, f = _wf(a, 1.0, 0.96, 1), _wf(a, 1.0, 0.99, 2)
    assert (combine_warps([f, e], (4, 6)).patch[a] == 2).all() and (combine_warps([e, f], (4, 6)).patch[a] == 2).all()
    # nothing trusted: no source, no weight
    none = combine_warps([None, _wf(np.zeros((4, 6), bool), 1.0, 0.3, 5)], (4, 6))
    assert (none.source == -1).all() and not none.weight.any() and not none.use.any()


def test_pick_guide_prefers_the_reference_that_gives_most_of_the_mask():
    m = np.ones((4, 6), bool)
    a = np.zeros((4, 6), bool)
    a[:1] = True
    warps = [_wf(a, 1.0, 0.99, 1), _wf(~a, 0.6, 0.96, 2)]
    assert pick_guide(warps, m, combine_warps(warps, m.shape)) == 1
    # no warp trusted anywhere: the best ring agreement; no field at all: the first
    untrusted = [_wf(np.zeros_like(m), 1.0, 0.2, 1), _wf(np.zeros_like(m), 1.0, 0.4, 2)]
    assert pick_guide(untrusted, m, combine_warps(untrusted, m.shape)) == 1
    assert pick_guide([None, None], m, combine_warps([None, None], m.shape)) == 0


def test_reference_list_arguments_are_checked():
    img = Image.new("RGB", (8, 8))
    refs, masks, names, labels = as_reference_list([img, img], None, {"image": "i.png", "reference": ["a.png", "b.png"]})
    assert len(refs) == 2 and masks == [None, None] and [n["reference"] for n in names] == ["a.png", "b.png"]
    assert [lb["reference_mask"] for lb in labels] == ["reference #1 mask", "reference #2 mask"]
    assert as_reference_list(img, None, None)[3] == [{}]  # (one reference: the plain role names)
    with pytest.raises(InputError, match="1 reference mask"):
        as_reference_list([img, img], np.ones((8, 8), bool), None)
    with pytest.raises(InputError, match="no reference"):
        as_reference_list([], None, None)


def _scene(seed=0, size=160):
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 1.5)
    for _ in range(40):
        x, y = rng.integers(0, size - 16, 2)
        cv2.rectangle(image, (int(x), int(y)), (int(x + rng.integers(5, 16)), int(y + rng.integers(5, 16))), rng.integers(0, 256, 3).tolist(), -1)
    return image


@pytest.fixture
def scene():
    image = _scene(0)
    A = np.vstack([cv2.getRotationMatrix2D((80, 80), 10, 0.95), [0, 0, 1]])
    right = cv2.warpPerspective(image, A, (160, 160))
    distractor = _scene(7)  # another object altogether
    mask = np.zeros((160, 160), bool)
    mask[70:90, 65:95] = True
    broken = image.copy()
    broken[mask] = 128
    return broken, mask, right, distractor


def test_a_distractor_changes_nothing(tiny_pipe, scene):
    """[distractor, right]: the distractor's warp is not trusted anywhere, so the result is the one
    of the right reference alone, bit for bit, and the picture says where each part came from."""
    image, mask, right, distractor = scene
    full = np.ones(mask.shape, bool)
    alone = tiny_pipe(Image.fromarray(image), mask, Image.fromarray(right), full, matchers="sift", seed=0)
    both = tiny_pipe(Image.fromarray(image), mask, [Image.fromarray(distractor), Image.fromarray(right)], [full, full], matchers="sift", seed=0)
    assert alone.warp_fraction > 0.5, alone.notes
    assert np.array_equal(np.asarray(both.image), np.asarray(alone.image))
    assert both.guide == 1 and len(both.references) == 2
    assert both.references[0].warp_fraction == 0 and both.references[1].warp_fraction == pytest.approx(alone.warp_fraction)
    assert np.array_equal(both.region, alone.region)
    assert set(np.unique(both.source[mask])) <= {0, 2} and (both.source[mask] == 2).mean() > 0.5
    assert (both.source[~mask] == -1).all()
    assert both.source.shape == mask.shape


def test_two_partial_views_cover_more_than_either(tiny_pipe, scene):
    """Two references that each show half of the object: together they give the warp for more of
    the mask than either alone, each where it can."""
    image, mask, right, _ = scene
    left_half = np.zeros(mask.shape, bool)
    left_half[:, :82] = True
    right_half = np.zeros(mask.shape, bool)
    right_half[:, 78:] = True
    kw = dict(matchers="sift", seed=0)
    ra = tiny_pipe(Image.fromarray(image), mask, Image.fromarray(right), left_half, **kw)
    rb = tiny_pipe(Image.fromarray(image), mask, Image.fromarray(right), right_half, **kw)
    both = tiny_pipe(Image.fromarray(image), mask, [Image.fromarray(right)] * 2, [left_half, right_half], **kw)
    assert both.warp_fraction >= max(ra.warp_fraction, rb.warp_fraction) - 1e-6
    assert both.warp_fraction > max(ra.warp_fraction, rb.warp_fraction) + 0.05, (ra.warp_fraction, rb.warp_fraction, both.warp_fraction)
    assert {1, 2} <= set(np.unique(both.source[mask]).tolist())


def test_several_references_are_refused_with_a_given_region(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    region = np.ones((reference.height, reference.width), bool)
    with pytest.raises(InputError, match="exactly one reference"):
        tiny_pipe(image, mask, [reference, reference], region=region)
    with pytest.raises(InputError, match=r"reference #2: .*too small"):
        tiny_pipe(image, mask, [reference, Image.new("RGB", (4, 4))])


def test_a_later_reference_mask_error_names_that_mask(tiny_pipe, simple_inputs):
    """A mask given for the second reference is named as that mask, not as the reference's alpha."""
    image, mask, reference = simple_inputs
    h, w = reference.height, reference.width
    with pytest.raises(InputError, match=r"^reference #2 mask: reference mask is empty"):
        tiny_pipe(image, mask, [reference, reference], [None, np.zeros((h, w), bool)])
    with pytest.raises(InputError, match=rf"^reference #2 mask: size 9x9 does not match the reference {w}x{h}"):
        tiny_pipe(image, mask, [reference, reference], [None, np.ones((9, 9), bool)])
    with pytest.raises(InputError, match=r"^reference #2 mask: expected an \(H, W\) array"):
        tiny_pipe(image, mask, [reference, reference], [None, np.ones((2, 3, 4, 5), bool)])
    clear = Image.new("RGBA", (w, h), (0, 0, 0, 0))  # (no mask given: its alpha is the mask)
    with pytest.raises(InputError, match=r"^reference #2: its alpha channel is empty"):
        tiny_pipe(image, mask, [reference, clear])


def test_compare_picture_shows_every_reference_and_the_sources(tiny_pipe, scene):
    from refine_by_align.visualize import compare_picture, source_overlay

    image, mask, right, distractor = scene
    refs = [Image.fromarray(distractor), Image.fromarray(right)]
    out = tiny_pipe(Image.fromarray(image), mask, refs, matchers="sift", seed=0)
    one = compare_picture(Image.fromarray(image), mask, refs[1], out, height=100)
    several = compare_picture(Image.fromarray(image), mask, refs, out, height=100)
    assert several.width > one.width + 150  # a tile per reference and the source tile
    tinted = np.asarray(source_overlay(out.image, out.source)).astype(int)
    plain = np.asarray(out.image).astype(int)
    assert (tinted[mask] != plain[mask]).any() and np.array_equal(tinted[~mask], plain[~mask])


def test_without_any_field_the_reference_with_most_matches_guides():
    m = np.ones((4, 6), bool)
    none = [None, None, None]
    assert pick_guide(none, m, combine_warps(none, m.shape), [54, 144, 7]) == 1
    assert pick_guide(none, m, combine_warps(none, m.shape), [0, 0, 0]) == 0


def test_a_clearly_worse_warp_does_not_fill_what_a_near_exact_one_leaves_out():
    a = np.zeros((4, 6), bool)
    a[:, :4] = True
    exact, rough = _wf(a, 1.0, 0.999, 1), _wf(np.ones((4, 6), bool), 0.9, 0.90, 2)
    out = combine_warps([rough, exact], (4, 6))
    assert (out.source[a] == 1).all() and (out.source[~a] == -1).all()  # the rough view is left out
    close = _wf(np.ones((4, 6), bool), 0.9, 0.97, 3)
    assert (combine_warps([close, exact], (4, 6)).source[~a] == 0).all()  # within the margin: it fills the rest


def test_a_matcher_note_is_said_once_for_several_references(tiny_pipe, scene, tmp_path):
    """Without ALIKED's weights the dense alignment says so: once, not once per reference; what
    concerns one reference is prefixed with its number."""
    image, mask, right, distractor = scene
    tiny_pipe.set_matcher(tmp_path / "missing.safetensors")
    try:
        out = tiny_pipe(Image.fromarray(image), mask, [Image.fromarray(distractor), Image.fromarray(right)], seed=0)
    finally:
        tiny_pipe.set_matcher()
    unavailable = [n for n in out.notes if "ALIKED matcher unavailable" in n]
    assert len(unavailable) == 1 and not unavailable[0].startswith("reference #")
    assert all(any("ALIKED matcher unavailable" in n for n in r.notes) for r in out.references)


def test_a_warp_discounted_for_its_misfit_does_not_shut_out_a_whole_one():
    """A warp the misfit rule discounts to 0 takes no part; one it discounts partly does not set
    the margin the others must be within (it is not near-exact), and per pixel the higher weight
    still wins."""
    import dataclasses

    m = np.ones((4, 6), bool)
    whole = _wf(m, 0.89, 0.90, 50)  # agrees less on the ring, its fit explains its matches
    dropped = dataclasses.replace(_wf(np.zeros_like(m), 0.0, 0.97, 200), misfit_factor=0.0)  # as warp_fill gives it: no pixel trusted
    out = combine_warps([dropped, whole], (4, 6))
    assert (out.source == 1).all() and np.allclose(out.weight, 0.89) and (out.patch == 50).all()
    partly = dataclasses.replace(_wf(m, 0.2, 0.97, 200), misfit_factor=0.2)
    out = combine_warps([partly, whole], (4, 6))
    assert (out.source == 1).all() and np.allclose(out.weight, 0.89)
    # alone, a partly discounted warp is used at its lowered weight
    alone = combine_warps([partly, None], (4, 6))
    assert (alone.source == 0).all() and np.allclose(alone.weight, 0.2)
    assert not combine_warps([dropped], (4, 6)).use.any()


def test_guide_match_count_leaves_out_the_template_search():
    """Where no reference has a field, the guide is the one whose descriptors matched most; the
    template search's lattice points (a placement, not matched descriptors) do not count."""
    from refine_by_align.pipelines.alignment import AlignmentResult
    from refine_by_align.pipelines.pipeline import _match_count

    def result(matches):
        return AlignmentResult(np.zeros((4, 4), bool), np.zeros((4, 4), np.float32), None, None, 0, 0, "dense", None, {"matches": matches})

    assert _match_count(result({"sift": 12, "aliked-loose": 30, "template": 109})) == 30
    assert _match_count(result({"template": 85})) == 0 and _match_count(None) == 0
