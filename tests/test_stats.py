"""Confidence intervals, Welch's t-test and the verdict against the best, against hand computations
on hand-built tables (the t quantiles are the textbook values)."""
import math

import pandas as pd
import pytest

from normbench.analysis.compare import aggregate
from normbench.render.tables import vs_best
from normbench.analysis.stats import interval, seeds_needed, welch

T_975 = {2: 4.302652729911275, 3: 3.182446305284263, 4: 2.7764451051977987}  # Student's t, 97.5% quantile


def test_interval_is_students_t_by_hand():
    ci = interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)
    assert ci.mean == 2.5 and ci.n == 4
    assert ci.half == pytest.approx(T_975[3] * sd / 2, rel=1e-12)
    assert (ci.lo, ci.hi) == (pytest.approx(2.5 - ci.half), pytest.approx(2.5 + ci.half))
    one = interval([2.0])
    assert one.mean == 2.0 and math.isnan(one.lo) and math.isnan(one.hi)  # one seed: no interval
    assert interval([]).n == 0 and interval([None, float("nan"), 3.0]).n == 1


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 5.5]
    va, vb = 1.0, 3.25  # sample variances
    se = math.sqrt(va / 3 + vb / 3)
    t = (2.0 - 3.5) / se
    df = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    from scipy.stats import t as student

    w = welch(a, b)
    assert w.diff == pytest.approx(-1.5) and w.p == pytest.approx(2 * student.sf(abs(t), df), rel=1e-9)
    half = student.ppf(0.975, df) * se
    assert (w.lo, w.hi) == (pytest.approx(-1.5 - half, rel=1e-9), pytest.approx(-1.5 + half, rel=1e-9))
    shifted = welch(a, b, shift=-1.5)  # against a shift equal to the difference: nothing to reject
    assert shifted.p == pytest.approx(1.0)
    assert not welch([1.0], b).testable and math.isnan(welch([1.0], b).p)
    assert welch([2.0, 2.0], [3.0, 3.0]).p == 0.0 and welch([2.0, 2.0], [2.0, 2.0]).p == 1.0


def test_seeds_needed_by_hand():
    from scipy.stats import t

    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]  # pooled sd 1
    n = seeds_needed(a, b, 0.5)

    def power_ok(k):  # two-sided 5%, 80% power, Student's t at 2k - 2 degrees of freedom
        return (t.ppf(0.975, 2 * k - 2) + t.ppf(0.8, 2 * k - 2)) * math.sqrt(2 / k) <= 0.5

    assert power_ok(n) and not power_ok(n - 1) and n > 60
    assert seeds_needed(a, b, 5.0) == 4  # a huge effect: at least one seed more than there are
    assert seeds_needed([1.0], b, 0.5) is None and seeds_needed(a, b, 1e-6) is None  # untestable, hopeless


def table():
    nan = math.nan
    runs = pd.DataFrame({
        "model.norm": ["ln"] * 3 + ["rms"] * 3 + ["dyt"] * 3 + ["one"] + ["bn"] * 3,
        "diverged": [False] * 3 + [False] * 3 + [False] * 3 + [False] + [True, False, False],
        "final_val_loss": [2.00, 2.02, 2.04, 2.01, 2.03, 2.05, 2.30, 2.32, 2.34, 1.90, nan, 2.0, 2.1],
        "max_grad_norm": [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 5.0, 9.0, 1.0, 2.0],
    })
    return aggregate(runs, ["model.norm"], ["final_val_loss", "max_grad_norm"], "final_val_loss")


def test_aggregate_reports_intervals_and_the_test_against_the_best():
    t = table().set_index("model.norm")
    # "one" has the lowest mean but one seed; ranking is by the mean among equally reliable groups
    assert list(t.index[:4]) == ["one", "ln", "rms", "dyt"] and t.index[-1] == "bn"
    ln = t.loc["ln"]
    half = T_975[2] * 0.02 / math.sqrt(3)  # sd of 2.00, 2.02, 2.04 is 0.02
    assert (ln["final_val_loss_ci95_lo"], ln["final_val_loss_ci95_hi"]) == \
        (pytest.approx(2.02 - half), pytest.approx(2.02 + half))
    # the best ("one") has one seed: nothing can be tested against it
    assert math.isnan(t.loc["ln", "p_vs_best"]) and bool(t.loc["ln", "same_as_best"])
    assert bool(t.loc["one", "same_as_best"]) and math.isnan(t.loc["one", "final_val_loss_ci95_lo"])
    # stability measures are over every seed, the diverged one included
    assert t.loc["bn", "max_grad_norm_mean"] == pytest.approx(4.0)
    # a group that diverged more often is never "the same as the best"
    assert not bool(t.loc["bn", "same_as_best"])


def test_same_as_best_follows_welchs_p():
    nan = math.nan
    runs = pd.DataFrame({"model.norm": ["ln"] * 3 + ["rms"] * 3 + ["dyt"] * 3, "diverged": [False] * 9,
                         "final_val_loss": [2.00, 2.02, 2.04, 2.01, 2.03, 2.05, 2.30, 2.32, 2.34]})
    t = aggregate(runs, ["model.norm"], ["final_val_loss"], "final_val_loss").set_index("model.norm")
    assert t.loc["rms", "p_vs_best"] == pytest.approx(welch([2.01, 2.03, 2.05], [2.00, 2.02, 2.04]).p)
    assert bool(t.loc["rms", "same_as_best"]) and t.loc["rms", "p_vs_best"] > 0.05
    assert not bool(t.loc["dyt", "same_as_best"]) and t.loc["dyt", "p_vs_best"] < 0.001
    rows = t.reset_index()
    assert vs_best(rows.iloc[0], True) == "best"
    assert vs_best(rows.iloc[1], False).startswith("= (p 0.")
    assert vs_best(rows.iloc[2], False).startswith("p ")
    del nan
