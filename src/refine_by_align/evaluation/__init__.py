"""Evaluation: case-folder loading, metrics (IoU, masked PSNR, box SSIM, CLIP-I / DINO-I / CLIP-T),
methods (baselines and the pipeline), the benchmark and the multi-method report."""

from .bench import render_heatmap_overlay, run_bench, summarize
from .cases import Case, check_case_dir, list_case_dirs, load_case, load_cases
from .identity import CLIPEmbedder, DinoEmbedder, IdentityScorer, ImageFeatureExtractor, cosine_score, load_captions
from .methods import ClassicalFillMethod, HarmonicMethod, KeepMethod, Method, MethodOutput, RefineByAlignMethod, TeleaMethod
from .metrics import box_ssim, iou, masked_psnr, miou
from .registry import METHODS, PIPELINE_METHODS, get_method
from .report import run_all

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
    "ImageFeatureExtractor",
    "CLIPEmbedder",
    "DinoEmbedder",
    "IdentityScorer",
    "cosine_score",
    "load_captions",
    "Method",
    "MethodOutput",
    "KeepMethod",
    "TeleaMethod",
    "ClassicalFillMethod",
    "HarmonicMethod",
    "RefineByAlignMethod",
    "METHODS",
    "PIPELINE_METHODS",
    "get_method",
    "run_bench",
    "run_all",
    "summarize",
    "render_heatmap_overlay",
]
