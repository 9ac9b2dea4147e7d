"""Batch refinement: manifest parsing, per-job errors, resume, crash safety (kill -9 mid-batch)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.batch import DONE_FILE, ERRORS_FILE, RUN_FILE, format_summary, model_fingerprint, read_manifest, run_batch
from refine_by_align.io import InputError

REPO = Path(__file__).resolve().parents[1]


def _write_case(folder: Path, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    m = np.zeros((40, 48), np.uint8)
    m[10:22, 12:30] = 255
    Image.fromarray(m).save(folder / f"{name}_mask.png")
    Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(folder / f"{name}_ref.png")


def _job(name: str, **extra) -> dict:
    return {"image": f"in/{name}.png", "mask": f"in/{name}_mask.png", "reference": f"in/{name}_ref.png", **extra}


def _manifest(path: Path, lines) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


class NegateMask:
    """A fast stand-in for the pipeline: inverts the masked pixels (optionally slowly)."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0

    def __call__(self, image, mask, reference, reference_mask=None, num_inference_steps=None, guidance_scale=None,
                 seed=0, names=None, **kw):
        from types import SimpleNamespace

        self.calls += 1
        time.sleep(self.delay)
        arr = np.asarray(image.convert("RGB")).copy()
        arr[mask] = 255 - arr[mask]
        return SimpleNamespace(image=Image.fromarray(arr))


def test_batch_with_tiny_model_errors_and_resume(tmp_path, tiny_pipe):
    for i in range(3):
        _write_case(tmp_path / "in", f"c{i}", i)
    Image.fromarray(np.full((36, 30), 255, np.uint8)).save(tmp_path / "in" / "refmask.png")
    manifest = _manifest(tmp_path / "jobs.jsonl", [
        "# a comment, then a blank line",
        "",
        _job("c0", steps=2, seed=1),
        _job("c1", steps=2, reference_mask="in/refmask.png", output="sub/one"),
        "{not json",
        _job("c2", steps=2, output="../escape.png"),
        _job("c2", steps=2, output=str(tmp_path / "abs.png")),
        _job("c2", steps=0),
        {"image": "in/missing.png", "mask": "in/c2_mask.png", "reference": "in/c2_ref.png"},
        _job("c2", steps=2, output="sub/one.png"),
        _job("c2", steps=2, output="c2.jpg", guidance=1.5),
        _job("c2", colour="blue"),
    ])
    out = tmp_path / "out"
    s = run_batch(manifest, out, tiny_pipe, progress=False)
    assert (s["total"], s["done"], s["skipped"], s["failed"]) == (10, 3, 0, 7), s
    assert "3 refined, 0 already done, 7 failed" in format_summary(s)
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert produced == sorted(["00003-c0.png", "sub/one.png", "c2.jpg", DONE_FILE, ERRORS_FILE, RUN_FILE])
    # what each output was made with (its line in the ledger) and what the run was made with (RUN_FILE)
    done = {d["output"]: d for d in _jsonl(out / DONE_FILE)}
    assert done["00003-c0.png"]["seed"] == 1 and done["00003-c0.png"]["steps"] == 2 and done["c2.jpg"]["guidance"] == 1.5
    assert done["c2.jpg"]["model"] == model_fingerprint(tiny_pipe) and 0.0 <= done["c2.jpg"]["warp_fraction"] <= 1.0
    (run,) = _jsonl(out / RUN_FILE)
    assert run["manifest"]["path"] == str(manifest.resolve()) and run["model"] == "tiny" and run["random_weights"] is True
    assert run["model_fingerprint"] == model_fingerprint(tiny_pipe) and run["processes"] == 1 and "torch" in run["versions"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "abs.png").exists()
    src = np.asarray(Image.open(tmp_path / "in" / "c0.png"))
    res = np.asarray(Image.open(out / "00003-c0.png"))
    assert res.shape == src.shape
    ring = np.ones((40, 48), bool)
    ring[6:26, 8:34] = False  # the mask box grown by 4 px
    assert np.array_equal(res[ring], src[ring]) and not np.array_equal(res, src)

    errors = {e["line"]: e["error"] for e in _jsonl(out / ERRORS_FILE)}
    assert "not valid JSON" in errors[5]
    assert "'..'" in errors[6]
    assert "absolute path" in errors[7]
    assert "steps must be an integer in 1..1000" in errors[8]
    assert "file not found" in errors[9] and "missing.png" in errors[9]
    assert "already written by line 4" in errors[10]
    assert "unknown field(s) colour" in errors[12]
    assert len(_jsonl(out / DONE_FILE)) == 3

    # resume: nothing finished runs again, outputs are not rewritten, the failures are retried
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = run_batch(manifest, out, tiny_pipe, progress=False)
    assert len(_jsonl(out / RUN_FILE)) == 2  # (a line per run: the first run's record, which made the outputs, is kept)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 3, 7)
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert sorted(e["line"] for e in _jsonl(out / ERRORS_FILE)) == [5, 6, 7, 8, 9, 10, 12]  # the latest failure of each, once

    # a changed job (new seed) is not "already done"; a deleted output is redone
    lines = manifest.read_text().splitlines()
    lines[2] = json.dumps(_job("c0", steps=2, seed=2))
    manifest.write_text("\n".join(lines) + "\n")
    (out / "c2.jpg").unlink()
    third = run_batch(manifest, out, tiny_pipe, progress=False)
    assert (third["done"], third["skipped"]) == (2, 1)
    # another model (a stand-in without the tiny model's weights): nothing is "already done"
    fourth = run_batch(manifest, out, NegateMask(), progress=False)
    assert (fourth["done"], fourth["skipped"]) == (3, 0)


def test_crash_while_writing_leaves_no_output(tmp_path, monkeypatch):
    _write_case(tmp_path / "in", "a", 0)
    _write_case(tmp_path / "in", "b", 1)
    manifest = _manifest(tmp_path / "m.jsonl", [_job("a", output="a.png"), _job("b", output="b.png")])
    real_save = Image.Image.save

    def broken_save(self, fp, format=None, **kw):
        if not broken_save.done:  # the first output written (job "a")
            broken_save.done.add("a")
            fp.write(b"\x89PNG half")  # some bytes reach the disk, then the "crash"
            raise OSError("disk went away")
        return real_save(self, fp, format=format, **kw)

    broken_save.done = set()
    monkeypatch.setattr(Image.Image, "save", broken_save)
    out = tmp_path / "out"
    (out).mkdir()
    (out / ".rba-stale.part").write_bytes(b"left by a killed run")
    s = run_batch(manifest, out, NegateMask(), progress=False)
    assert (s["done"], s["failed"]) == (1, 1)
    assert not (out / "a.png").exists() and (out / "b.png").exists()
    assert not list(out.glob("*.part"))
    assert "disk went away" in _jsonl(out / ERRORS_FILE)[0]["error"]
    monkeypatch.setattr(Image.Image, "save", real_save)
    s = run_batch(manifest, out, NegateMask(), progress=False)
    assert (s["done"], s["skipped"], s["failed"]) == (1, 1, 0)
    Image.open(out / "a.png").load()


def test_manifest_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n# nothing\n")
    with pytest.raises(InputError, match="no jobs"):
        read_manifest(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        read_manifest(tmp_path / "bin.jsonl")


def test_one_batch_per_output_folder(tmp_path):
    from refine_by_align.batch import _lock

    (tmp_path / "out").mkdir()
    _write_case(tmp_path / "in", "a", 0)
    manifest = _manifest(tmp_path / "m.jsonl", [_job("a")])
    with _lock(tmp_path / "out"), pytest.raises(InputError, match="another batch"):
        run_batch(manifest, tmp_path / "out", NegateMask(), progress=False)


WORKER = textwrap.dedent(
    """
    import sys, time
    from types import SimpleNamespace
    import numpy as np
    from PIL import Image
    from refine_by_align.batch import run_batch

    class Slow:
        def __call__(self, image, mask, reference, reference_mask=None, **kw):
            time.sleep(0.3)
            arr = np.asarray(image.convert("RGB")).copy()
            arr[mask] = 255 - arr[mask]
            return SimpleNamespace(image=Image.fromarray(arr))

    run_batch(sys.argv[1], sys.argv[2], Slow(), progress=False)
    """
)


def test_kill_9_mid_batch_then_resume(tmp_path):
    n = 12
    for i in range(n):
        _write_case(tmp_path / "in", f"c{i}", i)
    manifest = _manifest(tmp_path / "m.jsonl", [_job(f"c{i}", output=f"r{i}.png") for i in range(n)])
    out = tmp_path / "out"
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(manifest), str(out)], env=env,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_jsonl(out / DONE_FILE)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the batch did not get going"
            time.sleep(0.02)
        time.sleep(0.15)  # somewhere inside the next job
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ledger = {r["output"] for r in _jsonl(out / DONE_FILE)}
    outputs = {p.name for p in out.glob("r*.png")}
    assert 3 <= len(ledger) < n, "kill came too late to test anything"
    assert ledger <= outputs and len(outputs - ledger) <= 1  # at most the job in flight is lost
    for name in outputs:  # every output under its final name is complete
        Image.open(out / name).load()

    pipe = NegateMask()
    s = run_batch(manifest, out, pipe, progress=False)
    assert s["failed"] == 0 and s["skipped"] == len(ledger) and s["done"] == n - len(ledger) == pipe.calls
    assert {p.name for p in out.glob("r*.png")} == {f"r{i}.png" for i in range(n)}
    assert not list(out.glob("*.part"))
    for i in range(n):
        src = np.asarray(Image.open(tmp_path / "in" / f"c{i}.png"))
        m = np.asarray(Image.open(tmp_path / "in" / f"c{i}_mask.png")) > 0
        expected = src.copy()
        expected[m] = 255 - expected[m]
        assert np.array_equal(np.asarray(Image.open(out / f"r{i}.png")), expected), i


def test_errors_file_keeps_the_latest_failure_of_each_job(tmp_path):
    """Issue 16 item 13: reruns do not pile up duplicate error lines; a job that succeeds later
    leaves the file; lines of an older run with duplicates are merged; no errors, no file."""
    _write_case(tmp_path / "in", "c0", 0)
    manifest = _manifest(tmp_path / "jobs.jsonl", [_job("c0", output="ok.png"), _job("c0", steps=0), _job("c9")])
    out = tmp_path / "out"
    for _ in range(3):
        s = run_batch(manifest, out, NegateMask(), progress=False)
        assert s["failed"] == 2
        errors = _jsonl(out / ERRORS_FILE)
        assert sorted(e["line"] for e in errors) == [2, 3], errors
    assert "steps must be an integer" in errors[0]["error"] and "file not found" in errors[1]["error"]

    # an older run's duplicates are merged into one line per job on the next run
    (out / ERRORS_FILE).write_text((out / ERRORS_FILE).read_text() * 3 + '{"line": 2, "out')
    _write_case(tmp_path / "in", "c9", 9)  # line 3 can run now
    s = run_batch(manifest, out, NegateMask(), progress=False)
    assert (s["done"], s["failed"]) == (1, 1)
    assert [e["line"] for e in _jsonl(out / ERRORS_FILE)] == [2]

    # every job fixed: the file goes away
    manifest.write_text("\n".join(json.dumps(j) for j in [_job("c0", output="ok.png"), _job("c0", steps=1), _job("c9")]) + "\n")
    s = run_batch(manifest, out, NegateMask(), progress=False)
    assert s["failed"] == 0 and s["errors_file"] is None and not (out / ERRORS_FILE).exists()
    assert not [p for p in out.rglob(".rba-*")]


def test_batch_outputs_get_the_mode_the_cli_gives(tmp_path):
    """Issue 16 item 13: outputs and ledgers are 0644 under the usual umask (0666 less the umask), as
    the command line writes them, not 0600."""
    _write_case(tmp_path / "in", "c0", 0)
    manifest = _manifest(tmp_path / "jobs.jsonl", [_job("c0", output="a.png"), _job("c0", output="b.jpg"), _job("c0", steps=0)])
    out = tmp_path / "out"
    run_batch(manifest, out, NegateMask(), progress=False)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("a.png", "b.jpg", DONE_FILE, ERRORS_FILE):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_shards_split_the_manifest_and_their_errors_merge(tmp_path):
    """Two processes (as a launcher would set RANK / WORLD_SIZE) each run every other line, write their
    own ledgers, and leave one merged errors.jsonl; a later single-process run resumes from both."""
    from refine_by_align.batch import Shard

    for i in range(4):
        _write_case(tmp_path / "in", f"c{i}", i)
    jobs = [_job(f"c{i}", output=f"o{i}.png") for i in range(4)]
    jobs.insert(2, {"image": "in/missing.png", "mask": "in/c0_mask.png", "reference": "in/c0_ref.png", "output": "bad.png"})
    man = _manifest(tmp_path / "jobs.jsonl", jobs)
    out = tmp_path / "out"
    pipes = [NegateMask(), NegateMask()]
    sums = [run_batch(man, out, pipes[r], progress=False, shard=Shard(r, 2)) for r in (0, 1)]
    assert [p.calls for p in pipes] == [2, 2]  # lines 1, 3(bad), 5 -> rank 0; lines 2, 4 -> rank 1
    assert [s["failed"] for s in sums] == [1, 0] and sum(s["done"] for s in sums) == 4
    assert all((out / f"o{i}.png").is_file() for i in range(4))
    assert len(_jsonl(out / "done.r0.jsonl")) == 2 and len(_jsonl(out / "done.r1.jsonl")) == 2
    errs = _jsonl(out / ERRORS_FILE)
    assert [(e["line"], e["output"]) for e in errs] == [(3, "bad.png")]
    assert not list(out.glob("errors.r*.jsonl"))  # folded into errors.jsonl
    assert "process 1/2:" in format_summary(sums[0])
    # resume with one process: nothing is redone, the failure is still listed once
    again = NegateMask()
    s = run_batch(man, out, again, progress=False, shard=Shard())
    assert again.calls == 0 and s["skipped"] == 4 and s["failed"] == 1
    assert len(_jsonl(out / ERRORS_FILE)) == 1


def test_shard_from_the_launcher_environment():
    from refine_by_align.batch import Shard

    assert Shard.from_env({}) == Shard(0, 1, 0)
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Shard(1, 2, 1)
    with pytest.raises(InputError, match="RANK"):
        Shard.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_finish_together_waits_only_under_a_launcher():
    """One process, or several without a launcher's address (shards started by hand), do not wait."""
    from refine_by_align.batch import Shard, finish_together

    assert not finish_together(Shard(0, 1), {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert not finish_together(Shard(1, 2), {})


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun's launcher is tested on Linux")
def test_batch_on_two_processes_with_the_launcher(tmp_path):
    """The real thing: torchrun (what `accelerate launch --multi_gpu` runs) starts two CLI processes
    with the tiny model on the CPU; each prints its share, the outputs and one errors.jsonl appear.
    The second process's share fails fast (a missing file) while the first still works (many
    steps): the launcher stops every process when one exits with an error, so the failing one
    waits for the others (finish_together) before it exits 1."""
    for i in range(3):
        _write_case(tmp_path / "in", f"c{i}", i)
    jobs = [_job(f"c{i}", output=f"o{i}.png", steps=1) for i in range(3)]
    jobs[0]["steps"] = 200  # (the first process's share takes seconds longer than the second's)
    jobs[2] = {"image": "in/c2.png", "mask": "in/c2_mask.png", "references": ["in/c2_ref.png", "in/c1_ref.png"],
               "output": "o2.png", "steps": 1}  # several references go through a process of their own too
    jobs.append({"image": "in/missing.png", "mask": "in/c0_mask.png", "reference": "in/c0_ref.png", "output": "bad.png"})
    man = _manifest(tmp_path / "jobs.jsonl", jobs)
    exe = Path(sys.executable).parent
    cmd = [str(exe / "torchrun"), "--standalone", "--nproc_per_node", "2", str(exe / "refine-by-align"), "--quiet",
           "batch", str(man), "--output", str(tmp_path / "out"), "--model", "tiny"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]  # as one process: a batch with a failed job exits 1
    assert "process 1/2:" in r.stdout and "process 2/2:" in r.stdout, r.stdout
    assert all((tmp_path / "out" / f"o{i}.png").is_file() for i in range(3))
    assert [e["output"] for e in _jsonl(tmp_path / "out" / ERRORS_FILE)] == ["bad.png"]
    assert _jsonl(tmp_path / "out" / "done.r0.jsonl") and _jsonl(tmp_path / "out" / "done.r1.jsonl")


def test_progress_bar_counts_the_last_jobs_failure(tmp_path, capsys):
    """The bar's failure count is set after each job, so it ends at the summary's count even when
    the last job is the one that failed."""
    _write_case(tmp_path / "in", "c0", 0)
    manifest = _manifest(tmp_path / "jobs.jsonl", [_job("c0", output="a.png"), _job("c0", output="b.png"), _job("c9")])
    s = run_batch(manifest, tmp_path / "out", NegateMask(), progress=True)
    assert s["failed"] == 1
    err = capsys.readouterr().err
    assert "failed=1" in err.replace("\r", "\n").strip().splitlines()[-1], err


def test_output_names_refused_when_the_manifest_is_read_or_the_job_is_claimed(tmp_path):
    """A name too long for the file system, and an output whose folder is another job's output file,
    were raw OSErrors after the refinement (naming the partial file); now one reason each, and the
    job is not run."""
    _write_case(tmp_path / "in", "a", 0)
    manifest = _manifest(tmp_path / "m.jsonl", [
        _job("a", output="x" * 300 + ".png"),
        _job("a", output="ok.png"),
        _job("a", output="ok.png/inner.png"),
    ])
    pipe = NegateMask()
    s = run_batch(manifest, tmp_path / "out", pipe, progress=False)
    assert (s["done"], s["failed"]) == (1, 2) and pipe.calls == 1, s
    errors = {e["line"]: e["error"] for e in _jsonl(tmp_path / "out" / ERRORS_FILE)}
    assert "is too long (304 characters" in errors[1], errors
    assert "its folder 'ok.png' is the output of line 2, not a folder" in errors[3], errors
    assert not list((tmp_path / "out").glob(".rba-*"))


def test_cli_names_each_failure_and_refuses_a_busy_folder_before_loading(tmp_path, capsys, monkeypatch):
    """The command line prints a line per failed job (it printed only the counts and the errors
    file's path), and a folder another batch holds is refused before the model loads."""
    from refine_by_align.batch import _lock
    from refine_by_align.cli import main
    from refine_by_align.commands import common

    _write_case(tmp_path / "in", "a", 0)
    manifest = _manifest(tmp_path / "m.jsonl", [_job("a", output="a.png"), _job("missing", output="b.png"), "{not json"])
    monkeypatch.setattr(common, "load_model", lambda *a, **k: NegateMask())
    assert main(["-q", "batch", str(manifest), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(x.startswith("line 2 (b.png): ") and "missing.png" in x for x in err), err
    assert any(x.startswith("line 3: ") and "not valid JSON" in x for x in err), err

    def no_model(*a, **k):
        raise AssertionError("the model was loaded for a folder another batch holds")

    monkeypatch.setattr(common, "load_model", no_model)
    with _lock(tmp_path / "out"):
        assert main(["-q", "batch", str(manifest), "--output", str(tmp_path / "out")]) == 2
    assert "another batch is writing to it right now" in capsys.readouterr().err


def test_a_transparent_image_to_a_format_without_alpha_fails_before_its_refine(tmp_path):
    """A job with an RGBA image and a .jpg or .bmp output: alpha was dropped without a word (.jpg
    converted, .bmp saved without it). The job now fails, before its refine, saying why; .png is written."""
    _write_case(tmp_path / "in", "c0", 0)
    rgba = Image.open(tmp_path / "in" / "c0.png").convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "in" / "t.png")
    job = {"image": "in/t.png", "mask": "in/c0_mask.png", "reference": "in/c0_ref.png"}
    manifest = _manifest(tmp_path / "jobs.jsonl", [dict(job, output="a.jpg"), dict(job, output="b.bmp"), dict(job, output="c.png")])
    pipe = NegateMask()
    run_batch(manifest, tmp_path / "out", pipe=pipe, progress=False)
    errs = _jsonl(tmp_path / "out" / ERRORS_FILE)
    assert [e["output"] for e in errs] == ["a.jpg", "b.bmp"] and all("alpha channel" in e["error"] for e in errs), errs
    assert pipe.calls == 1 and not (tmp_path / "out" / "a.jpg").exists() and not (tmp_path / "out" / "b.bmp").exists()
    assert (tmp_path / "out" / "c.png").exists()


def test_a_line_refused_for_another_field_still_names_its_output(tmp_path):
    """A line with a bad setting but a good output name: errors.jsonl and the printed failure
    name the output (a line without one, or with a bad one, stays unnamed)."""
    from refine_by_align.batch import failure_lines

    _write_case(tmp_path / "in", "c0", 0)
    manifest = _manifest(tmp_path / "jobs.jsonl", [_job("c0", steps=0, output="badsteps.png"), _job("c0", steps=0),
                                                   _job("c0", steps=0, output="../out.png")])
    jobs = read_manifest(manifest)
    assert [j.output for j in jobs] == ["badsteps.png", None, None] and all(j.error for j in jobs)
    s = run_batch(manifest, tmp_path / "out", NegateMask(), progress=False)
    errors = _jsonl(tmp_path / "out" / ERRORS_FILE)
    assert [(e["line"], e["output"]) for e in errors] == [(1, "badsteps.png"), (2, None), (3, None)]
    lines = failure_lines(s)
    assert lines[0].startswith("line 1 (badsteps.png): steps must be an integer in 1..1000") and lines[1].startswith("line 2: ")
    assert not (tmp_path / "out" / "badsteps.png").exists()


@pytest.mark.parametrize("own", [DONE_FILE, ERRORS_FILE, RUN_FILE])
def test_a_manifest_named_as_one_of_the_batchs_own_files_is_refused(tmp_path, own):
    """A manifest saved as the output folder's run record was overwritten by it (the input lost)."""
    _write_case(tmp_path / "in", "c0", 0)
    manifest = _manifest(tmp_path / own, [_job("c0")])
    before = manifest.read_bytes()
    with pytest.raises(InputError, match=f"is the batch's own {own}"):
        run_batch(manifest, tmp_path, NegateMask(), progress=False)
    assert manifest.read_bytes() == before
