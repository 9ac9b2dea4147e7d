"""The batched, compiled FSR (refine_by_align.fsr) against OpenCV's, pixel for pixel."""

import cv2
import numpy as np
import pytest

pytest.importorskip("numba")
needs_xphoto = pytest.mark.skipif(not hasattr(cv2, "xphoto"), reason="OpenCV's contrib modules (cv2.xphoto) are not installed")


def _picture(seed: int, h: int, w: int, slope: float) -> np.ndarray:
    """A flat band, a ramp of ``slope`` grey levels a pixel and noise: the split test takes blocks
    of every size there (16, 8 and 4 px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([np.full((h, w), 120.0), np.full((h, w), 90.0), np.full((h, w), 160.0)], -1)
    band = slice(w // 3, 2 * w // 3)
    img[:, band] = (60 + slope * (xx[:, band] + yy[:, band]))[..., None] * np.array([1.0, 0.8, 1.1])
    img[:, 2 * w // 3 :] += rng.normal(0, 25, (h, w - 2 * w // 3, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _hole(h: int, w: int, seed: int) -> np.ndarray:
    """A band across the three areas and a few rectangles."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 3 + 20, 10 : w - 10] = True
    for _ in range(4):
        y, x = rng.integers(4, h - 24), rng.integers(4, w - 24)
        mask[y : y + rng.integers(6, 22), x : x + rng.integers(6, 22)] = True
    return mask


def _opencv(img: np.ndarray, known: np.ndarray, flag) -> np.ndarray:
    out = np.zeros_like(img)
    cv2.xphoto.inpaint(np.ascontiguousarray(img), known.astype(np.uint8) * 255, out, flag)
    return out


@needs_xphoto
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fsr_inpaint_equals_opencv_fast_in_colour_and_grey(seed):
    from refine_by_align.fsr import fsr_inpaint

    img = _picture(seed, 96, 144, slope=0.4 + 0.2 * seed)
    known = ~_hole(96, 144, seed)
    out = fsr_inpaint([img], [known])[0]
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out, _opencv(img, known, cv2.xphoto.INPAINT_FSR_FAST))
    grey = np.ascontiguousarray(img[..., 1])
    assert np.array_equal(fsr_inpaint([grey], [known])[0], _opencv(grey, known, cv2.xphoto.INPAINT_FSR_FAST))


@needs_xphoto
def test_fsr_inpaint_equals_opencv_best():
    from refine_by_align.fsr import FSR_BEST, fsr_inpaint

    img = _picture(7, 64, 64, slope=0.5)
    known = np.ones((64, 64), bool)
    known[20:34, 26:41] = False
    assert np.array_equal(fsr_inpaint([img], [known], FSR_BEST)[0], _opencv(img, known, cv2.xphoto.INPAINT_FSR_BEST))


def test_fsr_inpaint_takes_every_block_size_and_batches_pictures_as_alone():
    """The schedule holds blocks of 16, 8 and 4 px on this picture, several waves deep; pictures of
    different sizes given together come out as each given alone."""
    from refine_by_align import fsr

    a, b = _picture(3, 96, 144, 0.5), _picture(4, 64, 80, 0.8)
    ka, kb = ~_hole(96, 144, 3), ~_hole(64, 80, 4)
    ycrcb = cv2.cvtColor(a, cv2.COLOR_BGR2YCrCb)
    channel = fsr._Channel(ycrcb[..., 0] * ka, ka, True, fsr.FSR_FAST)
    sizes = {blk.size for wave in channel.waves for blk in wave}
    assert sizes == {16, 8, 4} and len(channel.waves) > 20, (sizes, len(channel.waves))
    for wave in channel.waves:  # no block's window reaches another's pixels within a wave
        for i, p in enumerate(wave):
            assert not any(fsr._overlaps(p.win, q) or fsr._overlaps(q.win, p) for q in wave[i + 1 :])
    together = fsr.fsr_inpaint([a, b], [ka, kb])
    alone = [fsr.fsr_inpaint([a], [ka])[0], fsr.fsr_inpaint([b], [kb])[0]]
    for t, s, img, k in zip(together, alone, (a, b), (ka, kb)):
        assert np.array_equal(t, s)
        assert np.abs(t[k].astype(int) - img[k]).max() <= 2  # known pixels as given, but for the 8-bit YCrCb round trip
        assert np.abs(t[~k].astype(float) - img[~k]).mean() < 40  # the holes filled, not left black


def test_fsr_inpaint_rejects_bad_inputs():
    from refine_by_align.fsr import fsr_inpaint

    img = np.zeros((32, 32, 3), np.uint8)
    known = np.ones((32, 32), bool)
    for bad in (([img], [known[:5]]), ([img.astype(np.float32)], [known]), ([img[..., :2]], [known]), ([img], [known, known])):
        with pytest.raises(ValueError, match="fsr_inpaint"):
            fsr_inpaint(*bad)


def test_fsr_fill_falls_back_to_opencv_without_numba(monkeypatch):
    """Without numba the fill is OpenCV's FSR: the same pixels."""
    import sys

    from refine_by_align.fill import fsr_fill

    img = _picture(5, 80, 96, 0.6)
    mask = _hole(80, 96, 5)
    from refine_by_align.fill import fsr_backend

    compiled = fsr_fill(img, mask)
    assert fsr_backend().startswith("numba ")
    monkeypatch.setitem(sys.modules, "refine_by_align.fsr", None)  # import fails
    assert fsr_backend() == "opencv"
    if not hasattr(cv2, "xphoto"):
        with pytest.raises(RuntimeError, match="numba"):
            fsr_fill(img, mask)
        return
    assert np.array_equal(fsr_fill(img, mask), compiled)


@needs_xphoto
def test_fsr_inpaint_equals_opencv_on_random_pictures_and_holes():
    """Seeded random cases: sizes from 8 px (under one block) to 80, colour and grey, noise, blur
    and flat colour, holes of any shape up to nearly the whole picture (the branch where every
    block holds a hole)."""
    from refine_by_align.fsr import fsr_inpaint

    rng = np.random.default_rng(11)
    for i in range(40):
        h, w = int(rng.integers(8, 80)), int(rng.integers(8, 80))
        img = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        if i % 3 == 0:
            img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 6)))
        elif i % 3 == 1:
            img[:] = rng.integers(0, 255, 3)
        known = np.ones((h, w), bool)
        for _ in range(int(rng.integers(1, 5))):
            y, x = rng.integers(0, h), rng.integers(0, w)
            known[y : y + rng.integers(1, h), x : x + rng.integers(1, w)] = False
        if i % 10 == 9:
            known[:] = False
            known[0, 0] = True
        picture = np.ascontiguousarray(img[..., 0]) if i % 4 == 3 else img
        assert np.array_equal(fsr_inpaint([picture], [known])[0], _opencv(picture, known, cv2.xphoto.INPAINT_FSR_FAST)), (i, h, w)


def test_fsr_inpaint_on_two_threads_equals_one_after_another():
    """The fills run two FSRs side by side (the compiled search releases Python's lock): the same
    pixels as one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from refine_by_align.fsr import fsr_inpaint

    jobs = [(_picture(s, 64, 96, 0.5 + 0.1 * s), ~_hole(64, 96, s)) for s in range(4)]
    alone = [fsr_inpaint([img], [known])[0] for img, known in jobs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda job: fsr_inpaint([job[0]], [job[1]])[0], jobs))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
