"""The claims ledger: every claim judged on its recipe's finished runs (the schema is claims.py).

The rule (docs/claims.md says the same in words):

- **Settings.** A claim is judged in every setting of the keys that vary among its runs besides
  those it names and the seed. A metric taken at initialisation is never split by keys that act
  only after step 0 (``catalog.AFTER_INIT``), and each seed counts once there.
- **Pairing, by design.** Where the arms of a setting hold the same seeds (a seed fixes the batch
  order, the validation windows and, where shapes match, the initial weights), the test is on the
  per-seed differences: a paired t-test. Welch's t-test where the seeds differ or the claim says
  ``paired: false``. A loss of a run that diverged is the worst value: the test is then a rank test
  (Wilcoxon's signed-rank, or Mann-Whitney's U); where one arm diverged in every run and the other
  in none, the divergence rate is the evidence (McNemar's exact test paired by seed, else
  Fisher's). Rates (``diverged``, ``stalled``): McNemar's exact test paired by seed, else Fisher's.
- **Scale.** Multiplicative metrics are compared as logs (``claims.LOG_SCALE``) and reported as
  ratios of geometric means; a claim may set ``scale``.
- **Per setting**, with d on the test's scale and m the margin (a log factor on the log scale),
  one-sided p-values at 5%:
  directional and interaction: p = P(d > m) [held], p_against = P(d < m) [not held], and with an
  effect of interest e > m, p_short = P(d < e) [not held: short of its effect];
  noninferior (d = candidate - reference): p = P(d < m), p_against = P(d > m);
  same: p = max(P(d > -m), P(d < m)) (TOST), p_against = 2 min(P(d > m), P(d < -m)) (the 95%
  interval outside (-m, m)).
- **Across settings** (``across: every``, the default): p is the largest of the settings' p (an
  intersection-union test: held only where it holds everywhere); p_against is the Holm-adjusted
  smallest, so one significant contradiction refutes the claim. ``across: average`` runs one test of
  the mean contrast over settings, blocked by setting (per seed where paired).
- **Looks** (``evaluate``): the first look is the seeds the recipe ran; each later look of the
  claim's design (sequential.py) counts once every arm of every setting holds its seeds.
- **Families, the sequential p, the verdict and seeds needed**: decide.py. Seeds needed are sized
  here (``seeds_needed``), at the level decide.py gives: one test at the claim's Holm step, 80%
  power at the 80% upper confidence bound of the spread, for the claim's ``effect`` (directional,
  interaction) or, assuming no true difference, to fit inside the margin (same, noninferior).
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..catalog import AFTER_INIT
from ..claims import CLAIMS_FILE, Claim, parse_claims
from ..measures import AT_INIT, BINARY, DISCRETE, run_value
from .evidence import evidence_text
from ..errors import NormbenchError
from .stats import (ALPHA, Contrast, combine, exact_seeds, holm, paired, paired_rates, rates, seeds_for,
                    sigma_upper, tie_diff, unpaired)

SETTLE_FILE = "settle.yaml"  # each settled claim's design and looks (settle.py), beside claims.yaml
COLUMNS = ["claim", "source", "recipe", "test", "verdict", "evidence", "p", "p_adjusted", "family", "q_ledger",
           "p_against", "p_against_adjusted", "seeds", "seeds_needed", "looks", "metric", "settings"]


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
    if claim.kind == "bound":
        return [select(runs, claim.a)]
    a, b = select(runs, claim.a), select(runs, claim.b)
    if claim.kind != "interaction":
        return [a, b]
    return [select(a, claim.larger_at), select(b, claim.larger_at), select(a, claim.smaller_at),
            select(b, claim.smaller_at)]


def is_paired(claim: Claim, parts: list[pd.DataFrame]) -> bool:
    """Paired by design: the claim allows it and every arm holds the same seeds (not by the values)."""
    seeds = [seeds_of(p) for p in parts]
    return claim.paired and bool(seeds[0]) and all(s == seeds[0] for s in seeds)


def tied_failures(values: list[dict]) -> bool:
    """Some seed failed (diverged) in every arm of a pair: a tie, not a measured 0."""
    common = set.intersection(*(set(v) for v in values)) if values else set()
    return any(sum(math.isinf(v[s]) for v in values) >= 2 for s in common)


def seed_contrasts(claim: Claim, values: list[dict]) -> dict:
    """{seed: that seed's contrast} over the seeds every arm has: a - b, or (aL - bL) - (aS - bS)."""
    if claim.kind == "bound":  # one arm: its own values, against the bound
        return {s: v for s, v in sorted(values[0].items()) if not math.isnan(v)}
    common = set.intersection(*(set(v) for v in values)) if values else set()
    out = {}
    for s in sorted(common):
        if claim.kind == "interaction":
            aL, bL, aS, bS = (v[s] for v in values)
            out[s] = tie_diff(tie_diff(aL, bL), tie_diff(aS, bS))
        else:
            out[s] = tie_diff(values[0][s], values[1][s])
    return {s: v for s, v in out.items() if not math.isnan(v)}


def contrast(claim: Claim, parts: list[pd.DataFrame]) -> tuple[Contrast, list[dict]]:
    """The setting's test, and each arm's {seed: value}."""
    values = [arm(p, claim) for p in parts]
    if claim.kind == "bound":  # one sample against the bound: Student's t, signed-rank if a run diverged
        vals = list(seed_contrasts(claim, values).values())
        c = paired(vals, rank=claim.metric in DISCRETE or any(math.isinf(v) for v in vals))
        return (replace(c, method="one-sample t") if c.method == "paired t" else c), values
    if claim.metric in BINARY:
        return rate_test(claim, parts, values[0], values[1]), values
    if divergence_decides(claim, values):
        rate = [{s: float(math.isinf(v)) for s, v in vals.items()} for vals in values]
        c = rate_test(claim, parts, *rate)  # a diverged run's loss is never replaced by a number
        return Contrast(f"{c.method} (divergence)", c.d, c.n, data=c.data), values
    if constant(values):
        return Contrast("untestable: no arm varies", math.nan, tuple(len(v) for v in values)), values
    # a discrete metric (a share of 24 heads: steps of 1/24) is tested by ranks: equal per-seed
    # differences are its granularity, not a spread of 0 that a t-test would call exact
    rank = claim.metric in DISCRETE
    if is_paired(claim, parts):
        diffs = seed_contrasts(claim, values)
        return paired(list(diffs.values()), rank=rank or tied_failures(values)), values
    if claim.kind == "interaction":
        return interaction_unpaired(values), values
    return unpaired(list(values[0].values()), list(values[1].values()), rank=rank), values


def constant(values: list[dict]) -> bool:
    """Every arm's runs give one and the same value (a measurement that never fires: 0 against 0):
    no test can say anything, and none is run (never p = 1)."""
    vals = [x for v in values for x in v.values()]
    return len(vals) > 2 and all(x == vals[0] for x in vals) and math.isfinite(vals[0])


def divergence_decides(claim: Claim, values: list[dict]) -> bool:
    """Every run of one arm diverged and every run of the other finished: a loss has nothing to
    compare, the divergence rate is the evidence (two arms; an interaction keeps its rank test)."""
    if claim.kind == "interaction" or not all(values):
        return False
    failed = [[math.isinf(v) for v in vals.values()] for vals in values]
    return (all(failed[0]) and not any(failed[1])) or (all(failed[1]) and not any(failed[0]))


def rate_test(claim: Claim, parts: list[pd.DataFrame], a: dict, b: dict) -> Contrast:
    """Two arms' 0/1 outcomes ({seed: 0 or 1}): McNemar's exact test where the arms hold the same
    seeds, else Fisher's."""
    if is_paired(claim, parts) and set(a) == set(b):
        return paired_rates(a, b)
    return rates(list(a.values()), list(b.values()))


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


def p_values(claim: Claim, c: Contrast) -> tuple[float, float, float]:
    """(p for the claim, p against it, p that it falls short of its effect of interest) in one setting
    (see the module docstring). A divergence rate decides on its direction alone: a diverged arm is
    worse than the other by more than any margin, and short of no effect."""
    if "(divergence)" in c.method:
        above, below = c.p_above(0.0), c.p_below(0.0)
        if claim.kind == "same":
            return 1.0, min(1.0, 2 * min(above, below)), math.nan
        if claim.kind == "noninferior":
            return below, above, math.nan
        return above, below, math.nan
    m = claim.shift
    if claim.kind == "bound":  # the arm's mean below (or above) the bound
        if claim.above:
            return c.p_above(m), c.p_below(m), math.nan
        return c.p_below(m), c.p_above(m), math.nan
    if claim.kind == "same":
        return max(c.p_above(-m), c.p_below(m)), min(1.0, 2 * min(c.p_above(m), c.p_below(-m))), math.nan
    if claim.kind == "noninferior":
        return c.p_below(m), c.p_above(m), math.nan
    effect = effect_of(claim)
    return c.p_above(m), c.p_below(m), (c.p_below(effect) if effect is not None else math.nan)


def effect_of(claim: Claim) -> float | None:
    """The effect of interest on the test's scale (directional and interaction claims with an effect
    above the margin), else None."""
    if claim.kind in ("same", "noninferior", "bound") or claim.effect is None:
        return None
    effect = math.log(claim.effect) if claim.scale == "log" else claim.effect
    return effect if effect > claim.shift else None


def seeds_needed(claim: Claim, c: Contrast, values: list[dict], alpha: float = ALPHA) -> int | None:
    """Seeds per arm to settle an inconclusive setting in one test at ``alpha`` (the family's Holm step),
    sized for the pre-specified effect (see the module docstring); a divergence rate: the seeds at
    which a complete separation reaches alpha. None where no effect of interest is given or the test
    has no sizing."""
    import statistics

    if c.method.endswith("(divergence)"):
        return exact_seeds(alpha, c.method.startswith("McNemar"))
    if c.method not in ("paired t", "one-sample t", "Welch t") or claim.metric in BINARY:
        return None
    if c.method in ("paired t", "one-sample t"):
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
    gap = abs(c.d - claim.shift) if claim.kind == "bound" else effect_gap(claim)  # a bound: the observed distance
    n = seeds_for(sigma_upper(sigma, sd_dof + 1), gap, k=k, two_sided_power=claim.kind == "same",
                  alpha=alpha) if gap else None
    return max(n, n0 + 1) if n else None


def effect_gap(claim: Claim) -> float | None:
    """How far the true contrast must lie from the test's boundary: effect - margin for directional and
    interaction claims (the effect of interest: ``effect``), the margin for same and noninferior ones
    (assuming no true difference)."""
    if claim.kind in ("same", "noninferior"):
        return claim.shift
    effect = effect_of(claim)
    return None if effect is None else effect - claim.shift


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


def evaluate_look(claim: Claim, runs: pd.DataFrame) -> dict:
    """One claim at one look (its runs of the look's seeds): p for, against and short of its effect
    (before the family's step), the per-setting tests, the seeds used."""
    from .compare import plain, short_names

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
        c, values = contrast(claim, parts)
        p_for, p_against, p_short = p_values(claim, c)
        verdict = "held" if p_for < ALPHA else "not held" if p_against < ALPHA else "inconclusive"
        settings.append({"setting": label, "contrast": c, "values": values, "parts": parts, "p": p_for,
                         "p_against": p_against, "p_short": p_short, "verdict": verdict})
    if claim.across == "average" and len(settings) > 1:
        c = average_contrast(claim, settings)
        p_for, p_against, p_short = p_values(claim, c)
        method = c.method
    else:
        ps = [s["p"] for s in settings]
        p_for = max(ps) if ps and not any(math.isnan(p) for p in ps) else math.nan
        p_against = _refuted([s["p_against"] for s in settings])
        p_short = _refuted([s["p_short"] for s in settings])
        method = ", ".join(dict.fromkeys(s["contrast"].method for s in settings))
    seeds = min((min(s["contrast"].n) for s in settings), default=0)  # per arm, in every setting
    return {"p": p_for, "p_against": p_against, "p_short": p_short, "settings": settings,
            "test": test_name(claim, method), "seeds": seeds}


def _refuted(ps: list[float]) -> float:
    """One setting's significant contradiction refutes a universal claim: the Holm-adjusted smallest."""
    adjusted = [p for p in holm(ps) if not math.isnan(p)]
    return min(adjusted) if adjusted else math.nan


def complete(part: pd.DataFrame, seeds: list) -> bool:
    """Every seed of a look holds as many of the arm's runs as any other (an arm over several learning
    rates has each rate at each seed)."""
    counts = part.groupby("seed").size()
    return set(counts.index) == set(seeds) and counts.nunique() == 1


def evaluate(claim: Claim, runs: pd.DataFrame, first: int | None = None, design: dict | None = None) -> dict:
    """One claim against its finished runs, look by look: the first look the seeds the recipe ran
    (``first`` per arm, default all), each later look of its design (sequential.py) where every arm of
    every setting holds the look's seeds. Returns the looks (``evaluate_look`` each), the design and
    the seeds in look order; the family's step (decide.py) says where it stopped."""
    from .sequential import Design, design_for

    runs = select(runs, claim.where) if claim.where else runs
    # the settings come from the claim's own runs: a key that varies only in other arms splits nothing
    own = pd.concat(cells(claim, runs)) if len(runs) else runs
    runs = own.drop_duplicates(subset="run_id") if "run_id" in own else own
    order = sorted(seeds_of(runs))
    n0 = first or len(order)
    if design:  # fixed in settle.yaml when the first look was planned: never recomputed
        des = Design(tuple(design["looks"]), design.get("spending", "pocock"))
    else:
        des = design_for(n0, claim.looks, claim.spending)
    looks = [evaluate_look(claim, runs[runs["seed"].isin(order[:n0])] if len(runs) else runs)]
    for n in des.looks[1:]:
        if len(order) < n:
            break
        sub = runs[runs["seed"].isin(order[:n])]
        res = evaluate_look(claim, sub)
        if not res["settings"] or not all(complete(p, order[:n]) for s in res["settings"] for p in s["parts"]):
            break  # the look is not complete yet: its runs are planned (settle.yaml) or still to come
        looks.append(res)
    return {**looks[-1], "looks": looks, "design": des, "order": order}


def average_contrast(claim: Claim, settings: list[dict]) -> Contrast:
    """``across: average``: per seed the mean of its setting contrasts (paired designs), else the mean of
    the settings' contrasts with Welch-Satterthwaite degrees of freedom (``stats.combine``; rank and
    Stein contrasts do not combine and leave it untestable)."""
    if all(s["contrast"].method in ("paired t", "one-sample t") for s in settings):
        per = [seed_contrasts(claim, s["values"]) for s in settings]
        common = set.intersection(*(set(p) for p in per))
        c = paired([sum(p[s] for p in per) / len(per) for s in sorted(common)])
        return Contrast("paired t (blocked by setting)", c.d, c.n, c.se, c.df)
    return combine([s["contrast"] for s in settings], "Welch t (blocked by setting)")


def test_name(claim: Claim, method: str) -> str:
    unit = f"×{claim.margin:g}" if claim.scale == "log" else f"{claim.margin:g}"
    if claim.kind == "bound":
        scale = ", log scale" if claim.scale == "log" else ""
        return f"bound: {'above' if claim.above else 'below'} {claim.margin:g}; {method}{scale}"
    kind = {"directional": "directional" + (f", margin {unit}" if claim.shift else ""),
            "same": f"equivalence ±{unit} (TOST)", "noninferior": f"non-inferiority, margin {unit}",
            "interaction": "interaction" + (f", margin {unit}" if claim.shift else "")}[claim.kind]
    scale = ", log scale" if claim.scale == "log" else ""
    across = ", averaged over settings" if claim.across == "average" else ""
    return f"{kind}; {method}{scale}{across}"


# ---------------------------------------------------------------------------------------------
# the ledger


def sources_for(paths, out="results") -> list[tuple]:
    """(recipe name, claims, results folder, the run ids judged, settle.yaml, the recipe's seeds or None)
    for each path: a
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
            found.append((rec.name, rec.claims, folder, {r.run_id for r in rec.runs}, read_settled(folder),
                          sorted({r.cfg.seed for r in rec.runs})))
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
                                  read_settled(d), doc.get("seeds")))
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
    """The run ids settle added to one claim (``statement``), or to every claim: its looks' runs (and
    the second-stage runs of a 0.7.0 settle.yaml, one entry per setting, which are seeds of the same
    arms like any other)."""
    out = set()
    for claim, entry in settled.items():
        if statement not in (None, claim) or not isinstance(entry, dict):
            continue
        parts = entry["looks"] if isinstance(entry.get("looks"), list) else \
            [v for v in entry.values() if isinstance(v, dict)]
        for part in parts:
            out |= set(part.get("runs") or [])
    return out


def judge(sources) -> list[tuple]:
    """(recipe name, claim, its finished runs, evaluate()'s result) for every claim of ``sources``."""
    from .compare import collect
    from ..sweep.store import DONE

    out = []
    for src in sources:
        recipe_name, claims, results = src[:3]
        run_ids = src[3] if len(src) > 3 else None
        settled = src[4] if len(src) > 4 else {}
        planned = src[5] if len(src) > 5 else None
        runs = collect([results])[0] if results.is_dir() and any(results.iterdir()) else pd.DataFrame()
        done = runs[runs["status"].isin(DONE)] if len(runs) else runs
        for c in claims:
            # the recipe's runs as written, plus this claim's own looks: another claim's added seeds
            # never change this claim's design (its pairing, its looks)
            mine = done
            if run_ids is not None and len(done):
                mine = done[done["run_id"].isin(set(run_ids) | settled_ids(settled, c.statement))]
            entry = settled.get(c.statement)
            design = entry.get("design") if isinstance(entry, dict) and isinstance(entry.get("looks"), list) else None
            # the first look is fixed: settle.yaml's once a look was planned, else the recipe's seeds
            # (not however many have finished), else the finished seeds of the recipe as written
            first = (design and entry.get("first")) or (len(planned) if planned else None)
            if first is None and run_ids is not None and len(done):
                first = len(seeds_of(_own(c, done[done["run_id"].isin(set(run_ids))])))
            res = evaluate(c, mine, first, design) if len(mine) else None
            out.append((recipe_name, c, mine, res))
    return out


def _own(claim: Claim, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of a claim's arms (within its ``where``)."""
    runs = select(runs, claim.where) if claim.where and len(runs) else runs
    return pd.concat(cells(claim, runs)) if len(runs) else runs
