"""Pictures people look at: heat-map overlays, outlines, labelled tiles, the refine side-by-side."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_heatmap_overlay", "compare_picture", "hstack_tiles"]

_LABEL_H = 14


def render_heatmap_overlay(
    reference: Image.Image,
    heat: np.ndarray,
    alpha: float = 0.5,
    color: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Blend a heat map (float (H, W) in [0, 1]) or a bool mask over ``reference``; returns RGB.

    A float map is coloured with a jet colour map and blended with weight ``alpha * heat`` per pixel,
    so cold areas keep the reference visible. A bool mask is blended with weight ``alpha`` where True,
    in ``color`` (default: the jet colour of 1.0). A map of another size is resized to the reference
    (bilinear for float, nearest for bool). NaNs count as 0.
    """
    ref = np.asarray(reference.convert("RGB"), dtype=np.float32)
    h, w = ref.shape[:2]
    heat = np.asarray(heat)
    if heat.ndim != 2:
        raise ValueError(f"heat must be (H, W), got shape {heat.shape}")
    is_bool = heat.dtype == bool
    if is_bool:
        weight = heat.astype(np.float32)
        interp = cv2.INTER_NEAREST
    else:
        weight = np.clip(np.nan_to_num(heat.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        interp = cv2.INTER_LINEAR
    if weight.shape != (h, w):
        weight = cv2.resize(weight, (w, h), interpolation=interp)
    if color is not None:
        colour = np.broadcast_to(np.asarray(color, dtype=np.float32), (h, w, 3))
    else:
        lut_in = (np.ones_like(weight) if is_bool else weight) * 255.0
        bgr = cv2.applyColorMap(np.clip(lut_in + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        colour = bgr[..., ::-1].astype(np.float32)
    a = (float(alpha) * weight)[..., None]
    out = ref * (1.0 - a) + colour * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _resize_tile(img: Image.Image, height: int) -> Image.Image:
    w = max(1, min(4 * height, round(img.width * height / img.height)))
    return img.convert("RGB").resize((w, height), Image.BILINEAR)


def _outline(tile: Image.Image, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> Image.Image:
    m = cv2.resize(mask.astype(np.uint8), tile.size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    arr = np.array(tile.convert("RGB"), dtype=np.uint8)  # writable copy
    cv2.drawContours(arr, contours, -1, colour, thickness)
    return Image.fromarray(arr, "RGB")


def _labelled(tile: Image.Image, label: str) -> Image.Image:
    out = Image.new("RGB", (tile.width, tile.height + _LABEL_H), (0, 0, 0))
    out.paste(tile, (0, _LABEL_H))
    draw = ImageDraw.Draw(out)
    font = _font()
    draw.text((2, 1), _fit_text(draw, label, tile.width - 4, font), fill=(255, 255, 255), font=font)
    return out


def _placeholder(height: int, text: str) -> Image.Image:
    tile = Image.new("RGB", (height, height), (48, 48, 48))
    draw = ImageDraw.Draw(tile)
    draw.text((6, height // 2 - 6), text, fill=(200, 200, 200), font=_font())
    return tile


def hstack_tiles(tiles: list[Image.Image], pad: int = 4, background=(0, 0, 0)) -> Image.Image:
    """Tiles side by side, top-aligned, on a ``background`` strip."""
    h = max(t.height for t in tiles)
    w = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
    out = Image.new("RGB", (w, h + 2 * pad), background)
    x = pad
    for t in tiles:
        out.paste(t, (x, pad))
        x += t.width + pad
    return out


def compare_picture(image: Image.Image, mask: np.ndarray, reference: Image.Image, result, height: int = 320) -> Image.Image:
    """The ``refine`` side-by-side: input with the mask outlined | reference with the correspondence
    as a heat map (or M* when only the mask is known) | the refined result."""
    inp = _labelled(_outline(_resize_tile(image, height), mask, (255, 0, 0)), "input + artifact mask")
    if result.correspondence_map is not None:
        ref = render_heatmap_overlay(reference, result.correspondence_map, alpha=0.6)
        label = "reference + alignment map"
    elif result.correspondence_mask is not None:
        ref = render_heatmap_overlay(reference, result.correspondence_mask, alpha=0.45, color=(255, 0, 255))
        label = "reference + given region"
    else:
        ref, label = reference, "reference (no alignment)"
    ref_tile = _resize_tile(ref, height)
    if result.correspondence_mask is not None:
        ref_tile = _outline(ref_tile, result.correspondence_mask, (255, 255, 255))
    out = _labelled(_outline(_resize_tile(result.image, height), mask, (0, 255, 0), 1), "refined")
    return hstack_tiles([inp, _labelled(ref_tile, label), out])
