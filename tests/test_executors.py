"""One place per executor: a class that declares its options and parallelism, and a line in
sweep/executors.py's table; sweep and the CLI need nothing else."""
import tempfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny
from normbench.sweep import executors
from normbench.sweep.executor import Event, Executor, Option

runner = CliRunner()


class InProcessExecutor(Executor):
    """A real executor, not in the table: trains each run in this process, one after another, into a
    temporary folder, and returns its record for the driver to write (as Ray's workers do)."""
    name = "inprocess"
    OPTIONS = (Option("label", "none", str, "a word echoed into nothing; an option to check"),
               Option("max_runs", 100, int, "refuse more runs than this", min=1))
    seen: list = []

    def __init__(self, jobs, threads, plugins=None, log=None, label="none", max_runs=100):
        self.jobs, self.threads, self.label, self.max_runs = jobs, threads, label, max_runs
        self.plugins, self.log = plugins, log
        InProcessExecutor.seen.append({"label": label, "max_runs": max_runs, "jobs": jobs})

    def run(self, tasks, stop=lambda: False):
        from normbench.sweep.executor import train_in_worker

        for i, (_, cfg_dict) in enumerate(tasks[:self.max_runs]):
            if stop():
                break
            yield Event("start", i)
            with tempfile.TemporaryDirectory() as tmp:
                summary = train_in_worker(tmp, cfg_dict, 1, None, self.plugins, self.log)
                metrics = (Path(tmp) / "metrics.jsonl").read_text()
            yield Event("end", i, record={"summary": summary, "metrics": metrics, "error": None})


@pytest.fixture
def inprocess(monkeypatch):
    monkeypatch.setitem(executors.EXECUTORS, "inprocess", InProcessExecutor)
    InProcessExecutor.seen.clear()
    return InProcessExecutor


def recipe(tmp_path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "ex", "base": tiny(train={"steps": 4, "eval_every": 4}),
                                 "sweep": {"seeds": [0, 1]}}))
    return p


def test_a_new_executor_is_one_table_line(tmp_path, inprocess):
    from normbench.cli import app

    res = runner.invoke(app, ["run", str(recipe(tmp_path)), "--out", str(tmp_path / "res"), "--executor",
                              "inprocess", "--executor-option", "label=hello", "--executor-option", "max_runs=5",
                              "-q"])
    assert res.exit_code == 0, res.output
    assert inprocess.seen == [{"label": "hello", "max_runs": 5, "jobs": 2}]  # coerced to the declared types
    runs = sorted(p for p in (tmp_path / "res" / "ex").iterdir() if p.is_dir())
    assert len(runs) == 2 and all((p / "summary.json").exists() and (p / "metrics.jsonl").read_text() for p in runs)
    # the same runs through the Python API: resumed, nothing trains again
    import normbench

    df = normbench.run_recipe(recipe(tmp_path), out=tmp_path / "res", executor="inprocess",
                              executor_options={"label": "again"})
    assert len(df) == 2 and (df["status"] == "completed").all()


@pytest.mark.parametrize("args, text", [
    (["--executor", "inprocess", "--executor-option", "max_runs=0"], "--executor-option max_runs: expected >= 1"),
    (["--executor", "inprocess", "--executor-option", "max_runs=many"], "expected int, got 'many'"),
    (["--executor", "inprocess", "--executor-option", "bogus=1"], "unknown option 'bogus' of --executor inprocess"),
    (["--executor", "inprocess", "--executor-option", "label"], "--executor-option: expected KEY=VALUE"),
    (["--executor", "inprocess", "--retries", "2"], "--retries applies only to --executor ray"),
    (["--executor", "local", "--executor-option", "label=x"], "applies only to --executor inprocess"),
    (["--executor", "nowhere"], "--executor: expected local or ray or inprocess, got 'nowhere'"),
])
def test_bad_executor_options_are_one_line(tmp_path, inprocess, args, text):
    from normbench.cli import app

    res = runner.invoke(app, ["run", str(recipe(tmp_path)), "--out", str(tmp_path / "res"), *args])
    assert res.exit_code == 2 and text in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "res").exists()  # refused before anything was written


def test_each_executor_declares_its_options_and_parallelism():
    from normbench.sweep.local import LocalExecutor
    from normbench.sweep.ray_executor import RayExecutor

    assert executors.EXECUTORS == {"local": LocalExecutor, "ray": RayExecutor}
    assert [o.name for o in RayExecutor.OPTIONS] == ["address", "cpus_per_run", "gpus_per_run", "retries"]
    assert executors.executor_options("ray", {"cpus_per_run": "2"})["cpus_per_run"] == 2.0
    assert RayExecutor.parallelism(10, 3, None, {"cpu"}, {"cpus_per_run": 2.0}) == (3, 2)
    assert LocalExecutor.parallelism(1, None, None, {"cpu"}, {}) == (1, 1)
