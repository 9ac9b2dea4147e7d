"""Recording cross-attention probabilities by layer name (Sec. 3.2, Eq. 4).

A :class:`RecordingAttnProcessor` is installed with ``unet.set_attn_processor`` on the
cross-attention layers to read; every other layer keeps diffusers' fast SDPA processor. Maps are
stored in an :class:`AttentionStore` keyed by the layer's module name, and layers are numbered in
forward order (down blocks, mid block, up blocks) so that the paper's layer index l has a meaning.
``with recording(unet, layers) as store:`` is the one way the aligner, the training loop and
training's evaluation read them; :func:`parse_layer` and :func:`layer_level` read a layer's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

__all__ = [
    "AttentionStore",
    "AllLayersRecorded",
    "RecordingAttnProcessor",
    "cross_attention_layers",
    "layer_level",
    "parse_layer",
    "record_layers",
    "recording",
]


class AllLayersRecorded(Exception):
    """Raised by a recording processor once every layer an :class:`AttentionStore` waits for has
    been recorded: a pass that only reads attention maps (the alignment stage) ends there instead
    of running the rest of the U-Net (for the paper's l = 9, the two finest up blocks)."""


class AttentionStore:
    """Cross-attention probabilities of the last forward pass, by layer name.

    ``maps[name]`` is (B, HW, tokens), averaged over heads. With ``keep_grad`` the maps stay in the
    autograd graph (for attention supervision in training); otherwise they are detached."""

    def __init__(self, keep_grad: bool = False, stop_after: list[str] | tuple[str, ...] = ()):
        self.keep_grad = keep_grad
        self.stop_after = frozenset(stop_after)  # non-empty: raise AllLayersRecorded once all are in
        self.maps: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.maps.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.maps[name]

    def __contains__(self, name: str) -> bool:
        return name in self.maps


class RecordingAttnProcessor(AttnProcessor2_0):
    """SDPA attention that also stores the heads-averaged attention probabilities A = softmax(qk^T).

    The probabilities are computed from the same projections the layer uses, so gradients of a loss
    on them reach to_q / to_k and the reference tokens."""

    def __init__(self, store: AttentionStore, name: str):
        super().__init__()
        self.store = store
        self.name = name

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            self.store.maps[self.name] = self._probs(attn, hidden_states, encoder_hidden_states)
            if self.store.stop_after and self.store.stop_after <= self.store.maps.keys():
                raise AllLayersRecorded()
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    def _probs(self, attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if attn.spatial_norm is not None or hidden_states.ndim == 4:
            raise ValueError("RecordingAttnProcessor expects a transformer-block cross-attention (B, HW, C) input")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        b = hidden_states.shape[0]
        heads = attn.heads
        q = attn.to_q(hidden_states)  # (B, HW, inner)
        k = attn.to_k(context)  # (B, T, inner)
        q = q.view(b, -1, heads, q.shape[-1] // heads).transpose(1, 2)  # (B, heads, HW, d)
        k = k.view(b, -1, heads, k.shape[-1] // heads).transpose(1, 2)  # (B, heads, T, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale  # (B, heads, HW, T)
        probs = logits.softmax(dim=-1).mean(dim=1)  # (B, HW, T)
        return probs if self.store.keep_grad else probs.detach()


_BLOCK_RE = re.compile(r"^(down_blocks|mid_block|up_blocks)\.?(\d*)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2$")


def parse_layer(name: str) -> tuple[str, int, int, int]:
    """A cross-attention module name -> (block kind, block index, attention index, transformer
    block index): ``up_blocks.1.attentions.2.transformer_blocks.0.attn2`` -> ("up_blocks", 1, 2, 0);
    the mid block's index is 0. ValueError for any other name."""
    m = _BLOCK_RE.match(name)
    if m is None:
        raise ValueError(f"unexpected cross-attention module name '{name}'")
    kind, block, att, tb = m.groups()
    return kind, int(block or 0), int(att), int(tb)


def layer_level(name: str, n_levels: int) -> int:
    """How many times the U-Net has halved its input's resolution at this layer, for a U-Net of
    ``n_levels`` blocks a side: down block i -> i, the mid block -> n_levels - 1, up block i ->
    n_levels - 1 - i."""
    kind, block, _, _ = parse_layer(name)
    if kind == "mid_block":
        return n_levels - 1
    return block if kind == "down_blocks" else n_levels - 1 - block


def cross_attention_layers(unet) -> list[str]:
    """Names of the U-Net's cross-attention modules (``...attn2``) in forward order: down blocks,
    then the mid block, then up blocks. Index i of this list is the paper's layer l = i."""
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    names = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and name.endswith("attn2"):
            kind, block, att, tb = parse_layer(name)
            names.append(((order[kind], block, att, tb), name))
    return [n for _, n in sorted(names)]


def record_layers(unet, layers: list[str], store: AttentionStore) -> None:
    """Install recording processors on ``layers`` (module names) and SDPA everywhere else."""
    known = set(cross_attention_layers(unet))
    missing = [name for name in layers if name not in known]
    if missing:
        raise ValueError(f"not cross-attention layers of this U-Net: {missing}")
    processors = {}
    for key in unet.attn_processors:  # keys look like '<module name>.processor'
        module_name = key[: -len(".processor")]
        if module_name in layers:
            processors[key] = RecordingAttnProcessor(store, module_name)
        else:
            processors[key] = AttnProcessor2_0()
    unet.set_attn_processor(processors)


@contextmanager
def recording(unet, layers: Sequence[str], *, keep_grad: bool = False, stop: bool = False) -> Iterator[AttentionStore]:
    """Record the cross-attention probabilities of ``layers`` (module names) in every forward of
    ``unet`` inside the block; yields the :class:`AttentionStore` they land in (it keeps them after
    the block). ``keep_grad``: the maps stay in the autograd graph (attention supervision).
    ``stop``: a forward raises :class:`AllLayersRecorded` once every listed layer is recorded (a
    pass that only reads the maps skips the rest of the U-Net). On leaving, the U-Net gets back the
    processors it had on entering, so recordings nest (training's evaluation inside the loop)."""
    layers = list(layers)
    before = dict(unet.attn_processors)
    store = AttentionStore(keep_grad=keep_grad, stop_after=layers if stop else ())
    record_layers(unet, layers, store)
    try:
        yield store
    finally:
        unet.set_attn_processor(before)
