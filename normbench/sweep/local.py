"""``LocalExecutor``: each run in its own process on this machine.

The child writes its own folder: it shares the driver's filesystem, metrics.jsonl then grows on
disk as the run trains (``compare`` and the curves see a running sweep; a kill -9 leaves the log
so far), and nothing is copied through a pipe.

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
import traceback
import types
from pathlib import Path
from typing import Callable, Iterator

from ..errors import NormbenchError
from .executor import Event, Executor, plan_parallelism, throttled_progress, train_in_worker


def _watch_parent(conn) -> None:
    """Exit when the parent dies (kill -9 included): its end of the pipe closes."""
    try:
        conn.recv()
    except (EOFError, OSError):
        pass
    os._exit(3)


def _child(index: int, run_dir: str, cfg_dict: dict, threads: int, events, parent_conn, plugins=None,
           log=None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_watch_parent, args=(parent_conn,), daemon=True).start()
    from . import store

    try:
        summary = train_in_worker(run_dir, cfg_dict, threads, throttled_progress(index, events.put), plugins, log)
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


class LocalExecutor(Executor):
    """Runs ``(run_dir, cfg_dict)`` tasks in child processes, ``jobs`` at a time, yielding Events."""
    name = "local"
    OPTIONS = ()

    @classmethod
    def parallelism(cls, n_runs, jobs, threads, devices, options):
        """One run per core on CPU, one thread each; up to 4 runs share a GPU (``plan_parallelism``)."""
        gpu = bool(devices & {"auto", "cuda"}) and _cuda_available()
        if not gpu and "cuda" in devices:
            raise NormbenchError("is cuda but torch sees no CUDA device here; use auto or cpu", key="device")
        return plan_parallelism(n_runs, jobs, threads, gpu)


    def __init__(self, jobs: int, threads: int, plugins: list | None = None, log=None, **options):
        self.jobs, self.threads, self.plugins, self.log = jobs, threads, plugins or [], log
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
                                                              self.plugins, self.log), daemon=False)
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


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
