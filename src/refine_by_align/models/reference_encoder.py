"""The reference encoder phi (Sec. 3.1-3.2): DINOv2 patch tokens -> MLP -> cross-attention context.

Input contract shared by every feature extractor in the project: an image tensor (B, 3, H, W) in
[0, 1] of any size; resizing to the encoder's input side and the mean/std normalisation happen
inside.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from ..config import ModelConfig

__all__ = ["ReferenceEncoder", "dinov2_config"]


def dinov2_config(cfg: ModelConfig) -> Dinov2Config:
    e = cfg.encoder
    return Dinov2Config(
        image_size=cfg.encoder_image_size,
        patch_size=e.patch_size,
        hidden_size=e.hidden_size,
        num_hidden_layers=e.num_hidden_layers,
        num_attention_heads=e.num_attention_heads,
        mlp_ratio=e.mlp_ratio,
    )


class ReferenceEncoder(nn.Module):
    """ViT patch tokens of the reference, projected to the U-Net's cross-attention width.

    Returns (B, grid*grid, cross_attention_dim). The class token is dropped so token k is the patch
    at row k // grid, column k % grid of the reference (Eq. 3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.grid_size = cfg.grid_size
        self.image_size = cfg.encoder_image_size
        self.vit = Dinov2Model(dinov2_config(cfg))
        # DINOv2's mask token only serves masked-image pre-training; it never reaches our tokens
        self.vit.embeddings.mask_token.requires_grad_(False)
        d, c = cfg.encoder.hidden_size, cfg.unet.cross_attention_dim
        self.projector = nn.Sequential(nn.Linear(d, cfg.projector_hidden), nn.GELU(), nn.Linear(cfg.projector_hidden, c))
        # Unconditional context for classifier-free guidance (the "dropped" image embedding).
        self.null_tokens = nn.Parameter(torch.zeros(1, cfg.num_tokens, c))
        self.image_mean, self.image_std = tuple(cfg.encoder.image_mean), tuple(cfg.encoder.image_std)
        self.init_buffers()

    def init_buffers(self) -> None:
        """The normalisation constants: buffers that are not saved with the weights, so a model
        built on the meta device and then loaded (RefineByAlignModel.load) gets them here."""
        self.register_buffer("mean", torch.tensor(self.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.image_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised (B, 3, S, S) at the encoder's input side."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"reference images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> raw ViT patch tokens (B, grid*grid, hidden), class token dropped."""
        out = self.vit(pixel_values=self.preprocess(images)).last_hidden_state  # (B, 1 + N, d)
        tokens = out[:, 1:, :]
        if tokens.shape[1] != self.grid_size**2:
            raise ValueError(f"encoder produced {tokens.shape[1]} patch tokens, expected {self.grid_size**2}")
        return tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.patch_tokens(images))  # (B, T, C)

    def unconditional(self, batch_size: int) -> torch.Tensor:
        return self.null_tokens.expand(batch_size, -1, -1)  # (B, T, C)
