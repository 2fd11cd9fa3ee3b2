"""A comparison's output formats: csv, json, markdown, and the cells and words the terminal table,
the markdown and the report share (``compare.py`` computes; this file only shows)."""
from __future__ import annotations

import json
import math

import pandas as pd

from ..analysis.compare import LR, Comparison, count, hashable, plain, short_names
from ..numbers import fmt_number
from ..measures import COMPARED, LOSSES, ON_DIVERGED, SPEED


def records(table: pd.DataFrame) -> list[dict]:
    """The table as JSON-safe records: NaN and None -> null, numpy scalars -> Python."""
    def clean(v):
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        v = hashable(v)
        return None if v == "-" else v

    return [{k: clean(v) for k, v in r.items()} for _, r in table.iterrows()]


def to_csv(c: Comparison) -> str:
    return c.table.to_csv(index=False)


def to_json(c: Comparison) -> str:
    doc = {"by": c.by, "metric": c.metric, "lower_is_better": COMPARED[c.metric].lower_better, "sources": c.sources,
           "rows": records(c.table),
           "lr_sensitivity": records(c.sensitivity) if c.sensitivity is not None else None,
           "crashed": [{"run_id": r["run_id"], "path": r["path"], "error": r.get("error")}
                       for _, r in c.crashed.iterrows()],
           "notes": c.notes}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def fmt_value(v, digits: int = 4) -> str:
    return fmt_number(v, digits)


def cell(row, m: str) -> str:
    """``2.174 ± 0.012``: the mean and the half-width of its 95% interval; ``diverged`` for a loss when
    every run of the group diverged; ``-`` when not measured. Stability measures are shown for
    diverged runs too."""
    if row["n_diverged"] == row["n"] and m not in ON_DIVERGED and m not in SPEED:
        return "diverged"
    mean, lo, hi = row[f"{m}_mean"], row.get(f"{m}_ci95_lo", math.nan), row.get(f"{m}_ci95_hi", math.nan)
    if isinstance(mean, float) and math.isnan(mean):
        return "-"
    return fmt_value(mean) + ("" if isinstance(lo, float) and math.isnan(lo) else f" ± {fmt_value((hi - lo) / 2, 2)}")


def vs_best(row, is_best: bool) -> str:
    """``best``; ``= (p 0.41)`` when indistinguishable from it at 5%; ``p 0.003`` when worse; ``untested (too
    few seeds)`` when either side has fewer than 2 seeds (same_as_best is then true by convention, not by
    evidence); ``-`` for a group with no value."""
    if is_best:
        return "best"
    p = row.get("p_vs_best", math.nan)
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "untested (too few seeds)" if row.get("same_as_best") else "-"
    return f"= (p {p:.2g})" if row.get("same_as_best") else f"p {p:.2g}"


def display_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the terminal table and the markdown one."""
    names = short_names(c.by)
    header = [names[k] for k in c.by] + ["n", "diverged", "vs best"] + [COMPARED[m].title for m in c.metrics]
    if "lr_sensitivity" in c.table:
        header.append("LR sens.")
    rows = []
    for i, (_, r) in enumerate(c.table.iterrows()):
        cells = [plain(r[k]) for k in c.by] + [str(int(r["n"])), f"{int(r['n_diverged'])}/{int(r['n'])}",
                                                vs_best(r, i == c.best)]
        cells += [cell(r, m) for m in c.metrics]
        if "lr_sensitivity" in c.table:
            cells.append(fmt_value(r["lr_sensitivity"], 3))
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]], bold_row: int | None = None) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(rows):
        cells = [f"**{esc(x)}**" if i == bold_row else esc(x) for x in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sensitivity_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    others = [k for k in c.by if k != LR]
    names = short_names(others)
    header = [names[k] for k in others] + ["learning rates", "best lr", "best loss", "LR sensitivity"]
    rows = [[plain(r[k]) for k in others] + [str(r["lrs"]), f"{r['best_lr']:g}", fmt_value(r["best_loss"]),
                                              fmt_value(r["lr_sensitivity"], 3)]
            for _, r in c.sensitivity.iterrows()]
    return header, rows


def against_best_words(c: Comparison) -> str:
    """The groups indistinguishable from the best and the worse ones, in words, with the test used."""
    best = c.best
    if best is None or len(c.table) < 2:
        return ""
    same, worse, few, failed = [], [], [], []
    for i, (_, r) in enumerate(c.table.iterrows()):
        if i == best:
            continue
        label, p = c.label(r), r.get("p_vs_best", math.nan)
        if isinstance(p, float) and math.isnan(p):
            (few if r.get("same_as_best") else failed).append(label)
        elif r.get("same_as_best"):
            same.append(f"{label} (p = {p:.2g})")
        else:
            worse.append(f"{label} (p = {p:.2g}{', and it diverged more often' if r['diverged_rate'] > 0 else ''})")
    parts = [f"Best by {c.metric}: **{c.label(c.table.iloc[best])}**."]
    if same:
        parts.append(f"Not distinguishable from it at the 5% level (Welch's t-test over seeds): {'; '.join(same)}.")
    if worse:
        parts.append(f"Worse than it at 95% confidence: {'; '.join(worse)}.")
    if few:
        parts.append(f"Too few seeds to tell (fewer than 2): {'; '.join(few)}.")
    if failed:
        parts.append(f"Every run diverged: {'; '.join(failed)}.")
    return " ".join(parts)


def legend(c: Comparison) -> str:
    direction = "lower" if COMPARED[c.metric].lower_better else "higher"
    every = [COMPARED[m].title for m in c.metrics if m in ON_DIVERGED]  # measures.py: on_diverged
    over = f", stability measures ({', '.join(every)}) over every seed" if every else ""
    return (f"Ranked by the share of diverged runs, then by {c.metric} ({direction} is better). Cells: mean ± "
            "the half-width of its 95% confidence interval (Student's t over the seeds; none with one seed); "
            f"losses over the seeds that did not diverge{over}. 'vs best': Welch's t-test p against the best "
            "group on the ranking metric, '=' when not distinguishable from it at 5%, 'untested' with fewer than 2 "
            "seeds on either side. 'diverged' counts the runs that did. Losses in nats.")


def to_markdown(c: Comparison) -> str:
    """The comparison, the LR sensitivity (when lr varies) and the notes, as GitHub markdown;
    one section per recipe when ``c.per_recipe()`` splits it."""
    split = c.per_recipe()
    parts = []
    for part in split:
        if len(split) > 1:
            parts.append(f"### {part.recipe}: {count(part.runs, 'run')}, grouped by "
                         f"{', '.join(f'`{k}`' for k in part.by) or 'nothing'}")
        parts += [markdown_table(*display_rows(part), bold_row=part.best), legend(part)]
        if (words := against_best_words(part)):
            parts.append(words)
        if part.sensitivity is not None:
            parts += [f"Learning-rate sensitivity of {sens_metric(part)} (Wortsman et al. 2023: mean over the "
                      "learning rates of min(loss, the loss at initialisation) minus the best; lower is more forgiving):",
                      markdown_table(*sensitivity_rows(part))]
    if c.notes:
        parts += ["Notes:", "\n".join(f"- {n}" for n in c.notes)]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def sens_metric(c: Comparison) -> str:
    return c.metric if c.metric in LOSSES else "final_val_loss"


def ledger_markdown(df: pd.DataFrame) -> str:
    def p(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2g}"

    rows = [[r["claim"], r["source"], r["recipe"], r["test"], f"**{r['verdict']}**", r["evidence"], p(r["p"]),
             p(r["p_adjusted"]), r["family"], p(r["q_ledger"]), str(r["seeds"])] for _, r in df.iterrows()]
    legend = ("\nEvidence: each arm's mean ± the half-width of its 95% confidence interval (n seeds; geometric mean "
              "×/÷ its interval factor on the log scale), the contrast with its 95% interval (an equivalence is "
              "decided by the 90% interval, two one-sided tests), the test and its one-sided p, per setting, and "
              "the look the claim stopped at. p: the claim's sequential p (the null rate at which its looks reject "
              "at least as strongly as they did, calibrated by simulation); p_adjusted: Holm within its family (a paper's claims in one recipe), "
              f"which decides; q_ledger: Benjamini-Hochberg over the {len(df)} claims listed, which informs; seeds: "
              "per arm at the look the verdict used. The rule: docs/claims.md.\n")
    return markdown_table(["claim", "source", "recipe", "test", "verdict", "evidence", "p", "p_adjusted", "family",
                           "q_ledger", "seeds"], rows) + legend
