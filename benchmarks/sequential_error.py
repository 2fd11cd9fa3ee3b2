"""The error rates of the ledger's sequential rule, by simulation, through the ledger's own replay.

Run: python benchmarks/sequential_error.py [--n 4000]   (about two minutes at 4,000 on a busy 2-core machine)

Each synthetic claim has per-seed differences N(delta, 1) and a paired t-test at each look of
3/6/10/16/24 seeds (Pocock spending), judged by normbench.analysis.decide.replay:
- a family of 1 null claim: the false "held" rate (should be at most 5%);
- a family of 4 null claims: the family-wise rate of any false "held";
- a family of 4, two null and two with delta = 1: the family-wise false rate and the power;
- one claim at delta = 0.5 and 1.0: the power, and the mean seeds per arm at the stop;
- Welch's t and Wilcoxon's signed-rank test at each look instead of the paired t the calibration
  assumes: their null rate at 5% and 1.25%.
"""
import argparse
import math
import random
import statistics

from normbench.analysis.decide import replay
from normbench.analysis.sequential import Design
from normbench.analysis.stats import paired

LOOKS = (3, 6, 10, 16, 24)


def member(rng, delta):
    diffs = [rng.gauss(delta, 1.0) for _ in range(LOOKS[-1])]
    looks = []
    for n in LOOKS:
        c = paired(diffs[:n])
        looks.append({"p": c.p_above(0.0), "p_against": c.p_below(0.0), "p_short": math.nan})
    return {"res": {"looks": looks, "design": Design(LOOKS)}}


def family(rng, deltas):
    ms = [member(rng, d) for d in deltas]
    replay(ms)
    return ms


ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=4000)
n = ap.parse_args().n
rng = random.Random(2026)
se = math.sqrt(0.05 * 0.95 / n)
for label, deltas in (("1 null claim", [0.0]), ("4 null claims", [0.0] * 4), ("2 null + 2 at delta 1", [0, 0, 1, 1])):
    false_any, power = 0, []
    for _ in range(n):
        ms = family(rng, deltas)
        false_any += any(m["adj"]["p"] < 0.05 for m, d in zip(ms, deltas) if d == 0)
        power += [float(m["adj"]["p"] < 0.05) for m, d in zip(ms, deltas) if d > 0]
    line = f"{label:<24} family-wise false held {false_any / n:.4f} (5% + 2 SE = {0.05 + 2 * se:.4f})"
    if power:
        line += f", power {statistics.mean(power):.3f}"
    print(line)
for delta in (0.5, 1.0):
    held, seeds = 0, []
    for _ in range(n // 4):
        (m,) = family(rng, [delta])
        held += m["adj"]["p"] < 0.05
        seeds.append(LOOKS[m["at"]])
    print(f"delta {delta}: power {held / (n // 4):.3f}, mean seeds per arm at the stop {statistics.mean(seeds):.1f}")

# the calibration is for paired t-tests; the other tests a look may use, at the same design
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from normbench.analysis.sequential import repeated_p  # noqa: E402

design, gen = Design(LOOKS), np.random.default_rng(99)
a, b = gen.standard_normal((n * 5, LOOKS[-1])), gen.standard_normal((n * 5, LOOKS[-1]))
for name, test in (("Welch t", lambda k: stats.ttest_ind(a[:, :k], b[:, :k], axis=1, equal_var=False,
                                                          alternative="greater").pvalue),
                   ("Wilcoxon signed-rank", lambda k: stats.wilcoxon((a - b)[:, :k], axis=1,
                                                                     alternative="greater").pvalue)):
    ps = np.stack([test(k) for k in LOOKS], axis=1)
    seq = np.array([repeated_p(design, list(row)) for row in ps])
    print(f"{name:<24} null claims held at 5%: {(seq < 0.05).mean():.4f}, at 1.25%: {(seq < 0.0125).mean():.4f} "
          f"({n * 5} claims)")
