"""The executor interface: one small contract shared by every engine (local processes, Ray, and
any you add in ``executors.py``'s table).

    executor.open();  executor.run(tasks, stop) -> Iterator[Event];  executor.terminate()

A task is ``(run_dir, cfg_dict)``: a run spec in. Out come events: ``start`` (the run began,
on a worker), ``progress`` (step, loss, tokens/s; at most every 0.25 s) and ``end``, with the
run's *record* when the executor returns one: ``{"summary": dict | None, "metrics": str,
"error": str | None}``, which the driver writes into ``run_dir`` (``store.write_record``).
``end`` without a record means the worker wrote the folder itself. ``stop()`` true: submit no
more. ``terminate()`` stops what runs (Ctrl-C); their folders stay incomplete, so the next
``run`` redoes them.

An executor class declares its ``name``, its ``OPTIONS`` (``Option``: what ``--executor-option``
and the CLI's shorthands may set) and its parallelism (``parallelism``: how many runs at once, and
torch threads per run); ``sweep/execute.py`` and the CLI know nothing else of it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import NormbenchError

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
    beside another busy process collapses (measured 2x to 16x slower, docs/execution.md), while a
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
    kind: str  # "start" | "progress" | "checkpoint" | "end"
    index: int  # the task's position in the list given to run()
    step: int = 0
    loss: float = float("nan")
    tokens_per_s: float = 0.0
    exitcode: int | None = None  # end: the process's exit code, where the executor knows it
    record: dict | None = None  # end: the run record, when the executor returns one (not written yet)
    pid: int | None = None  # start: the process running the run
    data: bytes | None = None  # checkpoint: the file's bytes, from a worker that does not share the driver's disk


@dataclass(frozen=True)
class Option:
    """One option an executor takes (``--executor-option NAME=VALUE``; a CLI shorthand ``flag``)."""
    name: str
    default: Any
    type: type
    help: str
    min: float | None = None  # the smallest value allowed (inclusive unless min_open)
    min_open: bool = False
    flag: str | None = None  # the CLI's shorthand for it (--address)

    def coerce(self, value: Any) -> Any:
        """``value`` (a string from the command line, or a Python value) as this option's type, checked."""
        flag = self.flag or f"--executor-option {self.name}"
        if value is None:
            return None
        try:
            v = self.type(value)
        except (TypeError, ValueError):
            raise NormbenchError(f"expected {self.type.__name__}, got {value!r}", key=flag) from None
        if self.min is not None and (v <= self.min if self.min_open else v < self.min):
            raise NormbenchError(f"expected {'>' if self.min_open else '>='} {self.min:g}, got {v!r}", key=flag)
        return v


class Executor:
    """The base every executor derives from; a subclass sets ``name`` and ``OPTIONS`` and implements
    ``run`` (and ``open``/``terminate`` where it has something to do)."""
    name = ""
    OPTIONS: tuple[Option, ...] = ()
    jobs: int
    threads: int | None

    @classmethod
    def parallelism(cls, n_runs: int, jobs: int | None, threads: int | None, devices: set[str],
                    options: dict) -> tuple[int, int]:
        """(runs at once, torch threads per run) for ``n_runs`` runs on ``devices`` (their ``device``
        keys); default: as many as asked, at most one per run, one thread each."""
        return max(1, min(jobs or n_runs, n_runs)), threads or 1

    def open(self) -> None:  # connect or start up; bad input raises NormbenchError
        pass

    def run(self, tasks: list[tuple[str, dict]], stop: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        raise NotImplementedError

    def terminate(self) -> None:
        pass


def train_in_worker(run_dir, cfg_dict: dict, threads: int, progress, plugins=None, log=None,
                    on_checkpoint=None) -> dict:
    """What every executor's worker does with one run: load the plugins, build the trackers (``log``, a
    trackers.LogSpec), train (resuming from a checkpoint in ``run_dir``), close the trackers; the summary."""
    from pathlib import Path

    from ..config import from_dict
    from ..trackers import make_trackers
    from ..trainer import train

    load_plugins(plugins)
    trackers = make_trackers(log, Path(run_dir), cfg_dict)
    summary = None
    try:
        summary = train(from_dict(cfg_dict), Path(run_dir), threads=threads, on_progress=progress,
                        on_checkpoint=on_checkpoint, trackers=trackers)
        return summary
    finally:
        for t in trackers:
            t.finish(summary)


def load_plugins(plugins: list | None) -> None:
    """On a worker: execute the plugin files' texts, so their norms are registered here too."""
    from ..registry import load_plugin_source

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
