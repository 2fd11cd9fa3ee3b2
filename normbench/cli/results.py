"""The commands that read results: ``compare``, ``report`` and ``claims`` (registered on cli.app)."""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .app import app, err_console, fail, out_console, table_width
from ..errors import NormbenchError
from ..measures import COMPARED

ByOpt = typer.Option(None, "--by", metavar="KEYS",
                     help="Comma-separated dotted keys to group by, e.g. model.norm,model.placement. "
                          "Default: every key that varies among the runs (and recipe, when several).")
MetricOpt = typer.Option("final_val_loss", "--metric", help="Ranking metric: any summary key compare aggregates "
                         f"({', '.join(k for k, m in COMPARED.items() if not m.speed)}); docs/measurements.md.")
FilterOpt = typer.Option(None, "--filter", metavar="KEY=VALUE",
                         help="Keep runs whose KEY equals VALUE (repeatable; VALUE may list alternatives: "
                              "model.norm=layernorm,rmsnorm). Numbers compare as numbers: train.lr=1e-3 "
                              "matches 0.001.")


PoolOpt = typer.Option(False, "--pool", help="Average over keys that vary but are not in --by (refused without "
                                           "it: runs that differ in a key are different experiments).")


def _compare(results, by, metric, filters, pool=False):
    from ..analysis.compare import compare as do_compare

    return do_compare(results or [Path("results")], by=by, metric=metric, filters=filters, pool=pool)


def _rich_compare(c, width: int) -> tuple[Table, list[str]]:
    """The comparison as a rich table that fits ``width``: the columns naming each row (the factors,
    n, diverged) and the ranking metric are never cut; the other metric columns are left out from
    the right until the table fits. Returns the table and the titles left out."""
    from ..render.tables import display_rows, legend

    header, rows = display_rows(c)
    fixed = len(c.by) + 3  # factors, n, diverged, vs best
    keep_always = set(range(fixed)) | {fixed + c.metrics.index(c.metric)}
    from .app import fit_columns

    def build(cols: list[int], caption: bool = False) -> Table:
        what = f"compare {c.recipe}" if c.recipe else "compare"
        table = Table(title=f"{what}: {len(c.runs)} runs, grouped by {', '.join(c.by) or 'nothing'}",
                      title_justify="left", caption=legend(c) if caption else None, caption_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for i in cols:
            table.add_column(header[i], no_wrap=True, justify="left" if i < len(c.by) else "right")
        for i, r in enumerate(rows):
            table.add_row(*[r[j] for j in cols], style="bold green" if i == c.best else
                          ("red" if r[len(c.by) + 1].split("/")[0] == r[len(c.by)] else None))
        return table

    _, dropped = fit_columns(build, list(range(len(header))), keep_always, width)
    cols = [i for i in range(len(header)) if i not in dropped]
    return build(cols, True), [header[i] for i in dropped]


def _rich_sensitivity(c) -> Table:
    from ..render.tables import sensitivity_rows

    header, rows = sensitivity_rows(c)
    table = Table(title="LR sensitivity (lower: more forgiving)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in header:
        table.add_column(h, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    return table


@app.command()
def compare(results: Optional[List[Path]] = typer.Argument(None, help="Results folders (a recipe's folder or a "
                                                                       "parent of several). Default: results/.",
                                                            show_default=False),
            by: Optional[str] = ByOpt, metric: str = MetricOpt, filter_: Optional[List[str]] = FilterOpt,
            pool: bool = PoolOpt,
            format_: Optional[str] = typer.Option(None, "--format", help="table, csv, markdown or json. "
                                                  "Default: from --output's suffix, else table."),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead "
                                                  "of the terminal."),
            plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the training curves "
                                                "(loss, validation loss, gradient norm, ...) to this file: .png, "
                                                ".pdf or .svg by its suffix; with several recipes, one file each: "
                                                "FILE_<recipe>.png.")):
    """Compare finished runs: group by the factors that vary, mean ± 95% interval over seeds, rank.

    Diverged runs are counted (diverged column), never averaged in. Crashed or unfinished runs
    are listed in notes, and the rest is compared anyway.
    """
    from ..render.formats import pick

    try:
        fmt = pick(format_, output)
    except NormbenchError as e:
        fail(e)
    if plot is not None and plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        fail(f"--plot: expected a .png, .pdf or .svg file name, got {str(plot)!r}")
    for path in (output, plot):  # refuse before the work, not after it
        if path is not None and not path.parent.is_dir():
            fail(NormbenchError("its folder does not exist", file=str(path)))
        if path is not None and path.is_dir():
            fail(NormbenchError("is a folder; expected a file name", file=str(path)))
    try:
        c = _compare(results, by, metric, filter_, pool)
    except NormbenchError as e:
        fail(e)
    if fmt.name == "table":
        # the terminal's console, at the width the tables were fitted to ($COLUMNS, the terminal, else 160)
        console = Console(highlight=False, width=table_width()) if output is None else \
            Console(file=io.StringIO(), width=160, highlight=False)
        for part in c.per_recipe():  # several recipes, factors detected: one table each
            table, dropped = _rich_compare(part, table_width() if output is None else 160)
            console.print(table)
            if dropped:
                console.print(f"note: left out for width: {', '.join(dropped)} (a wider terminal, or --format "
                              "csv, markdown or json, shows every column)", markup=False, style="yellow")
            if part.sensitivity is not None:
                console.print(_rich_sensitivity(part))
        for note in c.notes:
            console.print(f"note: {note}", markup=False, style="yellow")
        text = console.file.getvalue() if output is not None else None
    else:
        text = fmt.comparison(c)
        if output is None:
            sys.stdout.write(text)
            for note in c.notes:  # stdout stays machine-readable
                err_console.print(f"note: {note}", markup=False)
    if output is not None:
        _write_output(output, text)
        err_console.print(f"wrote {output}", markup=False)
    if plot is not None:
        from ..render import plots

        parts = c.per_recipe()  # several recipes: one figure each, FILE's name plus _<recipe>
        for part in parts:
            dest = plot if len(parts) == 1 else plot.with_name(f"{plot.stem}_{part.recipe}{plot.suffix}")
            _write_output(dest, None, lambda: plots.curves(part, dest))
            err_console.print(f"wrote {dest}", markup=False)


def _write_output(path: Path, text: str | None, draw=None) -> None:
    from ..sweep import store

    try:
        if draw is not None:
            draw()
        else:
            store.write_atomic(path, text)
    except NormbenchError as e:
        fail(e)
    except OSError as e:
        fail(NormbenchError(f"cannot write: {e.strerror}", file=str(path)))


@app.command()
def report(results: Path = typer.Argument(..., help="Results folder; report.md and figures/ are written into it.",
                                          show_default=False),
           by: Optional[str] = ByOpt, metric: str = MetricOpt, filter_: Optional[List[str]] = FilterOpt,
           pool: bool = PoolOpt,
           formats: Optional[str] = typer.Option(None, "--formats", metavar="png,pdf,svg",
                                                 help="Also write the figures in these formats (comma-separated; "
                                                      "the report links the PNGs). Default: png only."),
           panels: str = typer.Option("together", "--panels", help="together, or separate: each training-curve "
                                      "panel in its own file too (figures/curves_<metric>.png), for slides."),
           per_seed: bool = typer.Option(False, "--per-seed", help="Draw each seed's curve thin under the mean.")):
    """Write RESULTS/report.md with the comparison table, curves, the per-layer gradient norm at
    initialisation, LR sensitivity (when train.lr varies) and the diverged runs, plus its PNG figures.

    A folder holding several recipes gets one report per recipe (in each recipe's folder) and
    an index RESULTS/report.md linking them; --by gives one combined report instead."""
    from ..render.report import write_report

    try:
        extra = _figure_formats(formats)
        c = _compare([results], by, metric, filter_, pool)
        from ..render.report import regenerate_command

        command = regenerate_command(c, results, extra) + (f" --panels {panels}" if panels != "together" else "") \
            + (" --per-seed" if per_seed else "")
        path = _write_report(write_report, c, results, command, extra, panels=panels, per_seed=per_seed)
    except NormbenchError as e:
        fail(e)
    parts = c.per_recipe()
    if len(parts) > 1:
        from ..render.report import report_home

        out_console.print(f"wrote {path}, an index of {len(parts)} reports (one per recipe):", markup=False)
        for part in parts:
            out_console.print(f"  {report_home(part, results) / 'report.md'}", markup=False)
        return
    figs = sorted(p.name for p in (results / "figures").iterdir() if p.suffix in (".png", ".pdf", ".svg"))
    out_console.print(f"wrote {path} and {len(figs)} figures in {results / 'figures'}: {', '.join(figs)}",
                      markup=False)


def _figure_formats(text: str | None) -> list[str]:
    """``--formats png,pdf`` -> the formats besides png."""
    formats = [f.strip().lower().lstrip(".") for f in (text or "").split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad:
        raise NormbenchError(f"expected png, pdf or svg (comma-separated), got {bad[0]!r}", key="--formats")
    return [f for f in dict.fromkeys(formats) if f != "png"]


def _write_report(write_report, c, results: Path, command: str, formats: list[str], **options):
    try:
        return write_report(c, results, command, formats=formats, **options)
    except OSError as e:
        raise NormbenchError(f"cannot write the report: {e.strerror}", file=str(results)) from None


VERDICT_STYLE = {"held": "green", "not held": "red", "inconclusive": "dim", "untestable": "dim"}


@app.command()
def claims(paths: Optional[List[Path]] = typer.Argument(None, metavar="[PATHS]...",
                                                        show_default=False,
                                                        help="Recipe files (their runs in OUT/<name>) or results "
                                                             "folders (each recipe folder's claims.yaml). Default: "
                                                             "results/."),
           out: Path = typer.Option(Path("results"), "--out", help="Where a recipe file's runs are: OUT/<name>/."),
           format_: Optional[str] = typer.Option(None, "--format", help="table, markdown, csv or json. Default: from "
                                                 "--output's suffix, else table."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file (atomically)."),
           settle: bool = typer.Option(False, "--settle", help="Take each undecided claim to its design's next "
                                       "look (seeds per arm 3, 6, 10, 16, 24), run the seeds, judge again, until "
                                       "each is decided or at its last look (a group-sequential design; PATHS "
                                       "must be recipe files; docs/claims.md: Settling)."),
           budget: int = typer.Option(100, "--budget", min=1, help="With --settle: at most this many new runs."),
           max_seeds: Optional[int] = typer.Option(None, "--max-seeds", min=2, help="With --settle: take no look "
                                                   "beyond this many seeds per arm (default: the design's last)."),
           jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="With --settle: runs at once "
                                              "(default: as normbench run).")):
    """Judge every claim of the recipes on their finished runs: held, not held, inconclusive or untestable, with the
    test (paired t, Welch, rank, Fisher, McNemar), the evidence by group name, the claim's sequential p,
    p_adjusted (Holm within its family: a paper's claims in one recipe) and q_ledger (Benjamini-Hochberg
    over the ledger, informative only) (docs/claims.md)."""
    from ..sweep import store
    from ..analysis.decide import claims_ledger
    from ..numbers import missing
    from ..render.formats import pick

    try:
        fmt = pick(format_, output)
    except NormbenchError as e:
        fail(e)
    if output is not None and not output.parent.is_dir():
        fail(NormbenchError("its folder does not exist", file=str(output)))
    try:
        if settle:
            from ..analysis.settle import settle_recipes

            if not paths or any(not p.is_file() for p in paths):
                raise NormbenchError("expected recipe files (the arms to add seeds to come from the recipe)",
                                     key="--settle")
            for line in settle_recipes(paths, out, budget, jobs, max_seeds):
                err_console.print(line, markup=False, soft_wrap=True)
        df = claims_ledger(paths or [Path("results")], out)
    except NormbenchError as e:
        fail(e)
    if df.empty:
        fail(NormbenchError("no claims found (a recipe's claims: list; results folders hold them in claims.yaml)",
                            file=", ".join(map(str, paths or [Path("results")]))))
    if fmt.name == "table":
        table = Table(title=f"claims: {len(df)} ({', '.join(f'{n} {v}' for v, n in df['verdict'].value_counts().items())})",
                      title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_lines=True)
        for col in ("claim", "family", "test", "verdict", "evidence", "p_adjusted", "q_ledger", "seeds"):
            table.add_column(col, overflow="fold", ratio=4 if col == "evidence" else 2 if col in ("claim", "test") else 1)
        for _, r in df.iterrows():
            shown = [("-" if missing(r[k]) else f"{r[k]:.2g}") for k in ("p_adjusted", "q_ledger")]
            table.add_row(r["claim"], r["family"], r["test"], f"[{VERDICT_STYLE[r['verdict']]}]{r['verdict']}[/]",
                          r["evidence"], *shown, str(r["seeds"]))
        if output is None:
            out_console.print(table)
            return
        console = Console(file=io.StringIO(), width=160, highlight=False)
        console.print(table)
        text = console.file.getvalue()
    else:
        text = fmt.ledger(df)
        if output is None:
            sys.stdout.write(text)
            return
    try:
        store.write_atomic(output, text)
    except OSError as e:
        fail(NormbenchError(f"cannot write: {e.strerror}", file=str(output)))
    err_console.print(f"wrote {output}", markup=False)
