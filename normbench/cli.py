"""The command line: parse, call, print. Bad input: one line on stderr, exit code 2.

torch is imported only by commands that train, so ``--help`` and ``list`` are instant.
"""
from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.core
from rich import box
from rich.console import Console
from rich.table import Table

from .errors import NormbenchError

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
        from . import __version__

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
                              "normbench.register_norm (repeatable). See README: Bring your own norm.")


def _plugins(paths: list[Path] | None) -> None:
    from .registry import load_plugin

    for path in paths or []:
        load_plugin(path)


def _load(recipe: Path, sets: list[str] | None, device: str | None, plugins: list[Path] | None = None):
    from .recipe import load_recipe

    _plugins(plugins)
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


def _results_table(df, varied: list[str], name: str = "", width: int | None = None) -> tuple[Table, list]:
    """The end-of-run table: run id, the swept keys and status are never cut (compare's rule); metric
    columns are left out from the right to fit the width, and named."""
    from .tables import fmt_value

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
                                          "the ray extra)."),
        address: Optional[str] = typer.Option(None, "--address",
                                              help="Ray only: auto or ray://HOST:PORT joins a cluster; default: a "
                                                   "local Ray instance for this sweep."),
        cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="Ray only: CPUs each run asks for (and its "
                                                                        "torch threads unless --threads)."),
        gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", help="Ray only: GPUs each run asks for; a "
                                                                        "fraction shares a GPU (0.25: four runs)."),
        retries: int = typer.Option(0, "--retries", help="Ray only: rerun a run whose worker died (killed, out of "
                                                         "memory, node lost) up to N times.")):
    """Train every run of one or more recipes (resuming: completed runs are kept) and print the results.

    Every recipe is validated before the first run starts. Exit code 0 when every run completed
    (diverged counts as completed), 1 when some crashed, 2 for bad input, 130 when interrupted
    (Ctrl-C), 143 when terminated (SIGTERM, as from a scheduler or `timeout`); either way the runs
    in flight are stopped and the next `run` redoes them.
    """
    from .errors import Problems
    from .sweep import execute, executor_options, make_plan, recipe_warnings
    from .display import make_reporter
    from . import store

    try:
        _plugins(plugin)
        problems, loaded = Problems(), []
        for recipe in recipes:  # every recipe checked up front: a typo in the fifth does not wait an hour
            with problems.check():
                loaded.append(_load(recipe, set_, device))
        problems.raise_any()
        names = [r.name for r in loaded]
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise NormbenchError(f"two recipes are named {dup!r}: they would share results/{dup}; rename one",
                                 key="name")
        options = executor_options(executor, address, cpus_per_run, gpus_per_run, retries)
        plans = [make_plan(rec, out, force=force, retry_failed=retry_failed) for rec in loaded]
    except NormbenchError as e:
        fail(e)
    code = 0
    for rec, plan in zip(loaded, plans):
        for text in recipe_warnings(rec) if plan.todo or dry_run else []:
            where = f"{rec.name}: " if len(loaded) > 1 else ""
            err_console.print(f"warning: {where}{text}", markup=False, soft_wrap=True)
        if dry_run:
            out_console.print(_plan_table(plan))
            continue
        try:
            outcome = execute(plan, jobs=jobs, threads=threads, fail_fast=fail_fast,
                              reporter=make_reporter(quiet=quiet, console=out_console),
                              executor=executor, executor_options=options)
        except NormbenchError as e:
            fail(e)
        if outcome.interrupted:
            raise typer.Exit(outcome.exit_code)
        df = store.load_results(plan.recipe_dir)
        if not df.empty:
            ids = [r.run_id for r in rec.runs]
            df = df[df["run_id"].isin(ids)]
            df = df.assign(_order=df["run_id"].map({rid: i for i, rid in enumerate(ids)})).sort_values("_order")
            table, dropped = _results_table(df, [k for k in rec.varied if k in df.columns], rec.name)
            out_console.print(table, width=table.width_needed)  # fitted already: never folded or cut
            if dropped:
                out_console.print(f"note: left out for width: {', '.join(dropped)} (a wider terminal, or "
                                  "normbench compare)", markup=False)
        code = max(code, outcome.exit_code)
        if code and fail_fast:
            break
    if dry_run:
        _print_estimate([r for p in plans for r in p.todo], jobs, threads)
    raise typer.Exit(code)


def _print_estimate(todo: list, jobs: int | None, threads: int | None) -> None:
    """The estimated run time of ``todo`` at the jobs a run would use (``estimate.py``)."""
    from .estimate import estimate
    from .executors import plan_parallelism

    if not todo:
        return
    est = estimate(todo, plan_parallelism(len(todo), jobs, threads, gpu=False)[0])
    out_console.print(est.text(), markup=False, soft_wrap=True)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file.", show_default=False),
             set_: Optional[List[str]] = SetOpt, plugin: Optional[List[Path]] = PluginOpt,
             out: Path = typer.Option(Path("results"), "--out", help="Results folder, to show each run's status.")):
    """Check a recipe and print its expanded runs and the estimated time (same as run --dry-run)."""
    from .sweep import make_plan, recipe_warnings

    try:
        plan = make_plan(_load(recipe, set_, None, plugin), out)
    except NormbenchError as e:
        fail(e)
    for text in recipe_warnings(plan.recipe):
        err_console.print(f"warning: {text}", markup=False, soft_wrap=True)
    out_console.print(_plan_table(plan))
    _print_estimate(plan.todo, None, None)


# compare, report and claims: the commands that read results (cli_results.py), registered here so
# that `normbench --help` lists them in this order
from . import cli_results  # noqa: E402,F401


@app.command()
def bench(recipe: Optional[Path] = typer.Argument(None, help="Recipe whose first run sets the shapes and precision. "
                                                             "Default: the defaults (`normbench keys`).",
                                                  show_default=False),
          set_: Optional[List[str]] = SetOpt, plugin: Optional[List[Path]] = PluginOpt,
          device: Optional[str] = typer.Option(None, help="auto, cpu or cuda; overrides the config's device."),
          threads: Optional[int] = typer.Option(None, min=1, help="torch threads, for the model and the peak "
                                                "alike. Default: every core, as a single `normbench run` gets."),
          steps: int = typer.Option(30, min=2, help="Timed steps per variant and round, rounded up to whole "
                                                    "periods of train.measure_every (the periodic probes)."),
          warmup: int = typer.Option(5, min=1, help="Untimed steps first (allocator, caches, compilation)."),
          rounds: int = typer.Option(3, min=1, help="Rounds; the variants alternate within each."),
          reference: bool = typer.Option(True, "--reference/--no-reference",
                                         help="Also time the plain-PyTorch Pre-LN GPT of the same shapes."),
          overhead: bool = typer.Option(True, "--overhead/--no-overhead",
                                        help="Also time the loop with the stability measurements off."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table.")):
    """Training throughput, model FLOPs, MFU against a matmul peak measured now, the cost of the
    stability measurements, and a plain-PyTorch reference of the same shapes, side by side."""
    try:
        base = recipe if recipe is not None else {"name": "bench", "base": {}}
        rec = _load(base, set_, device, plugin)
        cfg = rec.runs[0].cfg
    except NormbenchError as e:
        fail(e)
    from .bench import bench as run_bench
    from .executors import cpu_count

    say = (lambda msg: err_console.print(f"bench: {msg}", markup=False)) if sys.stderr.isatty() else None
    try:
        res = run_bench(cfg, steps=steps, warmup=warmup, rounds=rounds, threads=threads or cpu_count(),
                        reference=reference, off=overhead, progress=say)
    except NormbenchError as e:
        fail(e)
    if as_json:
        import json

        sys.stdout.write(json.dumps(res, indent=2, allow_nan=False) + "\n")
        return
    sh = res["shape"]
    out_console.print(f"{sh['layers']} layers, d_model {sh['d_model']}, {sh['heads']} heads, d_ff {sh['d_ff']}, "
                      f"seq {sh['seq_len']}, batch {sh['batch_size']}, vocab {sh['vocab_size']}, {res['precision']}"
                      f"{', compiled' if res['compile'] else ''}; {res['device']}, {res['threads']} threads; "
                      f"median of {res['rounds']} x {res['steps']} steps", markup=False)
    if res["steps"] != res["steps_requested"]:
        out_console.print(f"note: --steps {res['steps_requested']} rounded up to {res['steps']}, whole periods of "
                          f"train.measure_every={res['measure_every']}, so the periodic measurements are timed at "
                          "their real rate", markup=False, style="yellow")
    peak = f"{res['peak_gflops_fp32']:.1f} GFLOP/s fp32"
    if res["peak_gflops_bf16"] is not None:
        peak += f", {res['peak_gflops_bf16']:.1f} bf16"
    if res["peak_gflops_bf16"] is not None and res["peak_gflops_bf16"] < res["peak_gflops_fp32"]:
        out_console.print(f"note: bf16 is not accelerated on this device ({res['peak_gflops_bf16']:.1f} GFLOP/s "
                          f"against {res['peak_gflops_fp32']:.1f} fp32): use fp32 here", markup=False, style="yellow")
    out_console.print(f"model FLOPs/token {res['flops_per_token'] / 1e6:.2f} M (PaLM: 6N + 12·L·T·d); "
                      f"matmul peak {peak}", markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("variant", "tokens/s", "step ms", "GFLOP/s", "MFU", "first steps s"):
        table.add_column(c, justify="left" if c == "variant" else "right")
    rows = [("normbench (measurements on)", res)]
    if "measurements_off" in res:
        rows.append(("measurements off", res["measurements_off"]))
    if "reference" in res:
        rows.append(("plain-PyTorch reference", res["reference"]))
    for name, r in rows:
        table.add_row(name, f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}", f"{r['gflops']:.1f}",
                      f"{r['mfu']:.1%}", f"{r['warmup_s']:.2f}")
    out_console.print(table)
    if "measurement_overhead" in res:
        out_console.print(f"stability measurements cost {res['measurement_overhead']:+.1%} of step time", markup=False)
    out_console.print(f"the causality probe, taken once per run, costs {res['causal_probe_ms']:.1f} ms: "
                      f"{res['causal_probe_share']:.2%} of a {res['run_steps']}-step run", markup=False)
    if "speedup_vs_reference" in res:
        out_console.print(f"normbench runs at {res['speedup_vs_reference']:.3f}x the reference's tokens/s",
                          markup=False)


@app.command("list")
def list_(plugin: Optional[List[Path]] = PluginOpt):
    """List the norms (with those of --plugin files), placements and tasks."""
    from .config import NORMS, PLACEMENTS, TASKS
    from .registry import registered

    try:
        _plugins(plugin)
    except NormbenchError as e:
        fail(e)
    norms = {**NORMS, **{name: r.description for name, r in registered().items()}}
    for title, items in (("norms (model.norm)", norms), ("placements (model.placement)", PLACEMENTS),
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
    """The console script. Usage errors caught before our code runs (an unknown option, a missing
    argument, --jobs 0) get the same one-line format as ours, with click's exit code (2)."""
    import signal

    from .errors import Terminated, raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)  # SIGTERM is handled as Ctrl-C, exit code 143
    try:
        code = app(standalone_mode=False)
    except Terminated:
        err_console.print("normbench: terminated (SIGTERM); rerun the same command to resume", markup=False)
        sys.exit(143)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("normbench: interrupted", markup=False)
        sys.exit(130)
    except Exception as e:
        # click's exceptions (vendored by newer typer, so matched by shape rather than by class)
        if not (hasattr(e, "exit_code") and hasattr(e, "format_message")):
            raise
        ctx = getattr(e, "ctx", None)
        if ctx is not None and not e.format_message().strip():  # `normbench` alone: the help
            sys.stdout.write(ctx.get_help() or "")  # rich help prints itself and returns ""
            sys.exit(e.exit_code)
        where = ctx.command_path if ctx is not None else "normbench"
        hint = f" (see `{where} --help`)" if ctx is not None else ""
        err_console.print(f"{where}: error: {e.format_message().rstrip('.')}{hint}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
