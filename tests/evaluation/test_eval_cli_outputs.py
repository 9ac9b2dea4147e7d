"""The evaluation commands keep their results apart from their inputs and record what made them
(bench-quality, bench-suite, grid-search)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from refine_by_align.cli import main
from refine_by_align.demo.examples import EXAMPLES_DIR
from refine_by_align.models.aliked import find_weights


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the shipped examples (two cases), for commands pointed at their own input."""
    root = tmp_path / "cases"
    shutil.copytree(EXAMPLES_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", [
    ["bench-quality", "{cases}", "--output", "{out}", "--method", "keep"],
    ["grid-search", "{cases}", "--output", "{out}", "--model", "tiny", "--timesteps", "0", "--layers", "0"],
    ["bench-suite", "--cases", "{cases}", "--output", "{out}", "--sets", "val2"],
])
@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_output_folder_that_is_or_lies_in_the_cases_is_refused(command, where, examples, capsys):
    """Results written into the cases folder replaced each case's true correspondence.png with the
    prediction (a rerun then scored the prediction against itself, mIoU 1.000)."""
    before = _digests(examples)
    out = examples if where == "same" else examples / "results"
    rc = main(["-q", *[a.format(cases=examples, out=out) for a in command]])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "--output" in line and ("is the cases folder" if where == "same" else "is inside the cases folder") in line
    assert _digests(examples) == before and not (examples / "results").exists()


def test_bench_quality_records_what_made_its_results(tmp_path, examples, capsys):
    out = tmp_path / "res"
    rc = main(["-q", "bench-quality", str(examples), "--output", str(out), "--model", "tiny", "--limit", "1", "--steps", "2", "--seed", "5", "--no-warp"])
    assert rc == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["cases_dir"] == str(examples.resolve()) and cfg["command"] == "bench-quality"
    assert cfg["model"] == "tiny" and cfg["limit"] == 1 and cfg["seed"] == 5
    assert cfg["method_options"]["num_inference_steps"] == 2 and cfg["method_options"]["seed"] == 5 and cfg["method_options"]["warp"] is False
    assert set(cfg["versions"]) >= {"refine_by_align", "torch", "numpy", "diffusers"} and cfg["cpu"]["cores"] >= 1
    # the preset's random weights said and recorded (a tiny model's affine score equals the trained one's: the warp does the work)
    assert cfg["random_weights"] is True and "RANDOM weights" in capsys.readouterr().err
    # the matchers the dense alignment ran with (SIFT alone where ALIKED's weights are not found: up to 7 dB apart)
    assert cfg["matchers_used"] == ("sift+aliked" if find_weights() is not None else "sift")
    assert (cfg["matcher_weights_used"] is not None) == (find_weights() is not None)
    again = tmp_path / "again"
    assert main(["-q", "bench-quality", str(examples), "--output", str(again), "--model", "tiny", "--limit", "1", "--steps", "2", "--seed", "6", "--no-warp"]) == 0
    first, second = (json.loads((d / "metrics.json").read_text())["cases"][0]["psnr"] for d in (out, again))
    assert first != second  # (the seed reaches the sampling)


def test_bench_quality_all_records_the_config_in_the_report(tmp_path, examples):
    out = tmp_path / "res"
    assert main(["-q", "bench-quality", str(examples), "--output", str(out), "--method", "keep,telea", "--limit", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["method"] == "keep,telea" and report["config"]["limit"] == 1
    assert json.loads((out / "telea" / "metrics.json").read_text())["config"]["method"] == "telea"


def test_bench_quality_does_not_mix_two_methods_in_one_folder(tmp_path, examples, capsys):
    """A second method written into a folder of the first's replaced its metrics.json and some of
    its case outputs, leaving the rest (two methods' outputs in one folder, one method's scores)."""
    out = tmp_path / "res"
    assert main(["-q", "bench-quality", str(examples), "--output", str(out), "--method", "keep", "--limit", "1"]) == 0
    before = _digests(out)
    capsys.readouterr()
    assert main(["-q", "bench-quality", str(examples), "--output", str(out), "--method", "telea"]) == 2
    line = _one_error_line(capsys)
    assert "holds results of method 'keep'" in line and "new --output folder" in line
    assert _digests(out) == before
    assert main(["-q", "bench-quality", str(examples), "--output", str(out), "--method", "keep", "--limit", "1"]) == 0  # (a rerun of the same)


def test_bench_quality_says_where_a_method_fell_back(capsys):
    from refine_by_align.commands.bench_quality import _print_summary

    row = {"cases": 3, "miou": 1.0, "psnr": 20.0, "ssim": 0.9, "seconds_per_case": 0.3, "fallbacks": 2}
    _print_summary({"ALL": row, "multiview": row}, "oracle-align")
    out = capsys.readouterr().out
    assert "PSNR dB" in out.splitlines()[0] and "fallbacks" in out.splitlines()[0]
    assert "note: oracle-align fell back on 2 of 3 cases (no true region" in out
    _print_summary({"ALL": {**row, "fallbacks": 0}}, "oracle-align")
    assert "note:" not in capsys.readouterr().out


def test_bench_quality_refuses_matcher_weights_it_cannot_load(tmp_path, examples, capsys):
    """A folder without the weights was looked past (the shared folder's were used, silently)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["-q", "bench-quality", str(examples), "--output", str(tmp_path / "res"), "--model", "tiny", "--matcher-weights", str(empty)])
    assert rc == 2
    assert "--matcher-weights" in (line := _one_error_line(capsys)) and "cannot load the ALIKED matcher" in line
    assert not (tmp_path / "res").exists()


@pytest.mark.skipif(find_weights() is None, reason="the ALIKED weights (../shared/weights) are not on this machine")
def test_bench_quality_takes_a_matcher_weights_file(tmp_path, examples):
    """--help says a .safetensors file or a folder; a file was refused ('takes a folder')."""
    weights = tmp_path / "my-aliked.safetensors"
    shutil.copyfile(find_weights(), weights)
    out = tmp_path / "res"
    assert main(["-q", "bench-quality", str(examples), "--output", str(out), "--model", "tiny", "--limit", "1", "--steps", "1", "--matcher-weights", str(weights)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["matcher_weights"] == str(weights.resolve())


def test_grid_search_hint_names_the_attention_alignment(cases_dir, tmp_path, capsys):
    """(t, l) change nothing in the default dense alignment where it finds a field: the hint said
    to pass them alone."""
    rc = main(["-q", "grid-search", str(cases_dir), "--output", str(tmp_path / "g"), "--model", "tiny", "--timesteps", "0", "--layers", "0", "--seed", "3"])
    assert rc == 0
    assert "--alignment attention --alignment-timestep 0 --alignment-layer 0" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "g" / "grid.json").read_text())["config"]
    assert cfg["seed"] == 3 and cfg["cases_dir"] == str(cases_dir.resolve()) and cfg["timesteps"] == [0]
