"""Model configurations: one dataclass, three named presets (tiny, default, paper).

Everything here is plain data (JSON-serialisable), saved next to every checkpoint and result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["EncoderConfig", "UNetConfig", "ModelConfig", "get_config", "CONFIG_NAMES", "MATCH_SOURCES"]


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
    # the masked image's hole (fill.py): "zero" (SD inpainting, the paper), a classical fill the
    # model corrects ("telea": Telea's fast marching, "harmonic" / "biharmonic": Laplace's / the
    # biharmonic equation, "fsr": frequency-selective reconstruction, "mixed": FSR and biharmonic
    # weighed by their errors on a ring of known pixels, "mixed-local": FSR, biharmonic and harmonic
    # weighed pixel by pixel by their errors on the ring nearby) or "warp"
    # (the reference warped through the dense field where the warp is trusted, Telea elsewhere;
    # the model corrects that)
    hole_fill: str = "zero"
    # the full-resolution fill the model's correction is added to (fill.py: residual_patch) for a
    # classical hole_fill: "same" (hole_fill's), or one of "telea", "harmonic", "biharmonic", "fsr",
    # "mixed", "mixed-local". The shipped model corrects a harmonic prefill and adds that to the
    # mixed-local fill (FSR and biharmonic alone, mixed so, on the slivers trusted warp pixels leave)
    base_fill: str = "same"
    # one more U-Net input channel after the masked image: the warp's trust map (1 = the prefill is
    # the warped reference, 0 = Telea). False (the default, and what a saved config.json without the
    # field means) keeps the U-Net's 2C + 1 inputs
    warp_channel: bool = False
    correction_blur: float = 0.0  # telea / harmonic fill: Gaussian sigma (crop px) smoothing the model's correction (fill.py)
    correction_shrink: float = 0.0  # telea / harmonic fill, K > 1 samples: Wiener shrinkage lambda of the correction (fill.py)
    default_steps: int = 20  # sampling steps (DDIM in pixel space, DPM-Solver++ in latent space)
    default_guidance: float = 2.0  # classifier-free guidance scale
    default_samples: int = 1  # samples averaged into the result (K > 1: posterior-mean estimate; the pipeline draws one where a warp gives almost all of the mask)
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
        cfg = cls(encoder=enc, unet=unet, **d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse values no model can be built or run with (a hand-edited or damaged config.json),
        each as one ValueError naming the field, its allowed range and the value found. The ranges
        are generous (the ``paper`` preset is well inside them) but keep every size the code
        allocates from the config bounded."""
        _check_config(self)


# (field, low, high) of the integer and real fields; a field's value must lie in [low, high]
_INT_RANGES = (
    ("resolution", 8, 2048),
    ("grid_size", 1, 64),
    ("alignment_layer", 0, 1000),
    ("num_train_timesteps", 1, 100_000),
    ("default_steps", 1, 1000),
    ("default_samples", 1, 64),
    ("zoom_min_size", 1, 4096),
    ("paste_dilate", 0, 256),
    ("paste_feather", 0, 256),
    ("projector_hidden", 1, 16384),
    ("encoder.patch_size", 1, 64),
    ("encoder.hidden_size", 1, 8192),
    ("encoder.num_hidden_layers", 1, 96),
    ("encoder.num_attention_heads", 1, 256),
    ("encoder.mlp_ratio", 1, 16),
    ("unet.layers_per_block", 1, 16),
    ("unet.attention_head_dim", 1, 4096),
    ("unet.norm_num_groups", 1, 1024),
    ("unet.cross_attention_dim", 1, 8192),
)
_FLOAT_RANGES = (
    ("vae_scaling_factor", 1e-6, 1e3),
    ("alignment_threshold", 0.0, 1.0),
    ("beta_start", 0.0, 1.0),
    ("beta_end", 0.0, 1.0),
    ("correction_blur", 0.0, 1e3),
    ("correction_shrink", 0.0, 1e9),
    ("default_guidance", 0.0, 50.0),
    ("zoom_grow", 1.0, 100.0),
    ("reference_margin", 0.0, 10.0),
    ("local_dilate", 0.0, 100.0),
    ("local_margin", 0.0, 10.0),
)
#: The hole fills by name (``fill.py`` implements them and exports these same tuples; they are
#: defined here, where the config checks them, because this module imports nothing heavy).
CLASSICAL_FILLS = ("telea", "harmonic", "biharmonic", "fsr", "mixed", "mixed-local")  # the hole fills that need no model and no reference
HOLE_FILLS = ("zero", *CLASSICAL_FILLS, "warp")
#: The artifact detection's methods (pipelines/detect.py; named here for the command line and the
#: ComfyUI node, which read them without importing the detection's dependencies).
DETECT_METHODS = ("learned", "colour")
_CHOICES = (
    ("latent", ("pixel", "vae-kl", "vae-tiny")),
    ("hole_fill", HOLE_FILLS),
    ("base_fill", ("same", *CLASSICAL_FILLS)),
    ("prediction_type", ("epsilon", "v_prediction", "sample")),
    ("beta_schedule", ("linear", "scaled_linear", "squaredcos_cap_v2")),
)
MAX_CHANNELS = 4096  # widest U-Net level (Stable Diffusion's is 1280)
MAX_LEVELS = 8


def _get(cfg: ModelConfig, name: str):
    obj = cfg
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _check_config(cfg: ModelConfig) -> None:
    import math

    def bad(name: str, expected: str, value) -> ValueError:
        return ValueError(f"model config: {name} must be {expected}, got {value!r}")

    for name, lo, hi in _INT_RANGES:
        v = _get(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(name, f"an integer in {lo}..{hi}", v)
    for name, lo, hi in _FLOAT_RANGES:
        v = _get(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise bad(name, f"a finite number in {lo:g}..{hi:g}", v)
    for name, choices in _CHOICES:
        v = _get(cfg, name)
        if v not in choices:
            raise bad(name, f"one of {', '.join(choices)}", v)
    if cfg.beta_schedule != "squaredcos_cap_v2" and not cfg.beta_start < cfg.beta_end:
        raise bad("beta_start", f"below beta_end ({cfg.beta_end:g})", cfg.beta_start)
    if not 0 <= cfg.alignment_timestep < cfg.num_train_timesteps:
        raise bad("alignment_timestep", f"an integer in 0..{cfg.num_train_timesteps - 1}", cfg.alignment_timestep)
    u = cfg.unet
    channels = u.block_out_channels
    if (
        not isinstance(channels, tuple)
        or not 1 <= len(channels) <= MAX_LEVELS
        or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS for c in channels)
    ):
        raise bad("unet.block_out_channels", f"1 to {MAX_LEVELS} integers in 1..{MAX_CHANNELS}", channels)
    if any(c % u.norm_num_groups for c in channels):
        raise bad("unet.block_out_channels", f"multiples of unet.norm_num_groups ({u.norm_num_groups})", channels)
    for name in ("down_block_types", "up_block_types"):
        types = getattr(u, name)
        if not isinstance(types, tuple) or len(types) != len(channels) or not all(isinstance(t, str) for t in types):
            raise bad(f"unet.{name}", f"{len(channels)} block names (one per block_out_channels entry)", types)
    e = cfg.encoder
    if e.hidden_size % e.num_attention_heads:
        raise bad("encoder.hidden_size", f"a multiple of encoder.num_attention_heads ({e.num_attention_heads})", e.hidden_size)
    down = (1 if cfg.latent == "pixel" else 8) * 2 ** (len(channels) - 1)
    if cfg.resolution % down:
        raise bad("resolution", f"a multiple of {down} (the U-Net's and autoencoder's downsampling)", cfg.resolution)
    if cfg.grid_size * e.patch_size > 4096:
        raise bad("grid_size", f"at most {4096 // e.patch_size} with encoder.patch_size {e.patch_size} (encoder input <= 4096 px)", cfg.grid_size)


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
    # one DDIM step (the model's x0-prediction from pure noise), no guidance, the mean of 2 samples
    # (one where a warp gives almost all of the mask; 8 samples of 2 steps until the twelfth
    # session, 4 of 2 steps until the thirty-seventh: the same masked PSNR on the 192 suite cases,
    # a quarter of the U-Net's work; MODEL_CARD.md); the alignment timestep, the
    # correction blur and its shrinkage chosen on the second case set. Trained on Telea-prefilled
    # holes, it runs on harmonic ones: better on every case kind of both validation sets; its
    # correction is added to the mixed (FSR + biharmonic) fill at full resolution: better on all
    # four case sets; since the twenty-ninth session that mix is weighed pixel by pixel with the
    # harmonic fill as a third (mixed-local; MODEL_CARD.md)
    return ModelConfig(
        resolution=64,
        zoom_min_size=64,
        hole_fill="harmonic",
        base_fill="mixed-local",
        alignment_timestep=500,
        correction_blur=1.0,
        correction_shrink=64.0,
        default_steps=1,
        default_guidance=1.0,
        default_samples=2,
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


#: Point-match sources the dense alignment understands (combine with "+", e.g. "sift+aliked"; the
#: alignment's ``matchers``). Here, with no heavy import, so the command line checks a name at once.
MATCH_SOURCES = ("sift", "aliked", "attention")
