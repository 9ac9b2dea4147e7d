"""The validation suite: its sets as documented, built once, scored, and two runs compared case by case."""

import json
import shutil
from pathlib import Path

import pytest

from refine_by_align.cli import main
from refine_by_align.data.readers import VALIDATION_SUBJECTS
from refine_by_align.evaluation.suite import SUITE, TRAINING_CHECK_SUBJECTS, UNUSED_SUBJECTS, CaseSet, SuiteMismatchError, build_suite, compare_runs, run_suite, suite_sets


def test_the_suite_is_the_documented_sets():
    """The seven sets of MODEL_CARD.md (seeds, cases, roles); the three groups of subjects are
    disjoint, so no check set shares a subject with the sets settings are chosen on."""
    rows = [(s.name, s.seed, s.per_subject * len(s.subjects), s.role) for s in SUITE]
    assert rows == [
        ("val", 0, 24, "check"), ("val2", 1, 24, "decide"), ("val3", 2, 24, "decide"), ("val4", 3, 24, "decide"),
        ("trsub", 7, 24, "check"), ("fresh8", 11, 24, "check"), ("fresh8b", 12, 48, "check"),
    ]  # fmt: skip
    groups = [set(VALIDATION_SUBJECTS), set(TRAINING_CHECK_SUBJECTS), set(UNUSED_SUBJECTS)]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == 20
    assert [s.name for s in suite_sets(" val3,val2 ")] == ["val2", "val3"] and len(suite_sets("all")) == 7
    with pytest.raises(ValueError, match="unknown case set.*nosuch.*choose from val, val2"):
        suite_sets("val2,nosuch")


def test_a_suite_is_built_once_scored_and_compared(tmp_path, tiny_multiview):
    """Each set's cases are built where missing (a set cut short, or one without its true fields, is
    built again, the same bytes);
    run_suite scores every set and resumes from the metrics already written; compare_runs gives
    each set's change case by case and pooled per role, and names a set one run lacks."""
    sets = [CaseSet("a", 3, 1, ("alpha", "beta"), "decide"), CaseSet("b", 4, 2, ("alpha",), "check")]
    folders = build_suite(tiny_multiview, tmp_path / "cases", sets)
    cases = sorted(p.name for p in folders["a"].iterdir())
    assert len(cases) == 2 and len(list(folders["b"].iterdir())) == 2
    image = (folders["a"] / cases[0] / "image.png").read_bytes()
    stamp = (folders["b"] / sorted(p.name for p in folders["b"].iterdir())[0] / "image.png").stat().st_mtime_ns
    shutil.rmtree(folders["a"] / cases[0])  # cut short: built again
    build_suite(tiny_multiview, tmp_path / "cases", sets)
    assert (folders["a"] / cases[0] / "image.png").read_bytes() == image
    assert (folders["b"] / sorted(p.name for p in folders["b"].iterdir())[0] / "image.png").stat().st_mtime_ns == stamp  # (kept)
    truths = sorted(folders["b"].glob("*/true_field.npz"))  # (set b's two cases: affine and nonrigid)
    assert len(truths) == 2
    held = truths[0].read_bytes()
    truths[0].unlink()  # a set built before the true fields were written: built again, with them
    build_suite(tiny_multiview, tmp_path / "cases", sets)
    assert truths[0].read_bytes() == held

    keep = run_suite(tmp_path / "cases", tmp_path / "keep", sets, method="keep", progress=False)
    telea = run_suite(tmp_path / "cases", tmp_path / "telea", sets, method="telea", progress=False)
    assert json.loads((tmp_path / "keep" / "suite.json").read_text())["sets"]["a"]["cases"] == keep["sets"]["a"]["cases"] == 2
    assert telea["sets"]["b"]["role"] == "check" and telea["psnr_by_role"]["decide"] is not None
    (tmp_path / "telea" / "b" / "metrics.json").write_text(json.dumps({**json.loads((tmp_path / "telea" / "b" / "metrics.json").read_text()), "cases": []}))
    again = run_suite(tmp_path / "cases", tmp_path / "telea", sets[:1], method="telea", progress=False)  # read back, not run
    assert again["sets"]["a"] == telea["sets"]["a"]

    cmp = compare_runs(tmp_path / "keep", tmp_path / "telea", sets)
    k = {c["case"]: c["psnr"] for c in json.loads((tmp_path / "keep" / "a" / "metrics.json").read_text())["cases"]}
    t = {c["case"]: c["psnr"] for c in json.loads((tmp_path / "telea" / "a" / "metrics.json").read_text())["cases"]}
    change = sum(t[c] - k[c] for c in k) / len(k)
    row = cmp["sets"]["a"]
    assert row["cases"] == 2 and row["change"] == pytest.approx(change) and row["up"] + row["down"] <= 2
    assert row["after"] - row["before"] == pytest.approx(change) and cmp["pooled"]["decide"]["change"] == pytest.approx(change)
    assert cmp["missing"] == ["b"] and cmp["pooled"]["check"]["cases"] == 0  # (set b emptied in the second run)


def test_bench_suite_bad_inputs_are_one_line(tmp_path, capsys):
    for args, message in (
        (["--sets", "val2,nosuch"], "--sets: unknown case set(s) nosuch"),
        (["--sets", "val2", "--source", str(tmp_path / "nope")], "--source"),
        (["--compare", str(tmp_path / "nope")], "--compare"),
    ):
        rc = main(["bench-suite", "--cases", str(tmp_path / "cases"), "--output", str(tmp_path / "run"), *args])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_run_folder_is_not_resumed_with_another_method_or_model(tmp_path, tiny_multiview, monkeypatch, capsys):
    """A set already scored is read back only into a run of the same method and model: the folder's
    suite.json names them from its first set on (an interrupted run too), a folder written without
    one is checked by its sets' metrics.json, and the command says so in one line."""
    import refine_by_align.evaluation.bench as bench

    sets = [CaseSet("a", 3, 1, ("alpha",), "decide"), CaseSet("b", 4, 1, ("beta",), "check")]
    build_suite(tiny_multiview, tmp_path / "cases", sets)
    real = bench.run_bench

    def cut_short(cases_dir, output_dir, **kw):  # the run is killed during its second set
        if Path(cases_dir).name == "b":
            raise KeyboardInterrupt
        return real(cases_dir, output_dir, **kw)

    monkeypatch.setattr(bench, "run_bench", cut_short)
    with pytest.raises(KeyboardInterrupt):
        run_suite(tmp_path / "cases", tmp_path / "run", sets, method="telea", progress=False)
    assert json.loads((tmp_path / "run" / "suite.json").read_text())["method"] == "telea"  # named before it was cut short
    for method, model in (("keep", None), ("telea", "some/other-model")):
        with pytest.raises(SuiteMismatchError, match="give a new --output folder"):
            run_suite(tmp_path / "cases", tmp_path / "run", sets, method=method, model=model, progress=False)
    monkeypatch.setattr(bench, "run_bench", real)
    done = run_suite(tmp_path / "cases", tmp_path / "run", sets, method="telea", model="default", progress=False)  # resumed (no --model is the default): b run, a read back
    assert done["sets"]["a"]["cases"] == 1 and done["sets"]["b"]["cases"] == 1

    (tmp_path / "run" / "suite.json").unlink()  # a folder without suite.json: its sets' metrics.json are checked
    with pytest.raises(SuiteMismatchError, match="holds results of method 'telea' with model 'default', not method 'keep'"):
        run_suite(tmp_path / "cases", tmp_path / "run", sets, method="keep", progress=False)
    with pytest.raises(SuiteMismatchError, match="with model 'default', not method 'telea' with model 'some/other-model'"):
        run_suite(tmp_path / "cases", tmp_path / "run", sets, method="telea", model="some/other-model", progress=False)
    import refine_by_align.evaluation.suite as suite

    monkeypatch.setattr(suite, "build_suite", lambda *a, **k: {})  # (the command's sets are the real ones: not built here)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "suite.json").write_text(json.dumps({"method": "keep", "model": None, "sets": {}}))
    rc = main(["bench-suite", "--cases", str(tmp_path / "cases"), "--output", str(tmp_path / "other"), "--sets", "val"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a run of method 'keep' with model 'default', not method 'refine-by-align'" in err and len(err.strip().splitlines()) == 1, err

