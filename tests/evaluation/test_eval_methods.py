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
    pipe = fake_pipeline(case.correspondence)
    m = RefineByAlignMethod(pipe, num_inference_steps=3, seed=7)
    assert m.name == "refine-by-align" and isinstance(m, Method)
    out = m(case)
    assert pipe.calls[-1] == dict(align=True, seed=7, num_inference_steps=3, reference_mask=None)
    assert out.region.dtype == bool and out.region.shape == (36, 44)
    assert out.timings == {"total": 0.01}
    single = RefineByAlignMethod(pipe, align=False)
    assert single.name == "single-stage"
    assert single(case).region is None and pipe.calls[-1]["align"] is False


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
