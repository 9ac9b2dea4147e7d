"""io.write_atomic: the one way files are written atomically (images, JSON, text, batch outputs)."""

import json
import os
import stat

import pytest
from PIL import Image

from refine_by_align.evaluation.bench import write_json_atomic
from refine_by_align.io import save_image_atomic, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_bytes_text_and_writer(tmp_path):
    assert write_atomic(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    write_atomic(tmp_path / "sub" / "b.txt", "h\u00e9")  # folder created, str written as UTF-8
    assert (tmp_path / "sub" / "b.txt").read_bytes() == "h\u00e9".encode("utf-8")
    write_atomic(tmp_path / "c.bin", lambda f: f.write(b"xyz"), fsync=True)
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "c.bin", "sub"]


def test_mode_is_what_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # 0666 & ~umask: 0644 under the usual umask
    write_atomic(tmp_path / "atomic", b"x")
    save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "img.png")
    write_json_atomic({"a": 1}, tmp_path / "m.json")
    assert _mode(tmp_path / "atomic") == _mode(plain)
    assert _mode(tmp_path / "img.png") == _mode(plain)
    assert _mode(tmp_path / "m.json") == _mode(plain)
    write_atomic(tmp_path / "chosen", b"x", mode=0o600)
    assert _mode(tmp_path / "chosen") == 0o600


def test_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def writer(f):
        f.write(b"half")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_atomic(target, writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_planted_symlink_at_the_old_temporary_name_is_not_followed(tmp_path):
    """The temporary names used to be predictable (``.NAME.tmpPID``, ``NAME.tmp``): a link planted
    there by someone else made the write go to the link's target. Now the temporary file is created
    exclusively under a fresh name; the planted link and its target stay as they were."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    planted = [
        out / f".out.png.tmp{os.getpid()}",  # io.save_image_atomic, bench / report JSON and text
        out / f".metrics.json.tmp{os.getpid()}",
        out / "state.json.tmp",  # training's JSON
    ]
    for link in planted:
        link.symlink_to(victim)
    save_image_atomic(Image.new("RGB", (4, 4), (1, 2, 3)), out / "out.png")
    write_json_atomic({"x": 1}, out / "metrics.json")
    write_atomic(out / "state.json", json.dumps({"step": 1}))
    assert victim.read_text() == "precious"
    for link in planted:
        assert link.is_symlink() and os.readlink(link) == str(victim)
    assert Image.open(out / "out.png").getpixel((0, 0)) == (1, 2, 3)
    assert json.loads((out / "metrics.json").read_text()) == {"x": 1}
    assert json.loads((out / "state.json").read_text()) == {"step": 1}
    assert not (out / "out.png").is_symlink()


def _noisy_rgb(seed: int = 0) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    smooth = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.int16)
    return Image.fromarray(np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8))


def test_outputs_keep_their_pixels_where_the_format_can(tmp_path):
    """PNG, TIFF, BMP and WebP outputs read back pixel for pixel (Pillow writes WebP lossy by
    default); a JPEG is written at quality 95 without chroma subsampling, far closer than Pillow's
    default (quality 75, 4:2:0); a GIF output is refused (256 colours) before anything is written."""
    import io as _io

    import numpy as np

    from refine_by_align.io import InputError, encode_image

    img = _noisy_rgb()
    a = np.asarray(img).astype(np.float64)
    for ext in (".png", ".tif", ".bmp", ".webp"):
        save_image_atomic(img, tmp_path / f"o{ext}")
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"o{ext}").convert("RGB")), np.asarray(img)), ext
        assert np.array_equal(np.asarray(Image.open(_io.BytesIO(encode_image(img, f"o{ext}"))).convert("RGB")), np.asarray(img)), ext

    def psnr(data) -> float:
        b = np.asarray(Image.open(_io.BytesIO(data)).convert("RGB")).astype(np.float64)
        return 10 * np.log10(255.0**2 / ((b - a) ** 2).mean())

    save_image_atomic(img, tmp_path / "o.jpg")
    ours = psnr((tmp_path / "o.jpg").read_bytes())
    buf = _io.BytesIO()
    img.save(buf, format="JPEG")
    assert ours > psnr(buf.getvalue()) + 3.0, (ours, psnr(buf.getvalue()))
    assert Image.open(tmp_path / "o.jpg").layer == [(1, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1)]  # 4:4:4
    assert psnr(encode_image(img, "o.jpeg")) == ours
    for write in (lambda: save_image_atomic(img, tmp_path / "o.gif"), lambda: encode_image(img, "o.gif")):
        with pytest.raises(InputError, match="at most 256 colours"):
            write()
    assert not (tmp_path / "o.gif").exists()
