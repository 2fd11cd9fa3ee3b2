"""The reference tables of docs/, generated from the schema: the recipe keys (config.py), the names
(catalog.py), the summary fields and metrics.jsonl columns (measures.py) and every command's
options (the Typer app). Each sits in its page between ``<!-- generated: NAME -->`` and
``<!-- end generated -->``; a test checks that every page holds exactly what this writes.

    python -m normbench.docgen        # rewrite the generated sections of docs/*.md
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = {"keys": "recipes.md", "names": "conventions.md", "summary": "measurements.md", "series": "measurements.md",
         "cli": "cli.md"}
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def keys_table() -> str:
    from .config import all_keys

    rows = ["| key | default | type | meaning |", "|---|---|---|---|"]
    for key, default, tp, text in all_keys():
        rows.append(f"| `{key}` | `{'null' if default is None else default}` | {cell(tp)} | {cell(text)} |")
    return "\n".join(rows) + "\n"


def names_table() -> str:
    from .catalog import INITS, NORMS, PLACEMENTS, TASKS

    out = []
    for title, items in (("Norms (`model.norm`)", NORMS), ("Placements (`model.placement`)", PLACEMENTS),
                         ("Initialisations (`model.init`)", INITS), ("Tasks (`data.task`)", TASKS)):
        out += [f"**{title}**", "", "| name | what it is |", "|---|---|"]
        out += [f"| `{name}` | {cell(text)} |" for name, text in items.items()] + [""]
    return "\n".join(out)


def summary_table() -> str:
    from .measures import MEASUREMENTS, WHEN

    rows = ["| key | measurement | when | meaning | compare column | diverged runs | claims scale |",
            "|---|---|---|---|---|---|---|"]
    for meas in MEASUREMENTS:
        for m in meas.metrics:
            kind = "claims only" if m.derive is not None or m.across_lrs else \
                "list (summary.json only)" if m.listed else ""
            column = f"{m.title} ({'lower' if m.lower_better else 'higher'} is better; shown: {m.column})" \
                if m.compared else kind or "-"
            rows.append(f"| `{m.key}` | {meas.name} | {cell(WHEN[meas.when])} | {cell(m.doc)} | {cell(column)} | "
                        f"{'yes' if m.on_diverged else 'no'} | {m.scale} |")
    return "\n".join(rows) + "\n"


def series_table() -> str:
    from .measures import MEASUREMENTS, WHEN

    rows = ["| column | measurement | when | meaning | figure panel |", "|---|---|---|---|---|"]
    for meas in MEASUREMENTS:
        for s in meas.series:
            panel = f"{s.panel} ({'log' if s.log else 'linear'} axis)" if s.panel else "-"
            rows.append(f"| `{s.column}` | {meas.name} | {cell(WHEN[meas.when])} | {cell(s.doc)} | {cell(panel)} |")
    return "\n".join(rows) + "\n"


def cli_reference() -> str:
    import typer

    from .cli import app

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        out += [f"#### `normbench {name}`", "", cell((cmd.help or "").strip().split("\n\n")[0]), ""]
        rows = ["| argument or option | default | meaning |", "|---|---|---|"]
        for p in cmd.params:
            if p.name == "help":
                continue
            names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts]) if p.param_type_name == "option" \
                else f"`{(p.metavar or p.name).upper()}`"
            default = p.default if p.param_type_name == "option" else None
            default = "" if default is None or default == () or default == [] else f"`{default}`"
            rows.append(f"| {names} | {default} | {cell(getattr(p, 'help', '') or '')} |")
        out += rows + [""]
    return "\n".join(out)


GENERATORS = {"keys": keys_table, "names": names_table, "summary": summary_table, "series": series_table,
              "cli": cli_reference}


def render(text: str) -> str:
    """``text`` with each generated section replaced by what its generator writes now."""
    return BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group(2)]() + m.group(4), text)


def main() -> None:
    for page in sorted(set(PAGES.values())):
        path = DOCS / page
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path}")
    sys.exit(0)


if __name__ == "__main__":
    main()
