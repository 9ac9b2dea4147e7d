"""The validation suite: its sets as documented, built once, scored, and two runs compared case by case."""

import json
import shutil

import pytest

from refine_by_align.cli import main
from refine_by_align.data.readers import VALIDATION_SUBJECTS
from refine_by_align.evaluation.suite import SUITE, TRAINING_CHECK_SUBJECTS, UNUSED_SUBJECTS, CaseSet, build_suite, compare_runs, run_suite, suite_sets


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
    """Each set's cases are built where missing (a set cut short is built again, the same bytes);
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

    keep = run_suite(tmp_path / "cases", tmp_path / "keep", sets, method="keep", progress=False)
    telea = run_suite(tmp_path / "cases", tmp_path / "telea", sets, method="telea", progress=False)
    assert json.loads((tmp_path / "keep" / "suite.json").read_text())["sets"]["a"]["cases"] == keep["sets"]["a"]["cases"] == 2
    assert telea["sets"]["b"]["role"] == "check" and telea["psnr_by_role"]["decide"] is not None
    (tmp_path / "telea" / "b" / "metrics.json").write_text(json.dumps({**json.loads((tmp_path / "telea" / "b" / "metrics.json").read_text()), "cases": []}))
    again = run_suite(tmp_path / "cases", tmp_path / "telea", sets[:1], method="no-such-method-not-run", progress=False)  # read back, not run
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
