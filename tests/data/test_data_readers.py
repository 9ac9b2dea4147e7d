import numpy as np
import pytest
from PIL import Image

from refine_by_align.data.readers import (
    VALIDATION_SUBJECTS,
    DatasetError,
    ImageMaskFolder,
    MultiViewFolder,
)
from refine_by_align.data.synthetic import SyntheticSource, render_object


def _open(path):
    """Read an image fully and close the file."""
    with Image.open(path) as im:
        im.load()
        return im.copy()

def test_render_object():
    img, m = render_object(np.random.default_rng(0), size=96)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and m.shape == (96, 96) and m.dtype == bool
    assert 0.05 < m.mean() < 0.8
    assert len(np.unique(img[m].reshape(-1, 3), axis=0)) > 30  # a detailed, multi-part object
    img2, m2 = render_object(np.random.default_rng(0), size=96)
    assert (img == img2).all() and (m == m2).all()
    src = SyntheticSource(size=64, pool_size=3, seed=1)
    a = src.sample_single(np.random.default_rng(0))
    assert a is src.get(int(np.random.default_rng(0).integers(3)))  # cached


def test_multiview_folder(tiny_multiview):
    mv = MultiViewFolder(tiny_multiview)
    assert mv.subjects == ["alpha", "beta"] and len(mv) == 4 and mv.n_views("alpha") == 2
    img, m = mv.view("alpha", 0)
    assert img.shape == (128, 160, 3) and img.dtype == np.uint8 and m.dtype == bool
    soft = np.asarray(_open(tiny_multiview / "alpha" / "00_mask.png"))
    assert (m == (soft >= 128)).all()  # soft mask thresholded at 128
    assert mv.view("alpha", 0) is mv.view("alpha", 0)  # cached
    small = MultiViewFolder(tiny_multiview, subjects=["beta"], max_side=80)
    img, m = small.view("beta", 1)
    assert img.shape == (64, 80, 3) and m.shape == (64, 80)
    i1, m1, i2, m2 = mv.sample_pair(np.random.default_rng(0))
    assert i1 is not i2 and m1.shape == i1.shape[:2] and m2.shape == i2.shape[:2]
    assert MultiViewFolder(tiny_multiview, exclude=("alpha",)).subjects == ["beta"]


def test_reader_errors(tmp_path, tiny_multiview):
    with pytest.raises(DatasetError, match="not found"):
        MultiViewFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable subject"):
        MultiViewFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no subject folder"):
        MultiViewFolder(tiny_multiview, subjects=["gamma"])
    with pytest.raises(DatasetError, match="no image"):
        ImageMaskFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        ImageMaskFolder(tmp_path / "nope")


def test_image_mask_folder(tmp_path, tiny_multiview):
    flat = tmp_path / "flat"
    flat.mkdir()
    for src in (tiny_multiview / "alpha").iterdir():
        (flat / src.name).write_bytes(src.read_bytes())
    Image.new("RGB", (8, 8)).save(flat / "orphan.png")  # no mask: ignored
    f = ImageMaskFolder(flat)
    assert len(f) == 2
    img, m = f.sample_single(np.random.default_rng(0))
    assert img.shape[:2] == m.shape and m.any()


def test_dreambooth_folder(dreambooth_root):
    mv = MultiViewFolder(dreambooth_root, max_side=96)
    assert not set(VALIDATION_SUBJECTS) & set(mv.subjects)
    assert len(mv.subjects) >= 10 and mv.pair_subjects
    img, m = mv.view(mv.subjects[0], 0)
    assert max(img.shape[:2]) == 96 and m.any()


def test_relative_photo_folders_are_found_from_the_repository_root(tmp_path, monkeypatch):
    """The recipes' and options' ``../shared/...`` is written from the repository root: a command
    run from another folder found no photos (bench-suite failed, train and demo dropped them)."""
    from pathlib import Path

    from refine_by_align.data.readers import resolve_data_root

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("src/refine_by_align/demo/examples") == (repo / "src/refine_by_align/demo/examples").resolve()
    (tmp_path / "mine").mkdir()
    assert resolve_data_root("mine") == Path("mine")  # found from here: as given
    assert resolve_data_root("nowhere") == Path("nowhere")  # found nowhere: as given, for the caller to refuse
    assert resolve_data_root(str(tmp_path / "mine")) == tmp_path / "mine"
