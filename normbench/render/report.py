"""``normbench report``: a self-contained markdown report, with its figures, in the results folder.

Layout written (for one recipe; for several, each recipe folder gets this and
RESULTS/report.md is an index linking them)::

    RESULTS/report.md
    RESULTS/figures/curves.png           training loss, validation loss, gradient norm (and model update)
    RESULTS/figures/curves_<metric>.png  each of its panels alone (report --panels separate)
    RESULTS/figures/diagnostics.png      the diagnostics the recipe's claims test (activation kurtosis, ...)
    RESULTS/figures/grad_norm_init.png   per-layer gradient norm at initialisation
    RESULTS/figures/lr_sensitivity.png   loss against learning rate (only when train.lr varies)
    RESULTS/figures/resid_rms.png        the residual stream's RMS per block, at the end and at step 1

Figures are drawn first and report.md is written last, atomically, so a report that
exists is complete. Stale figures from an earlier report (say, an lr plot that no longer
applies) are removed.
"""
from __future__ import annotations

from pathlib import Path

from ..version import __version__
from . import plots
from ..sweep import store
from ..analysis.compare import Comparison, plain, short_names
from .tables import (against_best_words, display_rows, fmt_value, legend, markdown_table, sens_metric,
                     sensitivity_rows)

FIGURES = "figures"
FORMATS = ("png", "pdf", "svg")


def write_report(c: Comparison, out_dir: str | Path, command: str | None = None,
                 formats: list[str] | tuple = (), panels: str = "together", per_seed: bool = False) -> Path:
    """Draw the figures, then write ``out_dir/report.md``; ``command`` is how to regenerate it;
    ``formats`` (``pdf``, ``svg``): the figures in these formats too, beside the PNGs; ``panels``:
    ``separate`` writes each training-curve panel to its own file too (curves_<metric>.png), for
    slides; ``per_seed``: the curves draw each seed thin under the mean.

    When ``c`` spans several recipes with detected factors (``c.per_recipe()`` splits it), each
    recipe gets its own report in its folder and ``out_dir/report.md`` is an index of them."""
    out_dir = Path(out_dir)
    command = command or regenerate_command(c, out_dir, formats)
    parts = c.per_recipe()
    if panels not in ("together", "separate"):
        from ..errors import NormbenchError

        raise NormbenchError(f"expected together or separate, got {panels!r}", key="--panels")
    options = {"panels": panels, "per_seed": per_seed}
    if len(parts) == 1:
        return _write_one(c, out_dir, command, formats, **options)
    written = []
    for part in parts:
        dest = report_home(part, out_dir)
        again = f"normbench report {dest}" if len(part.sources) == 1 else command
        written.append((part, _write_one(part, dest, again, formats, **options)))
    for name in DRAW:  # the index has no figures: drop those of an earlier single report
        for fmt in FORMATS:
            (out_dir / FIGURES / f"{name}.{fmt}").unlink(missing_ok=True)
    path = out_dir / "report.md"
    store.write_if_changed(path, render_index(c, written, out_dir, command))
    return path


def regenerate_command(c: Comparison, out_dir: Path, formats=()) -> str:
    """How to write this report again: the `normbench report` line where the report lives in the one
    results folder compared, with the grouping, metric and filters it was made with; else the
    Python call (the CLI writes a report only into the folder it reads)."""
    import shlex

    req = c.request or {"paths": c.sources, "by": None, "metric": c.metric, "filters": [], "pool": False}
    by = ",".join(req["by"]) if req["by"] else None
    if len(req["paths"]) == 1 and Path(req["paths"][0]).resolve() == Path(out_dir).resolve():
        return shlex.join(["normbench", "report", str(out_dir)] + (["--by", by] if by else [])
                          + (["--metric", req["metric"]] if req["metric"] != "final_val_loss" else [])
                          + [a for f in req["filters"] for a in ("--filter", f)] + (["--pool"] if req["pool"] else [])
                          + (["--formats", ",".join(["png", *formats])] if formats else []))
    args = [repr(req["paths"])] + [f"{k}={req[k]!r}" for k, default in
                                   (("by", None), ("metric", "final_val_loss"), ("filters", []), ("pool", False))
                                   if req[k] != default]
    fmt = f", formats={list(formats)!r}" if formats else ""
    return f"normbench.write_report(normbench.compare_results({', '.join(args)}), {str(out_dir)!r}{fmt})"


def report_home(part: Comparison, out_dir: Path) -> Path:
    """Where one recipe's report goes when ``out_dir`` holds several: its own folder (the usual
    layout, RESULTS/<recipe>/<run id>/), or, for a recipe read from several folders, which has
    no single home, RESULTS/reports/<recipe>/."""
    return Path(part.sources[0]) if len(part.sources) == 1 else Path(out_dir) / "reports" / str(part.recipe)


# figure name -> drawing function (each returns None when it has nothing to draw)
DRAW = {"curves": plots.curves, "diagnostics": plots.diagnostics, "grad_norm_init": plots.grad_norm_init,
        "lr_sensitivity": plots.lr_sensitivity, "resid_rms": plots.resid_rms}


def render_index(c: Comparison, written: list, out_dir: Path, command: str) -> str:
    """RESULTS/report.md when it holds several recipes: one row per recipe, linking its report."""
    rows = []
    for part, path in written:
        best = part.best
        rows.append([f"[{part.recipe}]({Path(path).relative_to(out_dir).as_posix()})"
                     if Path(path).is_relative_to(out_dir) else f"{part.recipe} (`{path}`)",
                     str(len(part.runs)), str(int(part.runs["diverged"].sum())),
                     ", ".join(f"`{k}`" for k in part.by) or "nothing",
                     part.label(part.table.iloc[best]) if best is not None else "every group diverged",
                     fmt_value(part.table[f"{c.metric}_mean"].iloc[best]) if best is not None else "-"])
    lines = [f"# normbench report: {out_dir.name}", "",
             f"{len(c.runs)} finished runs of {len(written)} recipes under `{out_dir}`, one report per recipe "
             "(each ranks its own configurations: losses of different tasks and set-ups do not compare). "
             f"Written by normbench {__version__}; "
             f"regenerate with `{command}`.", ""]
    if c.notes:
        lines += ["**Notes**", ""] + [f"- {n}" for n in c.notes] + [""]
    lines += [markdown_table(["recipe", "runs", "diverged", "grouped by", f"best by {c.metric}", "its value"], rows)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _has_updates(c: Comparison) -> bool:
    return "max_model_update" in c.runs and c.runs["max_model_update"].notna().any()


def _write_one(c: Comparison, out_dir: Path, command: str, formats=(), panels: str = "together",
               per_seed: bool = False) -> Path:
    fig_dir = out_dir / FIGURES
    palette = plots.Palette(c)  # one colour per configuration in every figure
    palette.per_seed = per_seed
    figs = {name: draw(c, fig_dir / f"{name}.png", palette) for name, draw in DRAW.items()}
    drawn = {plots.curve_panel(c, m, fig_dir / f"curves_{m}.png", palette).name for m in plots.curve_panels(c)} \
        if panels == "separate" else set()
    for old in fig_dir.glob("curves_*.*"):  # panels of an earlier --panels separate
        if old.name not in drawn:
            old.unlink()
    for name, path in figs.items():
        for fmt in FORMATS:
            if path is None or (fmt != "png" and fmt not in formats):  # stale: not drawn or not asked for
                (fig_dir / f"{name}.{fmt}").unlink(missing_ok=True)
            elif fmt != "png":
                DRAW[name](c, fig_dir / f"{name}.{fmt}", palette)
    text = render(c, {k: f"{FIGURES}/{v.name}" for k, v in figs.items() if v is not None}, out_dir, command)
    path = out_dir / "report.md"
    store.write_if_changed(path, text)
    return path


def claims_section(c: Comparison) -> list[str]:
    """## Claims: the recipe's claims (its results folder's claims.yaml) with verdicts and evidence."""
    from ..claims import CLAIMS_FILE
    from ..analysis.decide import claims_ledger
    from .tables import ledger_markdown

    if len(c.sources) != 1 or not (Path(c.sources[0]) / CLAIMS_FILE).exists():
        return []
    df = claims_ledger([c.sources[0]])
    if df.empty:
        return []
    counts = ", ".join(f"{n} {v}" for v, n in df["verdict"].value_counts().items())
    return ["## Claims", "",
            f"The recipe's claims judged on {judged_config(Path(c.sources[0]))} ({counts}); the rule is in "
            "docs/claims.md. Evidence: each arm's mean ± the half-width of its 95% interval (n seeds; geometric "
            "on the log scale), the contrast with its 95% interval and the test, per setting of the other "
            "factors; p_adjusted is Holm's within each family (a paper's claims in the recipe).", "", ledger_markdown(df), ""]


def judged_config(folder: Path) -> str:
    """Which runs the claims were judged on: the recipe as written (claims.yaml), named by its base."""
    import yaml

    from ..claims import CLAIMS_FILE

    doc = yaml.safe_load((folder / CLAIMS_FILE).read_text()) or {}
    base = doc.get("base") or {}
    shown = ", ".join(f"{k}={base[k]}" for k in ("train.steps", "train.batch_size", "data.seq_len") if k in base)
    n = len(doc.get("runs") or [])
    return f"the {n} runs of recipe {doc.get('recipe', folder.name)} as written" + (f" ({shown})" if shown else "")


def render(c: Comparison, figs: dict[str, str], out_dir: Path, command: str) -> str:
    recipes = sorted({str(r) for r in c.runs["recipe"].dropna()})
    n_div = int(c.runs["diverged"].sum())
    lines = [f"# normbench report: {', '.join(recipes) or out_dir.name}", "",
             f"{len(c.runs)} finished runs ({n_div} diverged{', ' + str(len(c.crashed)) + ' crashed' if len(c.crashed) else ''}) "
             f"from {', '.join(f'`{s}`' for s in c.sources)}, grouped by "
             f"{', '.join(f'`{b}`' for b in c.by) or 'nothing (one configuration)'}. "
             f"Written by normbench {__version__}; "
             f"regenerate with `{command}`.", ""]
    if c.notes:
        lines += ["**Notes**", ""] + [f"- {n}" for n in c.notes] + [""]
    lines += ["## Comparison", "", markdown_table(*display_rows(c), bold_row=c.best), legend(c), ""]
    if (words := against_best_words(c)):
        lines += [words, ""]
    if "lr_sensitivity" in figs:
        lines += ["## Learning-rate sensitivity", "",
                  f"Per configuration and seed, the mean over the learning rates of min({sens_metric(c)}, cap) "
                  "minus the best, averaged over the seeds; the cap is the run's loss at initialisation (step 1), "
                  "and a diverged run counts at it (Wortsman et al. 2023). Lower is more forgiving.", "", markdown_table(*sensitivity_rows(c)),
                  f"![loss against learning rate]({figs['lr_sensitivity']})", ""]
    lines += ["## Training curves", "",
              "Training loss (running mean), validation loss (seed mean, band ±1 std over seeds), the global "
              "gradient norm before clipping (log scale: the seeds' geometric mean of a running geometric mean, "
              "band ×/÷ one geometric std, and a thin line for the per-step maximum over seeds, so a one-step "
              "burst shows at its height), the largest attention logit q·k/√d_h over heads and layers "
              "(measured every `train.measure_every` steps; log scale; thin: the maximum over seeds)"
              + (" and the model update ‖F(x, θ_t) − F(x, θ_0)‖, the RMS change of the logits on a fixed batch "
                 "(log scale; Wang et al. 2022)" if _has_updates(c) else "")
              + ". One colour per configuration in every figure; line styles tell training settings apart.", "",
              f"![training curves]({figs['curves']})", ""]
    if "diagnostics" in figs:
        lines += ["## Diagnostics", "",
                  "The measurements of the recipe's claims beyond the training curves, drawn the same way (seed "
                  "mean, band over seeds; every `train.measure_every` steps): docs/measurements.md gives each "
                  "one's formula and source.", "", f"![diagnostics]({figs['diagnostics']})", ""]
    panels = sorted((out_dir / FIGURES).glob("curves_*.png"))
    if panels:  # --panels separate: each panel on its own, for slides
        lines += ["Each panel on its own: " + ", ".join(f"[{p.stem[len('curves_'):]}]({FIGURES}/{p.name})"
                                                        for p in panels), ""]
    if "grad_norm_init" in figs:
        lines += ["## Gradient norm per layer at initialisation", "",
                  "The norm of each block's feed-forward weight gradients on the first batch, before any update "
                  "(Xiong et al. 2020: under Post-LN it grows towards the output, under Pre-LN it does not).", "",
                  f"![gradient norm per layer at initialisation]({figs['grad_norm_init']})", ""]
    if "resid_rms" in figs:
        lines += ["## Residual stream per block", "",
                  "The RMS of the residual stream after each block (seed geometric mean over the runs that did not "
                  "diverge; log scale), at the end of training and at the first step. Under Pre-LN it grows with "
                  "depth, so that late blocks add little to it (the curse of depth, Sun et al. 2025); LNS and "
                  "Mix-LN claim to flatten it. Summary fields: `resid_rms_by_layer`, `resid_rms_by_layer_init`, "
                  "`resid_rms_last`, `resid_rms_growth`.", "",
                  f"![residual stream RMS per block]({figs['resid_rms']})", ""]
    lines += claims_section(c)
    lines += ["## Diverged runs", ""]
    div = c.runs[c.runs["diverged"]]
    if div.empty:
        lines += ["None.", ""]
    else:
        names = short_names(c.by)
        rows = [[r["run_id"], *(plain(r[k]) for k in c.by), str(r.get("seed", "")),
                 fmt_value(r.get("diverged_step")), str(r.get("divergence_reason") or "")]
                for _, r in div.sort_values("diverged_step").iterrows()]
        lines += [markdown_table(["run", *(names[k] for k in c.by), "seed", "step", "reason"], rows)]
    if len(c.crashed):
        lines += ["## Crashed runs", "", "Not compared; `normbench run RECIPE --retry-failed` reruns them.", "",
                  markdown_table(["run", "folder", "error"],
                                 [[r["run_id"], str(Path(r["path"]).parent), str(r.get("error") or "")]
                                  for _, r in c.crashed.iterrows()])]
    return "\n".join(lines).rstrip("\n") + "\n"
