from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.evaluation.cases import load_cases
from refine_by_align.evaluation.methods import Method, RefineByAlignMethod, keep, telea
from refine_by_align.evaluation.registry import METHODS, get_method
from refine_by_align.io import InputError


def test_keep_is_identity(cases_dir: Path):
    case = load_cases(cases_dir, limit=1)[0]
    out = keep(case)
    assert np.array_equal(np.asarray(out.image), np.asarray(case.image))
    assert out.region is None
    assert isinstance(keep, Method) and keep.name == "keep"


def test_telea_changes_only_masked_pixels(cases_dir: Path):
    case = load_cases(cases_dir, limit=1)[0]
    out = telea(case)
    a, b = np.asarray(out.image), np.asarray(case.image)
    assert out.image.mode == "RGB" and out.image.size == case.image.size
    assert np.array_equal(a[~case.mask], b[~case.mask])
    assert not np.array_equal(a[case.mask], b[case.mask])
    assert out.region is None


def test_adapter_passes_arguments_and_converts(cases_dir: Path, fake_pipeline):
    case = load_cases(cases_dir, limit=1)[0]
    pipe = fake_pipeline(case.region)
    m = RefineByAlignMethod(pipe, num_inference_steps=3, seed=7)
    assert m.name == "refine-by-align" and isinstance(m, Method)
    out = m(case)
    assert pipe.calls[-1] == dict(align=True, seed=7, num_inference_steps=3, reference_mask=None)
    assert out.region.dtype == bool and out.region.shape == (36, 44)
    assert out.timings == {"total": 0.01}
    single = RefineByAlignMethod(pipe, align=False)
    assert single.name == "single-stage"
    assert single(case).region is None and pipe.calls[-1]["align"] is False


def test_adapter_can_leave_the_reference_masks_out(cases_dir: Path, fake_pipeline):
    """``reference_masks=False`` (bench-quality --no-reference-masks): the pipeline gets no
    reference mask, as from a user who gives none, and estimates the object itself."""
    import argparse
    import dataclasses

    from refine_by_align.commands.bench_quality import _method_options, add_arguments

    case = load_cases(cases_dir, limit=1)[0]
    case = dataclasses.replace(case, reference_mask=np.ones(np.asarray(case.reference).shape[:2], bool))
    pipe = fake_pipeline(case.region)
    RefineByAlignMethod(pipe)(case)
    assert pipe.calls[-1]["reference_mask"] is case.reference_mask
    RefineByAlignMethod(pipe, reference_masks=False)(case)
    assert pipe.calls[-1]["reference_mask"] is None
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = _method_options(parser.parse_args(["cases", "--output", "out", "--no-reference-masks"]))
    assert opts["refine-by-align"]["reference_masks"] is False and opts["single-stage"]["reference_masks"] is False
    assert "reference_masks" not in (_method_options(parser.parse_args(["cases", "--output", "out"])) or {}).get("refine-by-align", {})


def test_registry(monkeypatch):
    assert set(METHODS) >= {"keep", "telea", "refine-by-align", "single-stage"}
    assert get_method("keep").name == "keep"
    assert get_method("telea", radius=3).radius == 3.0
    with pytest.raises(InputError, match="unknown method 'nope'"):
        get_method("nope")


def test_refine_factories_load_pipeline_lazily(monkeypatch):
    import refine_by_align.evaluation.registry as registry

    loaded = []
    monkeypatch.setattr(registry, "_load_pipeline", lambda model: loaded.append(model) or "PIPE")
    m = get_method("single-stage", model="tiny", guidance_scale=2.0)
    assert isinstance(m, RefineByAlignMethod) and m.align is False and m.pipeline == "PIPE"
    assert m.call_kwargs == {"guidance_scale": 2.0} and loaded == ["tiny"]
    assert get_method("refine-by-align").align is True and loaded[-1] is None


def test_refine_by_align_method_passes_every_reference_of_a_case(tmp_path, tiny_pipe):
    """A case with a distractor as reference_2.png, passed first (reference_order [2, 1]): the
    method gives the pipeline both, scores the region found on reference.png, and the result is
    the one of reference.png alone (the distractor's warp is trusted nowhere)."""
    import json

    import cv2

    from refine_by_align.evaluation.cases import load_case

    def scene(seed):
        rng = np.random.default_rng(seed)
        im = cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3)).astype(np.uint8), (0, 0), 1.5)
        for _ in range(40):
            x, y = rng.integers(0, 144, 2)
            cv2.rectangle(im, (int(x), int(y)), (int(x + rng.integers(5, 16)), int(y + rng.integers(5, 16))), rng.integers(0, 256, 3).tolist(), -1)
        return im

    target = scene(0)
    right = cv2.warpAffine(target, cv2.getRotationMatrix2D((80, 80), 10, 0.95), (160, 160))
    mask = np.zeros((160, 160), bool)
    mask[70:90, 65:95] = True
    image = target.copy()
    image[mask] = 128
    d = tmp_path / "case"
    d.mkdir()
    for name, arr in (("image", image), ("reference", right), ("reference_2", scene(7)), ("target", target)):
        Image.fromarray(arr).save(d / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(d / "mask.png")
    (d / "meta.json").write_text(json.dumps({"kind": "affine", "reference_order": [2, 1]}))
    case = load_case(d)
    both = RefineByAlignMethod(tiny_pipe, references="all", matchers="sift", num_inference_steps=1)(case)
    alone = RefineByAlignMethod(tiny_pipe, references=1, matchers="sift", num_inference_steps=1)(case)
    assert both.info["guide"] == 1 and both.info["warp_share"][0] == 0 and both.info["warp_share"][1] > 0.5
    assert both.region.shape == (160, 160) and np.array_equal(both.region, alone.region)
    assert np.array_equal(np.asarray(both.image), np.asarray(alone.image))
    assert RefineByAlignMethod(tiny_pipe, references=2, matchers="sift", num_inference_steps=1)(case).region is None  # not on reference.png
    with pytest.raises(InputError, match="no reference 3"):
        RefineByAlignMethod(tiny_pipe, references=3)(case)


def test_a_bench_method_runs_its_pipeline_without_a_bar_per_case(monkeypatch, tiny_pipe, cases_dir: Path, capsys):
    """The pipeline a method loads has its own per-step progress bar off: a bench shows one bar over
    the cases, and a bar per case under it (as before) buried that one."""
    import refine_by_align.evaluation.registry as registry

    monkeypatch.setattr(tiny_pipe, "_progress_bar_config", {"disable": False})  # (the shared fixture's own setting comes back after)
    monkeypatch.setattr(registry, "load_pipeline", lambda name: tiny_pipe)
    method = get_method("refine-by-align", model="tiny", matchers="sift", num_inference_steps=2)
    capsys.readouterr()
    method(load_cases(cases_dir, limit=1)[0])
    err = capsys.readouterr().err
    assert "it/s" not in err and "s/it" not in err, err
    tiny_pipe.set_progress_bar_config(disable=False)
    tiny_pipe(*(lambda c: (c.image, c.mask, c.reference))(load_cases(cases_dir, limit=1)[0]), num_inference_steps=2, matchers="sift")
    assert "2/2" in capsys.readouterr().err  # (the same pipeline shows its bar when asked)
