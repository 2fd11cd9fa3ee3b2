"""The verdict rule of the claims ledger on hand-built tables, each number checked against a hand
computation or scipy's own test: pairing by design, bounds, the log scale, contrary settings, Holm,
Fisher and McNemar, divergence as evidence, rank tests for failed runs, interactions,
non-inferiority and seeds needed. The sequential design and the families: test_sequential.py."""
import math

import pandas as pd
import pytest
from scipy import stats

from normbench.claims import parse_claims
from normbench.analysis.evidence import evidence_text
from normbench.analysis.decide import verdict
from normbench.analysis.ledger import evaluate, p_values, seeds_needed
from normbench.measures import log_slope
from normbench.analysis.stats import holm, paired, rates, seeds_for, sigma_upper, unpaired


def frame(rows, metric="final_val_loss"):
    """rows: (placement, lr, seed, value or None for a diverged run)."""
    return pd.DataFrame([{"model.placement": p, "train.lr": lr, "seed": s, metric: v, "diverged": v is None,
                          "vocab_size": 100, "status": "completed", "run_id": f"{p}{lr}{s}"}
                         for p, lr, s, v in rows])


def claim(**kw):
    raw = {"source": "a paper", "statement": "post ends above pre", "metric": "final_val_loss",
           "higher": {"model.placement": "post"}, "lower": {"model.placement": "pre"}, **kw}
    return parse_claims([raw])[0]


def arms(a, b, lr=1e-3, seeds_a=None, seeds_b=None):
    return [("post", lr, s, v) for s, v in zip(seeds_a or range(len(a)), a)] + \
           [("pre", lr, s, v) for s, v in zip(seeds_b or range(len(b)), b)]


POST, PRE = [2.50, 2.53, 2.54], [2.30, 2.31, 2.35]


def test_shared_seeds_are_paired_and_other_seeds_are_welch():
    res = evaluate(claim(), frame(arms(POST, PRE)))
    (s,) = res["settings"]
    assert s["contrast"].method == "paired t"
    ref = stats.ttest_rel(POST, PRE, alternative="greater")
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    res = evaluate(claim(), frame(arms(POST, PRE, seeds_b=[3, 4, 5])))
    assert res["settings"][0]["contrast"].method == "Welch t"
    ref = stats.ttest_ind(POST, PRE, equal_var=False, alternative="greater")
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    # paired: false is honoured even where the seeds are shared
    res = evaluate(claim(paired=False), frame(arms(POST, PRE)))
    assert res["settings"][0]["contrast"].method == "Welch t" and "Welch t" in res["test"]


def test_a_margin_is_met_only_by_the_lower_confidence_bound():
    # d = 0.11 with a wide interval: "by at least 0.1" is not shown (today's rule passed d >= m)
    a, b = [2.40, 2.51, 2.42], [2.30, 2.30, 2.40]
    d = [x - y for x, y in zip(a, b)]
    lo = sum(d) / 3 - stats.t.ppf(0.95, 2) * stats.tstd(d) / math.sqrt(3)  # one-sided 95% lower bound
    assert sum(d) / 3 == pytest.approx(0.11) and lo < 0.1
    res = evaluate(claim(margin=0.1), frame(arms(a, b)))
    assert res["p"] > 0.05 and res["settings"][0]["verdict"] == "inconclusive"
    # a tight 0.21 clears 0.2 (lower bound above it) but not 0.5: there the upper bound is below -> not held
    tight = evaluate(claim(margin=0.2), frame(arms([2.51, 2.52, 2.51], [2.30, 2.31, 2.30])))
    assert tight["settings"][0]["verdict"] == "held"
    far = evaluate(claim(margin=0.5), frame(arms([2.51, 2.52, 2.51], [2.30, 2.31, 2.30])))
    assert far["settings"][0]["verdict"] == "not held" and far["p_against"] < 0.05


def test_equivalence_is_not_held_only_when_its_interval_lies_outside_the_margin():
    same = dict(same=[{"model.placement": "post"}, {"model.placement": "pre"}], margin=0.05)
    raw = {"source": "s", "statement": "x", "metric": "final_val_loss", **same}
    c = parse_claims([raw])[0]
    close = evaluate(c, frame(arms([2.300, 2.302, 2.304], [2.301, 2.303, 2.305])))
    assert close["settings"][0]["verdict"] == "held"
    # d = 0.06 +- wide: significantly non-zero, but the 95% interval reaches inside (-0.05, 0.05)
    wide = frame(arms([2.36, 2.40, 2.32], [2.30, 2.31, 2.29]))
    d = [0.06, 0.09, 0.03]
    lo = 0.06 - stats.t.ppf(0.975, 2) * stats.tstd(d) / math.sqrt(3)
    assert lo < 0.05
    assert evaluate(c, wide)["settings"][0]["verdict"] == "inconclusive"
    far = evaluate(c, frame(arms([2.50, 2.51, 2.52], [2.30, 2.31, 2.32])))
    assert far["settings"][0]["verdict"] == "not held"


def test_noninferiority_uses_the_upper_bound_of_candidate_minus_reference():
    raw = {"source": "s", "statement": "post is not worse than pre by 0.05", "metric": "final_val_loss",
           "candidate": {"model.placement": "post"}, "reference": {"model.placement": "pre"}, "margin": 0.05}
    c = parse_claims([raw])[0]
    better = evaluate(c, frame(arms([2.28, 2.29, 2.31], [2.30, 2.31, 2.32])))
    d = [-0.02, -0.02, -0.01]
    assert better["p"] == pytest.approx(stats.ttest_1samp(d, 0.05, alternative="less").pvalue)
    assert better["settings"][0]["verdict"] == "held"
    worse = evaluate(c, frame(arms([2.50, 2.51, 2.52], [2.30, 2.31, 2.32])))
    assert worse["settings"][0]["verdict"] == "not held"


def test_the_log_scale_sees_a_separation_that_one_sides_variance_hides():
    # qk-norm at lr 0.1 in 0.4.0: logits 1,351 to 5,996 without it, 16 to 18 with it
    without, with_ = [1351.0, 4958.0, 5996.0], [16.0, 17.5, 18.0]
    lin = claim(metric="max_attn_logit", scale="linear")
    rows = frame(arms(without, with_), "max_attn_logit")
    assert evaluate(lin, rows)["settings"][0]["verdict"] == "inconclusive"
    log = claim(metric="max_attn_logit")  # the default for a multiplicative metric
    res = evaluate(log, rows)
    assert log.scale == "log" and res["settings"][0]["verdict"] == "held"
    d = [math.log(a) - math.log(b) for a, b in zip(without, with_)]
    assert res["p"] == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    text = evidence_text(log, res)
    assert "geometric" in text and f"ratio {math.exp(sum(d) / 3):.3g}×" in text


def test_one_significant_contradiction_refutes_a_universal_claim_after_holm():
    held = arms([2.50, 2.52, 2.54], [2.30, 2.31, 2.32], lr=1e-3)
    contra = arms([2.10, 2.11, 2.12], [2.30, 2.31, 2.32], lr=3e-3)
    res = evaluate(claim(), frame(held + contra))
    assert [s["verdict"] for s in res["settings"]] == ["held", "not held"]
    p_against = [s["p_against"] for s in res["settings"]]
    assert res["p_against"] == pytest.approx(min(holm(p_against)))
    assert res["p"] == pytest.approx(max(s["p"] for s in res["settings"]))  # intersection-union
    assert verdict({"p": res["p"], "p_against": res["p_against"], "p_short": math.nan}) == "not held"
    # on average over the two settings the claim is one blocked test: per seed the mean difference
    avg = evaluate(claim(across="average"), frame(held + contra))
    per_seed = [((2.50 - 2.30) + (2.10 - 2.30)) / 2, ((2.52 - 2.31) + (2.11 - 2.31)) / 2,
                ((2.54 - 2.32) + (2.12 - 2.32)) / 2]
    assert avg["p"] == pytest.approx(stats.ttest_1samp(per_seed, 0, alternative="greater").pvalue)


def test_holm_against_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4*0.01, max(0.04, 3*0.03), max(0.09, 2*0.04), max(0.09, 0.20)
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert math.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.01)


def test_fisher_exact_on_rates_and_mcnemar_where_seeds_pair_them():
    c = rates([1, 1, 1], [0, 0, 0])
    assert c.p_above() == pytest.approx(1 / math.comb(6, 3))  # 0.05: the one table as extreme
    # different seeds: two independent arms, Fisher
    res = evaluate(claim(metric="diverged"), frame(arms([None, None, None], [2.3, 2.3, 2.3], seeds_b=[3, 4, 5])))
    assert res["settings"][0]["contrast"].method == "Fisher exact"
    assert res["p"] == pytest.approx(0.05)
    # the same seeds: McNemar's exact test on the discordant seeds, a binomial at 1/2 (3 of 3: 1/8)
    res = evaluate(claim(metric="diverged"), frame(arms([None, None, 2.4, 2.4], [2.3, 2.3, None, 2.3])))
    c = res["settings"][0]["contrast"]
    assert c.method == "McNemar exact" and c.data == (2, 1)
    assert res["p"] == pytest.approx(stats.binomtest(2, 3, 0.5, alternative="greater").pvalue)  # 0.5


def test_divergence_decides_a_loss_claim_when_one_arm_all_diverged_and_the_other_all_finished():
    """ReZero against the plain 16-layer stack: 3 of 3 diverged against 0 of 3. No made-up loss: the
    divergence rate is the evidence, McNemar's exact test paired by seed (2^-3), Fisher's unpaired."""
    res = evaluate(claim(), frame(arms([None, None, None], [2.43, 2.41, 2.45])))
    c = res["settings"][0]["contrast"]
    assert c.method == "McNemar exact (divergence)" and res["p"] == pytest.approx(0.125)
    assert res["p_against"] == pytest.approx(1.0)
    assert "divergence" in evidence_text(claim(), res) and "all 3 diverged" in evidence_text(claim(), res)
    unp = evaluate(claim(), frame(arms([None, None, None], [2.43, 2.41, 2.45], seeds_b=[3, 4, 5])))
    assert unp["settings"][0]["contrast"].method == "Fisher exact (divergence)"
    assert unp["p"] == pytest.approx(0.05)
    # seeds needed at a level: 2^-n for McNemar (n=5 at 5%), 1/C(2n, n) for Fisher (n=3 at 5%)
    s = res["settings"][0]
    assert seeds_needed(claim(), s["contrast"], s["values"]) == 5
    assert seeds_needed(claim(), s["contrast"], s["values"], alpha=0.01) == 7
    # the other way round the claim is contradicted by the same test
    rev = evaluate(claim(), frame(arms([2.43, 2.41, 2.45], [None, None, None])))
    assert rev["p_against"] == pytest.approx(0.125) and rev["p"] == pytest.approx(1.0)
    # a mixed arm (one run finished) is a rank test, as before
    mixed = evaluate(claim(), frame(arms([None, None, 2.6], [2.43, 2.41, 2.45])))
    assert mixed["settings"][0]["contrast"].method == "Wilcoxon signed-rank"


def test_a_claim_whose_arms_never_vary_is_untestable_not_p_one():
    res = evaluate(claim(metric="final_val_loss"), frame(arms([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])))
    c = res["settings"][0]["contrast"]
    assert c.method.startswith("untestable") and math.isnan(res["p"]) and math.isnan(res["p_against"])
    assert "untestable" in evidence_text(claim(), res)
    from normbench.analysis.decide import standing

    (m,) = standing([("r", claim(), None, res)])
    assert m["verdict"] == "untestable" and m["needed"] is None  # said in the verdict, no seeds asked for


def test_a_diverged_run_is_the_worst_rank_not_a_made_up_loss():
    # one post seed diverged: the paired test becomes Wilcoxon's signed-rank with that seed worst
    res = evaluate(claim(), frame(arms([2.50, None, 2.54, 2.56], [2.30, 2.31, 2.32, 2.33])))
    c = res["settings"][0]["contrast"]
    assert c.method == "Wilcoxon signed-rank"
    ref = stats.wilcoxon([0.20, 1e9, 0.22, 0.23], alternative="greater")
    assert res["p"] == pytest.approx(ref.pvalue)
    assert "1 diverged" in evidence_text(claim(), res)


def test_an_interaction_is_one_paired_test_of_the_difference_of_differences():
    raw = {"source": "Xiong", "statement": "post gains more from warmup", "metric": "final_val_loss",
           "higher": {"train.warmup_steps": 0}, "lower": {"train.warmup_steps": 50},
           "larger_at": {"model.placement": "post"}, "smaller_at": {"model.placement": "pre"}}
    c = parse_claims([raw])[0]
    vals = {("post", 0): [3.10, 3.00, 3.20], ("post", 50): [2.10, 2.20, 2.15],
            ("pre", 0): [2.05, 2.07, 2.02], ("pre", 50): [2.00, 2.01, 2.03]}
    rows = [{"model.placement": p, "train.warmup_steps": w, "seed": s, "final_val_loss": v, "diverged": False,
             "vocab_size": 100} for (p, w), vs in vals.items() for s, v in enumerate(vs)]
    res = evaluate(c, pd.DataFrame(rows))
    per_seed = [(vals["post", 0][s] - vals["post", 50][s]) - (vals["pre", 0][s] - vals["pre", 50][s])
                for s in range(3)]
    assert res["settings"][0]["contrast"].d == pytest.approx(sum(per_seed) / 3)
    assert res["p"] == pytest.approx(stats.ttest_1samp(per_seed, 0, alternative="greater").pvalue)
    assert "interaction" in res["test"]


def test_a_metric_taken_at_init_is_not_split_by_training_only_keys():
    rows = []
    for w in (0, 200):  # identical init profiles at both warmups: one setting, each seed once
        for s, (post, pre) in enumerate([(1.5, 0.4), (1.2, 0.3), (2.0, 0.5)]):
            for p, ratio in (("post", post), ("pre", pre)):
                rows.append({"model.placement": p, "train.warmup_steps": w, "seed": s, "diverged": False,
                             "vocab_size": 100, "grad_norm_init_by_layer": [1.0, ratio]})
    c = claim(metric="grad_norm_init_last_over_first")
    res = evaluate(c, pd.DataFrame(rows))
    assert len(res["settings"]) == 1 and res["settings"][0]["contrast"].n == (3,)


def test_seeds_needed_use_the_upper_bound_of_sigma_and_the_effect():
    # chi-square upper 80% bound of sigma from n = 3: s * sqrt(2 / chi2.ppf(0.2, 2))
    assert sigma_upper(1.0, 3) == pytest.approx(math.sqrt(2 / stats.chi2.ppf(0.2, 2)))
    # paired n for gap 0.5 at sigma 1: the smallest n with (t.95 + t.80) * sigma / sqrt(n) <= gap, df n - 1
    n = seeds_for(1.0, 0.5)
    ok = (lambda k: (stats.t.ppf(0.95, k - 1) + stats.t.ppf(0.8, k - 1)) / math.sqrt(k) <= 0.5)
    assert ok(n) and not ok(n - 1)
    s = evaluate(claim(effect=0.1), frame(arms([2.3, 2.6, 2.4], [2.35, 2.3, 2.5])))["settings"][0]
    n = seeds_needed(claim(effect=0.1), s["contrast"], s["values"])
    assert n and n > 3
    # at a family's Holm step (alpha / 4) it needs more, by the same formula at that level
    n4 = seeds_needed(claim(effect=0.1), s["contrast"], s["values"], alpha=0.0125)
    assert n4 > n
    sigma = sigma_upper(stats.tstd([-0.05, 0.3, -0.1]), 3)
    assert n4 == max(4, seeds_for(sigma, 0.1, alpha=0.0125))
    assert seeds_needed(claim(), s["contrast"], s["values"]) is None  # no effect of interest


def test_rank_and_t_contrasts_give_p_against_any_shift():
    c = paired([0.2, 0.21, 0.22])
    assert c.p_above(0.1) == pytest.approx(stats.ttest_1samp([0.2, 0.21, 0.22], 0.1, alternative="greater").pvalue)
    u = unpaired([math.inf, 2.5, 2.6], [2.3, 2.31, 2.32])
    assert u.method == "Mann-Whitney U"
    assert u.p_above(0) == pytest.approx(stats.mannwhitneyu([1e9, 2.5, 2.6], [2.3, 2.31, 2.32],
                                                            alternative="greater").pvalue)


def test_residual_growth_is_a_log_slope_over_layers():
    prof = [1.0, math.e, math.e ** 2, math.e ** 3]
    assert log_slope(prof) == pytest.approx(1.0)
    assert log_slope([2.0, 2.0, 2.0]) == pytest.approx(0.0)


def test_p_values_of_each_kind_against_the_definitions():
    c = paired([0.01, -0.01, 0.02])
    same = parse_claims([{"source": "s", "statement": "x", "metric": "final_val_loss", "margin": 0.05,
                          "same": [{"model.placement": "post"}, {"model.placement": "pre"}]}])[0]
    p, against, short = p_values(same, c)
    assert p == pytest.approx(max(c.p_above(-0.05), c.p_below(0.05)))
    assert against == pytest.approx(min(1.0, 2 * min(c.p_above(0.05), c.p_below(-0.05))))
    assert math.isnan(short)  # an equivalence has no effect of interest beyond its margin
    _, _, short = p_values(claim(effect=0.3), c)
    assert short == pytest.approx(c.p_below(0.3))  # a directional claim: short of its effect


def test_a_key_that_varies_only_outside_the_claims_arms_makes_no_empty_setting():
    """Review: rmsnorm at a second lr made an lr=0.003 setting with no dyt or layernorm runs, whose
    NaN p blocked 'held' for good."""
    raw = {"source": "s", "statement": "dyt not worse", "metric": "final_val_loss",
           "candidate": {"model.placement": "post"}, "reference": {"model.placement": "pre"}, "margin": 0.05}
    c = parse_claims([raw])[0]
    rows = arms([2.28, 2.29, 2.31], [2.30, 2.31, 2.32]) + [("sandwich", 3e-3, s, 2.2) for s in range(3)]
    res = evaluate(c, frame(rows))
    alone = evaluate(c, frame(arms([2.28, 2.29, 2.31], [2.30, 2.31, 2.32])))
    assert len(res["settings"]) == 1 and res["p"] == pytest.approx(alone["p"])


def test_a_seed_failed_on_both_sides_is_a_tie_for_a_rank_test_not_a_measured_zero():
    res = evaluate(claim(), frame(arms([2.50, 2.52, None], [2.30, 2.31, None])))
    c = res["settings"][0]["contrast"]
    assert c.method == "Wilcoxon signed-rank"
    ref = stats.wilcoxon([0.20, 0.21, 0.0], alternative="greater", zero_method="zsplit")
    assert res["p"] == pytest.approx(ref.pvalue)


def test_average_over_settings_of_an_unpaired_interaction_tests_the_interaction():
    from normbench.analysis.stats import combine, unpaired

    a, b = unpaired([1.0, 1.2, 1.1], [0.5, 0.6, 0.4]), unpaired([2.0, 2.3, 2.1], [1.0, 1.1, 0.9])
    c = combine([a, b], "x")
    assert c.d == pytest.approx((a.d + b.d) / 2) and c.se == pytest.approx(math.sqrt(a.se ** 2 + b.se ** 2) / 2)
    v = [a.se ** 2 / 4, b.se ** 2 / 4]
    assert c.df == pytest.approx(sum(v) ** 2 / (v[0] ** 2 / a.df + v[1] ** 2 / b.df))
    assert math.isnan(combine([a, paired([0.1, math.inf])], "x").d)  # a rank test does not combine


def test_welch_seeds_needed_use_the_pooled_degrees_of_freedom():
    c = claim(effect=0.3)
    res = evaluate(c, frame(arms([2.3, 2.6, 2.4], [2.35, 2.3, 2.5], seeds_b=[3, 4, 5])))
    s = res["settings"][0]
    pooled = math.sqrt((stats.tvar([2.3, 2.6, 2.4]) + stats.tvar([2.35, 2.3, 2.5])) / 2)
    want = seeds_for(sigma_upper(pooled, 5), 0.3, k=2.0)  # 4 degrees of freedom, not 2
    assert seeds_needed(c, s["contrast"], s["values"]) == max(want, 4)


def test_a_key_zipped_with_a_named_one_does_not_split_settings():
    """bn_tokens_per_batch zips data.seq_len with train.batch_size: the seq_len must not split the
    interaction's settings into halves that each lack an arm."""
    raw = {"source": "Wu & He", "statement": "BN's gap grows as batches shrink", "metric": "final_val_loss",
           "higher": {"model.norm": "batchnorm"}, "lower": {"model.norm": "layernorm"},
           "larger_at": {"train.batch_size": 1}, "smaller_at": {"train.batch_size": 32}}
    c = parse_claims([raw])[0]
    vals = {("batchnorm", 1): [2.9, 2.8, 2.85], ("layernorm", 1): [2.5, 2.55, 2.5],
            ("batchnorm", 32): [2.30, 2.31, 2.29], ("layernorm", 32): [2.27, 2.26, 2.28]}
    rows = [{"model.norm": n, "train.batch_size": b, "data.seq_len": 32 if b == 1 else 64, "seed": s,
             "final_val_loss": v, "diverged": False, "vocab_size": 100, "run_id": f"{n}{b}{s}"}
            for (n, b), vs in vals.items() for s, v in enumerate(vs)]
    res = evaluate(c, pd.DataFrame(rows))
    assert len(res["settings"]) == 1 and res["settings"][0]["contrast"].method == "paired t"
    per_seed = [(vals["batchnorm", 1][s] - vals["layernorm", 1][s]) - (vals["batchnorm", 32][s]
                - vals["layernorm", 32][s]) for s in range(3)]
    assert res["p"] == pytest.approx(stats.ttest_1samp(per_seed, 0, alternative="greater").pvalue)


def test_abs_final_log_z_is_the_distance_of_the_final_log_partition_from_zero():
    from normbench.measures import run_value

    assert run_value({"final_log_z": -3.5, "diverged": False}, "abs_final_log_z") == 3.5
    assert run_value({"final_log_z": None, "diverged": False}, "abs_final_log_z") is None


def bound_claim(**kw):
    raw = {"source": "a paper", "statement": "post's max logit stays below 40", "metric": "max_attn_logit",
           "arm": {"model.placement": "post"}, "below": 40.0, **kw}
    return parse_claims([{k: v for k, v in raw.items() if v is not None}])[0]


def test_a_bound_claim_is_a_one_sample_test_of_the_arm_against_its_value():
    """Held when the arm's (geometric) mean is significantly below the bound, not held when significantly
    above: Student's t on the logs against log(bound), checked against scipy's one-sample test."""
    below, above = [30.0, 33.0, 31.5, 29.0], [52.0, 60.0, 55.0, 58.0]
    rows = lambda vals: [("post", 1e-3, s, v) for s, v in enumerate(vals)] + [("pre", 1e-3, s, 1e3) for s in range(4)]
    c = bound_claim()
    assert c.kind == "bound" and c.selectors() == [{"model.placement": ["post"]}] and c.scale == "log"
    res = evaluate(c, frame(rows(below), "max_attn_logit"))
    logs = [math.log(v) for v in below]
    ref = stats.ttest_1samp(logs, math.log(40.0), alternative="less")
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9) and res["p"] < 0.05
    assert res["p_against"] == pytest.approx(1 - ref.pvalue, rel=1e-9)
    assert "bound: below 40; one-sample t, log scale" == res["test"]
    text = evidence_text(c, res)
    assert "against 40" in text and "mean 30.8" in text and "n=4" in text  # the pre arm (1000) plays no part
    res = evaluate(c, frame(rows(above), "max_attn_logit"))
    assert res["p_against"] < 0.05 and res["p"] > 0.5
    lin = bound_claim(metric="final_val_loss", below=2.4, statement="post ends below 2.4")
    res = evaluate(lin, frame(rows([2.30, 2.31, 2.35, 2.28]), "final_val_loss"))
    ref = stats.ttest_1samp([2.30, 2.31, 2.35, 2.28], 2.4, alternative="less")
    assert lin.scale == "linear" and res["p"] == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("extra,key,text", [
    ({"below": 0.0}, "below", "a number > 0"), ({"below": "x"}, "below", "expected"),
    ({"above": 3.0}, "below", "one of below or above"),
    ({"margin": 2.0}, "margin", "takes no margin"), ({"effect": 2.0}, "effect", "takes no effect"),
    ({"higher": {"model.placement": "pre"}}, "higher", "does not belong to a bound claim"),
])
def test_a_malformed_bound_claim_is_refused_in_one_line(extra, key, text):
    from normbench.errors import NormbenchError

    with pytest.raises(NormbenchError) as e:
        bound_claim(**extra)
    problems = getattr(e.value, "errors", [e.value])
    assert any(p.key.endswith(key) and text in str(p) for p in problems), [str(p) for p in problems]


def test_a_bound_claim_above_a_value_tests_the_other_side():
    c = bound_claim(below=None, above=0.01, metric="min_attn_entropy", statement="post keeps some entropy")
    rows = [("post", 1e-3, s, v) for s, v in enumerate([0.042, 0.083, 0.042, 0.125])]
    res = evaluate(c, frame(rows, "min_attn_entropy"))
    ref = stats.ttest_1samp([0.042, 0.083, 0.042, 0.125], 0.01, alternative="greater")
    assert c.above and res["p"] == pytest.approx(ref.pvalue, rel=1e-9) and res["test"].startswith("bound: above 0.01")


def test_a_discrete_share_is_tested_by_ranks_not_as_an_exact_difference():
    """Sink shares move in steps of 1/24: three seeds each 1/24 apart are not a difference without spread
    (a t-test's p = 0); Wilcoxon's signed-rank test on 3 pairs gives 1/8 at best."""
    raw = {"source": "a paper", "statement": "post has more sinks", "metric": "attn_sink_share",
           "higher": {"model.placement": "post"}, "lower": {"model.placement": "pre"}}
    c = parse_claims([raw])[0]
    res = evaluate(c, frame(arms([1 / 24, 2 / 24, 1 / 24], [0.0, 1 / 24, 0.0]), "attn_sink_share"))
    assert res["settings"][0]["contrast"].method == "Wilcoxon signed-rank"
    assert res["p"] == pytest.approx(0.125)
