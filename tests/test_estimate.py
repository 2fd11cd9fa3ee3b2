"""The run-time estimate of --dry-run and validate: the schedule and the FLOPs by hand, and the
calibration on this machine."""
import pytest
import yaml
from typer.testing import CliRunner

from normbench.bench import flops_per_token
from normbench.cli.app import app
from normbench.config import from_dict
from normbench.estimate import makespan, run_seconds
from conftest import tiny


def test_makespan_takes_the_runs_in_order_on_free_workers():
    assert makespan([3, 1, 1, 1], 2) == 3  # worker A: 3; worker B: 1, 1, 1
    assert makespan([1, 1, 1, 3], 2) == 4  # A: 1, then 1 (ends at 2); B: 1, then the 3 (ends at 4)
    assert makespan([2, 2, 2], 1) == 6


def test_a_runs_seconds_are_its_training_and_evaluation_flops_over_the_rate():
    cfg = from_dict(tiny(train={"steps": 10, "eval_every": 4, "eval_tokens": 100}))
    fpt = flops_per_token(cfg, 50)
    train = fpt * cfg.train.batch_size * cfg.data.seq_len * 10
    evals = 3 * 100 * fpt / 3  # at steps 4, 8 and the end
    assert run_seconds(cfg, 50, 1e6) == pytest.approx((train + evals) / 1e6)


def test_dry_run_and_validate_print_the_estimate(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump({"name": "e", "base": tiny(), "sweep": {"seeds": 3}}))
    for args in (["run", str(p), "--dry-run", "--out", str(tmp_path)], ["validate", str(p), "--out", str(tmp_path)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0 and "estimate: 3 run(s) to do" in res.output and "model GFLOP/s" in res.output
    assert not (tmp_path / "e").exists()  # the calibration writes nothing
