"""The denoiser R_theta (Sec. 3.1): diffusers' UNet2DConditionModel with inpainting inputs."""

from __future__ import annotations

from diffusers import UNet2DConditionModel

from ..config import ModelConfig

__all__ = ["build_unet"]


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """Inputs: noisy sample (C), masked image (C), mask (1) -> predicted noise (C).

    C = 3 in pixel space, 4 in an autoencoder's latent space."""
    u = cfg.unet
    c = cfg.latent_channels
    return UNet2DConditionModel(
        sample_size=cfg.resolution // cfg.latent_downsample,
        in_channels=2 * c + 1,
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
