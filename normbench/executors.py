"""Executors run runs. One small interface, shared by every engine:

    executor.run(tasks, stop) -> Iterator[Event];  executor.terminate()

A task is ``(run_dir, cfg_dict)``: a run spec in. Out come events: ``start`` (the run began,
on a worker), ``progress`` (step, loss, tokens/s; at most every 0.25 s) and ``end``, with the
run's *record* when the executor returns one: ``{"summary": dict | None, "metrics": str,
"error": str | None}``, which the driver writes into ``run_dir`` (``store.write_record``).
``end`` without a record means the worker wrote the folder itself. ``stop()`` true: submit no
more. ``terminate()`` stops what runs (Ctrl-C); their folders stay incomplete, so the next
``run`` redoes them.

``LocalExecutor`` (here) runs each run in its own process on this machine and lets the child
write its folder: it shares the driver's filesystem, metrics.jsonl then grows on disk as the
run trains (``compare`` and the curves see a running sweep; a kill -9 leaves the log so far),
and nothing is copied through a pipe. ``RayExecutor`` (``ray_executor.py``) returns records,
because a cluster's workers need not share a filesystem with the driver.

Why processes: a crash or an out-of-memory kill takes one run down, not the sweep; and tiny
models run faster as several single-threaded processes than as one multi-threaded one.
Children start from a forkserver that has already imported torch (Linux), so starting a run
costs milliseconds, not seconds.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

PROGRESS_INTERVAL_S = 0.25


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_parallelism(n_runs: int, jobs: int | None, threads: int | None, gpu: bool) -> tuple[int, int]:
    """(jobs, threads per run) so that jobs x threads never exceeds the cores the process may use.

    CPU: one run per core and one thread per run, always. Fewer runs than cores do not take the
    spare cores: torch's intra-op threads busy-wait for each other, so a run with two threads
    beside another busy process collapses (measured 2x to 16x slower, README: Execution), while a
    one-thread run only loses the small gain a tiny model gets from a second thread on an idle
    machine. ``--threads`` still sets it. GPU: several runs share the device (a tiny model leaves it
    mostly idle), bounded by the cores that feed them, which they share.
    """
    cores = cpu_count()
    n = max(1, n_runs)
    if jobs is None:
        jobs = min(n, cores, 4) if gpu else min(n, cores)
    jobs = max(1, min(jobs, n))
    if threads is None:
        threads = max(1, cores // jobs) if gpu else 1
    return jobs, threads


@dataclass
class Event:
    kind: str  # "start" | "progress" | "end"
    index: int  # the task's position in the list given to run()
    step: int = 0
    loss: float = float("nan")
    tokens_per_s: float = 0.0
    exitcode: int | None = None  # end: the process's exit code, where the executor knows it
    record: dict | None = None  # end: the run record, when the executor returns one (not written yet)
    pid: int | None = None  # start: the process running the run


class Executor(Protocol):
    jobs: int
    threads: int | None

    def open(self) -> None: ...  # connect or start up; bad input raises NormbenchError

    def run(self, tasks: list[tuple[str, dict]], stop: Callable[[], bool] = ...) -> Iterator[Event]: ...

    def terminate(self) -> None: ...


def make_executor(name: str, jobs: int, threads: int | None, plugins: list | None = None, **options) -> Executor:
    """``local`` or ``ray`` (options: address, cpus_per_run, gpus_per_run, retries). ``plugins``:
    (path, text) of the plugin files the runs need; every worker loads them before its run."""
    if name == "local":
        return LocalExecutor(jobs, threads, plugins)
    from .ray_executor import RayExecutor

    return RayExecutor(jobs, threads, plugins=plugins, **options)


def load_plugins(plugins: list | None) -> None:
    """On a worker: execute the plugin files' texts, so their norms are registered here too."""
    from .registry import load_plugin_source

    for path, text in plugins or []:
        load_plugin_source(path, text)


def throttled_progress(index: int, send: Callable[[Event], None]) -> Callable[[int, float, float], None]:
    """``train``'s on_progress for a worker: a progress Event at most every PROGRESS_INTERVAL_S."""
    last = [0.0]

    def progress(step, loss, tps):
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            send(Event("progress", index, step, loss, tps))

    return progress


def _watch_parent(conn) -> None:
    """Exit when the parent dies (kill -9 included): its end of the pipe closes."""
    try:
        conn.recv()
    except (EOFError, OSError):
        pass
    os._exit(3)


def _child(index: int, run_dir: str, cfg_dict: dict, threads: int, events, parent_conn, plugins=None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_watch_parent, args=(parent_conn,), daemon=True).start()
    from . import store
    from .config import from_dict
    from .trainer import train

    try:
        load_plugins(plugins)
        summary = train(from_dict(cfg_dict), Path(run_dir), threads=threads,
                        on_progress=throttled_progress(index, events.put))
        store.write_summary(Path(run_dir), summary)
    except BaseException:
        store.write_error(Path(run_dir), traceback.format_exc())
        sys.exit(1)


@contextlib.contextmanager
def _main_hidden():
    """While a child starts: a bare ``__main__``. Children run ``_child`` from this module and need
    nothing from the caller's script, but spawn and forkserver re-import that script in every
    child, which re-runs an unguarded ``normbench.run_recipe(...)`` at its top level and crashes
    every run (multiprocessing's ``if __name__ == "__main__":`` rule). Hidden, no re-import."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _context():
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["normbench.trainer"])
        return ctx
    return mp.get_context("spawn")


class LocalExecutor:
    """Runs ``(run_dir, cfg_dict)`` tasks in child processes, ``jobs`` at a time, yielding Events."""

    def __init__(self, jobs: int, threads: int, plugins: list | None = None):
        self.jobs, self.threads, self.plugins = jobs, threads, plugins or []
        self.ctx = _context()
        self.active: dict[int, tuple] = {}

    def open(self) -> None:
        pass  # the forkserver starts with the first run

    def run(self, tasks: list[tuple[str, dict]], stop: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        events = self.ctx.Queue()
        todo = list(enumerate(tasks))
        try:
            while (todo and not stop()) or self.active:
                while todo and len(self.active) < self.jobs and not stop():
                    i, (run_dir, cfg_dict) = todo.pop(0)
                    recv, send = self.ctx.Pipe(duplex=False)
                    p = self.ctx.Process(target=_child, args=(i, run_dir, cfg_dict, self.threads, events, recv,
                                                              self.plugins), daemon=False)
                    with _main_hidden():
                        p.start()
                    recv.close()
                    self.active[i] = (p, send)
                    yield Event("start", i, pid=p.pid)
                try:
                    ev = events.get(timeout=0.1)
                    if ev.index in self.active:
                        yield ev
                except queue_mod.Empty:
                    pass
                for i, (p, send) in list(self.active.items()):
                    if not p.is_alive():
                        p.join()
                        send.close()
                        del self.active[i]
                        yield Event("end", i, exitcode=p.exitcode)
        finally:
            self.terminate()
            events.close()

    def terminate(self) -> None:
        """Stop every active run (their folders stay incomplete, so a rerun redoes them)."""
        for p, send in self.active.values():
            p.terminate()
        for p, send in self.active.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
            send.close()
        self.active.clear()
