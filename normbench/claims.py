"""Claims as data: the schema of a recipe's ``claims:`` list (the ledger that judges them is ledger.py).

A claim names its source, the statement in words, a metric and one of four kinds of test::

    claims:
      - source: Xiong et al. 2020
        statement: Post-LN's gain from warmup exceeds Pre-LN's
        metric: final_val_loss
        higher: {train.warmup_steps: 0}       # the contrast d = higher - lower ...
        lower: {train.warmup_steps: 50}
        larger_at: {model.placement: post}    # ... is larger here (interaction)
        smaller_at: {model.placement: pre}    # ... than here
      - source: Zhang & Sennrich 2019
        statement: RMSNorm matches LayerNorm's loss within 0.02 nats
        metric: final_val_loss
        same: [{model.norm: rmsnorm}, {model.norm: layernorm}]
        margin: 0.02                          # equivalence within this (required)
      - source: Wortsman et al. 2023
        statement: With z-loss, |log Z| stays below 1
        metric: abs_final_log_z
        arm: {train.z_loss: 1.0e-4}           # bound: the arm's mean is below this value
        below: 1.0
      - source: Zhu et al. 2025
        statement: DyT is not worse than LayerNorm by more than 0.02 nats
        metric: final_val_loss
        candidate: {model.norm: dyt}          # non-inferiority: candidate - reference < margin
        reference: {model.norm: layernorm}    # (every claim metric is lower-is-better)
        margin: 0.02

Kinds: ``directional`` (higher, lower; d = higher - lower > margin), ``same`` (equivalence within
margin), ``noninferior`` (candidate, reference; d = candidate - reference < margin),
``interaction`` (higher, lower, larger_at, smaller_at; d(larger_at) - d(smaller_at) > margin) and
``bound`` (arm, below or above: the arm's mean is below, or above, a stated value, a one-sample test;
on the log scale its geometric mean).
Options: ``where`` (the runs the claim is about), ``scale`` (linear or log; log is the default for
multiplicative metrics, and its margin is a factor: ``margin: 2`` is "at least twice"), ``across``
(every: the claim must hold in every setting of the other varied keys; average: one test blocked by
setting), ``paired`` (true: per-seed differences where the arms share their seeds; false: Welch) and
``effect`` (the smallest effect of interest: ``seeds needed`` is sized for it, and a claim whose
effect is significantly below it stops as not held), ``family`` (the claims whose error is
controlled together; default: the claims of one ``source`` in one recipe), ``looks`` (the seeds per
arm at which ``--settle`` looks; default 3, 6, 10, 16, 24) and ``spending`` (pocock or obf).
The verdict rule is in ledger.py and docs/claims.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import NormbenchError, Problems
from .measures import BINARY, CLAIM_METRICS, LOG_SCALE

CLAIM_KEYS = ("source", "statement", "metric", "where", "higher", "lower", "same", "candidate", "reference",
              "larger_at", "smaller_at", "arm", "below", "above", "margin", "scale", "across", "paired", "effect", "family",
              "looks", "spending")
KINDS = ("directional", "same", "noninferior", "interaction", "bound")
CLAIMS_FILE = "claims.yaml"  # written into a recipe's results folder, so `normbench claims RESULTS` finds them
VERDICTS = ("held", "not held", "inconclusive", "untestable")
@dataclass(frozen=True)
class Claim:
    source: str
    statement: str
    metric: str
    where: dict[str, list]
    a: dict[str, list]  # higher, the first of same, the candidate, or a bound's arm
    b: dict[str, list]  # lower, the second of same, or the reference ({} for a bound)
    kind: str  # one of KINDS
    margin: float = 0.0  # in the metric's units; on the log scale a factor >= 1; a bound's value
    scale: str = "linear"
    across: str = "every"
    paired: bool = True
    effect: float | None = None
    family: str | None = None  # None: the claims of one source in one recipe
    looks: tuple | None = None  # None: sequential.SCHEDULE
    spending: str = "pocock"
    larger_at: dict = field(default_factory=dict)  # interaction only
    smaller_at: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, compare=False)  # as written, for claims.yaml
    above: bool = False  # a bound claim: the mean is above the value (else below)

    @property
    def shift(self) -> float:
        """The margin on the scale the test works on (a log factor on the log scale)."""
        return math.log(self.margin) if self.scale == "log" else self.margin

    def selectors(self) -> list[dict]:
        if self.kind == "bound":
            return [self.a]
        return [self.a, self.b] + ([self.larger_at, self.smaller_at] if self.kind == "interaction" else [])


def parse_claims(raw: Any, runs: list | None = None) -> list[Claim]:
    """Validate a recipe's ``claims:`` (every problem reported, one line each). ``runs``: the recipe's
    RunSpecs, to check that each group selects some run."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise NormbenchError("expected a list of claims (see docs/claims.md)", key="claims")
    problems, out = Problems(), []
    for i, item in enumerate(raw):
        where = f"claims[{i}]"
        with problems.check():
            out.append(_claim(item, where, runs))
    problems.raise_any()
    return out


def _kind(item: dict) -> str:
    if "below" in item or "above" in item or "arm" in item:
        return "bound"
    if "same" in item:
        return "same"
    if "candidate" in item or "reference" in item:
        return "noninferior"
    if "larger_at" in item or "smaller_at" in item:
        return "interaction"
    return "directional"


KIND_KEYS = {"directional": ("higher", "lower"), "same": ("same",), "noninferior": ("candidate", "reference"),
             "interaction": ("higher", "lower", "larger_at", "smaller_at"), "bound": ("arm",)}
GROUP_KEYS = ("higher", "lower", "same", "candidate", "reference", "larger_at", "smaller_at", "arm")


def _claim(item: Any, where: str, runs) -> Claim:
    from .dotted import suggest

    if not isinstance(item, dict):
        raise NormbenchError("expected a mapping with source, statement, metric and the groups of its test "
                             "(higher/lower, same, candidate/reference, or an interaction)", key=where)
    problems, original = Problems(), item
    for k in item:
        if k not in CLAIM_KEYS:
            problems.add(NormbenchError(f"unknown key{suggest(str(k), CLAIM_KEYS)}; expected {', '.join(CLAIM_KEYS)}",
                                        key=f"{where}.{k}"))
    for k in ("source", "statement"):
        if not isinstance(item.get(k), str) or not item.get(k).strip():
            problems.add(NormbenchError("expected a non-empty string", key=f"{where}.{k}"))
    metric = item.get("metric")
    if metric not in CLAIM_METRICS:
        problems.add(NormbenchError(f"expected one of {', '.join(CLAIM_METRICS)}, got {metric!r}",
                                    key=f"{where}.metric"))
    kind = _kind(item)
    for k in GROUP_KEYS:
        if k in item and k not in KIND_KEYS[kind]:
            problems.add(NormbenchError(f"{k} does not belong to a {kind} claim (it has "
                                        f"{', '.join(KIND_KEYS[kind])})", key=f"{where}.{k}"))
    scale = item.get("scale", "log" if metric in LOG_SCALE else "linear")
    if scale not in ("linear", "log"):
        problems.add(NormbenchError(f"expected linear or log, got {scale!r}", key=f"{where}.scale"))
        scale = "linear"
    across = item.get("across", "every")
    if across not in ("every", "average"):
        problems.add(NormbenchError(f"expected every or average, got {across!r}", key=f"{where}.across"))
    paired = item.get("paired", True)
    if not isinstance(paired, bool):
        problems.add(NormbenchError(f"expected true or false, got {paired!r}", key=f"{where}.paired"))
        paired = True
    default_margin = 1.0 if scale == "log" else 0.0
    above = kind == "bound" and "above" in item
    if kind == "bound":
        item = {**item, "margin": _bound(item, where, scale, problems)}
    margin = item.get("margin", default_margin)
    floor = 1.0 if scale == "log" else 0.0
    if kind != "bound" and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= floor):
        what = "a factor >= 1 on the log scale" if scale == "log" else "a number >= 0"
        problems.add(NormbenchError(f"expected {what}, got {margin!r}", key=f"{where}.margin"))
        margin = default_margin
    if kind in ("same", "noninferior") and margin == floor and "margin" in item or             kind in ("same", "noninferior") and "margin" not in item:
        problems.add(NormbenchError(f"a {kind} claim needs a margin ({'> 1' if scale == 'log' else '> 0'}): "
                                    "within how much?", key=f"{where}.margin"))
    effect = item.get("effect")
    if effect is not None and (isinstance(effect, bool) or not isinstance(effect, (int, float)) or effect <= 0
                               or (scale == "log" and effect <= 1)):
        what = "a factor > 1 on the log scale (2: twice)" if scale == "log" else "a number > 0"
        problems.add(NormbenchError(f"expected {what}, got {effect!r}", key=f"{where}.effect"))
        effect = None
    family = item.get("family")
    if family is not None and (not isinstance(family, str) or not family.strip()):
        problems.add(NormbenchError(f"expected a non-empty string, got {family!r}", key=f"{where}.family"))
        family = None
    looks = item.get("looks")
    if looks is not None and not (isinstance(looks, list) and looks
                                  and all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in looks)
                                  and all(a < b for a, b in zip(looks, looks[1:]))):
        problems.add(NormbenchError(f"expected increasing seed counts >= 2, e.g. [3, 6, 10, 16, 24], got {looks!r}",
                                    key=f"{where}.looks"))
        looks = None
    spending = item.get("spending", "pocock")
    if spending not in ("pocock", "obf"):
        problems.add(NormbenchError(f"expected pocock or obf, got {spending!r}", key=f"{where}.spending"))
        spending = "pocock"
    if metric in BINARY:
        check_rate(metric, kind, margin != default_margin, across, scale, where, problems)
    sel = groups_of(item, kind, where, runs, problems)
    problems.raise_any()
    return Claim(item["source"].strip(), item["statement"].strip(), metric, sel["where"], sel["a"], sel.get("b", {}), kind,
                 float(margin), scale, across, paired, None if effect is None else float(effect),
                 family.strip() if family else None, tuple(looks) if looks else None, spending,
                 sel.get("larger_at", {}), sel.get("smaller_at", {}), raw=original, above=above)


def _bound(item: dict, where: str, scale: str, problems: Problems) -> float:
    """A bound claim's value (``below`` or ``above``, exactly one), checked; it takes no margin or effect."""
    for k in ("margin", "effect"):
        if k in item:
            problems.add(NormbenchError(f"a bound claim takes no {k}: below (or above) is its value",
                                        key=f"{where}.{k}"))
    if ("below" in item) == ("above" in item):
        problems.add(NormbenchError("a bound claim needs one of below or above, its value", key=f"{where}.below"))
    side = "above" if "above" in item else "below"
    bound = item.get(side)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or (scale == "log" and not bound > 0):
        what = "a number > 0 (the metric is compared as a log)" if scale == "log" else "a number"
        problems.add(NormbenchError(f"expected {what}, got {bound!r}", key=f"{where}.{side}"))
        return 1.0
    return float(bound)


def check_rate(metric: str, kind: str, has_margin: bool, across: str, scale: str, where: str,
               problems: Problems) -> None:
    """A rate (diverged, stalled) is tested by Fisher's exact test: directional, no margin, every setting,
    linear."""
    if kind != "directional":
        problems.add(NormbenchError(f"{metric} is a rate (Fisher's exact test): only higher/lower claims",
                                    key=f"{where}.metric"))
    if has_margin:
        problems.add(NormbenchError(f"{metric} is a rate: no margin", key=f"{where}.margin"))
    if across == "average":
        problems.add(NormbenchError(f"{metric} is a rate: across: every only", key=f"{where}.across"))
    if scale == "log":
        problems.add(NormbenchError(f"{metric} is a rate (0 or 1 per run): linear scale only", key=f"{where}.scale"))


def groups_of(item: dict, kind: str, where: str, runs, problems: Problems) -> dict:
    """The claim's groups as selectors: where, a and b (and larger_at/smaller_at for an interaction)."""
    sel = {}
    with problems.check():
        sel["where"] = _selector(item.get("where") or {}, f"{where}.where", runs, allow_empty=True)
    if kind == "same":
        same = item["same"]
        if not (isinstance(same, list) and len(same) == 2):
            problems.add(NormbenchError("expected a list of two groups, e.g. [{model.norm: rmsnorm}, "
                                        "{model.norm: layernorm}]", key=f"{where}.same"))
            same = [{}, {}]
        for j, side in enumerate(("a", "b")):
            with problems.check():
                sel[side] = _selector(same[j], f"{where}.same[{j}]", runs)
    else:
        names = dict(zip(("a", "b", "larger_at", "smaller_at"), KIND_KEYS[kind]))
        for side, name in names.items():
            if name not in item:
                problems.add(NormbenchError(f"a {kind} claim needs {', '.join(KIND_KEYS[kind])}", key=f"{where}.{name}"))
                continue
            with problems.check():
                sel[side] = _selector(item[name], f"{where}.{name}", runs)
    return sel


def _selector(raw: Any, where: str, runs, allow_empty: bool = False) -> dict[str, list]:
    """{dotted key: accepted values}; keys are recipe keys (short names resolve), values scalars or lists."""
    from .config import config_keys
    from .dotted import matches, resolve_key

    if not isinstance(raw, dict) or (not raw and not allow_empty):
        raise NormbenchError("expected a mapping of recipe keys to values, e.g. {model.norm: rmsnorm}", key=where)
    out = {}
    for k, v in raw.items():
        key = resolve_key(str(k), config_keys(), where)
        values = v if isinstance(v, list) else [v]
        if not values or any(isinstance(x, (dict, list)) for x in values):
            raise NormbenchError(f"expected a value or a list of values for {key}, got {v!r}", key=where)
        out[key] = values
    if runs is not None and out:
        from .dotted import get_dotted

        if not any(all(any(matches(get_dotted(r.cfg.to_dict(), k), str(x)) for x in vs) for k, vs in out.items())
                   for r in runs):
            shown = ", ".join(f"{k}={'|'.join(map(str, vs))}" for k, vs in out.items())
            raise NormbenchError(f"no run of this recipe has {shown}", key=where)
    return out


