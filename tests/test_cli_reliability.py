"""Issue 16 items 2, 3, 5, 6 and 10 at the command line, in batch mode and in the pipeline's own
checks; issue 17 item 2 (the packaging metadata). Every refusal: exit 2, one stderr line, before any
computation (the model loader is replaced by one that fails the test), and no output written."""

import json
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from refine_by_align.commands import common as cli_common  # the commands' model loader
from refine_by_align.batch import ERRORS_FILE, run_batch
from refine_by_align.cli import main
from refine_by_align.io import InputError, check_output_folder, check_output_path, same_file
from refine_by_align.pipelines.pipeline import check_settings

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- helpers
def _inputs(folder: Path) -> dict[str, Path]:
    """A 48x40 image with a box mask, a 30x36 reference and its mask, as PNG files."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}.png" for k in ("image", "mask", "reference", "reference_mask")}
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths["image"])
    m = np.zeros((40, 48), np.uint8)
    m[10:22, 12:30] = 255
    Image.fromarray(m).save(paths["mask"])
    Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(paths["reference"])
    r = np.zeros((36, 30), np.uint8)
    r[4:32, 3:27] = 255
    Image.fromarray(r).save(paths["reference_mask"])
    return paths


def _refine(paths, out, *extra, command="refine", ref_mask=True, model="tiny") -> list[str]:
    args = ["-q", command, "--model", model, "--image", str(paths["image"]), "--mask", str(paths["mask"]),
            "--reference", str(paths["reference"]), "--output", str(out)]
    if ref_mask:
        args += ["--reference-mask", str(paths["reference_mask"])]
    return args + [str(a) for a in extra]


@pytest.fixture
def no_compute(monkeypatch):
    """Any refusal must come before the model is loaded."""

    def forbidden(*a, **k):
        raise AssertionError("the model was loaded: the error was not found before computing")

    monkeypatch.setattr(cli_common, "load_model", forbidden)


def _refused(args, capsys, *needles) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err
    return err[0]


def _digest(paths) -> dict:
    return {k: Path(p).read_bytes() for k, p in paths.items()}


# ---------------------------------------------------------------------------------------------------- item 5: seeds, timesteps
BAD_SEEDS = ["18446744073709551616", "-9223372036854775809", "-1", "9223372036854775808"]


@pytest.mark.parametrize("seed", BAD_SEEDS)
@pytest.mark.parametrize("command", ["refine", "align"])
def test_seed_out_of_range_is_one_line_exit_2(tmp_path, capsys, no_compute, seed, command):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "out" / "o.png"
    _refused(_refine(paths, out, "--seed", seed, command=command), capsys, "--seed", "0..9223372036854775807", seed)
    assert not out.parent.exists()


@pytest.mark.parametrize("argv", [
    ["show-pairs", "--seed", "-1", "--output", "x.png"],
    ["make-cases", "--source", "nowhere", "--output", "cases", "--seed", "18446744073709551616"],
])
def test_seed_range_holds_for_every_command(tmp_path, capsys, argv):
    argv = [str(tmp_path / a) if a in ("x.png", "cases") else a for a in argv]
    _refused(argv, capsys, "--seed")


@pytest.mark.parametrize("flag, value, needle", [("--upscale", "0", "1..8"), ("--upscale", "9", "1..8"), ("--image-scale", "1.5", "(0, 1]")])
def test_make_cases_scale_out_of_range_is_one_line_exit_2(tmp_path, capsys, flag, value, needle):
    argv = ["make-cases", "--source", str(tmp_path / "nowhere"), "--output", str(tmp_path / "cases"), flag, value]
    _refused(argv, capsys, flag, needle, value)
    assert not (tmp_path / "cases").exists()


def test_largest_seed_is_accepted(tmp_path, capsys):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "o.png"
    assert main(_refine(paths, out, "--seed", str(2**63 - 1), "--steps", "1", "--samples", "1")) == 0, capsys.readouterr().err
    assert Image.open(out).size == (48, 40)


@pytest.mark.parametrize("argv_extra, flag", [
    (("--alignment-timestep", "5000"), "--alignment-timestep 5000"),
    (("--alignment-timestep", "-1"), "--alignment-timestep -1"),
])
def test_align_timestep_out_of_range(tmp_path, capsys, argv_extra, flag):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "c.png"
    _refused(_refine(paths, out, *argv_extra, command="align", model="default"), capsys, flag, "out of range 0..")
    assert not out.exists()


def test_refine_align_timestep_out_of_range(tmp_path, capsys):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "o.png"
    _refused(_refine(paths, out, "--alignment-timestep", "-3", model="default"), capsys, "--alignment-timestep -3", "out of range 0..")
    assert not out.exists() and not list(tmp_path.glob("*.compare.png"))


def test_pipeline_timestep_out_of_range_is_an_input_error(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    n = tiny_pipe.model.cfg.num_train_timesteps
    p = tiny_pipe.prepare(image, mask, reference)
    for t in (n, -3):
        with pytest.raises(InputError, match="out of range"):
            tiny_pipe.align(image, mask, reference, alignment_timestep=t)
        with pytest.raises(InputError, match="out of range"):
            tiny_pipe.alignment_maps(p, [t], None)


# ---------------------------------------------------------------------------------------------------- item 2: guidance bounds
@pytest.mark.parametrize("guidance", [1e39, 1e308, 50.5, float("inf"), 10**400, -0.1, True])
def test_check_settings_bounds_guidance(guidance):
    with pytest.raises(InputError, match=r"guidance must be a finite number in 0\.\.50"):
        check_settings(None, guidance)


@pytest.mark.parametrize("guidance", [0, 0.0, 1.0, 7.5, 50, np.float32(3.0)])
def test_check_settings_accepts_sensible_guidance(guidance):
    check_settings(2, guidance, 1)


@pytest.mark.parametrize("guidance", ["1e39", "1e308", "51"])
def test_cli_refuses_huge_guidance(tmp_path, capsys, no_compute, guidance):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "o.png"
    _refused(_refine(paths, out, "--guidance", guidance), capsys, "--guidance must be a finite number in 0..50")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- item 3: no input is overwritten
@pytest.mark.parametrize("case", [
    "output_is_image", "output_is_mask_via_dotdot", "output_is_symlink_to_reference", "output_is_hardlink_to_reference_mask",
    "compare_is_output", "correspondence_is_output", "correspondence_is_compare", "default_compare_is_image",
])
def test_refine_refuses_an_output_that_is_an_input_or_another_output(tmp_path, capsys, no_compute, case):
    paths = _inputs(tmp_path / "in")
    before = _digest(paths)
    out, extra, needles = tmp_path / "o.png", [], []
    if case == "output_is_image":
        out, needles = paths["image"], ["--output", "--image", "overwrite an input"]
    elif case == "output_is_mask_via_dotdot":
        (tmp_path / "in" / "sub").mkdir()
        out, needles = tmp_path / "in" / "sub" / ".." / "mask.png", ["--mask", "overwrite an input"]
    elif case == "output_is_symlink_to_reference":
        out = tmp_path / "link.png"
        out.symlink_to(paths["reference"])
        needles = ["--reference", "overwrite an input"]
    elif case == "output_is_hardlink_to_reference_mask":
        out = tmp_path / "hard.png"
        os.link(paths["reference_mask"], out)
        needles = ["--reference-mask", "overwrite an input"]
    elif case == "compare_is_output":
        extra, needles = ["--compare", out], ["--compare", "--output", "same file"]
    elif case == "correspondence_is_output":
        extra, needles = ["--region", out], ["--region", "--output", "same file"]
    elif case == "correspondence_is_compare":
        extra, needles = ["--region", tmp_path / "c.png", "--compare", tmp_path / "c.png"], ["same file"]
    elif case == "default_compare_is_image":  # --output X.png writes X.compare.png too
        shutil.copy(paths["image"], tmp_path / "in" / "x.compare.png")
        paths["image"] = tmp_path / "in" / "x.compare.png"
        before = _digest(paths)
        out, needles = tmp_path / "in" / "x.png", ["compare", "--image", "overwrite an input"]
    _refused(_refine(paths, out, *extra), capsys, *needles)
    assert _digest(paths) == before
    if case in ("compare_is_output", "correspondence_is_output", "correspondence_is_compare"):
        assert not (tmp_path / "o.png").exists() and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("case", ["output_is_reference", "heatmap_is_output", "heatmap_is_mask"])
def test_align_refuses_an_output_that_is_an_input_or_another_output(tmp_path, capsys, no_compute, case):
    paths = _inputs(tmp_path / "in")
    before = _digest(paths)
    out, extra = tmp_path / "c.png", []
    if case == "output_is_reference":
        out = paths["reference"]
    elif case == "heatmap_is_output":
        extra = ["--heatmap", out]
    else:
        extra = ["--heatmap", paths["mask"]]
    _refused(_refine(paths, out, *extra, command="align"), capsys, "refine-by-align align: error:")
    assert _digest(paths) == before and not (tmp_path / "c.png").exists()


class NegateMask:
    """A fast stand-in for the pipeline: inverts the masked pixels."""

    def __call__(self, image, mask, reference, reference_mask=None, **kw):
        from types import SimpleNamespace

        arr = np.asarray(image.convert("RGB")).copy()
        arr[mask] = 255 - arr[mask]
        return SimpleNamespace(image=Image.fromarray(arr))


def _case(folder: Path, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    m = np.zeros((40, 48), np.uint8)
    m[10:22, 12:30] = 255
    Image.fromarray(m).save(folder / f"{name}_mask.png")
    Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(folder / f"{name}_ref.png")


def _job(name, **extra):
    return {"image": f"{name}.png", "mask": f"{name}_mask.png", "reference": f"{name}_ref.png", **extra}


def test_batch_never_overwrites_an_input(tmp_path):
    """The issue's case: the output folder is the manifest's folder and output names equal input names."""
    for n, name in enumerate(("a", "b", "c", "d")):
        _case(tmp_path, name, n)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    inputs = {p: p.read_bytes() for p in tmp_path.glob("*.png")}
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps(j) for j in [
        _job("a", output="b_mask.png"),  # line 1: another job's input (read after this job would run)
        _job("b", output="b.png"),  # line 2: its own input
        _job("c", output="c_out.png"),  # line 3: fine
        _job("d", output="real/d.png"),  # line 4: fine
        _job("d", output="link/d.png", seed=1),  # line 5: line 4's output through a symlinked folder
    ]) + "\n")
    s = run_batch(manifest, tmp_path, NegateMask(), progress=False)
    assert (s["done"], s["failed"]) == (2, 3), s
    assert {p: p.read_bytes() for p in inputs} == inputs  # every input as it was
    assert (tmp_path / "c_out.png").is_file() and (tmp_path / "real" / "d.png").is_file()
    errors = {e["line"]: e["error"] for e in map(json.loads, (tmp_path / ERRORS_FILE).read_text().splitlines())}
    assert "line 2's mask file" in errors[1] and "refusing to overwrite an input" in errors[1]
    assert "this job's image file" in errors[2]
    assert "same file as the output of line 4" in errors[5]
    assert set(errors) == {1, 2, 5}


def test_batch_refuses_huge_guidance_and_bad_seeds_as_job_errors(tmp_path):
    _case(tmp_path / "in", "a", 0)
    manifest = tmp_path / "jobs.jsonl"
    jobs = [_job("in/a", guidance=1e39), _job("in/a", guidance=10**400), _job("in/a", seed=-1),
            _job("in/a", seed=2**64), _job("in/a", output="ok.png")]
    manifest.write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    s = run_batch(manifest, tmp_path / "out", NegateMask(), progress=False)
    assert (s["done"], s["failed"]) == (1, 4), s
    errors = {e["line"]: e["error"] for e in map(json.loads, (tmp_path / "out" / ERRORS_FILE).read_text().splitlines())}
    assert "0..50" in errors[1] and "0..50" in errors[2]
    assert "seed must be an integer in 0..2^63-1" in errors[3] and "seed must be" in errors[4]


# ---------------------------------------------------------------------------------------------------- item 6: outputs that cannot be written
@pytest.mark.parametrize("where", ["proc", "sys", "parent_is_file", "grandparent_is_file"])
def test_unwritable_output_is_refused_before_computing(tmp_path, capsys, no_compute, where):
    paths = _inputs(tmp_path / "in")
    if where == "proc":
        out = Path("/proc/rba-test.png")
    elif where == "sys":
        if not Path("/sys").is_dir():
            pytest.skip("no /sys here")
        out = Path("/sys/rba-test.png")
    elif where == "parent_is_file":
        out = paths["image"] / "o.png"
    else:
        out = paths["mask"] / "deeper" / "o.png"
    _refused(_refine(paths, out), capsys, "--output", "cannot be written")
    assert not (tmp_path / "o.compare.png").exists()


def test_compare_under_proc_leaves_no_output(tmp_path, capsys, no_compute):
    """Issue 16 item 7's example: found before anything is computed or written."""
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "out" / "o.png"
    _refused(_refine(paths, out, "--compare", "/proc/c.png"), capsys, "--compare", "/proc")
    assert not out.exists() and not out.parent.exists()


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_special_existing_output_file_is_refused():
    with pytest.raises(InputError, match="not a regular file"):
        check_output_path("/dev/null", "--output")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root can write anywhere")
def test_read_only_folder_is_refused(tmp_path, capsys, no_compute):
    paths = _inputs(tmp_path / "in")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _refused(_refine(paths, ro / "sub" / "o.png"), capsys, "not writable", str(ro))
    finally:
        ro.chmod(0o700)


def test_folder_refused_where_access_says_no(tmp_path, capsys, no_compute, monkeypatch):
    """The os.access check (root passes the chmod test above, so simulate a read-only folder)."""
    paths = _inputs(tmp_path / "in")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro else real(p, mode, *a, **k))
    _refused(_refine(paths, ro / "o.png"), capsys, "--output", f"folder '{ro}' is not writable")


def test_output_folder_that_does_not_exist_yet_is_fine(tmp_path):
    assert check_output_path(tmp_path / "a" / "b" / "o.png") == tmp_path / "a" / "b" / "o.png"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["batch", "demo", "bench-quality", "grid-search"])
def test_unwritable_output_folder_of_folder_commands(tmp_path, capsys, no_compute, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "mask": "b.png", "reference": "c.png"}) + "\n")
    argv = {
        "batch": ["batch", str(manifest), "--output", str(blocker / "out")],
        "demo": ["demo", "--output", str(blocker / "out")],
        "bench-quality": ["bench-quality", str(tmp_path), "--method", "keep", "--output", str(blocker / "out")],
        "grid-search": ["grid-search", str(tmp_path), "--output", str(blocker / "out")],
    }[command]
    _refused(["-q", *argv], capsys, "--output", "is a file, not a folder")


def test_batch_output_folder_checked_by_run_batch_too(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _case(tmp_path, "a", 0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(_job("a")) + "\n")
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_batch(manifest, blocker / "out", NegateMask(), progress=False)
    with pytest.raises(InputError, match="cannot be written"):
        check_output_folder("/proc/rba-out")


def test_same_file():
    assert same_file(__file__, Path(__file__).parent / ".." / Path(__file__).parent.name / Path(__file__).name)
    assert not same_file(__file__, Path(__file__).with_name("nonexistent.py"))


# ---------------------------------------------------------------------------------------------------- item 10: transparent reference
def test_transparent_reference_names_the_file_and_its_alpha(tmp_path, capsys, no_compute):
    paths = _inputs(tmp_path / "in")
    clear = tmp_path / "in" / "clear.png"
    Image.new("RGBA", (30, 36), (10, 20, 30, 0)).save(clear)
    paths["reference"] = clear
    err = _refused(_refine(paths, tmp_path / "o.png", ref_mask=False), capsys, "alpha channel is empty", str(clear))
    assert "reference_mask" not in err and "--reference-mask '" not in err


def test_transparent_reference_in_batch(tmp_path, tiny_pipe):
    _case(tmp_path, "a", 0)
    Image.new("RGBA", (30, 36), (10, 20, 30, 0)).save(tmp_path / "a_ref.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(_job("a")) + "\n")
    s = run_batch(manifest, tmp_path / "out", tiny_pipe, progress=False)
    assert s["failed"] == 1
    error = json.loads((tmp_path / "out" / ERRORS_FILE).read_text().splitlines()[0])["error"]
    assert "alpha channel is empty" in error and "a_ref.png" in error and "reference_mask" not in error


# ---------------------------------------------------------------------------------------------------- issue 17 item 2: packaging
def test_pyproject_uses_spdx_license_and_a_setuptools_that_reads_it():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"  # the SPDX string form, not the deprecated table
    req = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert req, data["build-system"]
    version = req[0].split(">=")[1].split(",")[0]
    assert tuple(int(x) for x in version.split(".")[:1]) >= (77,), req  # PEP 639 support came in setuptools 77


# ---------------------------------------------------------------------------------------------------- item 14: sizes from headers
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and carries almost none of them: its size
    is readable from the header, decoding its pixels fails."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    stream = zlib.compressobj()  # one row, and the compressed stream left unfinished
    idat = stream.compress(b"\0" + b"\x80" * (3 * width)) + stream.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("command", ["refine", "align"])
def test_mask_size_is_checked_from_the_headers_before_decoding(tmp_path, capsys, no_compute, command):
    """A 7900x7900 image (under the pixel cap) whose mask has the wrong size: the mismatch is found
    from the headers, before the image's pixels are decoded (here they could not be: had the image
    been decoded first, the error would be about its pixels)."""
    paths = _inputs(tmp_path / "in")
    paths["image"] = tmp_path / "in" / "huge.png"
    paths["image"].write_bytes(_png_header_only(7900, 7900))
    _refused(_refine(paths, tmp_path / "out.png", command=command), capsys,
             f"mask '{paths['mask']}': size 48x40 does not match the image 7900x7900")
    assert not (tmp_path / "out.png").exists()


def test_reference_mask_size_is_checked_from_the_headers(tmp_path, capsys, no_compute):
    paths = _inputs(tmp_path / "in")
    paths["reference"] = tmp_path / "in" / "ref.png"
    paths["reference"].write_bytes(_png_header_only(3000, 2000))
    _refused(_refine(paths, tmp_path / "out.png"), capsys, "reference_mask", "size 30x36 does not match the reference 3000x2000")


def test_load_inputs_reads_headers_first_and_decodes_after(tmp_path):
    """io.load_inputs: header sizes compared before ``before_decode`` runs; a rotated-by-EXIF pair
    (sizes swapped in the header) is not refused early; decoding problems come after."""
    from refine_by_align.io import load_inputs

    paths = _inputs(tmp_path / "in")
    calls = []
    files = {k: (Path(p).read_bytes(), Path(p).name) for k, p in paths.items()}
    image, mask, reference, ref_mask, names = load_inputs(files, before_decode=lambda: calls.append("decode"))
    assert calls == ["decode"] and image.size == (48, 40) and mask.shape == (40, 48) and ref_mask.shape == (36, 30)
    assert names == {k: f"{k}.png" for k in paths}

    bad = dict(files, mask=(Image.new("L", (10, 10), 255).tobytes(), "raw.bin"))  # not an image at all
    calls.clear()
    with pytest.raises(InputError, match="mask 'raw.bin': not a readable image"):
        load_inputs(bad, before_decode=lambda: calls.append("decode"))
    assert calls == []
    cut = dict(files, image=(_png_header_only(48, 40), "cut.png"))
    with pytest.raises(InputError, match="image 'cut.png': cannot be decoded"):
        load_inputs(cut, before_decode=lambda: calls.append("decode"))
    assert calls == ["decode"]  # the sizes agreed: only the pixels were wrong

    # a JPEG stored 40x48 with EXIF orientation 6 (rotated 90 degrees) is 48x40 once decoded
    import io as _io

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = _io.BytesIO()
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(buf, format="JPEG", exif=exif.tobytes())
    image, mask, *_ = load_inputs(dict(files, image=(buf.getvalue(), "rotated.jpg")))
    assert image.size == (48, 40) and mask.shape == (40, 48)


# ---------------------------------------------------------------------------------------------------- item 8: tiny images
def _default_pipe():
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    pipe = RefineByAlignPipeline.from_pretrained("default")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("blob", [(slice(15, 16), slice(0, 16)), (slice(14, 16), slice(14, 16)), (slice(15, 16), slice(10, 12))])
def test_alignment_blob_on_no_reference_pixel_still_gives_a_region(blob):
    """An 8x8 reference seen through a 9x9 box: a blob in the last token row or column maps to no
    reference pixel. M* is then the strongest pixel, never empty (an empty M* was 'ValueError: mask
    is empty' from the zoom code)."""
    pipe = _default_pipe()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True  # (half the image: the most a mask may mark)
    p = pipe.prepare(img, mask, img, np.ones((8, 8), bool))
    g = pipe.model.cfg.grid_size
    raw = np.zeros((g, g), np.float32)
    raw[blob] = 1.0
    m_star, heat, grid_mask, _ = pipe.region_on_reference(p, raw)
    assert grid_mask.any() and m_star.any() and m_star.shape == (8, 8)
    assert m_star.sum() >= 1 and heat.shape == (8, 8)


def test_8x8_image_with_all_but_one_pixel_masked_is_refused_and_half_is_refined(tmp_path, capsys):
    """Issue 16 item 8 end to end: the shipped model, the image as its own reference. The mask on
    all but one pixel (it crashed once) is one clear line, exit 2 (a mask over most of the image is
    taken for an inverted one); the mask on half the image is refined: exit 0 and a result of the
    input's size."""
    rng = np.random.default_rng(0)
    img = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(img)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "ref_mask.png")
    out = tmp_path / "out.png"
    argv = ["-q", "refine", "--model", "default", "--image", str(img), "--mask", str(tmp_path / "mask.png"),
            "--reference", str(img), "--reference-mask", str(tmp_path / "ref_mask.png"), "--output", str(out),
            "--alignment", "attention", "--steps", "1", "--samples", "1"]
    m = np.full((8, 8), 255, np.uint8)
    m[5, 5] = 0
    Image.fromarray(m).save(tmp_path / "mask.png")
    _refused(argv, capsys, "the mask marks 98.4% of the image", "is it inverted?")
    assert not out.exists()
    m[:, 4:] = 0
    Image.fromarray(m).save(tmp_path / "mask.png")
    assert main(argv) == 0, capsys.readouterr().err
    assert Image.open(out).size == (8, 8)


# ---------------------------------------------------------------------------------------------------- item 7: all outputs or none
def test_output_format_that_cannot_hold_the_picture_is_refused_before_computing(tmp_path, capsys, no_compute):
    """MSP holds 1-bit images only: the compare picture could never be written. Refused before any
    work (it used to be found after --output had been written, as a traceback)."""
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "out" / "o.png"
    _refused(_refine(paths, out, "--compare", tmp_path / "c.msp"), capsys, "compare '", "c.msp", "cannot be written as MSP")
    assert not out.exists() and not (tmp_path / "c.msp").exists()


def test_save_images_atomic_writes_all_or_none(tmp_path):
    from refine_by_align.io import save_images_atomic

    rgb = Image.new("RGB", (8, 8), (10, 20, 30))
    (tmp_path / "old.png").write_bytes(b"previous")
    # the second cannot be encoded: nothing written, the existing file untouched
    with pytest.raises(InputError, match="second '.*c.msp': the image cannot be written as MSP"):
        save_images_atomic([(rgb, tmp_path / "old.png", "first"), (rgb, tmp_path / "c.msp", "second")])
    # the third's folder cannot be created (a file is in the way): nothing written either
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(InputError, match="third '.*blocker/x.png': cannot be written"):
        save_images_atomic([(rgb, tmp_path / "old.png", "first"), (rgb, tmp_path / "new.png", "second"),
                            (rgb, tmp_path / "blocker" / "x.png", "third")])
    assert (tmp_path / "old.png").read_bytes() == b"previous" and not (tmp_path / "new.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "old.png"]  # no temporary file left
    # all good: all written, with the mode a plain open() gives (0644 under umask 022), as the CLI's files
    written = save_images_atomic([(rgb, tmp_path / "old.png", "first"), (rgb.convert("L"), tmp_path / "sub" / "m.jpg", "second")])
    assert [Image.open(p).size for p in written] == [(8, 8), (8, 8)]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "old.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_refine_and_align_write_every_output(tmp_path, capsys):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "out" / "o.png"
    rc = main(_refine(paths, out, "--compare", tmp_path / "c.jpg", "--region", tmp_path / "corr.png", "--steps", "1"))
    assert rc == 0, capsys.readouterr().err
    assert out.exists() and (tmp_path / "c.jpg").exists() and (tmp_path / "corr.png").exists()
    rc = main(_refine(paths, tmp_path / "a.png", "--heatmap", tmp_path / "h.png", command="align"))
    assert rc == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "a.png").size == (30, 36) and Image.open(tmp_path / "h.png").size == (30, 36)
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary files


# ---------------------------------------------------------------------------------------------------- exit status after a late refusal
def test_a_process_that_exits_while_the_warm_up_runs_exits_with_its_own_status():
    """The pipeline starts warming numba's compiled passes on a thread when it is made. A process
    that ends at once (an input refused just after the model loaded: exit 2) waits for that thread;
    as a daemon thread it was stopped inside numba's C++ and the process aborted (exit 134,
    'terminate called without an active exception') in 2 of 6 runs (the
    flag is checked; two runs end to end)."""
    import subprocess
    import sys

    from refine_by_align import fill

    fill.warm_up_fills()
    assert fill._WARMING and not fill._WARMING[0].daemon
    script = "from refine_by_align.loading import load_pipeline; load_pipeline('default', device='cpu'); raise SystemExit(2)"
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr[-500:]
        assert "terminate called" not in run.stderr and "FATAL" not in run.stderr, run.stderr[-500:]


# ---------------------------------------------------------------------------------------------------- a mask wider than the crop
@pytest.mark.parametrize("command", ["refine", "align"])
@pytest.mark.parametrize("shape", ["band", "corners"])
def test_a_mask_spanning_more_than_the_crop_is_refused_before_computing(tmp_path, capsys, no_compute, command, shape):
    """Both stages work on one square crop of at most the image's shorter side (40 px here): a band
    across the 48 px width, or parts in opposite corners, would have pixels outside it left as
    they are (the band) or crashed the alignment (IndexError, the corners). One line, exit 2,
    naming the mask file and the span."""
    paths = _inputs(tmp_path / "in")
    m = np.zeros((40, 48), np.uint8)
    if shape == "band":
        m[18:22, 2:46] = 255  # 44 x 4 px
    else:
        m[1:5, 1:5] = m[35:39, 43:47] = 255  # 46 x 38 px
    Image.fromarray(m).save(paths["mask"])
    out = tmp_path / "o.png"
    args = _refine(paths, out) if command == "refine" else _refine(paths, out, command="align")
    span = "44x4" if shape == "band" else "46x38"
    _refused(args, capsys, str(paths["mask"]), f"span {span} px", "40 px square")
    assert not out.exists()


def test_prepare_refuses_a_mask_outside_its_own_crop(tiny_pipe):
    """validate_inputs' span rule is the only check: a mask that fits the shorter side is accepted
    and the crop holds all of it, one past it is not."""
    from refine_by_align.io import InputError

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    reference = Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8))
    fits = np.zeros((40, 48), bool)
    fits[18:22, 4:44] = True  # 40 px: the whole shorter side
    p = tiny_pipe.prepare(image, fits, reference, np.ones((36, 30), bool))
    b = p.crop_box
    assert fits[b.y0 : b.y1, b.x0 : b.x1].sum() == fits.sum()
    wide = fits.copy()
    wide[20, 44] = True  # 41 px
    with pytest.raises(InputError, match="span 41x4 px, more than the 40 px square"):
        tiny_pipe.prepare(image, wide, reference, np.ones((36, 30), bool))


@pytest.mark.parametrize("grow", [1.0, 2.0])  # (the config's lower bound, and the default)
def test_the_zoom_crop_holds_every_mask_the_span_rule_accepts(grow):
    """Why the span rule alone suffices: zoom_box's square holds every marked pixel of any mask
    whose span is at most the image's shorter side (random boxes and scattered pixels, odd and
    even sizes, at the picture's edges), so no mask validate_inputs accepts is repaired in part."""
    from refine_by_align.zoom import zoom_box

    rng = np.random.default_rng(1)
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(8, 90, 2))
        side = min(h, w)
        bw, bh = (int(v) for v in rng.integers(1, side + 1, 2))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        mask = np.zeros((h, w), bool)
        mask[y0, x0] = mask[y0 + bh - 1, x0 + bw - 1] = True  # the span's two corners
        mask[y0 : y0 + bh, x0 : x0 + bw] |= rng.random((bh, bw)) < 0.1
        b = zoom_box(mask, grow=grow, min_size=int(rng.integers(1, 64)))
        assert mask[b.y0 : b.y1, b.x0 : b.x1].sum() == mask.sum(), (h, w, x0, y0, bw, bh, b)


# ---------------------------------------------------------------------------------------------------- matcher weights that are not ALIKED's
def _bad_matcher_weights(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files a user might pass as --matcher-weights, with what the one line must say of each."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.safetensors"
    text.write_text("not weights at all\n" * 20)
    empty = folder / "empty.safetensors"
    empty.write_bytes(b"")
    other = folder / "other.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(other))
    return {
        "text": (text, "not a readable .safetensors file"),
        "empty": (empty, "not a readable .safetensors file"),
        "other_model": (other, "not an ALIKED state dict"),
        "missing": (folder / "nowhere.safetensors", "not found"),
    }


@pytest.mark.parametrize("kind", ["text", "empty", "other_model", "missing"])
def test_load_aliked_gives_the_reason_instead_of_raising(tmp_path, kind):
    from refine_by_align.models.aliked import load_aliked

    path, needle = _bad_matcher_weights(tmp_path)[kind]
    model, reason = load_aliked(path)
    assert model is None and needle in reason and "\n" not in reason, reason


@pytest.mark.parametrize("command", ["refine", "detect"])
@pytest.mark.parametrize("kind", ["text", "other_model"])
def test_unloadable_matcher_weights_are_one_line_exit_2(tmp_path, capsys, command, kind):
    """A --matcher-weights file that is not a safetensors file, or another model's weights, was a
    SafetensorError / ValueError traceback (exit 1); it is one line naming the file, exit 2."""
    paths = _inputs(tmp_path / "in")
    path, needle = _bad_matcher_weights(tmp_path / "w")[kind]
    out = tmp_path / "o.png"
    if command == "refine":
        args = _refine(paths, out, "--matcher-weights", path, model="default")
    else:
        args = ["-q", "detect", "--image", str(paths["image"]), "--reference", str(paths["reference"]), "--output", str(out), "--matcher-weights", str(path)]
    _refused(args, capsys, f"--matcher-weights '{path}'", "cannot load the ALIKED matcher", needle)
    assert not out.exists()


@pytest.mark.parametrize("case", ["transparent_reference", "reference_mask_size", "reference_mask_empty"])
def test_detect_names_the_file_and_where_the_reference_mask_came_from(tmp_path, capsys, case):
    """As refine words them: a fully transparent reference (no mask given) is its alpha channel,
    not 'reference_mask'; a given reference mask's errors name its file."""
    paths = _inputs(tmp_path / "in")
    args = ["-q", "detect", "--image", str(paths["image"]), "--output", str(tmp_path / "o.png")]
    if case == "transparent_reference":
        clear = tmp_path / "in" / "clear.png"
        Image.new("RGBA", (30, 36), (10, 20, 30, 0)).save(clear)
        err = _refused(args + ["--reference", str(clear)], capsys, f"reference '{clear}'", "alpha channel is empty")
        assert "reference_mask" not in err
        return
    bad = tmp_path / "in" / "rm.png"
    Image.new("L", (9, 9) if case == "reference_mask_size" else (30, 36), 255 if case == "reference_mask_size" else 0).save(bad)
    needle = "size 9x9 does not match the reference 30x36" if case == "reference_mask_size" else "reference mask is empty"
    _refused(args + ["--reference", str(paths["reference"]), "--reference-mask", str(bad)], capsys, f"reference_mask '{bad}'", needle)


# ---------------------------------------------------------------------------------------------------- a new user's session (forty-ninth)
@pytest.mark.parametrize("command", ["refine", "align", "batch", "bench-quality", "grid-search"])
def test_a_model_that_names_nothing_is_said_before_anything_else(tmp_path, capsys, no_compute, command):
    """--model neither a preset nor a folder: one line, exit 2, before the inputs are read (they do
    not exist here) and before torch is imported (the command line's check needs no model)."""
    missing = tmp_path / "nowhere"
    args = {
        "refine": ["refine", "--image", "i.png", "--mask", "m.png", "--reference", "r.png", "--output", str(tmp_path / "o.png")],
        "align": ["align", "--image", "i.png", "--mask", "m.png", "--reference", "r.png", "--output", str(tmp_path / "o.png")],
        "batch": ["batch", "jobs.jsonl", "--output", str(tmp_path / "out")],
        "bench-quality": ["bench-quality", "cases", "--output", str(tmp_path / "out")],
        "grid-search": ["grid-search", "cases", "--output", str(tmp_path / "g.json")],
    }[command]
    _refused(args + ["--model", str(missing)], capsys, f"model '{missing}': not a preset (tiny, default, paper) and no model folder")


@pytest.mark.parametrize("command", ["refine", "align", "bench-quality"])
def test_unknown_match_sources_are_said_before_anything_else(tmp_path, capsys, no_compute, command):
    args = {
        "refine": ["refine", "--image", "i.png", "--mask", "m.png", "--reference", "r.png", "--output", str(tmp_path / "o.png")],
        "align": ["align", "--image", "i.png", "--mask", "m.png", "--reference", "r.png", "--output", str(tmp_path / "o.png")],
        "bench-quality": ["bench-quality", "cases", "--output", str(tmp_path / "out")],
    }[command]
    _refused(args + ["--matchers", "sift+orb"], capsys, "--matchers 'sift+orb': choose sources from sift, aliked, attention, joined by '+'")


def test_output_paths_a_new_user_gets_wrong(tmp_path, capsys, no_compute):
    """An output that is a folder, an extension no format has (the message names the lossless
    ones), and a mask (align's region, detect's proposal, refine's --region) as a JPEG, which would
    blur it: each one line before anything is read."""
    paths = _inputs(tmp_path / "in")
    (tmp_path / "folder").mkdir()
    _refused(_refine(paths, tmp_path / "folder"), capsys, "is a folder; give a file name")
    _refused(_refine(paths, tmp_path / "o.xyz"), capsys, "unknown image extension '.xyz' (use .png, .tif, .webp or .bmp")
    for command in ("align", "detect"):
        args = [command, "--image", str(paths["image"]), "--reference", str(paths["reference"]), "--output", str(tmp_path / "m.jpg")]
        args += ["--mask", str(paths["mask"])] if command == "align" else []
        _refused(args, capsys, "a mask written as JPEG comes back with grey, blurred edges; use .png")
    _refused(_refine(paths, tmp_path / "o.png", "--region", tmp_path / "r.jpg"), capsys, "region '", "a mask written as JPEG")
    assert not list(tmp_path.glob("*.jpg")) and not (tmp_path / "o.png").exists()
    # the refined picture itself may be a JPEG (quality 95), and a mask any lossless format
    from refine_by_align.commands.inputs import check_output

    assert check_output(str(tmp_path / "o.jpg")) == tmp_path / "o.jpg"
    for ext in (".png", ".webp", ".tif", ".bmp"):
        assert check_output(str(tmp_path / f"r{ext}"), "region", "L") == tmp_path / f"r{ext}"


def test_matchers_aliked_without_weights_says_the_run_stops(tmp_path, capsys, monkeypatch):
    """--matchers aliked where no ALIKED weights are found: one line that says why and what to do,
    not the note that the alignment goes on with SIFT (it does not: the run stops, exit 2)."""
    from refine_by_align.models import aliked

    monkeypatch.setattr(aliked, "_candidates", lambda name, path: [tmp_path / "none" / f"{name}.safetensors"])
    paths = _inputs(tmp_path / "in")
    err = _refused(_refine(paths, tmp_path / "o.png", "--matchers", "aliked", model="default"), capsys,
                   "matchers 'aliked': the ALIKED matcher is not available: ALIKED weights aliked-n16.safetensors not found",
                   "give its weights (--matcher-weights or REFINE_BY_ALIGN_WEIGHTS; in Python set_matcher / require_matcher) or choose sift")
    assert "SIFT alone" not in err and not (tmp_path / "o.png").exists()


def test_a_model_that_is_a_file_is_said_as_one(tmp_path, capsys, no_compute):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    _refused(["refine", "--image", "i.png", "--mask", "m.png", "--reference", "r.png", "--output", str(tmp_path / "o.png"), "--model", str(f)],
             capsys, f"model '{f}': a file, not a model folder")


def test_the_early_refusals_import_no_heavy_library(tmp_path):
    """A bad --model, unknown --matchers and two --reference-mask for one --reference are said by
    the command line before any heavy import: torch, diffusers, OpenCV and SciPy stay unloaded."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from refine_by_align.cli import main\n"
        "base = ['refine', '--image', 'i.png', '--mask', 'm.png', '--reference', 'r.png', '--output', 'o.png']\n"
        "codes = [main(base + ['--model', 'nowhere']), main(base + ['--matchers', 'orb']),\n"
        "         main(base + ['--reference-mask', 'a.png', '--reference-mask', 'b.png'])]\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'cv2', 'scipy') if m in sys.modules)\n"
        "print(codes, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[2, 2, 2] []", (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 3

