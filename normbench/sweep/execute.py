"""A whole recipe: lock, plan again, execute, index. Used by the CLI and the Python API."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import trackers
from ..errors import Terminated, raise_terminated
from ..recipe import Recipe, RunSpec, load_recipe
from ..registry import plugins_for
from ..trackers import LogSpec
from . import store
from .display import make_reporter
from .executors import executor_class, executor_options as check_options, make_executor
from .plan import Plan, RecipeWarning, make_plan, recipe_warnings


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While a sweep runs, SIGTERM raises ``Terminated`` in the main thread, unless the program has
    a SIGTERM handler of its own (the CLI installs this one for its whole life)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    old = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def config_recipe(recipe: Recipe, spec: RunSpec) -> dict:
    """The run's config.yaml: a recipe that reruns exactly this run."""
    from ..provenance import git_state

    desc = f"run {spec.run_id} of recipe {recipe.name}" + (f" ({spec.label()})" if spec.values else "")
    doc = {"name": recipe.name, "description": desc, "base": spec.cfg.to_dict()}
    git = git_state(recipe.path)
    if git is not None:  # where the recipe came from: its repository's commit, and whether it was edited
        doc["provenance"] = {"recipe": recipe.path, "git": git}
    return doc


@dataclass
class Outcome:
    plan: Plan
    results: dict[str, str]  # run id -> final status, for the runs of this recipe
    interrupted: bool = False
    terminated: bool = False  # the interruption was SIGTERM, not Ctrl-C
    elapsed_s: float = 0.0
    jobs: int = 1
    threads: int = 1

    @property
    def crashed(self) -> list[str]:
        return [rid for rid, st in self.results.items() if st == "crashed"]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.terminated else 130
        return 1 if self.crashed else 0


def execute(plan: Plan, jobs: int | None = None, threads: int | None = None, fail_fast: bool = False,
            reporter=None, executor: str = "local", executor_options: dict | None = None,
            log_to: tuple = ()) -> Outcome:
    """Run the plan's runs with an executor of ``executors.EXECUTORS`` (``executor_options``: the
    options set, by name) and index them; the driver alone decides what runs and writes records."""
    recipe, t0 = plan.recipe, time.perf_counter()
    options = check_options(executor, executor_options or {})
    reporter = reporter or make_reporter(quiet=True)
    with sigterm_as_interrupt(), store.Lock(plan.recipe_dir):
        # plan again under the lock: another process may have finished runs meanwhile
        plan = make_plan(recipe, plan.recipe_dir.parent, plan.force, plan.retry_failed)
        jobs, threads = executor_class(executor).parallelism(len(plan.todo), jobs, threads,
                                                             {r.cfg.device for r in plan.todo}, options)
        outcome = Outcome(plan, dict(plan.statuses), jobs=jobs, threads=threads)
        plugins = plugins_for({r.cfg.model.norm for r in plan.todo})  # every worker loads them first
        log = LogSpec(trackers.check(log_to), recipe.name, tuple(dict.fromkeys(k for r in recipe.runs for k in r.values)),
                      str(plan.recipe_dir.parent)) if log_to else None
        engine = make_executor(executor, jobs, threads, plugins=plugins, log=log, **options)
        if plan.todo:
            engine.open()  # before any folder is touched: an unreachable cluster leaves nothing half-written
            outcome.jobs = engine.jobs  # a cluster may run fewer at once than asked
        if recipe.claims and recipe.claims_ids is None:  # as written: `normbench claims RESULTS` reads them here
            write_claims(recipe, plan.recipe_dir)
        tasks = []
        for r in plan.todo:
            outcome.results[r.run_id] = "pending"
            store.prepare(plan.recipe_dir / r.run_id, config_recipe(recipe, r))
            tasks.append((str(plan.recipe_dir / r.run_id), r.cfg.to_dict()))
        reporter.begin(recipe, plan, outcome.jobs, threads)
        try:
            if plan.todo:  # completed runs are skipped before anything is submitted (or Ray started)
                drive(engine, tasks, outcome, reporter, fail_fast)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
            engine.terminate()
            outcome.interrupted, outcome.terminated = True, isinstance(e, Terminated)
        finally:
            store.rebuild_index(plan.recipe_dir)
            for rid, st in outcome.results.items():
                if st == "pending":
                    outcome.results[rid] = "incomplete"
            outcome.elapsed_s = time.perf_counter() - t0
            reporter.end(outcome)
    return outcome


def drive(engine, tasks: list, outcome: Outcome, reporter, fail_fast: bool) -> None:
    """Feed the tasks to the engine and act on its events: report them, and at each run's end write
    its record (a remote worker's), settle its status and rebuild the index."""
    plan, failed = outcome.plan, []
    for ev in engine.run(tasks, stop=lambda: fail_fast and bool(failed)):
        spec = plan.todo[ev.index]
        if ev.kind == "start":
            reporter.started(spec)
        elif ev.kind == "progress":
            reporter.progress(spec, ev.step, ev.loss, ev.tokens_per_s)
        elif ev.kind == "checkpoint":  # from a worker without the driver's disk: it lands in the run folder
            if outcome.results.get(spec.run_id) == "pending" and ev.data is not None:
                store.write_atomic(plan.recipe_dir / spec.run_id / store.CHECKPOINT, ev.data)
        else:
            run_dir = plan.recipe_dir / spec.run_id
            st = finish_run(run_dir, ev)
            outcome.results[spec.run_id] = st
            if st == "crashed":
                failed.append(spec.run_id)
            store.rebuild_index(plan.recipe_dir)
            reporter.finished(spec, st, run_dir)


def finish_run(run_dir: Path, ev) -> str:
    """A run's status at its end event, once its record (from a remote worker) is written; a process
    that ended without a word (out of memory, a signal) is recorded as crashed."""
    if ev.record is not None:  # returned by a remote worker: the driver writes it
        store.write_record(run_dir, ev.record)
    st = store.status(run_dir)
    if st not in store.DONE and st != "crashed":
        how = f"killed by signal {-ev.exitcode}" if (ev.exitcode or 0) < 0 else f"exit code {ev.exitcode}"
        store.write_error(run_dir, f"the run's process ended without a summary ({how}); "
                                   "out of memory is the usual cause\n")
        st = "crashed"
    return st


def write_claims(recipe: Recipe, recipe_dir: Path) -> None:
    """claims.yaml: the claims and the runs of the recipe as written that judge them, with the base
    values the report names (a run with --set that changes run ids never writes it)."""
    import yaml

    from ..claims import CLAIMS_FILE
    from ..dotted import get_dotted

    first = recipe.runs[0].cfg.to_dict()
    base = {k: get_dotted(first, k) for k in ("train.steps", "train.batch_size", "data.seq_len")}
    doc = {"recipe": recipe.name, "base": base, "runs": [r.run_id for r in recipe.runs],
           "seeds": sorted({r.cfg.seed for r in recipe.runs}),  # the claims' first look (docs/claims.md)
           "claims": [c.raw for c in recipe.claims]}
    store.write_atomic(recipe_dir / CLAIMS_FILE, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def run_recipe(recipe, overrides=None, jobs: int | None = None, out: str | Path = "results",
               threads: int | None = None, force: bool = False, retry_failed: bool = False,
               fail_fast: bool = False, progress: bool = False, executor: str = "local",
               address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0, retries: int = 0,
               plugins: list | None = None, executor_options: dict | None = None, log: list | tuple = ()):
    """Run a recipe (a path or a dict) and return its runs as a pandas DataFrame.

    ``overrides`` is a dict of dotted keys or a list of ``"key=value"`` strings,
    as ``--set``. Completed runs are reused (resume). Raises ``NormbenchError``
    on bad input; crashed runs appear in the frame with ``status == "crashed"``.
    ``progress=True`` prints one line per run as it starts and ends. ``executor="ray"`` runs each
    run as a Ray task (``address``: None starts a local Ray instance, ``"auto"`` or
    ``"ray://host:port"`` joins a cluster; ``cpus_per_run``, ``gpus_per_run``, ``retries``), as
    ``normbench run --executor ray``. ``executor_options``: any executor's options by name, as
    ``--executor-option``. ``plugins``: plugin files to load first, as ``--plugin``. ``log``: trackers
    (tensorboard, wandb, mlflow) fed live by every run, as ``--log`` (trackers.py).
    """
    from ..plugins import load_plugin

    for path in plugins or []:
        load_plugin(path)
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    plan = make_plan(rec, out, force=force, retry_failed=retry_failed)
    if plan.todo:
        for text in recipe_warnings(rec):
            warnings.warn(text, RecipeWarning, stacklevel=2)
    outcome = execute(plan, jobs=jobs, threads=threads, fail_fast=fail_fast,
                      reporter=make_reporter(quiet=True, silent=not progress),
                      executor=executor, executor_options={**ray_shorthands(address, cpus_per_run, gpus_per_run,
                                                                            retries), **(executor_options or {})},
                      log_to=tuple(log))
    if outcome.interrupted:
        raise Terminated() if outcome.terminated else KeyboardInterrupt()
    df = store.load_results(plan.recipe_dir)
    ids = [r.run_id for r in rec.runs]
    if df.empty:
        return df
    return df[df["run_id"].isin(ids)].set_index("run_id").reindex([i for i in ids if i in set(df["run_id"])]).reset_index()



def ray_shorthands(address=None, cpus_per_run=1.0, gpus_per_run=0.0, retries=0) -> dict:
    """The Ray options given as ``run_recipe``'s (and the CLI's) own keywords, those not at their default."""
    from .ray_executor import RayExecutor

    given = {"address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run, "retries": retries}
    defaults = {o.name: o.default for o in RayExecutor.OPTIONS}  # the one place Ray's defaults are declared
    return {k: v for k, v in given.items() if v != defaults[k]}
