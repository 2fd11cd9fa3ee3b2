"""Every shipped recipe validates and runs (shortened), and its claims are checked. That docs/ documents
every key and option is test_docs.py's."""
import dataclasses
from pathlib import Path

import pytest

import normbench
from normbench.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "recipes" / "literature").glob("*.yaml"))
SHORT = {"train.steps": 2, "train.eval_every": 2, "train.eval_tokens": 64, "data.max_chars": 20000, "device": "cpu"}


def test_there_are_recipes():
    assert (ROOT / "recipes" / "quickstart.yaml") in RECIPES


def covering_runs(rec):
    """A few runs in which every value of every swept key appears at least once:
    all of a recipe's runs are validated when it loads; these ones train (init_conventions alone
    has 72 runs, which would cost the suite minutes for nothing a cover does not test)."""
    keys = [k for k in rec.varied if k != "seed"]  # a seed is a number: any run trains with one
    seen, chosen = set(), []
    for run in rec.runs:
        values = {(k, str(run.values.get(k, run.cfg.seed if k == "seed" else None))) for k in keys}
        if values - seen:
            chosen.append(run)
            seen |= values
    return chosen


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_opens_with_its_claim_and_command_and_runs_shortened(path, tmp_path):
    text = path.read_text()
    assert text.startswith("# Claim") and f"normbench run {path.relative_to(ROOT).as_posix()}" in text
    rec = load_recipe(path)
    assert rec.name == path.stem and rec.description and len(rec.runs) >= 2
    swept = set(rec.varied)  # a --set of a swept key replaces its sweep: shorten the rest only
    short = load_recipe(path, {k: v for k, v in SHORT.items() if k not in swept})
    cover = dataclasses.replace(short, runs=covering_runs(short))
    assert 1 <= len(cover.runs) <= 12
    df = normbench.run_recipe(cover, out=tmp_path, jobs=2)
    assert len(df) == len(cover.runs) and set(df["status"]) <= {"completed", "diverged"}
    # every claim is checked on the shortened runs (the verdict need not be "held" after 2 steps)
    from normbench.analysis.decide import ledger

    checked = ledger([(short.name, short.claims, tmp_path / short.name)])
    assert checked["claim"].tolist() == [c.statement for c in short.claims]
    assert all(t and not t.endswith("; -") for t in checked["test"])  # every claim names its test
    assert "literature" not in str(path) or len(short.claims) >= 1  # the ledger's recipes carry claims
