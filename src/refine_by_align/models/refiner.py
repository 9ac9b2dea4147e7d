"""The whole Refine-by-Align network: reference encoder + denoising U-Net (+ optional autoencoder).

One set of weights serves both training modes and both inference stages (Sec. 3.4-3.5).
Saved as one folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, AutoencoderTiny, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..config import ModelConfig
from ..fill import CLASSICAL_FILLS, fill_hole
from .attention import cross_attention_layers
from .denoiser import build_unet, load_pretrained_unet
from .pretrained import pretrained_part
from .reference_encoder import ReferenceEncoder

__all__ = ["RefineByAlignModel", "PICKLE_SUFFIXES", "check_no_pickles"]

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_no_pickles(folder: Path) -> None:
    """Refuse model folders that carry pickled weights: only safetensors are ever loaded."""
    bad = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise ValueError(
            f"model folder '{folder}' contains pickle files ({', '.join(bad)}); refine-by-align loads "
            "safetensors only. Convert the weights to .safetensors or remove the pickles."
        )


def _build_vae(cfg: ModelConfig) -> nn.Module | None:
    if cfg.latent == "pixel":
        return None
    if cfg.latent == "vae-kl":
        # SD-1.5's AutoencoderKL architecture (4 latent channels, downsampling 8).
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=cfg.resolution,
            scaling_factor=cfg.vae_scaling_factor,
        )
    if cfg.latent == "vae-tiny":
        return AutoencoderTiny(scaling_factor=1.0)
    raise ValueError(f"unknown latent space '{cfg.latent}' (pixel, vae-kl or vae-tiny)")


# transformers renamed Dinov2's attention weights (attention.attention.query/key/value and
# attention.output.dense became attention.q_proj/k_proj/v_proj/o_proj); a saved model loads
# under either layout.
_VIT_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def _match_vit_names(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Rename encoder weights saved under the other transformers layout to the names ``wanted``."""
    out = {}
    for key, value in state.items():
        if key not in wanted and ".vit." in key:
            for a, b in _VIT_RENAMES:
                for src, dst in ((a, b), (b, a)):
                    if src in key and key.replace(src, dst) in wanted:
                        key = key.replace(src, dst)
                        break
        out[key] = value
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a file that is not one (a renamed pickle, truncated, empty) is one
    ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError, ValueError ...)
        if isinstance(e, MemoryError):
            raise
        size = path.stat().st_size if path.exists() else 0
        raise ValueError(
            f"weights file '{path}' ({size} bytes) is not a readable safetensors file ({_one_line(e)[:200]}): "
            "truncated, empty, or another format renamed"
        ) from None


def _index_files(folder: Path, index: Path) -> list[Path]:
    """The weight files a sharded model's index names: plain .safetensors files inside ``folder`` (a
    name that leads outside it, through ``..``, an absolute path or a symbolic link, is refused)."""
    try:
        names = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"model index '{index}' is not a valid index file ({_one_line(e)[:200]})") from None
    root = folder.resolve()
    files = []
    for name in sorted(names, key=str):
        if not isinstance(name, str) or not name.endswith(".safetensors"):
            raise ValueError(f"model index '{index}' names '{name}': only .safetensors files are loaded")
        path = (folder / name).resolve()
        if path.parent != root:
            raise ValueError(f"model index '{index}' names '{name}', which is outside the model folder: refused")
        if not path.is_file():
            raise ValueError(f"model index '{index}' names '{name}', which is not in the model folder")
        files.append(path)
    return files


class RefineByAlignModel(ModelMixin, ConfigMixin):
    """Encoder phi, projector MLP, null tokens for guidance, U-Net R_theta and optional autoencoder.

    Build a fresh one with :meth:`from_model_config`; load a trained one with :meth:`load`."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, spec: dict):
        super().__init__()
        self.cfg = ModelConfig.from_dict(spec)
        self.reference_encoder = ReferenceEncoder(self.cfg)
        self.unet: UNet2DConditionModel = build_unet(self.cfg)
        self.vae = _build_vae(self.cfg)
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self.cross_attention_layers = cross_attention_layers(self.unet)
        if not 0 <= self.cfg.alignment_layer < len(self.cross_attention_layers):
            raise ValueError(
                f"alignment_layer {self.cfg.alignment_layer} out of range: this U-Net has "
                f"{len(self.cross_attention_layers)} cross-attention layers"
            )

    # ----------------------------------------------------------------- construction / loading
    @classmethod
    def from_model_config(cls, cfg: ModelConfig, load_pretrained: bool = True) -> "RefineByAlignModel":
        """A new model; with ``load_pretrained`` the encoder, U-Net and autoencoder weights named in
        the config (a local folder or hub id) are loaded, and the encoder frozen if asked."""
        model = cls(spec=cfg.to_dict())
        if load_pretrained and cfg.encoder.pretrained:
            from transformers import Dinov2Model

            vit = pretrained_part(Dinov2Model, cfg.encoder.pretrained, "reference encoder")
            if vit.config.hidden_size != cfg.encoder.hidden_size or vit.config.patch_size != cfg.encoder.patch_size:
                raise ValueError(
                    f"pretrained encoder '{cfg.encoder.pretrained}' has hidden {vit.config.hidden_size}, patch "
                    f"{vit.config.patch_size}; the config asks for {cfg.encoder.hidden_size}, {cfg.encoder.patch_size}"
                )
            model.reference_encoder.vit = vit
        if load_pretrained and cfg.unet_pretrained:  # the same architecture: the same layer names
            model.unet = load_pretrained_unet(cfg)
        if load_pretrained and cfg.vae_pretrained and model.vae is not None:
            vae_cls = AutoencoderKL if cfg.latent == "vae-kl" else AutoencoderTiny
            model.vae = pretrained_part(vae_cls, cfg.vae_pretrained, "autoencoder", cfg.vae_subfolder)
            model.vae.requires_grad_(False)
        if cfg.encoder.freeze:
            model.reference_encoder.vit.requires_grad_(False)
        return model

    @classmethod
    def load(cls, path: str | Path) -> "RefineByAlignModel":
        """Load a saved model folder (config.json + safetensors). Pickled weights are refused."""
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"model folder '{folder}' does not exist")
        if not (folder / "config.json").exists():
            raise ValueError(f"model folder '{folder}' has no config.json")
        check_no_pickles(folder)
        if not any(folder.glob("*.safetensors")):
            raise ValueError(f"model folder '{folder}' has no .safetensors weights")
        try:
            with torch.device("meta"):  # no random init of what the file replaces (for paper, most of a load's time)
                model = cls.from_config(cls.load_config(folder))
        except (TypeError, KeyError, RuntimeError, AttributeError) as e:  # (ValueErrors name the field already)
            raise ValueError(f"model folder '{folder}': config.json does not describe a model ({_one_line(e)})") from None
        main = folder / "diffusion_pytorch_model.safetensors"
        index = folder / "diffusion_pytorch_model.safetensors.index.json"
        if index.exists():  # sharded: the files the index names, nothing else
            files = _index_files(folder, index)
        elif main.exists():
            files = [main]
        else:
            files = sorted(folder.glob("*.safetensors"))
            if len(files) > 1:
                raise ValueError(
                    f"model folder '{folder}' holds {len(files)} .safetensors files and no diffusion_pytorch_model.safetensors "
                    f"or index: which one is the model is ambiguous"
                )
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(_read_safetensors(f))
        return model.take_weights(state, f"model folder '{folder}'")

    def take_weights(self, state: dict[str, torch.Tensor], where: str, config_name: str = "config.json") -> "RefineByAlignModel":
        """This model (built on the meta device from its config) with ``state``'s tensors as its
        weights, in eval mode; a ValueError naming ``where`` (and its ``config_name``) for weights
        missing, unexpected, of the wrong shape for the config, or holding NaN / infinite values.
        :meth:`load`'s, and a training checkpoint's (``loading``)."""
        built = self.state_dict()  # names, shapes and dtypes of the config's model (meta tensors)
        wanted = set(built)
        state = _match_vit_names(state, wanted)
        missing = sorted(wanted - set(state))
        unexpected = sorted(set(state) - wanted)
        if missing or unexpected:  # never run with silently re-initialised weights
            raise ValueError(
                f"{where} does not fit this code: {len(missing)} missing weights {missing[:3]}, "
                f"{len(unexpected)} unexpected {unexpected[:3]}"
            )
        wrong = [k for k in sorted(state) if tuple(state[k].shape) != tuple(built[k].shape)]
        if wrong:  # (load_state_dict would say so in one line per tensor, or not at all with assign=True)
            k = wrong[0]
            raise ValueError(
                f"{where}: {len(wrong)} weights have the wrong shape for its {config_name}, e.g. "
                f"'{k}' is {list(state[k].shape)} where the config builds {list(built[k].shape)}"
            )
        broken = [k for k in sorted(state) if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
        if broken:  # such a model can only produce NaN (a black result): refuse it here, not after a run
            raise ValueError(
                f"{where}: {len(broken)} weight tensors hold NaN or infinite values, e.g. '{broken[0]}' "
                "(the weights are damaged)"
            )
        # copies in the dtypes the config builds: safetensors maps the file, and parameters that
        # shared its pages would change (or fault) if the file were rewritten while in use (or, a
        # checkpoint, deleted by a running training)
        state = {k: v.to(built[k].dtype, copy=True) for k, v in state.items()}
        self.load_state_dict(state, assign=True)  # the loaded tensors become the parameters
        self.reference_encoder.init_buffers()
        self.eval()
        return self

    # ----------------------------------------------------------------- pieces used by pipelines
    @property
    def alignment_layer_name(self) -> str:
        return self.cross_attention_layers[self.cfg.alignment_layer]

    def encode_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> context tokens (B, T, C)."""
        return self.reference_encoder(reference)

    def to_latent(self, images: torch.Tensor, encode=None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the U-Net's sample space: [-1, 1] pixels or scaled VAE latents.
        ``encode``: a compiled stand-in for ``self.vae.encode`` (pipelines' enable_compile), or None."""
        x = images * 2.0 - 1.0
        if self.vae is None:
            return x
        out = (self.vae.encode if encode is None else encode)(x)
        if isinstance(self.vae, AutoencoderKL):
            return out.latent_dist.mode() * self.vae.config.scaling_factor
        return out.latents * self.vae.config.scaling_factor

    def from_latent(self, latents: torch.Tensor, decode=None) -> torch.Tensor:
        """Inverse of :meth:`to_latent`, clamped to [0, 1]. ``decode``: a compiled stand-in for
        ``self.vae.decode``, or None."""
        if self.vae is None:
            x = latents
        else:
            x = (self.vae.decode if decode is None else decode)(latents / self.vae.config.scaling_factor).sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def inpainting_inputs(
        self,
        images: torch.Tensor,
        mask: torch.Tensor,
        with_sample: bool = True,
        encode=None,
        warp: torch.Tensor | None = None,
        trust: torch.Tensor | None = None,
        prefill: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything the U-Net needs about one crop, with one autoencoder pass:
        (z_0 of ``images`` or None, the hole-filled image (B, 3, H, W) in [0, 1] (the hole filled as
        ``cfg.hole_fill`` says, fill.py), its sample-space masked input (B, C, h, w), the
        sample-space mask (B, 1, h, w)). ``with_sample=False``
        skips z_0 (the refinement stage alone does not need it); ``encode`` as in :meth:`to_latent`.

        ``hole_fill="warp"``: ``warp`` (B, 3, H, W) in [0, 1] is the warped reference and ``trust``
        (B, 1, H, W) where it fills the hole (None: no warp, Telea everywhere). With
        ``cfg.warp_channel`` the masked input carries the trust map (at the sample resolution,
        zeros without a warp) as one more channel: (B, C + 1, h, w); :meth:`denoise` passes it to
        the U-Net as its last input channel.

        ``prefill`` (B, 3, H, W): the hole-filled image computed elsewhere (the training data's
        workers, ``PairConfig.prefill``), used as given instead of filling here."""
        if prefill is not None:
            if prefill.shape != images.shape:
                raise ValueError(f"prefill {tuple(prefill.shape)} does not match images {tuple(images.shape)}")
            if self.cfg.hole_fill not in CLASSICAL_FILLS:
                raise ValueError(f"a given prefill needs a classical hole fill ({', '.join(CLASSICAL_FILLS)}), this model's is '{self.cfg.hole_fill}'")
            prefill = prefill.to(images.dtype)
        elif self.cfg.hole_fill == "warp":
            prefill = fill_hole(images, mask, "warp", warp, trust)
        else:
            prefill = fill_hole(images, mask, self.cfg.hole_fill)
        if with_sample:
            sample, masked = self.to_latent(torch.cat([images, prefill]), encode).chunk(2)  # (B, C, h, w) each
        else:
            sample, masked = None, self.to_latent(prefill, encode)
        if self.cfg.warp_channel:
            t = torch.zeros_like(mask) if trust is None or self.cfg.hole_fill != "warp" else ((trust > 0.5) & (mask > 0.5)).to(mask.dtype)
            f = self.cfg.latent_downsample
            t = t if f == 1 else torch.nn.functional.avg_pool2d(t, f)
            masked = torch.cat([masked, t.to(masked.dtype)], dim=1)
        return sample, prefill, masked, self.latent_mask(mask)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) pixel mask -> (B, 1, h, w) at the sample resolution (max-pooled: a latent
        cell is 'hole' if any of its pixels is)."""
        f = self.cfg.latent_downsample
        return mask if f == 1 else torch.nn.functional.max_pool2d(mask, f)

    def forward(
        self,
        noisy: torch.Tensor,  # (B, C, h, w) z_t
        timesteps: torch.Tensor,  # (B,) or scalar
        masked: torch.Tensor,  # (B, C, h, w) the masked image in sample space
        mask: torch.Tensor,  # (B, 1, h, w) 1 = hole
        context: torch.Tensor | None = None,  # (B, T, C_ctx) reference tokens, or
        reference: torch.Tensor | None = None,  # (B, 3, H, W) reference images in [0, 1] to encode
        drop: torch.Tensor | None = None,  # (B,) bool: use the null tokens instead (guidance training)
    ) -> torch.Tensor:
        """Predicted noise (B, C, h, w) for the inpainting input [z_t, masked image, mask]
        (``masked`` has C + 1 channels with ``cfg.warp_channel``: :meth:`inpainting_inputs`).

        Pass ``context`` (pre-encoded, as pipelines do) or ``reference`` (encoded here, so that in
        distributed training the encoder runs inside the wrapped forward)."""
        extra = int(bool(self.cfg.warp_channel))
        if not (
            noisy.shape[:1] + noisy.shape[2:] == masked.shape[:1] + masked.shape[2:]
            and masked.shape[1] == noisy.shape[1] + extra
            and noisy.shape[-2:] == mask.shape[-2:]
            and mask.shape[1] == 1
        ):
            raise ValueError(
                f"shape mismatch: noisy {tuple(noisy.shape)}, masked {tuple(masked.shape)}, mask {tuple(mask.shape)}"
            )
        if (context is None) == (reference is None):
            raise ValueError("pass exactly one of context= or reference=")
        if context is None:
            context = self.encode_reference(reference)
        if drop is not None:
            null = self.reference_encoder.unconditional(context.shape[0]).to(context.dtype)
            context = torch.where(drop.view(-1, 1, 1), null, context)
        return self.denoise(noisy, timesteps, masked, mask, context)

    def denoise(
        self,
        noisy: torch.Tensor,  # (B, C, h, w) z_t
        timesteps: torch.Tensor,  # (B,) or scalar
        masked: torch.Tensor,  # (B, C, h, w), or (B, C + 1, h, w) with the trust map (cfg.warp_channel)
        mask: torch.Tensor,  # (B, 1, h, w)
        context: torch.Tensor,  # (B, T, C_ctx)
        unet=None,  # a compiled stand-in for self.unet (pipelines' enable_compile), or None
    ) -> torch.Tensor:
        """One U-Net prediction on [z_t, masked image, mask (, warp trust)], in the model's dtype;
        (B, C, h, w). The trust map is the U-Net's last input channel, so that a model widened
        from one without it (zero weights there) computes what that model computed."""
        dtype = self.unet.conv_in.weight.dtype  # (ModelMixin.dtype walks every parameter)
        c = noisy.shape[1]
        x = torch.cat([noisy, masked[:, :c], mask.to(noisy.dtype), masked[:, c:].to(noisy.dtype)], dim=1).to(dtype)
        net = self.unet if unet is None else unet  # (not `unet or ...`: a compiled module has no truth value)
        return net(x, timesteps, encoder_hidden_states=context.to(dtype)).sample
