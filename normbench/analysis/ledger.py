"""The claims ledger: every claim judged on its recipe's finished runs (the schema is claims.py).

The rule (docs/claims.md says the same in words):

- **Settings.** A claim is judged in every setting of the keys that vary among its runs besides
  those it names and the seed. A metric taken at initialisation is never split by keys that act
  only after step 0 (``catalog.AFTER_INIT``), and each seed counts once there.
- **Pairing, by design.** Where the arms of a setting hold the same seeds (a seed fixes the batch
  order, the validation windows and, where shapes match, the initial weights), the test is on the
  per-seed differences: a paired t-test. Welch's t-test where the seeds differ or the claim says
  ``paired: false``. A loss of a run that diverged is the worst value: the test is then a rank test
  (Wilcoxon's signed-rank, or Mann-Whitney's U). Rates (``diverged``, ``stalled``): Fisher's exact test.
- **Scale.** Multiplicative metrics are compared as logs (``claims.LOG_SCALE``) and reported as
  ratios of geometric means; a claim may set ``scale``.
- **Per setting**, with d on the test's scale and m the margin (a log factor on the log scale),
  one-sided p-values at 5%:
  directional and interaction: p = P(d > m) [held], p_against = P(d < m) [not held];
  noninferior (d = candidate - reference): p = P(d < m), p_against = P(d > m);
  same: p = max(P(d > -m), P(d < m)) (TOST), p_against = 2 min(P(d > m), P(d < -m)) (the 95%
  interval outside (-m, m)).
- **Across settings** (``across: every``, the default): p is the largest of the settings' p (an
  intersection-union test: held only where it holds everywhere); p_against is the Holm-adjusted
  smallest, so one significant contradiction refutes the claim. ``across: average`` runs one test of
  the mean contrast over settings, blocked by setting (per seed where paired).
- **Many claims.** p and p_against are Holm-adjusted over the claims of the ledger printed
  (``p_adjusted``); ``held`` when p_adjusted < 0.05, ``not held`` when the adjusted p_against is,
  otherwise ``inconclusive``.
- **Seeds needed** (inconclusive claims): per arm, for a one-sided 5% test with 80% power at the 80%
  upper confidence bound of the spread, to show the claim's ``effect`` (directional, interaction)
  or, assuming no true difference, to fit inside the margin (same, noninferior).
- **Settled claims** (``normbench claims --settle``, settle.py): a setting with a second stage is
  judged by Stein's two-stage test.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..catalog import AFTER_INIT
from ..claims import CLAIMS_FILE, Claim, parse_claims
from ..measures import AT_INIT, BINARY, run_value
from .evidence import evidence_text
from ..errors import NormbenchError
from .stats import (ALPHA, Contrast, combine, holm, paired, rates, seeds_for, sigma_upper, stein,
                    tie_diff, unpaired)

SETTLE_FILE = "settle.yaml"  # the second stages of settled claims (settle.py), beside claims.yaml
COLUMNS = ["claim", "source", "recipe", "test", "verdict", "evidence", "p", "p_adjusted", "p_against",
           "p_against_adjusted", "seeds", "seeds_needed", "metric", "settings"]


def select(runs: pd.DataFrame, selector: dict[str, list]) -> pd.DataFrame:
    from .compare import matches

    keep = runs.index == runs.index
    for key, values in selector.items():
        if key not in runs:
            return runs.iloc[0:0]
        keep &= runs[key].map(lambda v: any(matches(v, str(x)) for x in values)).to_numpy(dtype=bool)
    return runs[keep]


# ---------------------------------------------------------------------------------------------
# values: one per seed of an arm


def arm(runs: pd.DataFrame, claim: Claim) -> dict:
    """{seed: value} of one arm on the claim's scale (lr_sensitivity: per seed over the rates)."""
    from .compare import seed_sensitivities

    if claim.metric == "lr_sensitivity":
        vals = seed_sensitivities(runs) if len(runs) else {}
    else:
        vals = {}
        for _, r in runs.iterrows():
            v = run_value(r, claim.metric)
            if v is not None:
                vals.setdefault(r["seed"], []).append(v)
        # several runs of one seed in an arm: a metric taken at init repeats (the first counts), else the mean
        vals = {s: (v[0] if claim.metric in AT_INIT else sum(v) / len(v)) for s, v in vals.items()}
    if claim.scale == "log":
        vals = {s: (math.log(v) if v > 0 else (math.inf if v == math.inf else math.nan)) for s, v in vals.items()}
    return {s: v for s, v in vals.items() if not math.isnan(v)}


def seeds_of(runs: pd.DataFrame) -> set:
    return set(runs["seed"]) if len(runs) else set()


# ---------------------------------------------------------------------------------------------
# one setting


def cells(claim: Claim, runs: pd.DataFrame) -> list[pd.DataFrame]:
    """The arms' runs: [a, b], or for an interaction [a at larger, b at larger, a at smaller, b at smaller]."""
    a, b = select(runs, claim.a), select(runs, claim.b)
    if claim.kind != "interaction":
        return [a, b]
    return [select(a, claim.larger_at), select(b, claim.larger_at), select(a, claim.smaller_at),
            select(b, claim.smaller_at)]


def is_paired(claim: Claim, parts: list[pd.DataFrame]) -> bool:
    """Paired by design: the claim allows it and every arm holds the same seeds (not by the values)."""
    seeds = [seeds_of(p) for p in parts]
    return claim.paired and claim.metric not in BINARY and bool(seeds[0]) and all(s == seeds[0] for s in seeds)


def tied_failures(values: list[dict]) -> bool:
    """Some seed failed (diverged) in every arm of a pair: a tie, not a measured 0."""
    common = set.intersection(*(set(v) for v in values)) if values else set()
    return any(sum(math.isinf(v[s]) for v in values) >= 2 for s in common)


def seed_contrasts(claim: Claim, values: list[dict]) -> dict:
    """{seed: that seed's contrast} over the seeds every arm has: a - b, or (aL - bL) - (aS - bS)."""
    common = set.intersection(*(set(v) for v in values)) if values else set()
    out = {}
    for s in sorted(common):
        if claim.kind == "interaction":
            aL, bL, aS, bS = (v[s] for v in values)
            out[s] = tie_diff(tie_diff(aL, bL), tie_diff(aS, bS))
        else:
            out[s] = tie_diff(values[0][s], values[1][s])
    return {s: v for s, v in out.items() if not math.isnan(v)}


def contrast(claim: Claim, parts: list[pd.DataFrame], stage1: list | None = None) -> tuple[Contrast, list[dict]]:
    """The setting's test, and each arm's {seed: value}."""
    values = [arm(p, claim) for p in parts]
    if claim.metric in BINARY:
        return rates(list(values[0].values()), list(values[1].values())), values
    if stage1:  # a settled setting is judged by Stein's test, on the seeds every arm has, whatever else
        diffs = seed_contrasts(claim, values)
        order = [s for s in stage1 if s in diffs] + sorted(s for s in diffs if s not in stage1)
        return stein([diffs[s] for s in order], len([s for s in stage1 if s in diffs])), values
    if is_paired(claim, parts):
        diffs = seed_contrasts(claim, values)
        return paired(list(diffs.values()), rank=tied_failures(values)), values
    if claim.kind == "interaction":
        return interaction_unpaired(values), values
    return unpaired(list(values[0].values()), list(values[1].values())), values


def interaction_unpaired(values: list[dict]) -> Contrast:
    """(aL - bL) - (aS - bS) from four independent arms: Welch-Satterthwaite."""
    import statistics

    lists = [list(v.values()) for v in values]
    if any(len(x) < 2 for x in lists) or any(math.isinf(x) for v in lists for x in v):
        return Contrast("Welch t", math.nan, tuple(len(x) for x in lists))
    means = [sum(x) / len(x) for x in lists]
    vs = [(statistics.variance(x) / len(x), len(x) - 1) for x in lists]
    var = sum(v for v, _ in vs)
    df = var ** 2 / sum(v ** 2 / f for v, f in vs) if var > 0 else math.inf
    return Contrast("Welch t", (means[0] - means[1]) - (means[2] - means[3]), tuple(len(x) for x in lists),
                    se=math.sqrt(var), df=df)


def p_values(claim: Claim, c: Contrast) -> tuple[float, float]:
    """(p for the claim, p against it) in one setting (see the module docstring)."""
    m = claim.shift
    if claim.kind == "same":
        return max(c.p_above(-m), c.p_below(m)), min(1.0, 2 * min(c.p_above(m), c.p_below(-m)))
    if claim.kind == "noninferior":
        return c.p_below(m), c.p_above(m)
    return c.p_above(m), c.p_below(m)


def seeds_needed(claim: Claim, c: Contrast, values: list[dict]) -> int | None:
    """Seeds per arm to settle an inconclusive setting, sized for the pre-specified effect (see the
    module docstring); None where no effect of interest is given or the test is not a t-test."""
    import statistics

    if c.method not in ("paired t", "Welch t") or claim.metric in BINARY:
        return None
    if c.method == "paired t":
        diffs = seed_contrasts(claim, values)
        if len(diffs) < 2:
            return None
        sigma, k, n0 = statistics.stdev(diffs.values()), 1.0, len(diffs)
        sd_dof = n0 - 1
    else:
        lists = [list(v.values()) for v in values]
        if any(len(x) < 2 for x in lists):
            return None
        n0 = min(len(x) for x in lists)
        sd_dof = sum(len(x) - 1 for x in lists)  # the pooled sd's degrees of freedom
        sigma = math.sqrt(sum(statistics.variance(x) * (len(x) - 1) for x in lists) / sd_dof)
        k = 4.0 if claim.kind == "interaction" else 2.0
    gap = effect_gap(claim)
    n = seeds_for(sigma_upper(sigma, sd_dof + 1), gap, k=k, two_sided_power=claim.kind == "same") if gap else None
    return max(n, n0 + 1) if n else None


def effect_gap(claim: Claim) -> float | None:
    """How far the true contrast must lie from the test's boundary: effect - margin for directional and
    interaction claims (the effect of interest: ``effect``), the margin for same and noninferior ones
    (assuming no true difference)."""
    if claim.kind in ("same", "noninferior"):
        return claim.shift
    if claim.effect is None:
        return None
    effect = math.log(claim.effect) if claim.scale == "log" else claim.effect
    return effect - claim.shift if effect > claim.shift else None


# ---------------------------------------------------------------------------------------------
# a claim


def setting_keys(claim: Claim, runs: pd.DataFrame) -> list[str]:
    """The keys whose values make the claim's settings."""
    from .compare import varied_factors

    named = {k for k, vs in claim.where.items() if len(vs) == 1} | {k for sel in claim.selectors() for k in sel}
    if claim.metric == "lr_sensitivity":
        named.add("train.lr")
    if claim.metric in AT_INIT:  # a setting must not count the same evidence twice
        named |= AFTER_INIT
    if not len(runs):
        return []
    from .compare import plain

    # a key zipped with a named one (data.seq_len with train.batch_size) is implied by it: it varies
    # with the arms, not within them, and splits nothing
    by = [k for k in named if k in runs and k != "seed"]
    groups = [g for _, g in runs.groupby([runs[k].map(plain) for k in by])] if by else [runs]
    return [k for k in varied_factors(runs) if k not in named and k != "recipe"
            and any(g[k].map(plain).nunique() > 1 for g in groups)]


def evaluate(claim: Claim, runs: pd.DataFrame, settled: dict | None = None) -> dict:
    """One claim against the finished runs of its recipe: p for and against it (before the ledger's
    Holm step), the per-setting tests, the evidence text, the seeds used and needed."""
    from .compare import plain, short_names

    runs = select(runs, claim.where) if claim.where else runs
    # the settings come from the claim's own runs: a key that varies only in other arms splits nothing
    own = pd.concat(cells(claim, runs)) if len(runs) else runs
    runs = own.drop_duplicates(subset="run_id") if "run_id" in own else own
    others = setting_keys(claim, runs)
    names = short_names(others)
    keys = sorted({tuple(plain(r[k]) for k in others) for _, r in runs.iterrows()}) if others else [()]
    settings = []
    for key in keys:
        label = ", ".join(f"{names[k]}={v}" for k, v in zip(others, key))
        sub = select(runs, {k: [v] for k, v in zip(others, key)}) if others else runs
        parts = cells(claim, sub)
        if any(not len(p) for p in parts):  # a setting some arm was not run in: nothing to compare there
            continue
        stage1 = (settled or {}).get(label, {}).get("first_stage_seeds")
        c, values = contrast(claim, parts, stage1)
        p_for, p_against = p_values(claim, c)
        verdict = "held" if p_for < ALPHA else "not held" if p_against < ALPHA else "inconclusive"
        settings.append({"setting": label, "contrast": c, "values": values, "parts": parts, "p": p_for,
                         "p_against": p_against, "verdict": verdict,
                         "needed": seeds_needed(claim, c, values) if verdict == "inconclusive" else None})
    if claim.across == "average" and len(settings) > 1:
        c = average_contrast(claim, settings)
        p_for, p_against = p_values(claim, c)
        method = c.method
    else:
        ps = [s["p"] for s in settings]
        p_for = max(ps) if ps and not any(math.isnan(p) for p in ps) else math.nan
        against = [p for p in holm([s["p_against"] for s in settings]) if not math.isnan(p)]
        p_against = min(against) if against else math.nan
        method = ", ".join(dict.fromkeys(s["contrast"].method for s in settings))
    needed = [s["needed"] for s in settings if s["needed"]]
    seeds = max((min(s["contrast"].n) for s in settings), default=0)
    return {"p": p_for, "p_against": p_against, "settings": settings, "test": test_name(claim, method),
            "seeds": seeds, "seeds_needed": max(needed) if needed else None}


def average_contrast(claim: Claim, settings: list[dict]) -> Contrast:
    """``across: average``: per seed the mean of its setting contrasts (paired designs), else the mean of
    the settings' contrasts with Welch-Satterthwaite degrees of freedom (``stats.combine``; rank and
    Stein contrasts do not combine and leave it untestable)."""
    if all(s["contrast"].method == "paired t" for s in settings):
        per = [seed_contrasts(claim, s["values"]) for s in settings]
        common = set.intersection(*(set(p) for p in per))
        c = paired([sum(p[s] for p in per) / len(per) for s in sorted(common)])
        return Contrast("paired t (blocked by setting)", c.d, c.n, c.se, c.df)
    return combine([s["contrast"] for s in settings], "Welch t (blocked by setting)")


def test_name(claim: Claim, method: str) -> str:
    unit = f"×{claim.margin:g}" if claim.scale == "log" else f"{claim.margin:g}"
    kind = {"directional": "directional" + (f", margin {unit}" if claim.shift else ""),
            "same": f"equivalence ±{unit} (TOST)", "noninferior": f"non-inferiority, margin {unit}",
            "interaction": "interaction" + (f", margin {unit}" if claim.shift else "")}[claim.kind]
    scale = ", log scale" if claim.scale == "log" else ""
    across = ", averaged over settings" if claim.across == "average" else ""
    return f"{kind}; {method}{scale}{across}"


# ---------------------------------------------------------------------------------------------
# the ledger


def sources_for(paths, out="results") -> list[tuple]:
    """(recipe name, claims, results folder, the run ids judged, the settled stages) for each path: a
    recipe file (its claims and the runs of the recipe as written; its results in OUT/<name>) or a
    results folder (every recipe folder under it holding a claims.yaml, which names the recipe's
    runs). A claim is judged on those runs only (and on the second-stage runs of settle.yaml), never
    on other runs the folder holds: an earlier version of the recipe, or a shortened look at it."""
    import yaml

    from .compare import find_recipe_dirs
    from ..recipe import load_recipe

    found = []
    for path in map(Path, paths):
        if path.is_file():
            rec = load_recipe(path)
            folder = Path(out) / rec.name
            found.append((rec.name, rec.claims, folder, {r.run_id for r in rec.runs}, read_settled(folder)))
        elif path.is_dir():
            for d in find_recipe_dirs(path):
                if (d / CLAIMS_FILE).exists():
                    try:
                        doc = yaml.safe_load((d / CLAIMS_FILE).read_text()) or {}
                    except yaml.YAMLError as e:
                        raise NormbenchError(f"malformed YAML: {e}", file=str(d / CLAIMS_FILE)) from None
                    if isinstance(doc, list):  # a bare list of claims: checked on every run of the folder
                        doc = {"claims": doc}
                    found.append((d.name, parse_claims(doc.get("claims")), d, set(doc.get("runs") or []) or None,
                                  read_settled(d)))
        else:
            raise NormbenchError("no such recipe file or results folder", file=str(path))
    return found


def read_settled(folder: Path) -> dict:
    """settle.yaml: {claim statement: {setting: {first_stage_seeds, ..., runs}}}; {} when none."""
    import yaml

    path = Path(folder) / SETTLE_FILE
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise NormbenchError(f"malformed YAML: {e}", file=str(path)) from None


def settled_ids(settled: dict, statement: str | None = None) -> set:
    """The second-stage run ids of one claim (``statement``), or of every claim."""
    return {rid for claim, per in settled.items() if statement in (None, claim)
            for st in per.values() for rid in st.get("runs", [])}


def judge(sources) -> list[tuple]:
    """(recipe name, claim, its finished runs, evaluate()'s result) for every claim of ``sources``."""
    from .compare import collect
    from ..sweep.store import DONE

    out = []
    for src in sources:
        recipe_name, claims, results = src[:3]
        run_ids = src[3] if len(src) > 3 else None
        settled = src[4] if len(src) > 4 else {}
        runs = collect([results])[0] if results.is_dir() and any(results.iterdir()) else pd.DataFrame()
        done = runs[runs["status"].isin(DONE)] if len(runs) else runs
        for c in claims:
            # the recipe's runs as written, plus this claim's own second stage: another claim's added
            # seeds never change this claim's design (its pairing, its n)
            mine = done
            if run_ids is not None and len(done):
                mine = done[done["run_id"].isin(set(run_ids) | settled_ids(settled, c.statement))]
            res = evaluate(c, mine, settled.get(c.statement)) if len(mine) else None
            out.append((recipe_name, c, mine, res))
    return out


def ledger(sources) -> pd.DataFrame:
    """Every claim of ``sources`` (``sources_for``) judged on its finished runs, as a DataFrame with
    ``COLUMNS``; p and p_against Holm-adjusted over the claims of this ledger, the verdict from them."""
    judged = judge(sources)
    rows = []
    for recipe_name, c, _, res in judged:
        if res is None:
            rows.append({"claim": c.statement, "source": c.source, "recipe": recipe_name, "test": test_name(c, "-"),
                         "evidence": "no finished runs yet", "p": math.nan, "p_against": math.nan, "seeds": 0,
                         "seeds_needed": None, "metric": c.metric, "settings": 0})
            continue
        rows.append({"claim": c.statement, "source": c.source, "recipe": recipe_name, "test": res["test"],
                     "evidence": evidence_text(c, res), "p": res["p"], "p_against": res["p_against"],
                     "seeds": res["seeds"], "seeds_needed": res["seeds_needed"], "metric": c.metric,
                     "settings": len(res["settings"])})
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("verdict", "p_adjusted", "p_against_adjusted")])
    df["p_adjusted"] = holm(df["p"].tolist()) if len(df) else []
    df["p_against_adjusted"] = holm(df["p_against"].tolist()) if len(df) else []
    df["verdict"] = [verdict(r) for _, r in df.iterrows()]
    df.loc[df["verdict"] != "inconclusive", "seeds_needed"] = None
    return df[COLUMNS]


def verdict(row) -> str:
    if row["p_adjusted"] < ALPHA:
        return "held"
    if row["p_against_adjusted"] < ALPHA:
        return "not held"
    return "inconclusive"


def claims_ledger(paths=("recipes",), out="results") -> pd.DataFrame:
    """The Python API: the ledger of recipe files or results folders (as ``normbench claims``)."""
    return ledger(sources_for(paths, out))
