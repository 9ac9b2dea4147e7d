"""Loss curves of a run (``RUN_DIR/log.jsonl``) as a PNG (or another format matplotlib writes)."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import InputError

__all__ = ["read_log", "plot_run"]


def read_log(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) from a run's log.jsonl; torn last lines are skipped.

    A run resumed from an earlier checkpoint than its last logged step logs those steps again
    (a kill at step 6, resumed from the step-3 checkpoint: 1..6, then 4..8). The resumed run's
    records win: a training record whose step is not after the previous training record's drops
    the records (training and evaluation) from that step on; an evaluation record not after the
    previous one drops the evaluation records from its step on. Each list comes out in step order,
    the latest run of each step kept."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    train, evals = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
            continue
        step = rec["step"]
        if rec.get("eval"):
            _drop_from(evals, step)
            evals.append(rec)
        else:
            if train and train[-1]["step"] >= step:  # a resumed run: what it redoes is superseded
                _drop_from(evals, step)
            _drop_from(train, step)
            train.append(rec)
    return train, evals


def _drop_from(records: list[dict], step) -> None:
    """Remove the trailing records at ``step`` or later (the list is in step order)."""
    while records and records[-1]["step"] >= step:
        records.pop()


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output) if output else Path(run_dir) / "loss.png"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()  # what savefig writes, by the name's extension
    kind = out.suffix[1:].lower()
    if kind and kind not in formats:  # (no extension: matplotlib writes a PNG)
        raise InputError(f"--output '{out}': cannot write a .{kind} plot: name a {', '.join('.' + f for f in sorted(formats))} file")
    train, evals = read_log(run_dir)
    if not train:
        raise InputError(f"{Path(run_dir) / 'log.jsonl'} has no training records yet (a run logs every log_every steps)")
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
