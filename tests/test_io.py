import io as _io

import numpy as np
import pytest
from PIL import Image

from refine_by_align.io import InputError, alpha_mask, load_image, load_mask, save_image_atomic, to_mask, to_rgb


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_modes_convert_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 8), (10, 20, 30, 0))
    rgba.putpixel((1, 1), (200, 100, 50, 255))
    assert to_rgb(rgba).mode == "RGB"
    assert to_rgb(rgba).getpixel((0, 0)) == (0, 0, 0)  # transparent -> black
    assert alpha_mask(rgba).sum() == 1
    assert to_rgb(Image.new("L", (4, 4), 128)).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("P", (4, 4))).mode == "RGB"
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    p16 = _save(Image.fromarray(arr16), tmp_path / "d16.png")
    img16 = load_image(p16)
    assert to_rgb(img16).getpixel((7, 7))[0] == round(63000 / 65535 * 255)
    cmyk = _save(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), tmp_path / "c.jpg")
    r, g, b = to_rgb(load_image(cmyk)).getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes())
    assert load_image(p).size == (10, 20)


def test_masks_from_any_mode():
    assert to_mask(Image.new("L", (4, 4), 200)).all()
    assert not to_mask(Image.new("L", (4, 4), 20)).any()
    rgb = Image.new("RGB", (4, 4), (0, 0, 0))
    rgb.putpixel((2, 2), (255, 255, 255))
    assert to_mask(rgb).sum() == 1
    assert to_mask(Image.new("1", (3, 3), 1)).all()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is text, not an image", "not a readable image"),
        (b"", "not a readable image"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message) as e:
        load_image(p, "image")
    assert str(p) in str(e.value)


def test_truncated_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for ext in ("png", "jpg"):
        buf = _io.BytesIO()
        img.save(buf, format="PNG" if ext == "png" else "JPEG")
        p = tmp_path / f"trunc.{ext}"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        with pytest.raises(InputError, match="trunc"):
            load_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        load_mask(tmp_path)


def test_decompression_bomb(tmp_path, monkeypatch):
    import refine_by_align.io as rio

    p = _save(Image.new("L", (300, 300)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="too large"):
        rio.load_image(p)


def test_save_is_atomic_and_checks_extension(tmp_path):
    img = Image.new("RGB", (4, 4))
    save_image_atomic(img, tmp_path / "a" / "out.png")
    assert (tmp_path / "a" / "out.png").exists()
    assert not [p for p in (tmp_path / "a").iterdir() if "tmp" in p.name]
    with pytest.raises(InputError, match="extension"):
        save_image_atomic(img, tmp_path / "out.xyz")
