"""``normbench list`` and ``keys``: the names and the recipe keys, without importing torch."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import NormbenchError
from .app import PluginOpt, app, fail, load_plugins, out_console


@app.command("list")
def list_(plugin: Optional[List[Path]] = PluginOpt):
    """List the norms (with those of --plugin files), placements, initialisations and tasks."""
    from ..catalog import INITS, NORMS, PLACEMENTS, TASKS
    from ..registry import registered

    try:
        load_plugins(plugin)
    except NormbenchError as e:
        fail(e)
    norms = {**NORMS, **{name: r.description for name, r in registered().items()}}
    for title, items in (("norms (model.norm)", norms), ("placements (model.placement)", PLACEMENTS),
                         ("initialisations (model.init)", INITS), ("tasks (data.task)", TASKS)):
        out_console.print(title, style="bold")
        for name, text in items.items():
            out_console.print(f"  {name:<18} {text}", markup=False)


@app.command()
def keys(word: Optional[str] = typer.Argument(None, metavar="[WORD]", show_default=False,
                                              help="Only the keys whose name or meaning holds WORD (case-blind), "
                                                   "e.g. normbench keys softcap")):
    """List every recipe key with its default and meaning (or those that mention WORD)."""
    from ..config import all_keys

    table = Table(title="recipe keys (under base:, or dotted in sweep and --set)", title_justify="left")
    for c in ("key", "default", "type", "meaning"):
        table.add_column(c, overflow="fold")
    for key, default, tp, text in all_keys():
        if word and word.lower() not in f"{key} {text}".lower():
            continue
        table.add_row(key, "null" if default is None else str(default), tp, text)
    out_console.print(table)
