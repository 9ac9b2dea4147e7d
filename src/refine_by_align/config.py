"""Model configurations: one dataclass, three named presets (tiny, default, paper).

Everything here is plain data (JSON-serialisable), saved next to every checkpoint and result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["EncoderConfig", "UNetConfig", "ModelConfig", "get_config", "CONFIG_NAMES"]


@dataclass
class EncoderConfig:
    """The reference encoder phi: a transformers Dinov2Model whose patch tokens feed cross-attention."""

    patch_size: int = 2  # ViT patch side in pixels; encoder input side = grid_size * patch_size
    hidden_size: int = 128  # ViT width d^phi
    num_hidden_layers: int = 1  # a shallow encoder gives tokens with content from step 0
    num_attention_heads: int = 4  # ViT heads
    mlp_ratio: int = 4  # ViT MLP width / hidden_size
    pretrained: str | None = None  # hub id or local folder of real DINOv2 weights (full scale)
    freeze: bool = False  # frozen as in the paper when pretrained weights are used
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # DINOv2 (ImageNet) normalisation
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class UNetConfig:
    """Arguments of diffusers' UNet2DConditionModel (inpainting: in = 2 x channels + 1 mask)."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)  # width per resolution level
    layers_per_block: int = 1  # ResNet(+attention) layers per down block (up blocks get +1)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    attention_head_dim: int = 4  # diffusers' legacy name: the number of heads in each attention
    norm_num_groups: int = 8  # GroupNorm groups (must divide every block width)
    cross_attention_dim: int = 128  # width of the projected reference tokens


@dataclass
class ModelConfig:
    """The whole Refine-by-Align model: encoder + projector + U-Net (+ optional autoencoder)."""

    name: str = "default"  # preset name, recorded in every saved folder
    resolution: int = 32  # side of the zoom-in crop the U-Net works on, in pixels
    grid_size: int = 16  # reference tokens per side: 16 x 16 = 256 tokens as in Sec. 3.2
    latent: str = "pixel"  # "pixel" (no autoencoder), "vae-kl" (AutoencoderKL) or "vae-tiny" (AutoencoderTiny)
    vae_pretrained: str | None = None  # hub id or folder of autoencoder weights (latent configs)
    vae_subfolder: str | None = None  # the autoencoder's subfolder in a whole pipeline's repo, e.g. "vae"
    unet_pretrained: str | None = None  # hub id or folder of a diffusers U-Net to start from (denoiser.py)
    unet_subfolder: str | None = None  # its subfolder in a whole pipeline's repo, e.g. "unet"
    vae_scaling_factor: float = 0.18215  # latent scale of SD-1.5's VAE
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    projector_hidden: int = 256  # hidden width of the MLP from ViT tokens to cross_attention_dim
    alignment_layer: int = 6  # cross-attention layer l read by Algorithm 1 (0-based, forward order)
    alignment_timestep: int = 0  # timestep t of the alignment pass (paper: 0 at test time)
    alignment_threshold: float = 0.5  # A.4 threshold on the peak-filtered map, relative to its range
    num_train_timesteps: int = 1000  # diffusion steps of the noise schedule
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule suits small pixel-space models
    beta_start: float = 0.0001  # first and last beta of a "linear" / "scaled_linear" schedule
    beta_end: float = 0.02  # (diffusers' defaults; Stable Diffusion: 0.00085 and 0.012)
    # what the U-Net predicts. Eq. 2 is noise prediction ("epsilon"); small pixel-space models use
    # "v_prediction": with the cosine schedule, x0 = (z_t - sqrt(1-a) eps) / sqrt(a) divides eps's
    # error by sqrt(a) ~ 1e-4 at t = 999 and the first sampling steps turn it into saturated speckle
    prediction_type: str = "v_prediction"
    # the masked image's hole (fill.py): "zero" (SD inpainting, the paper), "telea" (a classical
    # fill the model corrects) or "warp" (the reference warped through the dense field where the
    # warp is trusted, Telea elsewhere; the model corrects that)
    hole_fill: str = "zero"
    # one more U-Net input channel after the masked image: the warp's trust map (1 = the prefill is
    # the warped reference, 0 = Telea). False (the default, and what a saved config.json without the
    # field means) keeps the U-Net's 2C + 1 inputs
    warp_channel: bool = False
    correction_blur: float = 0.0  # telea fill only: Gaussian sigma (crop px) smoothing the model's correction (fill.py)
    correction_shrink: float = 0.0  # telea fill, K > 1 samples: Wiener shrinkage lambda of the correction (fill.py)
    default_steps: int = 20  # sampling steps (DDIM in pixel space, DPM-Solver++ in latent space)
    default_guidance: float = 2.0  # classifier-free guidance scale
    default_samples: int = 1  # samples averaged into the result (K > 1: posterior-mean estimate)
    zoom_grow: float = 2.0  # zoom-in crop side = longer side of the mask box x this
    zoom_min_size: int = 32  # zoom-in crop side is at least this many pixels
    reference_margin: float = 0.05  # margin around the reference object's box (as in training pairs)
    local_dilate: float = 0.25  # the aligned region M* is grown by this x its box side ...
    local_margin: float = 0.15  # ... and cut out with this margin (refinement-mode training pairs)
    paste_dilate: int = 3  # pixels the mask is grown by before pasting back
    paste_feather: int = 3  # width of the feathered seam in pixels

    @property
    def encoder_image_size(self) -> int:
        return self.grid_size * self.encoder.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def latent_channels(self) -> int:
        return 3 if self.latent == "pixel" else 4

    @property
    def latent_downsample(self) -> int:
        return 1 if self.latent == "pixel" else 8

    def noise_schedule(self) -> dict:
        """The training noise schedule and parameterisation, as keyword arguments of any diffusers
        scheduler: the samplers use the schedule the model was trained on."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        enc = EncoderConfig(**_tuples(d.pop("encoder", {})))
        unet = UNetConfig(**_tuples(d.pop("unet", {})))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(encoder=enc, unet=unet, **d)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        resolution=16,
        grid_size=4,
        encoder=EncoderConfig(patch_size=2, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2),
        unet=UNetConfig(
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
            norm_num_groups=4,
            cross_attention_dim=16,
        ),
        projector_hidden=16,
        alignment_layer=2,  # up_blocks.1.attentions.0 at 16x16
        default_steps=4,
        zoom_min_size=16,
    )


def _default() -> ModelConfig:
    # the shipped model (MODEL_CARD.md): 64 px crops (stages 1-3 trained at 32: their recipes say so),
    # 2 DDIM steps, no guidance, the mean of 8 samples; the alignment timestep, the correction blur
    # and its shrinkage chosen on the second case set
    return ModelConfig(
        resolution=64,
        zoom_min_size=64,
        hole_fill="telea",
        alignment_timestep=500,
        correction_blur=1.0,
        correction_shrink=64.0,
        default_steps=2,
        default_guidance=1.0,
        default_samples=8,
    )


def _paper() -> ModelConfig:
    """SD-1.5-size U-Net (16 cross-attention layers) + DINOv2 ViT-B/14 at 224 px = 16 x 16 tokens."""
    return ModelConfig(
        name="paper",
        resolution=512,
        grid_size=16,
        latent="vae-kl",
        encoder=EncoderConfig(
            patch_size=14,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_ratio=4,
            pretrained=None,  # e.g. "facebook/dinov2-base" where the weights can be had
            freeze=True,
        ),
        unet=UNetConfig(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            attention_head_dim=8,
            norm_num_groups=32,
            cross_attention_dim=768,
        ),
        projector_hidden=768,
        alignment_layer=9,  # paper's l = 9: up_blocks.1.attentions.2 (16 x 16 at a 64 x 64 latent)
        beta_schedule="scaled_linear",  # Stable Diffusion's schedule, so that SD weights fit it
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",  # Eq. 2, as SD-1.5 was trained
        default_steps=20,
        default_guidance=3.0,
        zoom_min_size=128,
    )


_PRESETS = {"tiny": _tiny, "default": _default, "paper": _paper}
CONFIG_NAMES = tuple(_PRESETS)


def get_config(name: str) -> ModelConfig:
    """A fresh copy of a named preset."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown config '{name}'; choose one of {', '.join(CONFIG_NAMES)}") from None
