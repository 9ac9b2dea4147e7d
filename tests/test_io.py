import io as _io

import numpy as np
import pytest
from PIL import Image

from refine_by_align.io import InputError, alpha_mask, in_input_mode, load_image, load_mask, mask_from_levels, save_image_atomic, to_mask, to_rgb


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_alpha_mask_is_the_opaque_half_and_none_when_fully_opaque():
    """An alpha channel's object mask: the pixels at half opacity or more (128 of 255) count, the
    fainter ones do not; a picture opaque everywhere, or without alpha, has no mask to give (None:
    the object is then estimated from the photo)."""
    a = np.zeros((4, 6), np.uint8)
    a[1, 1], a[1, 2], a[2, 3], a[2, 4] = 100, 127, 128, 200
    rgba = np.dstack([np.full((4, 6, 3), 90, np.uint8), a])
    got = alpha_mask(Image.fromarray(rgba, "RGBA"))
    assert got.dtype == bool and got.sum() == 2 and got[2, 3] and got[2, 4]
    assert alpha_mask(Image.fromarray(np.dstack([rgba[..., :3], np.full((4, 6), 255, np.uint8)]), "RGBA")) is None
    assert alpha_mask(Image.fromarray(rgba[..., :3], "RGB")) is None


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
    assert not to_mask(Image.new("L", (4, 4), 0)).any()
    rgb = Image.new("RGB", (4, 4), (0, 0, 0))
    rgb.putpixel((2, 2), (255, 255, 255))
    assert to_mask(rgb).sum() == 1
    assert to_mask(Image.new("1", (3, 3), 1)).all()



def test_mask_levels_half_range_or_any_nonzero():
    """Half range counts where any pixel reaches it (an antialiased halo does not); a mask drawn in
    low values only (saved as 0 / 1, or dimmed) counts every nonzero pixel instead of being empty."""
    stroke = np.zeros((6, 6), np.uint8)
    stroke[2:4, 2:4] = 255
    stroke[1, 1:5] = 40  # a halo beside a full stroke: not drawn
    assert mask_from_levels(stroke, 255).sum() == 4
    ones = (stroke == 255).astype(np.uint8)  # the same mask saved as 0 / 1
    assert np.array_equal(to_mask(Image.fromarray(ones)), stroke == 255)
    assert np.array_equal(to_mask(Image.fromarray(ones * 100)), stroke == 255)
    assert np.array_equal(to_mask(Image.fromarray(ones).convert("RGB")), stroke == 255)
    assert np.array_equal(to_mask(Image.fromarray(ones.astype(np.float32), "F")), stroke == 255)  # 0 / 1 floats
    assert np.array_equal(mask_from_levels(np.where(stroke == 255, 0.3, 0.0), 1.0), stroke == 255)  # a soft [0, 1] mask
    assert not mask_from_levels(np.zeros((3, 3)), 255).any()
    assert not mask_from_levels(np.full((3, 3), np.nan), 1.0).any()


def _refined(working: np.ndarray, box=(slice(2, 5), slice(1, 4)), colour=(250, 10, 20)) -> np.ndarray:
    out = working.copy()
    out[box] = colour
    return out


def test_output_keeps_the_inputs_alpha_and_straight_colour():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (7, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 200
    rgba[0, 0, 3] = 0  # transparent: its colour is kept though invisible
    rgba[3, 2, 3] = 0  # transparent inside the changed box: not changed
    original = Image.fromarray(rgba, "RGBA")
    working = np.asarray(to_rgb(original))  # what the pipeline works on: over black
    out = in_input_mode(original, working, _refined(working, colour=(150, 10, 20)))  # a colour alpha 200 can show
    arr = np.asarray(out)
    assert out.mode == "RGBA" and out.size == original.size
    assert np.array_equal(arr[..., 3], rgba[..., 3])  # alpha as given
    changed = np.zeros((7, 6), bool)
    changed[2:5, 1:4] = True
    changed[3, 2] = False
    assert np.array_equal(arr[~changed], rgba[~changed])  # untouched pixels bit-identical, straight colour
    # a changed pixel, composited over black again, shows the refined colour (to rounding)
    back = np.asarray(to_rgb(out)).astype(int)
    assert np.abs(back[changed] - np.array([150, 10, 20])).max() <= 1
    assert np.array_equal(arr[3, 2], rgba[3, 2])
    # the straight colour is the nearest level to refined * 255 / alpha: 150, 10, 20 at alpha 200 are
    # 191.25, 12.75 and 25.5 -> 191, 13, 26 (rounded, not cut down: 191, 12, 25)
    assert arr[2, 1, :3].tolist() == [191, 13, 26]


def test_output_of_a_grey_input_is_grey():
    grey = Image.fromarray(np.arange(42, dtype=np.uint8).reshape(7, 6) * 5, "L")
    working = np.asarray(to_rgb(grey))
    out = in_input_mode(grey, working, _refined(working))
    assert out.mode == "L"
    arr = np.asarray(out)
    assert np.array_equal(arr[:2], np.asarray(grey)[:2])  # untouched rows identical
    assert arr[3, 2] == Image.new("RGB", (1, 1), (250, 10, 20)).convert("L").getpixel((0, 0))  # the colour's luma
    la = Image.merge("LA", (grey, Image.new("L", grey.size, 128)))
    out = in_input_mode(la, np.asarray(to_rgb(la)), _refined(np.asarray(to_rgb(la))))
    assert out.mode == "LA" and np.array_equal(np.asarray(out)[..., 1], np.full((7, 6), 128))
    rgb = Image.fromarray(np.asarray(working))
    assert in_input_mode(rgb, working, working).mode == "RGB"


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


def test_wide_greys_are_read_by_their_values_range(tmp_path):
    """A float or 32-bit picture is scaled by the range its values use (0..1, 0..255, 0..65535): a
    float TIFF saved in 0..255 came back all white (read as 0..1), and a float 0..1 mask with a soft
    0.3 halo counted the halo; other ranges (negative, beyond 65535) are one InputError."""
    grey = np.arange(0, 256, dtype=np.float32).reshape(16, 16)
    for scale in (1 / 255, 1.0, 257.0):
        img = Image.fromarray(grey * scale, "F")
        img.save(tmp_path / "g.tif")
        out = np.asarray(to_rgb(load_image(tmp_path / "g.tif")))[..., 0]
        assert np.abs(out.astype(int) - grey.astype(int)).max() <= 1, scale
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray((grey * 257).astype(np.int32), "I")))[..., 0], grey.astype(np.uint8))
    soft = np.where(grey >= 128, 1.0, 0.3).astype(np.float32)  # drawn at 1.0 with a 0.3 halo
    assert np.array_equal(to_mask(Image.fromarray(soft, "F")), grey >= 128)
    for bad in (grey * 1000.0, grey - 10.0):
        with pytest.raises(InputError, match="only 0..1, 0..255 or 0..65535"):
            to_rgb(Image.fromarray(bad.astype(np.float32), "F"))
    with pytest.raises(InputError, match="values 0..255000"):
        to_mask(Image.fromarray((grey * 1000).astype(np.int32), "I"))


def test_only_raster_formats_are_read():
    """An EPS upload (Pillow would hand it to Ghostscript) is refused as an unreadable image, while
    the raster formats read as before."""
    import io as _io

    from refine_by_align.io import open_image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    with pytest.raises(InputError, match="not a readable image"):
        open_image(eps, "image", "logo.eps")
    for fmt in ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF"):
        buf = _io.BytesIO()
        Image.new("RGB", (5, 4), (10, 200, 30)).save(buf, format=fmt)
        assert open_image(buf.getvalue()).size == (5, 4), fmt


def test_a_mask_drawn_dark_on_a_transparent_layer_says_how_it_is_read(tmp_path):
    """Black marks on a transparent layer (as paint programs save them) were refused as 'every
    pixel is 0', which the user sees is not so; the message says how a transparent mask is read."""
    from refine_by_align.io import load_inputs

    Image.new("RGB", (32, 32), (100, 100, 100)).save(tmp_path / "i.png")
    Image.new("RGB", (32, 32), (50, 60, 70)).save(tmp_path / "r.png")
    a = np.zeros((32, 32, 4), np.uint8)
    a[5:10, 5:10, 3] = 255  # opaque black marks, the rest transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "m.png")
    files = {"image": tmp_path / "i.png", "mask": tmp_path / "m.png", "reference": tmp_path / "r.png", "reference_mask": None}
    with pytest.raises(InputError, match=r"m\.png': mask is empty: a mask with transparency is read as its colour over black"):
        load_inputs(files)
    a[5:10, 5:10, :3] = 255  # white marks: read
    Image.fromarray(a, "RGBA").save(tmp_path / "m.png")
    assert load_inputs(files)[1].sum() == 25


def test_check_settings_bounds_steps_guidance_and_samples_at_both_ends():
    """The sampling settings' bounds, each side: steps 1..1000, guidance 0..50 (finite), samples
    at least 1; in range passes silently, out of range is one InputError naming the setting."""
    from refine_by_align.io import check_settings

    check_settings(1, 0.0, 1)
    check_settings(1000, 50.0, 8)
    for steps, guidance, samples, name in [(0, None, None, "steps"), (1001, None, None, "steps"), (2.0, None, None, "steps"),
                                          (None, -0.5, None, "guidance"), (None, 50.5, None, "guidance"), (None, float("inf"), None, "guidance"),
                                          (None, None, 0, "samples")]:
        with pytest.raises(InputError, match=name):
            check_settings(steps, guidance, samples)
