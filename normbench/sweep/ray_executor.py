"""Runs on a Ray cluster (or a local Ray instance): one Ray task per run, with its needs declared.

Ray core tasks, not Ray Tune: normbench keeps owning its sweep state and resume (the run
folders), and Ray only places and runs the tasks. A task trains in a temporary folder on its
worker and returns the run record (summary, metrics log, error) to the driver, which writes the
run folder; workers need not share a filesystem with the driver. Progress comes back through a
``ray.util.queue.Queue`` (an actor). The same interface as ``LocalExecutor`` (executor.py).

Faults: a run that raises is returned as a record with the worker's traceback (a crashed run,
the sweep goes on); a worker process that dies (killed, out of memory, node lost) is retried by
Ray up to ``retries`` times, then recorded as crashed; ``terminate()`` cancels every task
(queued and running, ``force=True`` kills their workers).
"""
from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Iterator

from ..errors import NormbenchError
from ..catalog import CHECKPOINT
from .executor import Event, Executor, Option, cpu_count, throttled_progress, train_in_worker

# a local instance started for a sweep: a small object store (records are small; /dev/shm may be too)
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20
CONNECT_TIMEOUT_S = 5.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise NormbenchError("--executor ray needs Ray: pip install -c constraints.txt -e \".[ray]\"",
                             key="--executor") from None
    return ray


def _train_task(index: int, cfg_dict: dict, threads: int, events, plugins=None, log=None,
                checkpoint: bytes | None = None) -> dict:
    """On a worker: train one run in a temporary folder and return its record (never raises). A
    checkpoint from the driver's run folder is put in first (the run resumes from it); each new one
    goes back to the driver as it is written, and the files the run keeps (model.pt, the trackers'
    logs) come back with the record."""
    # fire and forget: Queue.put_nowait would block in ray.get, and a task blocked in ray.get lends
    # its CPUs to the next queued task, so more runs than CPUs would train at once
    send = events.actor.put_nowait.remote
    send(Event("start", index, pid=os.getpid()))
    progress = throttled_progress(index, send)

    with tempfile.TemporaryDirectory(prefix="normbench-run-") as tmp:
        if checkpoint is not None:
            Path(tmp, CHECKPOINT).write_bytes(checkpoint)
        try:
            # the thread count set explicitly: Ray sets OMP_NUM_THREADS, and a reused worker keeps
            # whatever an earlier task set (ray#35937)
            summary = train_in_worker(tmp, cfg_dict, threads, progress, plugins, log,
                                      on_checkpoint=lambda path: send(Event("checkpoint", index,
                                                                            data=path.read_bytes())))
            error = None
        except BaseException:
            summary, error = None, traceback.format_exc()
        metrics = Path(tmp, "metrics.jsonl")
        kept = {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(Path(tmp).rglob("*"))
                if p.is_file() and p.name not in ("metrics.jsonl", CHECKPOINT)}
        return {"summary": summary, "metrics": metrics.read_text() if metrics.exists() else None, "error": error,
                "files": kept}


def check_reachable(address: str) -> None:
    """One line (exit 2) instead of Ray's long retry loop when nothing listens at host:port."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise NormbenchError(f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}", key="--address")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise NormbenchError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                             f"`ray start --head` or drop --address for a local instance", key="--address") from None


class RayExecutor(Executor):
    """Runs ``(run_dir, cfg_dict)`` tasks as Ray tasks, at most ``jobs`` in flight, yielding Events."""
    name = "ray"
    OPTIONS = (
        Option("address", None, str, "auto or ray://HOST:PORT joins a cluster; default: a local Ray instance "
                                      "for this sweep", flag="--address"),
        Option("cpus_per_run", 1.0, float, "CPUs each run asks for (and its torch threads unless --threads)",
               min=0, min_open=True, flag="--cpus-per-run"),
        Option("gpus_per_run", 0.0, float, "GPUs each run asks for; a fraction shares a GPU (0.25: four runs)",
               min=0, flag="--gpus-per-run"),
        Option("retries", 0, int, "rerun a run whose worker died (killed, out of memory, node lost) up to N times",
               min=0, flag="--retries"),
    )

    @classmethod
    def parallelism(cls, n_runs, jobs, threads, devices, options):
        """The cluster's resources decide how many run at once (``open``); --jobs caps it."""
        return max(1, min(jobs or n_runs, n_runs)), threads or max(1, int(options.get("cpus_per_run", 1)))

    def __init__(self, jobs: int, threads: int | None, address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float = 0, retries: int = 0, plugins: list | None = None, log=None):
        self.jobs, self.address, self.plugins, self.log = jobs, address, plugins or [], log
        self.cpus_per_run, self.gpus_per_run, self.retries = cpus_per_run, gpus_per_run, retries
        self.threads = threads or max(1, int(cpus_per_run))  # torch threads: --threads, else the run's CPUs
        self.pending: dict = {}  # object ref -> task index
        self.started_here = False
        self.ray = None

    def open(self) -> None:
        self.ray = self.connect()
        # at most as many in flight as the cluster can run at once, so the start line says what happens
        cpus = self.ray.cluster_resources().get("CPU", 0)
        if cpus and self.cpus_per_run:
            self.jobs = max(1, min(self.jobs, int(cpus // self.cpus_per_run)))

    def connect(self):
        ray = import_ray()
        if ray.is_initialized():  # a script or a test session that started Ray already
            return ray
        if self.address:
            check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError) as e:
                raise NormbenchError(f"cannot join the Ray cluster at {self.address}: {e}", key="--address") from None
        else:
            ray.init(num_cpus=cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            self.started_here = True
        return ray

    def run(self, tasks: list[tuple[str, dict]], stop: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        ray = self.ray or self.connect()
        from ray.util.queue import Empty, Queue

        self.ray = ray
        events = Queue(actor_options={"num_cpus": 0})
        ray.get(events.actor.qsize.remote())  # the queue's actor is up before any task reports to it
        remote = ray.remote(_train_task).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                 max_retries=self.retries, retry_exceptions=False)
        todo = list(enumerate(tasks))
        started: set[int] = set()
        try:
            while (todo and not stop()) or self.pending:
                while todo and len(self.pending) < self.jobs and not stop():
                    i, (run_dir, cfg_dict) = todo.pop(0)
                    ckpt = Path(run_dir, CHECKPOINT)  # the driver's copy: the worker resumes from it
                    data = ckpt.read_bytes() if ckpt.exists() else None
                    self.pending[remote.remote(i, cfg_dict, self.threads, events, self.plugins, self.log, data)] = i
                done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0.1)
                while True:
                    try:
                        ev = events.get_nowait()
                    except Empty:
                        break
                    if ev.index in self.pending.values():
                        started.add(ev.index)
                        yield ev
                for ref in done:
                    i = self.pending.pop(ref)
                    if i not in started:  # its start event is still on the way: every end follows a start
                        yield Event("start", i)
                    yield Event("end", i, record=self._record(ref))
        finally:
            self.terminate()
            ray.kill(events.actor)
            if self.started_here:
                ray.shutdown()

    def _record(self, ref) -> dict:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the worker died: killed, out of memory, node lost
            return {"summary": None, "metrics": None,
                    "error": f"the Ray worker running this run died (tried {self.retries + 1} time(s); --retries N "
                             f"retries such runs): {type(e).__name__}: {e}\n"}

    def terminate(self) -> None:
        """Cancel every task, queued or running (their workers are killed)."""
        if self.ray is None:
            return
        for ref in self.pending:
            self.ray.cancel(ref, force=True)  # a finished task ignores it
        self.pending.clear()
