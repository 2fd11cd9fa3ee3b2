"""A whole recipe: plan (resume), lock, execute, index. Used by the CLI and the Python API."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import store
from .config import LEAKY_NORMS
from .display import make_reporter
from .errors import NormbenchError, Terminated, raise_terminated
from .executors import make_executor, plan_parallelism
from .recipe import Recipe, RunSpec, load_recipe
from .registry import load_plugin, plugins_for


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


class RecipeWarning(UserWarning):
    """A recipe that trains, but not as its keys suggest (a leaky norm, a warmup longer than the run)."""


@dataclass
class Plan:
    recipe: Recipe
    recipe_dir: Path
    statuses: dict[str, str]  # run id -> status before this invocation
    todo: list[RunSpec] = field(default_factory=list)
    force: bool = False
    retry_failed: bool = False


def make_plan(recipe: Recipe, out: str | Path, force: bool = False, retry_failed: bool = False) -> Plan:
    """Which runs to execute: missing and incomplete ones; crashed ones with retry_failed; all with force."""
    recipe_dir = Path(out) / recipe.name
    statuses = {r.run_id: store.status(recipe_dir / r.run_id) for r in recipe.runs}
    redo = {"missing", "incomplete"} | ({"crashed"} if retry_failed else set())
    todo = [r for r in recipe.runs if force or statuses[r.run_id] in redo]
    return Plan(recipe, recipe_dir, statuses, todo, force, retry_failed)


def causality_warning(recipe: Recipe) -> str | None:
    """One line when some runs use a norm whose training-mode statistics mix positions (README:
    causality probe), else None."""
    leaky = sorted({r.cfg.model.norm for r in recipe.runs if r.cfg.model.norm in LEAKY_NORMS})
    if not leaky:
        return None
    n = sum(r.cfg.model.norm in LEAKY_NORMS for r in recipe.runs)
    return (f"{n} run(s) use {', '.join(leaky)}: in training their batch statistics let a token see later tokens, "
            f"so the training loss is optimistic (train_causal_leak > 0); judge by the eval-mode val loss, "
            f"or compare batchnorm_causal")


def warmup_warning(recipe: Recipe) -> str | None:
    """One line when some runs end before their warmup does (train.warmup_steps > train.steps): their
    learning rate never reaches train.lr. A warning, not a refusal: a shortened look at a recipe
    (``--set train.steps=50``) is legitimate, but it must not pass silently."""
    short = [r for r in recipe.runs if r.cfg.train.warmup_steps > r.cfg.train.steps]
    if not short:
        return None
    pairs = sorted({(r.cfg.train.warmup_steps, r.cfg.train.steps) for r in short})
    shown = ", ".join(f"train.warmup_steps={w} > train.steps={s} (lr peaks at {s / w:.0%} of train.lr)"
                      for w, s in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
    return (f"{len(short)} of {len(recipe.runs)} run(s) end before their warmup does: {shown}; "
            f"shorten the warmup too (--set train.warmup_steps=N) to study the recipe's learning rate")


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Every warning about a recipe that trains but not as its keys suggest (printed by ``run``)."""
    return [w for w in (causality_warning(recipe), warmup_warning(recipe)) if w]


def config_recipe(recipe: Recipe, spec: RunSpec) -> dict:
    """The run's config.yaml: a recipe that reruns exactly this run."""
    from .provenance import git_state

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
            reporter=None, executor: str = "local", executor_options: dict | None = None) -> Outcome:
    """Run the plan's runs with the ``local`` or ``ray`` executor (options: address, cpus_per_run,
    gpus_per_run, retries) and index them; the driver alone decides what runs and writes records."""
    recipe, t0 = plan.recipe, time.perf_counter()
    options = executor_options or {}
    reporter = reporter or make_reporter(quiet=True)
    with sigterm_as_interrupt(), store.Lock(plan.recipe_dir):
        # plan again under the lock: another process may have finished runs meanwhile
        plan = make_plan(recipe, plan.recipe_dir.parent, plan.force, plan.retry_failed)
        if executor == "local":
            gpu = any(r.cfg.device in ("auto", "cuda") for r in plan.todo) and _cuda_available()
            if not gpu and any(r.cfg.device == "cuda" for r in plan.todo):
                raise NormbenchError("is cuda but torch sees no CUDA device here; use auto or cpu", key="device")
            jobs, threads = plan_parallelism(len(plan.todo), jobs, threads, gpu)
        else:  # the cluster's resources decide how many run at once; --jobs caps it
            jobs = max(1, min(jobs or len(plan.todo), len(plan.todo)))
            threads = threads or max(1, int(options.get("cpus_per_run", 1)))
        results = dict(plan.statuses)
        outcome = Outcome(plan, results, jobs=jobs, threads=threads)
        plugins = plugins_for({r.cfg.model.norm for r in plan.todo})  # every worker loads them first
        engine = make_executor(executor, jobs, threads, plugins=plugins, **options)
        if plan.todo:
            engine.open()  # before any folder is touched: an unreachable cluster leaves nothing half-written
            jobs = outcome.jobs = engine.jobs  # a cluster may run fewer at once than asked
        if recipe.claims and recipe.claims_ids is None:  # as written: `normbench claims RESULTS` reads them here
            write_claims(recipe, plan.recipe_dir)
        for r in plan.todo:
            results[r.run_id] = "pending"
        tasks = []
        for r in plan.todo:
            store.prepare(plan.recipe_dir / r.run_id, config_recipe(recipe, r))
            tasks.append((str(plan.recipe_dir / r.run_id), r.cfg.to_dict()))
        reporter.begin(recipe, plan, jobs, threads)
        failed = []
        try:
            if not plan.todo:  # completed runs are skipped before anything is submitted (or Ray started)
                return outcome
            for ev in engine.run(tasks, stop=lambda: fail_fast and bool(failed)):
                spec = plan.todo[ev.index]
                if ev.kind == "start":
                    reporter.started(spec)
                elif ev.kind == "progress":
                    reporter.progress(spec, ev.step, ev.loss, ev.tokens_per_s)
                else:
                    run_dir = plan.recipe_dir / spec.run_id
                    if ev.record is not None:  # returned by a remote worker: the driver writes it
                        store.write_record(run_dir, ev.record)
                    st = store.status(run_dir)
                    if st not in store.DONE and st != "crashed":  # killed without a word: OOM, signal
                        how = f"killed by signal {-ev.exitcode}" if (ev.exitcode or 0) < 0 else f"exit code {ev.exitcode}"
                        store.write_error(run_dir, f"the run's process ended without a summary ({how}); "
                                                   "out of memory is the usual cause\n")
                        st = "crashed"
                    results[spec.run_id] = st
                    if st == "crashed":
                        failed.append(spec.run_id)
                    store.rebuild_index(plan.recipe_dir)
                    reporter.finished(spec, st, run_dir)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
            engine.terminate()
            outcome.interrupted, outcome.terminated = True, isinstance(e, Terminated)
        finally:
            store.rebuild_index(plan.recipe_dir)
            for rid, st in results.items():
                if st == "pending":
                    results[rid] = "incomplete"
            outcome.elapsed_s = time.perf_counter() - t0
            reporter.end(outcome)
    return outcome


def write_claims(recipe: Recipe, recipe_dir: Path) -> None:
    """claims.yaml: the claims and the runs of the recipe as written that judge them, with the base
    values the report names (a run with --set that changes run ids never writes it)."""
    import yaml

    from .claims import CLAIMS_FILE
    from .config import get_dotted

    first = recipe.runs[0].cfg.to_dict()
    base = {k: get_dotted(first, k) for k in ("train.steps", "train.batch_size", "data.seq_len")}
    doc = {"recipe": recipe.name, "base": base, "runs": [r.run_id for r in recipe.runs],
           "claims": [c.raw for c in recipe.claims]}
    store.write_atomic(recipe_dir / CLAIMS_FILE, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def executor_options(executor: str, address: str | None, cpus_per_run: float, gpus_per_run: float,
                     retries: int) -> dict:
    """Check the executor's options (one line, exit 2 on bad input) and return them for ``execute``."""
    if executor not in ("local", "ray"):
        raise NormbenchError(f"expected local or ray, got {executor!r}", key="--executor")
    if executor == "local":
        given = [name for name, v, default in (("--address", address, None), ("--cpus-per-run", cpus_per_run, 1),
                                               ("--gpus-per-run", gpus_per_run, 0), ("--retries", retries, 0))
                 if v != default]
        if given:
            raise NormbenchError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only to --executor ray",
                                 key=given[0])
        return {}
    if cpus_per_run <= 0 or gpus_per_run < 0 or retries < 0:
        raise NormbenchError("expected --cpus-per-run > 0, --gpus-per-run >= 0 and --retries >= 0",
                             key="--cpus-per-run" if cpus_per_run <= 0 else "--gpus-per-run" if gpus_per_run < 0
                             else "--retries")
    return {"address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run, "retries": retries}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_recipe(recipe, overrides=None, jobs: int | None = None, out: str | Path = "results",
               threads: int | None = None, force: bool = False, retry_failed: bool = False,
               fail_fast: bool = False, progress: bool = False, executor: str = "local",
               address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0, retries: int = 0,
               plugins: list | None = None):
    """Run a recipe (a path or a dict) and return its runs as a pandas DataFrame.

    ``overrides`` is a dict of dotted keys or a list of ``"key=value"`` strings,
    as ``--set``. Completed runs are reused (resume). Raises ``NormbenchError``
    on bad input; crashed runs appear in the frame with ``status == "crashed"``.
    ``progress=True`` prints one line per run as it starts and ends. ``executor="ray"`` runs each
    run as a Ray task (``address``: None starts a local Ray instance, ``"auto"`` or
    ``"ray://host:port"`` joins a cluster; ``cpus_per_run``, ``gpus_per_run``, ``retries``), as
    ``normbench run --executor ray``. ``plugins``: plugin files to load first, as ``--plugin``.
    """
    for path in plugins or []:
        load_plugin(path)
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    plan = make_plan(rec, out, force=force, retry_failed=retry_failed)
    if plan.todo:
        for text in recipe_warnings(rec):
            warnings.warn(text, RecipeWarning, stacklevel=2)
    outcome = execute(plan, jobs=jobs, threads=threads, fail_fast=fail_fast,
                      reporter=make_reporter(quiet=True, silent=not progress),
                      executor=executor, executor_options=executor_options(executor, address, cpus_per_run,
                                                                           gpus_per_run, retries))
    if outcome.interrupted:
        raise Terminated() if outcome.terminated else KeyboardInterrupt()
    df = store.load_results(plan.recipe_dir)
    ids = [r.run_id for r in rec.runs]
    if df.empty:
        return df
    return df[df["run_id"].isin(ids)].set_index("run_id").reindex([i for i in ids if i in set(df["run_id"])]).reset_index()

