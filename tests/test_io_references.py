"""io.load_inputs with a list of references: headers first, one before_decode, errors naming the reference."""

import numpy as np
import pytest
from PIL import Image

from refine_by_align.io import InputError, load_inputs


def _png(path, size, mode="RGB", value=128):
    Image.new(mode, size, value).save(path)
    return str(path)


def test_a_list_of_references_comes_back_as_lists(tmp_path):
    image = _png(tmp_path / "i.png", (32, 24))
    mask = tmp_path / "m.png"
    m = np.zeros((24, 32), np.uint8)
    m[5:10, 5:10] = 255
    Image.fromarray(m).save(mask)
    a, b = _png(tmp_path / "a.png", (20, 20)), _png(tmp_path / "b.png", (40, 30))
    bm = _png(tmp_path / "bm.png", (40, 30), "L", 255)
    calls = []
    img, msk, refs, rmasks, names = load_inputs(
        {"image": image, "mask": str(mask), "reference": [a, b], "reference_mask": [None, bm]}, before_decode=lambda: calls.append(1)
    )
    assert calls == [1] and img.size == (32, 24) and msk.sum() == 25
    assert [r.size for r in refs] == [(20, 20), (40, 30)]
    assert rmasks[0] is None and rmasks[1].all()
    assert names["reference"] == [a, b] and names["reference_mask"] == [None, bm]


def test_errors_name_the_reference_and_come_before_decoding(tmp_path):
    image = _png(tmp_path / "i.png", (32, 24))
    mask = _png(tmp_path / "m.png", (32, 24), "L", 255)
    a = _png(tmp_path / "a.png", (20, 20))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    calls = []
    with pytest.raises(InputError, match=r"reference #2.*b\.png"):
        load_inputs({"image": image, "mask": mask, "reference": [a, str(bad)]}, before_decode=lambda: calls.append(1))
    wrong = _png(tmp_path / "w.png", (9, 9), "L", 255)
    with pytest.raises(InputError, match=r"reference #2 mask '.*w\.png': size 9x9 does not match the reference 20x20"):
        load_inputs({"image": image, "mask": mask, "reference": [str(bad), a][1:] + [a], "reference_mask": [None, wrong]},
                    before_decode=lambda: calls.append(1))
    tiny = _png(tmp_path / "t.png", (4, 4))
    with pytest.raises(InputError, match=r"reference #3 '.*t\.png': 4x4 is too small"):
        load_inputs({"image": image, "mask": mask, "reference": [a, a, tiny]}, before_decode=lambda: calls.append(1))
    assert calls == []  # refused on the headers, before any pixel was decoded
    with pytest.raises(InputError, match="1 reference masks for 2 references"):
        load_inputs({"image": image, "mask": mask, "reference": [a, a], "reference_mask": [None]})
