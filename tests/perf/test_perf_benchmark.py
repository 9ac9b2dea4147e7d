"""`refine-by-align benchmark` on the tiny config: the JSON keys and sane figures (not a timed test)."""

import json

import numpy as np
import pytest
import torch

from refine_by_align.evaluation.perf import _resolve_dtype, matmul_ceiling, run_benchmark


def test_matmul_ceiling_is_positive():
    assert matmul_ceiling(torch.float32, n=128, repeats=2) > 0


def test_dtype_choice():
    assert _resolve_dtype("paper", "auto") == "bf16"
    assert _resolve_dtype("default", "auto") == "fp32"
    assert _resolve_dtype("default", "bf16") == "bf16"
    with pytest.raises(ValueError, match="dtype"):
        _resolve_dtype("default", "fp8")


def test_benchmark_writes_the_documented_keys(tmp_path):
    out = tmp_path / "bench.json"
    res = run_benchmark(["tiny"], out, repeats=1, dtype="bf16")
    data = json.loads(out.read_text())
    assert data["ceiling"]["fp32_gflops"] > 0 and data["ceiling"]["bf16_gflops"] > 0
    assert len(data["ceiling_runs"]) == 2 and data["ceiling"]["bf16_gflops"] == max(c["bf16_gflops"] for c in data["ceiling_runs"])
    r = data["tiny"]
    for key in ("refine_512_s", "align_s", "step_s", "unet_gflop", "unet_fraction_of_ceiling", "peak_rss_mb", "dtype"):
        assert key in r, key
    assert r["dtype"] == "bfloat16" and 0 <= r["unet_rel_error_vs_fp32"] < 0.1
    assert r["unet_gflop"] > 0
    # timings: present, finite and positive; never compared with each other (single measurements on a
    # loaded host can come in any order)
    timed = {k: v for k, v in r.items() if k.endswith("_s") and isinstance(v, (int, float))}
    assert {"refine_512_s", "align_s", "align_attention_s", "align_example_s", "refine_example_s", "step_s", "step_nocfg_s", "encode_s"} <= set(timed), sorted(timed)
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


def test_op_classes_from_profiler_and_flop_counter_names():
    from refine_by_align.evaluation.perf import op_class

    assert op_class("aten::addmm") == op_class("aten.mm") == op_class("mkldnn::_linear_pointwise") == "linear"
    assert op_class("aten.convolution") == op_class("mkldnn::_convolution_pointwise_") == "conv"
    assert op_class("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert op_class("aten::native_group_norm") == op_class("## Call CompiledFxGraph None ##") == "other"
    # names that only look alike
    assert op_class("aten::upsample_bilinear2d") == op_class("prims::convert_element_type") == op_class("aten::_upsample_bilinear2d_aa") == "other"
    assert op_class("aten::conv2d") == op_class("aten::mkldnn_convolution") == "conv"
    assert op_class("TorchDynamo Cache Lookup") == op_class("Torch-Compiled Region: 0/0") == "overhead"


def test_unet_flops_count_cpu_attention():
    """torch's flop counter alone counts PyTorch's CPU flash attention as 0 FLOPs; 4*B*H*N*M*D here."""
    from torch.utils.flop_counter import FlopCounterMode

    from refine_by_align.evaluation.perf import unet_flops

    q, k, v = torch.randn(2, 4, 64, 8), torch.randn(2, 4, 32, 8), torch.randn(2, 4, 32, 8)
    w = torch.randn(16, 8)

    def f():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v) @ w.T

    with FlopCounterMode(display=False) as fc:
        f()
    flops = unet_flops(f)
    attn = 4 * 2 * 4 * 64 * 32 * 8 / 1e9
    assert flops["attention"] == pytest.approx(attn)
    assert flops["linear"] == pytest.approx(2 * 2 * 4 * 64 * 8 * 16 / 1e9)
    assert flops["total"] == pytest.approx(flops["attention"] + flops["linear"])
    from torch.utils.flop_counter import flop_registry

    if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:  # torch 2.13: what the counter alone sees
        assert fc.get_total_flops() / 1e9 == pytest.approx(flops["linear"])


def test_breakdown_bound():
    from refine_by_align.evaluation.perf import breakdown

    flops = {"conv": 60.0, "linear": 20.0, "attention": 20.0, "other": 0.0, "total": 100.0}
    secs = {"conv": 0.3, "linear": 0.1, "attention": 0.4, "other": 0.1, "wall": 1.0}
    bd = breakdown(flops, secs, forward_s=1.5, ceiling_gflops=400.0)  # operators 0.9 s of a 1.5 s forward
    assert bd["conv"]["s"] == pytest.approx(0.3) and bd["conv"]["gflops"] == pytest.approx(200.0)
    assert bd["attention"]["fraction_of_ceiling"] == pytest.approx(20 / 0.4 / 400)
    assert bd["overhead"]["s"] == pytest.approx(0.6) and "gflops" not in bd["overhead"]  # the rest of the forward
    assert sum(bd[k]["share"] for k in ("conv", "linear", "attention", "other", "overhead")) == pytest.approx(1.0)
    # conv + linear at the ceiling: 80/400 = 0.2 s, plus attention 0.4 + other 0.1 + overhead 0.6 s
    assert bd["unet_fraction_bound"] == pytest.approx(100 / 1.3 / 400)
    fast = breakdown(flops, secs, forward_s=0.45, ceiling_gflops=400.0)  # operators took longer than the median forward
    assert fast["overhead"]["s"] == pytest.approx(0.0) and fast["conv"]["s"] == pytest.approx(0.15)


def test_benchmark_times_the_compiled_unet(monkeypatch, tmp_path):
    """With --compile the profiled forward and the refine-batch step run the compiled U-Net (a
    stand-in here: like torch.compile's module it has no truth value, so `compiled or eager` breaks).
    The model takes 3 samples with guidance: its refine batch (6) is no other measurement's."""
    import dataclasses

    from refine_by_align.config import get_config
    from refine_by_align.evaluation import perf
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


def test_attention_sweep_figures_and_padding_is_exact():
    from refine_by_align.evaluation.perf import attention_sweep

    a = attention_sweep(tokens=64, width=32, head_sizes=(8, 16), dtype=torch.float32, repeats=1)
    assert set(a["by_head_size"]) == {8, 16} and all(v["ms"] > 0 and v["gflops"] > 0 for v in a["by_head_size"].values())
    assert set(a["padded"]) == {4, 48, 64}  # heads of 32 / 8 = 4, as they are and padded
    assert a["padded_max_abs_diff"] < 1e-5
