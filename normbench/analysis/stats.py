"""The statistics behind every comparison and claim, from scipy.stats (never hand-written distributions).

- ``interval``: a mean with its 95% confidence interval, Student's t over the n values
  (n - 1 degrees of freedom); n < 2 has no interval.
- ``welch``: Welch's unequal-variance t-test of two groups' means (two-sided p) and the 95%
  interval of their difference; either group with fewer than 2 values has no test.
- ``seeds_needed``: how many seeds per group would make an observed difference significant
  (a 5% test with 80% power at the observed spread, Student's t), for "inconclusive" verdicts.
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

from ..numbers import missing

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2


def interval(values, confidence: float = 0.95) -> Interval:
    from scipy import stats

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = statistics.stdev(vals)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, float(mean - half), float(mean + half), n)


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) - mean(b)
    p: float  # two-sided; NaN when either group has fewer than 2 values
    lo: float  # the interval of the difference (95% unless asked otherwise)
    hi: float
    na: int
    nb: int

    @property
    def testable(self) -> bool:
        return self.na >= 2 and self.nb >= 2


def welch(a, b, shift: float = 0.0, confidence: float = 0.95) -> Welch:
    """Welch's t-test of mean(a) - mean(b) against ``shift`` (0: are the means different?), with the
    ``confidence`` interval of the difference."""
    from scipy import stats

    a = [float(v) for v in a if v is not None and math.isfinite(float(v))]
    b = [float(v) for v in b if v is not None and math.isfinite(float(v))]
    if not a or not b:
        return Welch(math.nan, math.nan, math.nan, math.nan, len(a), len(b))
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, math.nan, math.nan, math.nan, len(a), len(b))
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:  # no spread at all: the difference is exact
        p = 1.0 if diff == shift else 0.0
        return Welch(diff, p, diff, diff, len(a), len(b))
    with warnings.catch_warnings():  # nearly identical values: scipy warns of precision loss, the p stands
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind([x - shift for x in a], b, equal_var=False)
    ci = res.confidence_interval(confidence)
    return Welch(diff, float(res.pvalue), float(ci.low) + shift, float(ci.high) + shift, len(a), len(b))


def seeds_needed(a, b, effect: float, one_sided: bool = False, limit: int = 1000) -> int | None:
    """Seeds per group for a 5% test (two-sided, or one-sided for an equivalence margin) to detect
    ``effect`` with 80% power, at the groups' observed spread (pooled sd), with Student's t at
    2n - 2 degrees of freedom. At least one more than the seeds there are (the estimate is noisy).
    None when the spread cannot be estimated, the effect is 0, or more than ``limit`` would be needed
    (the observed difference is too small for more seeds to settle anything)."""
    from scipy import stats

    a = [float(v) for v in a if v is not None and math.isfinite(float(v))]
    b = [float(v) for v in b if v is not None and math.isfinite(float(v))]
    if len(a) < 2 or len(b) < 2 or not effect or not math.isfinite(effect):
        return None
    var = (statistics.variance(a) * (len(a) - 1) + statistics.variance(b) * (len(b) - 1)) / (len(a) + len(b) - 2)
    have = max(len(a), len(b)) + 1
    if var == 0:
        return have
    q = 1 - ALPHA if one_sided else 1 - ALPHA / 2
    for n in range(2, limit + 1):
        df = 2 * n - 2
        if (stats.t.ppf(q, df) + stats.t.ppf(POWER, df)) * math.sqrt(var * 2 / n) <= abs(effect):
            return max(n, have)
    return None


# ---------------------------------------------------------------------------------------------
# the claims' tests: one contrast d between two arms, with one-sided p-values against any shift


@dataclass(frozen=True)
class Contrast:
    """An estimate d of (arm a - arm b) on the test's scale and the test behind it.

    ``method``: "paired t" (per-seed differences), "Welch t", "Wilcoxon signed-rank" or
    "Mann-Whitney U" (a failed run counts as the worst), "Fisher exact" (rates of independent arms)
    or "McNemar exact" (rates paired by seed). t-based contrasts carry se and df; rank and exact
    contrasts carry their data and answer p-values only."""
    method: str
    d: float
    n: tuple  # (pairs,) for paired tests, (n_a, n_b) otherwise
    se: float = math.nan
    df: float = math.nan
    data: tuple = ()  # rank tests: (differences,) or (a, b); Fisher: ((yes_a, no_a), (yes_b, no_b));
    # McNemar: (seeds with a yes only in a, seeds with a yes only in b)

    @property
    def testable(self) -> bool:
        if self.method.startswith(("Fisher exact", "McNemar exact")):
            return min(self.n) >= 1
        return min(self.n) >= 2 and (self.method.endswith("U") or self.method.startswith("Wilcoxon")
                                     or math.isfinite(self.df) or self.se == 0)

    def p_above(self, c: float = 0.0) -> float:
        """One-sided p-value for d > c."""
        return self._p(c, "greater")

    def p_below(self, c: float = 0.0) -> float:
        """One-sided p-value for d < c."""
        return self._p(c, "less")

    def _p(self, c: float, alternative: str) -> float:
        from scipy import stats

        if not self.testable:
            return math.nan
        if self.method.startswith("Fisher exact"):
            return float(stats.fisher_exact(self.data, alternative=alternative).pvalue)
        if self.method.startswith("McNemar exact"):  # the discordant pairs: a binomial at 1/2
            only_a, only_b = self.data
            if only_a + only_b == 0:
                return 1.0
            k = only_a if alternative == "greater" else only_b
            return float(stats.binomtest(k, only_a + only_b, 0.5, alternative="greater").pvalue)
        if self.method == "Wilcoxon signed-rank":
            diffs = [x - c for x in self.data[0]]
            if all(x == 0 for x in diffs):
                return 1.0
            return float(stats.wilcoxon(_finite_rank(diffs), alternative=alternative, zero_method="zsplit").pvalue)
        if self.method == "Mann-Whitney U":
            a, b = self.data
            a, b = _finite_rank([x - c for x in a], b)
            return float(stats.mannwhitneyu(a, b, alternative=alternative).pvalue)
        if self.se == 0:  # no spread at all: the difference is exact
            above = self.d > c
            return 0.0 if (above if alternative == "greater" else self.d < c) else 1.0
        t = (self.d - c) / self.se
        return float(stats.t.sf(t, self.df) if alternative == "greater" else stats.t.cdf(t, self.df))

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """The two-sided interval of d (t-based contrasts only; NaN otherwise)."""
        from scipy import stats

        if not math.isfinite(self.df) or not math.isfinite(self.se):
            return math.nan, math.nan
        half = stats.t.ppf(0.5 + confidence / 2, self.df) * self.se
        return self.d - half, self.d + half


def _finite_rank(a, b=None):
    """Replace +-inf (a failed run, the worst) by a finite value beyond every finite one, which keeps
    every rank: scipy's rank tests need finite numbers."""
    vals = [x for x in list(a) + list(b or []) if math.isfinite(x)]
    big = (max(abs(x) for x in vals) if vals else 1.0) * 10 + 1
    fix = (lambda xs: [x if math.isfinite(x) else math.copysign(big, x) for x in xs])
    return fix(a) if b is None else (fix(a), fix(b))


def tie_diff(x: float, y: float) -> float:
    """x - y, where a failure (+inf) on both sides is a tie (0), not NaN."""
    if math.isinf(x) and math.isinf(y) and x == y:
        return 0.0
    return x - y


def _clean(values) -> list[float]:
    return [float(v) for v in values if not missing(v if v is None else float(v))]


def paired(diffs, rank: bool = False) -> Contrast:
    """Per-seed differences: a paired t-test, or Wilcoxon's signed-rank test when one is infinite (a
    run that failed on one side only) or ``rank`` (a seed whose runs failed on both sides, a tie: a
    t-test must not take its 0 as a measured difference)."""
    diffs = _clean(diffs)
    n = len(diffs)
    if rank or any(math.isinf(x) for x in diffs):
        med = statistics.median(diffs) if diffs else math.nan  # inf where most pairs failed on one side
        return Contrast("Wilcoxon signed-rank", med, (n,), data=(tuple(diffs),))
    if n == 0:
        return Contrast("paired t", math.nan, (0,))
    d = sum(diffs) / n
    if n < 2:
        return Contrast("paired t", d, (n,))
    return Contrast("paired t", d, (n,), se=statistics.stdev(diffs) / math.sqrt(n), df=n - 1)


def unpaired(a, b, rank: bool = False) -> Contrast:
    """Welch's t-test of mean(a) - mean(b), or the Mann-Whitney U test when a value is infinite or
    ``rank`` (a discrete metric)."""
    a, b = _clean(a), _clean(b)
    if rank or any(math.isinf(x) for x in a + b):
        d = statistics.median(a) - statistics.median(b) if a and b else math.nan  # inf - inf: NaN, said as "-"
        return Contrast("Mann-Whitney U", d, (len(a), len(b)), data=(tuple(a), tuple(b)))
    if not a or not b:
        return Contrast("Welch t", math.nan, (len(a), len(b)))
    d = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Contrast("Welch t", d, (len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else math.inf
    return Contrast("Welch t", d, (len(a), len(b)), se=se, df=df)


def stratified(parts: list[tuple[list, list]]) -> Contrast:
    """Unpaired arms across several settings, one test blocked by setting: the mean over settings of
    each setting's mean difference, its se from the settings' variances, Welch-Satterthwaite df."""
    ds, vs = [], []
    for a, b in parts:
        a, b = _clean(a), _clean(b)
        if len(a) < 2 or len(b) < 2:
            return Contrast("Welch t (blocked by setting)", math.nan, (len(a), len(b)))
        ds.append(sum(a) / len(a) - sum(b) / len(b))
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        vs.append((va, len(a) - 1))
        vs.append((vb, len(b) - 1))
    k = len(ds)
    var = sum(v for v, _ in vs) / k ** 2
    df = sum(v for v, _ in vs) ** 2 / sum(v ** 2 / f for v, f in vs) if var > 0 else math.inf
    n = (sum(len(_clean(a)) for a, _ in parts), sum(len(_clean(b)) for _, b in parts))
    return Contrast("Welch t (blocked by setting)", sum(ds) / k, n, se=math.sqrt(var), df=df)


def rates(a, b) -> Contrast:
    """Two rates of 0/1 outcomes: the difference of proportions, Fisher's exact test."""
    a, b = _clean(a), _clean(b)
    table = ((int(sum(a)), len(a) - int(sum(a))), (int(sum(b)), len(b) - int(sum(b))))
    d = (sum(a) / len(a) if a else math.nan) - (sum(b) / len(b) if b else math.nan)
    return Contrast("Fisher exact", d, (len(a), len(b)), data=table)


def paired_rates(a: dict, b: dict) -> Contrast:
    """Two rates of 0/1 outcomes paired by seed ({seed: 0 or 1}): McNemar's exact test, a binomial at
    1/2 on the discordant seeds (yes in a only against yes in b only)."""
    common = sorted(set(a) & set(b))
    only_a = sum(1 for s in common if a[s] and not b[s])
    only_b = sum(1 for s in common if b[s] and not a[s])
    d = (only_a - only_b) / len(common) if common else math.nan
    return Contrast("McNemar exact", d, (len(common),), data=(only_a, only_b))


def combine(contrasts: list[Contrast], method: str) -> Contrast:
    """The mean of several settings' t-based contrasts, one test blocked by setting: d the mean of
    their d, its variance the sum of their se^2 over k^2, Welch-Satterthwaite degrees of freedom.
    Rank and exact contrasts do not combine: NaN (untestable)."""
    k = len(contrasts)
    if not k or any(not math.isfinite(c.se) or not math.isfinite(c.d) or c.method.startswith(("Wilcoxon", "Mann",
                                                                                                "Fisher", "McNemar"))
                    for c in contrasts):
        return Contrast(method, math.nan, (0,))
    var = sum(c.se ** 2 for c in contrasts) / k ** 2
    terms = [(c.se ** 2 / k ** 2) ** 2 / c.df for c in contrasts if c.se > 0 and math.isfinite(c.df)]
    df = var ** 2 / sum(terms) if var > 0 and terms else math.inf
    n = tuple(sum(c.n[i] if i < len(c.n) else 0 for c in contrasts) for i in range(max(len(c.n) for c in contrasts)))
    return Contrast(method, sum(c.d for c in contrasts) / k, n, se=math.sqrt(var), df=df)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error); NaN stays NaN and is not counted."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


SPREAD_CONFIDENCE = 0.8  # the seeds-needed spread: the 80% upper confidence bound of sigma


def sigma_upper(values_sd: float, n: int, confidence: float = SPREAD_CONFIDENCE) -> float:
    """An upper confidence bound of sigma from a sample sd with n - 1 degrees of freedom (chi-square)."""
    from scipy import stats

    if n < 2 or not math.isfinite(values_sd):
        return math.nan
    return values_sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1))


def seeds_for(sigma: float, gap: float, k: float = 1.0, two_sided_power: bool = False, limit: int = 1000,
              alpha: float = ALPHA) -> int | None:
    """The smallest n with (t_{1-alpha} + t_{power}) * sigma * sqrt(k / n) <= gap: seeds per arm for a
    one-sided test at ``alpha`` (a family's Holm step, not always 5%) to show ``gap`` with 80% power
    (k = 1 for per-seed differences, 2 for two independent arms). ``two_sided_power``: both one-sided
    tests of an equivalence must pass (t_{1 - (1 - power)/2}).
    None when gap <= 0, sigma is unknown, or more than ``limit`` would be needed."""
    from scipy import stats

    if not (gap > 0) or not math.isfinite(sigma):
        return None
    if sigma == 0:
        return 2
    q_power = 1 - (1 - POWER) / 2 if two_sided_power else POWER
    for n in range(2, limit + 1):
        df = round(k) * (n - 1)  # paired: n - 1; two arms: 2n - 2; four: 4n - 4
        if (stats.t.ppf(1 - alpha, df) + stats.t.ppf(q_power, df)) * sigma * math.sqrt(k / n) <= gap:
            return n
    return None


def exact_seeds(level: float, paired_by_seed: bool, limit: int = 1000) -> int | None:
    """Seeds per arm at which a complete separation (every run of one arm diverged, none of the other)
    reaches one-sided ``level``: McNemar's 2^-n paired by seed, Fisher's 1 / C(2n, n) unpaired."""
    for n in range(1, limit + 1):
        p = 0.5 ** n if paired_by_seed else 1 / math.comb(2 * n, n)
        if p <= level:
            return n
    return None
