"""ALIKED keypoints and descriptors (Zhao et al., "ALIKED: A Lighter Keypoint and Descriptor
Extraction Network via Deformable Transformation", IEEE TIM 2023), written from the paper with the
upstream code (Shiaoming/ALIKED @ 683d7c6, BSD-3-Clause) as reference, to load its published weights.

The network (Sec. III of the paper):

- a four-block encoder at strides 1, 2, 8, 32; blocks 3 and 4 use 3x3 *deformable* convolutions
  (Dai et al. 2017, without modulation) whose offsets come from a plain 3x3 convolution;
- feature aggregation: each block's output goes through a 1x1 convolution to dim/4 channels, is
  upsampled bilinearly to full resolution and the four are concatenated (dim channels);
- a small score head (1x1, then three 3x3 convolutions, SELU, sigmoid) gives the score map;
- DKD, the differentiable keypoint detection (Sec. III-C): NMS (radius 2) on the score map, the
  best local maxima, then a soft-argmax (temperature 0.1) in the 5x5 window for sub-pixel positions;
- SDDH, the sparse deformable descriptor head (Sec. III-D): at each keypoint a 3x3 patch of the
  L2-normalised aggregated feature map predicts M sampling offsets (M = 16 or 32), the features are
  sampled there bilinearly, go through a 1x1 convolution and SELU, and are aggregated with M
  learned (dim x dim) matrices into one descriptor, then L2-normalised.

The deformable convolution is :func:`deform_conv2d`, written with ``grid_sample`` with the
semantics of ``torchvision.ops.deform_conv2d`` (torchvision is not usable here).

Weights: ``aliked-n16`` (default), ``aliked-n16rot``, ``aliked-n32``, ``aliked-t16`` as safetensors
with the upstream key names, looked up by :func:`find_weights` (``../shared/weights/aliked/`` by
default). They are never part of the repository.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ALIKED",
    "load_aliked",
    "SparseFeatureMap",
    "ALIKEDConfig",
    "convert_checkpoint",
    "ALIKED_CONFIGS",
    "DEFAULT_WEIGHTS_NAME",
    "deform_conv2d",
    "detect",
    "detect_and_describe",
    "detect_keypoints",
    "find_weights",
    "mutual_nn_matches",
    "simple_nms",
]

DEFAULT_WEIGHTS_NAME = "aliked-n16"
WEIGHTS_ENV = "REFINE_BY_ALIGN_WEIGHTS"


@dataclass(frozen=True)
class ALIKEDConfig:
    """Channel widths of the four encoder blocks, descriptor dim, SDDH patch size K and number of
    deformable sample positions M (Table I of the paper)."""

    c1: int = 16
    c2: int = 32
    c3: int = 64
    c4: int = 128
    dim: int = 128
    K: int = 3
    M: int = 16


ALIKED_CONFIGS: dict[str, ALIKEDConfig] = {
    "aliked-t16": ALIKEDConfig(8, 16, 32, 64, 64, 3, 16),
    "aliked-n16": ALIKEDConfig(16, 32, 64, 128, 128, 3, 16),
    "aliked-n16rot": ALIKEDConfig(16, 32, 64, 128, 128, 3, 16),
    "aliked-n32": ALIKEDConfig(16, 32, 64, 128, 128, 3, 32),
}


# ----------------------------------------------------------------------------- weights lookup


def _candidates(name: str, path: str | os.PathLike | None) -> list[Path]:
    """Every place :func:`find_weights` looks, in order."""
    file = f"{name}.safetensors"
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            return [p / file, p / "aliked" / file]
        return [p]
    out: list[Path] = []
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        root = Path(env).expanduser()
        out += [root / "aliked" / file, root / file]
    rel = Path("..") / "shared" / "weights" / "aliked" / file
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        cand = (base / rel).resolve()
        if cand not in out:
            out.append(cand)
    return out


def find_weights(name: str = DEFAULT_WEIGHTS_NAME, path: str | os.PathLike | None = None) -> Path | None:
    """The safetensors file of the ALIKED weights ``name``, or None if not found.

    ``path`` (a file, or a folder holding NAME.safetensors or aliked/NAME.safetensors) if given;
    else the folder in the environment variable REFINE_BY_ALIGN_WEIGHTS (holding
    aliked/NAME.safetensors or NAME.safetensors); else ../shared/weights/aliked/NAME.safetensors,
    searched relative to the current directory and to the repository root
    (``Path(__file__).parents[3]``). A variable that does not hold the file falls through to the
    shared folder."""
    for cand in _candidates(name, path):
        if cand.is_file():
            return cand
    return None


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Upstream's ALIKED checkpoint (``models/aliked-n16.pth`` of Shiaoming/ALIKED, a pickled state
    dict) -> safetensors, the only format :meth:`ALIKED.from_pretrained` loads. The pickle is read
    with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler builds tensors and plain
    containers only and refuses anything else, so a tampered file cannot run code. The keys are
    checked against the network (every tensor of one of :data:`ALIKED_CONFIGS`' architectures,
    nothing more) before anything is written. ``dst``: default ``src`` with ``.safetensors``.
    Returns the path written. One ValueError on a file that is not an ALIKED checkpoint."""
    from safetensors.torch import save_file

    src = Path(src).expanduser()
    dst = src.with_suffix(".safetensors") if dst is None else Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        raise ValueError(f"output '{dst}': must end in .safetensors")
    if dst.resolve() == src.resolve():
        raise ValueError(f"output '{dst}' is the input file: give another path")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"'{src}': file not found") from None
    except Exception as e:  # the restricted unpickler refuses, or not a torch file at all
        raise ValueError(f"'{src}': not a PyTorch checkpoint of tensors ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"'{src}': not a state dict of named tensors")
    try:
        net = ALIKED(_config_from_state(state))
    except ValueError as e:
        raise ValueError(f"'{src}': {e}") from None
    wanted = net.state_dict()
    missing, extra = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)]
    if missing or extra or bad:
        raise ValueError(f"'{src}': not an ALIKED checkpoint (missing {missing[:3]}, unexpected {extra[:3]}, mis-shaped {bad[:3]})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(dst), metadata={"source": src.name})
    return dst


def _config_from_state(state: dict[str, torch.Tensor]) -> ALIKEDConfig:
    """The architecture a state dict was saved from, read off its tensor shapes (so a renamed file
    still loads)."""
    try:
        m, dim, _ = state["desc_head.agg_weights"].shape
        return ALIKEDConfig(
            c1=state["block1.conv1.weight"].shape[0],
            c2=state["block2.conv1.weight"].shape[0],
            c3=state["block3.conv1.regular_conv.weight"].shape[0],
            c4=state["block4.conv1.regular_conv.weight"].shape[0],
            dim=dim,
            K=state["desc_head.offset_conv.0.weight"].shape[-1],
            M=m,
        )
    except KeyError as e:
        raise ValueError(f"not an ALIKED state dict: key {e} missing") from None


# ----------------------------------------------------------------------------- deformable convolution


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deformable convolution (Dai et al., ICCV 2017; v2 with ``mask``) with the semantics of
    ``torchvision.ops.deform_conv2d``, built on ``F.grid_sample``.

    input (B, C, H, W); offset (B, 2 * G * kh * kw, Ho, Wo) with, for offset group g and kernel
    tap k = i * kw + j (row-major), channel 2 * (g * kh * kw + k) the row offset dy and the next
    one the column offset dx; weight (O, C, kh, kw); mask (B, G * kh * kw, Ho, Wo) or None.
    Tap k of output pixel (ho, wo) reads the input bilinearly at
    (ho * sh - ph + i * dh + dy, wo * sw - pw + j * dw + dx); samples outside the image are zero
    (corners outside count as zero, as in torchvision). Returns (B, O, Ho, Wo)."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    b, c, h, w = input.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"weight has {c_w} input channels, input {c} (grouped weights are not supported)")
    kk = kh * kw
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    g = offset.shape[1] // (2 * kk)
    if offset.shape != (b, 2 * g * kk, ho, wo) or g < 1 or c % g:
        raise ValueError(f"offset shape {tuple(offset.shape)} does not fit input {tuple(input.shape)} and a {kh}x{kw} kernel")
    dev, dt = input.device, input.dtype
    # base sampling positions of every tap: (kk, Ho, Wo)
    ii, jj = torch.meshgrid(torch.arange(kh, device=dev, dtype=dt), torch.arange(kw, device=dev, dtype=dt), indexing="ij")
    ys = torch.arange(ho, device=dev, dtype=dt) * sh - ph
    xs = torch.arange(wo, device=dev, dtype=dt) * sw - pw
    base_y = ys[None, :, None] + (ii.reshape(kk) * dh)[:, None, None]  # (kk, Ho, 1)
    base_x = xs[None, None, :] + (jj.reshape(kk) * dw)[:, None, None]  # (kk, 1, Wo)
    off = offset.reshape(b, g, kk, 2, ho, wo)
    py = base_y + off[:, :, :, 0]  # (B, G, kk, Ho, Wo)
    px = base_x + off[:, :, :, 1]
    # pixel -> grid_sample's [-1, 1] with align_corners=True (pixel centres at integers); one zero
    # pixel of padding around the input keeps the mapping valid for 1-pixel-wide inputs
    x = F.pad(input, (1, 1, 1, 1)).reshape(b * g, c // g, h + 2, w + 2)
    gx = (px + 1.0) * (2.0 / (w + 1)) - 1.0
    gy = (py + 1.0) * (2.0 / (h + 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(b * g, kk * ho, wo, 2)
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (B*G, C/G, kk*Ho, Wo)
    cols = cols.reshape(b, g, c // g, kk, ho, wo)
    if mask is not None:
        cols = cols * mask.reshape(b, g, 1, kk, ho, wo)
    cols = cols.reshape(b, c * kk, ho * wo)  # channel-major, then tap: matches weight.reshape(O, C*kk)
    out = torch.matmul(weight.reshape(o, c * kk), cols).reshape(b, o, ho, wo)
    if bias is not None:
        out = out + bias.reshape(1, o, 1, 1)
    return out


# ----------------------------------------------------------------------------- network blocks


class DeformableConv2d(nn.Module):
    """3x3 deformable convolution whose offsets (dy, dx per tap) come from a plain convolution of
    the same input, clamped to +-max(H, W) / 4 (upstream's choice)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1, bias: bool = False):
        super().__init__()
        self.padding = padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, padding=padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        max_offset = max(h, w) / 4.0
        offset = self.offset_conv(x).clamp(-max_offset, max_offset)  # (B, 2*9, H, W)
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias, padding=self.padding)


def _conv3x3(cin: int, cout: int, deformable: bool) -> nn.Module:
    return DeformableConv2d(cin, cout) if deformable else nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Two (conv 3x3, BatchNorm, SELU): the full-resolution first block."""

    def __init__(self, cin: int, cout: int, deformable: bool = False):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, deformable)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, deformable)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SELU in place on the BatchNorm's fresh output (autograd allows it: BatchNorm's backward
        # reads its input): no second full-resolution tensor, the same values
        x = F.selu(self.bn1(self.conv1(x)), inplace=True)
        return F.selu(self.bn2(self.conv2(x)), inplace=True)


class ResBlock(nn.Module):
    """ResNet basic block (stride 1) with SELU and a 1x1 projection (with bias) on the shortcut."""

    def __init__(self, cin: int, cout: int, deformable: bool = False):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, deformable)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, deformable)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.selu(self.bn1(self.conv1(x)), inplace=True)  # (in place, as ConvBlock)
        out = self.bn2(self.conv2(out))
        out += self.downsample(x)
        return F.selu(out, inplace=True)


class SDDH(nn.Module):
    """Sparse deformable descriptor head (Sec. III-D).

    For a keypoint p the K x K patch of the feature map around floor(p) gives M offsets
    (conv K x K without padding, SELU, conv 1x1; the first M channels are x offsets, the last M
    y offsets, clamped to +-max(H, W) / 4); the map is sampled bilinearly at p + offset_m, each
    sample goes through a 1x1 convolution and SELU, and the descriptor is
    sum_m W_m^T f_m (``agg_weights`` (M, C, D)), L2-normalised."""

    def __init__(self, dim: int, kernel_size: int = 3, n_pos: int = 16):
        super().__init__()
        self.kernel_size = kernel_size
        self.n_pos = n_pos
        self.offset_conv = nn.Sequential(
            nn.Conv2d(dim, 2 * n_pos, kernel_size, bias=True), nn.SELU(), nn.Conv2d(2 * n_pos, 2 * n_pos, 1, bias=True)
        )
        self.sf_conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.agg_weights = nn.Parameter(torch.rand(n_pos, dim, dim))

    def forward(self, feature_map: torch.Tensor | SparseFeatureMap, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feature_map (C, H, W) (or a :class:`SparseFeatureMap`); keypoints (N, 2) pixel xy ->
        descriptors (N, D), offsets (N, M, 2).

        The map is read pixel by pixel from a (H, W, C) layout (a gather of contiguous C-vectors):
        the same values as upstream's padded patch indexing and ``grid_sample`` over (C, H, W),
        several times faster on a CPU, where both stride over C for every sample."""
        c, h, w = feature_map.shape
        n, k, m = keypoints.shape[0], self.kernel_size, self.n_pos
        if n == 0:
            return feature_map.new_zeros(0, self.agg_weights.shape[-1]), feature_map.new_zeros(0, m, 2)
        # (H, W, C): free when the map is a view of one; a SparseFeatureMap is read as it is
        hwc = feature_map if isinstance(feature_map, SparseFeatureMap) else feature_map.permute(1, 2, 0).contiguous()
        # K x K patch starting at floor(p) - floor((K-1)/2), zero outside the map (upstream get_patches)
        lt = math.floor((k - 1) / 2)
        p0 = keypoints.long()  # (N, 2), floor for the non-negative positions DKD gives
        ar = torch.arange(k, device=feature_map.device) - lt
        rows = (p0[:, 1:2] + ar)[:, :, None].expand(n, k, k)  # (N, K, K)
        cols = (p0[:, 0:1] + ar)[:, None, :].expand(n, k, k)
        patch = _gather_hwc(hwc, cols, rows).permute(0, 3, 1, 2)  # (N, C, K, K)
        max_offset = max(h, w) / 4.0
        offset = self.offset_conv(patch).clamp(-max_offset, max_offset)  # (N, 2M, 1, 1)
        offset = offset.reshape(n, 2, m).permute(0, 2, 1)  # (N, M, 2) xy
        pos = keypoints[:, None, :] + offset  # (N, M, 2) pixel xy
        feats = _bilinear_hwc(hwc, pos)  # (N, M, C)
        feats = F.selu(F.linear(feats, self.sf_conv.weight[:, :, 0, 0]), inplace=True)  # the 1x1 convolution, (N, M, C) (SELU on its fresh output)
        # sum_m W_m^T f_m as one (N, M*C) x (M*C, D) product (an einsum over these shapes took 60% longer)
        desc = feats.reshape(n, m * c) @ self.agg_weights.reshape(m * c, -1)  # (N, D)
        return F.normalize(desc, p=2.0, dim=1), offset


class SparseFeatureMap:
    """The L2-normalised (D, H, W) descriptor map of :meth:`ALIKED.extract_dense_map`, left as its
    four upsampled parts and assembled only at the pixels that are read (:meth:`rows`).

    SDDH reads a 3 x 3 patch and M bilinear samples around each keypoint, a third of the pixels of
    the picture at 1,024 keypoints. Concatenating the four parts into D channels and normalising
    every pixel cost about 50 ms at 384 x 320 px on 2 CPU cores, more than the network's blocks;
    here it is done for the pixels read, in the same order of operations, so the values are the
    dense map's (tests check them)."""

    def __init__(self, parts: list[torch.Tensor], channels: int, size: tuple[int, int], offset: tuple[int, int]):
        self.parts = parts  # each (H', W', channels) contiguous: a part upsampled to the padded picture
        self.channels = channels
        self.h, self.w = size  # the picture's size (the map's)
        self.top, self.left = offset  # the padding above and left of the picture
        self.dim = channels * len(parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W), as the dense map's."""
        return (self.dim, self.h, self.w)

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def new_zeros(self, *size: int) -> torch.Tensor:
        return self.parts[0].new_zeros(*size)

    def rows(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """The map's D-vectors at pixels ``ys``, ``xs`` ((N,) int64, inside the map) -> (N, D)."""
        wp = int(self.parts[0].shape[1])
        idx = (ys + self.top) * wp + (xs + self.left)  # on the padded picture
        tables = [p.reshape(-1, self.channels) for p in self.parts]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tables):
            feats = torch.cat([t.index_select(0, idx) for t in tables], dim=-1)  # (N, D)
            return feats / torch.linalg.vector_norm(feats, dim=-1, keepdim=True).clamp_min(1e-12)
        # at inference each part is gathered straight into its columns (no concatenation copy), and
        # normalised in place: the same values
        feats = tables[0].new_empty(len(idx), self.dim)  # (N, D)
        for i, t in enumerate(tables):
            torch.index_select(t, 0, idx, out=feats[:, i * self.channels : (i + 1) * self.channels])
        return feats.div_(torch.linalg.vector_norm(feats, dim=-1, keepdim=True).clamp_min(1e-12))


def _gather_hwc(hwc: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """hwc (H, W, C) read at integer pixels xs, ys (any equal shape S), zero outside -> (*S, C)."""
    table, index, inside = _rows_clamped(hwc, xs, ys)
    out = table.index_select(0, index.reshape(-1)).reshape(*xs.shape, table.shape[1])
    return out * inside.unsqueeze(-1).to(out.dtype)


def _rows_clamped(hwc: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hwc (H, W, C) to be read at integer pixels xs, ys (any equal shape S), clamped to the map ->
    (a table of C-vectors (R, C); each read's row in it (*S,) int64; which reads lie inside the map
    (*S,) bool). A dense map is its own table (one contiguous row per pixel); a
    :class:`SparseFeatureMap` is assembled at the distinct pixels read, each once."""
    h, w = (hwc.h, hwc.w) if isinstance(hwc, SparseFeatureMap) else hwc.shape[:2]
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    idx = ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)
    if isinstance(hwc, SparseFeatureMap):
        uniq, inverse = torch.unique(idx.reshape(-1), return_inverse=True)
        return hwc.rows(uniq // w, uniq % w), inverse.reshape(idx.shape), inside
    return hwc.reshape(h * w, hwc.shape[2]), idx, inside


def _bilinear_hwc(hwc: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """hwc (H, W, C) read bilinearly at pixel xy (*S, 2) (pixel centres at integers; corners
    outside the map count as zero, as ``grid_sample(..., padding_mode="zeros", align_corners=True)``)
    -> (*S, C). (On a map 1 pixel wide or high grid_sample's normalisation differs; DKD finds no
    keypoints on such a map, so SDDH never reads one.)

    The four corners' rows are summed with their weights by ``F.embedding_bag`` straight from the
    table, without first copying every corner's C-vector out (4 x M x N of them: at 2,048
    keypoints that copy was most of SDDH's time on a CPU)."""
    x, y = xy[..., 0], xy[..., 1]
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    xs = x0.long().unsqueeze(-1) + torch.tensor([0, 1, 0, 1], device=xy.device)  # (*S, 4): the four corners
    ys = y0.long().unsqueeze(-1) + torch.tensor([0, 0, 1, 1], device=xy.device)
    table, index, inside = _rows_clamped(hwc, xs, ys)  # (R, C), (*S, 4), (*S, 4)
    # the corner weights, zero for a corner outside the map
    weights = torch.stack((1 - fx, fx, 1 - fx, fx), dim=-1) * torch.stack((1 - fy, 1 - fy, fy, fy), dim=-1) * inside  # (*S, 4)
    out = F.embedding_bag(index.reshape(-1, 4), table, per_sample_weights=weights.reshape(-1, 4).to(table.dtype), mode="sum")  # (prod(S), C)
    return out.reshape(*xy.shape[:-1], table.shape[1])


# ----------------------------------------------------------------------------- keypoint detection (DKD)


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Non-maximum suppression as in SuperPoint/ALIKE: keep local maxima of a (2r+1)^2 window, then
    twice recover maxima among the points not suppressed by a kept one. scores (B, 1, H, W) ->
    the same with every non-kept pixel set to 0."""

    def maxpool(x: torch.Tensor) -> torch.Tensor:
        """The (2r+1)^2 window's maximum (max_pool2d's, padded with -inf), as a row pass then a
        column pass, each the running maximum of 2r + 1 shifted views: the same values as
        ``F.max_pool2d``, about 15 times sooner on a CPU (where it computes the argmax too)."""
        for dim in (-1, -2):
            n = x.shape[dim]
            p = F.pad(x, (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius), value=float("-inf"))
            out = p.narrow(dim, 0, n).clone()
            for k in range(1, 2 * radius + 1):
                torch.maximum(out, p.narrow(dim, k, n), out=out)
            x = out
        return x

    zeros = torch.zeros_like(scores)
    max_mask = scores == maxpool(scores)
    for _ in range(2):
        supp_mask = maxpool(max_mask.float()) > 0
        supp_scores = torch.where(supp_mask, zeros, scores)
        new_max_mask = supp_scores == maxpool(supp_scores)
        max_mask = max_mask | (new_max_mask & ~supp_mask)
    return torch.where(max_mask, scores, zeros)


def _sample_bilinear(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """fmap (C, H, W) read bilinearly at pixel xy (N, 2) (zero outside) -> (N, C)."""
    c, h, w = fmap.shape
    scale = xy.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (xy * scale - 1.0).reshape(1, 1, -1, 2)
    return F.grid_sample(fmap[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, :, 0].t()


def detect_keypoints(
    score_map: torch.Tensor,
    radius: int = 2,
    max_keypoints: int = 2048,
    score_threshold: float = 0.0,
    mask: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD (Sec. III-C) on one score map (H, W): NMS with ``radius``, maxima closer than ``radius``
    to the border dropped, those with an NMS score > ``score_threshold`` (and ``mask`` True at the
    pixel, if given) kept, the ``max_keypoints`` best (all if <= 0), then the soft-argmax
    sum_k softmax(s_k / T) d_k over the (2r+1)^2 window for a sub-pixel offset.

    Returns keypoints (N, 2) pixel xy (pixel centres at integers), best first, and their scores
    (N,) read bilinearly from the score map at the refined positions."""
    h, w = score_map.shape
    nms = simple_nms(score_map[None, None], radius)[0, 0]
    nms[:radius] = 0
    nms[:, :radius] = 0
    nms[h - radius :] = 0
    nms[:, w - radius :] = 0
    if mask is not None:
        nms = torch.where(mask.to(torch.bool), nms, torch.zeros_like(nms))
    flat = nms.reshape(-1)
    idx = torch.nonzero(flat > score_threshold)[:, 0]
    order = torch.argsort(flat[idx], descending=True, stable=True)
    if max_keypoints and max_keypoints > 0:
        order = order[:max_keypoints]
    idx = idx[order]
    xy0 = torch.stack((idx % w, idx // w), dim=1)  # (N, 2) integer xy
    # soft-argmax in the (2r+1)^2 window, zero-padded as upstream's unfold
    ks = 2 * radius + 1
    padded = F.pad(score_map, (radius, radius, radius, radius))
    ar = torch.arange(ks, device=score_map.device)
    win = padded[(xy0[:, 1:2] + ar)[:, :, None], (xy0[:, 0:1] + ar)[:, None, :]].reshape(-1, ks * ks)  # (N, ks*ks)
    d = torch.arange(-radius, radius + 1, device=score_map.device, dtype=score_map.dtype)
    grid = torch.stack(torch.meshgrid(d, d, indexing="ij")[::-1], dim=-1).reshape(ks * ks, 2)  # (ks*ks, 2) = (dx, dy)
    e = torch.exp((win - win.max(dim=1, keepdim=True).values) / temperature)
    residual = (e @ grid) / e.sum(dim=1, keepdim=True)  # (N, 2)
    keypoints = xy0.to(score_map.dtype) + residual
    scores = _sample_bilinear(score_map[None], keypoints)[:, 0]
    return keypoints, scores


# ----------------------------------------------------------------------------- the network


class ALIKED(nn.Module):
    """ALIKED (Zhao et al., IEEE TIM 2023): encoder with deformable blocks 3-4, multi-scale feature
    aggregation, score head, and the SDDH sparse descriptor head (``desc_head``). Module names
    follow the upstream state dict, so its weights load with ``strict=True``."""

    def __init__(self, config: ALIKEDConfig | str = DEFAULT_WEIGHTS_NAME):
        super().__init__()
        cfg = ALIKED_CONFIGS[config] if isinstance(config, str) else config
        self.config = cfg
        self.block1 = ConvBlock(3, cfg.c1)
        self.block2 = ResBlock(cfg.c1, cfg.c2)
        self.block3 = ResBlock(cfg.c2, cfg.c3, deformable=True)
        self.block4 = ResBlock(cfg.c3, cfg.c4, deformable=True)
        q = cfg.dim // 4
        self.conv1 = nn.Conv2d(cfg.c1, q, 1, bias=False)
        self.conv2 = nn.Conv2d(cfg.c2, q, 1, bias=False)
        self.conv3 = nn.Conv2d(cfg.c3, q, 1, bias=False)
        self.conv4 = nn.Conv2d(cfg.c4, q, 1, bias=False)
        self.score_head = nn.Sequential(
            nn.Conv2d(cfg.dim, 8, 1, bias=False), nn.SELU(),
            nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.SELU(),
            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.SELU(),
            nn.Conv2d(4, 1, 3, padding=1, bias=False),
        )  # fmt: skip
        self.desc_head = SDDH(cfg.dim, cfg.K, cfg.M)

    @property
    def descriptor_dim(self) -> int:
        return self.config.dim

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_WEIGHTS_NAME) -> "ALIKED":
        """The network with published weights, in eval mode. ``name_or_path``: a weights name
        (``aliked-n16``, ``aliked-n16rot``, ``aliked-n32``, ``aliked-t16``) looked up by
        :func:`find_weights`, or a .safetensors file, or a folder holding aliked-n16.safetensors.
        Raises FileNotFoundError (one line, saying where it looked) when absent; loads safetensors
        only (the upstream .pth pickles are refused)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        s = os.fspath(name_or_path)
        p = Path(s).expanduser()
        if p.suffix in (".pth", ".pt", ".ckpt", ".bin", ".pkl"):
            raise ValueError(f"ALIKED weights must be a .safetensors file (not a pickle): {p}; convert it first: refine-by-align convert-matcher {p}")
        if s not in ALIKED_CONFIGS and (p.is_dir() or p.is_file() or p.suffix == ".safetensors"):
            name, path = (DEFAULT_WEIGHTS_NAME if p.is_dir() else p.stem), p
        else:  # a weights name (a known one, or NAME.safetensors in the usual folders)
            name, path = s, None
        found = find_weights(name, path)
        if found is None:
            where = ", ".join(str(c) for c in _candidates(name, path))
            raise FileNotFoundError(
                f"ALIKED weights {name}.safetensors not found; looked in: {where} "
                f"(pass a path or set {WEIGHTS_ENV} to a folder holding aliked/{name}.safetensors)"
            )
        try:
            state = load_file(str(found), device="cpu")
        except SafetensorError as e:  # (a file of another kind: one line, as for a missing one)
            raise ValueError(f"ALIKED weights {found}: not a readable .safetensors file ({e})") from None
        model = cls(_config_from_state(state))
        model.load_state_dict(state, strict=True)
        model.weights_path = found
        return model.eval()

    def extract_dense_map(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) RGB in [0, 1] -> feature map (B, dim, H, W) L2-normalised per pixel
        and score map (B, 1, H, W) in (0, 1). The image is padded (replicate) to a multiple of 32
        on both sides as upstream does, and the padding is cut off the outputs.

        Two exact rearrangements of upstream's computation, for speed on a CPU: the score head's
        first layer (a 1x1 convolution, linear) is applied to each aggregated part before it is
        upsampled (bilinear upsampling is linear too, so the result is the same), and the feature
        map is built in a (B, H, W, dim) layout (normalised along contiguous memory) and returned
        as a (B, dim, H, W) view of it."""
        ups, score_map, (t, l) = self._upsampled_parts(image)
        h, w = image.shape[-2:]
        window = (slice(None), slice(None), slice(t, t + h), slice(l, l + w))
        feats = torch.cat([u[window].permute(0, 2, 3, 1) for u in ups], dim=-1)  # (B, H, W, dim)
        norm = torch.linalg.vector_norm(feats, dim=-1, keepdim=True).clamp_min(1e-12)
        feats = feats / norm if torch.is_grad_enabled() and feats.requires_grad else feats.div_(norm)  # L2 per pixel (in place at inference)
        return feats.permute(0, 3, 1, 2), score_map[window]  # (B, dim, H, W) view

    def extract_sparse_map(self, image: torch.Tensor) -> tuple[SparseFeatureMap, torch.Tensor]:
        """:meth:`extract_dense_map` for one image (B = 1) with the feature map left unassembled: (a
        :class:`SparseFeatureMap`, concatenated and normalised at the pixels SDDH reads, and the
        score map (1, 1, H, W)), the same values as the dense path's."""
        if image.shape[0] != 1:
            raise ValueError(f"extract_sparse_map takes one image (B = 1), got {image.shape[0]}")
        ups, score_map, (t, l) = self._upsampled_parts(image)
        h, w = image.shape[-2:]
        rows = [u[0].permute(1, 2, 0).contiguous() for u in ups]  # (H', W', q): free, the parts are channels-last
        return SparseFeatureMap(rows, self.config.dim // 4, (h, w), (t, l)), score_map[:, :, t : t + h, l : l + w]

    def _upsampled_parts(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
        """(each part upsampled to the padded picture ((B, dim / 4, H', W') channels-last; the first
        part is already at full resolution); the score map over the padded picture (B, 1, H', W');
        the padding (top, left)).

        The score head's first layer (a 1x1 convolution, linear) is applied to each part before
        the upsampling, and its four shares (B, 8, H', W') are summed after it. Each share and each
        part is upsampled on its own, so the shares are contiguous when summed: the same values
        as upsampling a part and its share as one tensor (the upsampling computes each channel
        alone), 6 ms sooner at 384 x 320 px on 2 CPU cores than summing strided views of them."""
        parts, pad, (hp, wp) = self._parts(image)
        q = self.config.dim // 4
        first = self.score_head[0].weight  # (8, dim, 1, 1), no bias
        ups, z = [], None
        for i, p in enumerate(parts):
            s = F.conv2d(p, first[:, i * q : (i + 1) * q])  # (B, 8, H / s, W / s)
            p, s = _upsample(p, hp, wp), _upsample(s, hp, wp)  # (the first part is already full size: returned as given)
            ups.append(p)
            z = s if z is None else z.add_(s)  # ((s0 + s1) + s2) + s3, summed into the first share (a fresh tensor)
        return ups, torch.sigmoid(self.score_head[1:](z)), pad

    def _parts(self, image: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int], tuple[int, int]]:
        """The four blocks' outputs through their 1x1 convolutions and SELU, before upsampling:
        (parts, each (B, dim / 4, H / s, W / s) channels-last in memory; the padding (top, left);
        the padded size (H', W')). The image is padded (replicate) to a multiple of 32 on both
        sides, as upstream does."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # left, right, top, bottom
        x = F.pad(image, pad, mode="replicate") if ph or pw else image
        # channels-last through the blocks: oneDNN's convolutions with few channels and the pooling
        # run faster on it (a pass at 384 x 320 px on one CPU thread 104 -> 90 ms, values within
        # float32 rounding of the channels-first ones)
        x = x.contiguous(memory_format=torch.channels_last)
        x1 = self.block1(x)  # (B, c1, H, W)
        x2 = self.block2(F.avg_pool2d(x1, 2))  # (B, c2, H/2, W/2)
        x3 = self.block3(F.avg_pool2d(x2, 4))  # (B, c3, H/8, W/8)
        x4 = self.block4(F.avg_pool2d(x3, 4))  # (B, c4, H/32, W/32)
        convs = (self.conv1, self.conv2, self.conv3, self.conv4)
        # channels-last in memory: upsampling and the (B, H, W, dim) concatenation run on contiguous rows
        parts = [F.selu(conv(xi.contiguous(memory_format=torch.channels_last))) for conv, xi in zip(convs, (x1, x2, x3, x4))]
        return parts, (pad[2], pad[0]), (int(x.shape[-2]), int(x.shape[-1]))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) float RGB in [0, 1] -> (score_map (B, 1, H, W), dense descriptor map
        (B, D, H, W) L2-normalised per pixel).

        ALIKED's descriptors come from SDDH, which is *sparse*: each descriptor mixes M deformable
        samples at offsets predicted for that keypoint, so it has no cheap dense form. The dense map
        returned here is therefore the backbone's aggregated feature map (the concatenation of the
        four upsampled block outputs, L2-normalised per pixel), i.e. the map SDDH samples from,
        not SDDH descriptors. For the trained descriptors use :meth:`describe` at keypoints (or
        :func:`detect_and_describe`)."""
        feature_map, score_map = self.extract_dense_map(image)
        return score_map, feature_map

    def describe(self, feature_map: torch.Tensor | SparseFeatureMap, keypoints: torch.Tensor) -> torch.Tensor:
        """SDDH descriptors: feature_map (D, H, W) from :meth:`forward` (or the
        :class:`SparseFeatureMap` of :meth:`extract_sparse_map`), keypoints (N, 2) pixel xy -> (N,
        D) L2-normalised."""
        return self.desc_head(feature_map, keypoints)[0]


def _upsample(t: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
    """Bilinear to (hp, wp), ``align_corners=True`` as upstream's nn.Upsample (as given when already that size)."""
    return t if t.shape[-2:] == (hp, wp) else F.interpolate(t, size=(hp, wp), mode="bilinear", align_corners=True)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def detect(
    model: ALIKED,
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    max_keypoints: int = 2048,
    score_threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, SparseFeatureMap]:
    """ALIKED's keypoints of one image, not yet described: (keypoints (N, 2) pixel xy, best score
    first, as :func:`detect_and_describe` returns them; their scores (N,); the feature map (D, H, W)
    that :meth:`ALIKED.describe` samples, as a :class:`SparseFeatureMap`: computed at the pixels
    read). A caller that may need only the best few descriptors
    describes those first (SDDH's cost grows with the keypoints)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise ValueError(f"mask must be (H, W) = {(h, w)}, got {mask.shape}")
        mask = mask.astype(bool)
    dev = _model_device(model)
    image = torch.from_numpy(np.array(rgb, copy=True)).to(dev).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    feature_map, score_map = model.extract_sparse_map(image)  # the map is computed where SDDH reads it
    mask_t = torch.from_numpy(mask).to(dev) if mask is not None else None
    kpts, scores = detect_keypoints(score_map[0, 0], 2, max_keypoints, score_threshold, mask_t)
    if mask_t is not None and len(kpts):
        r = kpts.round().long()
        keep = mask_t[r[:, 1].clamp(0, h - 1), r[:, 0].clamp(0, w - 1)]
        kpts, scores = kpts[keep], scores[keep]
    return kpts, scores, feature_map


@torch.no_grad()
def detect_and_describe(
    model: ALIKED,
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    max_keypoints: int = 2048,
    score_threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ALIKED keypoints and SDDH descriptors of one image.

    rgb (H, W, 3) uint8; mask (H, W) bool: keep only keypoints where mask is True (tested at the
    NMS pixel and again at the rounded sub-pixel position). ``max_keypoints`` <= 0: no limit.
    Returns keypoints (N, 2) float32 pixel xy (x right, y down, pixel centres at integers), best
    score first; descriptors (N, D) float32 L2-normalised, from SDDH's deformable sampling of the
    feature map at the sub-pixel keypoints; scores (N,) float32, the score map read at the
    keypoints. The image is padded to a multiple of 32 as upstream does, and the padding removed."""
    kpts, scores, feature_map = detect(model, rgb, mask, max_keypoints, score_threshold)
    desc = model.describe(feature_map, kpts)
    return (
        kpts.float().cpu().numpy().astype(np.float32),
        desc.float().cpu().numpy().astype(np.float32),
        scores.float().cpu().numpy().astype(np.float32),
    )


def mutual_nn_matches(
    desc_a: np.ndarray, desc_b: np.ndarray, min_similarity: float = 0.0, ratio: float | None = None
) -> np.ndarray:
    """(M, 2) int64 indices (i into a, j into b) of mutual nearest neighbours by cosine similarity
    (descriptors are L2-normalised here), with similarity >= ``min_similarity``. With ``ratio``,
    also Lowe's test on Euclidean distances of the unit vectors, both ways:
    d(a_i, b_j) < ratio * d(a_i, second-nearest in b) and likewise for b_j in a."""
    a = np.asarray(desc_a, dtype=np.float32)
    b = np.asarray(desc_b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or (a.size and b.size and a.shape[1] != b.shape[1]):
        raise ValueError(f"descriptors must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), np.int64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sim = a @ b.T  # (Na, Nb)
    nn_ab = sim.argmax(axis=1)  # (Na,)
    # each column's first row at its maximum, as sim.argmax(axis=0) gives it (NumPy's argmax along
    # the first axis reads the matrix across its rows' memory: 5.5 -> 1.7 ms at 1,024 x 1,000)
    col_max = sim.max(axis=0)  # (Nb,)
    nn_ba = (sim == col_max).argmax(axis=0) if np.isfinite(col_max).all() else sim.argmax(axis=0)  # (Nb,)
    i = np.arange(len(a))
    keep = nn_ba[nn_ab] == i
    keep &= sim[i, nn_ab] >= min_similarity
    if ratio is not None:

        def passes(s: np.ndarray) -> np.ndarray:  # s (N, K): rows' best vs second best
            if s.shape[1] < 2:
                return np.ones(len(s), bool)
            top2 = -np.partition(-s, 1, axis=1)[:, :2]
            d = np.sqrt(np.clip(2.0 - 2.0 * top2, 0.0, None))
            return d[:, 0] < ratio * d[:, 1]

        keep &= passes(sim)
        keep &= passes(sim.T)[nn_ab]
    return np.stack((i[keep], nn_ab[keep]), axis=1).astype(np.int64)


def load_aliked(weights: str | os.PathLike | None = None) -> tuple[ALIKED | None, str]:
    """(the ALIKED matcher on the CPU in eval mode, "") or (None, the one-line reason it cannot be
    had: no weights where it looked, not a safetensors file, another model's weights, a pickle).
    ``weights``: as :meth:`ALIKED.from_pretrained` takes it (None: ``aliked-n16`` looked up). The
    alignment's and the detection's loader: both then run on SIFT alone and say why."""
    try:
        return ALIKED.from_pretrained(weights if weights is not None else DEFAULT_WEIGHTS_NAME).to("cpu").eval(), ""
    except (FileNotFoundError, OSError, ValueError) as e:
        return None, (str(e).splitlines()[0] if str(e) else type(e).__name__)
