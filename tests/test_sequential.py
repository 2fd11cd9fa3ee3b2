"""The group-sequential design and the families (sequential.py, decide.py): boundaries against a
published table and an independent Monte Carlo, the error rate of the whole rule by simulation,
Holm within a family, Benjamini-Hochberg across the ledger, and the synthetic cases of issue 31."""
import math
import random

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from normbench.analysis.decide import replay, standing
from normbench.analysis.ledger import evaluate
from normbench.analysis.sequential import (Design, benjamini_hochberg, calibrated, design_for, nominal_levels,
                                           repeated_p, spent)
from normbench.analysis.stats import holm, paired
from normbench.claims import parse_claims


def test_obrien_fleming_boundaries_match_the_published_table():
    # Lan-DeMets O'Brien-Fleming spending, one-sided 2.5%, five equally spaced looks: gsDesign's
    # gsDesign(k=5, test.type=1, sfu=sfLDOF) upper bounds (Jennison & Turnbull's table 2.3 shape)
    z = [stats.norm.isf(p) for p in nominal_levels(0.025, (0.2, 0.4, 0.6, 0.8, 1.0), "obf")]
    assert z == pytest.approx([4.8769, 3.3569, 2.6803, 2.2898, 2.0310], abs=2e-3)


@pytest.mark.parametrize("spending", ["pocock", "obf"])
def test_boundaries_spend_exactly_their_alpha_by_an_independent_monte_carlo(spending):
    """Brownian motion at the looks' information, crossing the computed boundaries: the crossing
    rate by each look is the spending function there (200,000 paths, within 4 standard errors)."""
    design = Design((3, 6, 10, 16, 24), spending)
    t = np.array(design.fractions)
    c = stats.norm.isf(np.array(design.nominal(0.05)))
    rng = np.random.default_rng(0)
    steps = rng.standard_normal((200_000, len(t))) * np.sqrt(np.diff(t, prepend=0.0))
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    crossed = np.maximum.accumulate(z >= c, axis=1).mean(axis=0)
    want = np.array([spent(0.05, x, spending) for x in t])
    se = np.sqrt(want * (1 - want) / 200_000)
    assert np.all(np.abs(crossed - want) < 4 * se + 1e-5)
    assert want[-1] == pytest.approx(0.05)
    if spending == "pocock":  # alpha ln(1 + (e - 1) t): the first look at 3 of 24 seeds spends 0.0097
        assert design.nominal(0.05)[0] == pytest.approx(0.05 * math.log(1 + (math.e - 1) / 8))


def test_the_level_a_look_needs_inverts_its_nominal_level():
    d = design_for(3)
    assert d.looks == (3, 6, 10, 16, 24)
    for alpha in (0.05, 0.0125, 1e-4):
        for k, p in enumerate(d.nominal(alpha)):
            assert d.level_for(k, p) == pytest.approx(alpha, rel=2e-3)
    assert design_for(5, [3, 6, 10]).looks == (5, 6, 10)  # the first look is the seeds the recipe ran


def null_member(rng, looks=(3, 6, 10, 16, 24)):
    """One synthetic claim with a true effect of 0: per-seed differences N(0, 1), a paired t at each look."""
    diffs = [rng.gauss(0.0, 1.0) for _ in range(looks[-1])]
    res_looks = []
    for n in looks:
        c = paired(diffs[:n])
        res_looks.append({"p": c.p_above(0.0), "p_against": c.p_below(0.0), "p_short": math.nan})
    return {"res": {"looks": res_looks, "design": Design(looks)}}


def test_the_sequential_rule_keeps_its_false_held_rate_by_simulation():
    """2,000 null claims, each taken through every look it does not stop at (paired t-tests at
    3, 6, 10, 16, 24 seeds), judged by the ledger's own replay: false 'held' <= 5% + 2 SE."""
    rng = random.Random(31)
    held = 0
    for _ in range(2000):
        m = null_member(rng)
        replay([m])
        held += m["adj"]["p"] < 0.05
    rate, se = held / 2000, math.sqrt(0.05 * 0.95 / 2000)
    assert rate <= 0.05 + 2 * se
    assert rate > 0.01  # and the design spends its level: not a rule that never holds anything


def test_the_sequential_p_of_a_first_look_is_its_share_of_the_level_then_calibrated():
    """At the first look of 3/6/10/16/24 (Pocock), a design at level a rejects a p <= 0.195 a; the
    null rate of that (t-tests at every look) is a little more than a, and the sequential p says it."""
    d = Design()
    per = spent(1.0, d.fractions[0], "pocock")
    assert d.level_for(0, 0.002) == pytest.approx(0.002 / per)
    assert repeated_p(d, [0.002]) == pytest.approx(calibrated(d, 0.002 / per))
    assert 0.002 / per < repeated_p(d, [0.002]) < 1.25 * 0.002 / per
    # a later look that rejects at a smaller level lowers it; one that does not leaves it
    assert repeated_p(d, [0.002, 1e-4]) < repeated_p(d, [0.002]) == repeated_p(d, [0.002, 0.5])


def test_holm_within_a_family_passes_a_held_claims_level_to_the_rest():
    """Two claims of one family at one look, p 0.004 and 0.008: Holm over their sequential p's holds
    both; a third member with nothing to show takes the second's level away."""
    d = Design()

    def member(p):
        return {"res": {"looks": [{"p": p, "p_against": 1.0, "p_short": math.nan}], "design": d}}

    fam = [member(0.004), member(0.008)]
    replay(fam)
    seq = [repeated_p(d, [0.004]), repeated_p(d, [0.008])]
    assert [m["seq"]["p"] for m in fam] == pytest.approx(seq)
    assert [m["adj"]["p"] for m in fam] == pytest.approx(holm(seq))
    assert all(m["adj"]["p"] < 0.05 for m in fam)
    three = [member(0.004), member(0.008), member(0.5)]
    replay(three)
    want = holm(seq + [repeated_p(d, [0.5])])[1]
    assert three[1]["adj"]["p"] == pytest.approx(want) and want > 0.05


def frame(values_a, values_b, metric="final_val_loss"):
    rows = [{"model.norm": n, "seed": s, metric: v, "diverged": v is None, "vocab_size": 100,
             "status": "completed", "run_id": f"{n}{s}"}
            for n, vals in (("rmsnorm", values_a), ("layernorm", values_b)) for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_an_equivalence_with_no_true_difference_ends_equivalent_within_the_cap():
    """True difference 0, margin 0.05, per-seed sd 0.04: undecided at 3 seeds, looked at again at
    the design's counts until the 90% interval sits inside the margin, within 24 seeds."""
    raw = {"source": "s", "statement": "rmsnorm matches layernorm", "metric": "final_val_loss", "margin": 0.05,
           "same": [{"model.norm": "rmsnorm"}, {"model.norm": "layernorm"}]}
    claim = parse_claims([raw])[0]
    rng = np.random.default_rng(5)
    base = 2.3 + rng.normal(0, 0.1, 24)
    a, b = base + rng.normal(0, 0.04 / math.sqrt(2), 24), base + rng.normal(0, 0.04 / math.sqrt(2), 24)
    first = standing([("r", claim, None, evaluate(claim, frame(a[:3], b[:3])))])[0]
    assert first["verdict"] == "inconclusive"
    for n in (6, 10, 16, 24):  # each look's seeds, as --settle adds them
        m = standing([("r", claim, None, evaluate(claim, frame(a[:n], b[:n]), first=3))])[0]
        if m["verdict"] != "inconclusive":
            break
    assert m["verdict"] == "held" and m["res"]["design"].looks[m["at"]] <= 24
    d = a[:n] - b[:n]
    hi = d.mean() + stats.t.ppf(0.95, n - 1) * d.std(ddof=1) / math.sqrt(n)
    assert hi < 0.05  # a TOST that passes at its look


def test_benjamini_hochberg_against_a_hand_computation():
    # sorted 0.01, 0.02, 0.03, 0.5: q = min over later ranks of p * m / rank
    q = benjamini_hochberg([0.02, 0.01, 0.5, 0.03, math.nan])
    assert q[:4] == pytest.approx([0.04, 0.04, 0.5, 0.04]) and math.isnan(q[4])


def test_the_calibration_tells_five_percent_from_the_uncalibrated_rule():
    """40,000 null claims drawn independently of the calibration (another random stream), t-tests at
    every look: the calibrated sequential p holds 5% +- 2.5 SE (0.0473 to 0.0527) at 5%, and 1.25%
    at a family of four's first Holm step; the nominal-level rule alone holds about 5.4%."""
    d = Design()
    rng = np.random.default_rng(2027)
    x = rng.standard_normal((40_000, 24))
    ps = np.empty((40_000, len(d.looks)))
    for k, n in enumerate(d.looks):
        part = x[:, :n]
        ps[:, k] = stats.t.sf(part.mean(axis=1) / (part.std(axis=1, ddof=1) / math.sqrt(n)), n - 1)
    seq = np.array([repeated_p(d, list(row)) for row in ps])
    raw = np.array([min(d.level_for(k, p) for k, p in enumerate(row)) for row in ps])
    se = math.sqrt(0.05 * 0.95 / 40_000)
    assert abs((seq < 0.05).mean() - 0.05) < 2.5 * se
    assert (raw < 0.05).mean() > 0.05 + 2.5 * se  # what the calibration corrects
    se4 = math.sqrt(0.0125 * 0.9875 / 40_000)
    assert abs((seq < 0.0125).mean() - 0.0125) < 3 * se4
