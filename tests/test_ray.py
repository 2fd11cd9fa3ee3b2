"""The Ray executor on a real local Ray instance: the same results as the local executor, crashes,
a killed worker (recorded or retried), Ctrl-C and resume, an unreachable cluster."""
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import normbench
from normbench.sweep import store
from normbench.recipe import load_recipe
from normbench.sweep.execute import execute
from normbench.sweep.plan import make_plan
from conftest import ALLOC_ERROR, TOO_BIG_D_FF, tiny


def write_recipe(tmp_path, recipe):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


class Reporter:
    """A reporter that records what happened and can act on it (kill a worker, press Ctrl-C)."""

    def __init__(self, on_started=None, on_finished=None):
        self.started_ids, self.finished_ids = [], []
        self.on_started, self.on_finished = on_started, on_finished

    def begin(self, *a): ...
    def progress(self, *a): ...
    def end(self, *a): ...

    def started(self, spec):
        self.started_ids.append(spec.run_id)
        if self.on_started:
            self.on_started(spec)

    def finished(self, spec, status, run_dir):
        self.finished_ids.append((spec.run_id, status))
        if self.on_finished:
            self.on_finished(spec, status)


def test_a_ray_sweep_gives_the_local_executors_results_in_the_same_layout(tmp_path, ray_instance):
    recipe = {"name": "s", "base": tiny(), "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"]}}}
    p = write_recipe(tmp_path, recipe)
    local = normbench.run_recipe(p, out=tmp_path / "local", threads=1)
    remote = normbench.run_recipe(p, out=tmp_path / "ray", threads=1, executor="ray")
    assert list(local["run_id"]) == list(remote["run_id"]) and set(remote["status"]) == {"completed"}
    # the same thread count on the same CPU: bit-identical training
    assert list(local["final_val_loss"]) == list(remote["final_val_loss"])
    for rid in local["run_id"]:
        a, b = tmp_path / "local" / "s" / rid, tmp_path / "ray" / "s" / rid
        assert sorted(x.name for x in a.iterdir()) == sorted(x.name for x in b.iterdir())
        assert losses(a) == losses(b) and len(losses(b)) == 12
        assert json.loads((b / "summary.json").read_text())["threads"] == 1
    assert (tmp_path / "ray" / "s" / "index.csv").exists()
    # the start line says what the cluster runs at once (2 CPUs here), not one per task
    from normbench.sweep.execute import execute as run_plan

    wide = dict(recipe, name="w", sweep={"grid": {"model.norm": ["layernorm", "rmsnorm", "dyt", "derf"]}})
    outcome = run_plan(make_plan(load_recipe(write_recipe(tmp_path, wide)), tmp_path / "ray"), executor="ray")
    assert outcome.jobs == 2
    # completed runs are skipped before anything is submitted
    again = Reporter()
    execute(make_plan(load_recipe(p), tmp_path / "ray"), executor="ray", reporter=again)
    assert again.started_ids == []


def test_a_run_that_raises_on_a_worker_is_a_crashed_run_with_its_traceback(tmp_path, ray_instance):
    recipe = {"name": "c", "base": tiny(train={"steps": 40, "lr": 3e-3, "eval_every": 40}),
              "sweep": {"grid": {"model.d_ff": [64, TOO_BIG_D_FF]}}}
    df = normbench.run_recipe(write_recipe(tmp_path, recipe), out=tmp_path / "res", executor="ray")
    st = df.set_index("model.d_ff")["status"]
    assert st[64] == "completed" and st[TOO_BIG_D_FF] == "crashed"
    (crashed,) = [d for d in (tmp_path / "res" / "c").iterdir() if store.status(d) == "crashed"]
    text = (crashed / "error.txt").read_text()
    assert "Traceback" in text and ALLOC_ERROR in text


def kill_worker_once(killed):
    def on_started(spec):
        if not killed:
            pid = pid_of_newest_run()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return on_started


def pid_of_newest_run():
    """The worker process training a run: the Ray worker whose task is _train_task."""
    import time

    for _ in range(100):  # a loaded machine may show the worker's new title a moment late
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        pids = [int(l.split()[0]) for l in out.splitlines() if "ray::_train_task" in l]
        if pids:
            return pids[-1]
        time.sleep(0.1)
    raise AssertionError(f"no ray::_train_task process:\n{out}")


@pytest.mark.parametrize("retries", [0, 1])
def test_a_killed_worker_is_a_crashed_run_or_is_retried(tmp_path, ray_instance, retries):
    recipe = {"name": "k", "base": tiny(train={"steps": 200, "eval_every": 200})}
    p = write_recipe(tmp_path, recipe)
    killed = []
    rep = Reporter(on_started=kill_worker_once(killed))
    outcome = execute(make_plan(load_recipe(p), tmp_path / "res"), executor="ray", reporter=rep,
                      executor_options={"retries": retries})
    assert killed
    (run_dir,) = [d for d in (tmp_path / "res" / "k").iterdir() if d.is_dir()]
    if retries:
        assert outcome.exit_code == 0 and store.status(run_dir) == "completed"
        assert len(losses(run_dir)) == 200  # the retry trained from the start, in full
    else:
        assert outcome.exit_code == 1 and store.status(run_dir) == "crashed"
        assert "worker running this run died" in (run_dir / "error.txt").read_text()
        assert not (run_dir / "summary.json").exists()


def test_ctrl_c_cancels_the_ray_sweep_and_the_next_run_redoes_only_what_is_left(tmp_path, ray_instance):
    recipe = {"name": "i", "base": tiny(), "sweep": {"seeds": 4}}
    p = write_recipe(tmp_path, recipe)

    def interrupt(spec, status):
        raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    first = Reporter(on_finished=interrupt)
    outcome = execute(make_plan(load_recipe(p), tmp_path / "res"), executor="ray", jobs=1, reporter=first)
    assert outcome.interrupted and outcome.exit_code == 130
    done = {d.name: (d / "summary.json").stat().st_mtime_ns for d in (tmp_path / "res" / "i").iterdir()
            if (d / "summary.json").exists()}
    assert len(done) == 1
    second = Reporter()
    execute(make_plan(load_recipe(p), tmp_path / "res"), executor="ray", reporter=second)
    assert len(second.started_ids) == 3 and not set(second.started_ids) & set(done)
    for rid, mtime in done.items():
        assert (tmp_path / "res" / "i" / rid / "summary.json").stat().st_mtime_ns == mtime
    assert (pd.read_csv(tmp_path / "res" / "i" / "index.csv")["status"] == "completed").all()


def test_an_unreachable_cluster_is_one_line_exit_2_and_writes_nothing(tmp_path):
    p = write_recipe(tmp_path, {"name": "u", "base": tiny()})
    res = subprocess.run([sys.executable, "-m", "normbench", "run", str(p), "--out", str(tmp_path / "res"),
                          "--executor", "ray", "--address", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "--address" in res.stderr and "cannot reach" in res.stderr
    assert not list((tmp_path / "res").rglob("config.yaml"))


def test_ray_options_are_refused_with_the_local_executor(tmp_path):
    from typer.testing import CliRunner

    from normbench.cli.app import app

    p = write_recipe(tmp_path, {"name": "o", "base": tiny()})
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "res"), "--retries", "2"])
    assert res.exit_code == 2 and "--retries applies only to --executor ray" in res.output


def test_a_plugin_norm_reaches_the_ray_workers_without_a_shared_file(tmp_path, ray_instance):
    """The plugin's text travels with the task: the worker never reads the file (it is deleted here
    once the driver has loaded it), as on a cluster whose nodes do not share the driver's disk."""
    plugin = tmp_path / "quarter.py"
    plugin.write_text("import torch\nimport normbench\n\n"
                      "class Quarter(torch.nn.Module):\n"
                      "    def forward(self, x, mask=None):\n"
                      "        return 0.25 * x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()\n\n"
                      "normbench.register_norm('quarternorm_ray', lambda d: Quarter())\n")
    normbench.load_plugin(plugin)
    sha = __import__("normbench.registry", fromlist=["plugin_of"]).plugin_of("quarternorm_ray").sha256
    plugin.unlink()
    recipe = {"name": "pr", "base": tiny(model={"norm": "quarternorm_ray"}, train={"steps": 8})}
    df = normbench.run_recipe(write_recipe(tmp_path, recipe), out=tmp_path / "res", executor="ray")
    assert (df["status"] == "completed").all(), df.get("error")
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "res" / "pr").glob("*/summary.json")]
    assert summary["plugin"]["sha256"] == sha
