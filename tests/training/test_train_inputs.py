"""Bad inputs to `train` and `plot`: one line naming the file and the field, exit 2, nothing
written; a folder that holds a run is not trained into again without --resume; a resumed run's
log reads as one run."""

import dataclasses
import json

import pytest

from refine_by_align.cli import main
from refine_by_align.training.plot import read_log
from refine_by_align.training.train import RECIPES_DIR, latest_checkpoint, load_train_config, train


def _tc(**kw):
    tc = load_train_config("tiny")
    return dataclasses.replace(tc, **({"batch_size": 2, "eval_every": 0} | kw))


def _recipe(tmp_path, **fields):
    """The tiny recipe with ``fields`` replaced, as a JSON file."""
    data = json.loads((RECIPES_DIR / "tiny.json").read_text()) | fields
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    return path


def _error_line(capsys, command="train"):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"refine-by-align {command}: error: "), err
    return lines[0]


def test_a_folder_that_holds_a_run_is_refused_without_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()  # an empty existing folder is fine
    assert train(_tc(max_steps=2), run, max_steps=1, progress=False)["step"] == 1
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["-q", "train", "--config", "tiny", "--output", str(run)]) == 2
    line = _error_line(capsys)
    assert f"'{run}' already holds a run" in line and "pass --resume to continue it, or choose another folder" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing replaced, appended or added
    assert train(_tc(max_steps=2), run, resume=True, progress=False)["step"] == 2  # --resume continues it
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["step"] == 2
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    # each part of a run is enough to refuse the folder; a file is no run folder
    for part in ("log.jsonl", "weights", "checkpoints"):
        other = tmp_path / f"only-{part}"
        other.mkdir()
        (other / part).mkdir() if part != "log.jsonl" else (other / part).write_text("")
        with pytest.raises(ValueError, match=f"already holds a run \\({part}\\)"):
            train(_tc(max_steps=1), other, progress=False)
        assert sorted(p.name for p in other.iterdir()) == [part]
    (tmp_path / "file").write_text("x")
    assert main(["-q", "train", "--config", "tiny", "--output", str(tmp_path / "file")]) == 2
    assert "is a file, not a run folder" in _error_line(capsys)


BAD_VALUES = [
    ("checkpoint_every", 0, "an integer >= 1"),
    ("log_every", 0, "an integer >= 1"),
    ("max_steps", 0, "an integer >= 1"),
    ("batch_size", 2.5, "an integer >= 1"),
    ("warmup_steps", -1, "an integer >= 0"),
    ("lr_unet", "abc", "a finite number >= 0"),
    ("lr_projector", -1e-3, "a finite number >= 0"),
    ("synthetic_weight", 2.0, "a number in [0, 1]"),
    ("cond_drop", -0.1, "a number in [0, 1]"),
    ("ema_decay", 1.5, "a number in [0, 1)"),
    ("ema_decay", 1.0, "a number in [0, 1)"),
    ("attn_min_side", 1000, "at most 16"),
    ("attn_sigma", 0, "a finite number > 0"),
    ("seed", -1, "an integer in 0..2^32-1"),
    ("seed", 2**32, "an integer in 0..2^32-1"),
    ("seed", True, "an integer in 0..2^32-1"),
    ("mixed_precision", "fp8", "one of no, fp16, bf16"),
    ("lr_schedule", "linear", "one of constant, cosine"),
    ("keep_checkpoints", 0, "an integer >= 1"),
    ("mode_weights", {"alignment": -1}, "an object of weights >= 0"),
    ("mode_weights", {"alignment": 0, "refinement": 0}, "an object with a positive weight"),
]


@pytest.mark.parametrize("field,value,want", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_a_recipe_value_out_of_range_is_one_line_naming_the_file_and_field(tmp_path, capsys, field, value, want):
    path = _recipe(tmp_path, **{field: value})
    out = tmp_path / "run"
    out.mkdir()  # an empty folder given: it stays empty (no half-made run)
    assert main(["-q", "train", "--config", str(path), "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert f"{path}: {field} must be {want}" in line and line.endswith(f", got {value!r}")
    assert list(out.iterdir()) == []


def test_a_model_override_that_does_not_fit_names_the_recipe(tmp_path, capsys):
    path = _recipe(tmp_path, model_overrides={"resolution": 3})
    assert main(["-q", "train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert f"{path}: model 'tiny' with its model_overrides:" in line and "resolution" in line
    assert not (tmp_path / "run").exists()


def test_train_checks_a_config_given_in_python_before_writing(tmp_path):
    with pytest.raises(ValueError, match="training config: checkpoint_every must be an integer >= 1, got 0"):
        train(_tc(checkpoint_every=0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # a part the loop builds that does not fit (init_from): no folder left either
    with pytest.raises(ValueError):
        train(_tc(init_from=str(tmp_path / "missing")), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_malformed_recipe_names_its_file(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"model": "tiny",\n}')
    assert main(["-q", "train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert f"{path}: not valid JSON: " in line and "line 2 column 1" in line
    path.write_text("[1, 2]")
    assert main(["-q", "train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    assert f"{path}: a training config is a JSON object of fields, got a list" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_max_steps_below_one_is_refused(tmp_path, capsys, bad):
    assert main(["-q", "train", "--config", "tiny", "--output", str(tmp_path / "run"), "--max-steps", bad]) == 2
    assert f"--max-steps must be a step number >= 1 (where this invocation stops), got {bad}" in _error_line(capsys)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--max-steps must be an integer >= 1"):
        train(_tc(), tmp_path / "run", max_steps=int(bad), progress=False)
    assert not (tmp_path / "run").exists()


def test_max_steps_past_the_recipes_end_says_where_the_run_stops(tmp_path, capsys):
    """--max-steps stops a run early (the schedule follows the recipe's max_steps): a larger value
    cannot train longer, and says so."""
    rec = train(_tc(max_steps=2), tmp_path / "run", max_steps=5, progress=False)
    assert rec["step"] == 2
    out = capsys.readouterr().out
    assert "note: --max-steps 5 is past the run's max_steps 2, where its schedule ends: stopping at step 2" in out


def test_read_log_keeps_the_latest_run_of_each_step(tmp_path):
    """A kill at step 6 and --resume from the step-3 checkpoint: log.jsonl holds 1..6 then 4..8
    (and evaluations at 2, 4, 6, then 4, 6, 8); the resumed run's records replace the ones it redid."""
    recs = []
    for run, steps in ((0, range(1, 7)), (1, range(4, 9))):
        for s in steps:
            recs.append({"step": s, "loss": 10.0 * run + s, "loss_eps": 1.0, "loss_attn": 1.0, "images_per_s": 1.0})
            if s % 2 == 0:
                recs.append({"step": s, "eval": True, "hole_mse_right": 10.0 * run + s, "hole_mse_shuffled": 1.0})
    text = "\n".join(json.dumps(r) for r in recs) + '\n{"step": 9, "lo'  # and a torn last line
    (tmp_path / "log.jsonl").write_text(text)
    train_recs, evals = read_log(tmp_path)
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["loss"] for r in train_recs] == [1, 2, 3, 14, 15, 16, 17, 18]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    assert [r["hole_mse_right"] for r in evals] == [2, 14, 16, 18]
    # a resumed run that logs no evaluation before its next training record still drops the old ones
    recs = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4)] + [{"step": 4, "eval": True}] + [{"step": s, "loss": 2.0} for s in (3, 4, 5)]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    train_recs, evals = read_log(tmp_path)
    assert [(r["step"], r["loss"]) for r in train_recs] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0), (5, 2.0)]
    assert evals == []


def test_plot_refuses_an_empty_log_and_an_unknown_format_in_one_line(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text("")
    assert main(["plot", str(tmp_path)]) == 2
    assert f"{tmp_path / 'log.jsonl'} has no training records yet" in _error_line(capsys, "plot")
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "loss_eps": 1.0, "loss_attn": 0.5, "images_per_s": 3.0}) + "\n")
    assert main(["plot", str(tmp_path), "--output", str(tmp_path / "x.txt")]) == 2
    assert f"--output '{tmp_path / 'x.txt'}': cannot write a .txt plot" in _error_line(capsys, "plot")
    assert not (tmp_path / "x.txt").exists()
    assert main(["plot", str(tmp_path), "--output", str(tmp_path / "x.svg")]) == 0
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")
