"""What a run records and how it stops: the photo folder it used (and --resume refusing other
photos), the processes, batch, device, options and environment beside every checkpoint, why it
stopped, the run folder's lock, Ctrl-C writing a checkpoint, init_from found as data_root is, and
--model given a run folder or one of its checkpoints."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refine_by_align.cli import main
from refine_by_align.training.train import LOCK_FILE, RECIPES_DIR, latest_checkpoint, load_train_config, train

REPO = Path(__file__).resolve().parents[2]


def _tc(**kw):
    tc = load_train_config("tiny")
    return dataclasses.replace(tc, **({"batch_size": 2, "eval_every": 0} | kw))


def _recipe(folder: Path, **fields) -> Path:
    """The tiny recipe at batch 2 without evaluations, ``fields`` replaced, as a JSON file."""
    data = json.loads((RECIPES_DIR / "tiny.json").read_text()) | {"batch_size": 2, "eval_every": 0} | fields
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.json"
    path.write_text(json.dumps(data))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refine-by-align train: error: "), err
    return lines[0]


def _photos(folder: Path) -> Path:
    """Two subjects of two textured photos with masks (MultiViewFolder's layout)."""
    rng = np.random.default_rng(0)
    for subject in ("alpha", "beta"):
        (folder / subject).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / subject / f"{i:02d}.png")
            m = np.zeros((96, 128), np.uint8)
            m[16:80, 24:104] = 255
            Image.fromarray(m).save(folder / subject / f"{i:02d}_mask.png")
    return folder


def _saved(path: Path) -> dict:
    return json.loads(path.read_text())


def _log(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- 1. the photos a run used
def test_the_saved_config_records_the_photo_folder_used_and_data_root_overrides_it(tmp_path, monkeypatch, capsys):
    """data_root resolves from the current folder (then the repository root): the saved config keeps
    the value asked for and records the folder found (absolute) or null; the note that none was
    found is said once; --data-root replaces the recipe's and must exist."""
    recipe = _recipe(tmp_path / "cfg", data_root="../rba-photos", synthetic_weight=0.5, max_steps=1)
    (tmp_path / "a" / "work").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "work")
    assert main(["-q", "train", "--config", str(recipe), "--output", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert out.count("note: no multi-view photos at '../rba-photos'") == 1  # (it was said twice)
    saved = _saved(tmp_path / "none" / "train_config.json")
    assert saved["data_root"] == "../rba-photos" and saved["data_root_resolved"] is None
    assert _saved(latest_checkpoint(tmp_path / "none") / "train_config.json")["data_root_resolved"] is None

    photos = _photos(tmp_path / "a" / "rba-photos")
    assert main(["-q", "train", "--config", str(recipe), "--output", str(tmp_path / "found")]) == 0
    assert "no multi-view photos" not in capsys.readouterr().out
    saved = _saved(tmp_path / "found" / "train_config.json")
    assert saved["data_root"] == "../rba-photos" and saved["data_root_resolved"] == str(photos)
    assert saved["invocation"] == {"--max-steps": None, "--time-limit": None, "--resume": False, "--data-root": None}

    # --data-root: the recipe's replaced (recorded as asked and as found); one that is not there is refused
    other = _photos(tmp_path / "other-photos")
    assert main(["-q", "train", "--config", str(recipe), "--output", str(tmp_path / "given"), "--data-root", str(other)]) == 0
    saved = _saved(tmp_path / "given" / "train_config.json")
    assert (saved["data_root"], saved["data_root_resolved"], saved["invocation"]["--data-root"]) == (str(other), str(other), str(other))
    capsys.readouterr()
    assert main(["-q", "train", "--config", str(recipe), "--output", str(tmp_path / "bad"), "--data-root", str(tmp_path / "nowhere")]) == 2
    assert f"--data-root '{tmp_path / 'nowhere'}': no folder there" in _error_line(capsys)
    assert not (tmp_path / "bad").exists()


def test_resume_refuses_other_photos_than_the_run_trained_on(tmp_path, monkeypatch, capsys):
    """The same relative data_root resolved from another current folder names other photos, or
    none: --resume refuses in one line that says what differs and how to go on (--data-root), and
    goes on once given it."""
    recipe = _recipe(tmp_path / "cfg", data_root="../rba-photos", synthetic_weight=0.5, max_steps=3)
    for place in ("a", "b"):
        (tmp_path / place / "work").mkdir(parents=True)
    photos_b = _photos(tmp_path / "b" / "rba-photos")
    args = ["-q", "train", "--config", str(recipe)]

    # trained without photos (none from a/work), resumed where ../rba-photos exists (b/work)
    monkeypatch.chdir(tmp_path / "a" / "work")
    assert main([*args, "--output", str(tmp_path / "synthetic"), "--max-steps", "1"]) == 0
    monkeypatch.chdir(tmp_path / "b" / "work")
    before = (tmp_path / "synthetic" / "log.jsonl").read_text()
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "synthetic"), "--resume", "--max-steps", "2"]) == 2
    line = _error_line(capsys)
    assert "trained on synthetic objects only" in line and f"it would now read the photos in '{photos_b}'" in line
    assert "pass --data-root none" in line
    assert (tmp_path / "synthetic" / "log.jsonl").read_text() == before  # nothing trained or written
    assert main([*args, "--output", str(tmp_path / "synthetic"), "--resume", "--max-steps", "2", "--data-root", "none"]) == 0
    assert _saved(tmp_path / "synthetic" / "train_config.json")["data_root_resolved"] is None
    assert [r["step"] for r in _log(tmp_path / "synthetic")] == [1, 2]

    # trained on b's photos, resumed from a/work (none there)
    assert main([*args, "--output", str(tmp_path / "photos"), "--max-steps", "1"]) == 0
    monkeypatch.chdir(tmp_path / "a" / "work")
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "photos"), "--resume"]) == 2
    line = _error_line(capsys)
    assert f"trained on the photos in '{photos_b}'" in line and "data_root '../rba-photos' names no photos from here" in line
    assert f"pass --data-root '{photos_b}'" in line
    assert main([*args, "--output", str(tmp_path / "photos"), "--resume", "--data-root", str(photos_b)]) == 0
    assert _saved(tmp_path / "photos" / "train_config.json")["data_root_resolved"] == str(photos_b)
    assert [r["step"] for r in _log(tmp_path / "photos")] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_of_another_process_count_and_notes_other_library_versions(tmp_path, capsys):
    """A checkpoint written by a run on another number of processes is refused in one line that
    names both counts and how to go on (nothing is trained or written); one written with other
    library versions resumes with a note naming each change; one without a record resumes as it is."""
    recipe = _recipe(tmp_path / "cfg", max_steps=4)
    run = tmp_path / "run"
    args = ["-q", "train", "--config", str(recipe), "--output", str(run)]
    assert main([*args, "--max-steps", "1"]) == 0
    ckpt = latest_checkpoint(run)
    record = _saved(ckpt / "train_config.json")
    assert record["processes"] == 1 and record["environment"]["versions"]["torch"] == torch.__version__

    (ckpt / "train_config.json").write_text(json.dumps(record | {"processes": 2}))
    before = (run / "log.jsonl").read_text()
    capsys.readouterr()
    assert main([*args, "--resume", "--max-steps", "2"]) == 2
    line = _error_line(capsys)
    assert f"the checkpoint {ckpt.name} of '{run}' was written by a run on 2 processes and this one has 1" in line, line
    assert "resume it on 2 processes (accelerate launch --num_processes 2 ...)" in line and f"init_from '{run / 'weights'}'" in line
    assert (run / "log.jsonl").read_text() == before and latest_checkpoint(run) == ckpt

    versions = record["environment"]["versions"] | {"torch": "1.0.0", "numpy": "0.1"}
    (ckpt / "train_config.json").write_text(json.dumps(record | {"environment": record["environment"] | {"versions": versions}}))
    capsys.readouterr()
    assert main([*args, "--resume", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"note: --resume: other library versions than checkpoint {ckpt.name} was written with (numpy 0.1 -> {np.__version__}, torch 1.0.0 -> {torch.__version__})" in out, out
    assert [r["step"] for r in _log(run)] == [1, 2]

    assert main([*args, "--resume", "--max-steps", "3"]) == 0  # (step 2's checkpoint: this run's own record)
    assert "note: --resume: other" not in capsys.readouterr().out
    (latest_checkpoint(run) / "train_config.json").unlink()  # (a checkpoint from before the record was kept)
    assert main([*args, "--resume"]) == 0
    assert "note: --resume: other" not in capsys.readouterr().out
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4]


def test_a_run_saved_before_the_photo_folder_was_recorded_resumes_with_a_note(tmp_path, capsys):
    run = tmp_path / "run"
    train(_tc(max_steps=2), run, max_steps=1, progress=False)
    for path in (run / "train_config.json", latest_checkpoint(run) / "train_config.json"):  # as written before
        old = {k: v for k, v in _saved(path).items() if k in {f.name for f in dataclasses.fields(load_train_config("tiny"))}}
        path.write_text(json.dumps(old))
    capsys.readouterr()
    assert train(_tc(max_steps=2), run, resume=True, progress=False)["step"] == 2
    out = capsys.readouterr().out
    assert "note: the run's train_config.json does not record which photos it trained on" in out
    assert "resuming with synthetic objects only" in out


# ---------------------------------------------------------------------------------------------- 2. what the saved config holds
def test_every_saved_config_records_processes_batch_device_options_environment_and_stop_reasons(tmp_path, capsys):
    run = tmp_path / "run"
    rec = train(_tc(max_steps=3, checkpoint_every=1), run, max_steps=2, progress=False)
    assert rec["stopped"] == "--max-steps 2 reached"
    assert "stopped at step 2: --max-steps 2 reached; weights in" in capsys.readouterr().out
    for path in (run / "train_config.json", latest_checkpoint(run) / "train_config.json", run / "weights" / "train_config.json"):
        saved = _saved(path)
        assert (saved["processes"], saved["batch_size_is"], saved["global_batch_size"], saved["gradient_accumulation_steps"]) == (1, "per process", 2, 1)
        assert saved["device"].startswith("cuda") if torch.cuda.is_available() else (saved["device"], saved["gpu"]) == ("cpu", None)
        assert saved["invocation"] == {"--max-steps": 2, "--time-limit": None, "--resume": False, "--data-root": None}
        env = saved["environment"]
        assert env["versions"]["torch"] == torch.__version__ and "extensions" in env["cpu"] and "code" in env
    assert _log(run)[-1] == _log(run)[-1] | {"step": 2, "stopped": "--max-steps 2 reached"}
    # a saved config reads back as a recipe (what it records of the run left out)
    assert load_train_config(str(run / "train_config.json")) == _tc(max_steps=3, checkpoint_every=1)

    # resumed: the configs the invocation writes record it (the checkpoint it resumed from keeps its own)
    first = latest_checkpoint(run)
    rec = train(_tc(max_steps=3, checkpoint_every=1), run, resume=True, time_limit=3600.0, progress=False)
    assert (rec["step"], rec["stopped"]) == (3, "the recipe's last step (max_steps 3) reached")
    for path in (run / "train_config.json", latest_checkpoint(run) / "train_config.json"):
        assert _saved(path)["invocation"] == {"--max-steps": None, "--time-limit": 3600.0, "--resume": True, "--data-root": None}
    assert _saved(first / "train_config.json")["invocation"]["--resume"] is False
    # ... and keeps what the earlier invocations ran with (it was overwritten by the resumed one's)
    (earlier,) = _saved(run / "train_config.json")["earlier_invocations"]
    assert earlier["invocation"]["--max-steps"] == 2 and earlier["processes"] == 1 and "versions" in earlier["environment"]
    assert load_train_config(str(run / "train_config.json")) == _tc(max_steps=3, checkpoint_every=1)  # (still reads back as a recipe)


def test_why_a_run_stopped_is_said_for_the_recipes_end_and_a_time_limit(tmp_path, capsys):
    rec = train(_tc(max_steps=4, checkpoint_every=10), tmp_path / "limited", time_limit=1e-9, progress=False)
    assert (rec["step"], rec["stopped"]) == (1, "time limit of 1e-09 s reached")
    assert "stopped at step 1: time limit of 1e-09 s reached; weights in" in capsys.readouterr().out
    rec = train(_tc(max_steps=2), tmp_path / "whole", progress=False)
    assert rec["stopped"] == "the recipe's last step (max_steps 2) reached"
    assert _log(tmp_path / "whole")[-1]["stopped"] == rec["stopped"]
    assert [r.get("stopped") for r in _log(tmp_path / "whole")[:-1]] == [None]  # only the last record of an invocation says it


# ---------------------------------------------------------------------------------------------- 3. the run folder's lock
def test_a_run_folder_in_use_is_refused_in_one_line(tmp_path, capsys):
    """While another process holds the run folder's lock, train refuses it (one line naming the
    folder, exit 2) and writes nothing; once it is free, --resume goes on."""
    fcntl = pytest.importorskip("fcntl")
    run = tmp_path / "run"
    train(_tc(max_steps=2), run, max_steps=1, progress=False)
    assert (run / LOCK_FILE).exists()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with open(run / LOCK_FILE, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        assert main(["-q", "train", "--config", "tiny", "--output", str(run), "--resume"]) == 2
        line = _error_line(capsys)
        assert f"--output '{run}': another training process is writing to this run folder right now" in line
        # a new run in an empty folder someone else holds: refused too, before it writes
        (tmp_path / "empty").mkdir()
        with open(tmp_path / "empty" / LOCK_FILE, "a") as held2:
            fcntl.flock(held2.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(ValueError, match="another training process"):
                train(_tc(max_steps=1), tmp_path / "empty", progress=False)
            assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [LOCK_FILE]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert train(_tc(max_steps=2), run, resume=True, progress=False)["step"] == 2  # released: it goes on


# ---------------------------------------------------------------------------------------------- 4. Ctrl-C
def test_ctrl_c_writes_a_checkpoint_of_the_last_step_and_resume_goes_on_from_it(tmp_path, capsys):
    """SIGINT during training: the step in progress completes, a checkpoint of it is written (the
    recipe's own would be 1000 steps away), the command says where --resume restarts and exits 130.
    While it ran, a second train on the folder was refused (its lock)."""
    recipe = _recipe(tmp_path, max_steps=100_000, checkpoint_every=1000, log_every=1)
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "refine_by_align.cli", "-q", "train", "--config", str(recipe), "--output", str(run)]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(cli, stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 60
            while not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count("\n") >= 2):  # two steps done
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
                time.sleep(0.05)
            # (--max-steps: without the lock this would train along, interleaving its log with the other's)
            assert main(["-q", "train", "--config", str(recipe), "--output", str(run), "--resume", "--max-steps", "3"]) == 2
            assert "another training process is writing to this run folder" in _error_line(capsys)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "err.txt").read_text()
    assert rc == 130, stderr
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    step = _saved(ckpt / "state.json")["step"]
    assert step >= 2
    assert f"interrupted at step {step}: checkpoint written to {ckpt}; resume with --resume" in stderr.splitlines()
    assert _log(run)[-1] | {"step": step, "stopped": "interrupted"} == _log(run)[-1]
    assert _saved(run / "weights" / "train_config.json")["trained_steps"] == step
    rec = train(load_train_config(str(recipe)), run, resume=True, max_steps=step + 1, progress=False)
    assert rec["step"] == step + 1 and f"resumed from {ckpt} at step {step}" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- 5. --model RUN or CHECKPOINT
def test_a_run_folder_and_a_checkpoint_load_as_models(tmp_path, capsys):
    from safetensors.torch import load_file

    from refine_by_align.demo.examples import EXAMPLES_DIR
    from refine_by_align.io import InputError
    from refine_by_align.loading import check_model_name, load_pipeline
    from refine_by_align.models.refiner import RefineByAlignModel

    run = tmp_path / "run"
    train(_tc(max_steps=3, checkpoint_every=1, keep_checkpoints=3), run, progress=False)
    capsys.readouterr()
    exported = RefineByAlignModel.load(run / "weights").state_dict()
    pipe = load_pipeline(run, device="cpu")  # a run folder: its weights/
    assert all(torch.equal(v, exported[k]) for k, v in pipe.model.state_dict().items())
    assert f"note: model '{run}': a training run folder: loading its weights/ (the exported weights at step 3)" in capsys.readouterr().err
    ckpt = run / "checkpoints" / "step_00000002"
    pipe = load_pipeline(ckpt, device="cpu")  # a checkpoint: its model.safetensors and model_config.json
    saved = load_file(ckpt / "model.safetensors")
    assert not pipe.random_weights and all(torch.equal(pipe.model.state_dict()[k], v) for k, v in saved.items())
    assert not all(torch.equal(pipe.model.state_dict()[k], exported[k]) for k in saved)  # (not the step-3 weights)
    # a run folder without weights/ yet: its latest checkpoint, said in a note
    (run / "weights").rename(tmp_path / "moved")
    pipe = load_pipeline(run, device="cpu")
    last = load_file(run / "checkpoints" / "step_00000003" / "model.safetensors")
    assert all(torch.equal(pipe.model.state_dict()[k], v) for k, v in last.items())
    assert "a training run folder without weights/ yet: loading its latest checkpoint, step_00000003" in capsys.readouterr().err
    # a folder that is none of these: one line saying what was looked for, before torch (check_model_name)
    (tmp_path / "other").mkdir()
    with pytest.raises(InputError, match="no config.json .a saved model., no model_config.json and model.safetensors .a training checkpoint."):
        check_model_name(str(tmp_path / "other"))
    # the command line, where --model is given
    badge = EXAMPLES_DIR / "badge"
    args = ["-q", "refine", "--image", str(badge / "image.png"), "--mask", str(badge / "mask.png"), "--reference", str(badge / "reference.png"),
            "--steps", "1", "--output", str(tmp_path / "out.png"), "--model", str(ckpt)]
    assert main(args) == 0 and (tmp_path / "out.png").exists()


# ---------------------------------------------------------------------------------------------- 6. smaller
def test_images_per_second_counts_training_steps_only(tmp_path, monkeypatch):
    """An evaluation (here made to take 1,000 s on the clock the loop reads) between two log
    records is not training time: the record after it reports the steps' speed, not a drop to a
    fraction of an image a second. (The clock is moved, not slept on: the test does not depend on
    how fast this machine runs a step.)"""
    import refine_by_align.training.train as train_module

    evaluate, real_clock, offset = train_module.evaluate, time.perf_counter, [0.0]

    def slow(*a, **kw):
        offset[0] += 1000.0
        return evaluate(*a, **kw)

    monkeypatch.setattr(train_module.time, "perf_counter", lambda: real_clock() + offset[0])
    monkeypatch.setattr(train_module, "evaluate", slow)
    train(_tc(max_steps=3, eval_every=1, log_every=1), tmp_path, progress=False)
    speeds = [r["images_per_s"] for r in _log(tmp_path) if not r.get("eval")]
    assert offset[0] == 3000.0  # (an evaluation after each step)
    # 2 images a step: at most 2 / 1000 a second with an evaluation counted; 100 times that is a
    # step of 10 s, which no machine this runs on takes
    assert len(speeds) == 3 and min(speeds[1:]) > 100 * (2 / 1000.0)


def test_init_from_is_found_from_the_repository_root_and_a_missing_one_names_the_field(tmp_path, monkeypatch, capsys):
    """Stage 5 and 6 give init_from from the repository root (src/...): it is found from another
    current folder (and recorded, absolute); one that is nowhere is one line naming the field and
    the recipe."""
    monkeypatch.chdir(tmp_path)
    tc = dataclasses.replace(
        load_train_config("default-stage6"), batch_size=1, max_steps=1, warmup_steps=0, eval_every=0, num_workers=0, data_root=None,
        synthetic_pool=2, synthetic_size=64, mixed_precision="no", lr_unet=0.0, lr_projector=0.0, lr_encoder=0.0, ema_decay=0.0,
    )
    assert tc.init_from == "src/refine_by_align/weights/default" and not Path(tc.init_from).exists()
    train(tc, tmp_path / "run", progress=False)
    shipped = REPO / "src" / "refine_by_align" / "weights" / "default"
    assert _saved(tmp_path / "run" / "train_config.json")["init_from_resolved"] == str(shipped)
    from refine_by_align.models.refiner import RefineByAlignModel

    a, b = RefineByAlignModel.load(shipped).state_dict(), RefineByAlignModel.load(tmp_path / "run" / "weights").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # (learning rates 0: the export is the weights it started from)

    recipe = _recipe(tmp_path / "cfg", init_from="runs/nowhere/weights")
    capsys.readouterr()
    assert main(["-q", "train", "--config", str(recipe), "--output", str(tmp_path / "missing")]) == 2
    line = _error_line(capsys)
    assert f"init_from in recipe '{recipe}': model folder 'runs/nowhere/weights' does not exist" in line
    assert not (tmp_path / "missing").exists()
