"""The project's ECC (refine_by_align.ecc) against OpenCV's findTransformECC and a known warp."""

import cv2
import numpy as np
import pytest

from refine_by_align import ecc as E
from refine_by_align.ecc import ECCNotConverged, find_homography_ecc


def _texture(seed: int, size: int = 160) -> np.ndarray:
    """A smooth random texture (noise blurred at two scales), grey levels 20-235, float32."""
    rng = np.random.default_rng(seed)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    coarse = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 6.0)
    img = fine / fine.std() + 0.5 * coarse / coarse.std()
    return (20 + 215 * (img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _ring(size: int, inner: int, outer: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    return ((r >= inner) & (r <= outer)).astype(np.uint8)


TRUE = np.array([[1.01, 0.015, 1.3], [-0.012, 0.995, -0.8], [4e-5, -3e-5, 1.0]], np.float32)


def _pair(seed: int = 0, gain: float = 1.0, offset: float = 0.0):
    """(template, image, ring mask): the template is the image seen through TRUE (template(p) =
    image(TRUE p)), with a gain and an offset on the image (ECC is invariant to both)."""
    image = _texture(seed)
    template = cv2.warpPerspective(image, TRUE, image.shape[::-1], flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)
    return template, np.clip(image * gain + offset, 0, 255).astype(np.float32), _ring(image.shape[0], 15, 75)


def _corner_gap(a: np.ndarray, b: np.ndarray, shape) -> float:
    return float(np.abs(E._corners(a, shape) - E._corners(b, shape)).max())


def _gap_on(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The largest distance (px) between where ``a`` and ``b`` take the mask's pixels."""
    ys, xs = np.nonzero(mask)
    p = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
    qa, qb = p @ a.astype(np.float64).T, p @ b.astype(np.float64).T
    return float(np.abs(qa[:, :2] / qa[:, 2:] - qb[:, :2] / qb[:, 2:]).max())


@pytest.mark.parametrize("blur", [1, 5])
def test_recovers_a_known_homography_on_a_ring(blur):
    template, image, mask = _pair(gain=1.1, offset=-15.0)
    assert _gap_on(mask, np.eye(3), TRUE) > 1.5  # (the start is this far off on the ring)
    rho, W, done = find_homography_ecc(template, image, mask, iterations=100, eps=1e-7, blur=blur)
    assert W.dtype == np.float32 and W.shape == (3, 3)
    assert _gap_on(mask, W, TRUE) < 0.15  # px on the ring (0.06 measured)
    assert 0.999 < rho <= 1.0
    assert 1 < done < 100


@pytest.mark.parametrize("blur", [1, 5])
def test_the_same_warp_as_opencv_where_it_converges(blur):
    template, image, mask = _pair(seed=1)
    start = np.eye(3, dtype=np.float32)
    _, expected = cv2.findTransformECC(template, image, start.copy(), cv2.MOTION_HOMOGRAPHY, (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-6), mask, blur)
    _, W, done = find_homography_ecc(template, image, mask, iterations=60, eps=1e-6, blur=blur)
    assert done < 60  # (converged: the case this claims to match)
    assert _corner_gap(W, expected, template.shape) < 1e-3


def test_the_numpy_sums_equal_the_compiled_ones():
    pytest.importorskip("numba")
    template, image, mask = _pair(seed=2)
    t, img, gx, gy, pre = E._prepared(template, image, mask, 5)
    near = cv2.dilate(pre, np.ones((3, 3), np.uint8))
    rng = np.random.default_rng(0)
    for trial in range(4):
        # near the identity, and shifted far enough that the ring meets the picture's edge
        W = np.eye(3) + rng.normal(0, 1, (3, 3)) * np.array([[2e-3, 2e-3, 2.0], [2e-3, 2e-3, 2.0], [1e-5, 1e-5, 0.0]])
        if trial == 3:
            W[0, 2] += 70.0
        out = [[np.empty((8, 8)), np.empty((3, 8)), np.empty(6)] for _ in range(2)]
        E._sums(t, img, gx, gy, pre, near, W, *out[0])
        E._sums_numpy(t, img, gx, gy, pre, near, W, *out[1])
        for compiled, numpy_ in zip(*out):
            np.testing.assert_allclose(compiled, numpy_, rtol=1e-9, atol=1e-6)
        assert out[0][2][0] > 100  # (pixels on the mask were counted)


def test_a_cycle_is_read_off_where_running_it_out_would_end(monkeypatch):
    """A step that walks the warp around three states (the correlation of each measured as
    usual): the warp read off the cycle is the one 50 iterations end on."""
    template, image, mask = _pair(seed=3)
    walk = [np.array([0, 0, 0, 0, 0, 0, 0.5, 0.0], np.float32), np.array([0, 0, 0, 0, 0, 0, -0.25, 0.4], np.float32), np.array([0, 0, 0, 0, 0, 0, -0.25, -0.4], np.float32)]
    real_step, shipped = E._step, E.CYCLE_MAX
    outcomes = {}
    for cycle_max in (shipped, 0):
        taken = []

        def step(H, vec, stats):  # noqa: ANN001
            rho, _ = real_step(H, vec, stats)
            taken.append(1)
            return rho, walk[(len(taken) - 1) % 3]

        monkeypatch.setattr(E, "_step", step)
        monkeypatch.setattr(E, "CYCLE_MAX", cycle_max)
        outcomes[cycle_max] = find_homography_ecc(template, image, mask, iterations=50, eps=1e-9, blur=1)
    (rho_read, W_read, done_read), (rho_run, W_run, done_run) = outcomes[shipped], outcomes[0]
    assert done_run == 50 and done_read == 3
    np.testing.assert_allclose(W_read, W_run, atol=1e-5)
    assert np.abs(W_run[:2, 2] - np.array([0.25, 0.4])).max() < 1e-5  # (50 = 3 x 16 + 2 steps: the first two)
    assert rho_read == pytest.approx(rho_run, abs=1e-6)


def test_bad_inputs_are_refused_and_a_lost_mask_raises():
    template, image, mask = _pair()
    with pytest.raises(ValueError, match="one size"):
        find_homography_ecc(template, image[:-1], mask[:-1])
    with pytest.raises(ValueError, match="odd"):
        find_homography_ecc(template, image, mask, blur=4)
    with pytest.raises(ValueError, match="mask of shape"):
        find_homography_ecc(template, image, mask[:-1])
    with pytest.raises(ECCNotConverged, match="no pixel"):
        find_homography_ecc(template, image, np.zeros_like(mask))
    with pytest.raises(ECCNotConverged, match="NaN"):  # (a flat template: no correlation to take)
        find_homography_ecc(np.full_like(template, 90.0), image, mask)


def test_a_singular_hessian_is_a_zero_step_as_in_opencv():
    """No gradient under the mask (a singular Hessian): OpenCV's inverse is zero, so the step is
    zero and the iteration stops where it is, rather than raising NumPy's LinAlgError."""
    stats = np.array([100.0, 1.2e4, 1.5e6, 1.0e4, 1.1e6, 1.25e6])  # count, sums of i, i^2, t, t^2, t i
    rho, delta = E._step(np.zeros((8, 8)), np.zeros((3, 8)), stats)
    assert np.isfinite(rho) and -1.0 <= rho <= 1.0
    assert delta.shape == (8,) and not delta.any()


def test_the_step_inverts_and_multiplies_in_a_fixed_order():
    """The Gauss-Newton step's 8 x 8 inverse and products do not go through the BLAS (whose kernels
    round by the CPU's vector width, and ECC's path follows the last bits): the compiled loops give
    the same bits as the same loops run by the interpreter, the values of NumPy's LAPACK and BLAS
    to float32's precision, and a singular Hessian is reported (OpenCV's zero inverse follows)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    for _ in range(4):
        a = rng.normal(size=(8, 8)).astype(np.float32)
        A = (a @ a.T + np.eye(8, dtype=np.float32)).astype(np.float32)
        x = rng.normal(size=8).astype(np.float32)
        compiled, interpreted = np.empty((8, 8), np.float32), np.empty((8, 8), np.float32)
        assert E._inverse(A, compiled) and E._inverse_loop(A, interpreted)
        assert np.array_equal(compiled, interpreted)
        assert np.array_equal(E._matvec(compiled, x), E._matvec_loop(interpreted, x))
        ref = np.linalg.inv(A.astype(np.float64))
        assert np.abs(compiled - ref).max() <= 1e-4 * np.abs(ref).max()
        assert np.allclose(E._matvec(A, x), A.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
    singular = np.ones((8, 8), np.float32)
    assert not E._inverse(singular, np.empty((8, 8), np.float32))
    assert not E._inverse(np.zeros((8, 8), np.float32), np.empty((8, 8), np.float32))
