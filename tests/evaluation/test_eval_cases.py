from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.evaluation.cases import load_cases
from refine_by_align.io import InputError


def test_load_cases_sorted_and_fields(cases_dir: Path):
    cases = load_cases(cases_dir)
    assert [c.id for c in cases] == ["c01", "c02", "c03"]
    c1, c2, c3 = cases
    assert c1.image.mode == "RGB" and c1.reference.mode == "RGB"
    assert c1.mask.dtype == bool and c1.mask.shape == (40, 48) and c1.mask.sum() == 12 * 14
    assert c1.region is not None and c1.region.shape == (36, 44)
    assert c2.region is None and c2.target is not None
    assert c3.target is None
    assert c1.kind == "dreambooth" and c3.kind == "default"
    assert c1.meta["note"] == "synthetic"
    assert c1.reference_mask is None  # opaque reference, no reference_mask.png


def test_limit(cases_dir: Path):
    assert [c.id for c in load_cases(cases_dir, limit=2)] == ["c01", "c02"]


def test_reference_mask_from_alpha(cases_dir: Path):
    d = cases_dir / "c01"
    rgba = np.zeros((36, 44, 4), np.uint8)
    rgba[5:30, 5:30] = (10, 200, 30, 255)
    Image.fromarray(rgba, "RGBA").save(d / "reference.png")
    c = load_cases(cases_dir, limit=1)[0]
    assert c.reference_mask is not None and c.reference_mask.sum() == 25 * 25
    assert c.reference.mode == "RGB"


def test_corrupt_image_names_case_and_file(cases_dir: Path):
    (cases_dir / "c02" / "reference.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError) as ei:
        load_cases(cases_dir)
    msg = str(ei.value)
    assert "c02" in msg and "reference.png" in msg


def test_missing_required_file_named(cases_dir: Path):
    (cases_dir / "c03" / "mask.png").unlink()
    with pytest.raises(InputError, match=r"c03.*mask\.png"):
        load_cases(cases_dir)


def test_bad_meta_and_size_mismatch(cases_dir: Path):
    (cases_dir / "c01" / "meta.json").write_text("{oops")
    with pytest.raises(InputError, match=r"meta\.json"):
        load_cases(cases_dir)
    (cases_dir / "c01" / "meta.json").write_text("{}")
    Image.new("RGB", (10, 10)).save(cases_dir / "c01" / "target.png")
    with pytest.raises(InputError, match=r"target\.png.*does not match"):
        load_cases(cases_dir)


def test_missing_or_empty_folder(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        load_cases(tmp_path / "nope")
    with pytest.raises(InputError, match="no case folders"):
        load_cases(tmp_path)


def test_case_correspondence_is_the_deprecated_name_of_region(cases_dir):
    from refine_by_align.evaluation.cases import load_cases

    c1 = load_cases(cases_dir, limit=1)[0]
    with pytest.warns(DeprecationWarning, match=r"Case\.correspondence is deprecated"):
        assert c1.correspondence is c1.region


def test_true_field_read_back_and_bad_files_named(cases_dir: Path):
    """``true_field.npz`` is read into ``Case.true_field`` (arrays only); a file without its arrays,
    one holding pickled objects, or one whose box leaves the image is an InputError naming it."""
    d = cases_dir / "c01"  # its image is 48 x 40
    xy = np.random.default_rng(0).random((10, 12, 2)).astype(np.float32)
    np.savez(d / "true_field.npz", origin=np.int32([30, 25]), xy=xy)
    c = load_cases(cases_dir, limit=1)[0]
    assert c.true_field.origin == (30, 25) and np.array_equal(c.true_field.xy, xy)
    assert load_cases(cases_dir)[1].true_field is None
    bad = {
        "no xy": dict(origin=np.int32([0, 0])),
        "pickled": dict(origin=np.int32([0, 0]), xy=np.array([{"a": 1}], dtype=object)),
        "leaves": dict(origin=np.int32([40, 0]), xy=xy),  # 40 + 12 > 48
        "shape": dict(origin=np.int32([0, 0]), xy=xy[..., 0]),
    }
    for what, arrays in bad.items():
        np.savez(d / "true_field.npz", **arrays)
        with pytest.raises(InputError, match="true_field.npz") as e:
            load_cases(cases_dir, limit=1)
        assert "c01" in str(e.value), what
