"""`refine-by-align bench-speed` on the tiny config: the JSON keys and sane figures (not a timed test)."""

import json

import numpy as np
import pytest
import torch

from refine_by_align.io import InputError
from refine_by_align.perf.run import _resolve_dtype, check_configs, format_results, run_benchmark


def test_dtype_choice():
    assert _resolve_dtype("paper", "auto") == "bf16"
    assert _resolve_dtype("paper", "auto", native=False) == "fp32"  # (AVX2 only: bf16 emulated)
    assert _resolve_dtype("paper", "bf16", native=False) == "bf16"  # (asked for: kept)
    assert _resolve_dtype("default", "auto") == "fp32"
    assert _resolve_dtype("default", "bf16") == "bf16"
    with pytest.raises(ValueError, match="dtype"):
        _resolve_dtype("default", "fp8")


def test_config_names_are_checked_before_any_timing(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert check_configs(f" tiny, paper,,{tmp_path / 'm'} ") == ["tiny", "paper", str(tmp_path / "m")]
    with pytest.raises(InputError, match=r"--configs: '.*nosuch' is neither a preset \(tiny"):
        check_configs(f"tiny,{tmp_path / 'nosuch'}")
    with pytest.raises(InputError, match="neither a preset"):
        check_configs(str(tmp_path))  # a folder without config.json


def test_benchmark_writes_the_documented_keys(tmp_path):
    """... and times the alignment with the ALIKED weights it is given (``--matcher-weights``: here
    the tiny network's, random), naming them in the result and the printed lines."""
    from safetensors.torch import save_file

    from refine_by_align.models.aliked import ALIKED, ALIKED_CONFIGS

    torch.manual_seed(0)
    weights = tmp_path / "aliked-t16.safetensors"
    save_file({k: v.contiguous() for k, v in ALIKED(ALIKED_CONFIGS["aliked-t16"]).state_dict().items()}, str(weights))
    out = tmp_path / "bench.json"
    res = run_benchmark(["tiny"], out, repeats=1, dtype="bf16", matcher_weights=str(weights))
    data = json.loads(out.read_text())
    assert data["tiny"]["matcher"] == str(weights)
    assert any(line.startswith("tiny: alignment dense") and line.endswith("matcher: aliked-t16.safetensors") for line in format_results(data, out).splitlines())
    assert data["ceiling"]["fp32_gflops"] > 0 and data["ceiling"]["bf16_gflops"] > 0
    from refine_by_align.fill import fsr_backend

    assert data["fsr"] == fsr_backend() and (data["fsr"].startswith("numba ") or data["fsr"] == "opencv")
    assert f"FSR fill: {data['fsr']}" in format_results(data, out)
    assert len(data["ceiling_runs"]) == 2 and data["ceiling"]["bf16_gflops"] == max(c["bf16_gflops"] for c in data["ceiling_runs"])
    r = data["tiny"]
    for key in ("refine_512_s", "align_s", "step_s", "unet_gflop", "unet_fraction_of_ceiling", "peak_rss_mb", "dtype"):
        assert key in r, key
    assert r["dtype"] == "bfloat16" and 0 <= r["unet_rel_error_vs_fp32"] < 0.1
    assert r["unet_gflop"] > 0
    # timings: present, finite and positive; never compared with each other (single measurements on a
    # loaded host can come in any order)
    timed = {k: v for k, v in r.items() if k.endswith("_s") and isinstance(v, (int, float))}
    assert {"refine_512_s", "align_s", "align_attention_s", "align_example_s", "align_example_warm_s", "refine_example_s", "step_s", "step_nocfg_s", "encode_s"} <= set(timed), sorted(timed)
    assert all(np.isfinite(v) and v > 0 for v in timed.values()), timed
    assert all(np.isfinite(v) and v >= 0 for v in r["refine_512_parts_s"].values()), r["refine_512_parts_s"]
    assert r["peak_rss_mb"] > 50
    assert set(r["refine_512_parts_s"]) >= {"align", "denoise", "total"}
    assert res["tiny"]["unet_fraction_of_ceiling"] == r["unet_fraction_of_ceiling"]
    assert r["unet_gflop"] == pytest.approx(sum(r["unet_gflop_by_class"].values())) and r["unet_gflop_by_class"]["attention"] > 0
    bd = r["unet_breakdown"]
    assert sum(bd[k]["share"] for k in ("conv", "linear", "attention", "other", "overhead")) == pytest.approx(1.0)
    assert r["unet_fraction_of_ceiling"] > 0 and bd["unet_fraction_bound"] > 0
    assert r["unet_refine_batch"]["batch"] >= 1 and r["unet_refine_batch"]["fraction_of_ceiling"] > 0
    from PIL import Image

    picture = np.asarray(Image.open(out.with_suffix(".png")).convert("RGB"))  # the breakdown as bars
    assert picture.shape[1] > 500 and (picture == (0xC4, 0x4E, 0x52)).all(-1).any()  # attention red is drawn
    text = format_results(res, out).splitlines()  # what `refine-by-align bench-speed` prints
    assert text[0].startswith(data["machine"]) and "matmul ceiling" in text[0]
    assert any(line.split()[:2] == ["tiny", "bfloat16"] for line in text)  # the table row
    assert any(line.startswith("tiny: U-Net forward") and "by op class" in line for line in text)
    assert text[-1].startswith(f"wrote {out} and {out.with_suffix('.png')}")


def test_benchmark_times_the_compiled_unet(monkeypatch, tmp_path):
    """With --compile the profiled forward and the refine-batch step run the compiled U-Net (a
    stand-in here: like torch.compile's module it has no truth value, so `compiled or eager` breaks).
    The model takes 3 samples with guidance: its refine batch (6) is no other measurement's."""
    import dataclasses

    from refine_by_align.config import get_config
    from refine_by_align.perf import run as perf
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    torch.manual_seed(0)
    RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), default_samples=3)).save_pretrained(tmp_path / "m")
    state = {"profiling": False, "refining": False}
    calls = []  # (batch, profiling, refining) of each compiled call

    class CompiledStandIn(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def __len__(self):
            raise TypeError("a compiled module does not support len()")

        def forward(self, *args, **kwargs):
            calls.append((args[0].shape[0], state["profiling"], state["refining"]))
            return self.unet(*args, **kwargs)

    def fake_compile(self, freezing=True, mode=None, vae=True):
        self._compiled = {"unet": CompiledStandIn(self.model.unet)}
        return True

    def flagged(key, fn):
        def run(*args, **kwargs):
            state[key] = True
            try:
                return fn(*args, **kwargs)
            finally:
                state[key] = False

        return run

    monkeypatch.setattr(RefineByAlignPipeline, "enable_compile", fake_compile)
    monkeypatch.setattr(RefineByAlignPipeline, "__call__", flagged("refining", RefineByAlignPipeline.__call__))
    monkeypatch.setattr(perf, "time_by_op_class", flagged("profiling", perf.time_by_op_class))
    r = perf.benchmark_config(str(tmp_path / "m"), repeats=1, compile=True)
    assert r["compiled"] and r["compiled_parts"] == ["unet"]
    assert r["unet_refine_batch"]["batch"] == 6
    assert any(p for _, p, _ in calls)  # the profiled forward
    assert any(b == 6 and not p and not f for b, p, f in calls)  # the refine-batch step, outside a refine
    assert any(f for _, _, f in calls)  # and the refines themselves




def test_benchmark_leaves_no_leaked_semaphore_behind(tmp_path):
    """Each config runs in a spawned child; its progress bars must not build tqdm's default
    multiprocessing lock there (a semaphore the child never releases, which Python's resource
    tracker reports on stderr at exit as 'leaked semaphore objects')."""
    import subprocess
    import sys

    code = f"import sys; from refine_by_align.cli import main; sys.exit(main(['bench-speed', '--configs', 'tiny', '--repeats', '1', '--output', {str(tmp_path / 'b.json')!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "b.json").exists()
    assert "leaked semaphore" not in proc.stderr, proc.stderr[-2000:]


def _write_cases(root, kinds):
    """Small case folders (make-cases' layout) of the given kinds, each with a reference mask."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, kind in enumerate(kinds):
        d = root / f"c{i:02d}_{kind}"
        d.mkdir(parents=True)
        image = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
        mask = np.zeros((48, 56), bool)
        mask[14:26, 18:32] = True
        Image.fromarray(image).save(d / "image.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(d / "mask.png")
        Image.fromarray(image[:, ::-1].copy()).save(d / "reference.png")
        Image.fromarray(np.full((48, 56), 255, np.uint8)).save(d / "reference_mask.png")
        (d / "meta.json").write_text(json.dumps({"kind": kind}))
    return root


def test_case_folder_timing_summarises_every_case_by_kind(tiny_pipe, tmp_path, monkeypatch):
    """--cases: every case refined once with its reference mask and once without (the object then
    estimated: estimate_foreground is called for those runs only); per kind the median, 90th
    percentile and max, the count under the target, each stage's median, and the printed line."""
    import refine_by_align.data.foreground as fg
    from refine_by_align.perf import run as perf

    root = _write_cases(tmp_path / "cases", ["affine", "multiview", "multiview"])
    estimated = []
    real = fg.estimate_foreground
    monkeypatch.setattr(fg, "estimate_foreground", lambda *a, **k: estimated.append(1) or real(*a, **k))
    for name in ("reference", "reference_mask"):  # a second reference, with its mask
        (root / "c02_multiview" / f"{name}_2.png").write_bytes((root / "c01_multiview" / f"{name}.png").read_bytes())
    res = perf._time_cases(tiny_pipe, str(root), "tiny")
    assert len(estimated) == 1 + 4  # the warm-up without masks, then the runs without: one estimate per reference
    assert [r["references"] for r in res["with_reference_mask"]["runs"]] == [1, 1, 2]  # every reference, as bench-quality refines
    assert [r["reference_mask_given"] for r in res["with_reference_mask"]["runs"]] == [True, True, True]
    assert not any(r["reference_mask_given"] for r in res["without_reference_mask"]["runs"])
    for key in ("with_reference_mask", "without_reference_mask"):
        c = res[key]
        assert c["n"] == 3 and [r["case"] for r in c["runs"]] == ["c00_affine", "c01_multiview", "c02_multiview"]
        assert set(c["by_kind"]) == {"affine", "multiview"} and c["by_kind"]["multiview"]["n"] == 2
        s = np.array([r["s"] for r in c["runs"]])
        under = int((s < perf.CASE_TARGET_S).sum())  # (the summary recomputed from the runs, not a bound on any time)
        assert c["max_s"] == s.max() and c["median_s"] == np.median(s) and c["under_target"] == under
        assert c["by_kind"]["affine"]["max_s"] == c["runs"][0]["s"]
        # the alignment stage (prepare + align) against its own target, overall and per kind
        a = np.array([r["parts_s"]["prepare"] + r["parts_s"]["align"] for r in c["runs"]])
        assert c["alignment"]["median_s"] == np.median(a) and c["alignment"]["max_s"] == a.max() and c["alignment"]["under_target"] == int((a < perf.ALIGN_TARGET_S).sum())
        assert c["by_kind"]["multiview"]["alignment"]["n"] == 2 and c["by_kind"]["affine"]["alignment"]["max_s"] == a[0]
        assert {"align", "denoise"} <= set(c["parts_median_s"]) and all(np.isfinite(v) and v >= 0 for v in c["parts_median_s"].values())
    assert perf._time_cases(tiny_pipe, str(root), "tiny", limit=1)["with_reference_mask"]["n"] == 1
    with pytest.raises(InputError, match="holds no case folders"):
        perf._time_cases(tiny_pipe, str(tmp_path / "cases" / "c00_affine"), "tiny")
    # what bench-speed prints for it
    (tmp_path / "b.json").write_text("{}")
    fake = {"machine": "m", "ceiling": {"fp32_gflops": 1.0, "bf16_gflops": 1.0}, "tiny": {"cases": res}}
    lines = [line for line in format_results(fake, tmp_path / "b.json").splitlines() if line.startswith("tiny: 3 cases")]
    assert len(lines) == 2 and "with the reference masks" in lines[0] and "multiview" in lines[0] and f"of 3 under {perf.CASE_TARGET_S:g} s" in lines[1]
    stage = [line for line in format_results(fake, tmp_path / "b.json").splitlines() if line.startswith("tiny: the same")]
    assert len(stage) == 2 and "alignment stage (prepare + align)" in stage[0] and f"of 3 under {perf.ALIGN_TARGET_S:g} s" in stage[1]
    assert f"median {res['with_reference_mask']['alignment']['median_s']:.2f} s" in stage[0] and "multiview" in stage[0]
    del fake["tiny"]["cases"]["with_reference_mask"]["alignment"]  # (a result written before the stage was summarised)
    assert len([line for line in format_results(fake, tmp_path / "b.json").splitlines() if line.startswith("tiny: the same")]) == 1
