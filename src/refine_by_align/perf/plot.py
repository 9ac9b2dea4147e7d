"""The benchmark's picture: one bar per config, the U-Net forward's time by operator class."""

from __future__ import annotations

from pathlib import Path

from .profile import OP_CLASSES

__all__ = ["plot_breakdown"]

_CLASS_COLORS = {"conv": "#4c72b0", "linear": "#55a868", "attention": "#c44e52", "other": "#8172b2", "overhead": "#bbbbbb"}


def plot_breakdown(result: dict, path: str | Path) -> Path | None:
    """One bar per config with a ``unet_breakdown``: the U-Net forward's time by op class (shares),
    labelled with the forward's seconds, its fraction of the ceiling and the bound. None if no
    config has a breakdown (on a GPU)."""
    rows = [(name, r) for name, r in result.items() if isinstance(r, dict) and "unet_breakdown" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.8 * len(rows)))
    for i, (name, r) in enumerate(rows):
        left = 0.0
        for k in (*OP_CLASSES, "overhead"):
            share = 100 * r["unet_breakdown"][k]["share"]
            ax.barh(i, share, left=left, color=_CLASS_COLORS[k], label=k if i == 0 else None)
            if share >= 6:
                ax.text(left + share / 2, i, f"{share:.0f}%", ha="center", va="center", fontsize=8, color="white")
            left += share
        ax.text(
            101, i, f"{r['unet_forward_s']:.3f} s; {100 * r['unet_fraction_of_ceiling']:.0f}% of ceiling (bound {100 * r['unet_breakdown']['unet_fraction_bound']:.0f}%)", va="center", fontsize=8
        )
    ax.set_yticks(list(range(len(rows))), [f"{name.strip()} ({r['dtype']}{', compiled' if r.get('compiled') else ''})" for name, r in rows])
    ax.set_xlim(0, 150)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel("share of one U-Net forward at batch 1 (%)")
    ax.invert_yaxis()
    ax.legend(ncol=5, loc="lower center", bbox_to_anchor=(0.35, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
