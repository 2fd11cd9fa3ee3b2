"""Figures for a comparison, drawn headless with matplotlib (imported only here).

Each function takes a ``Comparison`` and a PNG path and returns the path, or None when
there is nothing to draw (no lr sweep, no per-layer profile). Files are written to a
temporary name and renamed, so a figure is never half-written.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .compare import LR, Comparison, _plain, group_label, short_names

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: no display needed, on a laptop or a cluster node
    import matplotlib.pyplot as plt

    return plt


def _styles(n: int):
    """(color, linestyle) per group: 10 colours, then the same colours dashed, then dotted."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    dashes = ["-", "--", ":", "-."]
    return [(colors[i % 10], dashes[(i // 10) % len(dashes)]) for i in range(n)]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def read_metrics(run_dir: str | Path) -> dict[str, list]:
    """metrics.jsonl as columns: step, loss, grad_norm (training steps only); update_step,
    model_update (the steps where the model update was measured)."""
    steps, loss, grad, ustep, update = [], [], [], [], []
    try:
        with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if "loss" in rec:
                    steps.append(rec["step"])
                    loss.append(_num(rec["loss"]))
                    grad.append(_num(rec.get("grad_norm")))
                if "model_update" in rec:
                    ustep.append(rec["step"])
                    update.append(_num(rec["model_update"]))
    except (OSError, ValueError):
        pass
    return {"step": steps, "loss": loss, "grad_norm": grad, "update_step": ustep, "model_update": update}


def _num(v) -> float:
    return float(v) if v is not None else math.nan


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing running mean, NaN-aware (a diverged tail stays visible as its last finite value)."""
    import pandas as pd

    return pd.Series(values, dtype=float).rolling(window, min_periods=1).mean().tolist()


def _mean_band(curves: list[tuple[list, list]]):
    """Align curves on their steps; mean and std over the curves that reach each step."""
    import pandas as pd

    frame = pd.concat([pd.Series(v, index=s, dtype=float) for s, v in curves], axis=1)
    return frame.index.to_numpy(), frame.mean(axis=1).to_numpy(), frame.std(axis=1, ddof=1).fillna(0).to_numpy()


def curves(c: Comparison, path: str | Path) -> Path:
    """Panels: training loss (smoothed), validation loss (seed mean with a ±1 std band), global
    gradient norm (log scale, smoothed), and the model update (log scale) when the runs measured
    it; one line per group. Diverged seeds are drawn thin, ending in x."""
    plt = _pyplot()
    logs = {r["run_id"]: read_metrics(r["path"]) for _, r in c.runs.iterrows()}
    with_update = any(log["update_step"] for log in logs.values())  # runs made before 0.2.0 have none
    fig, grid = plt.subplots(2, 2, figsize=(14, 9)) if with_update else plt.subplots(1, 3, figsize=(16, 4.8))
    axes = list(grid.ravel())
    groups = list(dict.fromkeys(c.table.apply(c.label, axis=1)))
    steps_max = int(c.runs["steps_done"].max() or 1)
    window = max(1, steps_max // 50)
    diverged = []
    for (color, ls), label in zip(_styles(len(groups)), groups):
        g = c.runs[c.runs["group"] == label]
        ok = g[~g["diverged"]]
        train_curves = [(logs[r]["step"], _smooth(logs[r]["loss"], window)) for r in ok["run_id"]]
        grad_curves = [(logs[r]["step"], _smooth(logs[r]["grad_norm"], window)) for r in ok["run_id"]]
        update_curves = [(logs[r]["update_step"], logs[r]["model_update"]) for r in ok["run_id"]]
        val_curves = [([s for s, v in vl if v is not None], [v for s, v in vl if v is not None])
                      for vl in ok["val_losses"]] if "val_losses" in ok else []
        n = f" (n={len(g)}{', ' + str(len(g) - len(ok)) + ' diverged' if len(ok) < len(g) else ''})"
        panels = [(axes[0], train_curves), (axes[1], val_curves), (axes[2], grad_curves)]
        for ax, cs in panels + ([(axes[3], update_curves)] if with_update else []):
            cs = [cv for cv in cs if cv[0]]
            if not cs:
                continue
            x, mean, std = _mean_band(cs)
            ax.plot(x, mean, color=color, ls=ls, lw=1.6, label=label + n,
                    marker="o" if ax is axes[1] else None, ms=3)
            if len(cs) > 1:
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        if len(ok) < len(g):
            diverged.append((color, ls, label + n, len(ok) == 0,
                             [logs[r] for r in g.loc[g["diverged"], "run_id"]]))
    # diverged runs end far above the rest: clip them to the top of the finished curves, mark the end with x
    top = axes[0].get_ylim()[1] if axes[0].lines else None
    for color, ls, label, all_diverged, group_logs in diverged:
        for i, log in enumerate(lg for lg in group_logs if lg["step"]):
            for ax, key in ((axes[0], "loss"), (axes[2], "grad_norm")):
                ys = _smooth(log[key], window)
                if ax is axes[0] and top is not None:
                    ys = [min(y, top) for y in ys]
                ax.plot(log["step"], ys, color=color, ls=ls, lw=0.8, alpha=0.7,
                        label=label if (all_diverged and i == 0 and ax is axes[0]) else None)
                ax.plot(log["step"][-1], ys[-1], marker="x", color=color, ms=8, mew=2)
    smoothing = f"running mean over {window} steps" if window > 1 else "every step"
    axes[0].set(title=f"training loss ({smoothing})", xlabel="step", ylabel="loss (nats)")
    axes[1].set(title="validation loss (seed mean ± std)", xlabel="step", ylabel="loss (nats)")
    axes[2].set(title="global gradient norm before clipping", xlabel="step", ylabel="‖g‖₂", yscale="log")
    if with_update:
        axes[3].set(title="model update ‖F(x, θ_t) − F(x, θ_0)‖ (seed mean; Wang et al. 2022)", xlabel="step",
                    ylabel="RMS change of the logits on a fixed batch", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()  # room for the log axis's tick labels between the panels
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    row = 0.22 / fig.get_figheight()  # one legend row, in figure coordinates
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - row * math.ceil(len(labels) / 4)), frameon=False)
    if diverged:
        fig.suptitle("x marks where a diverged run stopped (its loss clipped to the top of the axis)", fontsize=9, y=1.03)
    return _save(fig, path)


# training keys that cannot change the gradient at step 0: groups differing only in them share a profile
AFTER_INIT = {"train.steps", "train.lr", "train.warmup_steps", "train.schedule", "train.min_lr_ratio",
              "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip", "train.eval_every",
              "train.eval_batches", "train.measure_every", "train.spike_factor", "train.spike_window",
              "train.divergence_margin"}


def grad_norm_init(c: Comparison, path: str | Path) -> Path | None:
    """Per-layer feed-forward gradient norm at initialisation (before clipping), seed mean, log scale;
    one line per combination of the factors that can change it (model, data, batch size...), so a
    warmup or lr sweep draws one line per placement rather than identical copies."""
    col = "grad_norm_init_by_layer"
    if col not in c.runs or c.runs[col].map(bool).sum() == 0:
        return None
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by = [k for k in c.by if k not in AFTER_INIT]
    labels = c.runs.apply(lambda r: group_label(r, by), axis=1)
    groups = list(dict.fromkeys(labels))
    for (color, ls), label in zip(_styles(len(groups)), groups):
        profiles = [p for p in c.runs.loc[labels == label, col] if p]
        if not profiles:
            continue
        depth = max(len(p) for p in profiles)
        arr = np.full((len(profiles), depth), np.nan)
        for i, p in enumerate(profiles):
            arr[i, :len(p)] = [math.nan if v is None else v for v in p]
        ax.plot(np.arange(1, depth + 1), np.nanmean(arr, axis=0), color=color, ls=ls, marker="o", ms=4,
                label=f"{label} (n={len(profiles)})")
    ax.set(xlabel="layer (1 = nearest the input)", ylabel="‖∇W_FFN‖ at step 0 (fc1 and fc2)", yscale="log",
           title="gradient norm per layer at initialisation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def lr_sensitivity(c: Comparison, path: str | Path) -> Path | None:
    """Loss against learning rate (log x) per combination of the other factors; the cap ln V dashed."""
    if c.sensitivity is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    others = [k for k in c.by if k != LR]
    names = short_names(others)
    for (color, ls), (_, r) in zip(_styles(len(c.sensitivity)), c.sensitivity.iterrows()):
        lrs, losses = zip(*r["curve"])
        label = ", ".join(f"{names[k]}={_plain(r[k])}" for k in others) or "all runs"
        ax.plot(lrs, losses, color=color, ls=ls, marker="o", ms=4,
                label=f"{label} (sens. {r['lr_sensitivity']:.3g})")
    cap = float(c.sensitivity["cap"].max())
    ax.axhline(cap, color="grey", ls="--", lw=1, label=f"cap ln V = {cap:.2f} (diverged)")
    metric = c.metric if c.metric.endswith("loss") else "final_val_loss"
    ax.set(xscale="log", xlabel="peak learning rate", ylabel=f"{metric}, seed mean (nats)",
           title="learning-rate sensitivity (lower and flatter is more forgiving)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
