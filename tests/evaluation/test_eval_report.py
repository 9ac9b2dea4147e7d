"""run_all: several methods over one case folder -> report.json, report.md, contact_<kind>.png."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.evaluation.report import (
    build_report,
    report_markdown,
    resolve_methods,
    run_all,
)
from refine_by_align.io import InputError

METHODS4 = ["keep", "telea", "oracle-align", "feature-nn"]


def test_run_all(tiny_pipe, cases_dir: Path, tmp_path: Path, monkeypatch, clip_dir, dino_dir):
    import refine_by_align.evaluation.report as report

    loads = []
    monkeypatch.setattr(report, "load_pipeline", lambda model: loads.append(model) or tiny_pipe)
    out = tmp_path / "all"
    opts = {m: {"num_inference_steps": 2} for m in ("oracle-align", "feature-nn")}
    rep = run_all(cases_dir, out, methods=",".join(METHODS4), model="tiny", clip=clip_dir, dino=dino_dir,
                  progress=False, method_options=opts)
    assert loads == ["tiny"]  # one pipeline, shared by oracle-align and feature-nn

    on_disk = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == rep
    assert rep["methods"] == METHODS4 and rep["kinds"] == ["ALL", "default", "dreambooth"]
    assert rep["cases"] == {"ALL": 3, "default": 1, "dreambooth": 2}
    for m in METHODS4:
        assert (out / m / "metrics.json").is_file()
        for kind in rep["kinds"]:
            row = rep["results"][m][kind]
            assert set(rep["metrics"]) <= set(row)
    res = rep["results"]
    assert res["oracle-align"]["ALL"]["miou"] == 1.0  # c01 and c03 have a true region
    assert res["oracle-align"]["ALL"]["fallbacks"] == 1  # c02 has none
    assert res["keep"]["ALL"]["miou"] is None and res["feature-nn"]["ALL"]["miou"] is not None
    assert rep["best"]["ALL"]["miou"] == ["oracle-align"]
    assert rep["best"]["dreambooth"]["psnr"] and rep["best"]["ALL"]["seconds_per_case"]
    for m in METHODS4:
        assert -100 <= res[m]["ALL"]["clip_i"] <= 100 and -100 <= res[m]["ALL"]["dino_i"] <= 100
        assert res[m]["ALL"]["clip_t"] is None  # no captions

    md = (out / "report.md").read_text()
    assert md.count("| `keep` |") == 3 and "**1.000**" in md and "## dreambooth (2 cases)" in md
    assert md.count("**") >= 2 * 3 * 5

    assert rep["contact_sheets"] == {"default": "contact_default.png", "dreambooth": "contact_dreambooth.png"}
    for name in rep["contact_sheets"].values():
        sheet = np.asarray(Image.open(out / name))
        assert sheet.shape[0] > 128 and sheet.shape[1] > 128 * (1 + 1 + 2 + len(METHODS4)) and sheet.std() > 0
    assert Image.open(out / "contact_dreambooth.png").height > Image.open(out / "contact_default.png").height


def test_run_all_baselines_only_loads_no_model(cases_dir: Path, tmp_path: Path, monkeypatch):
    import refine_by_align.evaluation.report as report

    monkeypatch.setattr(report, "load_pipeline", lambda model: pytest.fail("no pipeline method was asked for"))
    rep = run_all(cases_dir, tmp_path / "b", methods=["keep", "telea"], progress=False, limit=2)
    assert rep["model"] is None and rep["cases"]["ALL"] == 2
    assert rep["best"]["ALL"]["psnr"] == ["telea"]
    assert (tmp_path / "b" / "contact_dreambooth.png").is_file()


def test_resolve_methods():
    assert resolve_methods("all")[:2] == ["keep", "telea"] and "keypoint" in resolve_methods("all")
    assert resolve_methods("keep, telea,keep") == ["keep", "telea"]
    with pytest.raises(InputError, match="unknown method 'nope'"):
        resolve_methods("keep,nope")
    with pytest.raises(InputError):
        resolve_methods("")


def test_bad_case_fails_before_model(cases_dir: Path, tmp_path: Path, monkeypatch):
    import refine_by_align.evaluation.report as report

    monkeypatch.setattr(report, "load_pipeline", lambda model: pytest.fail("model loaded before the data check"))
    (cases_dir / "c02" / "mask.png").unlink()
    with pytest.raises(InputError, match="c02"):
        run_all(cases_dir, tmp_path / "x", methods="all", progress=False)


def test_bold_rules():
    s = lambda **kw: {"ALL": {"cases": 2, "miou": None, "psnr": None, "ssim": None, "clip_t": None,
                              "clip_i": None, "dino_i": None, "seconds_per_case": None, "fallbacks": 0, **kw}}
    rep = build_report({"a": s(psnr=20.0, seconds_per_case=0.5, field_px=2.5), "b": s(psnr=30.004, seconds_per_case=2.0, field_px=0.05),
                        "c": s(psnr=30.001, seconds_per_case=1.0)})
    assert rep["best"]["ALL"]["psnr"] == ["b", "c"]  # tie at the displayed precision
    assert rep["best"]["ALL"]["seconds_per_case"] == ["a"]  # lower is better
    assert rep["best"]["ALL"]["field_px"] == ["b"]  # lower is better; c has no field
    assert rep["best"]["ALL"]["miou"] == []
    md = report_markdown(rep)
    assert "**30.00**" in md and "**0.50**" in md and "| `a` | - | 20.00 |" in md and "**0.050**" in md
