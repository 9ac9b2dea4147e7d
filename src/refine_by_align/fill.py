"""How the hole of the masked image is filled before the U-Net sees it.

The paper (like SD inpainting) zeroes the hole. The small embedded model instead sees the hole
pre-filled by OpenCV's Telea inpainting (a smooth continuation of the surroundings), so that its
prediction is a correction over a classical fill rather than a colour guess from nothing: trained
on this CPU's budget, a zero-filled model lost to that very fill (MODEL_CARD.md).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["HOLE_FILLS", "fill_hole"]

HOLE_FILLS = ("zero", "telea")
TELEA_RADIUS = 3  # px, at the U-Net's crop resolution


def fill_hole(images: torch.Tensor, masks: torch.Tensor, method: str = "zero") -> torch.Tensor:
    """``images`` (B, 3, H, W) in [0, 1], ``masks`` (B, 1, H, W) (> 0.5 = hole) -> (B, 3, H, W)
    in [0, 1] with the hole zeroed (``zero``) or inpainted by Telea (``telea``)."""
    if method not in HOLE_FILLS:
        raise ValueError(f"unknown hole fill '{method}' (choose {', '.join(HOLE_FILLS)})")
    if images.ndim != 4 or images.shape[1] != 3 or masks.shape[-2:] != images.shape[-2:] or masks.shape[1] != 1:
        raise ValueError(f"fill_hole wants (B, 3, H, W) images and (B, 1, H, W) masks, got {tuple(images.shape)}, {tuple(masks.shape)}")
    if method == "zero":
        return images * (1.0 - masks.to(images.dtype))
    hole = (masks > 0.5).squeeze(1).cpu().numpy().astype(np.uint8)  # (B, H, W)
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        out[i] = cv2.inpaint(arr[i], hole[i], TELEA_RADIUS, cv2.INPAINT_TELEA) if hole[i].any() else arr[i]
    filled = torch.from_numpy(out).to(images.device).permute(0, 3, 1, 2).to(images.dtype) / 255.0
    keep = masks <= 0.5
    return torch.where(keep, images, filled)  # pixels outside the hole stay exactly as given
