"""The verdicts: each claim's looks (ledger.evaluate) judged within its family, sequentially.

- **Family.** A paper's claims within one recipe: the claims of one ``source`` in one recipe, or
  those that set the same ``family:``. Its family-wise error is held at 5%: a replication does not
  correct one paper's claims for every other paper it replicates.
- **Sequential p.** A claim is looked at at its design's seed counts (sequential.py). Its p is the
  null rate at which its design rejects at a level no larger than the smallest level at which it
  rejects at a look it reached, before a stop: a look's p scaled by that look's share of the level
  (at the first look of the default design, 3 of 24 seeds, p / 0.195), then calibrated by
  simulated null claims (t-tests at every look), because t statistics at 2 degrees of freedom are
  not normal ones.
- **Holm within the family** on the sequential p's: ``p_adjusted``. Replayed look by look: a claim
  stops at the first look where it is held (p_adjusted < 0.05), contradicted (p_against_adjusted
  < 0.05) or significantly short of its effect of interest; its later seeds, if any, are not used.
- **Across the ledger**, Benjamini-Hochberg q-values of the sequential p's (``q_ledger``): the
  false-discovery rate of the whole ledger. They inform and do not decide.
- **Seeds needed** (inconclusive claims): per arm, one test at the claim's Holm step in its family
  (alpha / (m - rank + 1)), sized for the effect of interest (ledger.seeds_needed).
"""
from __future__ import annotations

import math

import pandas as pd

from .evidence import evidence_text
from .ledger import COLUMNS, effect_of, judge, seeds_needed, sources_for, test_name
from .sequential import benjamini_hochberg, repeated_p
from .stats import ALPHA, holm

DIRECTIONS = ("p", "p_against", "p_short")  # for the claim, against it, short of its effect


def family_of(recipe: str, claim) -> str:
    return claim.family or f"{recipe}: {claim.source}"


def replay(members: list[dict]) -> None:
    """One family, look by look: each member's stop look and its adjusted p's (set in place)."""
    live = [m for m in members if m["res"] is not None]
    depth = max((len(m["res"]["looks"]) for m in live), default=0)
    for m in live:
        m["stop"], m["stopped_as"] = None, None
    for k in range(depth):
        for m in live:
            upto = m["stop"] if m["stop"] is not None else min(k, len(m["res"]["looks"]) - 1)
            looks = m["res"]["looks"][:upto + 1]
            m["seq"] = {d: repeated_p(m["res"]["design"], [look[d] for look in looks]) for d in DIRECTIONS}
            m["at"] = upto
        # an untestable claim counts in its family's size (as p = 1): the family is fixed by its claims,
        # not by which of them the data happen to make testable
        adjusted = {d: holm([1.0 if math.isnan(m["seq"][d]) else m["seq"][d] for m in live]) for d in DIRECTIONS}
        for i, m in enumerate(live):
            m["adj"] = {d: (math.nan if math.isnan(m["seq"][d]) else adjusted[d][i]) for d in DIRECTIONS}
            if m["stop"] is None and k < len(m["res"]["looks"]) and any(v < ALPHA for v in m["adj"].values()):
                m["stop"], m["stopped_as"] = k, verdict(m["adj"])


def verdict(adj: dict) -> str:
    if adj["p_against"] < ALPHA:  # contradicted: checked first, so a claim is never both
        return "not held"
    if adj["p"] < ALPHA:
        return "held"
    if adj["p_short"] < ALPHA:
        return "not held"
    return "inconclusive"


def untestable(res: dict | None) -> bool:
    """Every setting's contrast is untestable (every run of every arm the same value: 0 sinks against 0)."""
    return bool(res and res["settings"]) and all(s["contrast"].method.startswith("untestable")
                                                  for s in res["settings"])


def holm_step(m: dict, members: list[dict]) -> float:
    """The level of a claim's Holm step in its family: alpha / (m - rank + 1), by its sequential p."""
    ps = sorted(x["seq"]["p"] for x in members if x["res"] is not None and not math.isnan(x["seq"]["p"]))
    p = m["seq"]["p"]
    rank = ps.index(p) + 1 if not math.isnan(p) else len(ps) + 1
    return ALPHA / max(1, len(ps) + 1 - rank)


def standing(judged: list[tuple]) -> list[dict]:
    """Each claim of ``ledger.judge`` replayed within its family: {recipe, claim, res, family, stop, at,
    seq, adj, verdict} (``at``: the look it stands at; res None: no finished runs)."""
    members = [{"recipe": r, "claim": c, "res": res, "family": family_of(r, c)} for r, c, _, res in judged]
    for fam in dict.fromkeys(m["family"] for m in members):
        replay([m for m in members if m["family"] == fam])
    for m in members:
        # a claim keeps the verdict it stopped with: a level passed on later by another claim's
        # rejection never turns a contradicted claim into a held one
        m["verdict"] = (m["stopped_as"] or verdict(m["adj"])) if m["res"] is not None else "inconclusive"
        if m["verdict"] == "inconclusive" and untestable(m["res"]):
            m["verdict"] = "untestable"  # no arm varies anywhere: no test, and no seeds can change that
        m["needed"] = None
        if m["res"] is not None and m["verdict"] == "inconclusive":
            size(m, [x for x in members if x["family"] == m["family"]])
    return members


def size(m: dict, family: list[dict]) -> None:
    """Seeds per arm each undecided setting would need at the claim's Holm step (set in place)."""
    level = holm_step(m, family)
    look = m["res"]["looks"][m["at"]]
    for s in look["settings"]:
        if s["verdict"] == "inconclusive":
            s["needed"] = seeds_needed(m["claim"], s["contrast"], s["values"], alpha=level)
    counts = [s.get("needed") for s in look["settings"] if s.get("needed")]
    m["needed"] = max(counts) if counts else None


def decide(judged: list[tuple]) -> pd.DataFrame:
    """The ledger of ``ledger.judge``'s claims: one row each, with ``COLUMNS``."""
    members = standing(judged)
    rows = [row(m) for m in members]
    df = pd.DataFrame(rows)
    df["q_ledger"] = benjamini_hochberg(df["p"].tolist()) if len(df) else []
    return df.reindex(columns=COLUMNS)


def row(m: dict) -> dict:
    c, res = m["claim"], m["res"]
    base = {"claim": c.statement, "source": c.source, "recipe": m["recipe"], "family": m["family"],
            "metric": c.metric}
    if res is None:
        return {**base, "test": test_name(c, "-"), "verdict": "inconclusive", "evidence": "no finished runs yet",
                "p": math.nan, "p_adjusted": math.nan, "p_against": math.nan, "p_against_adjusted": math.nan,
                "seeds": 0, "seeds_needed": None, "looks": "-", "settings": 0}
    look = res["looks"][m["at"]]
    said, needed = m["verdict"], m["needed"]
    design = res["design"]
    return {**base, "test": look["test"], "verdict": said,
            "evidence": evidence_text(c, look) + "; " + sequence_text(m, said),
            "p": m["seq"]["p"], "p_adjusted": m["adj"]["p"], "p_against": m["seq"]["p_against"],
            "p_against_adjusted": m["adj"]["p_against"], "seeds": look["seeds"], "seeds_needed": needed,
            "looks": f"{design.looks[m['at']]} of {'/'.join(map(str, design.looks))}",
            "settings": len(look["settings"])}


def sequence_text(m: dict, said: str) -> str:
    """Where the claim stands in its design, in words."""
    design, k = m["res"]["design"], m["at"]
    where = f"look {k + 1} of {len(design.looks)} (n={design.looks[k]} per arm, {design.spending} spending)"
    if said == "held":
        return f"{where}: held within its family (Holm, p_adjusted {m['adj']['p']:.2g})"
    if m["adj"]["p_against"] < ALPHA:
        return f"{where}: contradicted within its family (p_against_adjusted {m['adj']['p_against']:.2g})"
    if said == "not held":
        effect = effect_of(m["claim"])
        shown = math.exp(effect) if m["claim"].scale == "log" else effect
        return (f"{where}: significantly short of its effect of interest ({shown:g}) within its family "
                f"(p {m['adj']['p_short']:.2g}): not held as the effect it claims (a smaller one may be real)")
    if k + 1 < len(design.looks):
        return f"{where}: undecided; the next look is at n={design.looks[k + 1]} (normbench claims --settle)"
    return f"{where}: undecided at the design's last look"


def ledger(sources) -> pd.DataFrame:
    """Every claim of ``sources`` (``ledger.sources_for``) judged on its finished runs, as a DataFrame
    with ``COLUMNS``."""
    return decide(judge(sources))


def claims_ledger(paths=("recipes",), out="results") -> pd.DataFrame:
    """The Python API: the ledger of recipe files or results folders (as ``normbench claims``)."""
    return ledger(sources_for(paths, out))
