"""Live logs of runs in the dashboards researchers use: TensorBoard, Weights & Biases, MLflow.

``normbench run --log tensorboard --log wandb --log mlflow`` (any of them, several at once). Each
run's worker (the local child, the Ray task) builds its trackers and feeds them: every
metrics.jsonl row as it is written (the step and its values), the resolved config as
hyperparameters at the start, the summary at the end, and tags naming the recipe, the run id and
the run's factors (the keys its sweep varies, as ``compare`` groups by), so a sweep groups by its
factors in the dashboard. A run resumed from a checkpoint logs its rows so far again first (they
travel in the checkpoint), so every tracker holds the whole run. A tracker that fails gives one
line on stderr and is dropped: the run goes on and its own files are written as always. Where
each writes:

- tensorboard: ``RUN/tensorboard/`` (torch's SummaryWriter; the hparams plugin holds the factors):
  ``tensorboard --logdir RESULTS/RECIPE``;
- wandb: ``RUN/wandb/``; offline (``wandb sync`` uploads later) unless WANDB_MODE says otherwise or
  WANDB_API_KEY is set; project ``normbench`` (WANDB_PROJECT), group the recipe;
- mlflow: MLFLOW_TRACKING_URI, or a local file store ``RESULTS/mlruns``; experiment the recipe.

The libraries are optional extras (docs/install.md); none is imported unless asked for.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .dotted import flatten
from .errors import NormbenchError

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> the module it needs


@dataclass(frozen=True)
class LogSpec:
    """What the driver tells every worker: the trackers, the recipe, its factors, the results root."""
    to: tuple[str, ...]
    recipe: str
    factors: tuple[str, ...] = ()
    results: str = "results"


@dataclass
class RunInfo:
    recipe: str
    run_id: str
    factors: dict  # dotted key -> this run's value
    config: dict  # the resolved config, flattened to dotted keys
    run_dir: Path
    results: Path
    tags: dict = field(default_factory=dict)

    def label(self) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.factors.items()) or self.run_id


def check(names) -> tuple[str, ...]:
    """The tracker names, each known and installed; one line (exit 2) otherwise, before any run."""
    import importlib.util

    out = []
    from .dotted import suggest

    for name in names or ():
        if name not in EXTRAS:
            raise NormbenchError(f"expected {', '.join(EXTRAS)}, got {name!r}{suggest(name, list(EXTRAS))}",
                                 key="--log")
        if importlib.util.find_spec(EXTRAS[name]) is None:
            raise NormbenchError(f"--log {name} needs {EXTRAS[name]}: pip install -c constraints.txt -e "
                                 f"\".[{name}]\"", key="--log")
        if name not in out:
            out.append(name)
    return tuple(out)


def scalars(d: dict) -> dict:
    """The finite numbers (and booleans as 0/1) of a flat mapping."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out



class Tracker:
    """One run's live log in one dashboard."""
    name = ""

    def __init__(self, info: RunInfo):
        self.info = info

    def log(self, row: dict) -> None:
        """A metrics.jsonl row: its ``step`` and values (None where not finite)."""

    def finish(self, summary: dict | None) -> None:
        """The summary (None if the run crashed), then close."""


class TensorBoard(Tracker):
    name = "tensorboard"

    def __init__(self, info):
        super().__init__(info)
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(info.run_dir / "tensorboard"))
        self.w.add_text("config", "\n".join(f"    {k}: {v}" for k, v in info.config.items()), 0)
        self.w.add_text("tags", json.dumps(info.tags), 0)

    def log(self, row):
        step = row["step"]
        for k, v in scalars(row).items():
            if k != "step":
                self.w.add_scalar(k, v, step)

    def finish(self, summary):
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in
                   {**self.info.tags, **self.info.factors}.items()}
        final = {f"summary/{k}": v for k, v in scalars(summary or {}).items()}
        self.w.add_hparams(hparams, final or {"summary/crashed": 1.0}, run_name=".")
        self.w.close()


class Wandb(Tracker):
    name = "wandb"

    def __init__(self, info):
        super().__init__(info)
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.environ.setdefault("WANDB_SILENT", "true")  # no console output of its own beside normbench's
        tags = [info.recipe, info.run_id] + [f"{k}={v}" for k, v in info.factors.items()]
        self.run = wandb.init(mode=mode, dir=str(info.run_dir), project=os.environ.get("WANDB_PROJECT", "normbench"),
                              group=info.recipe, name=f"{info.run_id} ({info.label()})", id=info.run_id,
                              tags=[t[:64] for t in tags], config={**info.config, **info.tags},
                              resume="allow" if mode == "online" else None,  # a resumed run's id exists online
                              settings=wandb.Settings(console="off", disable_git=True, save_code=False,
                                                      x_disable_stats=True, silent=True))

    def log(self, row):
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"])

    def finish(self, summary):
        self.run.summary.update(scalars(summary or {}))
        self.run.finish(exit_code=0 if summary is not None else 1)


class Mlflow(Tracker):
    """Rows are sent in batches (every FLUSH_ROWS rows or FLUSH_S seconds): a file store takes several
    milliseconds a call, as long as a tiny model's step."""
    name = "mlflow"
    FLUSH_ROWS, FLUSH_S = 100, 5.0

    def __init__(self, info):
        super().__init__(info)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no lookup of mlflow's telemetry host
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (info.results.resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.13 asks for the opt-in
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(info.recipe)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(info.recipe)
            except Exception:  # another run of the sweep created it meanwhile
                exp_id = self.client.get_experiment_by_name(info.recipe).experiment_id
        else:
            exp_id = exp.experiment_id
        for stale in self.client.search_runs([exp_id], filter_string=f"tags.run_id = '{info.run_id}' and "
                                                                      "attributes.status = 'RUNNING'"):
            self.client.set_terminated(stale.info.run_id, "KILLED")  # an interrupted attempt: this one replaces it
        tags = {"recipe": info.recipe, "run_id": info.run_id, **{f"factor.{k}": str(v) for k, v in info.factors.items()},
                **{k: str(v) for k, v in info.tags.items()}}
        self.run_id = self.client.create_run(exp_id, run_name=f"{info.run_id} ({info.label()})", tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in info.config.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.pending, self.last = [], time.monotonic()

    def log(self, row):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.pending += [Metric(k, v, ts, row["step"]) for k, v in scalars(row).items() if k != "step"]
        if len(self.pending) >= self.FLUSH_ROWS or time.monotonic() - self.last > self.FLUSH_S:
            self.flush()

    def flush(self):
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending, self.last = [], time.monotonic()

    def finish(self, summary):
        from mlflow.entities import Metric

        ts, step = int(time.time() * 1000), int((summary or {}).get("steps_done") or 0)
        self.pending += [Metric(f"summary.{k}", v, ts, step) for k, v in scalars(summary or {}).items()]
        self.flush()
        self.client.set_terminated(self.run_id, "FINISHED" if summary is not None else "FAILED")


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoard, Wandb, Mlflow)}


class Guarded:
    """A tracker whose every failure is one warning, after which it is dropped: never the run's loss."""

    def __init__(self, name: str, make):
        self.name, self.t = name, None
        self._call(make)

    def _call(self, fn, *args):
        if fn is None:
            return
        try:
            out = fn(*args)
            if self.t is None and isinstance(out, Tracker):
                self.t = out
        except Exception as e:  # noqa: BLE001 - a dashboard never takes a run down
            text = " ".join(str(e).split())[:300]
            print(f"warning: --log {self.name}: {type(e).__name__}: {text}; this run goes on without it",
                  file=sys.stderr, flush=True)
            self.t = None

    def log(self, row):
        if self.t is not None:
            self._call(self.t.log, row)

    def finish(self, summary):
        if self.t is not None:
            self._call(self.t.finish, summary)


def make_trackers(spec: LogSpec | None, run_dir: Path, cfg_dict: dict) -> list[Guarded]:
    """A worker's trackers for one run (none without a spec)."""
    if not spec or not spec.to:
        return []
    from .dotted import get_dotted as get

    flat = flatten(cfg_dict)
    info = RunInfo(spec.recipe, Path(run_dir).name, {k: get(cfg_dict, k) for k in spec.factors}, flat,
                   Path(run_dir), Path(spec.results),
                   tags={"recipe": spec.recipe, "run_id": Path(run_dir).name})
    return [Guarded(name, lambda name=name: TRACKERS[name](info)) for name in spec.to]
