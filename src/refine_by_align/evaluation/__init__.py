"""Evaluation: case-folder loading, metrics (IoU, masked PSNR, box SSIM), methods and the benchmark."""

from .bench import render_heatmap_overlay, run_bench, summarize
from .cases import Case, check_case_dir, list_case_dirs, load_case, load_cases
from .methods import METHODS, KeepMethod, Method, MethodOutput, RefineByAlignMethod, TeleaMethod, get_method
from .metrics import box_ssim, iou, masked_psnr, miou

__all__ = [
    "Case",
    "load_case",
    "load_cases",
    "list_case_dirs",
    "check_case_dir",
    "iou",
    "miou",
    "masked_psnr",
    "box_ssim",
    "Method",
    "MethodOutput",
    "KeepMethod",
    "TeleaMethod",
    "RefineByAlignMethod",
    "METHODS",
    "get_method",
    "run_bench",
    "summarize",
    "render_heatmap_overlay",
]
