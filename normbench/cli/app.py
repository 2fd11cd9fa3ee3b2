"""The Typer app and what every command shares: the consoles, ``fail`` (one line, exit code 2), the
--set and --plugin options, loading a recipe, and fitting a table to the terminal's width."""
from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from ..errors import NormbenchError


def _flag_type(original):
    """typer 0.29 shows a flag as if it took a value (``--force <bool>``, ``--help <bool>``): no type for flags."""
    return lambda self, ctx: None if getattr(self, "is_flag", False) else original(self, ctx)


if hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _flag_type(typer.core.TyperOption.display_type_rich)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Normalization ablations for tiny Transformers: train, measure stability, compare.")
PIPED_WIDTH = 160  # piped output gets a wide table rather than rich's 80-column default


def table_width() -> int:
    """Columns for tables: $COLUMNS when set, else the terminal's width, else PIPED_WIDTH."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    return shutil.get_terminal_size((PIPED_WIDTH, 24)).columns if sys.stdout.isatty() else PIPED_WIDTH


out_console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err_console = Console(stderr=True, highlight=False)


def fail(err: NormbenchError | str, code: int = 2) -> None:
    """One line per problem on stderr (a recipe with several mistakes lists them all), then exit."""
    for e in getattr(err, "errors", None) or [err]:
        err_console.print(f"normbench: error: {e}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from ..version import __version__

        out_console.print(f"normbench {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Normalization ablations for tiny Transformers: train, measure stability, compare."""


SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE",
                      help="Override a dotted recipe key (repeatable), e.g. --set train.steps=50; "
                           "a swept key is fixed to this value.")


PluginOpt = typer.Option(None, "--plugin", metavar="FILE.py",
                         help="Import this Python file first; it registers norms of its own with "
                              "normbench.register_norm (repeatable). See docs/plugins.md.")


def load_plugins(paths: list[Path] | None) -> None:
    from ..plugins import load_plugin

    for path in paths or []:
        load_plugin(path)


def load(recipe: Path, sets: list[str] | None, device: str | None, plugins: list[Path] | None = None):
    from ..recipe import load_recipe

    load_plugins(plugins)
    sets = list(sets or [])
    if device:
        sets.append(f"device={device}")
    return load_recipe(recipe, sets)


def fit_columns(build, cols: list, keep: set, width: int) -> tuple[Table, list]:
    """The table ``build(cols)`` with columns left out from the right, except those in ``keep``, until
    it renders within ``width``: a column that names a row is never cut. Returns it and the left out."""
    probe = Console(width=100_000, file=io.StringIO())

    def rendered(table: Table) -> int:
        with probe.capture() as cap:
            probe.print(table)
        return max((len(line.rstrip()) for line in cap.get().splitlines() if line.strip()), default=0)

    cols, dropped = list(cols), []
    while (need := rendered(build(cols))) > width:
        optional = [c for c in cols if c not in keep]
        if not optional:  # the naming columns alone are wider: printed at their width, never cut
            break
        cols.remove(optional[-1])
        dropped.insert(0, optional[-1])
    build.needed = need
    return build(cols), dropped
