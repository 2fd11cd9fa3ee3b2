"""Settling inconclusive claims with more seeds, validly: Stein's two-stage procedure.

Re-testing after each added seed inflates false positives. Stein's procedure does not: the seeds
already run are the first stage (n0 per arm, paired by seed); their spread s0 fixes, once, the
total number of seeds

    N = max(n0 + 1, smallest n with (t_{1-a, n0-1} + t_{power, n0-1}) * s0 / sqrt(n) <= gap)

(gap: the claim's effect minus its margin, or the margin of a same/noninferior claim; a same claim
uses t_{1-(1-power)/2}). The second stage runs seeds n0 .. N-1 of the setting's arms, and the
claim is then judged by Stein's test: the mean of all N differences over s0/sqrt(N), with n0 - 1
degrees of freedom, which has exact level whatever s0 turned out to be. The plan is written to
settle.yaml before any run starts and is never recomputed, so resuming an interrupted settle runs
the same second stage. Paired t settings only: rank tests (diverged runs), Fisher's rates and
unpaired designs are left as they are, with a note.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from ..sweep import store
from ..errors import NormbenchError
from .ledger import SETTLE_FILE, effect_gap, judge, read_settled, seed_contrasts
from .stats import seeds_for


def plan_stage2(claim, setting: dict) -> dict | None:
    """The second stage of one inconclusive paired setting: first-stage seeds, s0, N; None if none fits."""
    c = setting["contrast"]
    if c.method != "paired t":
        return None
    diffs = seed_contrasts(claim, setting["values"])
    n0 = len(diffs)
    gap = effect_gap(claim)
    if n0 < 2 or not gap:
        return None
    s0 = statistics.stdev(diffs.values())
    total = seeds_for(s0, gap, k=1.0, two_sided_power=claim.kind == "same", df_from=n0 - 1)
    if total is None:
        return None
    return {"first_stage_seeds": sorted(int(s) for s in diffs), "s0": float(s0), "n_total": max(total, n0 + 1)}


def stage2_specs(recipe, claim, setting: dict, plan: dict) -> list:
    """The RunSpecs of the second stage: each arm's run of the first first-stage seed, re-seeded."""
    first = plan["first_stage_seeds"]
    by_id = {r.run_id: r for r in recipe.runs}
    extra = plan["n_total"] - len(first)
    new_seeds = [s for s in range(max(first) + 1, max(first) + 1 + 10 * extra + 100)
                 if s not in first][:extra]
    specs = []
    for part in setting["parts"]:
        rows = part[part["seed"] == first[0]]
        for rid in rows["run_id"]:
            spec = by_id.get(rid)
            if spec is None:
                continue
            for s in new_seeds:
                cfg = dataclasses.replace(spec.cfg, seed=s)
                specs.append(type(spec)(cfg, {**spec.values, "seed": s}))
    return specs


def settle_recipes(paths, out, budget: int, jobs: int | None = None) -> list[str]:
    """Plan and run the second stages of the inconclusive claims of ``paths`` (recipe files), within
    ``budget`` new runs; returns what was done, a line each."""
    import yaml

    from ..recipe import Recipe, load_recipe
    from ..sweep.execute import execute, make_plan

    lines, left = [], budget
    for path in paths:
        rec = load_recipe(path)
        folder = Path(out) / rec.name
        if not folder.is_dir():
            raise NormbenchError(f"no results for recipe {rec.name} yet: run it first "
                                 f"(normbench run {path} --out {out})", file=str(path))
        settled = read_settled(folder)
        todo = []
        for _, claim, done, res in judge([(rec.name, rec.claims, folder, {r.run_id for r in rec.runs}, settled)]):
            if res is None:
                continue
            for s in res["settings"]:
                known = settled.get(claim.statement, {}).get(s["setting"])
                if known is None and s["verdict"] != "inconclusive":
                    continue
                plan = known or plan_stage2(claim, s)
                if plan is None:
                    lines.append(f"{rec.name}: {claim.statement!r} [{s['setting'] or 'all runs'}]: not settled "
                                 f"({s['contrast'].method}; Stein's procedure needs a paired t-test and an effect)")
                    continue
                specs = stage2_specs(rec, claim, s, plan)
                new = [sp for sp in specs if store.status(folder / sp.run_id) not in store.DONE]
                if known is None and len(new) > left:
                    lines.append(f"{rec.name}: {claim.statement!r} [{s['setting'] or 'all runs'}]: needs "
                                 f"{len(new)} runs (N={plan['n_total']} seeds), over the budget left ({left})")
                    continue
                left -= len(new)
                plan["runs"] = sorted({sp.run_id for sp in specs})
                settled.setdefault(claim.statement, {})[s["setting"]] = plan
                todo += new
                lines.append(f"{rec.name}: {claim.statement!r} [{s['setting'] or 'all runs'}]: first stage "
                             f"n0={len(plan['first_stage_seeds'])}, s0={plan['s0']:.3g} -> N={plan['n_total']} "
                             f"seeds ({len(new)} runs to go)")
        # the plan is on disk before any second-stage run starts: it is fixed, whatever they show
        store.write_atomic(folder / SETTLE_FILE, yaml.safe_dump(settled, sort_keys=False, allow_unicode=True))
        unique = list({sp.run_id: sp for sp in todo}.values())
        if unique:
            stage = Recipe(name=rec.name, description=f"second stage of {rec.name}", runs=unique)
            from rich.console import Console

            from ..sweep.display import make_reporter

            # progress on stderr: stdout carries the ledger (--format json, csv)
            reporter = make_reporter(quiet=True, console=Console(stderr=True, soft_wrap=True))
            outcome = execute(make_plan(stage, out), jobs=jobs, reporter=reporter)
            if outcome.interrupted:
                raise KeyboardInterrupt()
    return lines


