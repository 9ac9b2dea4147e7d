import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.evaluation.bench import render_heatmap_overlay, run_bench
from refine_by_align.evaluation.cases import load_cases
from refine_by_align.evaluation.methods import RefineByAlignMethod

SUMMARY_KEYS = {"cases", "miou", "psnr", "ssim", "clip_t", "clip_i", "dino_i", "seconds_per_case", "fallbacks"}


def _check_common(res: dict, out: Path, name: str) -> dict:
    on_disk = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == res
    assert set(res) == {"method", "summary", "cases"} and res["method"] == name
    assert set(res["summary"]) == {"ALL", "dreambooth", "default"}
    for s in res["summary"].values():
        assert set(s) == SUMMARY_KEYS
    assert res["summary"]["ALL"]["cases"] == 3
    assert res["summary"]["dreambooth"]["cases"] == 2
    assert res["summary"]["default"]["cases"] == 1
    assert [c["case"] for c in res["cases"]] == ["c01", "c02", "c03"]
    for c in res["cases"]:
        assert set(c) == {"case", "kind", "miou", "psnr", "ssim", "clip_t", "clip_i", "dino_i", "fallback", "seconds"}
        assert c["clip_t"] is None and c["clip_i"] is None and c["dino_i"] is None  # no identity models given
        assert c["fallback"] is False
        assert (out / c["case"] / "output.png").is_file()
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 100 and sheet.height > 3 * 100
    assert np.asarray(sheet).std() > 0
    return res


@pytest.mark.parametrize("method", ["keep", "telea"])
def test_bench_baselines(cases_dir: Path, tmp_path: Path, method: str):
    out = tmp_path / "results"
    res = _check_common(run_bench(cases_dir, out, method=method, progress=False), out, method)
    for s in res["summary"].values():
        assert s["miou"] is None
    assert res["summary"]["default"]["psnr"] is None  # c03 has no target
    assert res["cases"][2]["psnr"] is None and res["cases"][2]["ssim"] is None
    assert not list(out.glob("*/correspondence.png"))
    psnr = res["summary"]["ALL"]["psnr"]
    assert psnr is not None and 0 < psnr < 100
    assert res["summary"]["ALL"]["psnr"] == pytest.approx(res["summary"]["dreambooth"]["psnr"])


def test_bench_telea_beats_keep(cases_dir: Path, tmp_path: Path):
    k = run_bench(cases_dir, tmp_path / "k", method="keep", progress=False)
    t = run_bench(cases_dir, tmp_path / "t", method="telea", progress=False)
    assert t["summary"]["ALL"]["psnr"] > k["summary"]["ALL"]["psnr"]


def test_bench_adapter_miou(cases_dir: Path, tmp_path: Path, fake_pipeline):
    # a pipeline that always returns c01's true correspondence
    truth = load_cases(cases_dir, limit=1)[0].region
    method = RefineByAlignMethod(fake_pipeline(truth))
    out = tmp_path / "r"
    res = _check_common(run_bench(cases_dir, out, method=method, progress=False), out, "refine-by-align")
    by_case = {c["case"]: c for c in res["cases"]}
    assert by_case["c01"]["miou"] == 1.0 and by_case["c03"]["miou"] == 1.0  # same synthetic region
    assert by_case["c02"]["miou"] is None  # no correspondence.png
    assert res["summary"]["ALL"]["miou"] == 1.0 and res["summary"]["dreambooth"]["miou"] == 1.0
    saved = np.asarray(Image.open(out / "c01" / "correspondence.png")) > 127
    assert np.array_equal(saved, truth)


def test_bench_limit_and_error_context(cases_dir: Path, tmp_path: Path):
    res = run_bench(cases_dir, tmp_path / "l", method="keep", limit=1, progress=False)
    assert res["summary"]["ALL"]["cases"] == 1

    class Boom:
        name = "boom"

        def __call__(self, case):
            raise RuntimeError("kaput")

    with pytest.raises(RuntimeError, match="kaput") as ei:
        run_bench(cases_dir, tmp_path / "b", method=Boom(), progress=False)
    assert any("c01" in n for n in ei.value.__notes__)


def test_heatmap_overlay():
    ref = Image.new("RGB", (20, 10), (100, 100, 100))
    heat = np.zeros((10, 20), np.float32)
    heat[:, 10:] = 1.0
    out = np.asarray(render_heatmap_overlay(ref, heat))
    assert out.shape == (10, 20, 3)
    assert (out[:, :10] == 100).all()  # cold pixels keep the reference
    assert not (out[:, 10:] == 100).all()
    m = np.zeros((5, 10), bool)
    m[:, :5] = True  # half-size bool mask, resized with nearest
    out = np.asarray(render_heatmap_overlay(ref, m, alpha=1.0, color=(0, 255, 0)))
    assert (out[:, :10] == (0, 255, 0)).all() and (out[:, 10:] == 100).all()
    nan = np.full((10, 20), np.nan, np.float32)
    assert (np.asarray(render_heatmap_overlay(ref, nan)) == 100).all()


def test_bench_bad_data_fails_before_method_is_built(cases_dir: Path, tmp_path: Path, monkeypatch):
    import refine_by_align.evaluation.registry as registry
    from refine_by_align.io import InputError

    built = []
    monkeypatch.setitem(registry.METHODS, "spy", lambda model=None, **o: built.append(model))
    (cases_dir / "c03" / "target.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match=r"c03.*target\.png"):
        run_bench(cases_dir, tmp_path / "x", method="spy", progress=False)
    assert built == []
