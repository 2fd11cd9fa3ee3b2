"""The command line: parse, call, print. Bad input: one line on stderr, exit code 2.

torch is imported only by commands that train, so ``--help`` and ``list`` are instant.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .errors import NormbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Normalization ablations for tiny Transformers: train, measure stability, compare.")
# piped output gets a wide table rather than rich's 80-column default
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)


def fail(err: NormbenchError | str, code: int = 2) -> None:
    err_console.print(f"normbench: error: {err}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE",
                      help="Override a dotted recipe key (repeatable), e.g. --set train.steps=50; "
                           "a swept key is fixed to this value.")


def _load(recipe: Path, sets: list[str] | None, device: str | None):
    from .recipe import load_recipe

    sets = list(sets or [])
    if device:
        sets.append(f"device={device}")
    return load_recipe(recipe, sets)


def _plan_table(plan) -> Table:
    recipe = plan.recipe
    table = Table(title=f"{recipe.name}: {len(recipe.runs)} runs" + (f" - {recipe.description.strip()}"
                                                                     if recipe.description else ""),
                  title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("run id")
    for key in recipe.varied:
        table.add_column(key)
    table.add_column("status")
    todo = {r.run_id for r in plan.todo}
    for i, r in enumerate(recipe.runs, 1):
        st = plan.statuses[r.run_id]
        action = "to run" if r.run_id in todo else "kept"
        table.add_row(str(i), r.run_id, *[str(r.values.get(k, "")) for k in recipe.varied], f"{st} ({action})")
    return table


RESULT_COLUMNS = {"run_id": "run", "status": "status", "final_val_loss": "final val", "best_val_loss": "best val",
                  "diverged_step": "div. step", "loss_spikes": "spikes", "max_grad_norm": "max |grad|",
                  "max_attn_logit": "max logit", "tokens_per_s": "tok/s"}


def _results_table(df, varied: list[str]) -> Table:
    table = Table(title="results", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = [c for c in ["run_id", *varied, *list(RESULT_COLUMNS)[1:]] if c in df.columns]
    for c in cols:
        table.add_column(RESULT_COLUMNS.get(c, c.split(".")[-1]), no_wrap=True, min_width=5,
                         justify="left" if c in ("run_id", "status") else "right")
    for _, row in df.iterrows():
        table.add_row(*[_fmt(row[c]) for c in cols])
    return table


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN: not applicable
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


@app.command()
def run(recipe: Path = typer.Argument(..., help="Recipe YAML file.", show_default=False),
        out: Path = typer.Option(Path("results"), "--out", help="Results folder; runs land in OUT/<name>/<run id>/."),
        device: Optional[str] = typer.Option(None, help="auto, cpu or cuda; overrides the recipe's device."),
        set_: Optional[List[str]] = SetOpt,
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1,
                                           help="Runs at once, each in its own process. Default: one per CPU core "
                                                "(at most the number of runs); up to 4 on one GPU."),
        threads: Optional[int] = typer.Option(None, min=1, help="torch threads per run. Default: cores // jobs."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded runs and exit."),
        force: bool = typer.Option(False, "--force", help="Rerun every run, completed ones included."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun runs that crashed."),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first crashed run."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain line-per-event output, no progress bars.")):
    """Train every run of a recipe (resuming: completed runs are kept) and print the results.

    Exit code 0 when every run completed (diverged counts as completed), 1 when some crashed,
    2 for bad input, 130 when interrupted.
    """
    from .sweep import execute, make_plan
    from .display import make_reporter
    from . import store

    try:
        rec = _load(recipe, set_, device)
        plan = make_plan(rec, out, force=force, retry_failed=retry_failed)
        if dry_run:
            out_console.print(_plan_table(plan))
            return
        outcome = execute(plan, jobs=jobs, threads=threads, fail_fast=fail_fast,
                          reporter=make_reporter(quiet=quiet, console=out_console))
    except NormbenchError as e:
        fail(e)
    if not outcome.interrupted:
        df = store.load_results(plan.recipe_dir)
        if not df.empty:
            ids = [r.run_id for r in rec.runs]
            df = df[df["run_id"].isin(ids)]
            df = df.assign(_order=df["run_id"].map({rid: i for i, rid in enumerate(ids)})).sort_values("_order")
            out_console.print(_results_table(df, [k for k in rec.varied if k in df.columns]))
    raise typer.Exit(outcome.exit_code)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file.", show_default=False),
             set_: Optional[List[str]] = SetOpt,
             out: Path = typer.Option(Path("results"), "--out", help="Results folder, to show each run's status.")):
    """Check a recipe and print its expanded runs (same as run --dry-run)."""
    from .sweep import make_plan

    try:
        plan = make_plan(_load(recipe, set_, None), out)
    except NormbenchError as e:
        fail(e)
    out_console.print(_plan_table(plan))


@app.command("list")
def list_():
    """List the norms, placements and tasks."""
    from .config import NORMS, PLACEMENTS, TASKS

    for title, items in (("norms (model.norm)", NORMS), ("placements (model.placement)", PLACEMENTS),
                         ("tasks (data.task)", TASKS)):
        out_console.print(title, style="bold")
        for name, text in items.items():
            out_console.print(f"  {name:<18} {text}", markup=False)


@app.command()
def keys():
    """List every recipe key with its default and meaning."""
    from .config import all_keys

    table = Table(title="recipe keys (under base:, or dotted in sweep and --set)", title_justify="left")
    for c in ("key", "default", "type", "meaning"):
        table.add_column(c, overflow="fold")
    for key, default, tp, text in all_keys():
        table.add_row(key, "null" if default is None else str(default), tp, text)
    out_console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("normbench: interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
