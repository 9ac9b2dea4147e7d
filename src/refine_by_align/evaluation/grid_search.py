"""Grid search of the alignment's (t, l) (Algorithm 1, Fig. 4, 5 and 7).

For every case with a ``correspondence.png``, Eq. 5 maps are computed for every timestep t and
cross-attention layer l in one pass per t, cleaned as in A.4, mapped onto the reference and scored
by IoU against the true region. Writes ``grid.json`` (the T x L mIoU table and the best (t, l)),
``grid_heatmap.png`` (Fig. 7), ``grid_marginals.png`` (Fig. 4) and ``grid_maps_<case>.png``
(the maps of one case across layers and timesteps, Fig. 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..loading import load_pipeline
from .bench import run_config, write_json_atomic
from .cases import load_cases
from .metrics import iou

__all__ = ["grid_search", "DEFAULT_TIMESTEPS"]

DEFAULT_TIMESTEPS = (0, 24, 100, 250, 500, 750, 999)


def _case_maps(pipe, case, timesteps, layers, seed):
    """(T, L, g, g) raw maps and the prepared inputs of one case."""
    p = pipe.prepare(case.image, case.mask, case.reference, case.reference_mask)
    with torch.no_grad():
        maps = pipe.alignment_maps(p, list(timesteps), list(layers), seed)
    return maps, p


def grid_search(
    cases_dir: str | Path,
    output_dir: str | Path,
    model: str = "default",
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS,
    layers: tuple[int, ...] | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Algorithm 1's region for every (timestep, layer) on every case of ``cases_dir`` that has a
    true region, scored by IoU; writes ``grid.json`` (the mIoU table, each case's IoU and their
    spread, the cases scored and those skipped for want of a true region, the best pair, the shipped
    one and the run's ``config``), ``grid_heatmap.png``, ``grid_marginals.png`` and the first case's
    maps ``grid_maps_<case>.png`` into
    ``output_dir``, which is created only once the settings and cases are checked."""
    out = Path(output_dir)
    pipe = load_pipeline(model)
    n_layers = len(pipe.model.cross_attention_layers)
    layers = tuple(range(n_layers)) if layers is None else tuple(layers)
    for l in layers:
        if not 0 <= l < n_layers:
            raise ValueError(f"layer {l} out of range: the model has layers 0..{n_layers - 1}")
    for t in timesteps:
        if not 0 <= t < pipe.model.cfg.num_train_timesteps:
            raise ValueError(f"timestep {t} out of range 0..{pipe.model.cfg.num_train_timesteps - 1}")
    loaded = load_cases(cases_dir, limit)
    cases = [c for c in loaded if c.region is not None]
    skipped = [c.id for c in loaded if c.region is None]  # (multiview cases: no true region to score)
    if not cases:
        raise ValueError(f"no case in '{cases_dir}' has a correspondence.png: nothing to score")
    out.mkdir(parents=True, exist_ok=True)
    scores = np.zeros((len(timesteps), len(layers), len(cases)))
    example = None
    for k, case in enumerate(tqdm(cases, desc="grid search", disable=not progress)):
        maps, p = _case_maps(pipe, case, timesteps, layers, seed)
        per_case = []
        for i in range(len(timesteps)):
            row = []
            for j in range(len(layers)):
                region, _, _, norm = pipe.region_on_reference(p, maps[i, j])
                scores[i, j, k] = iou(region, case.region)
                row.append(norm)
            per_case.append(row)
        if example is None:
            example = (case, per_case, p)
    table = scores.mean(axis=2)
    bi, bj = np.unravel_index(int(np.argmax(table)), table.shape)
    result = {
        "model": str(model),
        "config": run_config(cases_dir, command="grid-search", model=str(model), timesteps=list(timesteps), layers=list(layers), limit=limit, seed=seed),
        "cases": len(cases),
        "case_ids": [c.id for c in cases],
        "skipped": skipped,  # cases without a correspondence.png (not scored)
        "timesteps": list(timesteps),
        "layers": list(layers),
        "layer_names": [pipe.model.cross_attention_layers[l] for l in layers],
        "miou": table.round(4).tolist(),
        "iou_per_case": scores.round(4).tolist(),  # (timesteps, layers, cases), cases in case_ids' order
        "miou_std": scores.std(axis=2).round(4).tolist(),  # the spread of the cases' IoU behind each mIoU
        "example_maps": f"grid_maps_{example[0].id}.png",
        "best": {"alignment_timestep": int(timesteps[bi]), "alignment_layer": int(layers[bj]), "miou": float(table[bi, bj])},
        "shipped": {"alignment_timestep": pipe.model.cfg.alignment_timestep, "alignment_layer": pipe.model.cfg.alignment_layer},
    }
    write_json_atomic(result, out / "grid.json")
    _plots(out, table, timesteps, layers, example)
    return result


def _plots(out: Path, table: np.ndarray, timesteps, layers, example) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(layers), 1.0 + 0.45 * len(timesteps)))
    im = ax.imshow(table, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(layers)), [str(l) for l in layers])
    ax.set_yticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_xlabel("cross-attention layer l")
    ax.set_ylabel("timestep t")
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, label="mIoU")
    ax.set_title("alignment mIoU over (t, l)")
    fig.tight_layout()
    fig.savefig(out / "grid_heatmap.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(list(timesteps), table.mean(axis=1), marker="o")
    axes[0].set_xlabel("timestep t")
    axes[0].set_ylabel("mIoU (mean over layers)")
    axes[1].plot(list(layers), table.mean(axis=0), marker="o")
    axes[1].set_xlabel("layer l")
    axes[1].set_ylabel("mIoU (mean over timesteps)")
    fig.tight_layout()
    fig.savefig(out / "grid_marginals.png", dpi=100)
    plt.close(fig)

    case, per_case, p = example
    fig, axes = plt.subplots(len(timesteps), len(layers) + 1, figsize=(1.6 * (len(layers) + 1), 1.6 * len(timesteps)), squeeze=False)
    ref = np.asarray(case.reference)
    for i, t in enumerate(timesteps):
        axes[i, 0].imshow(ref)
        axes[i, 0].contour(case.region, levels=[0.5], colors="lime", linewidths=0.8)
        axes[i, 0].set_ylabel(f"t={t}", fontsize=8)
        for j, l in enumerate(layers):
            axes[i, j + 1].imshow(per_case[i][j], cmap="jet", vmin=0, vmax=1)
            if i == 0:
                axes[i, j + 1].set_title(f"l={l}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"case {case.id}: Eq. 5 maps (token grid) across layers and timesteps; truth in green", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"grid_maps_{case.id}.png", dpi=90)
    plt.close(fig)
