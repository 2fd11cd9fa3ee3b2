"""Compare finished runs: group by the factors that vary, aggregate over seeds, rank.

Reads only the run folders (config.yaml, summary.json; metrics.jsonl for plots), so it
works on any results folder, while a sweep is still running, and on folders copied
from another machine.

Aggregation rule: a diverged run has no final loss, so the losses are the mean ± std (sample
std, ddof=1) over the runs of a group that did *not* diverge; the stability measures
(``ON_DIVERGED``: max gradient norm, max attention logit, spikes...) are over every run,
diverged ones included, since they are what an instability study looks at. ``n`` counts the
group's finished runs and ``diverged_rate`` the share that diverged. A group whose runs all
diverged has no losses, but still its stability measures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..sweep import store
from ..config import EXECUTION_KEYS, config_keys
from ..dotted import matches, resolve_key, suggest
from ..errors import NormbenchError
from ..numbers import none_if_missing
from ..measures import COMPARED, LEAK_TOL, LOSSES, ON_DIVERGED, PROFILES, SPEED, default_columns
from .stats import ALPHA, interval, welch

# compare's metrics, their titles and directions, and which runs have them: measures.py
LEAK_NOTE = ("causal leak (train_causal_leak): the RMS change of a run's training-mode logits at positions <= t "
             "when every token after t changes; above 0, the model saw later tokens in training (BatchNorm's "
             "batch statistics), so its training loss is optimistic: judge it by the eval-mode val loss")
SPEED_NOTE = ("tok/s is each run's own throughput while the sweep's runs shared this machine's cores (--jobs "
              "at a time), so it ranks nothing; compare speed with `normbench bench`, which times "
              "configurations side by side on an otherwise idle machine")
# the per-run lists the figures draw, read with the index row (summary.json is parsed once)
CURVE_KEYS = PROFILES
LR = "train.lr"
# config keys that never count as factors: seeds are what we aggregate over; device is where, not what
NOT_FACTORS = {"seed", *EXECUTION_KEYS}  # keys that never split a comparison



@dataclass
class Comparison:
    by: list[str]  # the grouping factors (dotted keys, and "recipe" when several recipes are compared)
    metric: str  # the ranking metric
    metrics: list[str]  # the metrics aggregated
    table: pd.DataFrame  # one row per group, best first: factors, n, n_diverged, diverged_rate, <m>_mean, <m>_std
    runs: pd.DataFrame  # the finished runs compared, one per row, with "path" (the run folder) and "group"
    crashed: pd.DataFrame  # crashed runs (compared anyway: they are listed, not averaged)
    sensitivity: pd.DataFrame | None = None  # per combination of the other factors, when train.lr is a factor
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    auto_by: bool = False  # the factors were detected, not given with --by
    metrics_chosen: bool = False  # the metrics were given, not the defaults
    recipe: str | None = None  # set on the parts per_recipe() returns
    unfiltered: pd.DataFrame | None = None  # the finished runs before --filter: their factors name the rows
    request: dict = field(default_factory=dict)  # how compare() was called: paths, by, metric, filters, pool
    _parts: list | None = field(default=None, repr=False, compare=False)

    def per_recipe(self) -> list[Comparison]:
        """One comparison per recipe, each grouped by the keys that vary within it, when the
        factors were detected and the runs span several recipes (losses of different tasks or
        set-ups do not rank against each other); else ``[self]``. Notes stay with ``self``.
        Built once: the table, the plot and the report all ask."""
        if self._parts is None:
            self._parts = self._split() if self.auto_by and "recipe" in self.by else [self]
        return self._parts

    def _split(self) -> list[Comparison]:
        out = []
        for name, runs in self.runs.groupby(self.runs["recipe"].map(plain), sort=True):
            runs = runs.drop(columns=["group"])
            crashed = self.crashed[self.crashed["recipe"].map(plain) == name] if len(self.crashed) else self.crashed
            sources = sorted({str(Path(p).parent) for p in runs["path"]})
            metrics = self.metrics if self.metrics_chosen else \
                list(dict.fromkeys(default_metrics(runs) + [self.metric]))
            factors = varied_factors(runs)
            if self.unfiltered is not None:  # a filter that leaves one configuration still names it
                every = self.unfiltered[self.unfiltered["recipe"].map(plain) == name]
                factors = [k for k in varied_factors(every) if k in runs] + \
                    [k for k in factors if k not in varied_factors(every)]
            c = _build(runs, crashed, factors, self.metric, metrics, [], sources)
            c.recipe = name
            out.append(c)
        return out

    @property
    def best(self) -> int | None:
        """Row position of the best group (the table is sorted, so 0) or None if every group diverged."""
        col = f"{self.metric}_mean"
        ok = self.table[col].notna() if col in self.table else pd.Series(dtype=bool)
        return int(ok.to_numpy().argmax()) if ok.any() else None

    def label(self, row) -> str:
        """A short legend label for a group: ``norm=rmsnorm, placement=pre``."""
        return group_label(row, self.by)


def short_names(keys: list[str]) -> dict[str, str]:
    """model.norm -> norm, unless another key (of these, or of the recipe keys) ends the same way:
    a column title can then be typed back into --filter and --by."""
    last = [k.split(".")[-1] for k in keys]
    everywhere = [k.split(".")[-1] for k in config_keys()]
    return {k: (s if last.count(s) == 1 and everywhere.count(s) <= 1 else k) for k, s in zip(keys, last)}




def group_label(row, by: list[str]) -> str:
    names = short_names(by)
    return ", ".join(f"{names[k]}={plain(row[k])}" for k in by) or "all runs"


def plain(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# reading


def find_recipe_dirs(path: Path, depth: int = 3) -> list[Path]:
    """Folders holding run folders (``results/<name>``), found under ``path`` up to ``depth`` levels."""
    path = Path(path)
    if (path / store.INDEX).exists() or any((p / store.CONFIG).exists() for p in _subdirs(path)):
        return [path]
    if depth == 0:
        return []
    return [d for sub in _subdirs(path) for d in find_recipe_dirs(sub, depth - 1)]


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def collect(paths: list[str | Path]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Every finished or crashed run under ``paths``: (runs, notes, recipe folders read)."""
    rows, notes, sources, seen = [], [], [], {}
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise NormbenchError("no such results folder", file=str(path))
        dirs = find_recipe_dirs(path)
        if not dirs:
            raise NormbenchError("holds no run folders (expected RESULTS/<recipe>/<run id>/config.yaml)",
                                 file=str(path))
        for d in dirs:
            sources.append(str(d))
            unfinished, dups = [], []
            for run_dir in _subdirs(d):
                if not (run_dir / store.CONFIG).exists():
                    continue
                row = store.read_run(run_dir, keep=CURVE_KEYS)
                if row is None:  # incomplete: still running, interrupted, or never started
                    unfinished.append(run_dir.name)
                    continue
                if row["run_id"] in seen:  # the same config (and seed) twice: count it once, say if they differ
                    first = seen[row["run_id"]]
                    diff = [m for m in ("final_val_loss", "best_val_loss", "max_grad_norm", "max_attn_logit",
                                        "diverged", "status")
                            if plain(first.get(m)) != plain(row.get(m))]
                    dups.append(row["run_id"] + (f" (differs: {', '.join(f'{m} {plain(first.get(m))} vs {plain(row.get(m))}' for m in diff)}; "
                                                  f"used {first['path']})" if diff else ""))
                    continue
                seen[row["run_id"]] = row
                row["path"] = str(run_dir)
                if row["status"] in store.DONE:  # the curves the index leaves out, for the figures
                    row.update({k: row.get(k) or [] for k in CURVE_KEYS})
                rows.append(row)
            if unfinished:
                notes.append(f"{d}: {count(unfinished, 'run')} not finished (still running or interrupted; "
                             f"`normbench run` resumes them): {', '.join(unfinished)}")
            if dups:
                notes.append(f"{d}: {count(dups, 'run')} skipped as already read from another folder "
                             f"(same run id; the first folder read is used): {', '.join(dups)}")
    runs = pd.DataFrame(rows)
    if not runs.empty:
        crashed = runs[runs["status"] == "crashed"]
        for _, r in crashed.iterrows():
            notes.append(f"{Path(r['path']).parent}: run {r['run_id']} crashed ({r.get('error') or 'see error.txt'}); "
                         "listed, not compared")
    return runs, notes, sources


def count(items, word: str) -> str:
    return f"{len(items)} {word}{'s' if len(items) != 1 else ''}"


def parse_filters(filters: list[str] | None, columns) -> list[tuple[str, list[str]]]:
    """``model.norm=layernorm`` or ``model.norm=layernorm,rmsnorm`` -> (key, accepted values)."""
    out = []
    valid = sorted(set(config_keys()) | {"recipe", "status", "run_id"} | set(columns))
    for text in filters or []:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise NormbenchError(f"expected KEY=VALUE (e.g. model.norm=layernorm), got {text!r}", key="--filter")
        key = resolve_key(key, valid, "--filter")
        out.append((key, [v.strip() for v in value.split(",")]))
    return out




def apply_filters(runs: pd.DataFrame, filters: list[tuple[str, list[str]]]) -> pd.DataFrame:
    for key, wanted in filters:
        col = runs[key] if key in runs else pd.Series([None] * len(runs), index=runs.index)
        keep = col.map(lambda v: any(matches(v, w) for w in wanted))
        if not keep.any():
            have = sorted({plain(v) for v in col})
            raise NormbenchError(f"{key}={','.join(wanted)} matches none of the {len(runs)} runs "
                                 f"({key} has: {', '.join(have) or 'no values'})", key="--filter")
        runs = runs[keep]
    return runs


def varied_factors(runs: pd.DataFrame) -> list[str]:
    """The config keys (in schema order) that take more than one value among ``runs``. When the
    runs come from several recipes: ``recipe`` first, then the keys that vary within a recipe;
    a key that differs only between recipes is implied by the recipe column and splits nothing."""
    several = "recipe" in runs and runs["recipe"].nunique(dropna=False) > 1
    parts = [g for _, g in runs.groupby(runs["recipe"].map(plain))] if several else [runs]
    factors = ["recipe"] if several else []
    for key in config_keys():
        if key in NOT_FACTORS or key not in runs:
            continue
        if any(part[key].map(plain).nunique() > 1 for part in parts):
            factors.append(key)
    return factors


# ---------------------------------------------------------------------------------------------
# aggregation


def aggregate(runs: pd.DataFrame, by: list[str], metrics: list[str], metric: str) -> pd.DataFrame:
    """One row per group of ``by``: n, n_diverged, diverged_rate, and per metric <m>_mean, <m>_std and
    the 95% interval <m>_ci95_lo, <m>_ci95_hi (Student's t); sorted best first, then ``p_vs_best``
    (Welch's t-test of the group against the best on ``metric``) and ``same_as_best``."""
    lower = COMPARED[metric].lower_better
    rows, ranked = [], []
    for key, g in groups(runs, by):
        ok = g[~g["diverged"].astype(bool)]
        row = dict(zip(by, key))
        row["n"] = len(g)
        row["n_diverged"] = len(g) - len(ok)
        row["diverged_rate"] = row["n_diverged"] / len(g)
        for m in metrics:
            pool = g if m in ON_DIVERGED or m in SPEED else ok
            vals = pd.to_numeric(pool[m], errors="coerce").dropna() if m in pool else pd.Series(dtype=float)
            if m == "max_grad_norm" and "divergence_reason" in pool and \
                    pool["divergence_reason"].astype(str).str.startswith("non-finite gradient").any():
                row[f"{m}_mean"] = row[f"{m}_std"] = math.inf  # a run stopped on an infinite gradient: the
                row[f"{m}_ci95_lo"], row[f"{m}_ci95_hi"] = math.nan, math.nan  # largest is not finite
                if m == metric:
                    ranked.append(vals.tolist())
                continue
            ci = interval(vals.tolist())
            row[f"{m}_mean"] = ci.mean
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            row[f"{m}_ci95_lo"], row[f"{m}_ci95_hi"] = ci.lo, ci.hi
            if m == metric:
                ranked.append(vals.tolist())
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_values"] = ranked
    # reliable first: by the share of diverged seeds, then by the metric over the seeds that did not
    # diverge, so a group that won with one seed and blew up with another never ranks as best
    table = table.sort_values(f"{metric}_mean", ascending=lower, na_position="last", kind="stable")
    table = table.sort_values("diverged_rate", kind="stable").reset_index(drop=True)
    return _against_best(table, metric)


def _against_best(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """p_vs_best: Welch's two-sided p of each group against the best group (the first with a value);
    same_as_best: the best itself, and any group as reliable as it (the same diverged rate) whose
    difference is not significant at 5% or cannot be tested (fewer than 2 seeds on either side)."""
    ok = table[f"{metric}_mean"].notna()
    p_vals, same = [], []
    best = int(ok.to_numpy().argmax()) if ok.any() else None
    for i, row in table.iterrows():
        if best is None or not ok[i]:
            p_vals.append(math.nan)
            same.append(False)
            continue
        if i == best:
            p_vals.append(math.nan)
            same.append(True)
            continue
        test = welch(row["_values"], table.at[best, "_values"])
        p_vals.append(test.p)
        reliable = row["diverged_rate"] == table.at[best, "diverged_rate"]
        same.append(bool(reliable and (not test.testable or test.p >= ALPHA)))
    table["p_vs_best"], table["same_as_best"] = p_vals, same
    # groups whose test against the best cannot run: fewer than 2 seeds (with a value) on either side
    table.attrs["too_few"] = [i for i, v in enumerate(table["_values"]) if ok[i] and len(v) < 2]
    return table.drop(columns=["_values"])


def groups(runs: pd.DataFrame, by: list[str]):
    """(values tuple, frame) per distinct combination of ``by``, in first-seen order."""
    if not by:
        yield (), runs
        return
    keys = runs[by].apply(lambda r: tuple(hashable(v) for v in r), axis=1)
    for key in dict.fromkeys(keys):
        yield key, runs[keys == key]


def hashable(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return v.item() if hasattr(v, "item") else v


def lr_sensitivity(runs: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame | None:
    """Wortsman et al. 2023: per combination of the factors other than train.lr, each seed's LR
    sensitivity (``seed_sensitivities``) averaged over seeds: the one number compare, the claims, the
    figures and the docs give. ``curve`` is the seed mean of the capped loss at each rate, for the
    figure. Lower is more forgiving. None unless train.lr is a factor."""
    if LR not in by:
        return None
    loss_metric = metric if metric in LOSSES else "final_val_loss"
    others = [k for k in by if k != LR]
    rows = []
    for key, g in groups(runs, others):
        cap, curve = lr_curve(g, loss_metric)
        per_seed = seed_sensitivities(g, loss_metric)
        if len(curve) < 2 or not per_seed:
            continue
        best_lr = min(curve, key=curve.get)
        row = dict(zip(others, key))
        row.update({"lrs": len(curve), "best_lr": best_lr, "best_loss": curve[best_lr], "cap": cap,
                    "lr_sensitivity": sum(per_seed.values()) / len(per_seed), "seeds": len(per_seed),
                    "curve": sorted(curve.items())})
        rows.append(row)
    if not rows:
        return None
    return pd.DataFrame(rows).sort_values("lr_sensitivity", kind="stable").reset_index(drop=True)


def capped_losses(runs: pd.DataFrame, loss_metric: str = "final_val_loss") -> list[tuple[float, float, float]]:
    """(lr, capped loss, cap) per run: the loss capped at the run's loss at initialisation (its step-1
    training loss, ``initial_loss``; ln V for runs made before 0.5.0 recorded it), as Wortsman et al.
    cap it; a diverged run (or one without a loss) counts as its cap."""
    ln_v = math.log(float(pd.to_numeric(runs["vocab_size"], errors="coerce").max()))
    init = runs["initial_loss"] if "initial_loss" in runs else pd.Series([None] * len(runs), index=runs.index)
    out = []
    for lr, d, v, c in zip(runs[LR], runs["diverged"].astype(bool), runs[loss_metric].map(none_if_missing),
                           init.map(none_if_missing)):
        cap = float(c) if c is not None and math.isfinite(float(c)) else ln_v
        loss = cap if (d or v is None or not math.isfinite(float(v))) else min(float(v), cap)
        out.append((float(lr), loss, cap))
    return out


def lr_curve(runs: pd.DataFrame, loss_metric: str = "final_val_loss") -> tuple[float, dict[float, float]]:
    """(the mean cap, {lr: mean over the runs of the capped loss})."""
    rows = capped_losses(runs, loss_metric)
    by_lr: dict[float, list[float]] = {}
    for lr, loss, _ in rows:
        by_lr.setdefault(lr, []).append(loss)
    cap = sum(c for *_, c in rows) / len(rows) if rows else math.nan
    return cap, {lr: sum(v) / len(v) for lr, v in sorted(by_lr.items())}


def seed_sensitivities(runs: pd.DataFrame, loss_metric: str = "final_val_loss") -> dict:
    """{seed: the mean over that seed's learning rates of the capped loss minus its minimum}, for the
    seeds with at least two rates."""
    out = {}
    for seed, g in runs.groupby("seed", sort=True):
        _, curve = lr_curve(g, loss_metric)
        if len(curve) >= 2:
            out[seed] = sum(curve.values()) / len(curve) - min(curve.values())
    return out


def compare(paths=("results",), by: list[str] | str | None = None, metric: str = "final_val_loss",
            filters: list[str] | None = None, metrics: list[str] | None = None, pool: bool = False) -> Comparison:
    """Read, filter, group and aggregate. ``by=None`` groups by the factors that vary (among the
    runs before filtering, so a filtered table still shows which configuration each row is).
    Keys may be given by their last part (``norm``) where that is unambiguous. Runs that differ
    in a key ``by`` leaves out are refused unless ``pool=True`` (then averaged, with a note)."""
    if metric in SPEED:
        raise NormbenchError(f"{metric} is not a ranking metric: {SPEED_NOTE}", key="--metric")
    if metric not in COMPARED:
        raise NormbenchError(f"unknown metric {metric!r}{suggest(metric, COMPARED)}; expected one of "
                             f"{', '.join(m for m in COMPARED if m not in SPEED)}", key="--metric")
    runs, notes, sources = collect(list(paths))
    if runs.empty:
        raise NormbenchError("no finished runs to compare yet", file=", ".join(map(str, paths)))
    everything = runs[runs["status"].isin(store.DONE)]
    runs = apply_filters(runs, parse_filters(filters, runs.columns))
    crashed = runs[runs["status"] == "crashed"]
    done = runs[runs["status"].isin(store.DONE)].copy()
    if done.empty:
        raise NormbenchError(f"no finished runs to compare (only {count(crashed, 'crashed run')})",
                             file=", ".join(map(str, paths)))
    done["diverged"] = done["diverged"].astype(bool)
    auto = varied_factors(done)
    auto_by = by is None
    if by is None:
        # the factors of the whole set, so that a filter leaving one configuration still names it
        by = [k for k in varied_factors(everything) if k in done] if filters else auto
        by += [k for k in auto if k not in by]
    else:
        valid = config_keys() + ["recipe"]
        by = [resolve_key(b.strip(), valid, "--by") for b in (by.split(",") if isinstance(by, str) else by)]
        pooled = [k for k in auto if k not in by]
        if pooled and not pool:
            raise NormbenchError(pooling_refusal(done, by, pooled), key="--by")
        if pooled:
            notes.append(f"pooled over {', '.join(pooled)} (they vary but are not in --by; --pool was given)")
    chosen = bool(metrics)
    metrics = list(dict.fromkeys((metrics or default_metrics(done)) + [metric]))
    if "train_causal_leak" in done and (pd.to_numeric(done["train_causal_leak"], errors="coerce") > LEAK_TOL).any():
        notes.append(LEAK_NOTE)
    if any(m in SPEED for m in metrics):
        notes.append(SPEED_NOTE)
    if metric not in done or pd.to_numeric(done[metric], errors="coerce").isna().all():
        why = (": bits per byte need text, and token files and the symbolic tasks carry none (their losses are "
               "in nats per token)") if metric.endswith("_bpb") else ""
        notes.append(f"no run has {metric}{why}; nothing is ranked by it")
    c = _build(done, crashed, by, metric, metrics, notes, sources)
    c.auto_by, c.metrics_chosen = auto_by, chosen
    c.unfiltered = everything if filters else None
    c.request = {"paths": [str(p) for p in paths], "by": None if auto_by else list(by), "metric": metric,
                 "filters": list(filters or []), "pool": pool}
    return c


def pooling_refusal(done: pd.DataFrame, by: list[str], pooled: list[str]) -> str:
    """Why runs are not averaged together, and how to split them."""
    names = short_names(by + pooled)
    values = {k: sorted({plain(v) for v in done[k]}) for k in pooled}
    differ = "; ".join(f"{k} ({', '.join(values[k][:4])}{', ...' if len(values[k]) > 4 else ''})" for k in pooled)
    first = pooled[0]
    return (f"the runs differ in keys --by leaves out: {differ}; averaging them would mix different "
            f"experiments. Add them to --by (--by {','.join(names[k] for k in by + pooled)}), keep one value "
            f"(--filter {names[first]}={values[first][0]}), or pass --pool to average over them")


def default_metrics(runs: pd.DataFrame) -> list[str]:
    """The default columns (measures.py's ``column``): always; where some run measured them; where some
    run has a value above 0 (a leak of future tokens, excursions above ln V + margin)."""
    def values(m):
        return pd.to_numeric(runs[m], errors="coerce") if m in runs else pd.Series(dtype=float)
    return default_columns(lambda m: values(m).notna().any(), lambda m: (values(m) > LEAK_TOL).any())


def _build(done: pd.DataFrame, crashed: pd.DataFrame, by: list[str], metric: str, metrics: list[str],
           notes: list[str], sources: list[str]) -> Comparison:
    done = done.copy()
    for b in by:
        if b not in done:
            done[b] = None
    table = aggregate(done, by, metrics, metric)
    if table.attrs.get("too_few") and len(table) > 1:
        few = [group_label(table.iloc[i], by) for i in table.attrs["too_few"]]
        notes.append(f"too few seeds to test against the best (fewer than 2 that did not diverge): "
                     f"{'; '.join(few)}; same_as_best is true for them by default, not by evidence")
    sens = lr_sensitivity(done, by, metric)
    if sens is not None:
        others = [k for k in by if k != LR]
        lookup = {tuple(hashable(r[k]) for k in others): r["lr_sensitivity"] for _, r in sens.iterrows()}
        table["lr_sensitivity"] = [lookup.get(tuple(hashable(r[k]) for k in others), math.nan)
                                   for _, r in table.iterrows()]
    done["group"] = done[by].apply(lambda r: group_label(r, by), axis=1) if by else "all runs"
    return Comparison(by=by, metric=metric, metrics=metrics, table=table, runs=done, crashed=crashed,
                      sensitivity=sens, notes=notes, sources=sources)

