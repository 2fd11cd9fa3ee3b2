"""``normbench run`` and ``validate``: train the runs of recipes (resuming) and show the plan."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table

from ..errors import NormbenchError
from .app import PluginOpt, SetOpt, app, err_console, fail, fit_columns, load, load_plugins, out_console, table_width


@app.command()
def run(recipes: List[Path] = typer.Argument(..., metavar="RECIPE...", show_default=False,
                                             help="Recipe YAML files; several run one after another "
                                                  "(normbench run recipes/literature/*.yaml)."),
        out: Path = typer.Option(Path("results"), "--out", help="Results folder; runs land in OUT/<name>/<run id>/."),
        device: Optional[str] = typer.Option(None, help="auto, cpu or cuda; overrides the recipe's device."),
        set_: Optional[List[str]] = SetOpt,
        plugin: Optional[List[Path]] = PluginOpt,
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1,
                                           help="Runs at once, each in its own process. Default: one per CPU core "
                                                "(at most the number of runs); up to 4 on one GPU."),
        threads: Optional[int] = typer.Option(None, min=1, help="torch threads per run. Default: 1 on CPU (runs "
                                              "x threads never exceed the cores); cores // jobs on a GPU."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded runs and the estimated time "
                                                             "(calibrated by a few timed steps here), and exit."),
        force: bool = typer.Option(False, "--force", help="Rerun every run, completed ones included."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun runs that crashed."),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first crashed run."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain line-per-event output, no progress bars."),
        executor: str = typer.Option("local", "--executor",
                                     help="local (processes on this machine) or ray (one Ray task per run; needs "
                                          "the ray extra); docs/execution.md."),
        executor_option: Optional[List[str]] = typer.Option(None, "--executor-option", metavar="KEY=VALUE",
                                                            help="An option of the executor, by name (repeatable), "
                                                                 "e.g. --executor-option retries=2; the flags below "
                                                                 "are shorthands for Ray's."),
        address: Optional[str] = typer.Option(None, "--address",
                                              help="Ray only: auto or ray://HOST:PORT joins a cluster; default: a "
                                                   "local Ray instance for this sweep."),
        cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="Ray only: CPUs each run asks for (and its "
                                                                        "torch threads unless --threads)."),
        gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", help="Ray only: GPUs each run asks for; a "
                                                                        "fraction shares a GPU (0.25: four runs)."),
        retries: int = typer.Option(0, "--retries", help="Ray only: rerun a run whose worker died (killed, out of "
                                                         "memory, node lost) up to N times."),
        log: Optional[List[str]] = typer.Option(None, "--log", metavar="TRACKER",
                                                help="Log every run live to tensorboard, wandb or mlflow "
                                                     "(repeatable; each an optional extra); docs/long-runs.md.")):
    """Train every run of one or more recipes (resuming: completed runs are kept) and print the results.

    Every recipe is validated before the first run starts. Exit code 0 when every run completed
    (diverged counts as completed), 1 when some crashed, 2 for bad input, 130 when interrupted
    (Ctrl-C), 143 when terminated (SIGTERM, as from a scheduler or `timeout`); either way the runs
    in flight are stopped and the next `run` redoes them.
    """
    from .. import trackers
    from ..sweep.display import make_reporter
    from ..sweep.execute import execute, ray_shorthands
    from ..sweep.executors import executor_options
    from ..sweep.plan import make_plan, recipe_warnings

    try:
        loaded = load_all(recipes, set_, device, plugin)
        options = executor_options(executor, {**ray_shorthands(address, cpus_per_run, gpus_per_run, retries),
                                              **key_values(executor_option, "--executor-option")})
        plans = [make_plan(rec, out, force=force, retry_failed=retry_failed) for rec in loaded]
        log_to = trackers.check(log)
    except NormbenchError as e:
        fail(e)
    code = 0
    for rec, plan in zip(loaded, plans):
        for text in recipe_warnings(rec) if plan.todo or dry_run else []:
            where = f"{rec.name}: " if len(loaded) > 1 else ""
            err_console.print(f"warning: {where}{text}", markup=False, soft_wrap=True)
        if dry_run:
            out_console.print(_plan_table(plan))
            for line in implied_lines(rec):
                out_console.print(line, markup=False, soft_wrap=True)
            continue
        try:
            outcome = execute(plan, jobs=jobs, threads=threads, fail_fast=fail_fast,
                              reporter=make_reporter(quiet=quiet, console=out_console),
                              executor=executor, executor_options=options, log_to=log_to)
        except NormbenchError as e:
            fail(e)
        if outcome.interrupted:
            raise typer.Exit(outcome.exit_code)
        show_results(rec, plan)
        code = max(code, outcome.exit_code)
        if code and fail_fast:
            break
    if dry_run:
        _print_estimate([r for p in plans for r in p.todo], jobs, threads)
    raise typer.Exit(code)


def load_all(recipes: list[Path], sets, device, plugins) -> list:
    """Every recipe loaded and checked up front (a typo in the fifth does not wait an hour), with every
    problem of every recipe in one round; two recipes of one name are refused."""
    from ..errors import Problems

    load_plugins(plugins)
    problems, loaded = Problems(), []
    for recipe in recipes:
        with problems.check():
            loaded.append(load(recipe, sets, device))
    problems.raise_any()
    names = [r.name for r in loaded]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise NormbenchError(f"two recipes are named {dup!r}: they would share results/{dup}; rename one",
                             key="name")
    return loaded


def show_results(rec, plan) -> None:
    """The end-of-run table of a recipe's runs, in the recipe's order."""
    from ..sweep import store

    df = store.load_results(plan.recipe_dir)
    if df.empty:
        return
    ids = [r.run_id for r in rec.runs]
    df = df[df["run_id"].isin(ids)]
    df = df.assign(_order=df["run_id"].map({rid: i for i, rid in enumerate(ids)})).sort_values("_order")
    table, dropped = _results_table(df, [k for k in rec.varied if k in df.columns], rec.name)
    out_console.print(table, width=table.width_needed)  # fitted already: never folded or cut
    if dropped:
        out_console.print(f"note: left out for width: {', '.join(dropped)} (a wider terminal, or "
                          "normbench compare)", markup=False)


def _print_estimate(todo: list, jobs: int | None, threads: int | None) -> None:
    """The estimated run time of ``todo`` at the jobs a run would use (``estimate.py``)."""
    from ..estimate import estimate
    from ..sweep.executor import plan_parallelism

    if not todo:
        return
    est = estimate(todo, plan_parallelism(len(todo), jobs, threads, gpu=False)[0])
    out_console.print(est.text(), markup=False, soft_wrap=True)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file.", show_default=False),
             set_: Optional[List[str]] = SetOpt, plugin: Optional[List[Path]] = PluginOpt,
             out: Path = typer.Option(Path("results"), "--out", help="Results folder, to show each run's status.")):
    """Check a recipe and print its expanded runs and the estimated time (same as run --dry-run)."""
    from ..sweep.plan import make_plan, recipe_warnings

    try:
        plan = make_plan(load(recipe, set_, None, plugin), out)
    except NormbenchError as e:
        fail(e)
    for text in recipe_warnings(plan.recipe):
        err_console.print(f"warning: {text}", markup=False, soft_wrap=True)
    out_console.print(_plan_table(plan))
    _print_estimate(plan.todo, None, None)


def implied_lines(recipe) -> list[str]:
    """One line per placement or init that set keys the recipe left unset (implied.py), with its runs."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(recipe.runs, 1):
        if r.implied:
            by = {}
            for key, source in r.implied.items():
                by.setdefault(source, []).append(f"{key}={_shown(r.cfg, key)}")
            for source, keys in by.items():
                groups.setdefault((source, tuple(keys)), []).append(i)
    return [f"{source} set {', '.join(keys)} (runs {_ranges(runs)})" for (source, keys), runs in groups.items()]


def _shown(cfg, key: str) -> str:
    section, name = key.split(".")
    v = getattr(getattr(cfg, section), name)
    return str(v).lower() if isinstance(v, bool) else "null" if v is None else str(v)


def _ranges(nums: list[int]) -> str:
    out, start = [], nums[0]
    for a, b in zip(nums, nums[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


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


def _results_table(df, varied: list[str], name: str = "", width: int | None = None) -> tuple[Table, list]:
    """The end-of-run table: run id, the swept keys and status are never cut (compare's rule); metric
    columns are left out from the right to fit the width, and named."""
    from ..render.tables import fmt_value

    cols = [c for c in ["run_id", *varied, *list(RESULT_COLUMNS)[1:]] if c in df.columns]

    def build(shown):
        table = Table(title=f"results{': ' + name if name else ''}", title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False)
        for c in shown:
            table.add_column(RESULT_COLUMNS.get(c, c.split(".")[-1]), no_wrap=True,
                             justify="left" if c in ("run_id", "status") else "right")
        for _, row in df.iterrows():
            table.add_row(*[fmt_value(row[c]) for c in shown])
        return table

    width = width or table_width()
    table, dropped = fit_columns(build, cols, {"run_id", "status", *varied}, width)
    table.width_needed = max(width, build.needed)
    return table, [RESULT_COLUMNS.get(c, c) for c in dropped]


def key_values(items: list[str] | None, flag: str) -> dict:
    """``["retries=2"]`` -> ``{"retries": "2"}``; one line (exit 2) for an item without ``=``."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise NormbenchError(f"expected KEY=VALUE, got {item!r}", key=flag)
        out[key.strip()] = value.strip()
    return out
