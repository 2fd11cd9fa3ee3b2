"""Per-step curves: every run's metrics.jsonl as one long DataFrame, for scripts and for the figures.

One row per (run, step): the run's id, recipe, the factors that vary among the runs read
(dotted keys), seed, status and diverged, then ``step`` and every metric the run logged at
that step (``loss``, ``lr``, ``grad_norm`` every step; ``attn_logit_max`` and
``model_update`` every ``train.measure_every`` steps, and there ``resid_rms``, a list: the
residual stream's RMS after each block; ``val_loss`` every ``train.eval_every``;
``val_loss_batch_stats`` with BatchNorm). A metric not logged at a step is NaN there; a
non-finite value (a diverging run) is NaN too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..sweep import store

# run columns that come before the curves, besides the factors
RUN_COLUMNS = ["run_id", "recipe", "seed", "status", "diverged"]


def read_log(run_dir: str | Path) -> pd.DataFrame:
    """One run's metrics.jsonl as a frame indexed by step (training and evaluation rows merged)."""
    rows = []
    try:
        with open(Path(run_dir) / store.METRICS, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a kill: the rest of the log stands
                    continue
    except OSError:
        pass
    if not rows:
        return pd.DataFrame({"step": pd.Series(dtype=int)})
    frame = pd.DataFrame(rows)
    frame = frame.groupby("step", sort=True).first().reset_index()  # step 100: a training row and an eval row
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()]  # resid_rms per layer
    return frame.astype({c: float for c in frame.columns if c != "step" and c not in lists})


def runs_curves(runs: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """The long frame for ``runs`` (rows of ``compare.collect``, with ``path``), with ``factors`` as columns."""
    parts = []
    for _, r in runs.iterrows():
        log = read_log(r["path"])
        if log.empty:
            continue
        head = {c: r.get(c) for c in RUN_COLUMNS + factors if c in r}
        parts.append(pd.concat([pd.DataFrame([head] * len(log), index=log.index), log], axis=1))
    if not parts:
        return pd.DataFrame(columns=RUN_COLUMNS + factors + ["step"])
    out = pd.concat(parts, ignore_index=True)
    if "diverged" in out:
        out["diverged"] = out["diverged"].map(lambda v: bool(v) if not _missing(v) else False)
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def load_curves(results="results", filters: list[str] | None = None) -> pd.DataFrame:
    """Every finished run's per-step curves under ``results`` (a folder or a list of folders), as one
    long DataFrame: run_id, recipe, the factors that vary (dotted keys), seed, status, diverged,
    step, and every logged metric. ``filters`` as ``compare --filter`` (``["model.norm=rmsnorm"]``,
    short names accepted). Crashed runs are left out."""
    from .compare import apply_filters, collect, parse_filters, varied_factors

    paths = [results] if isinstance(results, (str, Path)) else list(results)
    runs, _, _ = collect(paths)
    if runs.empty:
        return pd.DataFrame(columns=RUN_COLUMNS + ["step"])
    runs = runs[runs["status"].isin(store.DONE)]
    factors = varied_factors(runs)
    runs = apply_filters(runs, parse_filters(filters, runs.columns))
    return runs_curves(runs, [f for f in factors if f != "recipe"])
