"""Frequency-selective reconstruction (FSR), block by block, with the blocks of one step batched.

FSR (Seiler and Kaup's frequency-selective extrapolation; Genser, Seiler, Kaup et al., "Rapid
Frequency Selective Reconstruction", ICIP 2018 and IWSSIP 2017/2018) fills a hole block by block:
the known pixels around a block are approximated by a sparse sum of 2-D Fourier basis functions,
chosen one at a time where they lower the weighted residual most (the residual's weighted spectrum
is updated in place by a shifted copy of the weight's spectrum, so no transform is taken per
step), and the sum is read off inside the hole. Blocks are taken in order of how many of their
eight neighbours are still to be filled (fewest first), each filled block then counting as known at
half weight; a block whose known pixels vary more than a threshold is split into four and done at
the next size (16, 8, 4 px).

OpenCV contrib's ``xphoto.inpaint(..., INPAINT_FSR_FAST)`` is the reference implementation. It
takes the blocks one at a time, with up to 100 small allocating steps each, and it costs 0.3-1.1 s
on the holes of the multiview cases (the largest part of their fill). Here the same steps are
taken in the same order and with the same arithmetic (float64), but the blocks that the order lets
run together (one round of fewest-neighbour blocks, split into waves where one block's window
reaches another's pixels) and the colour channels and pictures given together are extrapolated as
one batch of arrays, and the search for each block's basis functions is compiled (numba; it
releases Python's lock): 0.07-0.21 s where OpenCV takes 0.28-0.89 s. The result equals OpenCV's
``INPAINT_FSR_FAST`` (and, with :data:`FSR_BEST`, ``INPAINT_FSR_BEST``): tested pixel for pixel
against ``cv2.xphoto`` where that is installed (MODEL_CARD.md, "The FSR fill, 3-4x faster").

:func:`fsr_inpaint` is the entry point: several (image, known-mask) pairs at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from numba import njit

__all__ = ["fsr_inpaint", "warm_up", "FSRSettings", "FSR_FAST", "FSR_BEST"]


@dataclass(frozen=True)
class FSRSettings:
    """One quality profile of FSR (OpenCV's values for ``INPAINT_FSR_FAST``)."""

    block_size: int = 16  # px: the largest block; split in four while its known pixels vary too much
    block_size_min: int = 4  # px: the smallest block (always extrapolated, however much it varies)
    fft_size: int = 32  # px: the window each block is extrapolated in (block and the pixels around it)
    max_iter: int = 100  # basis functions at most per block
    min_iter: int = 20  # basis functions at least per block
    iter_const: int = 1000  # basis functions per unit of the block's normalised standard deviation
    orthogonality_correction: float = 0.5  # the share of each chosen coefficient taken per step
    conc_weighting: float = 0.5  # the weight of an already-extrapolated pixel in later windows
    rhos: tuple[float, ...] = (0.80, 0.70, 0.66, 0.64)  # the spatial weight's decay per px, by block size 16/8/4/2
    threshold_y: tuple[float, ...] = (0.014, 0.030, 0.090)  # split thresholds (normalised std) of luma, by size 16/8/4
    threshold_c: tuple[float, ...] = (0.006, 0.010, 0.028)  # the same for the two chroma channels


FSR_FAST = FSRSettings()  # OpenCV's INPAINT_FSR_FAST
FSR_BEST = FSRSettings(block_size_min=2, fft_size=64, max_iter=400, min_iter=50, iter_const=2000, orthogonality_correction=0.2)  # INPAINT_FSR_BEST

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class _Block:
    """One block to extrapolate: its grid position, size, window and spatial decay."""

    y: int  # top-left corner of the block, px
    x: int
    size: int  # px (16, 8 or 4)
    win: tuple[int, int, int, int]  # the window (y0, y1, x0, x1) it is extrapolated in, px
    rho: float  # the spatial weight's decay per px
    sigma: float  # its normalised std from the split test; 0: measured on the window when extrapolated


class _Channel:
    """One channel to reconstruct: its pixels, its known mask and the blocks to extrapolate, in
    waves (:func:`_schedule`); :func:`fsr_inpaint` fills a copy of the pixels."""

    def __init__(self, values: np.ndarray, known: np.ndarray, luma: bool, settings: FSRSettings):
        self.sampled = values.astype(np.float64)  # (H, W): the channel as given (the split test reads it)
        self.mask = known.astype(np.float64)  # (H, W): 1 known, 0 hole
        self.thresholds = settings.threshold_y if luma else settings.threshold_c
        self.waves = _schedule(self, settings)


@njit(cache=True, nogil=True)
def _std(values, weight):  # pragma: no cover - compiled
    """The normalised standard deviation of ``values`` over the pixels of non-zero ``weight`` (NaN
    where there are none): how much a window's known pixels vary, in [0, 1]."""
    total = 0.0
    squares = 0.0
    count = 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if weight[i, j] != 0:
                total += values[i, j]
                squares += values[i, j] * values[i, j]
                count += 1
    if count == 0:
        return np.nan
    mean = total / count
    sigma = np.sqrt(max(squares / count - mean * mean, 0.0)) / 255.0
    return min(max(sigma, 0.0), 1.0)


def _window(y: int, x: int, size: int, border: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The block at (y, x) grown by ``border`` px on each side, cut to the picture."""
    h, w = shape
    top, left = min(y, border), min(x, border)
    bottom, right = max(0, min(h - (y + size), border)), max(0, min(w - (x + size), border))
    return y - top, min(h, y + size + bottom), x - left, min(w, x + size + right)


def _hole_blocks(mask: np.ndarray, size: int, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) bool: the blocks of ``size`` px that hold a hole pixel (mask 0)."""
    tiles = mask[: rows * size, : cols * size].reshape(rows, size, cols, size)
    return (tiles == 0).any(axis=(1, 3))


def _unfilled_neighbours(mask: np.ndarray, size: int, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) int64: for each block of ``size`` px that holds a hole pixel, how many of its
    eight neighbours do too, a block on the picture's border counting its missing neighbours as
    unfilled (5 more at a corner, 3 on a side, per side it lies on); -1 for a block without hole.
    FSR takes the blocks with the fewest first."""
    holes = _hole_blocks(mask, size, rows, cols)
    padded = np.pad(holes, 1).astype(np.int64)
    nen = sum(padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] for dy, dx in _NEIGHBOURS)
    at_y = np.zeros((rows, 1), np.int64)  # on the first / last row (2 where there is one row)
    at_y[0] += 1
    at_y[-1] += 1
    at_x = np.zeros((1, cols), np.int64)  # on the first / last column
    at_x[0, 0] += 1
    at_x[0, -1] += 1
    nen = nen + 5 * at_y * at_x + 3 * (at_y * (at_x == 0) + at_x * (at_y == 0))
    nen[~holes] = -1
    if nen.min() == 8:  # no block without holes around: the blocks that are all hole wait one more
        tiles = mask[: rows * size, : cols * size].reshape(rows, size, cols, size)
        nen[(tiles == 0).all(axis=(1, 3))] += 1
    return nen


def _schedule(ch: _Channel, s: FSRSettings) -> list[list[_Block]]:
    """The order in which FSR extrapolates the blocks of one channel, as a list of waves: the blocks
    of a wave are independent of each other (none's window reaches another's pixels), each wave
    sees every earlier one filled.

    The order does not depend on the values filled in, only on the mask and on the split tests,
    which read the channel as given, so it is found before any block is extrapolated, on a copy of
    the mask updated as the blocks are taken."""
    mask = ch.mask.copy()  # (H, W): the known mask as the blocks are taken (filled ones at conc_weighting)
    h, w = mask.shape
    size, border = s.block_size, 0
    threshold, rho = ch.thresholds[0], s.rhos[0]
    rows, cols = -(-h // size), -(-w // size)
    todo = [(by, bx) for by in range(rows) for bx in range(cols) if (mask[by * size : (by + 1) * size, bx * size : (bx + 1) * size] == 0).any()]
    later: list[tuple[int, int]] = []
    waves: list[list[_Block]] = []
    while size >= s.block_size_min:
        rows, cols = h // size, w // size
        sigma = np.zeros((rows, cols))
        now = np.zeros((rows, cols), bool)  # the blocks extrapolated at this size
        if size > s.block_size_min:
            if size < s.block_size:
                todo = later
            border = (s.fft_size - size) // 2
            later = []
            for by, bx in todo:  # the split test, on the channel as given
                if by >= rows or bx >= cols:
                    continue
                y0, y1, x0, x1 = _window(by * size, bx * size, size, border, (h, w))
                sg = _std(ch.sampled[y0:y1, x0:x1], mask[y0:y1, x0:x1])
                sigma[by, bx] = sg
                if sg < threshold:
                    now[by, bx] = True
                else:
                    later += [(2 * by + dy, 2 * bx + dx) for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
        else:
            now[:] = True
        nen = _unfilled_neighbours(mask, size, rows, cols) if rows and cols else np.full((rows, cols), -1)  # (no whole block: none taken)
        while True:  # rounds: the blocks with the fewest unfilled neighbours, none next to another
            cand = (nen >= 0) & now
            if not cand.any():
                break
            least = nen[cand].min()
            taken: list[tuple[int, int]] = []
            blocked = np.zeros((rows, cols), bool)
            for by, bx in zip(*np.nonzero(cand & (nen == least))):
                if blocked[by, bx]:
                    continue
                taken.append((int(by), int(bx)))
                blocked[max(by - 1, 0) : by + 2, max(bx - 1, 0) : bx + 2] = True
            round_blocks = []
            for by, bx in taken:
                y, x = by * size, bx * size
                round_blocks.append(_Block(y, x, size, _window(y, x, size, border, (h, w)), rho, float(sigma[by, bx])))
                cell = mask[y : y + size, x : x + size]
                cell[cell == 0] = s.conc_weighting
                nen[max(by - 1, 0) : by + 2, max(bx - 1, 0) : bx + 2] -= 1
                nen[by, bx] = -1
            waves += _waves(round_blocks)
        size //= 2
        border = (s.fft_size - size) // 2
        if size == 8:
            threshold, rho = ch.thresholds[1], s.rhos[1]
        elif size == 4:
            threshold, rho = ch.thresholds[2], s.rhos[2]
        elif size == 2:
            rho = s.rhos[3]
        if not later:
            break
    return waves


def _waves(blocks: list[_Block]) -> list[list[_Block]]:
    """A round's blocks (in the order taken) split into waves: a block goes one wave after the
    latest earlier block whose pixels its window reaches, or whose window reaches its pixels, so
    every block sees exactly what it would if the blocks were taken one by one."""
    level: list[int] = []
    for j, b in enumerate(blocks):
        lv = 0
        for i in range(j):
            a = blocks[i]
            if _overlaps(b.win, a) or _overlaps(a.win, b):
                lv = max(lv, level[i] + 1)
        level.append(lv)
    out: list[list[_Block]] = [[] for _ in range(max(level) + 1)] if level else []
    for b, lv in zip(blocks, level):
        out[lv].append(b)
    return out


def _overlaps(win: tuple[int, int, int, int], b: _Block) -> bool:
    y0, y1, x0, x1 = win
    return y0 < b.y + b.size and b.y < y1 and x0 < b.x + b.size and b.x < x1


@lru_cache(maxsize=None)
def _frequency_weighting(n: int) -> np.ndarray:
    """(n, n // 2 + 1): the preference for low frequencies when choosing the next basis function."""
    y = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(n // 2 + 1, dtype=np.float64)[None, :]
    y2 = n / 2 - np.abs(y - n / 2)
    x2 = n / 2 - np.abs(x - n / 2)
    return 1 - np.sqrt(x2 * x2 + y2 * y2) * np.sqrt(2) / n


@njit(cache=True, nogil=True)
def _score(r, fw, score):  # pragma: no cover - compiled
    """Each frequency's claim to be chosen next, |r| * fw, into ``score``; returns the best."""
    best = -1.0
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            sc = np.sqrt(r[i, j].real * r[i, j].real + r[i, j].imag * r[i, j].imag) * fw[i, j]
            score[i, j] = sc
            if sc > best:
                best = sc
    return best


@njit(cache=True, nogil=True)
def _subtract_shifted(r, sw, coef, u, v):  # pragma: no cover - compiled
    """r[i, j] -= coef * sw[(i - u) % n, (j - v) % n] for the (n, n/2+1) residual ``r``."""
    n, h = r.shape
    for i in range(n):
        row = (i - u) % n
        for j in range(h):
            jj = j - v if j >= v else j - v + n
            r[i, j] -= coef * sw[row, jj]


@njit(cache=True, nogil=True)
def _subtract_shifted_pair(r, sw, coef, u, v, pu, pv):  # pragma: no cover - compiled
    """r[i, j] -= coef * sw[i - u, j - v] + conj(coef) * sw[i - pu, j - pv] (indices mod n): a
    basis function and its conjugate, subtracted as one sum (as OpenCV does)."""
    n, h = r.shape
    cc = np.conj(coef)
    for i in range(n):
        row = (i - u) % n
        row2 = (i - pu) % n
        for j in range(h):
            jj = j - v if j >= v else j - v + n
            jj2 = j - pv if j >= pv else j - pv + n
            r[i, j] -= coef * sw[row, jj] + cc * sw[row2, jj2]


@njit(cache=True, nogil=True)
def _pursuit(residual, spectrum_w, iters, fw, orthogonality_correction, model):  # pragma: no cover - compiled
    """The greedy choice of basis functions for a batch of blocks (compiled; releases Python's lock).

    ``residual`` (B, n, n/2+1) complex: each block's weighted residual spectrum, updated in place;
    ``spectrum_w`` (B, n, n) complex: its weight's spectrum; ``iters`` (B,): basis functions to
    choose; ``fw`` (n, n/2+1): the low-frequency preference; ``model`` (B, n, n) complex, zero on
    entry: the chosen coefficients (the spectrum of the extrapolated window)."""
    nb, n, h = residual.shape
    mid = n // 2
    score = np.empty((n, h))
    for k in range(nb):
        r = residual[k]
        sw = spectrum_w[k]
        g = model[k]
        w00 = sw[0, 0]
        done = 0
        while done < iters[k]:
            best = _score(r, fw, score)
            u = -1
            v = -1
            for i in range(n):  # the first within 0.001 of the best, row by row
                for j in range(h):
                    if abs(score[i, j] - best) < 0.001:
                        u = i
                        v = j
                        break
                if u >= 0:
                    break
            if (v == 0 or v == mid) and u > mid:  # the lower half of the first and middle column: its conjugate
                u_prev = u
                u = n - u
                r[u, v] = np.conj(r[u_prev, v])
            pu = -1
            pv = -1
            if 1 <= u < mid and (v == 0 or v == mid):
                pu = n - u
                pv = v
            elif (u == 0 or u == mid) and 1 <= v < mid:
                pu = u
                pv = n - v
            elif (u >= mid + 1 or 1 <= u < mid) and 1 <= v < mid:
                pu = n - u
                pv = n - v
            coef = orthogonality_correction * r[u, v] / w00
            g[u, v] += n * n * coef
            if pu >= 0:
                g[pu, pv] = np.conj(g[u, v])
                _subtract_shifted_pair(r, sw, coef, u, v, pu, pv)
                done += 2
            else:
                _subtract_shifted(r, sw, coef, u, v)
                done += 1


@njit(cache=True, nogil=True)
def _gather(images, masks, steps, n, min_iter, max_iter, iter_const, f, w, iters):  # pragma: no cover - compiled
    """Each block's window centred in an (n, n) frame: its pixels ``f`` and its weights ``w`` (the
    known mask times rho to the distance from the window's centre), and its number of basis
    functions ``iters`` (from its normalised std: the split test's, else measured here)."""
    for k in range(steps.shape[0]):
        p = int(steps[k, 0])
        y0, y1, x0, x1 = int(steps[k, 1]), int(steps[k, 2]), int(steps[k, 3]), int(steps[k, 4])
        rho, sigma = steps[k, 8], steps[k, 9]
        rows, cols = y1 - y0, x1 - x0
        oy, ox = (n - rows) // 2, (n - cols) // 2
        cy, cx = oy + rows // 2, ox + cols // 2
        for i in range(rows):
            for j in range(cols):
                d = np.sqrt((oy + i + 0.5 - cy) ** 2 + (ox + j + 0.5 - cx) ** 2)
                f[k, oy + i, ox + j] = images[p, y0 + i, x0 + j]
                w[k, oy + i, ox + j] = masks[p, y0 + i, x0 + j] * rho**d
        if sigma == 0:
            sigma = _std(images[p, y0:y1, x0:x1], masks[p, y0:y1, x0:x1])
        if np.isnan(sigma):
            iters[k] = min_iter
        else:
            iters[k] = min(max(int(np.rint(iter_const * sigma)), min_iter), max_iter)


@njit(cache=True, nogil=True)
def _scatter(values, images, masks, steps, n, conc_weighting):  # pragma: no cover - compiled
    """Each block's hole pixels read off its extrapolated window ``values`` (B, n, n); its hole
    pixels then count as known at ``conc_weighting``."""
    for k in range(steps.shape[0]):
        p = int(steps[k, 0])
        y0, y1, x0, x1 = int(steps[k, 1]), int(steps[k, 2]), int(steps[k, 3]), int(steps[k, 4])
        by, bx, size = int(steps[k, 5]), int(steps[k, 6]), int(steps[k, 7])
        oy, ox = (n - (y1 - y0)) // 2, (n - (x1 - x0)) // 2
        for i in range(by, by + size):
            for j in range(bx, bx + size):
                m = masks[p, i, j]
                if m <= 0.5:  # known pixels (weight 1) stay as they are
                    images[p, i, j] = values[k, oy + i - y0, ox + j - x0]
                if m == 0:
                    masks[p, i, j] = conc_weighting


def _extrapolate(images: np.ndarray, masks: np.ndarray, steps: np.ndarray, s: FSRSettings) -> None:
    """Extrapolate a batch of independent blocks in place. ``images`` / ``masks`` (P, H, W): every
    channel's pixels and known mask; ``steps`` (B, 10): per block its channel, window (y0, y1, x0,
    x1), corner (y, x), size, rho and split-test std (:func:`_step_rows`). Each block's window is
    approximated by a sparse Fourier series fitted to its weighted known pixels, chosen greedily
    (:func:`_pursuit`), and its hole pixels are read off the series."""
    n, half = s.fft_size, s.fft_size // 2 + 1
    b = len(steps)
    f = np.zeros((b, n, n))  # (B, n, n): the windows' pixels
    w = np.zeros((b, n, n))  # (B, n, n): their weights
    iters = np.zeros(b, np.int64)
    _gather(images, masks, steps, n, s.min_iter, s.max_iter, s.iter_const, f, w, iters)
    spectra = np.fft.fft2(np.concatenate([w, f * w]))  # (2B, n, n): both transforms in one call
    spectrum_w = spectra[:b]  # (B, n, n) complex: the weight's spectrum
    residual = np.ascontiguousarray(spectra[b:, :, :half])  # (B, n, n/2+1): the weighted residual's spectrum
    model = np.zeros((b, n, n), np.complex128)  # (B, n, n): the chosen coefficients
    _pursuit(residual, spectrum_w, iters, _frequency_weighting(n), float(s.orthogonality_correction), model)
    _scatter(np.ascontiguousarray(np.fft.ifft2(model).real), images, masks, steps, n, float(s.conc_weighting))


def _step_rows(index: int, wave: list[_Block]) -> np.ndarray:
    """(len(wave), 10): channel ``index``'s blocks of one wave as :func:`_extrapolate` reads them."""
    return np.array([(index, *b.win, b.y, b.x, b.size, b.rho, b.sigma) for b in wave], np.float64).reshape(-1, 10)


def fsr_inpaint(images: list[np.ndarray], knowns: list[np.ndarray], settings: FSRSettings = FSR_FAST) -> list[np.ndarray]:
    """FSR on several pictures at once: ``images[i]`` (H, W) or (H, W, 3) uint8 (colour in OpenCV's
    BGR order, luma and chroma reconstructed apart as OpenCV does), ``knowns[i]`` (H, W) bool (True:
    a known pixel) -> the filled pictures, uint8, in the same layout. Every block of every channel
    of every picture that the reconstruction order lets run together is extrapolated in one batch.

    The same result as OpenCV's ``xphoto.inpaint(image, known * 255, out, INPAINT_FSR_FAST)`` (with
    ``settings=FSR_BEST``, ``INPAINT_FSR_BEST``); like it, a block cut off by the right or bottom
    edge is left unfilled (:func:`refine_by_align.fill.fsr_fill` pads the picture to whole blocks)."""
    if len(images) != len(knowns):
        raise ValueError(f"fsr_inpaint: {len(images)} images and {len(knowns)} masks")
    # 1. each picture's channels (luma and chroma apart, the hole zeroed as OpenCV does), each with
    #    the order its blocks are taken in
    channels: list[list[_Channel]] = []
    for img, known in zip(images, knowns):
        img = np.asarray(img)
        known = np.asarray(known, bool)
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.shape[:2] != known.shape or (img.ndim == 3 and img.shape[2] != 3):
            raise ValueError(f"fsr_inpaint wants (H, W) or (H, W, 3) uint8 images with (H, W) masks, got {img.shape} {img.dtype} and {known.shape}")
        if img.ndim == 2:
            channels.append([_Channel(img, known, True, settings)])
        else:
            ycrcb = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2YCrCb) * known[..., None].astype(np.uint8)
            channels.append([_Channel(ycrcb[..., i], known, i == 0, settings) for i in range(3)])
    # 2. the waves, step by step: each step's blocks of every channel extrapolated as one batch
    flat = [ch for group in channels for ch in group]
    h = max((ch.sampled.shape[0] for ch in flat), default=0)
    w = max((ch.sampled.shape[1] for ch in flat), default=0)
    stack = np.zeros((len(flat), h, w))  # (P, H, W): every channel's pixels, filled as the steps go
    known = np.zeros((len(flat), h, w))  # (P, H, W): 1 known, 0 hole, conc_weighting once filled
    for i, ch in enumerate(flat):
        stack[i, : ch.sampled.shape[0], : ch.sampled.shape[1]] = ch.sampled
        known[i, : ch.mask.shape[0], : ch.mask.shape[1]] = ch.mask
    for step in range(max((len(ch.waves) for ch in flat), default=0)):
        rows = [_step_rows(i, ch.waves[step]) for i, ch in enumerate(flat) if step < len(ch.waves)]
        _extrapolate(stack, known, np.concatenate(rows), settings)
    # 3. back to 8 bits (and from YCrCb)
    out = []
    k = 0
    for img, group in zip(images, channels):
        filled = []
        for ch in group:
            filled.append(np.clip(np.rint(stack[k, : ch.sampled.shape[0], : ch.sampled.shape[1]]), 0, 255).astype(np.uint8))
            k += 1
        out.append(filled[0] if len(filled) == 1 else cv2.cvtColor(np.dstack(filled), cv2.COLOR_YCrCb2BGR))
    return out


def warm_up() -> None:
    """Load (or, the first time on a machine, compile) the compiled parts by filling a tiny hole:
    numba's start costs about 0.6 s, compiling about 4 s (:func:`refine_by_align.fill.warm_up_fills`
    does this in a background thread when a pipeline is made)."""
    img = np.full((32, 32), 128, np.uint8)
    known = np.ones((32, 32), bool)
    known[12:20, 12:20] = False
    fsr_inpaint([img], [known])
