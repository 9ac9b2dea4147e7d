"""Batch manifest lines with several references: ``"references": [...]`` (and ``"reference_masks"``,
null allowed) instead of ``"reference"``; every bad line is one error on that line, an unreadable
file in the list is one error naming it, and one-reference jobs keep their resume keys."""

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from refine_by_align.batch import DONE_FILE, ERRORS_FILE, BatchJob, Shard, read_manifest, run_batch


def _case(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "img.png")
    m = np.zeros((40, 48), np.uint8)
    m[10:22, 12:30] = 255
    Image.fromarray(m).save(folder / "mask.png")
    for name, (h, w) in {"a": (36, 30), "b": (32, 44), "c": (30, 30)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    Image.fromarray(np.full((32, 44), 255, np.uint8)).save(folder / "b_mask.png")
    (folder / "broken.png").write_text("not an image")


def _manifest(path: Path, lines) -> Path:
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _line(**extra) -> dict:
    return {"image": "in/img.png", "mask": "in/mask.png", **extra}


class Recorder:
    """Stands in for the pipeline: inverts the masked pixels and keeps what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, mask, reference, reference_mask=None, names=None, **kw):
        from types import SimpleNamespace

        self.calls.append((reference, reference_mask, names))
        arr = np.asarray(image.convert("RGB")).copy()
        arr[mask] = 255 - arr[mask]
        return SimpleNamespace(image=Image.fromarray(arr))


def test_references_reach_the_pipeline_as_lists(tmp_path):
    _case(tmp_path / "in")
    man = _manifest(tmp_path / "jobs.jsonl", [
        _line(references=["in/a.png", "in/b.png"], reference_masks=[None, "in/b_mask.png"], output="two.png"),
        _line(references=["in/a.png", "in/b.png", "in/c.png"], output="three.png"),
        _line(reference="in/a.png", output="one.png"),
    ])
    pipe = Recorder()
    s = run_batch(man, tmp_path / "out", pipe, progress=False)
    assert (s["done"], s["failed"]) == (3, 0), s
    (refs2, masks2, names2), (refs3, masks3, _), (ref1, mask1, names1) = pipe.calls
    assert [r.size for r in refs2] == [(30, 36), (44, 32)] and masks2[0] is None and masks2[1].all()
    assert names2["reference"][1].endswith("b.png") and names2["reference_mask"][1].endswith("b_mask.png")
    assert len(refs3) == 3 and masks3 == [None, None, None]
    assert isinstance(ref1, Image.Image) and mask1 is None and isinstance(names1["reference"], str)  # as before
    assert all((tmp_path / "out" / n).is_file() for n in ("two.png", "three.png", "one.png"))
    # resume: nothing runs again; a changed list (another mask) is a changed job
    again = Recorder()
    assert run_batch(man, tmp_path / "out", again, progress=False)["skipped"] == 3 and not again.calls
    lines = man.read_text().splitlines()
    lines[0] = json.dumps(_line(references=["in/a.png", "in/b.png"], output="two.png"))
    man.write_text("\n".join(lines) + "\n")
    third = Recorder()
    s = run_batch(man, tmp_path / "out", third, progress=False)
    assert (s["done"], s["skipped"]) == (1, 2) and len(third.calls) == 1


def test_bad_reference_lines_are_one_error_each(tmp_path):
    _case(tmp_path / "in")
    bad = {
        "both": _line(reference="in/a.png", references=["in/b.png"]),
        "mask_with_references": _line(references=["in/a.png"], reference_mask="in/b_mask.png"),
        "masks_with_reference": _line(reference="in/a.png", reference_masks=["in/b_mask.png"]),
        "not_a_list": _line(references="in/a.png"),
        "empty": _line(references=[]),
        "entry": _line(references=["in/a.png", 5]),
        "masks_length": _line(references=["in/a.png", "in/b.png"], reference_masks=[None]),
        "mask_entry": _line(references=["in/a.png"], reference_masks=[""]),
        "list_as_reference": _line(reference=["in/a.png", "in/b.png"]),
        "unreadable": _line(references=["in/a.png", "in/broken.png"], output="u.png"),
        "missing_file": _line(references=["in/a.png", "in/b.png", "in/gone.png"], output="g.png"),
        "mask_size": _line(references=["in/a.png", "in/b.png"], reference_masks=["in/b_mask.png", None], output="m.png"),
        "no_reference": _line(),
    }
    expected = {
        "both": "give either reference (one file) or references (a list), not both",
        "mask_with_references": "reference_mask goes with reference; with references give reference_masks",
        "masks_with_reference": "reference_masks goes with references",
        "not_a_list": "references must be a non-empty list of file paths, got 'in/a.png'",
        "empty": "references must be a non-empty list",
        "entry": "references: entry 2 must be a file path (string), got 5",
        "masks_length": "reference_masks must be a list with one entry per reference (2, null where there is none), got 1 entries",
        "mask_entry": "reference_masks: entry 1 must be a file path (string) or null",
        "list_as_reference": 'reference must be a file path (string), got [\'in/a.png\', \'in/b.png\'] (several: "references": [...])',
        "unreadable": "reference #2 '",
        "missing_file": "reference #3 '",
        "mask_size": "does not match the reference",
        "no_reference": "missing field(s): reference",
    }
    man = _manifest(tmp_path / "jobs.jsonl", list(bad.values()) + [_line(references=["in/a.png", "in/b.png"], output="ok.png")])
    out = tmp_path / "out"
    s = run_batch(man, out, Recorder(), progress=False)
    assert (s["done"], s["failed"]) == (1, len(bad)), s
    errors = {e["line"]: e["error"] for e in _jsonl(out / ERRORS_FILE)}
    for line, name in enumerate(bad, start=1):
        assert expected[name] in errors[line], (name, errors[line])
        assert "\n" not in errors[line]
    assert "broken.png': not a readable image" in errors[10]
    assert "gone.png': file not found" in errors[11]
    assert "b_mask.png" in errors[12]


def test_an_output_onto_a_listed_reference_is_refused(tmp_path):
    _case(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").hardlink_to(tmp_path / "in" / "b.png")
    man = _manifest(tmp_path / "jobs.jsonl", [_line(references=["in/a.png", "in/b.png"], output="b.png")])
    pipe = Recorder()
    s = run_batch(man, out, pipe, progress=False)
    assert s["failed"] == 1 and not pipe.calls
    assert "is this job's reference #2 file" in _jsonl(out / ERRORS_FILE)[0]["error"]


def test_resume_reruns_a_job_whose_inputs_or_model_changed(tmp_path):
    """A job is 'already done' only for the same input contents, settings and model: an input file
    overwritten in place, or another model (a preset, a retrained folder, another dtype), reruns it
    (the key held the paths and settings alone: a changed picture or model kept the stale output)."""
    import torch

    _case(tmp_path / "in")
    man = _manifest(tmp_path / "jobs.jsonl", [_line(reference="in/a.png", output="one.png"), _line(reference="in/b.png", output="two.png")])
    pipe = Recorder()
    pipe.model = torch.nn.Linear(3, 2)
    assert run_batch(man, tmp_path / "out", pipe, progress=False)["done"] == 2
    assert run_batch(man, tmp_path / "out", pipe, progress=False)["skipped"] == 2  # nothing changed
    img = np.asarray(Image.open(tmp_path / "in" / "a.png")).copy()
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(tmp_path / "in" / "a.png")  # one pixel of one reference, in place
    s = run_batch(man, tmp_path / "out", pipe, progress=False)
    assert (s["done"], s["skipped"]) == (1, 1), s
    with torch.no_grad():
        pipe.model.weight[0, 0] += 1.0  # the same architecture, other weights
    s = run_batch(man, tmp_path / "out", pipe, progress=False)
    assert (s["done"], s["skipped"]) == (2, 0), s
    keys = {BatchJob(line=1, output="o.png", image=tmp_path / "in/img.png", mask=tmp_path / "in/mask.png", reference=tmp_path / "in/a.png", steps=n).key for n in (1, 2)}
    assert len(keys) == 2  # the settings count too


def test_shards_run_lines_with_references(tmp_path):
    _case(tmp_path / "in")
    lines = [_line(references=["in/a.png", "in/b.png"], output=f"o{i}.png", seed=i) for i in range(4)]
    lines[1] = _line(references=["in/a.png", "in/broken.png"], output="bad.png")
    man = _manifest(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    pipes = [Recorder(), Recorder()]
    sums = [run_batch(man, out, pipes[r], progress=False, shard=Shard(r, 2)) for r in (0, 1)]
    assert [len(p.calls) for p in pipes] == [2, 1] and [s["failed"] for s in sums] == [0, 1]
    assert all(len(refs) == 2 for refs, _, _ in pipes[0].calls + pipes[1].calls)
    errs = _jsonl(out / ERRORS_FILE)
    assert [(e["line"], e["output"]) for e in errs] == [(2, "bad.png")] and "reference #2" in errs[0]["error"]
    assert len(_jsonl(out / "done.r0.jsonl")) == 2 and len(_jsonl(out / "done.r1.jsonl")) == 1
    assert not (out / DONE_FILE).exists()
    assert [j.references is not None for j in read_manifest(man)] == [True] * 4


def test_two_references_with_the_tiny_model(tmp_path, tiny_pipe):
    _case(tmp_path / "in")
    man = _manifest(tmp_path / "jobs.jsonl", [_line(references=["in/a.png", "in/b.png"], reference_masks=[None, "in/b_mask.png"],
                                                    steps=2, output="r.png")])
    s = run_batch(man, tmp_path / "out", tiny_pipe, progress=False)
    assert s["done"] == 1, _jsonl(tmp_path / "out" / ERRORS_FILE)
    src = np.asarray(Image.open(tmp_path / "in" / "img.png"))
    res = np.asarray(Image.open(tmp_path / "out" / "r.png"))
    ring = np.ones((40, 48), bool)
    ring[6:26, 8:34] = False
    assert res.shape == src.shape and np.array_equal(res[ring], src[ring])
