"""The validation set fixed in tokens, the unigram baseline and `stalled`, the output log-partition
and BatchNorm's batch-vs-running fluctuation, each against a hand computation."""
import math

import pytest
import torch

from normbench.config import from_dict
from normbench.data import IGNORE, make_task
from normbench.evalset import DRAW, mean_loss, train_target_counts, unigram_loss, validation_set
from normbench.model import Transformer
from normbench.trainer import train


def test_the_validation_set_does_not_depend_on_the_batch_size(tiny_base):
    """Runs at batch 1 and batch 16 are scored on the same windows and the same number of tokens."""
    s1 = train(from_dict(tiny_base(train={"steps": 2, "batch_size": 1, "eval_every": 2, "eval_tokens": 300})))
    s16 = train(from_dict(tiny_base(train={"steps": 2, "batch_size": 16, "eval_every": 2, "eval_tokens": 300})))
    assert s1["eval_tokens"] == s16["eval_tokens"] >= 300
    cfg = from_dict(tiny_base(train={"eval_tokens": 300}))
    task = make_task(cfg.data, torch.device("cpu"))
    a, b = validation_set(task, 300), validation_set(task, 300)
    assert a.tokens == s1["eval_tokens"] and len(a.chunks) == math.ceil(300 / (DRAW * cfg.data.seq_len))
    assert all(torch.equal(x.x, y.x) for x, y in zip(a.chunks, b.chunks))
    # re-cut into training-sized batches, the same sequences in the same order
    cut = a.batches(5)
    assert torch.equal(torch.cat([c.x for c in cut]), torch.cat([c.x for c in a.chunks]))
    assert all(len(c.x) == 5 for c in cut[:-1])


def test_a_padded_validation_set_counts_real_targets_only(tiny_base):
    cfg = from_dict(tiny_base(data={"variable_length": True, "min_len": 4}))
    task = make_task(cfg.data, torch.device("cpu"))
    ev = validation_set(task, 500)
    assert ev.tokens == sum(int((c.y != IGNORE).sum()) for c in ev.chunks) >= 500


def test_the_loss_is_token_weighted_over_the_whole_set(tiny_base):
    cfg = from_dict(tiny_base(data={"variable_length": True, "min_len": 4}))
    task = make_task(cfg.data, torch.device("cpu"))
    torch.manual_seed(0)
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len).eval()
    batches = validation_set(task, 500).batches(7)
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y, mask in batches:
            logits = model(x, mask)
            for b in range(len(x)):
                for t in range(x.shape[1]):
                    if y[b, t] != IGNORE:
                        total -= torch.log_softmax(logits[b, t], -1)[y[b, t]].item()
                        n += 1
    assert mean_loss(model, batches, lambda: torch.autocast("cpu", enabled=False)) == pytest.approx(total / n, rel=1e-5)


def test_unigram_loss_and_stalled_against_a_hand_computation(tiny_base, tmp_path):
    cfg = from_dict(tiny_base(train={"eval_tokens": 200}))
    task = make_task(cfg.data, torch.device("cpu"))
    ev = validation_set(task, 200)
    train_ids = task.splits["train"].tolist()
    V = task.vocab_size
    counts = [1.0] * V  # add-one smoothing
    for i in train_ids:
        counts[i] += 1
    total = sum(counts)
    ys = [int(v) for c in ev.chunks for v in c.y.flatten() if v != IGNORE]
    want = -sum(math.log(counts[y] / total) for y in ys) / len(ys)
    assert unigram_loss(task, ev) == pytest.approx(want, rel=1e-9)
    assert train_target_counts(task).sum() == len(train_ids)
    s = train(from_dict(tiny_base()), tmp_path)  # 12 steps of a tiny model: not yet below the frequencies
    assert not s["diverged"] and s["unigram_loss"] < s["initial_loss"]
    assert s["stalled"] is (s["final_val_loss"] >= s["unigram_loss"] - 0.05) is True
    import json

    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and s["initial_loss"] == pytest.approx(first["loss"], rel=1e-5)


def test_symbolic_tasks_take_the_unigram_from_sampled_training_targets(tiny_base):
    cfg = from_dict(tiny_base(data={"task": "copy", "seq_len": 9, "symbols": 4}))
    task = make_task(cfg.data, torch.device("cpu"))
    counts = train_target_counts(task)
    assert counts[0] == 0 and counts[2:].sum() == counts.sum()  # answers are symbols, never padding
    # the four symbols are equally likely: the unigram loss is near ln 4
    assert unigram_loss(task, validation_set(task, 2000)) == pytest.approx(math.log(4), abs=0.05)


def test_log_z_is_the_mean_log_partition_of_the_training_batch(tiny_base):
    from normbench.probes import LogPartition

    s = train(from_dict(tiny_base(train={"steps": 3, "measure_every": 1})), measure=True)
    assert s["final_log_z"] is not None and s["max_abs_log_z"] >= abs(s["final_log_z"])
    # the summary over a hand-made trace
    rows = [(1, {"log_z": 0.5}), (2, {"log_z": -2.0}), (3, {"log_z": 1.0})]
    assert LogPartition.summary(None, rows, None) == {"max_abs_log_z": 2.0, "final_log_z": 1.0}
    # and the measurement against logsumexp by hand, on a fresh model's first batch
    cfg = from_dict(tiny_base())
    task = make_task(cfg.data, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len)
    x, y, mask = task.batch("train", 4, task.generator(cfg.seed))
    with torch.no_grad():
        logits = model(x, mask)
    by_hand = sum(math.log(sum(math.exp(v) for v in row.tolist())) for row in logits.reshape(-1, logits.shape[-1]))
    assert torch.logsumexp(logits, -1)[y != IGNORE].mean().item() == pytest.approx(by_hand / y.numel(), rel=1e-5)


@pytest.mark.parametrize("norm", ["batchnorm", "batchnorm_masked", "powernorm"])
def test_batch_statistics_fluctuation_against_a_hand_computation(norm, tiny_base):
    """Shen et al. 2020's measurement: ||mu_B - mu||/d and ||var_B - var||/d against the running
    statistics before the batch updates them (PowerNorm: its quadratic mean, no mean)."""
    from normbench.norms import make_norm

    torch.manual_seed(0)
    bn = make_norm(norm, 8, heads=2, warmup=0).train()
    for _ in range(3):
        bn(torch.randn(4, 5, 8))
    x = torch.randn(4, 5, 8) * 2 + 1
    if norm == "powernorm":
        run = bn.running_phi.clone()
    else:
        run_mean, run_var = bn.running_mean.clone(), bn.running_var.clone()
    bn.measure_stats = True
    bn(x)
    dev = bn.stat_dev
    flat = x.reshape(-1, 8)
    if norm == "powernorm":
        g = bn.group_scale(x).reshape(-1, 8)
        assert math.isnan(dev[0]) and dev[1].item() == pytest.approx(
            (g.pow(2).mean(0) - run).norm().item() / 8, rel=1e-5)
    else:
        assert dev[0].item() == pytest.approx((flat.mean(0) - run_mean).norm().item() / 8, rel=1e-5)
        assert dev[1].item() == pytest.approx((flat.var(0, unbiased=False) - run_var).norm().item() / 8, rel=1e-5)
    bn.measure_stats = False
    bn.stat_dev = None
    bn(x)
    assert bn.stat_dev is None  # only on measure steps


def test_the_fluctuation_is_summarised_over_the_second_half(tiny_base):
    from types import SimpleNamespace

    from normbench.probes import BatchNormFluctuation

    rows = [(s, {"bn_mean_dev": m, "bn_var_dev": v}) for s, m, v in [(1, 9.0, 9.0), (11, 1.0, 2.0), (21, 3.0, 4.0)]]
    # step 1 compares with the init (0 and 1): only the second half (steps > 20 / 2) counts
    assert BatchNormFluctuation.summary(None, rows, SimpleNamespace(steps_done=20)) == \
        {"bn_mean_dev": 2.0, "bn_var_dev": 3.0}
    s = train(from_dict(tiny_base(model={"norm": "batchnorm"}, train={"measure_every": 2})))
    assert s["bn_mean_dev"] > 0 and s["bn_var_dev"] > 0
    assert train(from_dict(tiny_base(train={"steps": 2})))["bn_var_dev"] is None  # no batch statistics


def test_eval_batches_is_refused_with_its_replacement(tiny_base):
    from normbench.errors import NormbenchError

    with pytest.raises(NormbenchError) as e:
        from_dict(tiny_base(train={"eval_batches": 8}))
    assert e.value.key == "train.eval_batches" and "train.eval_tokens" in e.value.message


def test_the_summary_names_the_cpu(tiny_base):
    from normbench.provenance import CPU_FLAGS, cpu_info

    s = train(from_dict(tiny_base(train={"steps": 2, "eval_every": 2})))
    assert s["cpu"] == cpu_info() and set(s["cpu"]["flags"]) <= set(CPU_FLAGS) and s["cpu"]["model"]


def test_eval_batches_in_a_flag_names_its_replacement(tmp_path):
    from typer.testing import CliRunner

    from normbench.cli.app import app

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nbase: {}\n")
    res = CliRunner().invoke(app, ["validate", str(p), "--set", "train.eval_batches=8"])
    assert res.exit_code == 2 and "use train.eval_tokens" in res.output
