"""Procedural objects: a stand-in for the object photos with masks (Pixabay) of Sec. 3.4.

Each object is a silhouette (rounded rectangle, ellipse, polygon or a union of two) on a varied
background (flat, gradient, noise or clutter). Its inside is cut into several *parts*, each with an
independently drawn fill: rendered text, logo-like glyphs, stripes, checks, gradients, dots or noise
textures, plus a few "stickers" (glyphs / words) on top. Because every part and sticker is drawn
independently, an erased region cannot be predicted from its surroundings: the model has to look
it up on the reference, which is exactly what the alignment mode of Sec. 3.4 trains ("use a complete
reference object to guide object completion, forcing the model to learn to identify the
corresponding local region from the reference").
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["BACKGROUNDS", "FILLS", "SyntheticConfig", "SyntheticSource", "render_object"]

FILLS = ("text", "glyphs", "stripes", "checks", "gradient", "noise", "dots", "flat_glyph")
BACKGROUNDS = ("flat", "gradient", "noise", "clutter")


@dataclass
class SyntheticConfig:
    """Parameters of :func:`render_object`."""

    object_extent: tuple[float, float] = (0.55, 0.92)  # object box side / image side, uniform
    parts: tuple[int, int] = (2, 6)  # number of independently filled parts, inclusive
    stickers: tuple[int, int] = (1, 4)  # glyphs / words pasted across parts, inclusive
    p_outline: float = 0.5  # probability of a dark outline around the silhouette
    p_part_borders: float = 0.5  # probability of drawing lines between parts
    shading: float = 0.25  # max strength of a smooth lighting gradient over the object


# ----------------------------------------------------------------------------------------------
# colours and fonts


def _color(rng: np.random.Generator, sat: tuple[float, float] = (0.3, 1.0), val: tuple[float, float] = (0.2, 1.0)) -> np.ndarray:
    """A random RGB colour (3,) uint8 from HSV ranges."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]


def _contrasting(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    """A random colour whose luminance differs clearly from ``c``."""
    lum = float(c @ np.array([0.299, 0.587, 0.114])) / 255.0
    val = (0.0, 0.35) if lum > 0.5 else (0.7, 1.0)
    return _color(rng, (0.0, 1.0), val)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(int(size), 6))


_CHARS = string.ascii_letters + string.digits + "#&@%$*+?!"


def _word(rng: np.random.Generator, n: tuple[int, int] = (1, 6)) -> str:
    k = int(rng.integers(n[0], n[1] + 1))
    return "".join(_CHARS[int(i)] for i in rng.integers(0, len(_CHARS), size=k))


# ----------------------------------------------------------------------------------------------
# fills: (h, w, rng) -> (h, w, 3) uint8


def _fill_gradient(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c0, c1 = _color(rng).astype(np.float32), _color(rng).astype(np.float32)
    th = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(th) + yy * np.sin(th)
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    if rng.random() < 0.3:  # radial instead
        t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
        t = t / (t.max() + 1e-6)
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8)


def _fill_stripes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(2, 4))
    cols = np.stack([_color(rng) for _ in range(k)])
    period = rng.uniform(3, 12)
    th = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(th) + yy * np.sin(th)) / period
    if rng.random() < 0.3:  # wavy stripes
        t = t + 0.6 * np.sin(yy / rng.uniform(4, 10) + rng.uniform(0, 6))
    idx = np.floor(t).astype(np.int64) % k
    return cols[idx]


def _fill_checks(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c0 = _color(rng)
    c1 = _contrasting(rng, c0)
    cell = rng.uniform(3, 10)
    th = rng.uniform(0, np.pi / 2) if rng.random() < 0.5 else 0.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * np.cos(th) + yy * np.sin(th)) / cell
    v = (-xx * np.sin(th) + yy * np.cos(th)) / cell
    sel = (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2 == 0
    return np.where(sel[..., None], c0, c1)


def _fill_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-scale smoothed colour noise (marble / camouflage-like), unpredictable by construction."""
    out = np.zeros((h, w, 3), np.float32)
    for cells, wgt in ((rng.integers(2, 5), 1.0), (rng.integers(5, 12), 0.6), (rng.integers(12, 30), 0.3)):
        n = rng.standard_normal((int(cells), int(cells), 3)).astype(np.float32)
        out += wgt * cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC)
    base = _color(rng).astype(np.float32)
    out = base + out * rng.uniform(25, 60)
    if rng.random() < 0.4:  # quantised: camouflage-like patches
        out = np.round(out / 48.0) * 48.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _fill_dots(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    bg = _color(rng)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(img)
    n = int(rng.integers(4, 4 + h * w // 60))
    for _ in range(n):
        r = rng.uniform(1.5, 5)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in _color(rng)))
    return np.asarray(img)


def _draw_glyph(d: ImageDraw.ImageDraw, box: tuple[float, float, float, float], rng: np.random.Generator, bg: np.ndarray) -> None:
    """A logo-like glyph in ``box``: star, ring(s), random polygon, arrow, cross or a letter."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = max(min(x1 - x0, y1 - y0) / 2, 2)
    c = tuple(int(v) for v in _contrasting(rng, bg))
    c2 = tuple(int(v) for v in _color(rng))
    kind = int(rng.integers(0, 6))
    if kind == 0:  # star
        k = int(rng.integers(4, 8))
        ang = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) + rng.uniform(0, np.pi)
        rad = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
        d.polygon(list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang))), fill=c)
    elif kind == 1:  # rings / target
        for j, f in enumerate(np.linspace(1, rng.uniform(0.2, 0.5), int(rng.integers(2, 4)))):
            d.ellipse([cx - r * f, cy - r * f, cx + r * f, cy + r * f], fill=c if j % 2 == 0 else c2)
    elif kind == 2:  # random polygon
        k = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.4, 1.0, k)
        d.polygon(list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang))), fill=c, outline=c2)
    elif kind == 3:  # arrow
        th = rng.uniform(0, 2 * np.pi)
        u, v = np.array([np.cos(th), np.sin(th)]), np.array([-np.sin(th), np.cos(th)])
        p = [(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]
        d.polygon([tuple(np.array([cx, cy]) + r * (a * u + b * v)) for a, b in p], fill=c)
    elif kind == 4:  # cross / plus with a square
        t = r * rng.uniform(0.2, 0.4)
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c2)
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=c)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=c)
    else:  # a big letter
        font = _font(int(r * 2))
        d.text((cx, cy), _word(rng, (1, 1)), font=font, fill=c, anchor="mm")


def _fill_glyphs(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    bg = _color(rng)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(img)
    n = int(rng.integers(1, 4))
    for _ in range(n):
        s = rng.uniform(0.3, 0.8) * min(h, w)
        x, y = rng.uniform(0, max(w - s, 1)), rng.uniform(0, max(h - s, 1))
        _draw_glyph(d, (x, y, x + s, y + s), rng, bg)
    return np.asarray(img)


def _fill_flat_glyph(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One large glyph centred on a flat part: a logo."""
    bg = _color(rng)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in bg))
    s = min(h, w) * rng.uniform(0.6, 0.95)
    _draw_glyph(ImageDraw.Draw(img), ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2), rng, bg)
    return np.asarray(img)


def _fill_text(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    bg = _color(rng)
    fg = _contrasting(rng, bg)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(img)
    fs = int(np.clip(rng.uniform(0.12, 0.45) * min(h, w), 7, 40))
    font = _font(fs)
    y = rng.uniform(-0.3, 0.2) * fs
    while y < h:
        x = rng.uniform(-0.5, 0.3) * fs
        while x < w:
            word = _word(rng)
            d.text((x, y), word, font=font, fill=tuple(int(v) for v in fg))
            x += d.textlength(word, font=font) + rng.uniform(0.3, 1.0) * fs
        y += fs * rng.uniform(1.0, 1.5)
    arr = np.asarray(img)
    if rng.random() < 0.4:  # slanted text
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-30, 30), 1.0)
        arr = cv2.warpAffine(arr, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return arr


_FILL_FNS = {
    "text": _fill_text,
    "glyphs": _fill_glyphs,
    "stripes": _fill_stripes,
    "checks": _fill_checks,
    "gradient": _fill_gradient,
    "noise": _fill_noise,
    "dots": _fill_dots,
    "flat_glyph": _fill_flat_glyph,
}
# text and glyphs are the most distinctive: weight them up; gradients alone are weakly distinctive
_FILL_P = np.array([0.22, 0.14, 0.13, 0.09, 0.06, 0.14, 0.09, 0.13])


# ----------------------------------------------------------------------------------------------
# background and silhouette


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "flat":
        return np.broadcast_to(_color(rng, (0, 0.6)), (size, size, 3)).copy(), kind
    if kind == "gradient":
        return _fill_gradient(size, size, rng), kind
    if kind == "noise":
        return _fill_noise(size, size, rng), kind
    img = Image.fromarray(_fill_gradient(size, size, rng))  # clutter: random shapes
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x, y = rng.uniform(-10, size, 2)
        s = rng.uniform(5, size / 3)
        c = tuple(int(v) for v in _color(rng, (0, 0.7)))
        if rng.random() < 0.5:
            d.rectangle([x, y, x + s, y + s * rng.uniform(0.3, 1.5)], fill=c)
        else:
            d.ellipse([x, y, x + s, y + s * rng.uniform(0.3, 1.5)], fill=c)
    return np.asarray(img), kind


def _silhouette(size: int, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """(size, size) bool object mask: rounded rect, ellipse, polygon or a union of two of them."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    ext = rng.uniform(*cfg.object_extent) * size
    bw = ext * rng.uniform(0.7, 1.0)
    bh = ext * rng.uniform(0.7, 1.0)
    x0 = rng.uniform(0, size - bw)
    y0 = rng.uniform(0, size - bh)
    kind = int(rng.integers(0, 4))

    def shape(k: int, x0: float, y0: float, bw: float, bh: float) -> None:
        if k == 0:
            d.rounded_rectangle([x0, y0, x0 + bw, y0 + bh], radius=rng.uniform(0.05, 0.3) * min(bw, bh), fill=255)
        elif k == 1:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=255)
        else:
            n = int(rng.integers(5, 10))  # evenly spread corners, jittered: a convex-ish polygon
            ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.3, 0.3, n) * (2 * np.pi / n)
            ang += rng.uniform(0, 2 * np.pi)
            rad = rng.uniform(0.8, 1.0, n)
            cx, cy = x0 + bw / 2, y0 + bh / 2
            d.polygon(list(zip(cx + rad * bw / 2 * np.cos(ang), cy + rad * bh / 2 * np.sin(ang))), fill=255)

    if kind == 3:  # union of two shapes: a body with an attached part
        shape(int(rng.integers(0, 3)), x0, y0, bw, bh * rng.uniform(0.55, 0.8))
        h2 = bh * rng.uniform(0.35, 0.6)
        w2 = bw * rng.uniform(0.4, 0.9)
        shape(int(rng.integers(0, 3)), x0 + rng.uniform(0, bw - w2), y0 + bh - h2, w2, h2)
    else:
        shape(kind, x0, y0, bw, bh)
    return np.asarray(img) >= 128


def _partition(x0: int, y0: int, x1: int, y1: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Recursively split a box into ``n`` rectangles (guillotine cuts), larger boxes first."""
    boxes = [(x0, y0, x1, y1)]
    while len(boxes) < n:
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        bx0, by0, bx1, by1 = boxes.pop()
        bw, bh = bx1 - bx0, by1 - by0
        if max(bw, bh) < 12:
            boxes.append((bx0, by0, bx1, by1))
            break
        if bw >= bh:
            cut = int(round(bx0 + bw * rng.uniform(0.3, 0.7)))
            boxes += [(bx0, by0, cut, by1), (cut, by0, bx1, by1)]
        else:
            cut = int(round(by0 + bh * rng.uniform(0.3, 0.7)))
            boxes += [(bx0, by0, bx1, cut), (bx0, cut, bx1, by1)]
    return boxes


def render_object(
    rng: np.random.Generator, size: int = 128, cfg: SyntheticConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one procedural object on a background.

    Returns:
        image: (size, size, 3) uint8 RGB.
        object_mask: (size, size) bool, the object's silhouette (non-empty).
    """
    cfg = cfg or SyntheticConfig()
    bg, _ = _background(size, rng)
    sil = _silhouette(size, rng, cfg)
    ys, xs = np.nonzero(sil)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    body = np.zeros((size, size, 3), np.uint8)
    n_parts = int(rng.integers(cfg.parts[0], cfg.parts[1] + 1))
    boxes = _partition(x0, y0, x1, y1, n_parts, rng)
    fills = rng.choice(len(FILLS), size=len(boxes), p=_FILL_P)
    for (bx0, by0, bx1, by1), fi in zip(boxes, fills):
        body[by0:by1, bx0:bx1] = _FILL_FNS[FILLS[int(fi)]](by1 - by0, bx1 - bx0, rng)

    img = Image.fromarray(body)
    d = ImageDraw.Draw(img)
    if rng.random() < cfg.p_part_borders and len(boxes) > 1:
        c = tuple(int(v) for v in _color(rng, (0, 1), (0, 0.4)))
        wdt = int(rng.integers(1, 3))
        for bx0, by0, bx1, by1 in boxes:
            d.rectangle([bx0, by0, bx1 - 1, by1 - 1], outline=c, width=wdt)
    for _ in range(int(rng.integers(cfg.stickers[0], cfg.stickers[1] + 1))):
        s = rng.uniform(0.12, 0.3) * max(x1 - x0, y1 - y0)
        sx = rng.uniform(x0, max(x1 - s, x0 + 1))
        sy = rng.uniform(y0, max(y1 - s, y0 + 1))
        under = body[int(min(sy + s / 2, size - 1)), int(min(sx + s / 2, size - 1))]
        if rng.random() < 0.6:
            _draw_glyph(d, (sx, sy, sx + s, sy + s), rng, under)
        else:
            fs = int(np.clip(s * 0.6, 7, 40))
            d.text((sx, sy), _word(rng, (2, 5)), font=_font(fs), fill=tuple(int(v) for v in _contrasting(rng, under)))
    body = np.asarray(img).astype(np.float32)

    if cfg.shading > 0:  # smooth lighting over the object
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        th = rng.uniform(0, 2 * np.pi)
        light = 1.0 + rng.uniform(0, cfg.shading) * ((xx - 0.5) * np.cos(th) + (yy - 0.5) * np.sin(th)) * 2
        body *= light[..., None]
    out = np.where(sil[..., None], np.clip(body, 0, 255), bg.astype(np.float32)).astype(np.uint8)
    if rng.random() < cfg.p_outline:
        cnts, _ = cv2.findContours(sil.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        c = tuple(int(v) for v in _color(rng, (0, 1), (0, 0.3)))
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, cnts, -1, c, 1)
    return out, sil


class SyntheticSource:
    """A deterministic, lazily rendered and cached pool of procedural objects.

    Object ``k`` is rendered from ``np.random.default_rng([seed, k])``, so every process (and
    every DataLoader worker) sees the same pool. ``sample_single(rng)`` picks one uniformly.
    """

    name = "synthetic"

    def __init__(self, size: int = 128, pool_size: int = 1024, seed: int = 0, cfg: SyntheticConfig | None = None):
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.size = int(size)  # rendered side in pixels
        self.pool_size = int(pool_size)  # number of distinct objects
        self.seed = int(seed)
        self.cfg = cfg or SyntheticConfig()
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.pool_size

    def get(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Object k: ((size, size, 3) uint8, (size, size) bool)."""
        k = int(k) % self.pool_size
        if k not in self._cache:
            self._cache[k] = render_object(np.random.default_rng([self.seed, k]), self.size, self.cfg)
        return self._cache[k]

    def sample_single(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.get(int(rng.integers(self.pool_size)))
