import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.evaluation.bench import render_heatmap_overlay, run_bench
from refine_by_align.evaluation.cases import load_cases
from refine_by_align.evaluation.methods import RefineByAlignMethod

SUMMARY_KEYS = {"cases", "miou", "psnr", "ssim", "clip_t", "clip_i", "dino_i", "seconds_per_case", "fallbacks", "field_px", "field_median_px", "fields"}


def _check_common(res: dict, out: Path, name: str) -> dict:
    on_disk = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == res
    assert set(res) == {"method", "config", "summary", "cases"} and res["method"] == name
    assert res["config"]["method"] == name and "versions" in res["config"]  # (what made the results, saved with them)
    assert set(res["summary"]) == {"ALL", "dreambooth", "default"}
    for s in res["summary"].values():
        assert set(s) == SUMMARY_KEYS
    assert res["summary"]["ALL"]["cases"] == 3
    assert res["summary"]["dreambooth"]["cases"] == 2
    assert res["summary"]["default"]["cases"] == 1
    assert [c["case"] for c in res["cases"]] == ["c01", "c02", "c03"]
    for c in res["cases"]:
        assert set(c) == {"case", "kind", "miou", "psnr", "ssim", "clip_t", "clip_i", "dino_i", "fallback", "seconds", "field_px", "field_median_px"}
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


def test_bench_warms_up_on_the_first_case_untimed(cases_dir: Path, tmp_path: Path, monkeypatch):
    """The first case's time held the first call's imports and compilations (9 s against about 1 s
    for the others in a probe): it is run once untimed, then timed with the remembered features
    dropped like the others'."""
    from refine_by_align.evaluation import bench as B
    from refine_by_align.evaluation.methods import KeepMethod

    calls, forgotten = [], []
    monkeypatch.setattr(B, "forget_remembered", lambda: forgotten.append(len(calls)))

    class Counting(KeepMethod):
        name = "counting"

        def __call__(self, case):
            calls.append(case.id)
            return super().__call__(case)

    res = run_bench(cases_dir, tmp_path / "w", method=Counting(), progress=False)
    assert calls == ["c01", "c01", "c02", "c03"] and forgotten == [1]
    assert [c["case"] for c in res["cases"]] == ["c01", "c02", "c03"]


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


def _digest(image) -> str:
    import hashlib

    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


class _FieldPipeline:
    """A stand-in pipeline whose one reference's field is each case's true field, ``shift`` px off
    (looked up by a digest of the image), over the true field's own box; no field without one."""

    def __init__(self, truths: dict, shift: tuple[float, float]):
        self.truths, self.shift = truths, np.float32(shift)

    def __call__(self, image, mask, reference, reference_mask=None, align=True):
        from types import SimpleNamespace

        from refine_by_align.zoom import Box

        tf, fld = self.truths.get(_digest(image)), None
        if tf is not None:
            (x0, y0), xy = tf.origin, tf.xy
            fld = SimpleNamespace(box=Box(x0, y0, x0 + xy.shape[1], y0 + xy.shape[0]), xy=xy + self.shift)
        return SimpleNamespace(image=image, region=None, heatmap=None, timings={}, references=[SimpleNamespace(field=fld)])


def test_bench_scores_fields_against_the_true_field(tmp_path: Path, tiny_multiview):
    """Cases with ``true_field.npz`` (make-cases' affine and nonrigid ones) get the method's field
    error inside the mask: 0 for the truth, the shift for a shifted truth, none on multiview cases
    or for a method without a field; the summary averages the cases that have one and counts them.
    The keypoint baseline's homography is scored too."""
    from refine_by_align.data.make_cases import make_cases

    cases = tmp_path / "cases"
    make_cases(tiny_multiview, cases, seed=5, subjects=["alpha", "beta"], cases_per_subject=3)
    truths = {_digest(c.image): c.true_field for c in load_cases(cases) if c.true_field is not None}
    assert len(truths) == 4
    for shift, want in (((0.0, 0.0), 0.0), ((0.6, -0.8), 1.0)):
        res = run_bench(cases, tmp_path / f"r{shift[0]}", method=RefineByAlignMethod(_FieldPipeline(truths, shift)), progress=False)
        for c in res["cases"]:
            if c["kind"] == "multiview":
                assert c["field_px"] is None and c["field_median_px"] is None
            else:
                assert c["field_px"] == pytest.approx(want, abs=1e-4) and c["field_median_px"] == pytest.approx(want, abs=1e-4)
        assert res["summary"]["ALL"]["fields"] == 4 and res["summary"]["multiview"]["fields"] == 0
        assert res["summary"]["ALL"]["field_px"] == pytest.approx(want, abs=1e-4)
    telea = run_bench(cases, tmp_path / "t", method="telea", progress=False)
    assert telea["summary"]["ALL"]["fields"] == 0 and telea["summary"]["ALL"]["field_px"] is None
    kp = run_bench(cases, tmp_path / "k", method="keypoint", progress=False)
    for c in kp["cases"]:
        assert (c["field_px"] is not None) == (c["kind"] != "multiview" and not c["fallback"])
    assert any(c["field_px"] is not None and c["field_px"] < 1.0 for c in kp["cases"])  # (alpha_00_affine: 0.37 px)


def test_the_pipelines_field_is_scored_on_real_cases(tiny_pipe, tmp_path: Path):
    """The pipeline's dense field reaches the benchmark (each reference's ``field`` in the result):
    on an affine case built from the shared photos it is a fraction of a pixel from the true field
    inside the mask with SIFT alone, and on a nonrigid one with ALIKED's matches (where its weights
    are found: SIFT alone misses that bent backpack by 3 px, the cap)."""
    from refine_by_align.data.make_cases import make_cases
    from refine_by_align.models.aliked import find_weights

    photos = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dreambooth-train"
    if not (photos / "backpack").is_dir():
        pytest.skip(f"{photos}/backpack not found (the shared photos are absent)")
    make_cases(photos, tmp_path / "cases", seed=1, subjects=["backpack"], cases_per_subject=2)
    res = run_bench(tmp_path / "cases", tmp_path / "out", method=RefineByAlignMethod(tiny_pipe, matchers="sift"), progress=False)
    by_kind = {c["kind"]: c for c in res["cases"]}
    assert set(by_kind) == {"affine", "nonrigid"} and res["summary"]["ALL"]["fields"] == 2
    assert by_kind["affine"]["field_px"] < 0.2, by_kind
    if find_weights("aliked-n16") is not None:
        res = run_bench(tmp_path / "cases", tmp_path / "both", method=RefineByAlignMethod(tiny_pipe, matchers="sift+aliked"), progress=False)
        by_kind = {c["kind"]: c for c in res["cases"]}
        assert by_kind["affine"]["field_px"] < 0.2 and by_kind["nonrigid"]["field_px"] < 0.6, by_kind


def test_pipeline_facts_say_which_matchers_a_pipeline_method_runs_with(tmp_path):
    """bench-quality without ALIKED's weights scored up to 7 dB lower with nothing said or recorded."""
    from refine_by_align.evaluation.bench import pipeline_facts
    from refine_by_align.evaluation.methods import RefineByAlignMethod, keep
    from refine_by_align.loading import load_pipeline

    pipe = load_pipeline("tiny")
    pipe.set_matcher(tmp_path / "missing.safetensors")  # (weights that cannot be had: SIFT alone)
    facts, lines = pipeline_facts(RefineByAlignMethod(pipe))
    assert facts["matchers_used"] == "sift" and facts["matcher_weights_used"] is None and facts["random_weights"] is True
    assert any(line.startswith("note: ALIKED matcher unavailable") for line in lines)
    assert any("RANDOM weights" in line for line in lines)
    # no dense alignment, no matchers: the single-stage variant and Algorithm 1's alignment
    assert pipeline_facts(RefineByAlignMethod(pipe, align=False))[0]["matchers_used"] is None
    assert pipeline_facts(RefineByAlignMethod(pipe, alignment="attention"))[0]["matchers_used"] is None
    pipe.set_matcher(enabled=False)
    facts, lines = pipeline_facts(RefineByAlignMethod(pipe))
    assert facts["matchers_used"] == "sift" and not any("ALIKED" in line for line in lines)  # (turned off on purpose: no note)
    assert pipeline_facts(keep) == ({}, [])
    from refine_by_align.evaluation.baselines import FeatureNNMethod, OracleAlignMethod

    assert pipeline_facts(FeatureNNMethod(pipe))[0]["matchers_used"] is None  # (its region is found outside the pipeline)
    assert pipeline_facts(OracleAlignMethod(pipe))[0]["matchers_used"] == "sift"  # (the cases without a true region align with them)
