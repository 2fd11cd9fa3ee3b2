"""One place per measurement (measures.py): the trainer, compare, the index, the figures and the
claims all derive from it, and a run's summary holds exactly its keys."""
import json
import math

import pytest

from conftest import tiny
from normbench import measures
from normbench.config import from_dict
from normbench.measures import COMPARED, MEASUREMENTS, METRICS, SUMMARY_KEYS, WHEN
from normbench.probes import PROBES, Run, make_probes
from normbench.trainer import train


BN_DYT = tiny(model={"norm": "batchnorm", "qk_norm": True, "qk_norm_type": "dyt"}, train={"measure_every": 3},
              data={"variable_length": True})


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    """A padded BatchNorm run with DyT as its qk-norm: every probe applies (the fluctuation, the train/eval
    gap, the saturation and the unpadded validation too)."""
    d = tmp_path_factory.mktemp("bn")
    return train(from_dict(BN_DYT), d, threads=1), d


def test_every_entry_is_well_formed():
    names = [m.name for m in MEASUREMENTS]
    assert len(names) == len(set(names))
    assert len(METRICS) == sum(len(m.metrics) for m in MEASUREMENTS)  # no key declared twice
    for meas in MEASUREMENTS:
        assert meas.when in WHEN, meas.name
        for m in meas.metrics:
            assert m.column in measures.COLUMN and m.scale in ("linear", "log"), m.key
            assert not (m.listed and m.compared), m.key
    assert {m.name for m in MEASUREMENTS if m.probe} == set(PROBES)  # each probe has its entry, and back


def test_a_run_summary_holds_exactly_the_registry_keys(bn_run):
    summary, d = bn_run
    assert list(summary) == SUMMARY_KEYS
    assert json.loads((d / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    for key in COMPARED:  # every compared metric is measured on this run (tokens_per_s too)
        assert summary[key] is not None, key


def test_each_probe_writes_exactly_its_declared_keys(bn_run):
    """A probe's summary, fed nothing and fed a real run's rows, has its entry's summary keys and no other."""
    import torch

    cfg = from_dict(BN_DYT)
    from normbench.data import make_task
    from normbench.evalset import validation_set
    from normbench.model import Transformer

    task = make_task(cfg.data, torch.device("cpu"))
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len)
    evalset = validation_set(task, cfg.train.eval_tokens)
    run = Run(cfg, model, task, evalset, lambda: torch.autocast("cpu", enabled=False), evalset.batches(4),
              steps_done=12)
    probes = [p for ps in make_probes(run).values() for p in ps]
    assert {p.name for p in probes} == set(PROBES)  # with BatchNorm every probe is active
    by_name = {m.name: m for m in MEASUREMENTS}
    for p in probes:
        declared = {m.key for m in by_name[p.name].metrics if m.derive is None and not m.across_lrs}
        assert set(p.summary([], run)) == declared, p.name
    summary, _ = bn_run
    for meas in MEASUREMENTS:  # the series a probe logs are those its entry names
        logged = {s.column for s in meas.series}
        if meas.probe and logged:
            assert logged <= set().union(*(json.loads(l) for l in (bn_run[1] / "metrics.jsonl").read_text()
                                             .splitlines())), meas.name


def test_derived_sets_match_their_flags():
    assert set(measures.ON_DIVERGED) == {k for k, m in COMPARED.items() if m.on_diverged}
    assert "initial_loss" in measures.ON_DIVERGED and "final_val_loss" not in measures.ON_DIVERGED
    assert measures.LOSSES == ("final_train_loss", "final_val_loss", "best_val_loss", "final_val_loss_batch_stats",
                               "final_val_loss_unpadded")
    assert set(measures.BINARY) == {"diverged", "stalled"}
    assert set(measures.AT_INIT) == {"grad_norm_init_last_over_first", "token_cos_sim_init_last"}
    assert measures.INDEX_SKIP >= {"val_losses", "spike_steps", "resid_rms_by_layer", "corpus", "versions"}
    assert [p.column for p in measures.PANELS] == ["loss", "val_loss", "grad_norm", "attn_logit_max", "model_update"]
    assert "tokens_per_s" not in measures.CLAIM_METRICS and "lr_sensitivity" in measures.CLAIM_METRICS


def test_default_columns_follow_the_registry():
    always = measures.default_columns(lambda k: False, lambda k: False)
    assert always == ["final_val_loss", "best_val_loss", "loss_spikes", "max_grad_norm", "max_attn_logit",
                      "tokens_per_s"]
    every = measures.default_columns(lambda k: True, lambda k: True)
    assert every[len(always):] == ["max_model_update", "bn_eval_gap", "final_val_loss_unpadded", "train_causal_leak",
                                   "unstable_steps"]


def test_run_value_for_claims_by_hand():
    r = {"diverged": True, "final_val_loss": None, "max_grad_norm": 12.0, "final_log_z": -3.5,
         "grad_norm_init_by_layer": [2.0, 3.0, 8.0], "resid_rms_by_layer": [1.0, math.e, math.e ** 2]}
    assert measures.run_value(r, "final_val_loss") == math.inf  # a diverged run's loss: the worst
    assert measures.run_value(r, "max_grad_norm") == 12.0  # measured on diverged runs too
    assert measures.run_value(r, "final_log_z") is None  # not on diverged runs
    assert measures.run_value(r, "abs_final_log_z") == 3.5
    assert measures.run_value(r, "diverged") == 1.0
    assert measures.run_value(r, "grad_norm_init_last_over_first") == 4.0
    assert measures.run_value(r, "resid_log_slope") == pytest.approx(1.0)
    assert measures.run_value({"diverged": False, "stalled": True}, "stalled") == 1.0
    assert measures.run_value({"diverged": True, "stalled": None}, "stalled") == 1.0  # 0.8.0 wrote null
    assert measures.run_value({"diverged": True, "stalled": True}, "stalled") == 1.0
    assert measures.run_value({"diverged": False, "stalled": None}, "stalled") is None


def test_the_index_leaves_out_exactly_the_listed_keys(bn_run, tmp_path):
    from normbench.sweep import store

    summary, d = bn_run
    row = store.read_run(d) if (d / "config.yaml").exists() else None
    if row is None:  # a bare train() folder: give it a config, as a sweep does
        store.prepare(d, {"name": "r", "base": from_dict(BN_DYT).to_dict()})
        store.write_summary(d, summary)
        row = store.read_run(d)
    assert not (set(row) & measures.INDEX_SKIP)
    assert {k for k in summary if k not in measures.INDEX_SKIP and k not in ("run_id", "device")} <= set(row)
    kept = store.read_run(d, keep=("val_losses",))
    assert kept["val_losses"] == summary["val_losses"]


def test_residual_rms_per_layer_is_measured_and_summarised(tmp_path):
    import torch

    from normbench.model import Transformer, residual_rms

    torch.manual_seed(0)
    m = Transformer(from_dict({"model": {"layers": 3, "d_model": 32, "heads": 2, "d_ff": 64}}).model, 40, 16)
    m.measure_attention(True)
    outs = []
    for b in m.blocks:
        b.register_forward_hook(lambda mod, args, out: outs.append(out))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 9:] = False
    m(torch.randint(1, 40, (2, 16)), mask)
    want = [o[mask].pow(2).mean().sqrt() for o in outs]
    assert torch.allclose(m.resid_rms_by_layer(), torch.stack(want))
    assert residual_rms(outs[0], None) == pytest.approx(outs[0].pow(2).mean().sqrt().item())
    s = train(from_dict(tiny(model={"layers": 3}, train={"steps": 12, "measure_every": 5})), tmp_path)
    assert len(s["resid_rms_by_layer"]) == len(s["resid_rms_by_layer_init"]) == 3
    assert s["resid_rms_last"] == s["resid_rms_by_layer"][-1]
    assert s["resid_rms_growth"] == pytest.approx(s["resid_rms_by_layer"][-1] / s["resid_rms_by_layer_init"][-1])
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "resid_rms" in r] == [1, 6, 11]
