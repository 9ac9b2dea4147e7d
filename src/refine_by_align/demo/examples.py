"""The demo examples shipped in the repository, rendered by the project itself (no photos).

Each example is a product-like object with text and a logo-like mark, shown in a "generated" image
where part of it is garbled (smeared / wrong glyphs), with the artifact mask, and a clean reference
photo of the same object in another pose and light. ``python -m refine_by_align.demo.examples``
rewrites ``demo/examples/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["EXAMPLES_DIR", "render_examples"]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def _object(kind: str, size: int = 256) -> tuple[Image.Image, np.ndarray]:
    """A clean object on transparent background: (RGBA image, bool mask)."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    font_big = ImageFont.load_default(size=size // 7)
    font_small = ImageFont.load_default(size=size // 14)
    if kind == "badge":
        d.rounded_rectangle((16, 40, size - 16, size - 40), radius=28, fill=(30, 60, 150, 255), outline=(250, 200, 40, 255), width=6)
        d.ellipse((32, 70, 112, 150), fill=(250, 200, 40, 255))
        d.polygon([(72, 80), (100, 140), (44, 140)], fill=(200, 30, 40, 255))
        d.text((124, 72), "RBA", font=font_big, fill=(255, 255, 255, 255))
        d.text((124, 118), "since 2026", font=font_small, fill=(250, 200, 40, 255))
        for i in range(6):
            d.rectangle((36 + i * 32, 170, 52 + i * 32, 196), fill=((i * 40) % 255, 200 - i * 25, 90 + i * 25, 255))
    else:  # "can": stripes, a check band and a label
        d.rectangle((60, 12, size - 60, size - 12), fill=(235, 235, 225, 255))
        for i in range(8):
            d.rectangle((60, 20 + i * 10, size - 60, 24 + i * 10), fill=(200, 40, 60, 255))
        for i in range(8):
            for j in range(2):
                if (i + j) % 2 == 0:
                    d.rectangle((60 + i * 17, 110 + j * 17, 77 + i * 17, 127 + j * 17), fill=(20, 20, 20, 255))
        d.text((72, 156), "FIZZ", font=font_big, fill=(20, 110, 60, 255))
        d.ellipse((150, 205, 190, 240), fill=(20, 110, 60, 255))
        d.text((80, 214), "No.7", font=font_small, fill=(20, 20, 20, 255))
    mask = np.asarray(img)[..., 3] > 0
    return img, mask


def _background(size: tuple[int, int], rng: np.random.Generator, tone: tuple[int, int, int]) -> Image.Image:
    w, h = size
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.array(tone, np.float32) * (0.7 + 0.3 * y) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _place(obj: Image.Image, canvas: Image.Image, angle: float, scale: float, xy: tuple[int, int]):
    o = obj.resize((int(obj.width * scale), int(obj.height * scale)), Image.BICUBIC).rotate(angle, Image.BICUBIC, expand=True)
    canvas = canvas.copy()
    canvas.paste(o, xy, o)
    m = np.zeros((canvas.height, canvas.width), bool)
    om = np.asarray(o)[..., 3] > 127
    m[xy[1] : xy[1] + om.shape[0], xy[0] : xy[0] + om.shape[1]] = om[: canvas.height - xy[1], : canvas.width - xy[0]]
    return canvas, m


def render_examples(out_dir: Path = EXAMPLES_DIR, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    written = []
    specs = {
        "badge": {"box": (120, 72, 250, 150), "artifact": "smear"},
        "can": {"box": (62, 105, 200, 150), "artifact": "wrong_texture"},
    }
    for name, spec in specs.items():
        obj, _ = _object(name)
        # the "generated" image: object in a scene, with the artifact painted over one detailed part
        scene = _background((384, 320), rng, (120, 150, 110) if name == "badge" else (150, 120, 100))
        scene, obj_mask = _place(obj, scene, angle=8.0, scale=1.0, xy=(70, 40))
        target = np.asarray(scene.convert("RGB")).copy()
        # artifact region: an irregular blob over the chosen part of the object (in object coords)
        x0, y0, x1, y1 = spec["box"]
        art = np.zeros(obj_mask.shape, np.uint8)
        cx, cy = 70 + (x0 + x1) // 2, 40 + (y0 + y1) // 2
        cv2.ellipse(art, (cx, cy), ((x1 - x0) // 2, (y1 - y0) // 2), 8, 0, 360, 1, -1)
        art = (art > 0) & obj_mask
        garbled = Image.fromarray(target)
        if spec["artifact"] == "smear":
            smeared = garbled.filter(ImageFilter.GaussianBlur(5)).transform(garbled.size, Image.AFFINE, (1, 0.25, -20, 0, 1, 0))
            gd = np.asarray(smeared)
        else:
            noise = rng.integers(0, 255, (target.shape[0] // 8, target.shape[1] // 8, 3), dtype=np.uint8)
            gd = cv2.resize(noise, (target.shape[1], target.shape[0]), interpolation=cv2.INTER_NEAREST)
        image = target.copy()
        image[art] = gd[art]
        # the reference: the clean object, another pose and light, its own background
        ref_bg = _background((300, 300), rng, (210, 210, 215))
        ref_obj = Image.fromarray(np.clip(np.asarray(obj).astype(np.float32) * [1.1, 1.05, 0.95, 1.0], 0, 255).astype(np.uint8))
        reference, ref_mask = _place(ref_obj, ref_bg, angle=-12.0, scale=0.9, xy=(30, 30))
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(d / "image.png")
        Image.fromarray(art.astype(np.uint8) * 255).save(d / "mask.png")
        reference.convert("RGB").save(d / "reference.png")
        Image.fromarray(ref_mask.astype(np.uint8) * 255).save(d / "reference_mask.png")
        Image.fromarray(target).save(d / "target.png")
        (d / "meta.json").write_text(json.dumps({"kind": "example", "artifact": spec["artifact"], "seed": seed}, indent=1))
        written.append(d)
    return written


if __name__ == "__main__":
    for p in render_examples():
        print(p)
