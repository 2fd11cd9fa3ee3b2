"""Figures for a comparison, drawn headless with matplotlib (imported only here).

Each function takes a ``Comparison``, a file path (.png, .pdf or .svg) and optionally the
report's ``Palette`` (one style per configuration across its figures), and returns the path,
or None when there is nothing to draw (no lr sweep, no per-layer profile). Files are written to a
temporary name and renamed, so a figure is never half-written.
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

from ..catalog import AFTER_INIT
from ..claims import CLAIMS_FILE
from ..measures import EXTRA_PANELS, PANELS
from ..analysis.compare import LR, Comparison, hashable, group_label, plain, short_names

DPI = 120


# readable on a slide: the figures are 7 x 4.5 inches a panel
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 12}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: no display needed, on a laptop or a cluster node
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def recipe_title(c: Comparison) -> str:
    """The recipe(s) a figure shows, for its title."""
    names = sorted({plain(r) for r in c.runs["recipe"].dropna()}) if "recipe" in c.runs else []
    return c.recipe or ", ".join(names) or "normbench"


def log_ticks(ax, axis: str = "y") -> None:
    """Log-axis ticks that read as numbers (0.5, 2, 300), with the in-between ticks labelled when the
    axis spans less than a decade, where matplotlib would label one tick or none."""
    from matplotlib import ticker

    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    plain_fmt = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    target.set_major_formatter(plain_fmt)
    decades = math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1 if lo > 0 and hi > 0 else 2
    if decades < 3:  # one or two labelled powers of ten in view: label some ticks in between too
        subs = "all" if hi / lo < 5 else (2, 3, 5) if hi / lo < 30 else (2, 5)
        target.set_minor_locator(ticker.LogLocator(subs=subs, numticks=12))
        target.set_minor_formatter(plain_fmt)
    else:
        target.set_minor_formatter(ticker.NullFormatter())


class Palette:
    """One style per configuration across every figure of a report: the colour follows the factors
    that shape the model and data (norm, placement, depth...), the line style the training factors
    (learning rate, warmup...; AFTER_INIT) and the depth when something else varies too, in the order of
    the comparison's table. A figure that
    groups more coarsely (per model in the gradient profile, per model without lr in the LR
    sensitivity) draws each configuration in the colour it has everywhere else."""

    def __init__(self, c: Comparison):
        import matplotlib

        self.model_keys = [k for k in c.by if k not in AFTER_INIT]
        self.train_keys = [k for k in c.by if k in AFTER_INIT and k != LR]
        if "model.layers" in self.model_keys and len(self.model_keys) > 1:  # depth as a line style: a
            self.model_keys.remove("model.layers")                          # placement keeps its colour
            self.train_keys.insert(0, "model.layers")
        self.lr = LR in c.by
        self.colors = matplotlib.colormaps["tab10"].colors
        self.models = list(dict.fromkeys(self._key(r, self.model_keys) for _, r in c.table.iterrows()))
        self.trains = list(dict.fromkeys(self._key(r, self.train_keys + ([LR] if self.lr else []))
                                         for _, r in c.table.iterrows()))

    @staticmethod
    def _key(row, keys) -> tuple:
        return tuple(plain(row[k]) if k in row else "-" for k in keys)

    def style(self, row, with_lr: bool = True) -> tuple:
        """(color, linestyle) for a group row (a Series or dict with the factor values)."""
        i = self.models.index(self._key(row, self.model_keys)) if self.model_keys else 0
        keys = self.train_keys + ([LR] if self.lr and with_lr else [])
        j = 0
        if keys:
            key = self._key(row, keys)
            options = list(dict.fromkeys(t[:len(keys)] for t in self.trains)) if not with_lr else self.trains
            j = options.index(key) if key in options else 0
        dashes = ["-", "--", ":", "-."]
        return self.colors[i % 10], dashes[(j + i // 10) % len(dashes)]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = path.suffix.lstrip(".") or "png"
    # no timestamps in the files (pdf and svg embed one by default): a figure that did not change
    # is byte-identical, and is then left as it is (a regenerated report leaves a clone clean)
    meta = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=fmt, metadata=meta)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _smooth(values, window: int, log: bool = False):
    """Trailing running mean (of log values when ``log``: a geometric mean, right on a log axis),
    NaN-aware (a diverged tail stays visible as its last finite value)."""
    import numpy as np
    import pandas as pd

    series = pd.Series(values, dtype=float)
    if log:
        series = np.log(series.where(series > 0))
    out = series.rolling(window, min_periods=1).mean()
    return np.exp(out).to_numpy() if log else out.to_numpy()


def _band(frame, log: bool):
    """Mean and a ±1 std band over the columns (seeds) of ``frame`` (steps x seeds). On a log axis the
    mean and std are of log values (geometric mean, band mean ×/÷ exp(std)), so the band never
    reaches zero; seeds that do not reach a step are left out there."""
    import numpy as np

    values = np.log(frame.where(frame > 0)) if log else frame
    mean, std = values.mean(axis=1), values.std(axis=1, ddof=1).fillna(0)
    if log:
        return np.exp(mean), np.exp(mean - std), np.exp(mean + std)
    return mean, mean - std, mean + std


def curves(c: Comparison, path: str | Path, palette: Palette | None = None) -> Path:
    """The training curves (``curves_figure``) written to ``path``."""
    return _save(curves_figure(c, palette, per_seed=getattr(palette, "per_seed", False)), path)


def curve_panels(c: Comparison) -> list[str]:
    """The metrics of the curve panels some run logged (one file each with ``report --panels separate``)."""
    from ..analysis.curves import runs_curves

    frame = runs_curves(c.runs, [k for k in c.by if k in c.runs])
    return [p.column for p in logged_panels(frame)]


def claimed_panels(c: Comparison) -> list:
    """The diagnostics' panels (measures.py's ``extra`` series) whose measurement a claim of the
    comparison's recipe tests (its results folder's claims.yaml), where some run logged them."""
    import yaml

    from ..analysis.curves import runs_curves

    path = Path(c.sources[0]) / CLAIMS_FILE if len(c.sources) == 1 else None
    if path is None or not path.exists():
        return []
    metrics = [cl.get("metric") for cl in (yaml.safe_load(path.read_text()) or {}).get("claims") or []]
    panels = list(dict.fromkeys(s for m in metrics for s in EXTRA_PANELS.get(m, [])))
    frame = runs_curves(c.runs, [k for k in c.by if k in c.runs]) if panels else None
    return [p for p in panels if p.column in frame and frame[p.column].notna().any()] if panels else []


def diagnostics(c: Comparison, path: str | Path, palette: Palette | None = None) -> Path | None:
    """The diagnostics the recipe's claims test (``claimed_panels``), drawn as the training curves are;
    None when its claims test none."""
    panels = claimed_panels(c)
    if not panels:
        return None
    return _save(curves_figure(c, palette, per_seed=getattr(palette, "per_seed", False), panels=panels,
                               what="the diagnostics its claims test"), path)


def curve_panel(c: Comparison, metric: str, path: str | Path, palette: Palette | None = None) -> Path:
    """One panel of the training curves on its own (with its legend beside it), for a slide."""
    return _save(curves_figure(c, palette, only=metric, per_seed=getattr(palette, "per_seed", False)), path)


def logged_panels(frame) -> list:
    """measures.py's panels (``Series`` with a ``panel``) that some run logged."""
    return [p for p in PANELS if p.column in frame and frame[p.column].notna().any()]


def curves_figure(c: Comparison, palette: Palette | None = None, only: str | None = None, per_seed: bool = False,
                  panels: list | None = None, what: str = "training curves"):
    """Panels: training loss (running mean), validation loss (seed mean, ±1 std band), global gradient
    norm (log scale: a geometric running mean, and thin the per-step maximum over seeds, so a one-step
    burst shows at its height), the largest attention logit and the model update (log scale), each
    when the runs logged it (measures.py's ``PANELS``); one colour per configuration (``Palette``).
    Diverged seeds are drawn thin, ending in x, and are left out of the means."""
    from ..analysis.curves import runs_curves

    plt = _pyplot()
    palette = palette or Palette(c)
    frame = runs_curves(c.runs, [k for k in c.by if k in c.runs])
    if panels is None:
        panels = logged_panels(frame) or PANELS[:3]
    if only is not None:
        panels = [p for p in PANELS if p.column == only]
    ncols = 2 if len(panels) <= 4 else 3
    nrows = math.ceil(len(panels) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(7 * ncols, 4.5 * nrows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    window = max(1, int(c.runs["steps_done"].max() or 1) // 50)
    diverged = _draw_groups(c, palette, frame, axes, panels, window, per_seed)
    _draw_diverged(frame, axes, panels, window, diverged)
    _decorate(fig, axes, panels, window)
    note = "\nx marks where a diverged run stopped (its loss clipped to the top of the axis)" if diverged else ""
    what = "one panel" if only is not None else what
    seeds = "; thin lines: each seed" if per_seed else ""
    fig.suptitle(f"{recipe_title(c)}: {what}{seeds}{note}", y=1.03)
    return fig


def _draw_groups(c: Comparison, palette: Palette, frame, axes, panels, window: int, per_seed: bool) -> list:
    """Each group's seed mean (and band) on every panel; returns the groups with diverged seeds."""
    diverged = []
    for _, row in c.table.iterrows():
        label = c.label(row)
        color, ls = palette.style(row)
        g = c.runs[c.runs["group"] == label]
        ok_ids = list(g.loc[~g["diverged"], "run_id"])
        n = f" (n={len(g)}{', ' + str(len(g) - len(ok_ids)) + ' diverged' if len(ok_ids) < len(g) else ''})"
        for ax, p in zip(axes, panels):
            wide = _wide(frame, ok_ids, p.column)
            if wide is None:
                continue
            if p.smoothed:
                wide = wide.apply(lambda col: _smooth(col.to_numpy(), window, p.log))
            mean, lo, hi = _band(wide, p.log)
            if p.share:  # mean ± std may pass the bounds of a share
                lo, hi = lo.clip(0.0, 1.0), hi.clip(0.0, 1.0)
            if per_seed:  # each seed thin, under the mean
                for col in wide.columns:
                    ax.plot(wide.index, wide[col], color=color, ls=ls, lw=0.5, alpha=0.5)
            ax.plot(wide.index, mean, color=color, ls=ls, lw=1.6, label=label + n,
                    marker="o" if p.column == "val_loss" else None, ms=3)
            if wide.shape[1] > 1:
                ax.fill_between(wide.index, lo, hi, color=color, alpha=0.18, lw=0)
            if p.column in ("grad_norm", "attn_logit_max"):  # the maxima, unsmoothed: bursts at their height
                raw = _wide(frame, ok_ids, p.column)
                ax.plot(raw.index, raw.max(axis=1), color=color, ls=ls, lw=0.6, alpha=0.55)
        if len(ok_ids) < len(g):
            diverged.append((color, ls, label + n, not ok_ids, list(g.loc[g["diverged"], "run_id"])))
    return diverged


def _draw_diverged(frame, axes, panels, window: int, diverged: list) -> None:
    """Diverged runs end far above the rest: clip them to the top of the finished curves, mark the end
    with x (the loss and gradient-norm panels)."""
    top = axes[0].get_ylim()[1] if axes[0].lines else None
    for color, ls, label, all_diverged, run_ids in diverged:
        for i, rid in enumerate(run_ids):
            log_frame = frame[frame["run_id"] == rid]
            for ax, p in zip(axes, panels):
                metric = p.column
                if metric not in ("loss", "grad_norm") or log_frame[metric].notna().sum() == 0:
                    continue
                sub = log_frame[["step", metric]].dropna()
                ys = _smooth(sub[metric].to_numpy(), window, p.log) if p.smoothed else sub[metric].to_numpy()
                if metric == "loss" and top is not None:
                    ys = [min(y, top) for y in ys]
                ax.plot(sub["step"], ys, color=color, ls=ls, lw=0.8, alpha=0.7,
                        label=label if (all_diverged and i == 0 and metric == "loss") else None)
                ax.plot(sub["step"].iloc[-1], ys[-1], marker="x", color=color, ms=8, mew=2)


def _decorate(fig, axes, panels, window: int) -> None:
    """Titles, axes and the legend (in a spare panel, else below the figure)."""
    smoothing = f"running mean over {window} steps" if window > 1 else "every step"
    for ax, p in zip(axes, panels):
        title = p.panel
        if p.column == "loss":
            title = f"{title} ({smoothing})"
        elif p.column == "grad_norm":
            title = f"{title}\n(seed geometric mean, {smoothing.replace('running mean', 'running geometric mean')}; thin: per-step max)"
        ax.set(title=title, xlabel="step", ylabel=p.ylabel, yscale="log" if p.log else "linear")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    fig.tight_layout()  # room for the log axis's tick labels between the panels
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    spare = axes[len(panels):]
    if spare:  # an empty panel holds the legend, so long labels do not widen the figure
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(handles, [textwrap.fill(t, 50) for t in labels], loc="center", fontsize=10, frameon=False)
    else:
        row = 0.22 / fig.get_figheight()  # one legend row, in figure coordinates
        fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=10,
                   bbox_to_anchor=(0.5, -0.02 - row * math.ceil(len(labels) / 4)), frameon=False)
    for ax, p in zip(axes, panels):
        if p.log:
            log_ticks(ax)


def _wide(frame, run_ids: list[str], metric: str):
    """steps x runs of ``metric`` for ``run_ids``; None when none of them logged it."""
    if metric not in frame or not run_ids:
        return None
    sub = frame[frame["run_id"].isin(run_ids)][["run_id", "step", metric]].dropna()
    if sub.empty:
        return None
    return sub.pivot_table(index="step", columns="run_id", values=metric, aggfunc="first").sort_index()


def _profile_mean(profiles: list[list], geometric: bool = False):
    """(layer 1..L, the mean over runs of per-layer values; geometric for a log axis); None values and
    shorter profiles are left out where they are missing."""
    import numpy as np

    depth = max(len(p) for p in profiles)
    arr = np.full((len(profiles), depth), np.nan)
    for i, p in enumerate(profiles):
        arr[i, :len(p)] = [math.nan if v is None else v for v in p]
    mean = np.exp(np.nanmean(np.log(arr), axis=0)) if geometric else np.nanmean(arr, axis=0)
    return np.arange(1, depth + 1), mean


# training keys that cannot change the gradient at step 0: groups differing only in them share a profile


def grad_norm_init_lines(c: Comparison) -> list[tuple]:
    """(label, group row, seeds, profile mean) per combination of the factors that can change the
    step-0 gradient: keys that act only after step 0 (AFTER_INIT) are merged, and each seed counts
    once (a seed at two warmups is one profile, and the label says n=1)."""
    col = "grad_norm_init_by_layer"
    if col not in c.runs or c.runs[col].map(bool).sum() == 0:
        return []
    by = [k for k in c.by if k not in AFTER_INIT]
    labels = c.runs.apply(lambda r: group_label(r, by), axis=1)
    out = []
    for label in dict.fromkeys(labels):
        runs = c.runs[(labels == label) & c.runs[col].map(bool)]
        if not len(runs):
            continue
        per_seed = runs.groupby("seed", sort=True)[col].first() if "seed" in runs else runs[col]
        out.append((label, {k: hashable(runs.iloc[0][k]) for k in by}, len(per_seed), _profile_mean(list(per_seed))))
    return out


def grad_norm_init(c: Comparison, path: str | Path, palette: Palette | None = None) -> Path | None:
    """Per-layer feed-forward gradient norm at initialisation (before clipping), seed mean, log scale;
    one line per combination of the factors that can change it (model, data, batch size...), so a
    warmup or lr sweep draws one line per placement rather than identical copies; n counts seeds. A
    line with no positive value (ReZero's gates start at 0: no FFN gradient at step 0) has no place on
    a log scale and is left out."""
    lines = [line for line in grad_norm_init_lines(c) if any(v > 0 for v in line[3][1])]
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    palette = palette or Palette(c)
    for label, row, n, (x, y) in lines:
        color, ls = palette.style(row, with_lr=False)
        ax.plot(x, y, color=color, ls=ls, marker="o", ms=4, label=f"{label} (n={n} seed{'s' if n != 1 else ''})")
    ax.set(xlabel="layer (1 = nearest the input)", ylabel="‖∇W_FFN‖ at step 0 (fc1 and fc2)", yscale="log",
           title=f"{recipe_title(c)}: gradient norm per layer at initialisation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    log_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside: never over the data
    return _save(fig, path)


def lr_lines(c: Comparison) -> list[tuple]:
    """Per combination of the factors other than the learning rate: (label, row, sensitivity, [(lr,
    mean capped loss over seeds, 95% half-width over seeds)], cap), from the same capped losses as
    the LR sensitivity (``compare.capped_losses``)."""
    from ..analysis.compare import groups, capped_losses
    from ..analysis.stats import interval

    if c.sensitivity is None:
        return []
    others = [k for k in c.by if k != LR]
    names = short_names(others)
    metric = c.metric if c.metric.endswith("loss") and c.metric in c.runs else "final_val_loss"
    out = []
    for key, g in groups(c.runs, others):
        rows = capped_losses(g, metric)
        by_lr: dict = {}
        for lr, loss, _ in rows:
            by_lr.setdefault(lr, []).append(loss)
        if len(by_lr) < 2:
            continue
        row = dict(zip(others, key))
        sens = c.sensitivity
        for k, v in row.items():
            sens = sens[sens[k].map(plain) == plain(v)]
        points = [(lr, interval(v).mean, interval(v).half if len(v) > 1 else 0.0, len(v))
                  for lr, v in sorted(by_lr.items())]
        label = ", ".join(f"{names[k]}={plain(v)}" for k, v in row.items()) or "all runs"
        out.append((label, row, float(sens["lr_sensitivity"].iloc[0]) if len(sens) else math.nan, points,
                    sum(cap for *_, cap in rows) / len(rows)))
    return out


def lr_sensitivity(c: Comparison, path: str | Path, palette: Palette | None = None) -> Path | None:
    """Loss against learning rate (log x), seed mean with 95% error bars, per combination of the other
    factors; each loss capped at the run's loss at initialisation (Wortsman et al.), a diverged run at
    the cap. The y-range follows the data, the cap is drawn where it falls inside it."""
    lines = lr_lines(c)
    if not lines:
        return None
    plt = _pyplot()
    palette = palette or Palette(c)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lows, highs = [], []
    for label, row, sens, points, cap in lines:
        color, ls = palette.style(row, with_lr=False)
        lrs, means, halves, ns = zip(*points)
        n = f"{min(ns)} seeds" if min(ns) == max(ns) else f"{min(ns)} to {max(ns)} seeds by rate"
        ax.errorbar(lrs, means, yerr=halves, color=color, ls=ls, marker="o", ms=4, capsize=3,
                    label=f"{label}\n(sensitivity {sens:.3f}; {n})")
        lows += [m - h for m, h in zip(means, halves)]
        highs += [m + h for m, h in zip(means, halves)]
    cap = max(cap for *_, cap in lines)
    pad = 0.08 * (max(highs) - min(lows) or 1.0)
    top = min(max(highs) + pad, cap + pad)
    ax.set_ylim(min(lows) - pad, top)
    if cap <= top:
        ax.axhline(cap, color="grey", ls="--", lw=1, label=f"cap: loss at initialisation, {cap:.2f} (diverged)")
    metric = c.metric if c.metric.endswith("loss") else "final_val_loss"
    ax.set(xscale="log", xlabel="peak learning rate", ylabel=f"{metric}, capped (nats)",
           title=f"{recipe_title(c)}: learning-rate sensitivity\n(seed mean ± 95% interval; lower and flatter is "
                 "more forgiving)")
    log_ticks(ax, "x")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside: never over the data
    return _save(fig, path)


def resid_rms_lines(c: Comparison) -> list[tuple]:
    """(label, group row, seeds, end-of-training profile, step-1 profile) per group of the table (the
    same grouping, so runs that differ in warmup or steps are never averaged together); the
    geometric mean over the group's seeds that did not diverge; n counts those seeds."""
    col = "resid_rms_by_layer"
    if col not in c.runs or c.runs[col].map(bool).sum() == 0:
        return []
    ok = c.runs[~c.runs["diverged"]]
    if not len(ok):
        return []
    labels = ok.apply(lambda r: group_label(r, c.by), axis=1)
    out = []
    for label in dict.fromkeys(labels):
        runs = ok[(labels == label) & ok[col].map(bool)]
        if not len(runs):
            continue
        profiles = {k: [p for p in runs[k] if p] if k in runs else [] for k in (col, f"{col}_init")}
        seeds = runs["seed"].nunique() if "seed" in runs else len(runs)
        out.append((label, {k: hashable(runs.iloc[0][k]) for k in c.by}, seeds,
                    _profile_mean(profiles[col], geometric=True),
                    _profile_mean(profiles[f"{col}_init"], geometric=True) if profiles[f"{col}_init"] else None))
    return out


def resid_rms(c: Comparison, path: str | Path, palette: Palette | None = None) -> Path | None:
    """The residual stream's RMS after each block (log scale), seed geometric mean, at the end of training
    (with markers) and at the first step (faint), one line per group of the table: the curse of depth
    (Sun et al. 2025) is a profile that climbs with the layer. None when no run measured it."""
    lines = resid_rms_lines(c)
    if not lines:
        return None
    plt = _pyplot()
    palette = palette or Palette(c)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, row, n, end, init in lines:
        color, ls = palette.style(row)
        ax.plot(*end, color=color, ls=ls, marker="o", ms=3, lw=1.6,
                label=f"{label} (n={n} seed{'s' if n != 1 else ''})")
        if init is not None:
            ax.plot(*init, color=color, ls=ls, lw=0.8, alpha=0.45)
    ax.set(xlabel="block (1 = nearest the input)", ylabel="RMS of the residual stream after the block",
           yscale="log", title=f"{recipe_title(c)}: residual stream RMS per block\n(seed geometric mean; end of "
                               "training with markers, step 1 faint)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    log_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)
