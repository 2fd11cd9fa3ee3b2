"""Long runs: checkpoints with exact resume (a real kill -9, local and on Ray), the final weights,
``normbench sample``, and the live trackers read back with each library's own reader."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny
from normbench.cli import app
from normbench.config import from_dict
from normbench.sweep import store

TIMING = {"wall_s", "started_at", "ended_at", "tokens_per_s", "peak_mem_mb", "resumed_from"}
RUNNER = CliRunner()


def write_recipe(tmp_path, recipe, name="r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe))
    return p


def normbench(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "normbench", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)


def pid_writing(path: Path) -> int | None:
    """The process that has ``path`` open (the training child, which appends to its metrics.jsonl)."""
    target = str(path.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same training: metrics.jsonl equal line for line, the summaries equal
    in every key but the timings (and resumed_from)."""
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert {k: v for k, v in sa.items() if k not in TIMING} == {k: v for k, v in sb.items() if k not in TIMING}


LONG = tiny(model={"dropout": 0.1}, train={"steps": 400, "eval_every": 100, "checkpoint_every": 25,
                                            "measure_every": 10})


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="finds the training process through /proc")
def test_a_run_killed_with_sigkill_resumes_bit_identical(tmp_path):
    """kill -9 of the training child after a checkpoint; `normbench run --retry-failed` resumes from it
    and ends with the losses and summary of a run never interrupted (same threads)."""
    p = write_recipe(tmp_path, {"name": "k", "base": LONG})
    run_id = from_dict(LONG).run_id()
    run_dir = tmp_path / "res" / "k" / run_id
    driver = normbench("run", p, "--out", tmp_path / "res", "-q", "--jobs", 1, "--threads", 1)
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and killed is None:
        if (run_dir / "checkpoint.pt").exists():
            pid = pid_writing(run_dir / "metrics.jsonl")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.05)
    out, err = driver.communicate(timeout=120)
    assert killed, f"no checkpoint appeared:\n{out}\n{err}"
    assert driver.returncode == 1 and store.status(run_dir) == "crashed"
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert 25 <= step < 400 and step % 25 == 0
    plain = normbench("run", p, "--out", tmp_path / "res", "-q", "--threads", 1)
    assert "--retry-failed resumes them from it" in plain.communicate(timeout=120)[0]  # a crashed run waits
    again = normbench("run", p, "--out", tmp_path / "res", "-q", "--threads", 1, "--retry-failed")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "1 of them resume from their checkpoint" in out
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] >= step
    assert not (run_dir / "checkpoint.pt").exists()  # a complete run keeps no checkpoint
    whole = normbench("run", p, "--out", tmp_path / "whole", "-q", "--threads", 1)
    assert whole.wait(timeout=120) == 0
    same_run(run_dir, tmp_path / "whole" / "k" / run_id)


def test_checkpoint_keys_are_not_part_of_the_run_id():
    base = from_dict(tiny()).run_id()
    assert from_dict(tiny(train={"checkpoint_every": 5, "save_final": True})).run_id() == base


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    from normbench.trainer import train

    cfg, other = from_dict(tiny(train={"checkpoint_every": 4, "steps": 8})), from_dict(tiny(train={"lr": 2e-3}))
    train(other, tmp_path, threads=1)  # leaves nothing: its checkpoint_every is 0
    (tmp_path / "metrics.jsonl").unlink()
    torch.save({"format": 1, "run_id": other.run_id(), "step": 4}, tmp_path / "checkpoint.pt")
    s = train(cfg, tmp_path, threads=1)
    assert s["resumed_from"] is None and s["steps_done"] == 8


def test_ray_checkpoints_land_in_the_drivers_folder_and_resume(tmp_path, ray_instance):
    """On Ray the run trains in a worker's temporary folder: each checkpoint is sent to the driver's
    run folder as it is written; the worker is killed; the rerun ships the checkpoint back and resumes."""
    from normbench.recipe import load_recipe
    from normbench.sweep.execute import execute
    from normbench.sweep.plan import make_plan
    from test_ray import Reporter, pid_of_newest_run

    p = write_recipe(tmp_path, {"name": "k", "base": LONG})
    run_dir = tmp_path / "res" / "k" / from_dict(LONG).run_id()
    killed = []

    class Killer(Reporter):
        def progress(self, spec, step, loss, tps):
            if not killed and (run_dir / "checkpoint.pt").exists():
                killed.append(pid_of_newest_run())
                os.kill(killed[0], signal.SIGKILL)

    outcome = execute(make_plan(load_recipe(p), tmp_path / "res"), executor="ray", reporter=Killer())
    assert killed and outcome.exit_code == 1 and store.status(run_dir) == "crashed"
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    outcome = execute(make_plan(load_recipe(p), tmp_path / "res", retry_failed=True), executor="ray",
                      reporter=Reporter(), log_to=("tensorboard",))
    assert outcome.exit_code == 0
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] >= step
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # the worker's logs came back too
    from normbench.trainer import train

    whole = tmp_path / "whole"
    whole.mkdir()
    store.write_summary(whole, train(from_dict(LONG), whole, threads=1))
    same_run(run_dir, whole)


# --- final weights and sampling ---

def trained(tmp_path, name="s", **sections) -> Path:
    base = tiny(train={"steps": 30, "eval_every": 30, "save_final": True}, **sections)
    p = write_recipe(tmp_path, {"name": name, "base": base}, f"{name}.yaml")
    res = RUNNER.invoke(app, ["run", str(p), "--out", str(tmp_path / "res"), "-q", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return tmp_path / "res" / name / from_dict(base).run_id()


def sample(*args):
    res = RUNNER.invoke(app, ["sample", *map(str, args)])
    return res.exit_code, res.output


def test_sample_a_character_run_reproducibly(tmp_path):
    run = trained(tmp_path)
    assert (run / "model.pt").exists()
    code, a = sample(run, "--prompt", "def ", "--tokens", 40, "--seed", 3)
    assert code == 0 and a.splitlines()[1].startswith("def ") and len(a.splitlines()[1]) >= 40
    assert sample(run, "--prompt", "def ", "--tokens", 40, "--seed", 3)[1] == a
    assert sample(run, "--prompt", "def ", "--tokens", 40, "--seed", 4)[1] != a


def test_greedy_sampling_is_the_models_argmax(tmp_path):
    from normbench.sampling import Codec, load, sample as generate

    run = trained(tmp_path)
    cfg, model, codec, _ = load(run)
    ids = Codec(codec).encode("import ")
    with torch.no_grad():
        first = model(torch.tensor([ids]))[0, -1]
    first[0] = -float("inf")
    out = generate(run, "import ", tokens=1, temperature=0.0)
    assert out["ids"] == [int(first.argmax())]


def test_sample_refuses_a_run_without_weights(tmp_path):
    base = tiny()
    p = write_recipe(tmp_path, {"name": "n", "base": base})
    assert RUNNER.invoke(app, ["run", str(p), "--out", str(tmp_path / "res"), "-q"]).exit_code == 0
    code, out = sample(tmp_path / "res" / "n" / from_dict(base).run_id())
    assert code == 2 and "no weights saved" in out and len(out.strip().splitlines()) == 1


def test_sample_a_bpe_run(tmp_path):
    pytest.importorskip("tokenizers")
    run = trained(tmp_path, data={"tokenizer": "bpe", "vocab_size": 300, "max_chars": 20000, "seq_len": 16})
    code, out = sample(run, "--prompt", "class ", "--tokens", 20)
    assert code == 0 and out.splitlines()[1].startswith("class ")


def test_sample_a_token_file_run_decodes_with_meta_itos(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, 4, 5000).astype(np.uint16).tofile(folder / f"{split}.bin")
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 4, "itos": {0: "a", 1: "b", 2: "c", 3: "d"},
                                                    "stoi": {"a": 0, "b": 1, "c": 2, "d": 3}}))
    run = trained(tmp_path, data={"task": "tokens", "path": str(folder)})
    code, out = sample(run, "--prompt", "abc", "--tokens", 12)
    assert code == 0 and set(out.splitlines()[1]) <= set("abcd") and out.splitlines()[1].startswith("abc")


def test_sample_an_encoder_and_a_synthetic_run(tmp_path):
    run = trained(tmp_path, "m", data={"task": "mlm"})
    code, out = sample(run, "--prompt", "def", "--tokens", 10)
    assert code == 0 and "<mask>" not in out
    run = trained(tmp_path, "c", data={"task": "copy", "symbols": 6, "seq_len": 12})
    code, out = sample(run, "--prompt", "s1 s2 s3 <sep>", "--tokens", 3)
    assert code == 0 and all(t.startswith("s") or t == "<sep>" for t in out.splitlines()[1].split())


# --- trackers ---

SWEEP = {"name": "t", "base": tiny(train={"steps": 12, "eval_every": 6}),
         "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"]}}}


def test_every_tracker_at_once_read_back_with_its_own_reader(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    p = write_recipe(tmp_path, SWEEP)
    run = normbench("run", p, "--out", tmp_path / "res", "-q", "--log", "tensorboard", "--log", "wandb",
                    "--log", "mlflow", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                            "WANDB_CACHE_DIR": str(tmp_path / "wbcache")})
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "warning: --log" not in err and "wandb:" not in err  # no tracker failed, W&B kept quiet
    runs = {json.loads((d / "summary.json").read_text())["run_id"]: d for d in (tmp_path / "res" / "t").iterdir()
            if (d / "summary.json").exists()}
    assert len(runs) == 2
    for run_id, d in runs.items():
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        norm = yaml.safe_load((d / "config.yaml").read_text())["base"]["model"]["norm"]
        summary = json.loads((d / "summary.json").read_text())
        check_tensorboard(d, losses, norm, summary)
        check_wandb(d, losses, norm, summary, run_id)
        check_mlflow(tmp_path / "res" / "mlruns", run_id, losses, norm, summary)


def check_tensorboard(d, losses, norm, summary):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(d / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    got = [(e.step, e.value) for e in ea.Scalars("loss")]
    assert [s for s, _ in got] == [s for s, _ in losses]
    assert [v for _, v in got] == pytest.approx([v for _, v in losses], rel=1e-6)  # stored as float32
    hp = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(hp).session_start_info.hparams
    assert hparams["model.norm"].string_value == norm and hparams["recipe"].string_value == "t"
    final = ea.Scalars("summary/final_val_loss")
    assert final[0].value == pytest.approx(summary["final_val_loss"], rel=1e-6)


def check_wandb(d, losses, norm, summary, run_id):
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal.datastore import DataStore

    (path,) = d.glob("wandb/offline-run-*/run-*.wandb")
    ds = DataStore()
    ds.open_for_scan(str(path))
    history, config, final, run = [], {}, {}, None
    while (data := ds.scan_data()) is not None:
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        items = (lambda kvs: {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in kvs})
        if kind == "run":
            run = rec.run
            config.update(items(rec.run.config.update))
        elif kind == "history":
            history.append(items(rec.history.item))
        elif kind == "summary":
            final.update(items(rec.summary.update))
    assert run.run_group == "t" and run.run_id == run_id and f"model.norm={norm}" in run.tags
    assert config["model.norm"] == norm
    got = [(h["_step"], h["loss"]) for h in history if "loss" in h]
    assert [s for s, _ in got] == [s for s, _ in losses]
    assert [v for _, v in got] == pytest.approx([v for _, v in losses], rel=1e-12)
    assert final["final_val_loss"] == pytest.approx(summary["final_val_loss"], rel=1e-12)


def check_mlflow(store_dir, run_id, losses, norm, summary):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_dir.resolve().as_uri())
    exp = client.get_experiment_by_name("t")
    (r,) = client.search_runs([exp.experiment_id], filter_string=f"tags.run_id = '{run_id}'")
    assert r.info.status == "FINISHED" and r.data.tags["factor.model.norm"] == norm
    assert r.data.params["model.norm"] == norm
    hist = sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(s, pytest.approx(v, rel=1e-12)) for s, v in losses]
    assert r.data.metrics["summary.final_val_loss"] == pytest.approx(summary["final_val_loss"], rel=1e-12)


def test_a_failing_tracker_warns_once_and_never_loses_the_run(tmp_path):
    pytest.importorskip("mlflow")
    p = write_recipe(tmp_path, {"name": "f", "base": tiny()})
    run = normbench("run", p, "--out", tmp_path / "res", "-q", "--log", "mlflow",
                    env={"MLFLOW_TRACKING_URI": "bogus-scheme://nowhere"})
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0
    lines = [line for line in err.splitlines() if "--log mlflow" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: --log mlflow:")
    (d,) = [d for d in (tmp_path / "res" / "f").iterdir() if d.is_dir()]
    assert store.status(d) == "completed"


def test_an_unknown_tracker_is_one_line_exit_2(tmp_path):
    p = write_recipe(tmp_path, {"name": "u", "base": tiny()})
    res = RUNNER.invoke(app, ["run", str(p), "--out", str(tmp_path / "res"), "--log", "neptune"])
    assert res.exit_code == 2 and "--log" in res.output and "tensorboard, wandb, mlflow" in res.output
    assert not (tmp_path / "res" / "u").exists() or not any((tmp_path / "res" / "u").glob("*/summary.json"))


def test_sample_falls_back_to_the_last_checkpoint(tmp_path):
    """A run stopped after a checkpoint (no model.pt yet) is sampled from its checkpoint."""
    from normbench.sampling import sample as generate
    from normbench.trainer import train

    class Stop(Exception):
        pass

    def stop(path):
        raise Stop

    with pytest.raises(Stop):
        train(from_dict(tiny(train={"checkpoint_every": 4})), tmp_path, threads=1, on_checkpoint=stop)
    out = generate(tmp_path, "de", tokens=5, seed=1)
    assert out["from"] == "checkpoint.pt" and out["step"] == 4 and len(out["ids"]) == 5


def test_execution_keys_never_split_a_comparison():
    """Runs made before the checkpoint keys existed (no column) and after (0, False) are one group."""
    import pandas as pd

    from normbench.analysis.compare import varied_factors

    runs = pd.DataFrame({"model.norm": ["layernorm", "rmsnorm", "layernorm", "rmsnorm"],
                         "train.checkpoint_every": [0, 0, None, None], "train.save_final": [False, False, None, None],
                         "train.compile": [False, True, False, True]})
    assert varied_factors(runs) == ["model.norm"]


def test_a_resumed_run_logs_its_whole_history(tmp_path):
    """The rows before the checkpoint travel in it and are logged again on resume: the dashboard
    holds every step once, although the run folder's tracker files were cleared (store.prepare)."""
    pytest.importorskip("tensorboard")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from normbench.trackers import LogSpec, make_trackers
    from normbench.trainer import train

    class Stop(Exception):
        pass

    def stop(path):
        raise Stop

    cfg = from_dict(tiny(train={"checkpoint_every": 4}))
    with pytest.raises(Stop):
        train(cfg, tmp_path, threads=1, on_checkpoint=stop, trackers=make_trackers(
            LogSpec(("tensorboard",), "r"), tmp_path, cfg.to_dict()))
    shutil.rmtree(tmp_path / "tensorboard")  # as a rerun's store.prepare does
    trackers = make_trackers(LogSpec(("tensorboard",), "r"), tmp_path, cfg.to_dict())
    summary = train(cfg, tmp_path, threads=1, trackers=trackers)
    for t in trackers:
        t.finish(summary)
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    assert summary["resumed_from"] == 4
    assert [e.step for e in ea.Scalars("loss")] == list(range(1, 13))


def test_sample_refuses_an_unreadable_weights_file_in_one_line(tmp_path):
    (tmp_path / "model.pt").write_text("not a checkpoint")
    code, out = sample(tmp_path)
    assert code == 2 and "cannot read model.pt" in out and "Traceback" not in out
