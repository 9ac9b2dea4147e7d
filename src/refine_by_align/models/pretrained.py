"""Loading a part of the full-scale model from published weights (a hub id or a local folder)."""

from __future__ import annotations

__all__ = ["pretrained_part"]


def pretrained_part(cls, source: str, what: str, subfolder: str | None = None):
    """``cls.from_pretrained(source, subfolder=subfolder)`` from safetensors only (a diffusers or
    transformers model class). Weights that cannot be had (not found, no network, only pickles)
    raise a ValueError that names ``what`` and where it was looked for."""
    extra = {"subfolder": subfolder} if subfolder else {}  # (transformers wants no subfolder rather than None)
    try:
        return cls.from_pretrained(source, use_safetensors=True, **extra)
    except OSError as e:
        where = source + (f" (subfolder {subfolder})" if subfolder else "")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the {what} weights '{where}' as safetensors: {first}") from None
