"""ECC image alignment for a homography on a masked band (Evangelidis and Psarakis, "Parametric
Image Alignment Using Enhanced Correlation Coefficient Maximization", TPAMI 2008): the iteration
``cv2.findTransformECC`` runs, computed where it matters.

1. **Only the pixels that take part are computed.** OpenCV warps the input image and its two
   gradients over the whole template and forms eight Jacobian images every iteration; on a ring
   around an artifact mask much of that box is the mask's inside, which the (masked) gradients
   and the warped mask zero out. Here one compiled pass (numba) visits each template pixel, skips
   in one read those that land far from the mask, and adds the others' Jacobian rows into the
   Hessian and the projections: on val2's 64 recorded ECC calls 0.61 -> 0.44 ms an iteration on
   average (on the polish's wide ring, most of its box, about OpenCV's time: 0.85-0.94 against
   0.96-1.04 ms).
2. **A cycle is not run to its end.** ECC's Gauss-Newton step with its illumination factor does
   not always settle: on the project's rings it often ends in a cycle of warps a tenth to half a
   pixel apart, the correlation alternating, and runs to its iteration count (val's 64 recorded
   ECC calls: 43 ran to their 60 or 100 iterations). Where the warp after an update comes back to
   one of the last :data:`CYCLE_MAX` warps (within :data:`CYCLE_PX` at the box's corners), the
   iteration is periodic from there on, and the warp it would end on after the iteration count is
   read off the cycle instead of iterated to.

Everything else is OpenCV's arithmetic: the Gaussian smoothing of both images and of the mask
(kept where the smoothed mask is at least 0.95, as OpenCV does), central-difference gradients
zeroed off the mask, bilinear warps (0 outside the input), the mask warped to its nearest pixel,
zero-mean correlation on the warped mask, the update with the illumination factor lambda in
float32 (``ECCNotConverged`` where OpenCV raises ``StsNoConv``) and the stopping rule (the change in
correlation below ``eps``, or the iteration count). The warps match OpenCV's where its iteration
converges (within 1e-5 to 6e-4 px at the box's corners on the recorded calls; tests/test_ecc.py
checks 1e-3 px); where it wanders without
settling, the float arithmetic's last bits send the two off a pixel or more apart, as they would
any two builds of OpenCV. Without numba the same sums are formed in NumPy (about ten times slower,
the same values to rounding).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["CYCLE_MAX", "CYCLE_PX", "ECCNotConverged", "find_homography_ecc", "warm_up"]

#: :func:`find_homography_ecc` looks for a cycle of up to this many warps...
CYCLE_MAX = 12
#: ... of warps this close (px, the largest move of the box's corners): the same warp
CYCLE_PX = 1e-3


class ECCNotConverged(RuntimeError):
    """The iteration broke down: no pixel left on the warped mask, a NaN correlation, or a step
    that would lower the correlation (OpenCV's ``StsNoConv``: images uncorrelated or not overlapping)."""


try:  # the compiled pass; NumPy's below where numba is missing
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; exercised by forcing the NumPy path in tests
    njit = None


def _sums_numpy(t, img, gx, gy, pre, near, W, H, vec, stats) -> None:
    """:func:`_sums_loop`'s contract in NumPy (no numba), the same sums over the same pixels."""
    h, w = t.shape
    hi, wi = img.shape
    x, y = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    d = W[2, 0] * x + W[2, 1] * y + W[2, 2]
    safe = np.where(d == 0.0, 1.0, d)
    u = (W[0, 0] * x + W[0, 1] * y + W[0, 2]) / safe
    v = (W[1, 0] * x + W[1, 1] * y + W[1, 2]) / safe
    in_range = (d != 0.0) & (u > -2.0) & (u < wi + 1.0) & (v > -2.0) & (v < hi + 1.0)  # (``near`` is not needed here)
    u, v = np.where(in_range, u, -10.0), np.where(in_range, v, -10.0)
    nx, ny = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
    inside = (nx >= 0) & (nx < wi) & (ny >= 0) & (ny < hi)
    m = inside & (pre[np.clip(ny, 0, hi - 1), np.clip(nx, 0, wi - 1)] != 0)
    ix, iy = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    ax, ay = u - ix, v - iy
    iw, gxw, gyw = np.zeros_like(u), np.zeros_like(u), np.zeros_like(u)
    anyg = np.zeros(u.shape, bool)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = iy + dy, ix + dx
            ok = (yy >= 0) & (yy < hi) & (xx >= 0) & (xx < wi)
            yc, xc = np.clip(yy, 0, hi - 1), np.clip(xx, 0, wi - 1)
            c = np.where(ok, (ax if dx else 1.0 - ax) * (ay if dy else 1.0 - ay), 0.0)
            iw += c * img[yc, xc]
            on = ok & (pre[yc, xc] != 0)
            anyg |= on
            gxw += np.where(on, c * gx[yc, xc], 0.0)
            gyw += np.where(on, c * gy[yc, xc], 0.0)
    keep = in_range & (m | anyg)
    den = W[2, 0] * x + W[2, 1] * y + 1.0
    hx = -(W[0, 0] * x + W[0, 1] * y + W[0, 2]) / den
    hy = -(W[1, 0] * x + W[1, 1] * y + W[1, 2]) / den
    s1, s2 = gxw / den, gyw / den
    tmp = hx * s1 + hy * s2
    J = np.stack([s1 * x, s2 * x, tmp * x, s1 * y, s2 * y, tmp * y, s1, s2], -1)[keep]  # (N, 8)
    iw, tv, on = iw[keep], t[keep].astype(np.float64), m[keep]
    H[:] = J.T @ J
    vec[0] = J.T @ iw
    vec[1] = J[on].sum(0)
    vec[2] = J[on].T @ tv[on]
    stats[:] = (on.sum(), iw[on].sum(), iw[on] @ iw[on], tv[on].sum(), tv[on] @ tv[on], tv[on] @ iw[on])


def _sums_loop(t, img, gx, gy, pre, near, W, H, vec, stats) -> None:
    """One ECC iteration's sums, compiled (numba). For each template pixel (x, y) whose warp
    W(x, y) lands within the input, the pixel takes part where its nearest input pixel is on the
    thresholded mask ``pre`` (it is then "on": in the correlation) or where one of its four bilinear
    taps is (its warped gradient is not zero: it is in the Hessian and the projections); ``near``
    is ``pre`` dilated by one pixel, so one read skips the pixels that land far from it (most of
    the mask's inside). With J its Jacobian row (dI/dp for the 8 homography parameters, OpenCV's
    order and arithmetic), i its warped intensity and t its template value, writes H = sum J J^T
    (8, 8); ``vec`` (3, 8) = sum J i, sum over "on" of J, sum over "on" of J t; ``stats`` (6,) = over
    "on": count, sum i, sum i^2, sum t, sum t^2, sum t i."""
    h, w = t.shape
    hi, wi = img.shape
    w00, w01, w02 = W[0, 0], W[0, 1], W[0, 2]
    w10, w11, w12 = W[1, 0], W[1, 1], W[1, 2]
    w20, w21, w22 = W[2, 0], W[2, 1], W[2, 2]
    H[:] = 0.0
    vec[:] = 0.0
    stats[:] = 0.0
    J = np.empty(8)
    for y in range(h):
        for x in range(w):
            d = w20 * x + w21 * y + w22
            if d == 0.0:
                continue
            u = (w00 * x + w01 * y + w02) / d
            v = (w10 * x + w11 * y + w12) / d
            if not (-1.0 <= u < wi and -1.0 <= v < hi):
                continue  # (every tap outside the input: nothing to add)
            nx = int(np.rint(u))
            ny = int(np.rint(v))
            if 0 <= nx < wi and 0 <= ny < hi:
                if near[ny, nx] == 0:
                    continue  # neither its nearest pixel nor a tap on the mask
                m = pre[ny, nx] != 0
            else:
                m = False
            ix = int(np.floor(u))
            iy = int(np.floor(v))
            ax = u - ix
            ay = v - iy
            if 0 <= ix and ix + 1 < wi and 0 <= iy and iy + 1 < hi:
                c00 = (1.0 - ax) * (1.0 - ay)
                c01 = ax * (1.0 - ay)
                c10 = (1.0 - ax) * ay
                c11 = ax * ay
                iw = c00 * img[iy, ix] + c01 * img[iy, ix + 1] + c10 * img[iy + 1, ix] + c11 * img[iy + 1, ix + 1]
                gxw = c00 * gx[iy, ix] + c01 * gx[iy, ix + 1] + c10 * gx[iy + 1, ix] + c11 * gx[iy + 1, ix + 1]
                gyw = c00 * gy[iy, ix] + c01 * gy[iy, ix + 1] + c10 * gy[iy + 1, ix] + c11 * gy[iy + 1, ix + 1]
            else:  # at the input's edge: the taps outside it count 0 (OpenCV's constant border)
                iw = 0.0
                gxw = 0.0
                gyw = 0.0
                for dy in range(2):
                    yy = iy + dy
                    if yy < 0 or yy >= hi:
                        continue
                    wy = ay if dy == 1 else 1.0 - ay
                    for dx in range(2):
                        xx = ix + dx
                        if xx < 0 or xx >= wi:
                            continue
                        c = (ax if dx == 1 else 1.0 - ax) * wy
                        iw += c * img[yy, xx]
                        gxw += c * gx[yy, xx]
                        gyw += c * gy[yy, xx]
            if not m and gxw == 0.0 and gyw == 0.0:
                continue  # (the gradients are zero off the mask: a zero row)
            den = w20 * x + w21 * y + 1.0
            hx = -(w00 * x + w01 * y + w02) / den
            hy = -(w10 * x + w11 * y + w12) / den
            s1 = gxw / den
            s2 = gyw / den
            tmp = hx * s1 + hy * s2
            J[0] = s1 * x
            J[1] = s2 * x
            J[2] = tmp * x
            J[3] = s1 * y
            J[4] = s2 * y
            J[5] = tmp * y
            J[6] = s1
            J[7] = s2
            for a in range(8):
                ja = J[a]
                vec[0, a] += ja * iw
                for b in range(a, 8):
                    H[a, b] += ja * J[b]
            if m:
                tv = np.float64(t[y, x])
                for a in range(8):
                    vec[1, a] += J[a]
                    vec[2, a] += J[a] * tv
                stats[0] += 1.0
                stats[1] += iw
                stats[2] += iw * iw
                stats[3] += tv
                stats[4] += tv * tv
                stats[5] += tv * iw
    for a in range(8):
        for b in range(a):
            H[a, b] = H[b, a]


_sums = njit(cache=True, nogil=True)(_sums_loop) if njit is not None else _sums_numpy


def _inverse_loop(A: np.ndarray, out: np.ndarray) -> bool:
    """``out`` = the inverse of the float32 (n, n) ``A`` by Gauss-Jordan elimination with partial
    pivoting, in float32 and in a fixed order (the same bits on every CPU, where a BLAS's kernels
    round by their vector width); False where ``A`` is singular (``out`` undefined)."""
    n = A.shape[0]
    M = A.copy()
    for i in range(n):
        for j in range(n):
            out[i, j] = np.float32(1.0) if i == j else np.float32(0.0)
    for c in range(n):
        p = c
        for r in range(c + 1, n):
            if abs(M[r, c]) > abs(M[p, c]):
                p = r
        if M[p, c] == 0.0:
            return False
        if p != c:
            for j in range(n):
                M[c, j], M[p, j] = M[p, j], M[c, j]
                out[c, j], out[p, j] = out[p, j], out[c, j]
        d = M[c, c]
        for j in range(n):
            M[c, j] = M[c, j] / d
            out[c, j] = out[c, j] / d
        for r in range(n):
            if r != c:
                f = M[r, c]
                if f != 0.0:
                    for j in range(n):
                        M[r, j] = M[r, j] - f * M[c, j]
                        out[r, j] = out[r, j] - f * out[c, j]
    return True


def _matvec_loop(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A @ x`` for float32 ``A`` (n, m) and ``x`` (m,), summed in float32 in a fixed order."""
    out = np.zeros(A.shape[0], np.float32)
    for i in range(A.shape[0]):
        acc = np.float32(0.0)
        for j in range(A.shape[1]):
            acc += A[i, j] * x[j]
        out[i] = acc
    return out


if njit is not None:
    _inverse, _matvec = njit(cache=True, nogil=True)(_inverse_loop), njit(cache=True, nogil=True)(_matvec_loop)
else:  # (NumPy's LAPACK and BLAS: the same values up to their rounding)
    def _inverse(A: np.ndarray, out: np.ndarray) -> bool:
        try:
            out[:] = np.linalg.inv(A)
        except np.linalg.LinAlgError:
            return False
        return True

    def _matvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (A @ x).astype(np.float32)


def _prepared(template: np.ndarray, image: np.ndarray, mask: np.ndarray | None, blur: int):
    """OpenCV's set-up: both images smoothed by a ``blur`` px Gaussian (1: not), the mask (on the
    input image) smoothed alike and kept where at least 0.95 (its outline pulled in), and the input's
    central-difference gradients zeroed off it. -> (template, image, gx, gy, mask), float32 and uint8."""
    t = cv2.GaussianBlur(template.astype(np.float32), (blur, blur), 0)
    img = cv2.GaussianBlur(image.astype(np.float32), (blur, blur), 0)
    pre = np.ones(image.shape, np.float32) if mask is None else (np.asarray(mask) > 0).astype(np.float32)
    pre = cv2.GaussianBlur(pre, (blur, blur), 0) * np.float32(0.5 / 0.95)
    pre8 = np.clip(np.rint(pre), 0, 255).astype(np.uint8)
    k = np.array([[-0.5, 0.0, 0.5]], np.float32)
    gx = cv2.filter2D(img, -1, k) * pre8
    gy = cv2.filter2D(img, -1, k.T) * pre8
    return t, img, gx, gy, pre8


def _step(H: np.ndarray, vec: np.ndarray, stats: np.ndarray) -> tuple[float, np.ndarray]:
    """From one iteration's sums (:func:`_sums_loop`): (the correlation of the warp they were
    taken at, the Gauss-Newton step with the illumination factor, (8,) float32 in OpenCV's
    parameter order). Raises ECCNotConverged where OpenCV stops with StsNoConv."""
    count, s_i, s_ii, s_t, s_tt, s_ti = stats
    if count == 0:
        raise ECCNotConverged("no pixel of the mask is left under the warp")
    i_mean, t_mean = s_i / count, s_t / count
    # over the warped mask, zero-mean: |i|^2, |t|^2 and their correlation (OpenCV's imgNorm^2,
    # tmpNorm^2 and templateZM . imageWarped)
    i_norm2, t_norm2 = s_ii - count * i_mean * i_mean, s_tt - count * t_mean * t_mean
    correlation = s_ti - count * t_mean * i_mean
    if not i_norm2 * t_norm2 > 0.0:  # (a flat image or template on the mask: OpenCV's NaN)
        raise ECCNotConverged("NaN encountered")
    rho = float(correlation / np.sqrt(i_norm2 * t_norm2))
    # the step in OpenCV's float32 Hessian and projections: the image zero-mean on the mask and as
    # warped off it, the template zero off it
    # (the inverse and its products computed in a fixed order, not by the BLAS: its kernels round by
    # the CPU's vector width, and ECC's path follows the last bits)
    hessian_inv = np.empty((8, 8), np.float32)
    if not _inverse(np.ascontiguousarray(H, np.float32), hessian_inv):  # (no gradient under the mask: OpenCV's inverse of a singular matrix is 0)
        hessian_inv[:] = 0.0
    i_proj = (vec[0] - i_mean * vec[1]).astype(np.float32)  # (8,) J . imageWarped
    t_proj = (vec[2] - t_mean * vec[1]).astype(np.float32)  # J . templateZM
    i_proj_h = _matvec(hessian_inv, i_proj)
    lambda_n = i_norm2 - float(i_proj.astype(np.float64) @ i_proj_h.astype(np.float64))
    lambda_d = correlation - float(t_proj.astype(np.float64) @ i_proj_h.astype(np.float64))
    if lambda_d <= 0.0:
        raise ECCNotConverged("the step would lower the correlation: the images may be uncorrelated or not overlap")
    error_proj = ((lambda_n / lambda_d) * t_proj.astype(np.float64) - i_proj.astype(np.float64)).astype(np.float32)
    return rho, _matvec(hessian_inv, error_proj)


def _corners(W: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(4, 2): where ``W`` takes the corners of an (h, w) box."""
    h, w = shape
    p = np.array([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [0.0, h, 1.0], [w, h, 1.0]]) @ W.astype(np.float64).T
    return p[:, :2] / p[:, 2:]


def find_homography_ecc(
    template: np.ndarray,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    iterations: int = 50,
    eps: float = 1e-5,
    blur: int = 5,
    warp: np.ndarray | None = None,
) -> tuple[float, np.ndarray, int]:
    """The homography W that maximises the enhanced correlation coefficient between ``template``
    and ``image`` warped by it (``image(W p) ~ template(p)`` up to gain and offset), on the pixels
    of ``mask`` (in ``image``'s pixels; None: all): ``cv2.findTransformECC`` with
    ``MOTION_HOMOGRAPHY``, ``(EPS | COUNT, iterations, eps)``, ``mask`` and ``blur`` as its
    ``gaussFiltSize``, computed on the pixels that take part, a cycle read off instead of run to
    the iteration count (the module's docstring).

    ``template`` and ``image`` (H, W) grey, any real type, the same size; ``warp`` the 3x3 start
    (None: the identity). Returns (the last correlation measured, as OpenCV's; the warp, (3, 3)
    float32; the iterations computed). Raises ECCNotConverged where the iteration breaks down,
    ValueError on bad inputs."""
    template, image = np.asarray(template), np.asarray(image)
    if template.ndim != 2 or image.ndim != 2:
        raise ValueError(f"find_homography_ecc wants two grey (H, W) images, got {template.shape} and {image.shape}")
    if template.shape != image.shape:
        raise ValueError(f"find_homography_ecc wants images of one size, got {template.shape} and {image.shape}")
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"mask of shape {np.shape(mask)} does not match the image's {image.shape}")
    if blur < 1 or blur % 2 == 0:
        raise ValueError(f"blur must be a positive odd number of px, got {blur}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    t, img, gx, gy, pre = _prepared(template, image, mask, blur)
    near = cv2.dilate(pre, np.ones((3, 3), np.uint8))  # (the pixels a bilinear tap can reach the mask from)
    W = np.eye(3, dtype=np.float32) if warp is None else np.array(warp, np.float32).reshape(3, 3)
    H, vec, stats = np.empty((8, 8)), np.empty((3, 8)), np.empty(6)
    warps, corners, rhos = [W.copy()], [_corners(W, t.shape)], []  # after k updates; rhos[k]: warps[k]'s
    rho, last = -1.0, -eps
    done = 0
    while done < iterations and abs(rho - last) >= eps:
        done += 1
        _sums(t, img, gx, gy, pre, near, W.astype(np.float64), H, vec, stats)
        last, (rho, delta) = rho, _step(H, vec, stats)
        rhos.append(rho)
        W.reshape(-1)[[0, 3, 6, 1, 4, 7, 2, 5]] += delta
        warps.append(W.copy())
        corners.append(_corners(W, t.shape))
        for p in range(2, min(CYCLE_MAX, done) + 1):
            if np.abs(corners[done] - corners[done - p]).max() < CYCLE_PX and abs(rhos[done - 1] - rhos[done - p]) >= eps:
                # warps[done] is warps[done - p] again, and no step of the cycle (the one back to
                # its start included) changes the correlation by less than eps: it runs on to the
                # iteration count, and ends where the cycle is then
                end = done - p + (iterations - done) % p
                return float(rhos[done - p + (iterations - 1 - done) % p]), warps[end], done
    return float(rho), W, done


def warm_up() -> None:
    """Load (or, the first time on a machine, compile) the compiled pass on a tiny problem."""
    yy, xx = np.mgrid[0:24, 0:24]
    img = (128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float32)
    try:
        find_homography_ecc(img, img, None, iterations=2, blur=1)
    except ECCNotConverged:
        pass
