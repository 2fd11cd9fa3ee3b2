"""The README is a front door and docs/ the reference: every recipe key, name, summary field, log
column and command option is in docs/, generated from the schema and checked for equality with it."""
import re
from pathlib import Path

import pytest

from normbench import docgen

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def section(name: str) -> str:
    text = (docgen.DOCS / docgen.PAGES[name]).read_text(encoding="utf-8")
    m = re.search(rf"<!-- generated: {name} -->\n(.*?)<!-- end generated -->", text, re.S)
    assert m, f"{docgen.PAGES[name]} has no generated {name} section"
    return m.group(1)


def first_cells(block: str) -> list[str]:
    """The first column of a markdown table's body rows: `key` -> key."""
    return [re.match(r"\| `([^`]+)`", line).group(1) for line in block.splitlines()
            if re.match(r"\| `", line)]


@pytest.mark.parametrize("page", sorted(set(docgen.PAGES.values())))
def test_generated_sections_are_current(page):
    """`python -m normbench.docgen` rewrites them; a change to the schema without it fails here."""
    text = (docgen.DOCS / page).read_text(encoding="utf-8")
    assert docgen.render(text) == text


def test_every_recipe_key_is_documented_once():
    from normbench.config import all_keys

    assert first_cells(section("keys")) == [k for k, *_ in all_keys()]


def test_every_summary_field_and_log_column_is_documented():
    from normbench.measures import METRICS, SERIES

    assert first_cells(section("summary")) == list(METRICS)  # SUMMARY_KEYS and the claims' derived metrics
    assert first_cells(section("series")) == list(SERIES)


def test_every_name_is_documented():
    from normbench.catalog import INITS, NORMS, PLACEMENTS, TASKS

    assert first_cells(section("names")) == [*NORMS, *PLACEMENTS, *INITS, *TASKS]


def test_every_command_and_option_is_documented():
    import typer.main

    from normbench.cli import app

    text = section("cli")
    group = typer.main.get_command(app)
    assert re.findall(r"#### `normbench (\w+)`", text) == list(group.commands)
    for name, cmd in group.commands.items():
        block = text.split(f"#### `normbench {name}`")[1].split("####")[0]
        documented = {o for row in block.splitlines() if row.startswith("| `") for o in re.findall(r"`(-[^`]+)`", row)}
        opts = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts] if o.startswith("-") and o not in
                ("--help", "-h")}
        assert documented == opts, name


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    pages = {p.name for p in docgen.DOCS.glob("*.md")}
    linked = {Path(m.group(1)).name for m in LINK.finditer(text) if m.group(1).startswith("docs/")}
    assert pages <= linked, pages - linked  # every docs page is reachable from the front door
    # the two commands a newcomer copies, as CI runs them
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in ('pip install -c constraints.txt -e ".[dev,ray,bpe,tensorboard,wandb,mlflow]"', "python -m pytest -q"):
        assert cmd in ci and cmd in text, cmd
    assert "normbench run recipes/quickstart.yaml" in text


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", "results/FINDINGS.md", "results/README.md",
                                  *[f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]])
def test_relative_links_resolve(page):
    path = ROOT / page
    broken = [m.group(1) for m in LINK.finditer(path.read_text(encoding="utf-8"))
              if "://" not in m.group(1) and not m.group(1).startswith("mailto:")
              and not (path.parent / m.group(1)).exists()]
    assert broken == []


def test_every_shipped_recipe_is_documented():
    text = "".join(p.read_text(encoding="utf-8") for p in [README, ROOT / "results" / "FINDINGS.md",
                                                           *docgen.DOCS.glob("*.md")])
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        if "pilots" not in path.parts:
            assert path.relative_to(ROOT).as_posix() in text, path.name


def test_the_claims_page_lists_every_log_scale_metric():
    """docs/claims.md's `scale` row names exactly the claim metrics the code compares as logs."""
    import re

    from normbench.measures import CLAIM_METRICS, LOG_SCALE

    row = next(l for l in (docgen.DOCS / "claims.md").read_text().splitlines() if l.startswith("| `scale` |"))
    assert set(re.findall(r"`(\w+)`", row.split("multiplicative metrics:")[1])) == \
        {k for k in LOG_SCALE if k in CLAIM_METRICS}


def test_extending_counts_its_edits():
    """A page that says "N edits" lists N numbered steps after it (docs/extending.md once said two and listed three)."""
    words = {"One": 1, "Two": 2, "Three": 3, "Four": 4}
    text = (docgen.DOCS / "extending.md").read_text()
    import re

    for m in re.finditer(r"\b(One|Two|Three|Four) edits?:", text):
        after = text[m.end():].split("\n## ")[0]
        steps = re.findall(r"^(\d+)\. ", after, flags=re.M)
        assert len(steps) == words[m.group(1)], (m.group(0), steps)
