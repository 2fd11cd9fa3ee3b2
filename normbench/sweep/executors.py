"""The executors by name: the one place to add one (SLURM through submitit, say).

An executor is a class deriving ``executor.Executor`` that declares its ``OPTIONS`` and its
``parallelism``; put it beside these, add a line to ``EXECUTORS``, and ``normbench run --executor
NAME`` (with ``--executor-option KEY=VALUE``) and ``run_recipe(executor=NAME, ...)`` take it.
"""
from __future__ import annotations

from ..errors import NormbenchError
from .executor import Executor
from .local import LocalExecutor
from .ray_executor import RayExecutor

EXECUTORS: dict[str, type[Executor]] = {
    "local": LocalExecutor,
    "ray": RayExecutor,
}


def executor_class(name: str) -> type[Executor]:
    if name not in EXECUTORS:
        raise NormbenchError(f"expected {' or '.join(EXECUTORS)}, got {name!r}", key="--executor")
    return EXECUTORS[name]


def executor_options(name: str, given: dict) -> dict:
    """The options of executor ``name``: those ``given`` (set by the user) checked and coerced, the rest
    at their defaults. One line (exit 2) for an option this executor does not take."""
    cls = executor_class(name)
    own = {o.name: o for o in cls.OPTIONS}
    for key in given:
        if key not in own:
            others = [n for n, c in EXECUTORS.items() if any(o.name == key for o in c.OPTIONS)]
            flag = next((o.flag for c in EXECUTORS.values() for o in c.OPTIONS if o.name == key and o.flag),
                        f"--executor-option {key}")
            if others:
                raise NormbenchError(f"{flag} applies only to --executor {' or '.join(others)}", key=flag)
            raise NormbenchError(f"unknown option {key!r} of --executor {name}; it takes "
                                 f"{', '.join(own) or 'no options'}", key="--executor-option")
    return {k: o.coerce(given[k]) if k in given else o.default for k, o in own.items()}


def make_executor(name: str, jobs: int, threads: int | None, plugins: list | None = None, log=None,
                  **options) -> Executor:
    """An executor by name. ``plugins``: (path, text) of the plugin files the runs need; every worker
    loads them before its run. ``log``: the trackers' ``LogSpec`` (trackers.py), for every worker's
    ``train_in_worker``. ``options``: as ``executor_options`` returns them."""
    return executor_class(name)(jobs, threads, plugins=plugins, log=log, **options)
