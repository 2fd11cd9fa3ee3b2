"""What a sweep shows while it runs: rich bars on a terminal, one line per event otherwise."""
from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_reporter(quiet: bool = False, silent: bool = False, console: Console | None = None):
    if silent:
        return Reporter()
    console = console or Console()
    if quiet or not console.is_terminal:
        return PlainReporter(console)
    return RichReporter(console)


class Reporter:
    """Silent; the base of the others."""

    def begin(self, recipe, plan, jobs, threads): ...
    def started(self, spec): ...
    def progress(self, spec, step, loss, tokens_per_s): ...
    def finished(self, spec, status, run_dir): ...
    def end(self, outcome): ...


def _result_text(status: str, run_dir) -> str:
    from . import store
    import json

    if status == "crashed":  # the exception's last line, as compare gives it; the traceback stays in the file
        try:
            lines = (run_dir / store.ERROR).read_text().strip().splitlines()
        except OSError:
            lines = []
        reason = lines[-1][:200] if lines else "no reason recorded"
        return f"crashed: {reason} (traceback: {run_dir / store.ERROR})"
    s = json.loads((run_dir / store.SUMMARY).read_text())
    if status == "diverged":
        return f"diverged at step {s['diverged_step']} ({s['divergence_reason']})"
    return f"val loss {s['final_val_loss']:.4f}, {s['tokens_per_s']:.0f} tok/s, {s['wall_s']:.1f} s"


def _begin_text(recipe, plan, jobs, threads) -> str:
    from . import store

    done = len(recipe.runs) - len(plan.todo)
    text = (f"{recipe.name}: {len(recipe.runs)} runs ({done} already done, {len(plan.todo)} to run), "
            f"{jobs} at a time x {threads} thread{'s' if threads > 1 else ''} -> {plan.recipe_dir}")
    todo = {r.run_id for r in plan.todo}
    ckpt = [r.run_id for r in recipe.runs if (plan.recipe_dir / r.run_id / store.CHECKPOINT).exists()]
    resumed, waiting = [i for i in ckpt if i in todo], [i for i in ckpt if i not in todo]
    if resumed:
        text += f"\n{len(resumed)} of them resume from their checkpoint"
    if waiting:  # crashed runs are redone only with --retry-failed
        text += (f"\n{len(waiting)} crashed run(s) hold a checkpoint ({', '.join(waiting[:3])}"
                 f"{', ...' if len(waiting) > 3 else ''}): --retry-failed resumes them from it")
    if recipe.claims and recipe.claims_ids is not None:
        text += ("\n--set changed the run ids: the recipe's claims stay judged on its runs as written "
                 "(claims.yaml left alone); `normbench claims` does not count these runs")
    return text


def _end_text(outcome) -> str:
    from . import store

    counts = {}
    for st in outcome.results.values():
        counts[st] = counts.get(st, 0) + 1
    parts = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
    if outcome.interrupted:
        how = "terminated (SIGTERM)" if outcome.terminated else "interrupted"
        return (f"{how} after {outcome.elapsed_s:.1f} s ({parts}); completed runs are kept: "
                "rerun the same command to resume")
    return f"done in {outcome.elapsed_s:.1f} s: {parts}; index: {outcome.plan.recipe_dir / store.INDEX}"


class PlainReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self.done = 0
        self.total = 0

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def begin(self, recipe, plan, jobs, threads):
        self.total = len(plan.todo)
        self._print(_begin_text(recipe, plan, jobs, threads))

    def started(self, spec):
        self._print(f"start {spec.run_id} ({spec.label()})")

    def finished(self, spec, status, run_dir):
        self.done += 1
        self._print(f"[{self.done}/{self.total}] {spec.run_id} ({spec.label()}): {_result_text(status, run_dir)}")

    def end(self, outcome):
        self._print(_end_text(outcome))


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console)
        self.tasks = {}
        self.failures = 0

    def begin(self, recipe, plan, jobs, threads):
        self.console.print(_begin_text(recipe, plan, jobs, threads), markup=False, highlight=False)
        self.sweep = self.bars.add_task("runs", total=len(plan.todo), info="")
        self.bars.start()

    def started(self, spec):
        self.tasks[spec.run_id] = self.bars.add_task(f"  {spec.run_id} {spec.label()}"[:60],
                                                         total=spec.cfg.train.steps, info="starting")

    def progress(self, spec, step, loss, tokens_per_s):
        info = f"loss {loss:.3f}  {tokens_per_s:,.0f} tok/s" if math.isfinite(loss) else f"loss {loss}"
        self.bars.update(self.tasks[spec.run_id], completed=step, info=info)

    def finished(self, spec, status, run_dir):
        self.bars.remove_task(self.tasks.pop(spec.run_id))
        self.failures += status == "crashed"
        self.bars.update(self.sweep, advance=1, info=f"{self.failures} crashed" if self.failures else "")
        self.bars.console.print(f"{spec.run_id} ({spec.label()}): {_result_text(status, run_dir)}",
                                    markup=False, highlight=False)

    def end(self, outcome):
        self.bars.stop()
        self.console.print(_end_text(outcome), markup=False, highlight=False)
