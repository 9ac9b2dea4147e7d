"""The command line end to end (tiny model: seconds on CPU)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refine_by_align.cli import main
from refine_by_align.demo.examples import EXAMPLES_DIR

BADGE = EXAMPLES_DIR / "badge"


def _args(out, *extra, example=BADGE):
    return [
        "-q", "refine", "--model", "tiny", "--image", str(example / "image.png"), "--mask", str(example / "mask.png"),
        "--reference", str(example / "reference.png"), "--output", str(out), *extra,
    ]


def test_refine_writes_result_compare_and_correspondence(tmp_path, capsys):
    out = tmp_path / "out.png"
    corr = tmp_path / "corr.png"
    rc = main(_args(out, "--region", str(corr), "--steps", "2", "--seed", "1", "--reference-mask", str(BADGE / "reference_mask.png")))
    assert rc == 0
    res = Image.open(out)
    src = Image.open(BADGE / "image.png")
    assert res.size == src.size
    mask = np.asarray(Image.open(BADGE / "mask.png")) > 127
    assert (np.asarray(res.convert("RGB"))[mask] != np.asarray(src.convert("RGB"))[mask]).any()
    compare = tmp_path / "out.compare.png"
    assert compare.exists() and Image.open(compare).width > 2 * src.width
    c = np.asarray(Image.open(corr))
    ref_mask = np.asarray(Image.open(BADGE / "reference_mask.png")) > 127
    assert c.shape == ref_mask.shape and (c > 0).any() and not (c[~ref_mask] > 0).any()
    assert "wrote" in capsys.readouterr().out


def test_align_command(tmp_path, capsys):
    """``align`` writes M* as a 0 / 255 picture of the reference's size, the pixels it reports (a
    small part of the reference, not its complement), and the heat map drawn over the reference."""
    out = tmp_path / "c.png"
    heat = tmp_path / "h.png"
    rc = main([
        "-q", "align", "--model", "tiny", "--image", str(BADGE / "image.png"), "--mask", str(BADGE / "mask.png"),
        "--reference", str(BADGE / "reference.png"), "--output", str(out), "--heatmap", str(heat), "--alignment-layer", "1",
    ])
    assert rc == 0
    ref = Image.open(BADGE / "reference.png")
    assert Image.open(out).size == ref.size and Image.open(heat).size == ref.size
    region = np.asarray(Image.open(out))
    reported = int(capsys.readouterr().out.split(" reference pixels)")[0].rsplit("; ", 1)[1])
    assert set(np.unique(region)) <= {0, 255} and (region == 255).sum() == reported
    assert 0 < reported < 0.25 * region.size  # (the masked part's place, not the rest of the photo)
    drawn = np.abs(np.asarray(Image.open(heat).convert("RGB"), np.int16) - np.asarray(ref.convert("RGB"), np.int16)).max(-1)
    assert (drawn[region == 255] > 10).mean() > 0.5  # (the heat map shows over the region)


def test_refine_saves_what_made_its_result_beside_it(tmp_path, capsys):
    """A refined picture had nothing saved with it: not its seed, model, inputs or versions."""
    out = tmp_path / "out.png"
    assert main(_args(out, "--steps", "2", "--seed", "7", "--reference-mask", str(BADGE / "reference_mask.png"))) == 0
    rec = json.loads((tmp_path / "out.json").read_text())
    assert "out.json" in capsys.readouterr().out
    assert rec["command"] == "refine" and rec["settings"]["seed"] == 7 and rec["settings"]["steps"] == 2 and rec["settings"]["model"] == "tiny"
    import hashlib

    image = rec["inputs"]["image"]
    assert image["path"] == str((BADGE / "image.png").resolve()) and image["sha256"] == hashlib.sha256((BADGE / "image.png").read_bytes()).hexdigest()
    assert rec["inputs"]["reference_mask"][0]["path"] == str((BADGE / "reference_mask.png").resolve())
    assert rec["result"]["used"]["random_weights"] is True and rec["result"]["alignment"] in ("dense", "attention")
    used = rec["result"]["used"]
    assert used["model"] == "tiny" and len(used["model_fingerprint"]) == 16 and used["sampling"]["steps"] == 2 and used["sampling"]["seed"] == 7
    assert used["sampling"]["samples"] >= 1 and used["sampling"]["guidance"] is not None  # (the model's defaults filled in)
    # which output it describes, as written
    assert rec["outputs"]["output"]["path"] == str(out.resolve()) and rec["outputs"]["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert rec["outputs"]["compare"]["path"] == str((tmp_path / "out.compare.png").resolve())
    assert 0.0 <= rec["result"]["warp_fraction"] <= 1.0 and rec["result"]["timings_s"]["total"] > 0
    assert {"torch", "numpy", "diffusers"} <= set(rec["versions"]) and rec["cpu"]["cores"] >= 1


def test_align_writes_the_dense_field_it_found(tmp_path, capsys):
    """The field (each crop pixel's position on the reference) could be read only through the
    Python API; ``--field`` writes it, in the convention its docstring gives."""
    import cv2

    out, fld = tmp_path / "region.png", tmp_path / "field.npz"
    rc = main([
        "-q", "align", "--model", "tiny", "--image", str(BADGE / "image.png"), "--mask", str(BADGE / "mask.png"),
        "--reference", str(BADGE / "reference.png"), "--reference-mask", str(BADGE / "reference_mask.png"), "--output", str(out), "--field", str(fld),
    ])
    assert rc == 0 and "field.npz" in capsys.readouterr().out
    d = np.load(fld)
    x0, y0, x1, y1 = (int(v) for v in d["box"])
    assert d["xy"].shape == (y1 - y0, x1 - x0, 2) and d["confidence"].shape == d["on_object"].shape == (y1 - y0, x1 - x0)
    # image pixel (x0 + j, y0 + i) is reference pixel xy[i, j]: the reference sampled there is the image around the mask
    grey = lambda p: np.asarray(Image.open(p).convert("L"), np.float32)  # noqa: E731
    warped = cv2.remap(grey(BADGE / "reference.png"), d["xy"][..., 0], d["xy"][..., 1], cv2.INTER_LINEAR)
    mask = np.asarray(Image.open(BADGE / "mask.png")) > 127
    keep = d["on_object"] & ~mask[y0:y1, x0:x1]
    assert keep.sum() > 1000 and np.corrcoef(warped[keep], grey(BADGE / "image.png")[y0:y1, x0:x1][keep])[0, 1] > 0.9
    rec = json.loads((tmp_path / "region.json").read_text())
    assert rec["result"]["field_box"] == [x0, y0, x1, y1] and rec["outputs"]["field"]["path"] == str(fld.resolve())


def test_a_record_names_the_matchers_the_run_used(tmp_path):
    """--matchers sift recorded the ALIKED weights' file, which did not run."""
    out = tmp_path / "region.png"
    rc = main([
        "-q", "align", "--model", "tiny", "--image", str(BADGE / "image.png"), "--mask", str(BADGE / "mask.png"),
        "--reference", str(BADGE / "reference.png"), "--output", str(out), "--matchers", "sift",
    ])
    assert rc == 0
    used = json.loads((tmp_path / "region.json").read_text())["result"]["used"]
    assert used["matchers"] == "sift" and used["matcher_weights"] is None


def test_a_file_of_the_records_name_that_is_no_record_is_not_replaced(tmp_path, capsys):
    """An annotation beside the picture (labelme's shot.json for shot.png) was silently replaced."""
    note = tmp_path / "out.json"
    note.write_text('{"shapes": []}')
    assert main(_args(tmp_path / "out.png", "--steps", "1")) == 2
    assert "is not a refine-by-align record" in capsys.readouterr().err and note.read_text() == '{"shapes": []}'
    assert not (tmp_path / "out.png").exists()
    note.write_text(json.dumps({"command": "refine"}))  # an earlier record is replaced
    assert main(_args(tmp_path / "out.png", "--steps", "1")) == 0 and json.loads(note.read_text())["settings"]["steps"] == 1


def test_a_record_that_cannot_be_written_is_one_line_and_no_stale_record_stays(tmp_path, capsys, monkeypatch):
    import refine_by_align.provenance as provenance

    out = tmp_path / "out.png"
    assert main(_args(out, "--steps", "1", "--seed", "1")) == 0

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(provenance, "write_record", full)
    capsys.readouterr()
    assert main(_args(out, "--steps", "1", "--seed", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not their record" in err[-1] and "No space left" in err[-1] and not any("Traceback" in line for line in err)
    assert not (tmp_path / "out.json").exists()  # (the seed-1 record no longer stands beside the seed-2 output)


@pytest.mark.parametrize("field, extra, message", [
    ("f.npy", [], "give a name ending in .npz"),
    ("f.npz", ["--alignment", "attention"], "gives a region, not a field"),
])
def test_align_field_output_is_checked_before_any_work(tmp_path, capsys, field, extra, message):
    rc = main([
        "-q", "align", "--model", "tiny", "--image", str(BADGE / "image.png"), "--mask", str(BADGE / "mask.png"),
        "--reference", str(BADGE / "reference.png"), "--output", str(tmp_path / "r.png"), "--field", str(tmp_path / field), *extra,
    ])
    assert rc == 2 and message in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "setup, message",
    [
        ("empty_mask", "mask is empty"),
        ("wrong_size_mask", "does not match the image"),
        ("text_as_png", "not a readable image"),
        ("missing_reference", "file not found"),
        ("bad_steps", "--steps must be"),
        ("nan_guidance", "--guidance must be"),
        ("bad_samples", "--samples must be"),
        ("bad_extension", "unknown image extension"),
        ("gif_output", "at most 256 colours"),
        ("bad_model", "model 'nowhere'"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_no_output(tmp_path, capsys, setup, message):
    out = tmp_path / "out.png"
    args = _args(out)
    def replace(flag, value):
        args[args.index(flag) + 1] = value
    if setup == "empty_mask":
        Image.new("L", Image.open(BADGE / "image.png").size, 0).save(tmp_path / "m.png")
        replace("--mask", str(tmp_path / "m.png"))
    elif setup == "wrong_size_mask":
        Image.new("L", (17, 9), 255).save(tmp_path / "m.png")
        replace("--mask", str(tmp_path / "m.png"))
    elif setup == "text_as_png":
        (tmp_path / "t.png").write_text("hello")
        replace("--image", str(tmp_path / "t.png"))
    elif setup == "missing_reference":
        replace("--reference", str(tmp_path / "none.png"))
    elif setup == "bad_steps":
        args += ["--steps", "0"]
    elif setup == "nan_guidance":
        args += ["--guidance", "nan"]
    elif setup == "bad_samples":
        args += ["--samples", "0"]
    elif setup == "bad_extension":
        out = tmp_path / "out.xyz"
        replace("--output", str(out))
    elif setup == "gif_output":
        out = tmp_path / "out.gif"
        replace("--output", str(out))
    elif setup == "bad_model":
        replace("--model", "nowhere")
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
    assert not list(tmp_path.glob("*.compare.png"))


def test_console_script_exit_code(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "refine-by-align")
    p = subprocess.run(
        [exe, "refine", "--model", "tiny", "--image", str(tmp_path / "x.png"), "--mask", "m", "--reference", "r", "--output", str(tmp_path / "o.png")],
        capture_output=True, text=True,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "file not found" in p.stderr


def test_bench_quality_keep_on_examples(tmp_path, capsys):
    rc = main(["-q", "bench-quality", str(EXAMPLES_DIR), "--output", str(tmp_path / "res"), "--method", "keep"])
    assert rc == 0
    m = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert m["summary"]["ALL"]["cases"] == 2 and m["summary"]["ALL"]["psnr"] is not None
    assert "ALL" in capsys.readouterr().out


def test_bench_quality_refine_by_align_tiny(tmp_path):
    rc = main(["-q", "bench-quality", str(EXAMPLES_DIR), "--output", str(tmp_path / "res"), "--model", "tiny", "--limit", "1"])
    assert rc == 0
    m = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert m["summary"]["ALL"]["cases"] == 1
    assert (tmp_path / "res" / "contact_sheet.png").exists()


def test_bench_speed_rejects_an_unusable_device_with_a_usage_error(tmp_path, capsys):
    import torch

    from refine_by_align.cli import main

    out = tmp_path / "b.json"
    bad = "nonsense" if torch.cuda.is_available() else "cuda"
    assert main(["bench-speed", "--configs", "tiny", "--device", bad, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refine-by-align bench-speed: error: --device") and not out.exists()


def test_bench_speed_rejects_an_unknown_config_before_timing(tmp_path, capsys):
    from refine_by_align.cli import main

    out = tmp_path / "b.json"
    assert main(["bench-speed", "--configs", f"tiny,{tmp_path / 'nosuch'}", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--configs" in err[0] and "nosuch" in err[0] and not out.exists()


def test_bench_speed_rejects_matcher_weights_it_cannot_load_before_timing(tmp_path, capsys):
    from refine_by_align.cli import main

    out = tmp_path / "b.json"
    assert main(["bench-speed", "--configs", "tiny", "--matcher-weights", str(tmp_path / "none.safetensors"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--matcher-weights" in err[0] and "cannot load the ALIKED matcher" in err[0] and not out.exists()


def test_train_with_weights_that_cannot_be_had_is_a_usage_error(tmp_path, capsys):
    from refine_by_align.cli import main

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "tiny", "max_steps": 1, "data_root": None, "model_overrides": {"unet_pretrained": str(tmp_path / "no-sd")}}))
    assert main(["--quiet", "train", "--config", str(recipe), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refine-by-align train: error: cannot load the U-Net weights") and "no-sd" in err[-1]


def test_refine_dtype_bf16_says_when_the_cpu_only_emulates_it(tmp_path, monkeypatch, capsys):
    """--dtype bf16 on a CPU without native bf16 (AVX2 only) prints one note that it is emulated
    and far slower; with native bf16, and with fp32, no such note."""
    from refine_by_align.perf import ceiling

    for native, dtype, said in ((False, "bf16", True), (True, "bf16", False), (False, "fp32", False)):
        monkeypatch.setattr(ceiling, "native_bf16", lambda device="cpu": native)
        out = tmp_path / f"{native}-{dtype}.png"
        assert main(_args(out, "--no-warp", "--steps", "1", "--dtype", dtype)) == 0
        err = capsys.readouterr().err
        assert ("without native bf16" in err) is said and err.count("without native bf16") <= 1, err


def test_refine_dtype_bf16_runs_the_model_in_bf16_with_the_fp32_result_within_a_few_grey_levels(tmp_path, monkeypatch):
    """--dtype bf16 loads the weights in bf16 (a spy on the loader sees the dtype) and the refined
    pixels stay close to fp32's (the model redraws the whole mask: --no-warp); outside the mask
    both are the input, bit for bit. An unknown dtype is a usage error."""
    import torch

    import refine_by_align.loading as loading

    seen = []
    real = loading.load_pipeline
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: seen.append(k.get("dtype")) or real(*a, **k))
    outs = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.png"
        args = _args(out, "--no-warp", "--steps", "2", "--reference-mask", str(BADGE / "reference_mask.png"), "--dtype", dtype)
        args[args.index("tiny")] = "default"
        assert main(args) == 0
        outs[dtype] = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert seen == [None, torch.bfloat16]
    mask = np.asarray(Image.open(BADGE / "mask.png")) > 127
    src = np.asarray(Image.open(BADGE / "image.png").convert("RGB")).astype(int)
    kept = ~mask & (outs["fp32"] == src).all(-1)  # what fp32 left as the input (all but the paste's border)
    assert kept.mean() > 0.5 and np.array_equal(outs["bf16"][kept], src[kept])
    diff = np.abs(outs["bf16"] - outs["fp32"])[mask]
    assert diff.mean() < 1.0 and diff.max() <= 6, (diff.mean(), diff.max())  # (measured: 0.33 and 2)
    assert (outs["bf16"][mask] != src[mask]).any()
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path / "x.png", "--dtype", "fp16"))
    assert e.value.code == 2


def test_align_says_when_a_refine_would_discount_the_warp_for_its_misfit():
    """The align command's summary names the field's misfit and what a refine does with its warp,
    only where the misfit rule lowers the warp's weight."""
    from refine_by_align.commands.align import _misfit_clause
    from refine_by_align.pipelines.correspondence import MISFIT_PX

    lo, hi = MISFIT_PX
    assert _misfit_clause(None) == "" and _misfit_clause(lo) == ""
    assert _misfit_clause((lo + hi) / 2) == f", its fit misses its own matches by {(lo + hi) / 2:.1f} px: a refine blends its warp in at 50% of its trust"
    assert _misfit_clause(hi + 1.0).endswith("a refine does not use its warp")


@pytest.mark.parametrize("command", ["refine", "align", "detect"])
def test_input_errors_come_before_torch_is_imported(tmp_path, command):
    """A mistyped path or a bad setting is said before the seconds of importing torch and diffusers:
    the process that reports it never imports them."""
    ex = EXAMPLES_DIR / "badge"
    args = ["--image", str(tmp_path / "missing.png"), "--reference", str(ex / "reference.png"), "--output", str(tmp_path / "o.png")]
    if command != "detect":
        args += ["--mask", str(ex / "mask.png")]
    code = (
        "import sys; from refine_by_align.cli import main; "
        f"rc = main({[command] + args!r}); "
        "print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False", "False"], (out.stdout, out.stderr)
    assert "missing.png" in out.stderr and "file not found" in out.stderr


def test_convert_matcher_command(tmp_path, capsys):
    import torch

    from refine_by_align.models.aliked import ALIKED, ALIKED_CONFIGS

    src = tmp_path / "aliked-t16.pth"
    torch.save(ALIKED(ALIKED_CONFIGS["aliked-t16"]).state_dict(), src)
    assert main(["convert-matcher", str(src), "--output", str(tmp_path / "aliked" / "aliked-t16.safetensors")]) == 0
    assert (tmp_path / "aliked" / "aliked-t16.safetensors").is_file() and "wrote" in capsys.readouterr().out
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    assert main(["convert-matcher", str(tmp_path / "notes.pth")]) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".ppm"])
def test_a_transparent_image_is_not_written_to_a_format_without_alpha(tmp_path, capsys, ext):
    """An RGBA or LA image refined to .jpg / .bmp / .ppm lost its alpha channel without a word
    (a probe); it is refused before the model loads, in one line, and nothing is written. PNG keeps it."""
    rgba = Image.open(BADGE / "image.png").convert("RGBA")
    a = np.asarray(rgba).copy()
    a[..., 3] = np.linspace(80, 255, a.shape[1]).astype(np.uint8)[None, :]
    for mode in ("RGBA", "LA"):
        src = tmp_path / f"{mode}.png"
        Image.fromarray(a, "RGBA").convert(mode).save(src)
        out = tmp_path / f"out_{mode}{ext}"
        args = ["-q", "refine", "--model", "tiny", "--image", str(src), "--mask", str(BADGE / "mask.png"),
                "--reference", str(BADGE / "reference.png"), "--output", str(out), "--steps", "1"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "alpha channel" in err[0] and ext[1:].upper().replace("JPG", "JPEG") in err[0], err
        assert not out.exists() and not out.with_name(out.stem + ".compare.png").exists()
    png = tmp_path / "out.png"
    assert main(["-q", "refine", "--model", "tiny", "--image", str(tmp_path / "RGBA.png"), "--mask", str(BADGE / "mask.png"),
                 "--reference", str(BADGE / "reference.png"), "--output", str(png), "--steps", "1"]) == 0
    assert Image.open(png).mode == "RGBA"


@pytest.mark.parametrize("extra", [["--alignment", "attention"], ["--matchers", "sift"], ["--alignment-timestep", "10"], ["--alignment-layer", "0"]])
def test_no_align_with_an_alignment_option_is_refused(tmp_path, capsys, extra):
    """--no-align with an alignment option ran without the alignment and ignored the option (a probe)."""
    out = tmp_path / "o.png"
    assert main(_args(out, "--no-align", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-align runs no alignment" in err[0] and extra[0] in err[0], err
    assert not out.exists()
