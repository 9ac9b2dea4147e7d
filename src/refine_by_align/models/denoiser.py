"""The denoiser R_theta (Sec. 3.1): diffusers' UNet2DConditionModel with inpainting inputs."""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel

from ..config import ModelConfig
from .pretrained import pretrained_part

__all__ = ["build_unet", "load_pretrained_unet", "unet_in_channels", "widen_conv_in"]

# config entries that do not change the weights or what the network computes
_FREE_KEYS = {"sample_size", "in_channels"}


def unet_in_channels(cfg: ModelConfig) -> int:
    """2C + 1 (noisy sample, masked image, mask), + 1 with ``cfg.warp_channel`` (the warp's trust map)."""
    return 2 * cfg.latent_channels + 1 + int(bool(cfg.warp_channel))


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Give ``unet``'s first convolution ``in_channels`` inputs: the existing ones keep their
    weights and the new ones (appended after them) get zero weights, so that the widened U-Net
    computes exactly what it computed before whatever the new channels hold. In place; returns it."""
    old = unet.conv_in
    if in_channels < old.in_channels:
        raise ValueError(f"cannot narrow conv_in from {old.in_channels} to {in_channels} input channels")
    if in_channels == old.in_channels:
        return unet
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """Inputs: noisy sample (C), masked image (C), mask (1) [, warp trust (1) with
    ``cfg.warp_channel``] -> predicted noise (C).

    C = 3 in pixel space, 4 in an autoencoder's latent space."""
    u = cfg.unet
    c = cfg.latent_channels
    return UNet2DConditionModel(
        sample_size=cfg.resolution // cfg.latent_downsample,
        in_channels=unet_in_channels(cfg),
        out_channels=c,
        down_block_types=tuple(u.down_block_types),
        up_block_types=tuple(u.up_block_types),
        mid_block_type=u.mid_block_type,
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
        cross_attention_dim=u.cross_attention_dim,
    )


def _comparable(config) -> dict:
    """Config entries that define the network; None and False are one value (SD-1.5's config says
    ``"upcast_attention": null`` where diffusers now registers False: both mean no upcast)."""

    def norm(v):
        return tuple(v) if isinstance(v, list) else (False if v is None else v)

    return {k: norm(v) for k, v in dict(config).items() if not k.startswith("_") and k not in _FREE_KEYS}


def load_pretrained_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """The U-Net of ``cfg`` with the weights of a diffusers UNet2DConditionModel saved as
    safetensors (``cfg.unet_pretrained``: a hub id or a local folder, ``cfg.unet_subfolder``: e.g.
    ``"unet"`` in a whole pipeline's folder), as the paper starts from Stable Diffusion (Sec. 3.1).

    An inpainting U-Net (2C + 1 input channels) loads as it is. A text-to-image U-Net (C input
    channels) gets its first convolution widened with zero weights for the masked image and the
    mask, so that it starts out computing exactly what the text-to-image model computes. Every
    other config entry must match ``cfg``'s U-Net (ValueError naming the differences): a model
    saved by this project is rebuilt from ``cfg`` alone."""
    c = cfg.latent_channels
    unet = pretrained_part(UNet2DConditionModel, cfg.unet_pretrained, "U-Net", cfg.unet_subfolder)
    with torch.device("meta"):  # the architecture cfg asks for, without allocating its weights
        want = build_unet(cfg)
    have, need = _comparable(unet.config), _comparable(want.config)
    diff = sorted(k for k in set(have) | set(need) if have.get(k, False) != need.get(k, False))
    if diff:
        listed = "; ".join(f"{k}: checkpoint {have.get(k)!r}, config {need.get(k)!r}" for k in diff)
        raise ValueError(f"the U-Net '{cfg.unet_pretrained}' does not fit the '{cfg.name}' config: {listed}")
    if unet.config.in_channels == c:  # text-to-image: widen conv_in for [z_t, masked image, mask]
        widen_conv_in(unet, 2 * c + 1)
    elif unet.config.in_channels != 2 * c + 1:
        raise ValueError(
            f"the U-Net '{cfg.unet_pretrained}' takes {unet.config.in_channels} input channels: an inpainting U-Net takes "
            f"{2 * c + 1} (noisy latent, masked image, mask) and a text-to-image one {c}"
        )
    widen_conv_in(unet, unet_in_channels(cfg))  # the warp's trust channel, zero-initialised (cfg.warp_channel)
    unet.register_to_config(sample_size=cfg.resolution // cfg.latent_downsample)
    return unet
