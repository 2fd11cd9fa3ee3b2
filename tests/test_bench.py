"""normbench bench: its formulas against a hand computation, its JSON contract, and the
measurements-off path (which must not change training). Speed itself is measured by the
benchmark, never asserted here."""
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from normbench.bench import RefGPT, flops_per_token, matmul_peak
from normbench.cli.app import app
from normbench.config import TrainConfig, from_dict
from normbench.model import Transformer
from normbench.trainer import train
from conftest import tiny

runner = CliRunner()
SHAPE = ["--set", "model.layers=2", "--set", "model.d_model=32", "--set", "model.heads=2", "--set", "model.d_ff=64",
         "--set", "data.seq_len=16", "--set", "train.batch_size=4", "--set", "data.max_chars=20000",
         "--set", "device=cpu"]


def test_flops_per_token_is_palms_formula_by_hand():
    cfg = from_dict(tiny())  # 2 layers, d 32, d_ff 64, seq 16
    V = 100
    matmul_params = 2 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32) + 32 * V  # qkv, proj, fc1, fc2; LM head
    assert flops_per_token(cfg, V) == 6 * matmul_params + 12 * 2 * 16 * 32


def test_reference_has_the_same_shapes_as_normbench_pre_ln():
    cfg = from_dict(tiny())
    ours = Transformer(cfg.model, 50, cfg.data.seq_len)
    ref = RefGPT(50, cfg.data.seq_len, cfg.model.d_model, cfg.model.layers, cfg.model.heads, cfg.model.d_ff)
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(ref)
    x = torch.randint(0, 50, (2, 16))
    assert ref(x).shape == ours(x).shape == (2, 16, 50)


def test_matmul_peak_agrees_with_an_independent_timing():
    """The peak against the same matmul timed here by hand (2 n^3 FLOPs over the best of several
    runs): within a factor of 3 either way, which a loaded 2-core machine keeps, while a wrong FLOP
    count (n^3, or per element) or a timed window holding more than the matmuls would not."""
    import time

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        peak = matmul_peak(torch.device("cpu"), torch.float32, seconds=0.2)
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    by_hand = 2 * n ** 3 / best / 1e9
    assert by_hand / 3 < peak < by_hand * 3, (peak, by_hand)


def test_bench_json_is_consistent(tmp_path):
    res = runner.invoke(app, ["bench", "--json", "--steps", "3", "--warmup", "1", "--rounds", "2", "--threads", "1",
                              *SHAPE, "--set", "train.measure_every=4"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    # a whole measurement period is timed: the probe's step is in the window, at its real rate
    assert (r["steps"], r["steps_requested"], r["measure_every"]) == (4, 3, 4)
    for key in ("tokens_per_s", "step_ms", "flops_per_token", "gflops", "mfu", "peak_gflops", "reference",
                "measurements_off", "measurement_overhead", "speedup_vs_reference", "threads", "device"):
        assert key in r, key
    tokens_per_step = 4 * 16
    cfg = from_dict(tiny())
    assert r["flops_per_token"] == flops_per_token(cfg, r["shape"]["vocab_size"])
    for fig in (r, r["reference"], r["measurements_off"]):
        assert fig["tokens_per_s"] * fig["step_ms"] / 1e3 == pytest.approx(tokens_per_step)
        assert fig["gflops"] == pytest.approx(r["flops_per_token"] * fig["tokens_per_s"] / 1e9)
        assert fig["mfu"] == pytest.approx(fig["gflops"] / r["peak_gflops"])
        assert len(fig["round_step_ms"]) == 2
    assert r["peak_gflops"] == r["peak_gflops_fp32"] and r["threads"] == 1
    assert r["measurement_overhead"] == pytest.approx(r["step_ms"] / r["measurements_off"]["step_ms"] - 1)
    assert r["speedup_vs_reference"] == pytest.approx(r["tokens_per_s"] / r["reference"]["tokens_per_s"])
    # the once-per-run causality probe, priced against a run of the recipe's own length
    assert r["causal_probe_ms"] > 0 and r["run_steps"] == TrainConfig().steps  # SHAPE leaves steps alone
    assert r["causal_probe_share"] == pytest.approx(r["causal_probe_ms"] / (r["run_steps"] * r["step_ms"]))
    # each measurement priced on its own, at its rate
    from normbench.measures import MEASUREMENTS

    # (a LayerNorm model: the BatchNorm and DyT probes do not apply; their recording is the "norm statistics")
    measured = {m.name for m in MEASUREMENTS if m.probe and m.when == "measure"} - {"BatchNorm fluctuation", "saturation"}
    assert measured <= set(r["probe_ms"]) and all(v >= 0 for v in r["probe_ms"].values())
    assert r["probe_share"] == pytest.approx({k: v / r["measure_every"] / r["step_ms"]
                                              for k, v in r["probe_ms"].items()})


def test_bench_table_and_bad_input():
    res = runner.invoke(app, ["bench", "--steps", "2", "--warmup", "1", "--rounds", "1", "--threads", "1",
                              "--no-reference", "--no-overhead", *SHAPE])
    assert res.exit_code == 0, res.output
    assert "normbench (measurements on)" in res.stdout and "reference" not in res.stdout
    res = runner.invoke(app, ["bench", "--set", "model.layer=2"])
    assert res.exit_code == 2 and res.stderr.strip() == \
        "normbench: error: --set model.layer: unknown key (did you mean model.layers?)"


@pytest.mark.parametrize("norm, task", [("layernorm", "charlm"), ("batchnorm_masked", "charlm"), ("dyt", "charlm"),
                                        ("batchnorm", "mlm")])
def test_measurements_do_not_change_training(tmp_path, norm, task):
    """The probes read activations and gradients (and BatchNorm's batch-statistics evaluation runs
    a forward in train mode) but must not perturb them: same losses, bit for bit (DyT's saturation
    probe and an encoder included)."""
    cfg = from_dict(tiny(model={"norm": norm}, data={"variable_length": True, "min_len": 4, "task": task},
                         train={"steps": 10, "measure_every": 2, "eval_every": 3}))
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on = train(cfg, tmp_path / "on", threads=1)
    off = train(cfg, tmp_path / "off", threads=1, measure=False)
    rows = {k: [json.loads(line) for line in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
            for k in ("on", "off")}
    assert [r.get("loss") for r in rows["on"]] == [r.get("loss") for r in rows["off"]]
    assert on["final_val_loss"] == off["final_val_loss"]
    assert all("grad_norm" in r for r in rows["on"] if "loss" in r)
    assert not any("grad_norm" in r or "attn_logit_max" in r for r in rows["off"])
    diagnostics = ("act_kurtosis_max", "massive_act_max", "attn_entropy_min", "attn_sink_share",
                   "token_cos_sim_last")  # the diagnostics of 2023-2026: on, and off
    assert all(k in rows["on"][0] for k in diagnostics) and not any(k in r for r in rows["off"] for k in diagnostics)
    assert ("saturation" in rows["on"][0]) == (norm == "dyt")
    assert off["grad_norm_init_by_layer"] is None and off["max_attn_logit"] is None and on["max_attn_logit"] > 0
    if norm == "batchnorm_masked":
        assert on["bn_eval_gap"] is not None and off["bn_eval_gap"] is None
        assert [r for r in rows["on"] if "val_loss_batch_stats" in r] and \
            not [r for r in rows["off"] if "val_loss_batch_stats" in r]


def test_compile_is_how_not_what_so_not_in_the_run_id():
    a = from_dict(tiny())
    b = from_dict(tiny(train={"compile": True}))
    assert a.run_id() == b.run_id() and b.train.compile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training_and_bench(tmp_path):
    cfg = from_dict(tiny(device="cuda", train={"precision": "auto", "steps": 40}))
    summary = train(cfg, tmp_path)
    assert summary["device"].startswith("cuda") and summary["steps_done"] == 40
    assert summary["precision_used"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert summary["peak_mem_kind"] == "cuda_max_allocated"
    res = runner.invoke(app, ["bench", "--json", "--steps", "40", "--warmup", "16", "--rounds", "1",
                              *SHAPE[:-2], "--set", "device=cuda", "--set", "train.precision=bf16"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["peak_gflops_bf16"] > 0 and r["precision"] == "bf16"
