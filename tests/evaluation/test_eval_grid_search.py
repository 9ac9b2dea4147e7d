"""grid_search (Algorithm 1's (t, l) search, Fig. 4, 5, 7) on the tiny model over two small cases."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.evaluation.grid_search import grid_search
from refine_by_align.io import InputError


def test_grid_search_table_best_and_pictures(cases_dir: Path, tmp_path: Path):
    out = tmp_path / "grid"
    res = grid_search(cases_dir, out, model="tiny", timesteps=(0, 500), layers=(0, 2), progress=False)
    assert json.loads((out / "grid.json").read_text()) == res
    assert res["model"] == "tiny" and res["cases"] == 2  # c02 has no correspondence.png: not scored
    assert res["timesteps"] == [0, 500] and res["layers"] == [0, 2] and len(res["layer_names"]) == 2
    assert all(name.endswith("attn2") for name in res["layer_names"])
    table = np.asarray(res["miou"])
    assert table.shape == (2, 2) and ((0 <= table) & (table <= 1)).all()
    best = res["best"]
    i, j = res["timesteps"].index(best["alignment_timestep"]), res["layers"].index(best["alignment_layer"])
    assert round(best["miou"], 4) == table.max() == table[i, j]
    assert set(res["shipped"]) == {"alignment_timestep", "alignment_layer"}
    # the cases behind each mIoU, and the one left out, named (a researcher computes spreads from them)
    assert res["case_ids"] == ["c01", "c03"] and res["skipped"] == ["c02"]
    per_case = np.asarray(res["iou_per_case"])
    assert per_case.shape == (2, 2, 2) and np.allclose(per_case.mean(axis=2), table, atol=1e-3)
    assert np.allclose(np.asarray(res["miou_std"]), per_case.std(axis=2), atol=1e-3) and res["example_maps"] == "grid_maps_c01.png"
    for name in ("grid_heatmap.png", "grid_marginals.png", "grid_maps_c01.png"):
        with Image.open(out / name) as im:
            assert im.width > 100 and im.height > 100
    again = grid_search(cases_dir, tmp_path / "again", model="tiny", timesteps=(0, 500), layers=(0, 2), progress=False)
    assert again["miou"] == res["miou"]  # seeded: the same table


def test_grid_search_refuses_bad_settings(cases_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="layer 99 out of range"):
        grid_search(cases_dir, tmp_path / "a", model="tiny", timesteps=(0,), layers=(99,), progress=False)
    with pytest.raises(ValueError, match="timestep 5000 out of range"):
        grid_search(cases_dir, tmp_path / "b", model="tiny", timesteps=(5000,), layers=(0,), progress=False)
    for c in ("c01", "c03"):
        (cases_dir / c / "correspondence.png").unlink()
    with pytest.raises(ValueError, match="no case .* has a correspondence.png"):
        grid_search(cases_dir, tmp_path / "c", model="tiny", timesteps=(0,), layers=(0,), progress=False)
    with pytest.raises(InputError, match="nowhere.*no model folder at"):
        grid_search(cases_dir, tmp_path / "d", model=str(tmp_path / "nowhere"), progress=False)
    assert not any((tmp_path / n).exists() for n in "abcd")  # (no output folder made for a refused search)
