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
