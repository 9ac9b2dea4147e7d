"""Loss curves of a run (``RUN_DIR/log.jsonl``) as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_log", "plot_run"]


def read_log(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) from a run's log.jsonl; torn last lines are skipped."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    train, evals = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evals if rec.get("eval") else train).append(rec)
    return train, evals


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_log(run_dir)
    if not train:
        raise ValueError(f"{run_dir}: log.jsonl has no training records yet")
    out = Path(output) if output else Path(run_dir) / "loss.png"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in train]
    for key in ("loss", "loss_eps", "loss_attn"):
        axes[0].plot(steps, [r[key] for r in train], label=key)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training losses")
    axes[0].legend()
    axes[1].plot(steps, [r["images_per_s"] for r in train])
    axes[1].set_xlabel("step")
    axes[1].set_title("images / s")
    if evals:
        es = [r["step"] for r in evals]
        for key in ("hole_mse_right", "hole_mse_shuffled"):
            axes[2].plot(es, [r.get(key) for r in evals], marker="o", label=key)
        if any("align_top1" in r for r in evals):
            ax2 = axes[2].twinx()
            ax2.plot(es, [r.get("align_top1") for r in evals], color="k", marker="s", label="align_top1")
            ax2.set_ylabel("alignment top-1 (within 1 token)")
            ax2.set_ylim(0, 1)
        axes[2].legend(loc="upper left")
    axes[2].set_title("reference use (hole MSE) and alignment")
    axes[2].set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
