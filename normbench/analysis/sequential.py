"""Group-sequential seeds: looks at pre-set seed counts, alpha spent by a Lan-DeMets function.

A claim is tested at looks n_1 < n_2 < ... < n_K seeds per arm (``SCHEDULE`` by default, its first
look the seeds the recipe ran). Under the null its one-sided statistic behaves like a Brownian
motion in the information t_k = n_k / n_K, and a spending function alpha(t) says how much of the
level may be spent by look k. The boundary c_k solves

    P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = alpha(t_k) - alpha(t_{k-1})

(Armitage, McPherson and Rowe's recursion, computed here on a grid). A look's test (a t-test, a
rank or exact test) rejects when its one-sided p is at most the nominal level 1 - Phi(c_k): the
nominal-level approach of Jennison & Turnbull (2000, ch. 3), whose error the simulation test checks.

- ``pocock``: alpha * ln(1 + (e - 1) t), nearly equal nominal levels; spends early, so a large
  effect stops at the first look (the default: most of the ledger's effects are large or absent).
- ``obf``: 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)), O'Brien-Fleming's shape: almost nothing early.

Efficacy boundaries only: a futility or contrary stop is non-binding, so it can only lower the
error rate of "held".

Many claims of a family (a paper's claims in one recipe): each claim's **repeated p-value**, the
smallest level at which its design would have rejected at some look it reached, is Holm-adjusted
within the family. That is Holm's graph in Maurer & Bretz's (2013) sequentially rejective procedure
for group-sequential trials (a rejected claim's level passes to the rest, and they may be re-tested
at the looks they reached), which controls the family-wise error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

SCHEDULE = (3, 6, 10, 16, 24)  # seeds per arm at each look, by default
SPENDINGS = ("pocock", "obf")


def spent(alpha: float, t: float, spending: str) -> float:
    """Alpha spent by information fraction t in (0, 1]."""
    from scipy import stats

    if t >= 1:
        return alpha
    if spending == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    return 2 - 2 * stats.norm.cdf(stats.norm.isf(alpha / 2) / math.sqrt(t))


@dataclass(frozen=True)
class Design:
    """Looks (seeds per arm) and the spending function: fixed before the first look."""
    looks: tuple[int, ...] = SCHEDULE
    spending: str = "pocock"

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.looks[-1] for n in self.looks)

    def nominal(self, alpha: float) -> tuple[float, ...]:
        """The nominal one-sided level of each look for a design at level ``alpha``."""
        return nominal_levels(alpha, self.fractions, self.spending)

    def level_for(self, k: int, p: float) -> float:
        """The smallest design level at which look k (0-based) rejects a one-sided p (its look's
        nominal level is then p): the inverse of ``nominal``, interpolated on a log grid."""
        return level_for(k, p, self.fractions, self.spending)

    def to_dict(self) -> dict:
        return {"looks": list(self.looks), "spending": self.spending}


def design_for(first: int, looks=None, spending: str = "pocock") -> Design:
    """A claim's design: its first look at the seeds the recipe ran, then the schedule's larger counts."""
    schedule = tuple(looks) if looks else SCHEDULE
    later = tuple(n for n in schedule if n > first)
    return Design((max(1, first),) + later, spending)


GRID_STEP = 0.04  # on the score scale S_k = Z_k sqrt(t_k), whose sd is at most 1


@lru_cache(maxsize=4096)
def nominal_levels(alpha: float, fractions: tuple, spending: str) -> tuple[float, ...]:
    """Nominal one-sided levels 1 - Phi(c_k) of the efficacy boundaries (see the module docstring)."""
    import numpy as np
    from scipy import optimize, special, stats

    x = np.arange(-9.0, 9.0 + GRID_STEP / 2, GRID_STEP)  # the grid of S
    out, density, prev_t, prev_spent = [], None, 0.0, 0.0
    for t in fractions:
        target = spent(alpha, t, spending) - prev_spent
        if density is None:  # the first look: S_1 ~ N(0, t)
            c = float(stats.norm.isf(target)) if target > 0 else math.inf
            density = stats.norm.pdf(x, scale=math.sqrt(t))
        else:
            sd = math.sqrt(t - prev_t)

            def crossing(c):  # P(not stopped before, S_k >= c sqrt(t))
                return float(np.trapezoid(density * special.ndtr((x - c * math.sqrt(t)) / sd), x))

            if target <= 0:
                c = math.inf
            else:
                hi = 12.0
                c = float(optimize.brentq(lambda v: crossing(v) - target, -12.0, hi, xtol=1e-10)) \
                    if crossing(-12.0) > target > crossing(hi) else math.inf
            density = _kernel(round(sd, 12)) @ density * GRID_STEP  # S_k given S_{k-1}
        out.append(float(stats.norm.sf(c)))
        # those that crossed stopped; the cell the boundary cuts keeps its share below it, so the
        # levels move smoothly with alpha rather than in grid steps
        density = density * np.clip((c * math.sqrt(t) - x) / GRID_STEP + 0.5, 0.0, 1.0)
        prev_t, prev_spent = t, spent(alpha, t, spending)
    return tuple(out)


@lru_cache(maxsize=64)
def _kernel(sd: float):
    """The density of S_k at each grid point given S_{k-1} at each grid point, an increment of sd."""
    import numpy as np
    from scipy import stats

    x = np.arange(-9.0, 9.0 + GRID_STEP / 2, GRID_STEP)
    return stats.norm.pdf((x[:, None] - x[None, :]) / sd) / sd


LEVELS = tuple(10 ** (-12 + 11.7 * i / 96) for i in range(97))  # 1e-12 .. 0.5, for the inverse


@lru_cache(maxsize=256)
def _table(fractions: tuple, spending: str):
    """Per look, ln(level) as a monotone cubic (PCHIP) in ln(nominal level), and the largest nominal."""
    import numpy as np
    from scipy.interpolate import PchipInterpolator

    rows = np.log(np.maximum(np.array([nominal_levels(a, fractions, spending) for a in LEVELS]), 1e-300))
    log_a = np.log(np.array(LEVELS))
    out = []
    for k in range(len(fractions)):
        col = rows[:, k]
        keep = np.concatenate([[True], np.diff(col) > 0])  # levels so small the look spends nothing: dropped
        out.append((PchipInterpolator(col[keep], log_a[keep]), col[keep][-1]))
    return out


def level_for(k: int, p: float, fractions: tuple, spending: str) -> float:
    if math.isnan(p):
        return math.nan
    if p <= 0:
        return 0.0
    if k == 0:  # the first look spends alpha(t_1) exactly: invert in closed form
        t = fractions[0]
        per = spent(1.0, t, spending) if spending == "pocock" else None
        if per is not None:
            return min(1.0, p / per)
    inverse, top = _table(fractions, spending)[k]
    if math.log(p) >= top:
        return 1.0
    return float(min(1.0, math.exp(inverse(math.log(p)))))


def repeated_p(design: Design, ps: list[float]) -> float:
    """The claim's sequential p: the null probability that its design, with a paired t-test at each
    look, rejects at a level at most the smallest level at which it rejects here (ps[k]: look k's p).
    The nominal-level approach alone (``level_for``) treats t statistics as normal ones: with 2 degrees
    of freedom at the first look it would hold 5.4% of null claims at 5% (200,000 simulated claims
    at 3, 6, 10, 16, 24 seeds), so the level is calibrated by simulation (``calibrated``)."""
    levels = [design.level_for(k, p) for k, p in enumerate(ps) if not math.isnan(p)]
    return calibrated(design, min(levels)) if levels else math.nan


CALIBRATION_PATHS = 200_000  # null claims simulated per design: the calibrated 5% is 5% +- 0.05%
CHUNK = 50_000
CALIBRATION_TAIL = 50  # below the level of the 50th smallest simulated claim, the ratio there is used


@lru_cache(maxsize=64)
def _null_levels(looks: tuple, spending: str):
    """The smallest design level at which each of CALIBRATION_PATHS null claims (per-seed differences
    N(0, 1), a paired t-test at each look) is rejected at some look, sorted (a fixed seed: the same
    calibration on every machine)."""
    import numpy as np
    from scipy import stats

    design = Design(looks, spending)
    rng = np.random.default_rng(31)
    chunks = []
    for _ in range(CALIBRATION_PATHS // CHUNK):
        x = rng.standard_normal((CHUNK, looks[-1]))
        best = np.ones(CHUNK)
        for k, n in enumerate(looks):
            part = x[:, :n]
            t = part.mean(axis=1) / (part.std(axis=1, ddof=1) / math.sqrt(n))
            log_p = np.log(np.maximum(stats.t.sf(t, n - 1), 1e-300))
            inverse, top = _table(design.fractions, spending)[k]
            level = np.where(log_p >= top, 1.0, np.exp(inverse(np.minimum(log_p, top))))
            level = np.nan_to_num(level, nan=1.0)  # a look of one seed has no t statistic: it rejects nothing
            best = np.fmin(best, np.clip(level, 0.0, 1.0))
        chunks.append(best)
    return np.sort(np.concatenate(chunks))


def calibrated(design: Design, level: float) -> float:
    """The null rate at which the design (paired t-tests at its looks) rejects at ``level`` or below:
    the empirical distribution of ``_null_levels``; in the far tail, ``level`` times the ratio at the
    CALIBRATION_TAIL-th smallest simulated claim."""
    import numpy as np

    if math.isnan(level) or level >= 1:
        return level
    null = _null_levels(design.looks, design.spending)
    tail = null[CALIBRATION_TAIL - 1]
    if level < tail:
        return min(1.0, level * CALIBRATION_TAIL / len(null) / tail)
    return float(np.searchsorted(null, level, side="right") / len(null))


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """Benjamini-Hochberg q-values (scipy.stats.false_discovery_control); NaN stays NaN."""
    import numpy as np
    from scipy import stats

    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        q = stats.false_discovery_control(np.array([pvalues[i] for i in idx]), method="bh")
        for i, v in zip(idx, q):
            out[i] = float(v)
    return out
