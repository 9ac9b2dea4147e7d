"""How the hole of the masked image is filled before the U-Net sees it.

The paper (like SD inpainting) zeroes the hole. The small embedded model instead sees the hole
pre-filled by a classical fill, so that its prediction is a correction over it rather than a colour
guess from nothing: trained on this CPU's budget, a zero-filled model lost to that very fill
(MODEL_CARD.md). It was trained on OpenCV's Telea inpainting (``telea``) and runs on the harmonic
fill (``harmonic``, :func:`harmonic_fill`: Laplace's equation in the hole, the smoothest
continuation of the surroundings), which is the better prefill for the same weights (measured in
MODEL_CARD.md).

``warp`` (issue 13): where the dense alignment's warp of the reference is trusted, the hole is
pre-filled with the colour-matched warped reference, elsewhere by Telea; the model then sees the
trust map as one more input channel (``ModelConfig.warp_channel``) and corrects that prefill, and
its correction is added to the warp composite at full resolution (:func:`residual_patch` with
``base``), so the warp's full-resolution detail is kept.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .config import CLASSICAL_FILLS, HOLE_FILLS  # the fills' names: one list for this module and the config's checks

__all__ = ["CLASSICAL_FILLS", "HOLE_FILLS", "classical_fill", "fill_hole", "biharmonic_fill", "fsr_fill", "warm_up_fills", "harmonic_fill", "mixed_fill", "mixed_fill_weights", "local_mixed_fill", "local_mixed_weights", "harmonic_interpolate", "spline_interpolate", "residual_patch", "poisson_fill", "warp_composite", "warp_at"]

TELEA_RADIUS = 3  # px, at the U-Net's crop resolution
FULL_TELEA_RADIUS = 5.0  # px, at the image's own resolution (as the `telea` baseline)


def fill_hole(
    images: torch.Tensor, masks: torch.Tensor, method: str = "zero", warp: torch.Tensor | None = None, trust: torch.Tensor | None = None
) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [0, 1], ``masks`` (B, 1, H, W) (> 0.5 = hole) -> (B, 3, H, W)
    in [0, 1] with the hole zeroed (``zero``) or filled by a classical fill (``telea``,
    ``harmonic``, ``biharmonic``, ``fsr``, ``mixed``, ``mixed-local``: :func:`classical_fill`); ``warp``: Telea,
    then ``warp`` ((B, 3, H, W) in [0, 1], the warped reference) on the hole pixels where
    ``trust`` ((B, 1, H, W), > 0.5 = trusted) says so (no warp or trust given: Telea alone)."""
    if method not in HOLE_FILLS:
        raise ValueError(f"unknown hole fill '{method}' (choose {', '.join(HOLE_FILLS)})")
    if images.ndim != 4 or images.shape[1] != 3 or masks.shape[-2:] != images.shape[-2:] or masks.shape[1] != 1:
        raise ValueError(f"fill_hole wants (B, 3, H, W) images and (B, 1, H, W) masks, got {tuple(images.shape)}, {tuple(masks.shape)}")
    if method == "zero":
        return images * (1.0 - masks.to(images.dtype))
    if method == "warp":
        filled = fill_hole(images, masks, "telea")
        if warp is None or trust is None:
            return filled
        if warp.shape != images.shape or trust.shape != masks.shape:
            raise ValueError(f"fill_hole warp {tuple(warp.shape)} / trust {tuple(trust.shape)} do not match images {tuple(images.shape)} / masks {tuple(masks.shape)}")
        return torch.where((trust > 0.5) & (masks > 0.5), warp.to(images.dtype), filled)
    hole = (masks > 0.5).squeeze(1).cpu().numpy().astype(np.uint8)  # (B, H, W)
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        out[i] = classical_fill(arr[i], hole[i].astype(bool), method, TELEA_RADIUS) if hole[i].any() else arr[i]
    # divided on the CPU, then moved: CUDA divides by a scalar as a multiplication by its inverse
    # (1 ulp off for about half the values), and the training data's workers fill on the CPU
    filled = (torch.from_numpy(out).permute(0, 3, 1, 2).to(images.dtype) / 255.0).to(images.device)
    keep = masks <= 0.5
    return torch.where(keep, images, filled)  # pixels outside the hole stay exactly as given


def classical_fill(image: np.ndarray, mask: np.ndarray, method: str = "telea", radius: float = FULL_TELEA_RADIUS) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with its hole ``mask`` (H, W) bool filled with no model: OpenCV's
    Telea inpainting (``telea``, ``radius`` px), :func:`harmonic_fill` (``harmonic``),
    :func:`biharmonic_fill` (``biharmonic``), :func:`fsr_fill` (``fsr``), :func:`mixed_fill`
    (``mixed``: FSR and biharmonic, weighed by how well each predicts a ring of known pixels) or
    :func:`local_mixed_fill` (``mixed-local``: FSR, biharmonic and harmonic, weighed pixel by pixel
    by how well each predicts the ring near that pixel)."""
    if method == "telea":
        return cv2.inpaint(np.ascontiguousarray(image), np.asarray(mask, bool).astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
    if method == "harmonic":
        return harmonic_fill(image, mask)
    if method == "biharmonic":
        return biharmonic_fill(image, mask)
    if method == "fsr":
        return fsr_fill(image, mask)
    if method == "mixed":
        return mixed_fill(image, mask)
    if method == "mixed-local":
        return local_mixed_fill(image, mask)
    raise ValueError(f"unknown classical fill '{method}' (choose {' or '.join(CLASSICAL_FILLS)})")


def _fill_inputs(name: str, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fill's inputs as arrays, checked: an (H, W, C) uint8 image and an (H, W) mask."""
    img = np.asarray(image)
    m = np.asarray(mask, bool)
    if img.ndim != 3 or img.shape[:2] != m.shape:
        raise ValueError(f"{name} wants an (H, W, C) image and an (H, W) mask, got {img.shape} and {m.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} wants an 8-bit image, got {img.dtype}")
    return img, m


def _hole_window(m: np.ndarray, margin: int, grid: int = 1) -> tuple[slice, slice]:
    """The bounding box of the (non-empty) hole ``m`` grown by ``margin`` px, clipped to the
    picture, its top-left corner moved back onto a grid of ``grid`` px from the picture's corner."""
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    y0, x0 = max(ys[0] - margin, 0), max(xs[0] - margin, 0)
    return slice(y0 - y0 % grid, ys[-1] + margin + 1), slice(x0 - x0 % grid, xs[-1] + margin + 1)


def _known_means(values: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (H, W, C) scaled down by area to ``size`` (width, height) from the pixels outside
    the hole ``m`` alone: (each scaled pixel's mean of its known pixels, (h', w', C) float32, 0 where
    it has none; its known share, (h', w') float32 in [0, 1]). The coarse solves of a large hole
    start from it, so the hole's own content never leaks into them."""
    known = (~m).astype(np.float32)
    share = cv2.resize(known, size, interpolation=cv2.INTER_AREA)
    weighted = values.astype(np.float32) * known[..., None]
    # (OpenCV resizes at most 4 channels at once, e.g. the flow carry's six: in groups of 4, each
    # channel scaled on its own either way)
    total = np.concatenate(
        [cv2.resize(np.ascontiguousarray(weighted[..., c : c + 4]), size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1) for c in range(0, weighted.shape[2], 4)],
        axis=2,
    )
    means = np.where(share[..., None] > 0, total / np.maximum(share, 1e-6)[..., None], 0.0).astype(np.float32)
    return means, share


_WARMING: list = []  # the warm-up thread, started once per process


def warm_up_fills() -> None:
    """Get the compiled ECC pass (:mod:`refine_by_align.ecc`, the alignment's) and FSR
    (:mod:`refine_by_align.fsr`) ready in a background thread, so that the first alignment and fill
    of a process do not wait for numba to start (about 0.6 s; compiling, the first
    time on a machine, about 4 s). Returns at once; does nothing the second time, or where numba is
    missing (a failure shows again, with its message, where the fill runs). The thread is not a
    daemon: a process that ends while it runs (an input refused just after the model loaded) waits
    for it. A daemon thread still inside numba's compiled code when the interpreter finalises is
    stopped by a forced unwind that numba's C++ swallows, and the process aborted (exit 134,
    "terminate called without an active exception": 2 of 6 runs that loaded the pipeline and
    exited at once)."""
    if _WARMING:
        return
    import threading

    def run() -> None:
        try:
            from .ecc import warm_up as warm_up_ecc

            warm_up_ecc()  # (the alignment's ECC pass, compiled alike: its first call comes sooner)
        except Exception:  # noqa: BLE001
            pass
        try:
            from .fsr import warm_up

            warm_up()
        except Exception:  # noqa: BLE001
            return

    _WARMING.append(threading.Thread(target=run, name="fsr-warm-up", daemon=False))
    _WARMING[0].start()


def _compiled_fsr():
    """:mod:`refine_by_align.fsr` where it can be used, else None (numba missing, or no writable
    place for its cache: :func:`fsr_fill` then runs OpenCV's FSR)."""
    import importlib

    try:
        return importlib.import_module(".fsr", __package__)
    except (ImportError, RuntimeError, OSError):
        return None


def fsr_backend() -> str:
    """Which FSR :func:`fsr_fill` runs here: "numba X.Y" (:mod:`refine_by_align.fsr`) or
    "opencv" (``cv2.xphoto``, where numba is missing or cannot cache); the speed benchmark records it."""
    if _compiled_fsr() is None:
        return "opencv"
    import numba

    return f"numba {numba.__version__}"


FSR_QUALITIES = ("fast", "best")
FSR_BLOCK = 16  # px, the block size of OpenCV's FSR


def fsr_fill(image: np.ndarray, mask: np.ndarray, quality: str = "fast") -> np.ndarray:
    """The hole filled by frequency-selective reconstruction (FSR; Genser, Seiler, Kaup et al.,
    OpenCV contrib's ``xphoto.inpaint``): block by block, the known pixels around the hole are
    approximated by a sparse sum of 2-D Fourier basis functions, chosen one at a time where they
    lower the weighted error most, and the sum is read off inside the hole. Unlike the harmonic fill
    it continues edges and periodic texture across the hole, not only its mean colour; on the
    project's four validation case sets it is 0.5-1.0 dB closer to the truth than the harmonic fill
    (MODEL_CARD.md, "Mixed fill"). ``quality``: "fast" (FSR_FAST) or "best" (FSR_BEST, 10-30x
    slower).

    The reconstruction is :func:`refine_by_align.fsr.fsr_inpaint`'s: OpenCV's pixels, with the
    blocks that may run together batched and compiled (0.07-0.21 s for holes of 1,300-6,800 pixels
    where OpenCV takes 0.3-0.9 s); where numba is not installed, OpenCV's own.

    ``image`` (H, W, C) uint8 (C = 1 or 3), ``mask`` (H, W) bool -> (H, W, C) uint8, the pixels
    outside the mask unchanged. A hole with no pixel around it is returned as given."""
    img, m = _fill_inputs("fsr_fill", image, mask)
    if img.shape[2] not in (1, 3):
        raise ValueError(f"fsr_fill wants an (H, W, 1 or 3) image, got {img.shape}")
    if quality not in FSR_QUALITIES:
        raise ValueError(f"unknown FSR quality '{quality}' (choose {' or '.join(FSR_QUALITIES)})")
    compiled = _compiled_fsr()
    if compiled is None and not hasattr(cv2, "xphoto"):
        raise RuntimeError(
            "the 'fsr' fill needs numba (pip install numba) or OpenCV's contrib modules (cv2.xphoto): pip uninstall "
            "opencv-python-headless opencv-contrib-python-headless, then pip install opencv-contrib-python-headless"
        )
    n = int(m.sum())
    if n == 0 or n == m.size:
        return img.copy()
    # only the hole's neighbourhood takes part. FSR works on a grid of 16 px blocks from the
    # picture's corner, each reconstructed from the blocks around it: a window that starts on that
    # grid and reaches 3 blocks past the hole gives the same result as the whole picture (tested);
    # a window off the grid does not (the result depends on where the blocks fall, by up to 3 dB on
    # one case)
    window = _hole_window(m, 3 * FSR_BLOCK, grid=FSR_BLOCK)
    sub, sub_m = img[window], m[window]
    # FSR leaves the pixels of a block cut off by the picture's right or bottom edge unfilled (3
    # channels: a bright green, its YCrCb zero; 1 channel: the hole's own values): a window that
    # ends there is padded to whole blocks with unknown pixels, filled and cut back
    pad_y = -sub.shape[0] % FSR_BLOCK if window[0].stop >= m.shape[0] else 0
    pad_x = -sub.shape[1] % FSR_BLOCK if window[1].stop >= m.shape[1] else 0
    padded = cv2.copyMakeBorder(np.ascontiguousarray(sub), 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE).reshape(sub.shape[0] + pad_y, sub.shape[1] + pad_x, -1)
    padded = padded[..., 0] if padded.shape[2] == 1 else padded
    known = np.zeros(padded.shape[:2], bool)
    known[: sub.shape[0], : sub.shape[1]] = ~sub_m
    if compiled is not None:
        filled = compiled.fsr_inpaint([padded], [known], compiled.FSR_FAST if quality == "fast" else compiled.FSR_BEST)[0]
    else:
        filled = np.zeros_like(padded)
        flag = cv2.xphoto.INPAINT_FSR_FAST if quality == "fast" else cv2.xphoto.INPAINT_FSR_BEST
        cv2.xphoto.inpaint(np.ascontiguousarray(padded), known.astype(np.uint8) * 255, filled, flag)
    out = img.copy()
    sub_out = out[window]  # a view
    sub_out[sub_m] = filled.reshape(padded.shape[0], padded.shape[1], -1)[: sub.shape[0], : sub.shape[1]][sub_m]
    return out


MIXED_RING = 3  # px: mixed_fill grows the hole by this much to check each fill on the ring it hides
MIXED_FILLS = ("fsr", "biharmonic")  # the fills mixed_fill weighs


def biharmonic_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The hole filled by the biharmonic equation (scikit-image's ``inpaint_biharmonic``): the
    smoothest continuation that also carries the surroundings' gradients into the hole, where the
    harmonic fill (:func:`harmonic_fill`) carries their values only. Solved on the hole's bounding
    box plus 4 px (the equation's stencil reaches 2 px); scikit-image clips the result to the range
    of the known values in that box.

    ``image`` (H, W, C) uint8, ``mask`` (H, W) bool -> (H, W, C) uint8, the pixels outside the mask
    unchanged. A hole with no pixel around it is returned as given."""
    from skimage.restoration import inpaint_biharmonic

    img, m = _fill_inputs("biharmonic_fill", image, mask)
    n = int(m.sum())
    if n == 0 or n == m.size:
        return img.copy()
    window = _hole_window(m, 4)
    sub_m = m[window]
    filled = inpaint_biharmonic(img[window].astype(np.float64) / 255.0, sub_m, channel_axis=-1)
    out = img.copy()
    sub_out = out[window]  # a view
    sub_out[sub_m] = np.clip(np.rint(filled[sub_m] * 255.0), 0, 255).astype(np.uint8)
    return out


#: mixed_fill solves a larger hole on the picture scaled down until the hole has at most this many
#: pixels (about 2 s on 2 cores): FSR takes about 0.1 ms a hole pixel and the biharmonic solve grows
#: faster than the hole (a 500,000-pixel hole would take minutes at full size).
MIXED_MAX_HOLE = 20_000


def mixed_fill(image: np.ndarray, mask: np.ndarray, ring: int = MIXED_RING, max_hole: int = MIXED_MAX_HOLE) -> np.ndarray:
    """The FSR fill and the biharmonic fill mixed by how well each does on this picture.

    FSR (:func:`fsr_fill`) continues edges and texture and is the closer fill on average, but where
    its sparse Fourier model is wrong it fails worse than a smooth fill (by up to 5 dB on one
    validation case); the biharmonic fill (:func:`biharmonic_fill`) is smooth and rarely far off.
    Which is closer varies from case to case, so each is checked on pixels it did not see: the hole
    is grown by ``ring`` px and both fill the grown hole; their mean squared errors on that ring of
    known pixels weigh the two fills of the hole itself, each in inverse proportion to its error
    (inverse-variance weighting, :func:`mixed_fill_weights`). On 96 validation cases (four sets) the
    mix is 1.3 dB closer to the truth than the harmonic fill, 0.6 dB closer than FSR alone and 0.35
    dB closer than a harmonic / FSR mix (MODEL_CARD.md, "Mixed fill").

    ``image`` (H, W, C) uint8, ``mask`` (H, W) bool -> (H, W, C) uint8, the pixels outside the mask
    unchanged. The four fills (two on the grown hole, two on the hole) run side by side on
    :func:`~refine_by_align.threads.worker_threads` threads (OpenCV's FSR and SciPy's solver release
    Python's lock; scikit-image builds the biharmonic system in Python, which holds it).
    A hole of more than ``max_hole`` pixels is filled on the picture scaled down by the smallest
    integer factor that brings it under that (a scaled pixel is the mean of its known pixels, and
    hole where they are under half of it; the harmonic fill where that leaves nothing known), and
    the result scaled back up (bicubic) inside the hole."""
    img, m = _fill_inputs("mixed_fill", image, mask)
    scaled = _scaled_down_fill(img, m, max_hole, lambda small, hole, k: mixed_fill(small, hole, ring, max_hole))
    if scaled is not None:
        return scaled
    weights, fills = _mixed(img, m, ring, fill=True)
    acc = np.zeros((int(m.sum()), img.shape[2]), np.float32)
    for name, w in weights.items():
        acc += w * fills[name][m].astype(np.float32)
    out = img.copy()
    out[m] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return out


def _scaled_down_fill(img: np.ndarray, m: np.ndarray, max_hole: int, fill_small) -> np.ndarray | None:
    """The mixes' large-hole path: None where the hole has at most ``max_hole`` pixels (or is the
    whole picture); else the picture scaled down by the smallest integer factor k that brings the
    hole under that (a scaled pixel is the mean of its known pixels, and hole where they are under
    half of it), filled there by ``fill_small(small, small_hole, k)``, and scaled back up (bicubic)
    inside the hole; the harmonic fill where the scaling leaves nothing known."""
    n = int(m.sum())
    if not max_hole < n < m.size:
        return None
    k = int(np.ceil(np.sqrt(n / float(max_hole))))
    h, w = m.shape
    size = (max(1, -(-w // k)), max(1, -(-h // k)))  # (width, height), rounded up
    means, share = _known_means(img, m, size)
    small_hole = share < 0.5
    if small_hole.all():  # the known pixels are too thin to survive the scaling
        return harmonic_fill(img, m)
    small = np.clip(np.rint(means), 0, 255).astype(np.uint8)
    up = cv2.resize(fill_small(small, small_hole, k), (w, h), interpolation=cv2.INTER_CUBIC).reshape(img.shape)
    out = img.copy()
    out[m] = up[m]
    return out


def _checked_ring(m: np.ndarray, ring: int, name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """The mixes' check: (the hole grown by ``ring`` px, the ring of known pixels it adds, whether
    that ring has a pixel and the grown hole leaves one known)."""
    if ring < 1:
        raise ValueError(f"{name}'s ring must be at least 1 px, got {ring}")
    grown = cv2.dilate(m.astype(np.uint8), _disk_kernel(int(ring))) > 0
    band = grown & ~m
    return grown, band, bool(band.any()) and not grown.all()


def mixed_fill_weights(image: np.ndarray, mask: np.ndarray, ring: int = MIXED_RING) -> dict[str, float]:
    """The weight of each fill of :data:`MIXED_FILLS` that :func:`mixed_fill` uses on this picture
    and hole, as given (mixed_fill weighs a hole of over ``max_hole`` pixels on its scaled-down
    picture instead); they sum to 1, each in inverse proportion to its mean squared error on the
    ring of ``ring`` px of known pixels around ``mask`` when it fills the mask grown by that ring. Equal weights when the ring is empty (no
    known pixels near the hole); all of it to a fill that is exact on the ring."""
    return _mixed(np.asarray(image), np.asarray(mask, bool), ring, fill=False)[0]


def _mixed(img: np.ndarray, m: np.ndarray, ring: int, fill: bool) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(the weights of :func:`mixed_fill_weights`, each fill of the hole itself when ``fill``)."""
    from .threads import side_by_side

    img, m = _fill_inputs("mixed_fill", img, m)
    grown, band, checked = _checked_ring(m, ring, "mixed_fill")
    jobs = [(name, grown) for name in MIXED_FILLS if checked] + [(name, m) for name in MIXED_FILLS if fill]
    done = side_by_side(lambda job: classical_fill(img, job[1], job[0]), jobs)
    if not checked:
        weights = {name: 1.0 / len(MIXED_FILLS) for name in MIXED_FILLS}
    else:
        known = img[band].astype(np.float64)
        err = np.array([((f[band] - known) ** 2).mean() for f in done[: len(MIXED_FILLS)]])
        inv = (err == 0).astype(np.float64) if (err == 0).any() else 1.0 / err
        weights = {name: float(v) for name, v in zip(MIXED_FILLS, inv / inv.sum())}
    return weights, dict(zip(MIXED_FILLS, done[len(jobs) - len(MIXED_FILLS) :])) if fill else {}


LOCAL_FILLS = ("fsr", "biharmonic", "harmonic")  # the fills local_mixed_fill weighs, pixel by pixel
_SINGLE_FILLS = tuple(name for name in CLASSICAL_FILLS if name not in ("mixed", "mixed-local"))  # what a mix may mix
LOCAL_SIGMA = 8.0  # px: the Gaussian over which local_mixed_fill gathers each fill's ring errors
#: local_mixed_fill's pull toward each fill's error over the whole ring, in units of the
#: Gaussian-weighted ring share: where little ring lies within a few sigma, the whole ring's error counts
LOCAL_PRIOR = 0.01
LOCAL_POWER = 2  # local_mixed_fill weighs each fill by its local mean squared error to this power, inverted


def local_mixed_fill(
    image: np.ndarray,
    mask: np.ndarray,
    ring: int = MIXED_RING,
    sigma: float = LOCAL_SIGMA,
    prior: float = LOCAL_PRIOR,
    max_hole: int = MIXED_MAX_HOLE,
    fills: tuple[str, ...] = LOCAL_FILLS,
) -> np.ndarray:
    """The FSR, biharmonic and harmonic fills mixed pixel by pixel, each where it does well nearby.

    :func:`mixed_fill` weighs its two fills once for the whole hole, by their errors on the whole
    ring around it; but a hole over an edge on one side and a smooth patch on the other wants FSR
    on the first and a smooth fill on the second. Here each fill of :data:`LOCAL_FILLS` fills the
    hole grown by ``ring`` px, as there, and its squared error on that ring of known pixels is
    gathered around every hole pixel by a Gaussian of ``sigma`` px, with the whole ring's mean
    error counted as ``prior`` of ring share (so a pixel far from the ring falls back to the whole
    ring's errors); the fills of the hole itself are weighed by the inverse square of these local
    errors (:func:`local_mixed_weights`). On the 64 multiview cases of the seven validation sets
    (the fills alone; no warp, no model) the mix is 0.13-0.14 dB closer to the truth than
    :func:`mixed_fill` on both the deciding and the checking sets (MODEL_CARD.md, "A fill mixed
    pixel by pixel"); the harmonic fill costs a few per cent more time. ``fills``: the classical
    fills mixed (any of :data:`CLASSICAL_FILLS` but the mixes; at least two).

    ``image`` (H, W, C) uint8, ``mask`` (H, W) bool -> (H, W, C) uint8, the pixels outside the mask
    unchanged. A hole of more than ``max_hole`` pixels is filled on the picture scaled down, as
    :func:`mixed_fill` does."""
    img, m = _fill_inputs("local_mixed_fill", image, mask)
    scaled = _scaled_down_fill(img, m, max_hole, lambda small, hole, k: local_mixed_fill(small, hole, ring, sigma / k, prior, max_hole, fills))
    if scaled is not None:
        return scaled
    n = int(m.sum())
    weights, filled = _local_mixed(img, m, ring, sigma, prior, fills, fill=True)  # (n, F), F x (H, W, C)
    acc = np.zeros((n, img.shape[2]), np.float64)
    for j, f in enumerate(filled):
        acc += weights[:, j : j + 1] * f[m].astype(np.float64)
    out = img.copy()
    out[m] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return out


def local_mixed_weights(
    image: np.ndarray, mask: np.ndarray, ring: int = MIXED_RING, sigma: float = LOCAL_SIGMA, prior: float = LOCAL_PRIOR, fills: tuple[str, ...] = LOCAL_FILLS
) -> np.ndarray:
    """The weight of each fill of ``fills`` at each hole pixel, as :func:`local_mixed_fill`
    uses them on this picture and hole (it weighs a hole of over ``max_hole`` pixels on its
    scaled-down picture instead): (n, len(fills)) float64 in the order of ``mask``'s True pixels
    (row-major), each row summing to 1. Equal weights where the ring is empty (no known pixel near
    the hole)."""
    img, m = _fill_inputs("local_mixed_weights", image, mask)
    return _local_mixed(img, m, ring, sigma, prior, fills, fill=False)[0]


def _local_mixed(img: np.ndarray, m: np.ndarray, ring: int, sigma: float, prior: float, fills: tuple[str, ...], fill: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the weights of :func:`local_mixed_weights`, each fill of the hole itself when ``fill``)."""
    from .threads import side_by_side

    grown, band, checked = _checked_ring(m, ring, "local_mixed_fill")
    if not sigma > 0 or not prior > 0:
        raise ValueError(f"local_mixed_fill's sigma and prior must be positive, got {sigma} and {prior}")
    fills = tuple(fills)
    if len(fills) < 2 or len(set(fills)) < len(fills) or not set(fills) <= set(_SINGLE_FILLS):
        raise ValueError(f"local_mixed_fill mixes two or more distinct classical fills ({', '.join(_SINGLE_FILLS)}), got {fills}")
    n, k = int(m.sum()), len(fills)
    if n == 0:
        return np.zeros((0, k)), [img.copy() for _ in fills] if fill else []
    holes = ([grown] if checked else []) + ([m] if fill else [])
    # the FSR runs first: they take longest, and the pool's two threads then share the rest
    jobs = sorted(((name, hole) for name in fills for hole in holes), key=lambda job: job[0] != "fsr")
    done = dict(zip([(name, hole is m) for name, hole in jobs], side_by_side(lambda job: classical_fill(img, job[1], job[0]), jobs)))
    filled = [done[(name, True)] for name in fills] if fill else []
    if not checked:
        return np.full((n, k), 1.0 / k), filled
    # the ring errors gathered on the window around the grown hole: the Gaussian reaches 4 sigma,
    # beyond which the band is zero, so the window's edge changes nothing
    reach = int(np.ceil(4 * sigma)) + 1
    window = _hole_window(grown, reach)
    sub_band, sub_m = band[window], m[window]
    density = cv2.GaussianBlur(sub_band.astype(np.float64), (0, 0), sigma)[sub_m]  # (n,) the ring's Gaussian share
    known = img[window].astype(np.float64)
    inv = np.empty((n, k))
    for j, name in enumerate(fills):
        err = ((done[(name, False)][window].astype(np.float64) - known) ** 2).mean(axis=-1) * sub_band  # (h, w) squared error on the ring
        whole = float(err.sum() / sub_band.sum())  # the mean over the whole ring
        local = (cv2.GaussianBlur(err, (0, 0), sigma)[sub_m] + prior * whole) / (density + prior)
        inv[:, j] = 1.0 / np.maximum(local, 1e-6) ** LOCAL_POWER
    return inv / inv.sum(axis=1, keepdims=True), filled


#: Holes up to this many pixels are solved exactly (one sparse LU); larger ones coarse-to-fine.
HARMONIC_DIRECT_MAX = 150_000


def harmonic_fill(image: np.ndarray, mask: np.ndarray, max_direct: int = HARMONIC_DIRECT_MAX) -> np.ndarray:
    """The hole filled by the smoothest continuation of its surroundings: the solution of Laplace's
    equation inside ``mask`` with the image's pixels around it as boundary values (each hole pixel
    the mean of its four neighbours; at the picture's edge only the neighbours inside it count).

    ``image`` (H, W, C) uint8, ``mask`` (H, W) bool -> (H, W, C) uint8, the pixels outside the mask
    unchanged. Telea's fast marching propagates the rim's values along straight rays and leaves
    streaks across a large hole; the harmonic fill is the interpolation with least squared
    gradient, and on masks over real object detail it is the closer guess on average (MODEL_CARD.md
    measures both). A hole of up to ``max_direct`` pixels is one sparse LU solve (SciPy) for all
    channels (0.3 s at 45,000 pixels on 2 CPU cores); a larger one, whose LU would grow faster than
    the hole, is solved on the picture at half size (recursively) and the upsampled solution
    smoothed by Jacobi sweeps at full size: within a grey level of the exact solution on average
    (a few at most where the surroundings are sharp), about 0.8 s for a 500,000-pixel hole (the
    exact solve: 4-5 s) and 3-4 s for a 2-megapixel one (Telea: 5-6 s). A hole with no pixel
    around it (the whole picture) is returned as given."""
    img, m = _fill_inputs("harmonic_fill", image, mask)
    n = int(m.sum())
    if n == 0 or n == m.size:
        return img.copy()
    # only the hole and the pixels beside it take part: solve on its bounding box plus one pixel
    # (plus four for the coarse-to-fine path, so the half-size picture keeps known pixels around it)
    window = _hole_window(m, 1 if n <= max_direct else 4)
    sub_img, sub_m = img[window], m[window]
    values = _harmonic_direct(sub_img, sub_m) if n <= max_direct else _harmonic_coarse_to_fine(sub_img, sub_m, max_direct)
    out = img.copy()
    sub_out = out[window]  # a view
    sub_out[sub_m] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


#: :func:`harmonic_interpolate` solves holes up to this many pixels at full size, larger ones scaled down.
INTERPOLATE_DIRECT_MAX = 40_000


def harmonic_interpolate(values: np.ndarray, mask: np.ndarray, max_direct: int = INTERPOLATE_DIRECT_MAX, sweeps: int = 40) -> np.ndarray:
    """A smooth quantity (a displacement field, not a picture: any sign, no rounding) carried into a
    hole: ``values`` (H, W, C) float, ``mask`` (H, W) bool -> (H, W, C) float32 whose hole pixels
    solve Laplace's equation with the values around the hole as boundary (as :func:`harmonic_fill`),
    the other pixels unchanged. A hole of more than ``max_direct`` pixels is solved on the field
    scaled down by sqrt(max_direct / n) (a pixel of the small field is hole where under half of
    its pixels are known, else the mean of its known ones), scaled back up and smoothed by
    ``sweeps`` Jacobi sweeps at full size: the solution is smooth, so a coarse solve loses little
    and keeps the cost bounded."""
    v = np.asarray(values, np.float32)
    m = np.asarray(mask, bool)
    if v.ndim != 3 or v.shape[:2] != m.shape:
        raise ValueError(f"harmonic_interpolate wants (H, W, C) values and an (H, W) mask, got {v.shape} and {m.shape}")
    n = int(m.sum())
    out = v.copy()
    if n == 0 or n == m.size:
        return out
    h, w, c = v.shape
    if n <= max_direct:
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        window = (slice(max(ys[0] - 1, 0), ys[-1] + 2), slice(max(xs[0] - 1, 0), xs[-1] + 2))
        sub = out[window]  # a view
        sub[m[window]] = _harmonic_direct(v[window], m[window]).astype(np.float32)
        return out
    s = float(np.sqrt(max_direct / n))
    size = (max(2, round(w * s)), max(2, round(h * s)))
    means, weight = _known_means(v, m, size)
    small_hole = weight < 0.5 if (weight >= 0.5).any() else weight <= 0
    small = np.where(small_hole[..., None], np.float32(0.0), means)
    solved = harmonic_interpolate(small, small_hole, max(max_direct, int(small_hole.sum())))  # one direct solve
    up = cv2.resize(solved, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c)
    out[m] = up[m]
    _jacobi_sweeps(out, m, sweeps)  # the upsampling's error at the hole's rim, where the coarse solve sees blocks
    return out


#: :func:`spline_interpolate`'s defaults: how many known pixels the spline passes near (a regular
#: lattice over them) and its smoothing (on squared-pixel kernel values; chosen in MODEL_CARD.md,
#: "Spline-carried flow and ECC polish").
SPLINE_POINTS = 400
SPLINE_SMOOTHING = 1000.0


#: the spacing (px) of the lattice :func:`spline_interpolate` evaluates the spline on before
#: resampling it to every pixel of the hole (1: at every pixel)
SPLINE_EVAL_STEP = 4


def spline_interpolate(
    values: np.ndarray, mask: np.ndarray, points: int = SPLINE_POINTS, smoothing: float = SPLINE_SMOOTHING, eval_step: int = SPLINE_EVAL_STEP
) -> np.ndarray:
    """A smooth quantity carried into a hole by a smoothing thin-plate spline: the same contract as
    :func:`harmonic_interpolate` (``values`` (H, W, C) float, ``mask`` (H, W) bool -> (H, W, C)
    float32, the known pixels unchanged). The spline is fitted on about ``points`` known pixels on
    a regular lattice (SciPy's ``RBFInterpolator``, kernel ``thin_plate_spline``, ``smoothing``)
    and evaluated on an ``eval_step``-px lattice over the hole, then resampled to its pixels by an
    interpolating bicubic spline (within about 0.001 px of evaluating it at every pixel, at a
    fraction of the cost; 1: at every pixel). Unlike the harmonic solution, which only averages the
    hole's rim, the spline continues the field's curvature into the hole, and its smoothing
    averages out a noisy estimate (an optical flow) around it: a bent object's residual field is
    carried to within a few hundredths of a pixel when the values around the hole are exact, where
    the harmonic solution leaves about a quarter of a pixel (MODEL_CARD.md). Too few known pixels
    (under 16): the harmonic solution."""
    from scipy.interpolate import RBFInterpolator, RectBivariateSpline

    v = np.asarray(values, np.float32)
    m = np.asarray(mask, bool)
    if v.ndim != 3 or v.shape[:2] != m.shape:
        raise ValueError(f"spline_interpolate wants (H, W, C) values and an (H, W) mask, got {v.shape} and {m.shape}")
    out = v.copy()
    n_known = int((~m).sum())
    if not m.any() or n_known == 0:
        return out
    step = max(1, int(np.ceil(np.sqrt(n_known / max(points, 1)))))
    lattice = np.zeros_like(m)
    lattice[::step, ::step] = True
    ky, kx = np.nonzero(lattice & ~m)
    if len(ky) < 16:
        return harmonic_interpolate(v, m)
    known = np.stack([kx, ky], axis=1).astype(np.float64)  # (P, 2) as (x, y)
    spline = RBFInterpolator(known, v[ky, kx].astype(np.float64), kernel="thin_plate_spline", smoothing=smoothing)
    hy, hx = np.nonzero(m)
    y0, y1, x0, x1 = hy.min(), hy.max(), hx.min(), hx.max()
    if eval_step <= 1 or len(hy) <= ((y1 - y0) // eval_step + 3) * ((x1 - x0) // eval_step + 3):  # (a lattice no smaller)
        out[hy, hx] = spline(np.stack([hx, hy], axis=1).astype(np.float64)).astype(np.float32)
        return out
    # the spline is smooth: evaluated on a lattice over the hole's box (one node past each side)
    # and resampled by an interpolating bicubic spline, it differs from the full evaluation by a
    # few thousandths of a pixel at a 4-px spacing, for a fraction of the cost (a kernel per
    # lattice point and pixel)
    gy = np.arange(y0 - eval_step, y1 + 2 * eval_step, eval_step, dtype=np.float64)
    gx = np.arange(x0 - eval_step, x1 + 2 * eval_step, eval_step, dtype=np.float64)
    ggx, ggy = np.meshgrid(gx, gy)
    coarse = spline(np.stack([ggx.ravel(), ggy.ravel()], axis=1)).reshape(len(gy), len(gx), -1)  # (gy, gx, C)
    for ch in range(coarse.shape[2]):
        out[hy, hx, ch] = _bicubic_at(RectBivariateSpline(gy, gx, coarse[..., ch], kx=3, ky=3, s=0), hy, hx).astype(np.float32)
    return out


def _bicubic_at(spline, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``spline`` (SciPy's RectBivariateSpline) at the pixels (ys, xs) ((N,) int each): evaluated
    on the grid of their bounding box and read there where they fill at least a tenth of it
    (FITPACK's grid evaluation works out each row's and each column's B-splines once: about 8x
    faster than point by point over a whole box, the same values bit for bit), point by point
    elsewhere (a thin hole across a wide box)."""
    y0, x0 = int(ys.min()), int(xs.min())
    rows, cols = np.arange(y0, int(ys.max()) + 1), np.arange(x0, int(xs.max()) + 1)
    if 10 * len(ys) < len(rows) * len(cols):
        return spline.ev(ys, xs)
    return spline(rows, cols)[ys - y0, xs - x0]  # (rows, cols) -> (N,)


def _harmonic_direct(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The exact discrete solution at the hole's pixels, (n, C) float64, in ``np.nonzero`` order.
    The system is never singular: every 4-connected part of a hole that is not the whole picture
    has a known pixel beside it. Minimum-degree ordering on A + A^T (the matrix is symmetric)
    keeps the LU factors about half the size of SciPy's default ordering."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    ys, xs = np.nonzero(m)
    n = len(ys)
    h, w = m.shape
    index = np.full((h, w), -1, np.int64)
    index[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rows, cols = [], []
    rhs = np.zeros((n, img.shape[2]))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        y2, x2 = ys + dy, xs + dx
        valid = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
        diag += valid
        y2, x2 = np.clip(y2, 0, h - 1), np.clip(x2, 0, w - 1)
        inner = valid & m[y2, x2]
        rows.append(np.flatnonzero(inner))
        cols.append(index[y2[inner], x2[inner]])
        edge = valid & ~m[y2, x2]
        rhs[edge] += img[y2[edge], x2[edge]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    a = sp.csc_matrix((np.concatenate([-np.ones(len(r)), diag]), (np.concatenate([r, np.arange(n)]), np.concatenate([c, np.arange(n)]))), shape=(n, n))
    return splu(a, permc_spec="MMD_AT_PLUS_A").solve(rhs)


def _harmonic_coarse_to_fine(img: np.ndarray, m: np.ndarray, max_direct: int, sweeps: int = 40) -> np.ndarray:
    """A large hole: the harmonic fill of the picture at half size (a coarse pixel is hole where all
    four of its pixels are, else the mean of its known ones), upsampled into the hole, then
    ``sweeps`` Jacobi sweeps of the full-size equation (each pixel <- the mean of its four
    neighbours), which remove the upsampling's fine-scale error. Returns (n, C) float values at the
    hole's pixels in ``np.nonzero`` order."""
    h, w = m.shape
    hh, hw = (h + 1) // 2, (w + 1) // 2
    img2 = cv2.copyMakeBorder(np.ascontiguousarray(img), 0, 2 * hh - h, 0, 2 * hw - w, cv2.BORDER_REPLICATE).reshape(2 * hh, 2 * hw, -1)
    # a coarse pixel is known where any of its 2 x 2 block is: the mean of the block's known pixels
    # (the coarse hole's rim stays where the fine one is, within a fine pixel)
    means, weight = _known_means(img2, np.pad(m, ((0, 2 * hh - h), (0, 2 * hw - w)), mode="edge"), (hw, hh))
    small_hole = weight == 0
    small = means.round().clip(0, 255).astype(np.uint8)
    coarse = harmonic_fill(small, small_hole, max_direct).astype(np.float32)
    up = cv2.resize(coarse, (2 * hw, 2 * hh), interpolation=cv2.INTER_LINEAR).reshape(2 * hh, 2 * hw, -1)[:h, :w]
    out = img.astype(np.float32)
    np.copyto(out, up, where=np.broadcast_to(m[..., None], out.shape))
    _jacobi_sweeps(out, m, sweeps)
    return out[m]


def _jacobi_sweeps(out: np.ndarray, m: np.ndarray, sweeps: int) -> None:
    """``sweeps`` Jacobi sweeps of the discrete Laplace equation on ``out`` (H, W, C) float32, in
    place, at the pixels of ``m`` (H, W) bool: each becomes the mean of its four neighbours. The
    picture's edge is replicated, so at the fixed point an edge pixel is the mean of its neighbours
    inside the picture, as in the exact solve."""
    hole = np.broadcast_to(m[..., None], out.shape)
    kernel = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], np.float32)
    for _ in range(sweeps):
        np.copyto(out, cv2.filter2D(out, -1, kernel, borderType=cv2.BORDER_REPLICATE).reshape(out.shape), where=hole)


def residual_patch(
    crop_full: np.ndarray,
    mask_full: np.ndarray,
    out_small: np.ndarray,
    prefill_small: np.ndarray,
    hole_small: np.ndarray | None = None,
    blur: float = 0.0,
    mean_var: np.ndarray | None = None,
    shrink: float = 0.0,
    base: np.ndarray | None = None,
    fill: str = "telea",
) -> np.ndarray:
    """The refined crop at full resolution for a model that corrects a classical (or warp) prefill.

    The model saw the hole pre-filled at its S-px crop size (``prefill_small``) and returned
    ``out_small`` (both (S, S, 3) float in [0, 1]). Its correction (out - prefill) is upsampled and
    added to a classical fill (``fill``, one of :data:`CLASSICAL_FILLS`) computed at the crop's full
    resolution (``crop_full`` (N, N, 3) uint8, ``mask_full`` (N, N) bool), so that the fill keeps
    its full-resolution detail and the model only contributes what it changed. A zero correction
    gives exactly the full-resolution classical fill. ``hole_small`` ((S, S) float/bool, the
    model's hole) limits the correction to the hole: outside it the patch is the input itself. ``blur`` > 0 smooths the correction with a
    Gaussian of that sigma (in S-px pixels) before upsampling: the sample's leftover noise is
    removed and its colour and shading kept (MODEL_CARD.md measures it). ``mean_var`` ((S, S),
    the variance of ``out_small`` as a mean of K samples: their per-pixel variance / K) with
    ``shrink`` = lambda > 0 scales the correction by the Wiener factor P / (P + lambda * mean_var),
    P its smoothed power: where the samples disagree more than the correction is large, the
    result stays closer to the classical fill. ``base`` ((N, N, 3) uint8): the full-resolution fill
    the correction is added to instead of the classical fill (the warp composite,
    :func:`warp_composite`).
    Returns (N, N, 3) uint8."""
    if fill not in CLASSICAL_FILLS:
        raise ValueError(f"unknown classical fill '{fill}' (choose {' or '.join(CLASSICAL_FILLS)})")
    if crop_full.shape[:2] != mask_full.shape or out_small.shape != prefill_small.shape:
        raise ValueError(f"residual_patch shapes: crop {crop_full.shape}, mask {mask_full.shape}, out {out_small.shape}, prefill {prefill_small.shape}")
    n_h, n_w = mask_full.shape
    if base is None:
        base = classical_fill(crop_full, mask_full, fill)
    elif base.shape != crop_full.shape:
        raise ValueError(f"residual_patch base {base.shape} does not match the crop {crop_full.shape}")
    delta = (out_small - prefill_small).astype(np.float32)  # (S, S, 3) in [-1, 1]
    if shrink > 0 and mean_var is not None:
        power = (cv2.GaussianBlur(delta, (0, 0), max(float(blur), 1.0)) ** 2).mean(-1, keepdims=True)  # (S, S, 1)
        delta = delta * (power / (power + shrink * np.asarray(mean_var, np.float32)[..., None] + 1e-8))
    delta = delta * 255.0
    if hole_small is not None:
        delta = delta * np.asarray(hole_small, dtype=np.float32)[..., None]
    if blur > 0:
        delta = cv2.GaussianBlur(delta, (0, 0), float(blur))
    delta = cv2.resize(delta, (n_w, n_h), interpolation=cv2.INTER_CUBIC)
    if hole_small is not None:
        delta = delta * mask_full.astype(np.float32)[..., None]  # and, at full resolution, to the mask
    return np.clip(np.rint(base.astype(np.float32) + delta), 0, 255).astype(np.uint8)


def warp_composite(crop_full: np.ndarray, mask_full: np.ndarray, warp_full: np.ndarray, use_full: np.ndarray) -> np.ndarray:
    """The ``warp`` hole fill at full resolution: the crop (N, N, 3) uint8 with its hole
    ``mask_full`` (N, N) bool inpainted by Telea, and the colour-matched warp ``warp_full``
    (N, N, 3) uint8 where ``use_full`` (N, N) bool trusts it (pixels outside the hole unchanged)."""
    m = np.asarray(mask_full, bool)
    out = classical_fill(crop_full, m, "telea")
    use = np.asarray(use_full, bool) & m
    out[use] = warp_full[use]
    return out


def warp_at(warp_full: np.ndarray, use_full: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The warp and its trust map at the model's S px, the same way in training pairs and at
    inference: (the warp (N, N, 3) uint8 resized by area to (S, S, 3) uint8, the trust (S, S) bool:
    cells at least half covered by trusted pixels)."""
    n_h, n_w = use_full.shape
    small = warp_full if (n_h, n_w) == (size, size) else cv2.resize(np.ascontiguousarray(warp_full), (size, size), interpolation=cv2.INTER_AREA if size < max(n_h, n_w) else cv2.INTER_CUBIC)
    cover = cv2.resize(np.asarray(use_full, np.float32), (size, size), interpolation=cv2.INTER_AREA if size < max(n_h, n_w) else cv2.INTER_LINEAR)
    return small, cover >= 0.5


def _disk_kernel(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


#: cv2.seamlessClone erodes its mask by this many pixels (3 iterations of a 3x3 erosion) before solving.
_CLONE_EROSION = 3


def poisson_fill(image: np.ndarray, fill: np.ndarray, mask: np.ndarray, dilate_px: int = 3) -> np.ndarray:
    """Poisson-blend (``cv2.seamlessClone``, NORMAL_CLONE) ``fill`` into ``image`` over ``mask``
    grown by ``dilate_px``; pixels outside the grown mask are returned unchanged.

    Guards against seamlessClone's border behaviour: it erodes the mask by 3 px before solving (so
    the destination's pixels, here the artifact, would leak in from the mask's rim), zeroes the
    mask's 1-px image border, and needs the source box to fit inside the destination around
    ``center``. The clone mask is therefore the blend region grown by the erosion, both images are
    reflect-padded so a mask touching the border is blended like any other, and a cv2 failure
    falls back to a plain paste."""
    region = cv2.dilate(np.asarray(mask, bool).astype(np.uint8), _disk_kernel(dilate_px)).astype(bool) if dilate_px > 0 else np.asarray(mask, bool)
    out = image.copy()
    pad = dilate_px + _CLONE_EROSION + 4
    src = cv2.copyMakeBorder(np.ascontiguousarray(fill), pad, pad, pad, pad, cv2.BORDER_REFLECT)
    dst = cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad, cv2.BORDER_REFLECT)
    m = cv2.dilate(np.pad(region, pad).astype(np.uint8), _disk_kernel(_CLONE_EROSION + 1)) * 255
    x, y, w, h = cv2.boundingRect(m)
    try:
        blended = cv2.seamlessClone(src, dst, m, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
        blended = blended[pad:-pad, pad:-pad]
    except cv2.error:
        blended = fill
    out[region] = blended[region]
    return out
