"""Claims as data: a recipe's ``claims:`` list, each checked against its runs with a verdict.

A claim names its source, the statement in words, and a check::

    claims:
      - source: Xiong et al. 2020
        statement: Without warmup, Post-LN ends at least 0.05 nats above Pre-LN
        metric: final_val_loss            # a compare metric, or diverged (1 for a run that diverged)
        where: {train.warmup_steps: 0}    # optional: the runs the claim is about
        higher: {model.placement: post}   # the group claimed higher on the metric...
        lower: {model.placement: pre}     # ...than this one
        margin: 0.05                      # by at least this much (default 0)
      - source: Zhang & Sennrich 2019
        statement: RMSNorm matches LayerNorm's loss within 0.03 nats
        metric: final_val_loss
        same: [{model.norm: rmsnorm}, {model.norm: layernorm}]
        margin: 0.03                      # equivalent within this (required for same)

The check runs in every setting of the other factors (the keys that vary among the claim's
runs besides those it names, and besides the seed), on the seeds of each side. A loss of a
run that diverged counts as ln V (the loss of a uniform guess), as in the LR sensitivity.

Verdict per setting (Welch's t-test, 5%; ``stats.py``):
- directional (higher/lower, difference d = higher − lower, margin m): ``held`` when d ≥ m and d
  differs from 0 significantly; ``not held`` when d < 0 significantly, or d < m and d − m < 0
  significantly; otherwise ``inconclusive``.
- same (margin m): ``held`` when the 90% interval of d lies inside (−m, m) (two one-sided tests
  at 5%); ``not held`` when d differs from 0 significantly and |d| ≥ m; otherwise ``inconclusive``.
- fewer than 2 seeds on a side: ``inconclusive`` (too few seeds).

Across settings: every setting held → ``held``; every one not held → ``not held``; some held and
some not held → ``mixed``; anything else → ``inconclusive``. An inconclusive verdict says how
many seeds per side the observed spread suggests (``stats.seeds_needed``: for a directional claim
to detect the observed difference, for an equivalence to fit its interval inside the margin).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import NormbenchError, Problems
from .stats import ALPHA, interval, seeds_needed, welch

CLAIM_KEYS = ("source", "statement", "metric", "where", "higher", "lower", "same", "margin")
CLAIMS_FILE = "claims.yaml"  # written into a recipe's results folder, so `normbench claims RESULTS` finds them
VERDICTS = ("held", "not held", "mixed", "inconclusive")
# metrics a claim may use besides compare's: per run, or (lr_sensitivity) per seed over the learning rates
DERIVED = {
    "diverged": "1 for a run that diverged, 0 otherwise (its mean is the diverged rate)",
    "grad_norm_init_last_over_first": "the FFN gradient norm at initialisation of the last block over the first's "
                                      "(Xiong et al. 2020: above 1 under Post-LN)",
    "lr_sensitivity": "per seed, over the learning rates of the group (train.lr must vary): the mean of "
                      "min(loss, ln V) minus the best (Wortsman et al. 2023), final_val_loss, a diverged run at ln V",
}


@dataclass(frozen=True)
class Claim:
    source: str
    statement: str
    metric: str
    where: dict[str, list]
    a: dict[str, list]  # higher, or the first of same
    b: dict[str, list]  # lower, or the second of same
    kind: str  # "directional" or "same"
    margin: float = 0.0
    raw: dict = field(default_factory=dict, compare=False)  # as written, for claims.yaml


def parse_claims(raw: Any, runs: list | None = None) -> list[Claim]:
    """Validate a recipe's ``claims:`` (every problem reported, one line each). ``runs``: the recipe's
    RunSpecs, to check that each group selects some run."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise NormbenchError("expected a list of claims (see README: Claims)", key="claims")
    problems, out = Problems(), []
    for i, item in enumerate(raw):
        where = f"claims[{i}]"
        with problems.check():
            out.append(_claim(item, where, runs))
    problems.raise_any()
    return out


def _claim(item: Any, where: str, runs) -> Claim:
    from .compare import METRICS

    if not isinstance(item, dict):
        raise NormbenchError("expected a mapping with source, statement, metric and higher/lower or same", key=where)
    problems = Problems()
    for k in item:
        if k not in CLAIM_KEYS:
            from .config import suggest

            problems.add(NormbenchError(f"unknown key{suggest(str(k), CLAIM_KEYS)}; expected {', '.join(CLAIM_KEYS)}",
                                        key=f"{where}.{k}"))
    for k in ("source", "statement"):
        if not isinstance(item.get(k), str) or not item.get(k).strip():
            problems.add(NormbenchError("expected a non-empty string", key=f"{where}.{k}"))
    metric = item.get("metric")
    metrics = [m for m in METRICS if m not in ("tokens_per_s", "wall_s")] + list(DERIVED)
    if metric not in metrics:
        problems.add(NormbenchError(f"expected one of {', '.join(metrics)}, got {metric!r}", key=f"{where}.metric"))
    margin = item.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        problems.add(NormbenchError(f"expected a number >= 0, got {margin!r}", key=f"{where}.margin"))
        margin = 0.0
    sel = {}
    with problems.check():
        sel["where"] = _selector(item.get("where") or {}, f"{where}.where", runs, allow_empty=True)
    if "same" in item:
        kind = "same"
        if "higher" in item or "lower" in item:
            problems.add(NormbenchError("give either higher and lower, or same", key=f"{where}.same"))
        same = item["same"]
        if not (isinstance(same, list) and len(same) == 2):
            problems.add(NormbenchError("expected a list of two groups, e.g. [{model.norm: rmsnorm}, "
                                        "{model.norm: layernorm}]", key=f"{where}.same"))
            same = [{}, {}]
        for j, side in enumerate(("a", "b")):
            with problems.check():
                sel[side] = _selector(same[j], f"{where}.same[{j}]", runs)
        if not item.get("margin"):
            problems.add(NormbenchError("a same claim needs margin > 0: equivalent within how much?",
                                        key=f"{where}.margin"))
    else:
        kind = "directional"
        for side, name in (("a", "higher"), ("b", "lower")):
            if name not in item:
                problems.add(NormbenchError("expected higher and lower (groups of runs), or same", key=f"{where}.{name}"))
                continue
            with problems.check():
                sel[side] = _selector(item[name], f"{where}.{name}", runs)
    problems.raise_any()
    return Claim(item["source"].strip(), item["statement"].strip(), metric, sel["where"], sel["a"], sel["b"], kind,
                 float(margin), raw=item)


def _selector(raw: Any, where: str, runs, allow_empty: bool = False) -> dict[str, list]:
    """{dotted key: accepted values}; keys are recipe keys (short names resolve), values scalars or lists."""
    from .compare import _matches, config_keys, resolve_key

    if not isinstance(raw, dict) or (not raw and not allow_empty):
        raise NormbenchError("expected a mapping of recipe keys to values, e.g. {model.norm: rmsnorm}", key=where)
    out = {}
    for k, v in raw.items():
        key = resolve_key(str(k), config_keys(), where)
        values = v if isinstance(v, list) else [v]
        if not values or any(isinstance(x, (dict, list)) for x in values):
            raise NormbenchError(f"expected a value or a list of values for {key}, got {v!r}", key=where)
        out[key] = values
    if runs is not None and out:
        from .config import get_dotted

        if not any(all(any(_matches(get_dotted(r.cfg.to_dict(), k), str(x)) for x in vs) for k, vs in out.items())
                   for r in runs):
            shown = ", ".join(f"{k}={'|'.join(map(str, vs))}" for k, vs in out.items())
            raise NormbenchError(f"no run of this recipe has {shown}", key=where)
    return out


# ---------------------------------------------------------------------------------------------
# evaluation


def _select(runs, selector: dict[str, list]):
    from .compare import _matches

    keep = runs.index == runs.index
    for key, values in selector.items():
        col = runs[key] if key in runs else None
        if col is None:
            return runs.iloc[0:0]
        keep &= col.map(lambda v: any(_matches(v, str(x)) for x in values)).to_numpy(dtype=bool)
    return runs[keep]


def _values(runs, metric: str) -> list[float]:
    """The metric per run (per seed for lr_sensitivity); a diverged run's loss counts as ln V, and
    ``diverged`` is 1 or 0."""
    from .compare import LOSS_METRICS, OVER_ALL_RUNS

    if metric == "lr_sensitivity":
        return _lr_sensitivity_per_seed(runs)
    out = []
    for _, r in runs.iterrows():
        diverged = bool(r.get("diverged"))
        if metric == "diverged":
            out.append(1.0 if diverged else 0.0)
        elif metric == "grad_norm_init_last_over_first":
            prof = r.get("grad_norm_init_by_layer") or []
            if len(prof) >= 2 and prof[0] and prof[-1] is not None:
                out.append(prof[-1] / prof[0])
        elif diverged and metric in LOSS_METRICS:
            out.append(math.log(float(r["vocab_size"])))
        elif diverged and metric not in OVER_ALL_RUNS:
            continue  # not measured for a diverged run
        else:
            v = r.get(metric)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out.append(float(v))
    return out


def _lr_sensitivity_per_seed(runs) -> list[float]:
    """Wortsman et al.'s LR sensitivity of each seed's curve over the learning rates in ``runs``."""
    from .compare import lr_curve

    out = []
    for _, g in runs.groupby("seed"):
        _, curve = lr_curve(g)
        if len(curve) >= 2:
            out.append(sum(curve.values()) / len(curve) - min(curve.values()))
    return out


def setting_verdict(claim: Claim, a: list[float], b: list[float]) -> tuple[str, dict]:
    """The verdict in one setting, and its evidence (means, intervals, the difference, p)."""
    w = welch(a, b)
    ev = {"a": interval(a), "b": interval(b), "diff": w.diff, "p": w.p, "lo": w.lo, "hi": w.hi, "needed": None}
    if not w.testable:
        return "inconclusive", ev
    m = claim.margin
    if claim.kind == "directional":
        if w.diff >= m and w.p < ALPHA:
            return "held", ev
        short = welch(a, b, shift=m)
        if (w.diff < 0 and w.p < ALPHA) or (w.diff < m and short.p < ALPHA):
            return "not held", ev
        ev["needed"] = seeds_needed(a, b, w.diff if w.diff > 0 else m or w.diff)
        return "inconclusive", ev
    ninety = welch(a, b, confidence=0.90)
    if -m < ninety.lo and ninety.hi < m:
        return "held", ev
    if w.p < ALPHA and abs(w.diff) >= m:
        return "not held", ev
    # equivalence: the interval of d must shrink inside the margin, so the effect is the room left, m - |d|
    ev["needed"] = seeds_needed(a, b, m - abs(w.diff), one_sided=True) if abs(w.diff) < m else None
    return "inconclusive", ev


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == "held" for v in verdicts):
        return "held"
    if verdicts and all(v == "not held" for v in verdicts):
        return "not held"
    if "held" in verdicts and "not held" in verdicts:
        return "mixed"
    return "inconclusive"


def evaluate(claim: Claim, runs) -> dict:
    """One claim against the finished runs of its recipe: verdict, evidence, per-setting verdicts."""
    from .compare import _plain, short_names, varied_factors

    runs = _select(runs, claim.where) if claim.where else runs
    # a where-key with several values still splits settings: the claim must hold at each of them
    named = {k for k, vs in claim.where.items() if len(vs) == 1} | set(claim.a) | set(claim.b) | \
        ({"train.lr"} if claim.metric == "lr_sensitivity" else set())
    others = [k for k in varied_factors(runs) if k not in named and k != "recipe"] if len(runs) else []
    a_runs, b_runs = _select(runs, claim.a), _select(runs, claim.b)
    settings = []
    keys = sorted({tuple(_plain(r[k]) for k in others) for _, r in runs.iterrows()}) if others else [()]
    for key in keys:
        sel = {k: [v] for k, v in zip(others, key)}
        a = _values(_select(a_runs, sel), claim.metric)
        b = _values(_select(b_runs, sel), claim.metric)
        verdict, ev = setting_verdict(claim, a, b)
        settings.append({"setting": ", ".join(f"{short_names(others)[k]}={v}" for k, v in zip(others, key)),
                         "verdict": verdict, **ev})
    verdict = combine([s["verdict"] for s in settings])
    needed = [s["needed"] for s in settings if s["needed"]]
    return {"verdict": verdict, "settings": settings, "evidence": evidence_text(claim, settings),
            "seeds_needed": max(needed) if verdict == "inconclusive" and needed else None}


def evidence_text(claim: Claim, settings: list[dict]) -> str:
    from .compare import fmt_value

    def side(ci):
        if ci.n == 0:
            return "no runs"
        half = "" if math.isnan(ci.lo) else f" ± {fmt_value(ci.half, 2)}"
        return f"{fmt_value(ci.mean)}{half} (n={ci.n})"

    names = ("higher", "lower") if claim.kind == "directional" else ("first", "second")
    parts = []
    for s in settings:
        where = f"{s['setting']}: " if s["setting"] else ""
        test = "too few seeds" if math.isnan(s["p"]) else \
            f"Δ {s['diff']:+.3g}, 95% CI [{s['lo']:+.3g}, {s['hi']:+.3g}], Welch p = {s['p']:.2g}"
        more = f"; ~{s['needed']} seeds per side would settle it" if s.get("needed") else \
            ("; the difference is too small for more seeds to settle it" if s["verdict"] == "inconclusive"
             and not math.isnan(s["p"]) else "")
        parts.append(f"{where}{names[0]} {side(s['a'])} vs {names[1]} {side(s['b'])}; {test} → {s['verdict']}{more}")
    return " | ".join(parts)


def sources_for(paths, out="results") -> list[tuple]:
    """(recipe name, claims, results folder, the recipe's run ids) for each path: a recipe file (its
    claims and runs; its results in OUT/<name>) or a results folder (every recipe folder under it
    holding a claims.yaml, which names the recipe's runs). A claim is checked on the recipe's own
    runs only, not on other runs the folder may hold (an earlier version of the recipe)."""
    from pathlib import Path

    import yaml

    from .compare import find_recipe_dirs
    from .recipe import load_recipe

    found = []
    for path in map(Path, paths):
        if path.is_file():
            rec = load_recipe(path)
            found.append((rec.name, rec.claims, Path(out) / rec.name, {r.run_id for r in rec.runs}))
        elif path.is_dir():
            for d in find_recipe_dirs(path):
                if (d / CLAIMS_FILE).exists():
                    try:
                        doc = yaml.safe_load((d / CLAIMS_FILE).read_text()) or {}
                    except yaml.YAMLError as e:
                        raise NormbenchError(f"malformed YAML: {e}", file=str(d / CLAIMS_FILE)) from None
                    if isinstance(doc, list):  # a bare list of claims: checked on every run of the folder
                        doc = {"claims": doc}
                    found.append((d.name, parse_claims(doc.get("claims")), d, set(doc.get("runs") or []) or None))
        else:
            raise NormbenchError("no such recipe file or results folder", file=str(path))
    return found


def ledger(sources) -> "pd.DataFrame":  # noqa: F821
    """Every claim of ``sources`` (``sources_for``) checked against its finished runs, as a DataFrame:
    claim, source, recipe, verdict, evidence, metric, settings, seeds_needed."""
    import pandas as pd

    from .compare import collect
    from .store import DONE

    rows = []
    for recipe_name, claims, results, run_ids in (s if len(s) == 4 else (*s, None) for s in sources):
        runs = collect([results])[0] if results.is_dir() and any(results.iterdir()) else pd.DataFrame()
        done = runs[runs["status"].isin(DONE)] if len(runs) else runs
        if run_ids is not None and len(done):
            done = done[done["run_id"].isin(run_ids)]
        for c in claims:
            res = evaluate(c, done) if len(done) else {"verdict": "inconclusive", "evidence": "no finished runs yet",
                                                        "settings": [], "seeds_needed": None}
            rows.append({"claim": c.statement, "source": c.source, "recipe": recipe_name, "verdict": res["verdict"],
                         "evidence": res["evidence"], "metric": c.metric, "settings": len(res["settings"]),
                         "seeds_needed": res["seeds_needed"]})
    return pd.DataFrame(rows, columns=["claim", "source", "recipe", "verdict", "evidence", "metric", "settings",
                                       "seeds_needed"])


def claims_ledger(paths=("recipes",), out="results") -> "pd.DataFrame":  # noqa: F821
    """The Python API: the ledger of recipe files or results folders (as ``normbench claims``)."""
    return ledger(sources_for(paths, out))


def to_markdown(df) -> str:
    from .compare import markdown_table

    rows = [[r["claim"], r["source"], r["recipe"], f"**{r['verdict']}**", r["evidence"]] for _, r in df.iterrows()]
    return markdown_table(["claim", "source", "recipe", "verdict", "evidence"], rows)
