"""Sweeps: resume after kill -9, crashes, parallelism, locking, Ctrl-C, SIGTERM, file permissions."""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import normbench
from normbench.sweep import store
from normbench.cli.app import app
from normbench.recipe import load_recipe
from conftest import ALLOC_ERROR, TOO_BIG_D_FF, tiny

runner = CliRunner()


def write_recipe(tmp_path, recipe):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def summaries(recipe_dir):
    return {d.name: json.loads((d / "summary.json").read_text())
            for d in recipe_dir.iterdir() if (d / "summary.json").exists()}


def test_killed_sweep_resumes_without_redoing_completed_runs(tmp_path):
    recipe = {"name": "k", "base": tiny(train={"steps": 80}), "sweep": {"seeds": 4}}
    p, out = write_recipe(tmp_path, recipe), tmp_path / "res"
    cmd = [sys.executable, "-m", "normbench", "run", str(p), "--out", str(out), "--jobs", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "k").exists() and summaries(out / "k")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the orphaned run notices its parent is gone and exits
    before = summaries(out / "k")
    assert 1 <= len(before) < 4
    stamps = {rid: (out / "k" / rid / "summary.json").stat().st_mtime_ns for rid in before}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{len(before)} already done, {4 - len(before)} to run" in res.stdout
    after = summaries(out / "k")
    assert len(after) == 4
    assert all((out / "k" / rid / "summary.json").stat().st_mtime_ns == stamps[rid] for rid in before)
    df = pd.read_csv(out / "k" / "index.csv")
    assert len(df) == 4 and df["run_id"].is_unique and sorted(df["seed"]) == [0, 1, 2, 3]


def test_crash_is_recorded_and_the_sweep_goes_on(tmp_path):
    recipe = {"name": "c", "base": tiny(train={"steps": 40, "lr": 3e-3, "eval_every": 40}),
              "sweep": {"grid": {"model.d_ff": [64, TOO_BIG_D_FF]}}}
    p, out = write_recipe(tmp_path, recipe), tmp_path / "res"
    res = runner.invoke(app, ["run", str(p), "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output
    df = pd.read_csv(out / "c" / "index.csv").set_index("model.d_ff")
    assert df.loc[64, "status"] == "completed" and df.loc[TOO_BIG_D_FF, "status"] == "crashed"
    (crashed,) = [d for d in (out / "c").iterdir() if store.status(d) == "crashed"]
    first = (crashed / "error.txt").read_text()
    assert ALLOC_ERROR in first and "Traceback" in first
    # resume does not retry crashes; --retry-failed does
    assert "0 to run" in runner.invoke(app, ["run", str(p), "--out", str(out), "-q"]).output
    (crashed / "error.txt").write_text("the earlier attempt\n")
    res = runner.invoke(app, ["run", str(p), "--out", str(out), "-q", "--retry-failed"])
    assert res.exit_code == 1 and "1 to run" in res.output
    assert ALLOC_ERROR in (crashed / "error.txt").read_text()  # rerun, and crashed again
    assert store.status(out / "c" / df.loc[64, "run_id"]) == "completed"  # the completed run was kept


def test_fail_fast_stops_at_the_first_crash(tmp_path):
    recipe = {"name": "f", "base": tiny(model={"d_ff": TOO_BIG_D_FF}), "sweep": {"seeds": 3}}
    res = runner.invoke(app, ["run", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "res"),
                              "-q", "--jobs", "1", "--fail-fast"])
    assert res.exit_code == 1
    statuses = [store.status(d) for d in (tmp_path / "res" / "f").iterdir() if d.is_dir()]
    assert statuses.count("crashed") == 1 and len(statuses) == 3  # the other two never ran
    assert statuses.count("incomplete") == 2


def test_two_jobs_really_run_at_once(tmp_path):
    df = normbench.run_recipe({"name": "p", "base": tiny(train={"steps": 60}), "sweep": {"seeds": 2}},
                              out=tmp_path, jobs=2)
    assert len(df) == 2 and (df["status"] == "completed").all() and (df["threads"] == 1).all()
    (a, b) = sorted(summaries(tmp_path / "p").values(), key=lambda s: s["started_at"])
    assert b["started_at"] < a["ended_at"]  # the second started before the first ended


def test_python_api_overrides_and_load_results(tmp_path):
    recipe = {"name": "api", "base": tiny(), "sweep": {"grid": {"model.norm": ["rmsnorm", "dyt"]}}}
    df = normbench.run_recipe(recipe, overrides={"train.steps": 6}, out=tmp_path, jobs=2)
    assert list(df["model.norm"]) == ["rmsnorm", "dyt"] and (df["train.steps"] == 6).all()
    loaded = normbench.load_results(tmp_path / "api")
    assert set(loaded["run_id"]) == set(df["run_id"])
    assert set(normbench.load_results(tmp_path)["run_id"]) == set(df["run_id"])


def test_a_script_without_a_main_guard_can_run_a_sweep(tmp_path):
    """Runs start in fresh processes (forkserver), which normally re-import the calling script: an
    unguarded run_recipe() at its top level would start again in every child and crash each run."""
    recipe = write_recipe(tmp_path, {"name": "g", "base": tiny(), "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"]}}})
    script = tmp_path / "script.py"
    script.write_text("import normbench\n"
                      f"df = normbench.run_recipe({str(recipe)!r}, out={str(tmp_path / 'res')!r}, jobs=2, threads=1)\n"
                      "print(sorted(df['status']))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['completed', 'completed']"


def test_second_process_is_refused_while_the_folder_is_locked(tmp_path):
    p = write_recipe(tmp_path, {"name": "l", "base": tiny()})
    with store.Lock(tmp_path / "res" / "l"):
        res = runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "res")])
    assert res.exit_code == 2 and "in use by another normbench process" in res.stderr
    assert runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "res"), "-q"]).exit_code == 0


def test_ctrl_c_stops_cleanly(tmp_path):
    p = write_recipe(tmp_path, {"name": "i", "base": tiny(train={"steps": 5000})})
    # SIGINT at its default in the child, as in a terminal: a test run started in the background
    # of a non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "normbench", "run", str(p), "--out", str(tmp_path / "res"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "res" / "i").glob("*/metrics.jsonl")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in out + err and "interrupted" in out
    (run_dir,) = [d for d in (tmp_path / "res" / "i").iterdir() if d.is_dir()]
    assert store.status(run_dir) == "incomplete"  # never marked complete


def test_sigterm_stops_like_ctrl_c_and_the_next_run_resumes(tmp_path):
    """A scheduler or `timeout` sends SIGTERM: one line, exit 143, no traceback, no leaked semaphore,
    the completed run kept and the interrupted one redone by the next run."""
    p = write_recipe(tmp_path, {"name": "t", "base": tiny(),
                                "sweep": {"zip": {"train.steps": [12, 5000], "seed": [0, 1]}}})
    out = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "normbench", "run", str(p), "--out", str(out), "-q", "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and len(list((out / "t").glob("*/metrics.jsonl"))) < 2:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stdout + stderr and "leaked" not in stderr
    assert "terminated (SIGTERM)" in stdout + stderr
    statuses = sorted(store.status(d) for d in (out / "t").iterdir() if d.is_dir())
    assert statuses == ["completed", "incomplete"]
    res = runner.invoke(app, ["run", str(p), "--out", str(out), "--dry-run"])
    assert "completed (kept)" in res.output and "incomplete (to run)" in res.output


def test_result_files_get_the_permissions_a_plain_write_would(tmp_path):
    old = os.umask(0o022)
    try:
        normbench.run_recipe({"name": "p", "base": tiny(train={"steps": 4})}, out=tmp_path, jobs=1, threads=1)
        (run_dir,) = [d for d in (tmp_path / "p").iterdir() if d.is_dir()]
        for path in (run_dir / "summary.json", run_dir / "config.yaml", tmp_path / "p" / "index.csv"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.umask(0o027)
        store.write_atomic(tmp_path / "x.md", "x")
        assert stat.S_IMODE((tmp_path / "x.md").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_lone_cpu_run_never_takes_the_spare_cores():
    """Issue 21: the last run of a sweep got cores // jobs threads and collapsed beside a busy
    process (intra-op threads busy-wait). On CPU every run gets one thread unless --threads says."""
    from normbench.sweep.executor import cpu_count, plan_parallelism

    assert plan_parallelism(1, None, None, gpu=False) == (1, 1)
    assert plan_parallelism(100, None, None, gpu=False) == (cpu_count(), 1)
    assert plan_parallelism(1, None, 2, gpu=False) == (1, 2)  # asked for: given
    assert plan_parallelism(1, None, None, gpu=True)[1] == cpu_count()  # a GPU run's feeder keeps them


def test_index_rows_come_by_configuration_then_seed(tmp_path):
    import pandas as pd

    recipe = {"name": "o", "base": tiny(train={"steps": 2, "eval_every": 2}),
              "sweep": {"grid": {"train.lr": [0.01, 0.001]}, "seeds": [1, 0]}}
    normbench.run_recipe(recipe, out=tmp_path, jobs=2)
    idx = pd.read_csv(tmp_path / "o" / "index.csv")
    assert list(zip(idx["train.lr"], idx["seed"])) == [(0.001, 0), (0.001, 1), (0.01, 0), (0.01, 1)]


def test_config_records_the_recipes_git_state_and_still_reruns(tmp_path):
    """Provenance: the commit of the recipe's repository and whether its tree was dirty."""
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    recipe = repo / "g.yaml"
    recipe.write_text(yaml.safe_dump({"name": "g", "base": tiny(train={"steps": 2, "eval_every": 2})}))
    git("add", "g.yaml")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "r")
    head = git("rev-parse", "HEAD").stdout.strip()
    df = normbench.run_recipe(str(recipe), out=tmp_path / "res")
    cfg_path = tmp_path / "res" / "g" / df["run_id"][0] / "config.yaml"
    doc = yaml.safe_load(cfg_path.read_text())
    assert doc["provenance"]["git"] == {"commit": head, "dirty": False}
    assert load_recipe(cfg_path).runs[0].run_id == df["run_id"][0]  # config.yaml still reruns the run
