"""Where a U-Net forward's time goes: op classes, FLOPs (CPU attention counted), the breakdown's
bound, the attention sweep (figures present, never compared)."""

import pytest
import torch


def test_op_classes_from_profiler_and_flop_counter_names():
    from refine_by_align.perf.profile import op_class

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

    from refine_by_align.perf.profile import unet_flops

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
    from refine_by_align.perf.profile import breakdown

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


def test_attention_sweep_figures_and_padding_is_exact():
    from refine_by_align.perf.profile import attention_sweep

    a = attention_sweep(tokens=64, width=32, head_sizes=(8, 16), dtype=torch.float32, repeats=1)
    assert set(a["by_head_size"]) == {8, 16} and all(v["ms"] > 0 and v["gflops"] > 0 for v in a["by_head_size"].values())
    assert set(a["padded"]) == {4, 48, 64}  # heads of 32 / 8 = 4, as they are and padded
    assert a["padded_max_abs_diff"] < 1e-5
