"""Pictures people look at: heat-map overlays, outlines, labelled tiles, the refine side-by-side."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import to_rgb

__all__ = [
    "render_heatmap_overlay",
    "compare_picture",
    "source_overlay",
    "SOURCE_COLOURS",
    "hstack_tiles",
    "resize_tile",
    "fit_square",
    "outline_mask",
    "label_tile",
    "placeholder_tile",
    "sheet_row",
    "contact_sheet",
    "LABEL_HEIGHT",
    "SHEET_PAD",
    "RED",
    "GREEN",
    "MAGENTA",
]

#: Height of the label strip above a tile, px.
LABEL_HEIGHT = 14
#: Gap between the tiles and rows of a contact sheet, px, and the sheet's background.
SHEET_PAD = 4
SHEET_BACKGROUND = (20, 20, 20)
#: Contact-sheet colours: the artifact mask, the true region, a predicted region.
RED, GREEN, MAGENTA = (255, 0, 0), (0, 255, 0), (255, 0, 255)


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


def resize_tile(img: Image.Image, height: int) -> Image.Image:
    """``img`` as RGB (:func:`~refine_by_align.io.to_rgb`: transparency over black) at ``height``
    px, aspect kept (width capped at 4 x height)."""
    w = max(1, min(4 * height, round(img.width * height / img.height)))
    return to_rgb(img).resize((w, height), Image.BILINEAR)


def fit_square(img: Image.Image, size: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Letterbox ``img`` into a size x size tile; returns the tile and its placement (x, y, w, h)."""
    s = size / max(img.width, img.height)
    w, h = max(1, round(img.width * s)), max(1, round(img.height * s))
    tile = Image.new("RGB", (size, size), (30, 30, 30))
    x, y = (size - w) // 2, (size - h) // 2
    tile.paste(img.convert("RGB").resize((w, h), Image.BILINEAR), (x, y))
    return tile, (x, y, w, h)


def outline_mask(
    tile: Image.Image,
    mask: np.ndarray,
    colour: tuple[int, int, int],
    thickness: int = 2,
    place: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Draw the outline of ``mask`` (resized to the tile, or to ``place`` = (x, y, w, h) from
    :func:`fit_square`) on a copy of ``tile``."""
    if place is None:
        m = cv2.resize(np.asarray(mask).astype(np.uint8), tile.size, interpolation=cv2.INTER_NEAREST)
    else:
        x, y, w, h = place
        m = np.zeros((tile.height, tile.width), np.uint8)
        m[y : y + h, x : x + w] = cv2.resize(np.asarray(mask, bool).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    arr = np.array(tile.convert("RGB"), dtype=np.uint8)  # writable copy
    cv2.drawContours(arr, contours, -1, colour, thickness)
    return Image.fromarray(arr, "RGB")


def label_tile(tile: Image.Image, label: str) -> Image.Image:
    """``tile`` under a black strip of :data:`LABEL_HEIGHT` px holding ``label`` (cut to fit)."""
    out = Image.new("RGB", (tile.width, tile.height + LABEL_HEIGHT), (0, 0, 0))
    out.paste(tile, (0, LABEL_HEIGHT))
    draw = ImageDraw.Draw(out)
    font = _font()
    draw.text((2, 1), _fit_text(draw, label, tile.width - 4, font), fill=(255, 255, 255), font=font)
    return out


def placeholder_tile(height: int, text: str) -> Image.Image:
    """A grey square saying ``text`` (a missing target or output)."""
    tile = Image.new("RGB", (height, height), (48, 48, 48))
    draw = ImageDraw.Draw(tile)
    draw.text((6, height // 2 - 6), text, fill=(200, 200, 200), font=_font())
    return tile


def sheet_row(tiles: list[Image.Image]) -> Image.Image:
    """One contact-sheet row: tiles left to right, :data:`SHEET_PAD` px apart, top-aligned."""
    width = sum(t.width for t in tiles) + SHEET_PAD * (len(tiles) - 1)
    row = Image.new("RGB", (width, max(t.height for t in tiles)), SHEET_BACKGROUND)
    x = 0
    for t in tiles:
        row.paste(t, (x, 0))
        x += t.width + SHEET_PAD
    return row


def contact_sheet(rows: list[Image.Image], title: str = "", empty_height: int = 160) -> Image.Image:
    """Stack rows vertically (left-aligned) under an optional title line; no rows: a placeholder."""
    if not rows:
        rows = [placeholder_tile(empty_height, "no cases")]
    top = LABEL_HEIGHT + SHEET_PAD if title else 0
    width = max(r.width for r in rows) + 2 * SHEET_PAD
    height = top + sum(r.height for r in rows) + SHEET_PAD * (len(rows) + 1)
    sheet = Image.new("RGB", (width, height), SHEET_BACKGROUND)
    if title:
        ImageDraw.Draw(sheet).text((SHEET_PAD, 2), title, fill=(255, 255, 255), font=_font())
    y = top + SHEET_PAD
    for r in rows:
        sheet.paste(r, (SHEET_PAD, y))
        y += r.height + SHEET_PAD
    return sheet


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


#: Colours of the references in a several-reference picture (reference #1, #2, ...); the model's own
#: redraw is shown in grey.
SOURCE_COLOURS = ((0, 200, 255), (255, 170, 0), (170, 255, 60), (255, 80, 200), (140, 120, 255))
MODEL_GREY = (150, 150, 150)


def _reference_tile(reference: Image.Image, heatmap, region, height: int, label: str) -> Image.Image:
    """A reference with its alignment map (or its region when only that is known), M* outlined.
    The map is drawn on the reference already scaled to the tile (a 12-megapixel photo's overlay
    at its own size took 4 s)."""
    tile = resize_tile(reference, height)
    if heatmap is not None:
        tile = render_heatmap_overlay(tile, heatmap, alpha=0.6)
        label = f"{label} + alignment map"
    elif region is not None:
        tile = render_heatmap_overlay(tile, region, alpha=0.45, color=MAGENTA)
        label = f"{label} + given region"
    else:
        label = f"{label} (no alignment)"
    if region is not None:
        tile = outline_mask(tile, region, (255, 255, 255))
    return label_tile(tile, label)


def source_overlay(image: Image.Image, source: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """Tint each pixel of the artifact mask by where it came from: ``source`` (H, W) int, -1 outside
    the mask, 0 the model, k reference k's warp (colour :data:`SOURCE_COLOURS` [k - 1])."""
    arr = np.asarray(to_rgb(image), np.float32).copy()
    source = np.asarray(source)
    if source.shape != arr.shape[:2]:
        raise ValueError(f"source map {source.shape[::-1]} does not match the image {image.size}")
    for k in np.unique(source[source >= 0]):
        colour = MODEL_GREY if k == 0 else SOURCE_COLOURS[(int(k) - 1) % len(SOURCE_COLOURS)]
        sel = source == k
        arr[sel] = arr[sel] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def compare_picture(image: Image.Image, mask: np.ndarray, reference, result, height: int = 320) -> Image.Image:
    """The ``refine`` side-by-side: input with the mask outlined | the reference with the alignment
    as a heat map (or M* when only the mask is known) | the refined result. ``reference``: one image
    or a list; with several, one tile per reference (its region and map, its colour in the label)
    and a last tile tinting each mask pixel by the reference its pixels came from (grey: drawn by
    the model)."""
    refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    inp = label_tile(outline_mask(resize_tile(image, height), mask, RED), "input + artifact mask")
    out = label_tile(outline_mask(resize_tile(result.image, height), mask, GREEN, 1), "refined")
    per = getattr(result, "references", None) or []
    if len(refs) == 1 or len(per) != len(refs):
        return hstack_tiles([inp, _reference_tile(refs[0], result.heatmap, result.region, height, "reference"), out])
    tiles = [inp]
    for i, (ref, r) in enumerate(zip(refs, per)):
        tile = _reference_tile(ref, r.heatmap, r.region, height, f"#{i + 1}")
        bar = Image.new("RGB", (tile.width, 6), SOURCE_COLOURS[i % len(SOURCE_COLOURS)])
        stacked = Image.new("RGB", (tile.width, tile.height + 6))
        stacked.paste(bar, (0, 0))
        stacked.paste(tile, (0, 6))
        tiles.append(stacked)
    tiles.append(out)
    if result.source is not None:
        tiles.append(label_tile(resize_tile(source_overlay(result.image, result.source), height), "where each part came from (grey: model)"))
    return hstack_tiles(tiles)
