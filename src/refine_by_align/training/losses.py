"""Training losses: Eq. 2 (noise prediction, weighted inside the hole) and the attention
supervision that trains the alignment Algorithm 1 reads (this project's design; not in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_noise_loss", "diffusion_target", "token_targets", "attention_supervision_loss", "on_object"]


def diffusion_target(noise_scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net regresses, by the schedule's ``prediction_type``: the noise eps (Eq. 2),
    the velocity v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022), or x0 itself.
    x0/noise (B, C, h, w); t (B,)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unknown prediction_type '{kind}' (epsilon | v_prediction | sample)")


def masked_noise_loss(pred: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, hole_weight: float) -> torch.Tensor:
    """Eq. 2, ||eps - R(z_t, t, phi(I_r))||^2, with pixels inside the hole weighted ``hole_weight``
    times (they are what the reference must teach). pred/noise (B, C, h, w); mask (B, 1, h, w).
    ``noise`` is the regression target: eps for Eq. 2, or v / x0 (see :func:`diffusion_target`)."""
    w = 1.0 + (hole_weight - 1.0) * mask  # (B, 1, h, w)
    err = (pred.float() - noise.float()).pow(2).mean(dim=1, keepdim=True)  # (B, 1, h, w)
    return (err * w).sum() / w.sum()


def token_targets(ref_coords: torch.Tensor, side: int, grid: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Target attention distributions over the reference tokens for a layer of resolution side^2.

    ref_coords: (B, 2, S, S) each crop pixel's (x, y) on the reference in [0, 1], NaN if unknown.
    Returns (targets (B, side*side, grid*grid) summing to 1 per valid query, valid (B, side*side) bool):
    a Gaussian of ``sigma`` tokens around the token the query pixel's centre maps to."""
    b = ref_coords.shape[0]
    s = ref_coords.shape[-1]
    if s % side == 0:
        # sample the centre pixel of each side x side cell (coordinates do not average across NaN)
        step = s // side
        c = ref_coords[:, :, step // 2 :: step, step // 2 :: step]  # (B, 2, side, side)
    else:
        c = F.interpolate(ref_coords, size=(side, side), mode="nearest")
    c = c.reshape(b, 2, side * side).transpose(1, 2)  # (B, Q, 2)
    valid = torch.isfinite(c).all(dim=-1) & (c >= 0).all(dim=-1) & (c <= 1).all(dim=-1)  # (B, Q)
    pos = torch.nan_to_num(c, nan=0.0) * grid - 0.5  # token-centre units, (B, Q, 2)
    axis = torch.arange(grid, dtype=pos.dtype, device=pos.device)
    gx = torch.exp(-((axis.view(1, 1, grid) - pos[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, Q, grid)
    gy = torch.exp(-((axis.view(1, 1, grid) - pos[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, Q, grid)
    target = (gy.unsqueeze(-1) * gx.unsqueeze(-2)).reshape(b, side * side, grid * grid)  # (B, Q, T)
    target = target / target.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return target, valid


def on_object(ref_coords: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, 2, S, S) coordinates, (B, 3, R, R) references (black outside the object) -> (B, 2, S, S)
    coordinates with NaN where the point lands on the reference's background: every background
    token looks alike, so matching there cannot be learned from content."""
    obj = (reference.amax(dim=1, keepdim=True) > 1.0 / 255.0).float()  # (B, 1, R, R)
    grid = torch.nan_to_num(ref_coords, nan=-2.0).permute(0, 2, 3, 1) * 2.0 - 1.0  # (B, S, S, 2)
    inside = F.grid_sample(obj, grid, mode="nearest", padding_mode="zeros", align_corners=False) > 0.5  # (B, 1, S, S)
    return torch.where(inside, ref_coords, torch.full_like(ref_coords, float("nan")))


def attention_supervision_loss(
    probs: torch.Tensor,  # (B, Q, T) heads-averaged attention probabilities of one layer
    ref_coords: torch.Tensor,  # (B, 2, S, S), NaN where unknown (see on_object)
    mask: torch.Tensor,  # (B, 1, S, S) hole mask in crop pixels
    use: torch.Tensor,  # (B,) bool: samples with a known correspondence and a real (not dropped) reference
    grid: int,
    sigma: float,
    hole_weight: float = 3.0,
) -> torch.Tensor:
    """Cross-entropy between each query's attention and the Gaussian around its true token, over
    every query pixel with a known correspondence; hole pixels (those Algorithm 1 sums) count
    ``hole_weight`` times. Returns 0 (with a graph) when nothing is supervised."""
    b, q, t = probs.shape
    side = int(round(q**0.5))
    target, valid = token_targets(ref_coords, side, grid, sigma)
    hole = F.interpolate(mask.float(), size=(side, side), mode="area").reshape(b, q)  # (B, Q)
    weight = valid.float() * (1.0 + (hole_weight - 1.0) * hole) * use.float().view(b, 1)
    ce = -(target * torch.log(probs.float().clamp_min(1e-8))).sum(dim=-1)  # (B, Q)
    denom = weight.sum()
    if denom <= 0:
        return probs.sum() * 0.0
    return (ce * weight).sum() / denom
