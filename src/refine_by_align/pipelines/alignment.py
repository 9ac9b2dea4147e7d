"""The alignment stage: Algorithm 1 (Sec. 3.3), Eq. 5 and the post-processing of A.4.

Functions here work on plain tensors / arrays so each step can be tested alone:
``correspondence_map`` (Eq. 5), ``filter_token_peaks`` + ``clean_correspondence`` (A.4),
``grid_to_reference`` (token grid -> reference pixels), and ``attention_grid`` (the T x L grid of
maps used for the grid search of Fig. 4 / Fig. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..models.attention import AllLayersRecorded, AttentionStore, record_layers
from ..zoom import Box

__all__ = [
    "correspondence_map",
    "filter_token_peaks",
    "clean_correspondence",
    "grid_to_reference",
    "attention_grid",
    "AlignmentResult",
]


def correspondence_map(attention: torch.Tensor, mask: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Eq. 5: M^{t,l} = sum_{i,j} M_a[i,j] * A[i,j,:], reshaped to the reference token grid.

    attention: (B, HW, T) heads-averaged probabilities of one layer; mask: (B, 1, H', W') artifact
    mask at any resolution (resized to the layer's square resolution with area weights).
    Returns (B, grid, grid)."""
    b, hw, t = attention.shape
    side = int(round(hw**0.5))
    if side * side != hw:
        raise ValueError(f"attention has {hw} query positions, not a square feature map")
    if t != grid_size * grid_size:
        raise ValueError(f"attention has {t} reference tokens, expected {grid_size}x{grid_size}")
    if mask.ndim != 4 or mask.shape[0] != b or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B={b}, 1, H, W), got {tuple(mask.shape)}")
    m = F.interpolate(mask.float(), size=(side, side), mode="area").reshape(b, hw, 1)  # (B, HW, 1)
    return (attention.float() * m).sum(dim=1).reshape(b, grid_size, grid_size)


def filter_token_peaks(raw: np.ndarray, ratio: float = 3.0) -> np.ndarray:
    """A.4, first half: remove the isolated high-norm peaks ViTs put on borders and corners.

    A token is a noise peak when it exceeds ``ratio`` times the largest of its 8 neighbours: an
    isolated spike. It is replaced by the median of its neighbours. A real match is a blob (some
    neighbour is strong too) and survives unchanged."""
    raw = np.asarray(raw, dtype=np.float64)
    footprint = np.ones((3, 3), dtype=bool)
    footprint[1, 1] = False
    neighbour_max = ndimage.maximum_filter(raw, footprint=footprint, mode="mirror")
    neighbour_med = ndimage.median_filter(raw, footprint=footprint, mode="mirror")
    floor = 1e-12 + 1e-3 * np.abs(raw).max()
    peaks = raw > ratio * np.maximum(neighbour_max, floor)
    out = raw.copy()
    out[peaks] = neighbour_med[peaks]
    return out


def clean_correspondence(raw: np.ndarray, threshold: float = 0.5, peak_ratio: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A.4: peak filtering, threshold, and the largest blob.

    raw: (g, g) map from Eq. 5. Returns (mask (g, g) bool with one 8-connected blob, the filtered
    map normalised to [0, 1]). ``threshold`` is relative to the filtered map's range. The blob kept
    is the one with the largest summed weight (a clustering by connectivity)."""
    filtered = filter_token_peaks(raw, peak_ratio)
    lo, hi = float(filtered.min()), float(filtered.max())
    norm = (filtered - lo) / (hi - lo) if hi > lo else np.zeros_like(filtered)
    binary = norm >= threshold
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        binary = norm >= norm.max()
        labels, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    mass = ndimage.sum(norm, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(mass)) + 1
    return labels == best, norm.astype(np.float32)


def grid_to_reference(grid: np.ndarray, box: Box, shape: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Map a (g, g) token-grid array onto reference pixels: token grid covers ``box`` (the square
    region of the reference the encoder saw), placed into an array of ``shape`` (H, W).

    Booleans are upsampled with nearest neighbour; floats bilinearly when ``smooth``."""
    h, w = shape
    is_bool = grid.dtype == bool
    src = grid.astype(np.float32)
    interp = cv2.INTER_LINEAR if (smooth and not is_bool) else cv2.INTER_NEAREST
    up = cv2.resize(src, (box.width, box.height), interpolation=interp)
    out = np.zeros((h, w), dtype=np.float32)
    sx0, sy0 = max(box.x0, 0), max(box.y0, 0)
    sx1, sy1 = min(box.x1, w), min(box.y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = up[sy0 - box.y0 : sy1 - box.y0, sx0 - box.x0 : sx1 - box.x0]
    return out >= 0.5 if is_bool else out


@dataclass
class AlignmentResult:
    """Output of the alignment stage for one image."""

    mask: np.ndarray  # (Hr, Wr) bool: M*, the correspondence on the reference
    heatmap: np.ndarray  # (Hr, Wr) float32 in [0, 1]: the cleaned map, for display
    raw_grid: np.ndarray  # (g, g) float32: M^{t,l} straight from Eq. 5
    grid_mask: np.ndarray  # (g, g) bool: M* on the token grid
    timestep: int
    layer: int


@torch.no_grad()
def attention_grid(
    model,
    sample: torch.Tensor,  # (B, C, h, w) the artifact image in sample space (z_0)
    masked: torch.Tensor,  # (B, C, h, w)
    mask: torch.Tensor,  # (B, 1, h, w)
    context: torch.Tensor,  # (B, T, C_ctx)
    timesteps: list[int],
    layers: list[int] | None,
    scheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 5 for every (t, l): one U-Net pass per timestep t on z_t = the artifact image noised to
    t (same noise for every t), recording the listed cross-attention layers (None = all).

    Returns (len(timesteps), len(layers), B, grid, grid). Implements the grid search input of
    Algorithm 1 (Sec. 3.3, Fig. 4 and 7). Each pass stops as soon as the last listed layer has been
    recorded: nothing after it contributes to the maps."""
    names = model.cross_attention_layers
    layer_ids = list(range(len(names))) if layers is None else list(layers)
    for l in layer_ids:
        if not 0 <= l < len(names):
            raise ValueError(f"layer {l} out of range 0..{len(names) - 1}")
    store = AttentionStore(stop_after=[names[l] for l in layer_ids])
    record_layers(model.unet, [names[l] for l in layer_ids], store)
    noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device="cpu").to(sample.device)
    grid = model.cfg.grid_size
    out = torch.zeros(len(timesteps), len(layer_ids), sample.shape[0], grid, grid)
    try:
        for i, t in enumerate(timesteps):
            tt = torch.full((sample.shape[0],), int(t), dtype=torch.long, device=sample.device)
            z_t = scheduler.add_noise(sample, noise, tt) if t > 0 else sample
            store.clear()
            try:
                model(z_t, tt, masked, mask, context)
            except AllLayersRecorded:
                pass
            for j, l in enumerate(layer_ids):
                out[i, j] = correspondence_map(store[names[l]], mask, grid).cpu()
    finally:
        model.unet.set_attn_processor(_default_processors(model.unet))
    return out


def _default_processors(unet) -> dict:
    from diffusers.models.attention_processor import AttnProcessor2_0

    return {k: AttnProcessor2_0() for k in unet.attn_processors}
