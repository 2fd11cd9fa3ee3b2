"""Settling undecided claims with more seeds, validly: a group-sequential design (sequential.py).

Each undecided claim is taken to its design's next look (seeds per arm: 3, 6, 10, 16, 24 by
default), all its arms in all its settings, and judged again within its family (decide.py); a claim
stops when it is held, contradicted or significantly short of its effect of interest, or at the
design's last look (or ``--max-seeds``). Each look's plan (its seeds and run ids) is written to
settle.yaml before its runs start and is never recomputed, so an interrupted settle (even kill -9)
resumes the same look. ``--budget`` bounds the new runs of one call. Looks are taken cheapest
first, by their runs' time (never by their data), about ROUND_SECONDS of runs per round before
the families are judged again, so a cheap claim may take several looks while an expensive one
waits; a look that does not fit the budget is left for a later call.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..sweep import store
from ..errors import NormbenchError
from .ledger import SETTLE_FILE, judge, read_settled


def look_seeds(order: list, n: int) -> list[int]:
    """The seeds of a look at n per arm: the claim's seeds so far in order, then new ones beyond them."""
    seeds = [int(s) for s in order[:n]]
    nxt = max(seeds) + 1 if seeds else 0
    while len(seeds) < n:
        seeds.append(nxt)
        nxt += 1
    return seeds


def look_specs(recipe, member: dict, seeds: list[int]) -> list:
    """The RunSpecs of a look: every arm of every setting at each of ``seeds``, from the arm's run of
    the claim's first seed (a run of the recipe as written), re-seeded."""
    res = member["res"]
    first = res["order"][0]
    by_id = {r.run_id: r for r in recipe.runs}
    specs = {}
    for s in res["looks"][-1]["settings"]:
        for part in s["parts"]:
            for rid in part[part["seed"] == first]["run_id"]:
                spec = by_id.get(rid)
                if spec is None:
                    continue
                for seed in seeds:
                    cfg = dataclasses.replace(spec.cfg, seed=seed)
                    new = type(spec)(cfg, {**spec.values, "seed": seed})
                    specs[new.run_id] = new
    return list(specs.values())


def check_design(settled: dict, member: dict, folder: Path) -> None:
    """A claim's looks and spending are fixed once its first look is planned: a recipe edited since
    is refused in one line, never a new design on seen data."""
    entry = settled.get(member["claim"].statement)
    if not (isinstance(entry, dict) and isinstance(entry.get("looks"), list)):
        return
    claim, stored = member["claim"], entry["design"]
    if (claim.looks and tuple(n for n in claim.looks if n > entry["first"]) != tuple(stored["looks"][1:])) \
            or claim.spending != stored.get("spending", "pocock"):
        raise NormbenchError(f"claim {claim.statement!r}: its design is fixed in settle.yaml (looks "
                             f"{stored['looks']}, {stored.get('spending', 'pocock')} spending); the recipe now "
                             f"says otherwise", file=str(folder / SETTLE_FILE))


def entry_for(settled: dict, member: dict) -> dict:
    """The claim's settle.yaml entry in this format: its design, its first look, its looks. A 0.7.0
    entry (Stein's second stages, one per setting) keeps its runs as seeds of the same arms."""
    entry = settled.get(member["claim"].statement)
    if isinstance(entry, dict) and isinstance(entry.get("looks"), list):
        return entry
    legacy = sorted({rid for st in (entry or {}).values() if isinstance(st, dict) for rid in st.get("runs", [])})
    design = member["res"]["design"]
    fresh = {"design": design.to_dict(), "first": design.looks[0], "looks": []}
    if legacy:
        fresh["looks"].append({"n": None, "note": "0.7.0's Stein second stage: more seeds of the same arms",
                               "runs": legacy})
    settled[member["claim"].statement] = fresh
    return fresh


ROUND_SECONDS = 900  # run time (estimated) taken per round before the families are judged again


def seconds_per_run(member: dict) -> float:
    """The median run time of the claim's runs so far (summary wall_s): what a look costs, by its runs'
    time, never by their results."""
    import statistics

    times = [float(t) for s in member["res"]["looks"][-1]["settings"] for part in s["parts"]
             for t in part.get("wall_s", []) if t == t]
    return statistics.median(times) if times else 1.0


def plan_looks(recipes: dict, members: list[dict], max_seeds: int | None, left: int, lines: list,
               attempted: set) -> dict:
    """The next look of each undecided claim, cheapest first within ``left`` new runs: {recipe name:
    [RunSpec]}; each look's plan goes into its recipe's settle.yaml (written by the caller)."""
    wanted = []
    for m in members:
        res = m["res"]
        if res is None or m["verdict"] != "inconclusive":
            continue
        design, at = res["design"], m["at"]
        label = f"{m['recipe']}: {m['claim'].statement!r}"
        if at + 1 >= len(design.looks):
            lines.append(f"{label}: undecided at the design's last look (n={design.looks[at]})")
            continue
        n = design.looks[at + 1]
        settings = res["looks"][at]["settings"]
        if settings and all(st["contrast"].method.startswith("untestable") for st in settings):
            lines.append(f"{label}: untestable (no arm varies): more seeds of the same runs would not decide it")
            continue
        needed = [st.get("needed") for st in settings]
        if any(x and x > design.looks[-1] for x in needed):
            # stopping a claim without a verdict is non-binding: it cannot raise any error rate
            lines.append(f"{label}: would need ~{max(x for x in needed if x)} seeds per arm, beyond the "
                         f"design's last look ({design.looks[-1]}): not settled")
            continue
        if max_seeds is not None and n > max_seeds:
            lines.append(f"{label}: undecided at --max-seeds {max_seeds} (next look n={n})")
            continue
        rec, folder, settled = recipes[m["recipe"]]
        check_design(settled, m, folder)
        if (m["recipe"], m["claim"].statement, n) in attempted:
            lines.append(f"{label}: look at n={n} incomplete (its runs failed, or its arms' runs are missing)")
            continue
        specs = look_specs(rec, m, look_seeds(res["order"], n))
        new = [sp for sp in specs if store.status(folder / sp.run_id) not in store.DONE]
        if not specs or (new and all(sp.run_id in attempted for sp in new)):
            lines.append(f"{label}: look at n={n} incomplete (its runs failed, or its arms' runs are missing)")
            continue
        wanted.append((len(new) * seconds_per_run(m), m, n, specs, new))
    plan, taken, spent = {}, set(), 0.0
    for cost, m, n, specs, new in sorted(wanted, key=lambda w: w[0]):
        if plan and spent + cost > ROUND_SECONDS:  # the rest waits for the next round, judged afresh
            continue
        rec, folder, settled = recipes[m["recipe"]]
        fresh = [sp for sp in new if sp.run_id not in taken]
        label = f"{m['recipe']}: {m['claim'].statement!r}"
        if len(fresh) > left:
            lines.append(f"{label}: look at n={n} needs {len(fresh)} runs, over the budget left ({left})")
            continue
        spent += cost
        left -= len(fresh)
        taken |= {sp.run_id for sp in fresh}
        entry = entry_for(settled, m)
        if not any(look.get("n") == n for look in entry["looks"]):
            entry["looks"].append({"n": n, "seeds": look_seeds(m["res"]["order"], n),
                                   "runs": sorted(sp.run_id for sp in specs)})
        plan.setdefault(m["recipe"], []).extend(fresh)
        attempted.add((m["recipe"], m["claim"].statement, n))
        lines.append(f"{label}: look {m['at'] + 2} at n={n} per arm ({len(fresh)} runs to go)")
    return plan


def settle_recipes(paths, out, budget: int, jobs: int | None = None, max_seeds: int | None = None) -> list[str]:
    """Take the undecided claims of ``paths`` (recipe files) look by look until each is decided, at its
    last look, or the budget is spent; returns what was done, a line each."""
    import yaml

    from .decide import standing
    from ..recipe import Recipe, load_recipe
    from ..sweep.execute import execute, make_plan

    recipes = {}
    for path in paths:
        rec = load_recipe(path)
        folder = Path(out) / rec.name
        if not folder.is_dir():
            raise NormbenchError(f"no results for recipe {rec.name} yet: run it first "
                                 f"(normbench run {path} --out {out})", file=str(path))
        recipes[rec.name] = (rec, folder, read_settled(folder))
    lines, left, attempted = [], budget, set()
    while True:
        sources = [(name, rec.claims, folder, {r.run_id for r in rec.runs}, settled)
                   for name, (rec, folder, settled) in recipes.items()]
        step_lines = []
        plan = plan_looks(recipes, standing(judge(sources)), max_seeds, left, step_lines, attempted)
        for name in plan:  # each look's plan is on disk before its runs start: fixed, whatever they show
            rec, folder, settled = recipes[name]
            store.write_atomic(folder / SETTLE_FILE, yaml.safe_dump(settled, sort_keys=False, allow_unicode=True))
        todo = {name: specs for name, specs in plan.items() if specs}
        if not plan:  # no claim took a new look (a look whose runs all exist is judged in the next round)
            lines += step_lines
            return lines
        lines += [x for x in step_lines if "runs to go" in x]
        for name, specs in todo.items():
            left -= len(specs)
            attempted |= {sp.run_id for sp in specs}
            stage = Recipe(name=name, description=f"sequential looks of {name}", runs=specs)
            from rich.console import Console

            from ..sweep.display import make_reporter

            # progress on stderr: stdout carries the ledger (--format json, csv)
            reporter = make_reporter(quiet=True, console=Console(stderr=True, soft_wrap=True))
            outcome = execute(make_plan(stage, out, retry_failed=True), jobs=jobs, reporter=reporter)
            if outcome.interrupted:
                raise KeyboardInterrupt()
