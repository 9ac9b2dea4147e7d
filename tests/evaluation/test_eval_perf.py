"""`refine-by-align benchmark` on the tiny config: the JSON keys and sane figures (not a timed test)."""

import json

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
    r = data["tiny"]
    for key in ("refine_512_s", "align_s", "step_s", "unet_gflop", "unet_fraction_of_ceiling", "peak_rss_mb", "dtype"):
        assert key in r, key
    assert r["dtype"] == "bfloat16" and 0 <= r["unet_rel_error_vs_fp32"] < 0.1
    assert r["unet_gflop"] > 0 and r["refine_512_s"] >= r["step_s"] > 0
    assert r["peak_rss_mb"] > 50
    assert set(r["refine_512_parts_s"]) >= {"align", "denoise", "total"}
    assert res["tiny"]["unet_fraction_of_ceiling"] == r["unet_fraction_of_ceiling"]
