"""Every bad input, at the command line (exit 2, one stderr line, no output file) and at the HTTP API
(4xx JSON, server still serving); odd-but-valid inputs accepted; property tests of the zoom-in
crop / paste-back and of the correspondence clean-up."""

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import refine_by_align.io  # noqa: F401 (sets Pillow's pixel limit on import: before the bomb tests lower it)
from refine_by_align.cli import main

IMG_SIZE = (64, 48)  # W, H
REF_SIZE = (40, 36)


# ---------------------------------------------------------------------------------------------------- inputs
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _zero_width_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _photo_like() -> Image.Image:
    """A smooth colour picture of the image's size with most of its pixels at middle levels (a copy
    of the image given as its mask)."""
    w, h = IMG_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([80 + 80 * xx / w, 70 + 60 * yy / h, 120 - 40 * xx / w], -1)
    rgb += np.random.default_rng(5).normal(0, 12, rgb.shape)  # (a photo's texture: thousands of colours)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _good(role: str) -> Image.Image:
    rng = np.random.default_rng({"image": 0, "reference": 1}.get(role, 2))
    if role == "image":
        return Image.fromarray(rng.integers(0, 256, (IMG_SIZE[1], IMG_SIZE[0], 3), dtype=np.uint8))
    if role == "reference":
        return Image.fromarray(rng.integers(0, 256, (REF_SIZE[1], REF_SIZE[0], 3), dtype=np.uint8))
    if role == "mask":
        m = np.zeros((IMG_SIZE[1], IMG_SIZE[0]), np.uint8)
        m[14:30, 20:40] = 255
        return Image.fromarray(m)
    m = np.zeros((REF_SIZE[1], REF_SIZE[0]), np.uint8)  # reference_mask
    m[4:32, 5:35] = 255
    return Image.fromarray(m)


def _bad_file(case: str, role: str) -> tuple[str, bytes]:
    """(file name, bytes) of a broken file standing in for ``role``."""
    good = _good(role).convert("RGB")
    png, jpg = _png(good), _jpeg(good)
    if case == "truncated_png":
        return "t.png", png[: len(png) // 2]
    if case == "truncated_jpeg":
        return "t.jpg", jpg[: len(jpg) // 2]
    if case == "corrupt_png":  # zeros over the compressed pixel data: broken zlib stream / CRC
        start = png.index(b"IDAT") + 8
        return "c.png", png[:start] + bytes(64) + png[start + 64:]
    if case == "corrupt_jpeg":  # garbage over the markers after SOI
        rng = np.random.default_rng(5)
        return "c.jpg", jpg[:2] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes() + jpg[302:]
    if case == "text_as_png":
        return "notes.png", b"these are my notes, not a picture\n"
    if case == "empty_file":
        return "empty.png", b""
    if case == "zero_size":
        return "zero.png", _zero_width_png()
    raise ValueError(case)


FILE_CASES = {
    "truncated_png": "cannot be decoded",
    "truncated_jpeg": "cannot be decoded",
    "corrupt_png": "cannot be decoded",
    "corrupt_jpeg": "not a readable image",
    "text_as_png": "not a readable image",
    "empty_file": "",  # CLI: 'not a readable image'; API: 'empty file'
    "zero_size": "not a readable image",
}
ROLES = ["image", "mask", "reference", "reference_mask"]


def _write_inputs(folder: Path, overrides: dict[str, tuple[str, bytes]] | None = None) -> dict[str, Path]:
    """The four input files; ``overrides`` replaces some by (name, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in ROLES:
        name, data = (overrides or {}).get(role) or (f"{role}.png", _png(_good(role)))
        paths[role] = folder / f"{role}-{name}"
        paths[role].write_bytes(data)
    return paths


def _content_cases(tmp_path):
    """Valid files with content no method can use: (overrides, extra settings, message)."""
    w, h = IMG_SIZE
    return {
        "one_by_one_image": ({"image": ("1.png", _png(Image.new("RGB", (1, 1))))}, {}, "too small"),
        "one_by_one_reference": ({"reference": ("1.png", _png(Image.new("RGB", (1, 1))))}, {}, "too small"),
        "mask_wrong_size": ({"mask": ("m.png", _png(Image.new("L", (w + 1, h), 255)))}, {}, "does not match the image"),
        "mask_empty": ({"mask": ("m.png", _png(Image.new("L", (w, h), 0)))}, {}, "mask is empty"),
        "mask_full": ({"mask": ("m.png", _png(Image.new("L", (w, h), 255)))}, {}, "covers the whole image"),
        "mask_inverted": ({"mask": ("m.png", _png(Image.fromarray(255 - np.asarray(_good("mask")))))}, {}, "is it inverted?"),
        "mask_is_a_photo": ({"mask": ("m.png", _png(_photo_like()))}, {}, "this looks like a photo, not a mask"),
        "reference_mask_empty": ({"reference_mask": ("r.png", _png(Image.new("L", REF_SIZE, 0)))}, {}, "reference mask is empty"),
        "reference_mask_wrong_size": ({"reference_mask": ("r.png", _png(Image.new("L", (9, 9), 255)))}, {}, "does not match the reference"),
        "reference_alpha_empty": ({"reference": ("ra.png", _png(Image.new("RGBA", REF_SIZE, (9, 9, 9, 0))))}, {"no_ref_mask": True}, "alpha channel is empty"),
        "steps_zero": ({}, {"steps": "0"}, "steps must be an integer in 1..1000"),
        "steps_negative": ({}, {"steps": "-3"}, "steps must be an integer in 1..1000"),
        "guidance_nan": ({}, {"guidance": "nan"}, "guidance must be a finite number"),
        "guidance_negative": ({}, {"guidance": "-0.5"}, "guidance must be a finite number"),
        "guidance_inf": ({}, {"guidance": "inf"}, "guidance must be a finite number"),
        "guidance_huge": ({}, {"guidance": "1e39"}, "guidance must be a finite number in 0..50"),
        "seed_negative": ({}, {"seed": "-1"}, "seed must be an integer in 0..9223372036854775807"),
        "seed_past_2_63": ({}, {"seed": "18446744073709551616"}, "seed must be an integer in 0..9223372036854775807"),
    }


# ---------------------------------------------------------------------------------------------------- CLI
def _cli(paths: dict[str, Path], out: Path, extra: dict[str, str] | None = None, no_ref_mask=False) -> list[str]:
    args = ["-q", "refine", "--model", "tiny", "--image", str(paths["image"]), "--mask", str(paths["mask"]),
            "--reference", str(paths["reference"]), "--output", str(out)]
    if not no_ref_mask:
        args += ["--reference-mask", str(paths["reference_mask"])]
    for k, v in (extra or {}).items():
        args += [f"--{k}", v]
    return args


def _assert_cli_refuses(args, out: Path, capsys, message: str, name_in_error: str | None = None):
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    assert message in err[0], err
    if name_in_error:
        assert name_in_error in err[0], err
    assert not out.exists() and not list(out.parent.glob("*.compare.png")) and not list(out.parent.glob(".*tmp*"))


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_cli_refuses_broken_files(tmp_path, capsys, case, role):
    paths = _write_inputs(tmp_path / "in", {role: _bad_file(case, role)})
    out = tmp_path / "out" / "o.png"
    message = FILE_CASES[case] or "not a readable image"
    _assert_cli_refuses(_cli(paths, out), out, capsys, message, name_in_error=str(paths[role]))


@pytest.mark.parametrize("huge", [(200, 200), (80, 80)])  # over 2x the limit (error), over 1x (warning)
def test_cli_refuses_decompression_bomb(tmp_path, capsys, monkeypatch, huge):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # the normal inputs are <= 64x48 = 3072 px
    paths = _write_inputs(tmp_path / "in", {"reference": ("bomb.png", _png(Image.new("RGB", huge)))})
    out = tmp_path / "o.png"
    _assert_cli_refuses(_cli(paths, out), out, capsys, "decompression bomb", name_in_error="reference")


@pytest.mark.parametrize("case", sorted(_content_cases(Path("."))))
def test_cli_refuses_unusable_content_and_settings(tmp_path, capsys, case):
    overrides, extra, message = _content_cases(tmp_path)[case]
    extra = dict(extra)
    no_ref_mask = extra.pop("no_ref_mask", False)
    paths = _write_inputs(tmp_path / "in", overrides)
    out = tmp_path / "o.png"
    _assert_cli_refuses(_cli(paths, out, extra, no_ref_mask), out, capsys, message)


def _pickle_model(tmp_path: Path) -> Path:
    import pickle

    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel

    folder = tmp_path / "model"
    RefineByAlignModel.from_model_config(get_config("tiny")).save_pretrained(folder, safe_serialization=True)
    (folder / "extra_weights.bin").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    return folder


def test_cli_refuses_model_folder_with_pickle(tmp_path, capsys):
    folder = _pickle_model(tmp_path)
    paths = _write_inputs(tmp_path / "in")
    out = tmp_path / "o.png"
    args = _cli(paths, out)
    args[args.index("--model") + 1] = str(folder)
    _assert_cli_refuses(args, out, capsys, "pickle")


def test_server_refuses_model_folder_with_pickle(tmp_path):
    from refine_by_align.io import InputError
    from refine_by_align.server import load_pipeline

    with pytest.raises(InputError, match="pickle"):
        load_pipeline(str(_pickle_model(tmp_path)))


def _sixteen_bit() -> dict[str, tuple[str, bytes]]:
    w, h = IMG_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    deep = ((xx * 1000 + yy * 300) % 65536).astype(np.uint16)
    mask = np.zeros((h, w), np.uint16)
    mask[14:30, 20:40] = 65535
    return {"image": ("deep.png", _png(Image.fromarray(deep))), "mask": ("deepmask.png", _png(Image.fromarray(mask)))}


def _cmyk() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(3)
    cmyk = Image.frombytes("CMYK", REF_SIZE, rng.integers(0, 256, REF_SIZE[0] * REF_SIZE[1] * 4, dtype=np.uint8).tobytes())
    return {"reference": ("cmyk.jpg", _jpeg(cmyk))}


ACCEPTED = {"sixteen_bit_png": _sixteen_bit, "cmyk_jpeg": _cmyk}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_cli_accepts_16bit_png_and_cmyk_jpeg(tmp_path, capsys, case):
    overrides = ACCEPTED[case]()
    if case == "sixteen_bit_png":
        assert Image.open(io.BytesIO(overrides["image"][1])).mode.startswith("I")
    else:
        assert Image.open(io.BytesIO(overrides["reference"][1])).mode == "CMYK"
    paths = _write_inputs(tmp_path / "in", overrides)
    out = tmp_path / "o.png"
    assert main(_cli(paths, out, {"steps": "1"})) == 0, capsys.readouterr().err
    assert Image.open(out).size == IMG_SIZE


# ---------------------------------------------------------------------------------------------------- API
@pytest.fixture(scope="module")
def api(request):
    from fastapi.testclient import TestClient

    from refine_by_align.server import ServerSettings, create_app

    tiny = request.getfixturevalue("tiny_pipe")
    with TestClient(create_app(tiny, ServerSettings(model_name="tiny"))) as client:
        yield client


def _post(api, paths_or_bytes: dict[str, tuple[str, bytes]], data=None, endpoint="/api/refine"):
    files = {role: (name, blob, "application/octet-stream") for role, (name, blob) in paths_or_bytes.items()}
    return api.post(endpoint, files=files, data=data or {})


def _api_files(overrides=None, no_ref_mask=False) -> dict[str, tuple[str, bytes]]:
    files = {role: (f"{role}.png", _png(_good(role))) for role in ROLES}
    files.update(overrides or {})
    if no_ref_mask:
        files.pop("reference_mask")
    return files


def _assert_api_refuses(api, response, message: str, name: str | None = None):
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert message in error, error
    if name:
        assert name in error, error
    assert api.get("/api/health").status_code == 200


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_api_refuses_broken_files(api, case, role):
    name, blob = _bad_file(case, role)
    r = _post(api, _api_files({role: (name, blob)}))
    _assert_api_refuses(api, r, FILE_CASES[case] or "empty file", name=f"{role} '{name}'")


@pytest.mark.parametrize("huge", [(200, 200), (80, 80)])
def test_api_refuses_decompression_bomb(api, monkeypatch, huge):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    r = _post(api, _api_files({"reference": ("bomb.png", _png(Image.new("RGB", huge)))}))
    assert r.status_code == 413
    _assert_api_refuses(api, r, "decompression bomb", name="reference 'bomb.png'")


@pytest.mark.parametrize("endpoint", ["/api/refine", "/api/align"])
@pytest.mark.parametrize("case", sorted(_content_cases(Path("."))))
def test_api_refuses_unusable_content_and_settings(api, tmp_path, case, endpoint):
    overrides, extra, message = _content_cases(tmp_path)[case]
    extra = dict(extra)
    no_ref_mask = extra.pop("no_ref_mask", False)
    r = _post(api, _api_files(overrides, no_ref_mask), extra, endpoint)
    _assert_api_refuses(api, r, message)


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_api_accepts_16bit_png_and_cmyk_jpeg(api, case):
    r = _post(api, _api_files(ACCEPTED[case]()), {"steps": "1"})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == IMG_SIZE


def test_api_keeps_serving_after_every_refusal(api):
    r = _post(api, _api_files(), {"steps": "1"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert json.loads(r.headers["x-timings"])["total"] > 0


# ---------------------------------------------------------------------------------------------------- properties
@st.composite
def image_and_mask(draw):
    h = draw(st.integers(8, 48))
    w = draw(st.integers(8, 48))
    image = draw(hnp.arrays(np.uint8, (h, w, 3), elements=st.integers(0, 255)))
    mask = draw(hnp.arrays(np.bool_, (h, w), elements=st.booleans()))
    if not mask.any():
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return image, mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    data=image_and_mask(),
    grow=st.floats(0.5, 4.0),
    min_size=st.integers(1, 64),
    patch_side=st.integers(1, 40),
    dilate=st.integers(0, 5),
    feather=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_zoom_crop_and_paste_back_properties(data, grow, min_size, patch_side, dilate, feather, seed):
    from refine_by_align.zoom import crop_resize, mask_bbox, paste_back, zoom_box

    image, mask = data
    h, w = mask.shape
    box = zoom_box(mask, grow=grow, min_size=min_size)
    assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
    assert box.width == box.height <= min(h, w)  # square, inside the image
    b = mask_bbox(mask)
    if grow >= 1 and max(b.width, b.height) * grow <= min(h, w):  # room enough: the crop holds the whole mask
        assert box.x0 <= b.x0 and box.y0 <= b.y0 and b.x1 <= box.x1 and b.y1 <= box.y1
    crop = crop_resize(image, box, 16)
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    cmask = crop_resize(mask, box, 16)
    assert cmask.shape == (16, 16) and cmask.dtype == bool
    patch = np.random.default_rng(seed).integers(0, 256, (patch_side, patch_side, 3), dtype=np.uint8)
    out = paste_back(image, patch, box, mask, dilate, feather)
    assert out.shape == image.shape and out.dtype == np.uint8
    if dilate > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        region = cv2.dilate(mask.astype(np.uint8), k).astype(bool)
    else:
        region = mask
    assert np.array_equal(out[~region], image[~region])  # outside the dilated mask: bit-identical
    inside_box = np.zeros_like(mask)
    inside_box[box.y0:box.y1, box.x0:box.x1] = True
    assert np.array_equal(out[~inside_box], image[~inside_box])  # and nothing outside the crop moves


@settings(max_examples=80, deadline=None)
@given(
    raw=st.integers(1, 12).flatmap(
        lambda g: hnp.arrays(np.float64, (g, g), elements=st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), st.just(0.0), st.just(1.0)))
    ),
    threshold=st.floats(0.0, 1.0),
    peak_ratio=st.floats(1.0, 10.0),
)
def test_clean_correspondence_properties(raw, threshold, peak_ratio):
    from scipy import ndimage

    from refine_by_align.pipelines.alignment import clean_correspondence

    mask, norm = clean_correspondence(raw, threshold=threshold, peak_ratio=peak_ratio)
    g = raw.shape[0]
    assert mask.shape == (g, g) and mask.dtype == bool and mask.any()
    assert norm.shape == (g, g) and norm.dtype == np.float32
    assert np.isfinite(norm).all() and norm.min() >= 0.0 and norm.max() <= 1.0
    _, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    assert n == 1  # exactly one 8-connected blob
