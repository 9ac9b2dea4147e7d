"""make-cases, derive-cases and show-pairs refuse bad inputs in one line (exit 2) and leave nothing
behind; a case folder holds only what its own build wrote."""

import json

import numpy as np
import pytest
from PIL import Image

from refine_by_align.cli import main
from refine_by_align.data.make_cases import make_cases
from refine_by_align.data.photo_cases import photo_reference_cases
from refine_by_align.io import InputError


def _error(capsys, argv, needle):
    """``argv`` refused: exit 2 and one error line holding ``needle``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"refine-by-align {argv[0]}: error: ") and needle in err[0], err
    return err[0]


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _photo_case(folder, seed=0, side=64):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    photo = rng.integers(0, 256, (side, side + 16, 3), dtype=np.uint8)
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[20:40, 30:50] = 255
    for name, a in (("image.png", photo), ("target.png", photo), ("reference.png", photo[::-1].copy()), ("mask.png", mask),
                    ("reference_mask.png", np.full(mask.shape, 255, np.uint8)), ("correspondence.png", mask)):
        Image.fromarray(a).save(folder / name)
    np.savez_compressed(folder / "true_field.npz", origin=np.int32([0, 0]), xy=np.zeros((2, 2, 2), np.float32))
    (folder / "meta.json").write_text(json.dumps({"kind": "affine"}))


# --- derive-cases -----------------------------------------------------------------------------------

def test_derive_cases_into_its_own_cases_folder_is_refused_before_any_write(tmp_path, capsys):
    _photo_case(tmp_path / "cases" / "a")
    before = _tree(tmp_path / "cases")
    _error(capsys, ["derive-cases", str(tmp_path / "cases"), "--output", str(tmp_path / "cases")], "is the cases folder")
    _error(capsys, ["derive-cases", str(tmp_path / "cases"), "--output", str(tmp_path / "cases" / "sub")], "inside the cases folder")
    assert _tree(tmp_path / "cases") == before  # reference.png not replaced by a crop, no folder added
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["a"]


def test_derive_cases_refuses_a_case_folder_that_holds_an_earlier_build(tmp_path, capsys):
    _photo_case(tmp_path / "cases" / "a")
    _photo_case(tmp_path / "cases" / "b", seed=1)
    _photo_case(tmp_path / "out" / "b", seed=2)  # (an earlier make-cases build: a reference mask, a true field ...)
    before = _tree(tmp_path / "out")
    line = _error(capsys, ["derive-cases", str(tmp_path / "cases"), "--output", str(tmp_path / "out")], "already holds case folder(s) b")
    assert "nothing is deleted" in line and "--prefix" in line
    assert _tree(tmp_path / "out") == before and not (tmp_path / "out" / "a").exists()  # not even the free case written
    # another prefix (or an empty case folder) is fine; the derived case holds only what was written
    (tmp_path / "out" / "p_a").mkdir()
    written = photo_reference_cases(tmp_path / "cases", tmp_path / "out", prefix="p_")
    for d in written:
        assert sorted(p.name for p in d.iterdir()) == ["image.png", "mask.png", "meta.json", "reference.png", "target.png"]


def test_derive_cases_checks_every_case_before_it_creates_a_folder(tmp_path, capsys):
    _photo_case(tmp_path / "cases" / "a", side=64)
    _photo_case(tmp_path / "cases" / "b", side=32)  # the crop leaves nothing of this one only
    _error(capsys, ["derive-cases", str(tmp_path / "cases"), "--output", str(tmp_path / "out"), "--crop", "20"], "leaves nothing")
    assert not (tmp_path / "out").exists()
    (tmp_path / "cases" / "b" / "mask.png").unlink()
    with pytest.raises(InputError, match="no mask.png"):
        photo_reference_cases(tmp_path / "cases", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- make-cases -------------------------------------------------------------------------------------

def _make(root, out, *more):
    return ["make-cases", "--source", str(root), "--output", str(out), "--subjects", "alpha", "--per-subject", "1", *more]


@pytest.mark.parametrize("more, needle", [
    (["--per-subject", "0"], "--per-subject must be 1 or more, got 0"),
    (["--per-subject", "-1"], "--per-subject must be 1 or more, got -1"),
    (["--subjects", "alpha,alpha"], "--subjects names alpha more than once"),
    (["--subjects", ",alpha"], "an empty subject name"),
    (["--subjects", ""], "an empty subject name"),
])
def test_make_cases_refuses_bad_counts_and_subject_lists_and_writes_nothing(tmp_path, capsys, tiny_multiview, more, needle):
    _error(capsys, _make(tiny_multiview, tmp_path / "cases", *more), needle)
    assert not (tmp_path / "cases").exists()


def test_make_cases_library_refuses_the_same_inputs(tmp_path, tiny_multiview):
    for kw, needle in (({"cases_per_subject": 0}, "1 or more"), ({"subjects": ["alpha", "alpha"]}, "more than once"),
                       ({"subjects": ["", "alpha"]}, "empty subject name"), ({"subjects": ["../alpha"]}, "not a subject folder's name"),
                       ({"subjects": [".."]}, "not a subject folder's name")):
        with pytest.raises(ValueError, match=needle):
            make_cases(tiny_multiview, tmp_path / "c", **{"subjects": ["alpha"], **kw})
    assert not (tmp_path / "c").exists()


def test_make_cases_refuses_a_folder_that_already_holds_cases(tmp_path, capsys, tiny_multiview):
    assert main(_make(tiny_multiview, tmp_path / "cases")) == 0
    capsys.readouterr()
    before = _tree(tmp_path / "cases")
    _error(capsys, _make(tiny_multiview, tmp_path / "cases", "--seed", "7", "--subjects", "beta"), "choose an empty or new folder, or remove it")
    assert _tree(tmp_path / "cases") == before  # no beta case mixed in, alpha's not replaced
    _error(capsys, _make(tiny_multiview, tiny_multiview / "cases"), "inside the source folder")
    assert not (tiny_multiview / "cases").exists()
    (tmp_path / "empty").mkdir()
    assert main(_make(tiny_multiview, tmp_path / "empty")) == 0  # an empty folder is fine


def test_a_case_rebuilt_in_place_keeps_no_file_of_the_older_case(tmp_path, tiny_multiview):
    """(The library still rebuilds a folder in place, as build_suite does.)"""
    [case] = make_cases(tiny_multiview, tmp_path / "c", seed=3, subjects=["alpha"], cases_per_subject=1, extra_references=["view"])
    (case / "outputs.txt").write_text("stale")
    assert (case / "reference_2.png").exists()
    [again] = make_cases(tiny_multiview, tmp_path / "c", seed=3, subjects=["alpha"], cases_per_subject=1)
    assert again == case
    names = sorted(p.name for p in case.iterdir())
    assert "outputs.txt" not in names and "reference_2.png" not in names and "reference_mask_2.png" not in names
    assert "image.png" in names and "meta.json" in names
    assert [p.name for p in (tmp_path / "c").iterdir()] == [case.name]  # no temporary folder left beside it


def test_make_cases_then_derive_cases_on_the_shared_photos(tmp_path, capsys, dreambooth_root):
    argv = ["make-cases", "--source", str(dreambooth_root), "--output", str(tmp_path / "cases"), "--subjects", "dog6", "--per-subject", "1"]
    assert main(argv) == 0
    _error(capsys, argv[:-1] + ["2"], "is not empty")
    before = _tree(tmp_path / "cases")
    _error(capsys, ["derive-cases", str(tmp_path / "cases"), "--output", str(tmp_path / "cases")], "is the cases folder")
    assert _tree(tmp_path / "cases") == before


# --- show-pairs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("more, needle", [
    (["-n", "0"], "-n must be 1 or more pairs, got 0"),
    (["-n", "-3"], "-n must be 1 or more pairs, got -3"),
    (["--size", "0"], "--size must be 8 px or more, got 0"),
    (["-n", "100000"], "ask for fewer pairs or a smaller --size"),
    (["--data-root", "/no/such/photo-folder"], "--data-root '/no/such/photo-folder': not found"),
])
def test_show_pairs_refuses_bad_inputs_in_one_line(tmp_path, capsys, more, needle):
    _error(capsys, ["show-pairs", "--output", str(tmp_path / "g.png"), *more], needle)
    assert not (tmp_path / "g.png").exists()


def test_show_pairs_notes_the_default_photo_folder_missing(tmp_path, capsys, monkeypatch):
    from refine_by_align.commands import show_pairs

    monkeypatch.setattr(show_pairs, "DEFAULT_DATA_ROOT", str(tmp_path / "absent"))
    assert main(["show-pairs", "-n", "1", "--size", "16", "--output", str(tmp_path / "g.png")]) == 0
    assert f"note: no multi-view photos at '{tmp_path / 'absent'}': drawing synthetic objects only" in capsys.readouterr().err
    assert (tmp_path / "g.png").exists()
