"""``refine`` with several ``--reference`` (each with an optional ``--reference-mask`` after it)."""

import numpy as np
from PIL import Image

from refine_by_align.cli import build_parser, main
from refine_by_align.demo.examples import EXAMPLES_DIR

BADGE = EXAMPLES_DIR / "badge"
CAN = EXAMPLES_DIR / "can"


def _refine(out, *refs):
    return ["-q", "refine", "--model", "tiny", "--steps", "2", "--matchers", "sift", "--image", str(BADGE / "image.png"),
            "--mask", str(BADGE / "mask.png"), "--output", str(out), *refs]


def test_reference_masks_belong_to_the_reference_before_them():
    p = build_parser()
    base = ["refine", "--image", "i.png", "--mask", "m.png", "--output", "o.png"]
    a = p.parse_args(base + ["--reference", "a.png", "--reference", "b.png", "--reference-mask", "bm.png"])
    assert a.reference == ["a.png", "b.png"] and a.reference_mask == [None, "bm.png"]
    a = p.parse_args(base + ["--reference-mask", "am.png", "--reference", "a.png"])  # the old order still works
    assert a.reference == ["a.png"] and a.reference_mask == ["am.png"]


def test_two_masks_for_one_reference_is_one_line_and_exit_2(capsys):
    """Two --reference-mask for one --reference (or two before the first): one line naming both
    masks and exit 2, said before anything is read (the files need not exist), not argparse's
    usage block."""
    base = ["refine", "--image", "i.png", "--mask", "m.png", "--output", "o.png"]
    assert main(base + ["--reference", "a.png", "--reference-mask", "x.png", "--reference-mask", "y.png"]) == 2
    err = capsys.readouterr().err
    assert "two --reference-mask for the reference 'a.png' ('x.png', 'y.png')" in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err
    assert main(base + ["--reference-mask", "x.png", "--reference-mask", "y.png", "--reference", "a.png"]) == 2
    err = capsys.readouterr().err
    assert "two --reference-mask before the first --reference ('x.png', 'y.png')" in err and len(err.strip().splitlines()) == 1


def test_refine_with_a_distractor_and_the_right_reference(tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = main(_refine(out, "--reference", str(CAN / "reference.png"), "--reference-mask", str(CAN / "reference_mask.png"),
                      "--reference", str(BADGE / "reference.png"), "--reference-mask", str(BADGE / "reference_mask.png")))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reference #1" in printed and "reference #2" in printed and "guided the model" in printed
    guide_line = [line for line in printed.splitlines() if "guided the model" in line][0]
    assert "reference #2" in guide_line  # the badge's own photo, not the can
    compare = Image.open(tmp_path / "out.compare.png")
    assert compare.width > 4 * Image.open(BADGE / "image.png").width * 320 / Image.open(BADGE / "image.png").height
    src = np.asarray(Image.open(BADGE / "image.png").convert("RGB"))
    assert np.asarray(Image.open(out).convert("RGB")).shape == src.shape


def test_an_unreadable_reference_in_the_list_is_one_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "out.png"
    rc = main(_refine(out, "--reference", str(BADGE / "reference.png"), "--reference", str(bad)))
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference #2" in err[0] and str(bad) in err[0], err
    # a reference mask of the wrong size names its own reference
    rc = main(_refine(out, "--reference", str(BADGE / "reference.png"), "--reference", str(CAN / "reference.png"),
                      "--reference-mask", str(BADGE / "mask.png")))
    err = capsys.readouterr().err
    assert rc == 2 and "does not match the reference" in err and "mask.png" in err


def test_the_old_correspondence_flag_still_writes_the_region(tmp_path, capsys):
    out, region = tmp_path / "out.png", tmp_path / "region.png"
    rc = main(_refine(out, "--reference", str(BADGE / "reference.png"), "--correspondence", str(region)))
    assert rc == 0 and region.exists()
    err = capsys.readouterr().err
    assert err.count("--correspondence is deprecated") == 1 and "--region" in err


def test_bench_quality_references_option_is_checked(tmp_path, capsys):
    rc = main(["-q", "bench-quality", str(tmp_path / "cases"), "--output", str(tmp_path / "out"), "--references", "first"])
    assert rc == 2 and "--references must be 'all' or a reference number" in capsys.readouterr().err
