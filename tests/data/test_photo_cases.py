"""Case sets whose reference is the artifact-free photo itself (data/photo_cases.py, derive-cases)."""

import json

import numpy as np
import pytest
from PIL import Image

from refine_by_align.data.photo_cases import PhotoEdit, edit_picture, photo_reference_cases
from refine_by_align.evaluation.cases import load_cases
from refine_by_align.io import InputError


def _case(folder, seed, kind="affine", target=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    photo = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    image = photo.copy()
    image[20:40, 30:50] = 255
    mask = np.zeros((64, 80), np.uint8)
    mask[20:40, 30:50] = 255
    Image.fromarray(image).save(folder / "image.png")
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(photo[::-1].copy()).save(folder / "reference.png")
    Image.fromarray(np.full((64, 80), 255, np.uint8)).save(folder / "reference_mask.png")
    if target:
        Image.fromarray(photo).save(folder / "target.png")
    (folder / "meta.json").write_text(json.dumps({"kind": kind, "subject": "thing"}))
    return photo, image


def test_the_reference_is_the_photo_cropped_and_scaled_without_a_mask(tmp_path):
    photo, image = _case(tmp_path / "src" / "a", 0)
    _case(tmp_path / "src" / "b", 1, target=False)  # no truth to make a reference from: left out
    written = photo_reference_cases(tmp_path / "src", tmp_path / "out", PhotoEdit(crop_px=4, reference_size=50), prefix="v_")
    assert [p.name for p in written] == ["v_a"]
    d = written[0]
    assert sorted(p.name for p in d.iterdir()) == ["image.png", "mask.png", "meta.json", "reference.png", "target.png"]
    ref = np.asarray(Image.open(d / "reference.png"))
    expected = np.asarray(Image.fromarray(photo).crop((4, 4, 76, 60)).resize((50, 50), Image.LANCZOS))
    assert np.array_equal(ref, expected)
    assert np.array_equal(np.asarray(Image.open(d / "image.png")), image)  # no edit: the image as it was
    assert np.array_equal(np.asarray(Image.open(d / "target.png")), photo)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["kind"] == "photo" and meta["source_kind"] == "affine" and meta["derived"]["crop_px"] == 4
    case = load_cases(tmp_path / "out")[0]
    assert case.reference_mask is None and case.target is not None  # the pipeline estimates the object


def test_the_image_and_its_truth_are_edited_alike_and_only_the_image_is_compressed(tmp_path):
    photo, image = _case(tmp_path / "src" / "a", 0)
    edit = PhotoEdit(gamma=1.1, gains=(0.95, 1.0, 1.06), offset=0.02, blur=0.8, soften=0.7, jpeg=90)
    d = photo_reference_cases(tmp_path / "src", tmp_path / "out", edit)[0]
    target = np.asarray(Image.open(d / "target.png"))
    assert np.array_equal(target, edit_picture(photo, edit))
    assert not np.array_equal(target, photo)
    soft = edit_picture(image, edit)
    got = np.asarray(Image.open(d / "image.png"))
    assert not np.array_equal(got, soft) and np.abs(got.astype(int) - soft).mean() < 12  # JPEG at 90 (of noise): close, not equal
    # the softening takes out fine detail: the edited picture's high frequencies are weaker
    hf = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()
    assert hf(edit_picture(photo, PhotoEdit(soften=0.5))) < 0.7 * hf(photo)
    again = photo_reference_cases(tmp_path / "src", tmp_path / "again", edit)[0]  # deterministic
    assert all((d / n).read_bytes() == (again / n).read_bytes() for n in ("image.png", "target.png", "reference.png"))


@pytest.mark.parametrize("edit, message", [
    (PhotoEdit(soften=0.0), "soften"), (PhotoEdit(jpeg=0), "JPEG quality"), (PhotoEdit(gains=(1.0, 0.0, 1.0)), "gains"),
    (PhotoEdit(gamma=0.0), "gamma"), (PhotoEdit(blur=-1.0), "blur"), (PhotoEdit(crop_px=40), "leaves nothing"),
])
def test_settings_that_make_no_sense_are_one_clear_error(tmp_path, edit, message):
    _case(tmp_path / "src" / "a", 0)
    with pytest.raises(InputError, match=message):
        photo_reference_cases(tmp_path / "src", tmp_path / "out", edit)


def test_a_folder_without_targets_is_one_clear_error_and_the_command_says_it(tmp_path, capsys):
    from refine_by_align.cli import main

    _case(tmp_path / "src" / "a", 0, target=False)
    with pytest.raises(InputError, match="no case folder with a target.png"):
        photo_reference_cases(tmp_path / "src", tmp_path / "out")
    assert main(["derive-cases", str(tmp_path / "src"), "--output", str(tmp_path / "out")]) == 2
    assert "no case folder with a target.png" in capsys.readouterr().err
    assert main(["derive-cases", str(tmp_path / "src"), "--output", str(tmp_path / "out"), "--gains", "1,2"]) == 2
    assert "--gains must be three numbers" in capsys.readouterr().err
