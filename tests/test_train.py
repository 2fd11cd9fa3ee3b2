import json
import math
import statistics

import pytest

from normbench.config import TrainConfig, from_dict
from normbench.sweep.store import write_summary
from normbench.trainer import Stability, lr_at, train


def test_same_config_and_seed_reproduce_identical_metrics(tmp_path, tiny_base):
    cfg = from_dict(tiny_base(model={"norm": "batchnorm", "dropout": 0.1}))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        train(cfg, tmp_path / name, threads=1)
    a, b = [[{k: v for k, v in json.loads(l).items()} for l in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("a", "b")]
    assert len(a) == 12 + 2 and a == b
    other = train(from_dict(tiny_base(seed=1, model={"norm": "batchnorm", "dropout": 0.1})), threads=1)
    assert other["final_train_loss"] != pytest.approx(json.loads((tmp_path / "a" / "metrics.jsonl")
                                                                 .read_text().splitlines()[0])["loss"])


def test_tiny_run_learns_and_records_everything(tiny_base):
    s = train(from_dict(tiny_base(train={"steps": 40, "lr": 3e-3, "eval_every": 20})), threads=1)
    assert not s["diverged"] and s["diverged_step"] is None
    assert s["final_val_loss"] < math.log(s["vocab_size"])  # it learned something
    assert len(s["grad_norm_init_by_layer"]) == 2 and all(g > 0 for g in s["grad_norm_init_by_layer"])
    assert s["max_attn_logit"] > 0 and s["max_grad_norm"] >= s["median_grad_norm"] > 0
    assert s["tokens_per_s"] > 0 and s["params"] > 0 and s["peak_mem_mb"] > 0
    assert [v[0] for v in s["val_losses"]] == [20, 40]
    assert s["corpus"]["source"] == "python-stdlib" and s["threads"] == 1


def test_absurd_learning_rate_diverges_with_a_readable_summary(tmp_path, tiny_base):
    cfg = from_dict(tiny_base(model={"norm": "none"}, train={"lr": 1e4, "warmup_steps": 0, "steps": 30}))
    s = train(cfg, tmp_path, threads=1)
    assert s["diverged"] is True and 1 <= s["diverged_step"] < 30 and s["divergence_reason"]
    write_summary(tmp_path, s)  # strict JSON: no NaN or Infinity
    back = json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert back["diverged_step"] == s["diverged_step"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == s["steps_done"] >= s["diverged_step"]


def test_bf16_autocast_trains_and_auto_is_fp32_on_cpu(tiny_base):
    s = train(from_dict(tiny_base(train={"precision": "bf16"})), threads=1)
    assert not s["diverged"] and math.isfinite(s["final_val_loss"]) and s["precision_used"] == "bf16"
    fp32 = train(from_dict(tiny_base()), threads=1)
    auto = train(from_dict(tiny_base(train={"precision": "auto"})), threads=1)
    assert fp32["precision_used"] == auto["precision_used"] == "fp32"
    assert auto["final_train_loss"] == fp32["final_train_loss"]  # bit-identical: no autocast on CPU
    assert s["final_train_loss"] != fp32["final_train_loss"]  # bf16 really ran in bfloat16


def test_lr_schedules():
    t = TrainConfig(lr=1.0, warmup_steps=4, steps=14, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(i, t) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, t) == pytest.approx(1.0)
    assert lr_at(9, t) == pytest.approx(0.55)  # halfway: floor + (1 - floor) / 2
    lin = TrainConfig(lr=1.0, warmup_steps=0, steps=10, schedule="linear", min_lr_ratio=0.0)
    assert lr_at(5, lin) == pytest.approx(0.5)
    assert lr_at(7, TrainConfig(lr=2.0, warmup_steps=0, schedule="constant")) == 2.0


def test_spikes_and_divergence_detection():
    t = TrainConfig(spike_factor=1.5, spike_window=4, divergence_margin=1.0, divergence_patience=3)
    st = Stability(t, vocab_size=100)  # ceiling ln(100) + 1 = 5.605
    losses = [2.0, 2.0, 2.0, 2.0, 3.5, 3.6, 2.0, 2.0, 2.0, 2.0, 2.0, 4.0, 2.0]
    for i, loss in enumerate(losses, 1):
        assert not st.update(i, loss, 1.0)
    assert st.spike_steps == [5, 12]  # steps 5-6 are one spike
    st2 = Stability(t, 100)
    assert st2.update(1, 2.0, float("inf")) and st2.reason == "non-finite gradient norm"
    st3 = Stability(t, 100)
    assert st3.update(3, float("nan"), 1.0) and st3.reason == "non-finite loss" and st3.diverged_step == 3


def test_an_excursion_above_the_ceiling_that_recovers_is_not_divergence():
    """Two steps above ln V + 1, then back: counted, not diverged (patience 3), even at the end."""
    t = TrainConfig(divergence_margin=1.0, divergence_patience=3)
    st = Stability(t, vocab_size=100)
    for i, loss in enumerate([4.0, 9.0, 8.0, 3.0, 6.0, 7.0, 2.5], 1):
        assert not st.update(i, loss, 1.0)
    st.finish()
    assert st.diverged_step is None and st.reason is None
    assert st.unstable_steps == 4 and st.max_loss == 9.0


def test_a_loss_that_stays_above_the_ceiling_diverges_where_the_stretch_began():
    t = TrainConfig(divergence_margin=1.0, divergence_patience=3)
    st = Stability(t, vocab_size=100)
    seen = [st.update(i, loss, 1.0) for i, loss in enumerate([4.0, 7.0, 3.0, 6.0, 6.5, 7.0], 1)]
    assert seen == [False, False, False, False, False, True]  # the third consecutive step above stops it
    assert st.diverged_step == 4 and "3 consecutive steps" in st.reason and st.unstable_steps == 4


def test_a_run_that_ends_above_the_ceiling_has_diverged():
    t = TrainConfig(divergence_margin=1.0, divergence_patience=10)
    st = Stability(t, vocab_size=100)
    for i, loss in enumerate([4.0, 3.0, 7.0, 3.0, 6.0, 7.0], 1):
        assert not st.update(i, loss, 1.0)
    st.finish()
    assert st.diverged_step == 5 and st.reason.startswith("ended above")


def test_a_run_not_yet_come_down_from_its_initial_loss_is_not_diverged():
    """Divergence needs a rise: the loss's level (median of the recent losses) more than the margin above its
    lowest. A run falling from an initial loss above the ceiling, or hovering around the ceiling (lr 1e-7),
    is not diverged, with patience run out and at the end; one that rises is."""
    t = TrainConfig(divergence_margin=1.0, divergence_patience=3)
    st = Stability(t, vocab_size=100)  # ceiling 5.605
    for i, loss in enumerate([11.2, 10.9, 11.3, 10.4, 10.1, 9.8], 1):  # above the ceiling from step 1, falling
        assert not st.update(i, loss, 1.0)
    st.finish()
    assert st.diverged_step is None and st.below_step is None and st.unstable_steps == 6
    hover = Stability(t, 100)
    for i, loss in enumerate([5.8, 5.4, 5.9, 5.5, 5.7, 5.8, 5.9], 1):  # around the ceiling, ending above it
        assert not hover.update(i, loss, 1.0)
    hover.finish()
    assert hover.diverged_step is None and hover.below_step == 2
    up = Stability(t, 100)
    seen = [up.update(i, loss, 1.0) for i, loss in enumerate([11.2, 9.0, 9.0, 13.0], 1)]
    assert seen == [False, False, False, True] and up.diverged_step == 1  # level 10.1 > 9.0 + 1
    late = Stability(TrainConfig(divergence_margin=1.0, divergence_patience=50), 100)
    for i, loss in enumerate([11.2] + [3.0] * 10 + [5.0] * 2 + [7.0] * 10, 1):  # came down to 3, then up at 7
        assert not late.update(i, loss, 1.0)
    late.finish()  # ended above the ceiling with its level at 6 > 3 + 1: diverged where the stretch began
    assert late.below_step == 2 and late.diverged_step == 14 and late.reason.startswith("ended above")


def test_a_short_wide_run_on_a_small_alphabet_is_not_diverged_since_step_1(tmp_path):
    """The issue's case: 6 steps at d_model 128 on a 20-symbol text start near sqrt(d) above ln V (tied
    head, sqrt(d) embedding scale) and are still coming down: not diverged, stalled, never below the ceiling."""
    import random

    rng = random.Random(1)
    f = tmp_path / "sym20.txt"
    f.write_text("".join(rng.choice("abcdefghijklmnopqrs ") for _ in range(50_000)))
    cfg = from_dict({"model": {"layers": 1, "d_model": 128, "heads": 2, "d_ff": 64},
                     "data": {"task": "text", "path": str(f), "seq_len": 32},
                     "train": {"steps": 6, "batch_size": 4, "warmup_steps": 0, "eval_every": 6, "eval_tokens": 1024},
                     "device": "cpu"})
    s = train(cfg, threads=1)
    assert s["initial_loss"] > math.log(s["vocab_size"]) + 5  # far above ln V = 3.04
    assert not s["diverged"] and s["divergence_reason"] is None and s["below_ceiling_step"] is None
    assert s["stalled"] is True and s["final_val_loss"] < s["initial_loss"]


def test_a_run_that_never_learns_is_stalled_and_one_that_learns_is_not(tiny_base):
    """lr 1e-7: ends near its initial loss, above the unigram: stalled true, not diverged; lr 3e-3 on the
    same text ends below the unigram: stalled false."""
    base = dict(model={"layers": 1, "d_model": 64}, data={"seq_len": 32, "max_chars": 200_000},
                train={"steps": 150, "batch_size": 16, "warmup_steps": 10, "eval_every": 150, "eval_tokens": 4096})
    never = train(from_dict(tiny_base(**{**base, "train": {**base["train"], "lr": 1e-7}})), threads=1)
    assert not never["diverged"] and never["stalled"] is True  # it hovers around the ceiling, never rising
    assert never["final_val_loss"] > never["unigram_loss"]
    learns = train(from_dict(tiny_base(**{**base, "train": {**base["train"], "lr": 3e-3}})), threads=1)
    assert not learns["diverged"] and learns["stalled"] is False
    assert learns["final_val_loss"] < learns["unigram_loss"] - 0.05 and learns["below_ceiling_step"] >= 1


def test_a_real_run_with_excursions_trains_to_the_end(tmp_path, tiny_base):
    """Without a norm, at lr 0.3 and no warmup, the loss leaves the ceiling for a few steps and
    comes back; with a long patience the run goes on, counting them, and is not diverged."""
    cfg = from_dict(tiny_base(model={"norm": "none"}, train={"lr": 0.3, "warmup_steps": 0, "steps": 30,
                                                             "divergence_patience": 100}))
    s = train(cfg, tmp_path, threads=1)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    ceiling = math.log(s["vocab_size"]) + 1.0
    above = [l > ceiling for l in losses]
    assert s["unstable_steps"] == sum(above) > 0 and s["max_loss"] == pytest.approx(max(losses), rel=1e-5)
    assert s["steps_done"] == len(losses) == 30
    # the level: the median of the last 20 losses; risen: more than the margin above its lowest so far
    level = [statistics.median(losses[max(0, i - 19):i + 1]) for i in range(len(losses))]
    risen = [level[i] > min(level[:i + 1]) + 1.0 for i in range(len(losses))]
    assert s["diverged"] == (above[-1] and risen[-1])  # diverged only if it ended above the ceiling, risen
    short = train(from_dict(tiny_base(model={"norm": "none"}, train={"lr": 0.3, "warmup_steps": 0, "steps": 30,
                                                                      "divergence_patience": 1})), threads=1)
    stop = next(i for i in range(len(losses)) if above[i] and risen[i]) + 1
    start = next(j for j in range(stop, 0, -1) if j == 1 or not above[j - 2])
    assert short["diverged"] and short["diverged_step"] == start and short["steps_done"] == stop


def test_the_api_functions_stay_functions_once_every_module_is_loaded():
    """A submodule named like an API function would replace it on import (normbench.train was
    the module train.py once a sweep had run); every name in __all__ must stay what it was."""
    import importlib
    import pkgutil

    import normbench

    for mod in pkgutil.iter_modules(normbench.__path__):
        if mod.name != "__main__":
            importlib.import_module(f"normbench.{mod.name}")
    for name in normbench.__all__:
        if name != "__version__":
            assert callable(getattr(normbench, name)) and not isinstance(getattr(normbench, name), type(normbench)), name
    from normbench.trainer import train as train_fn
    assert normbench.train is train_fn


@pytest.mark.parametrize("norm", ["batchnorm", "batchnorm_masked"])
def test_batch_stats_evaluation_is_a_train_mode_forward_that_changes_nothing(norm, tiny_base):
    """evaluate_batch_stats against a hand computation: a copy of the model in train mode (no
    dropout in the tiny model) gives the same loss; the running statistics are left as they were."""
    import copy

    import torch

    from normbench.data import EVAL_SEED, make_task
    from normbench.model import Transformer
    from normbench.probes import batch_norms, evaluate_batch_stats
    from normbench.trainer import evaluate, lm_loss

    cfg = from_dict(tiny_base(model={"norm": norm}, data={"variable_length": True, "min_len": 4}))
    torch.manual_seed(0)
    task = make_task(cfg.data, torch.device("cpu"))
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # move the running statistics away from their init
        x, y, mask = task.batch("train", 8, gen)
        model(x, mask)
    eval_gen = torch.Generator().manual_seed(EVAL_SEED)
    batches = [task.batch("val", 8, eval_gen) for _ in range(2)]
    before = [{k: b.clone() for k, b in bn.named_buffers()} for bn in batch_norms(model)]
    ref = copy.deepcopy(model).train()
    with torch.no_grad():  # token-weighted over the batches, as the validation loss is
        n = [int((y != -100).sum()) for _, y, _ in batches]
        want = sum(lm_loss(ref(x, mask), y)[0].item() * k for (x, y, mask), k in zip(batches, n)) / sum(n)
    got = evaluate_batch_stats(model, batches, lambda: torch.autocast("cpu", enabled=False))
    assert got == pytest.approx(want, rel=1e-6)
    assert model.training  # left in train mode, as train() expects
    for bn, state in zip(batch_norms(model), before):
        for k, b in bn.named_buffers():
            assert torch.equal(b, state[k]), k
    eval_loss = evaluate(model, batches, lambda: torch.autocast("cpu", enabled=False))
    assert eval_loss != pytest.approx(got)  # running statistics after 3 steps are not the batches'


def test_runs_without_batchnorm_have_no_batch_stats_gap(tiny_base):
    s = train(from_dict(tiny_base()), threads=1)
    assert s["bn_eval_gap"] is None and s["final_val_loss_batch_stats"] is None
    b = train(from_dict(tiny_base(model={"norm": "batchnorm"})), threads=1)
    assert b["bn_eval_gap"] == pytest.approx(b["final_val_loss"] - b["final_val_loss_batch_stats"])


def test_model_update_is_the_rms_change_of_the_logits_on_a_fixed_batch(tiny_base, tmp_path):
    """Wang et al. 2022's ‖F(x, θ_t) − F(x, θ_0)‖, by hand: zero for the same weights, and the RMS
    of the logit change over real positions after one weight is moved."""
    import torch

    from normbench.data import make_task
    from normbench.model import Transformer
    from normbench.probes import model_output, model_update

    cfg = from_dict(tiny_base(data={"variable_length": True, "min_len": 4}))
    torch.manual_seed(0)
    task = make_task(cfg.data, torch.device("cpu"))
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len).train()
    x, _, mask = task.batch("val", 4, torch.Generator().manual_seed(1))
    assert mask is not None and not bool(mask.all())
    f0 = model_output(model, x, mask)
    assert f0.shape == (int(mask.sum()), task.vocab_size) and model.training
    assert model_update(model, x, mask, f0).item() == 0.0
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight.add_(0.05)
        want = model.eval()(x, mask)[mask]
    model.train()
    expected = ((want - f0) ** 2).mean().sqrt().item()
    assert model_update(model, x, mask, f0).item() == pytest.approx(expected, rel=1e-5) and expected > 0

    (tmp_path / "r").mkdir()
    s = train(from_dict(tiny_base(train={"steps": 12, "measure_every": 4})), tmp_path / "r", threads=1)
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    measured = [r["step"] for r in rows if "model_update" in r]
    assert measured == [1, 5, 9]  # with the attention probe, every measure_every steps
    assert s["max_model_update"] == pytest.approx(max(r["model_update"] for r in rows if "model_update" in r),
                                                   rel=1e-5) and s["max_model_update"] > 0
