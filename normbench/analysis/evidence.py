"""The ledger's evidence in words: group names, each arm's mean and interval, the contrast and its
test, with fixed decimals for losses; and the ledger as markdown (ledger.py judges, this says)."""
from __future__ import annotations

import math


from ..claims import Claim
from ..measures import BINARY, METRICS
from ..numbers import fmt_number, missing
from .stats import Contrast, interval, tie_diff

# in nats, shown to three decimals: the losses and the LR sensitivity
NATS = {k for k, m in METRICS.items() if m.loss} | {"lr_sensitivity"}




def group_name(selector: dict) -> str:
    from .compare import plain, short_names

    names = short_names(list(selector))
    return ", ".join(f"{names[k]}={'|'.join(plain(v) for v in vs)}" for k, vs in selector.items())


def fmt(claim: Claim, v: float) -> str:
    """A value on the metric's own scale: losses with three decimals, the rest four significant digits."""
    if claim.metric in NATS and not missing(v) and math.isfinite(v):
        return f"{v:.3f}"
    return fmt_number(v, inf="diverged")


def describe_arm(claim: Claim, values: dict) -> str:
    """mean ± 95% half-width (n), geometric on the log scale, rates as counts."""
    vals = list(values.values())
    if not vals:
        return "no runs"
    if claim.metric in BINARY:
        return f"{int(sum(vals))}/{len(vals)} {claim.metric}"
    failed = sum(math.isinf(v) for v in vals)
    finite = [v for v in vals if math.isfinite(v)]
    tail = f", {failed} diverged" if failed else ""
    if not finite:
        return f"all {len(vals)} diverged"
    ci = interval(finite)
    if claim.scale == "log":
        spread = "" if math.isnan(ci.lo) else f" ×/÷ {math.exp(ci.half):.3g}"
        return f"{fmt(claim, math.exp(ci.mean))}{spread} (geometric, n={len(vals)}{tail})"
    half = "" if math.isnan(ci.lo) else f" ± {fmt(claim, ci.half)}"
    return f"{fmt(claim, ci.mean)}{half} (n={len(vals)}{tail})"


def describe_contrast(claim: Claim, c: Contrast) -> str:
    if c.method.startswith("McNemar"):
        only_a, only_b = c.data
        what = "diverged" if c.method.endswith("(divergence)") else f"{claim.metric}"
        return f"{c.method}: {what} in the first arm only at {only_a} seeds, in the second only at {only_b}"
    if claim.metric in BINARY or c.method.startswith("Fisher"):
        return f"{c.method}"
    lo, hi = c.interval()
    if claim.kind == "bound":  # one arm: its mean (geometric on the log scale) and interval
        f = (lambda v: fmt(claim, math.exp(v))) if claim.scale == "log" else (lambda v: fmt(claim, v))
        what = "median" if c.method.startswith("Wilcoxon") else "mean"
        est = f"{what} {f(c.d)}" if math.isfinite(c.d) else f"{what} -"
        ci = "" if math.isnan(lo) else f" [95% CI {f(lo)}, {f(hi)}]"
        return f"{est}{ci}, {c.method}, n={c.n[0]}"
    if claim.scale == "log":
        est = f"ratio {math.exp(c.d):.3g}×" if math.isfinite(c.d) else "ratio -"
        ci = "" if math.isnan(lo) else f" [95% CI {math.exp(lo):.3g}×, {math.exp(hi):.3g}×]"
    else:
        sign = (lambda v: f"{v:+.3f}" if claim.metric in NATS else f"{v:+.4g}")
        est = f"Δ {sign(c.d)}" if math.isfinite(c.d) else "Δ -"
        ci = "" if math.isnan(lo) else f" [95% CI {sign(lo)}, {sign(hi)}]"
    n = f"n={c.n[0]} pairs" if len(c.n) == 1 else "n=" + "/".join(map(str, c.n))
    return f"{est}{ci}, {c.method}, {n}"


def evidence_text(claim: Claim, res: dict) -> str:
    parts = []
    for s in res["settings"]:
        where = f"{s['setting']}: " if s["setting"] else ""
        vals, c = s["values"], s["contrast"]
        if claim.kind == "bound":
            arms = f"{group_name(claim.a)} {describe_arm(claim, vals[0])} against {fmt(claim, claim.margin)}"
        elif claim.kind == "interaction":
            arms = (f"{group_name(claim.a)} − {group_name(claim.b)} at {group_name(claim.larger_at)}: "
                    f"{_arm_diff(claim, vals[0], vals[1])} vs at {group_name(claim.smaller_at)}: "
                    f"{_arm_diff(claim, vals[2], vals[3])}")
        else:
            arms = f"{group_name(claim.a)} {describe_arm(claim, vals[0])} vs {group_name(claim.b)} " \
                   f"{describe_arm(claim, vals[1])}"
        p = "p = -" if math.isnan(s["p"]) else f"p = {s['p']:.2g}"
        test = (c.method if c.method.startswith("untestable") else "too few seeds to test") if not c.testable \
            else f"{describe_contrast(claim, c)}, {p}"
        more = f"; ~{s['needed']} seeds per arm would settle it" if s.get("needed") else ""
        parts.append(f"{where}{arms}; {test} → by itself: {s['verdict']}{more}")
    return " | ".join(parts)


def _arm_diff(claim: Claim, a: dict, b: dict) -> str:
    common = sorted(set(a) & set(b))
    diffs = [tie_diff(a[s], b[s]) for s in common]
    if not diffs:
        return "-"
    finite = [d for d in diffs if math.isfinite(d)]
    if len(finite) < len(diffs):
        return f"{len(diffs) - len(finite)} of {len(diffs)} seeds with a diverged run"
    ci = interval(finite)
    if claim.scale == "log":
        return f"×{math.exp(ci.mean):.3g}"
    half = "" if math.isnan(ci.lo) else f" ± {ci.half:.3f}"
    return f"{ci.mean:+.3f}{half}"
