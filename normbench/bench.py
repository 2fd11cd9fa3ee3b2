"""``normbench bench``: training throughput, model FLOPs utilisation, the price of the
stability measurements, and a plain-PyTorch reference of the same shapes, side by side.

The timed steps are rounded up to whole measurement periods (``train.measure_every``), so
the periodic probes are priced at their real rate however short the window. Three variants
are timed in one process, interleaved round by round (each round starting
with another) so that a noisy machine hurts them alike. Each is summarised by the median
over rounds of the round's mean step time: a mean, so that a probe taken one step in ten
is paid in full, and a median over rounds, so that one disturbed round does not decide:

- ``normbench``: ``trainer.train`` itself, every measurement on (what ``normbench run`` does);
- ``measurements_off``: the same loop without gradient norms, attention-logit probes and the
  per-layer profile (divergence is still checked on the loss);
- ``reference``: ``RefGPT`` below, the Pre-LN GPT a user would write in 60 lines (fused QKV,
  ``scaled_dot_product_attention``, tied head, AdamW), trained on the same batches.

MFU is model FLOPs per second over the peak measured here, now: a large matmul in the
run's precision, with the same threads. Model FLOPs per token follow PaLM (Chowdhery et al.
2022, appendix B): 6 x (matmul parameters) + 12 x layers x seq_len x d_model, attention
counted in full although it is causal, norms and activations not counted. For bf16 the
peak is the larger of the bf16 and fp32 matmul peaks (a CPU without bf16 units runs bf16
slower than fp32).
"""
from __future__ import annotations

import math
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .version import __version__
from .config import RunConfig
from .data import make_task
from .errors import NormbenchError
from .model import Transformer
from .probes import causal_leak
from .trainer import autocast_for, lm_loss, resolve_device, resolve_precision, train


# ---------------------------------------------------------------------------------------------
# the reference: what a user would write


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class RefGPT(nn.Module):
    """A minimal Pre-LN GPT: token and position embeddings, blocks, final LayerNorm, tied head."""

    def __init__(self, vocab: int, seq_len: int, d: int, layers: int, heads: int, d_ff: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList([RefBlock(d, heads, d_ff) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def reference_run(cfg: RunConfig, steps: int, device: torch.device, on_step) -> None:
    """Train RefGPT for ``steps`` on the task's batches; ``on_step(step)`` after each step's loss is read."""
    m, t = cfg.model, cfg.train
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.data, device)
    model = RefGPT(task.vocab_size, cfg.data.seq_len, m.d_model, m.layers, m.heads, m.d_ff).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    autocast = autocast_for(device, t.precision)
    gen = task.generator(cfg.seed)
    for step in range(1, steps + 1):
        x, y, _ = task.batch("train", t.batch_size, gen)
        with autocast():
            logits = model(x)
        loss = lm_loss(logits, y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the host reads the loss, as normbench does
        on_step(step)


# ---------------------------------------------------------------------------------------------
# FLOPs and peak


def flops_per_token(cfg: RunConfig, vocab_size: int) -> int:
    """PaLM's model FLOPs per token for one training step (forward and backward)."""
    m, T = cfg.model, cfg.data.seq_len
    matmul_params = m.layers * (4 * m.d_model ** 2 + 2 * m.d_model * m.d_ff) + m.d_model * vocab_size
    return 6 * matmul_params + 12 * m.layers * T * m.d_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Achieved GFLOP/s of a large square matmul (median of repeats), the practical peak here."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    a @ b
    _sync(device)
    one = time.perf_counter() - t0
    reps = max(1, min(50, int(seconds / 5 / max(one, 1e-6))))
    times = []
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True  # autocast works on every CPU; whether it is fast is what the bf16 peak shows


# ---------------------------------------------------------------------------------------------
# timing


class StepClock:
    """Timestamps at each step whose loss the host has read; step times after ``warmup``."""

    def __init__(self):
        self.marks: list[tuple[int, float]] = []

    def __call__(self, step: int, *_):
        self.marks.append((step, time.perf_counter()))

    def step_times(self, warmup: int) -> list[float]:
        """Per-step seconds between consecutive marks past the warm-up (marks may be k steps apart on GPU)."""
        marks = [(s, t) for s, t in self.marks if s >= warmup]
        return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(marks, marks[1:])]


def time_variants(cfg: RunConfig, variants: dict, rounds: int, warmup: int, device, say) -> tuple[dict, dict]:
    """Each variant's mean step time per round (the rounds alternate which variant goes first), and the
    seconds to its first timed step: {variant: [per round]} twice."""
    total = cfg.train.steps
    times: dict[str, list[float]] = {k: [] for k in variants}
    first_steps_s: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as tmp:
        names = list(variants)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts with another
                measure = variants[name]
                say(f"round {r + 1}/{rounds}: {name}")
                clock, t0 = StepClock(), time.perf_counter()
                if measure is None:
                    reference_run(cfg, total, device, clock)
                else:  # the real training loop, writing metrics.jsonl as a run does
                    train(cfg, Path(tmp) if measure else None, on_progress=clock, measure=measure)
                st = clock.step_times(warmup)
                if not st:
                    raise NormbenchError(f"the {name} run stopped at step {clock.marks[-1][0] if clock.marks else 0} "
                                         f"of {total} (diverged?); bench needs a configuration that trains",
                                         key="train.lr")
                times[name].append(sum(st) / len(st))  # the round's mean: periodic probes count in full
                first = [t for s, t in clock.marks if s == warmup]
                first_steps_s[name].append((first[0] if first else time.perf_counter()) - t0)

    return times, first_steps_s


def bench(cfg: RunConfig, steps: int = 30, warmup: int = 5, rounds: int = 3, threads: int | None = None,
          reference: bool = True, off: bool = True, progress=None) -> dict:
    """Time the variants and return the figures (see the module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    run_steps = cfg.train.steps  # a real run's length, to price the probe taken once per run
    # whole measurement periods: the attention-logit and model-update probes come once every
    # train.measure_every steps, and any window of k periods holds exactly k of them
    steps_requested, period = steps, cfg.train.measure_every
    steps = math.ceil(steps / period) * period
    total = warmup + steps
    # no evaluation inside the timed window: the only one comes after the last step
    cfg = replace(cfg, train=replace(cfg.train, steps=total, eval_every=total, eval_tokens=1))
    task = make_task(cfg.data, device)
    fpt = flops_per_token(cfg, task.vocab_size)
    say = progress or (lambda msg: None)

    say("measuring the matmul peak")
    peak = {"fp32": matmul_peak(device, torch.float32)}
    precision = resolve_precision(device, cfg.train.precision)
    if precision == "bf16" or device.type == "cuda":
        peak["bf16"] = matmul_peak(device, torch.bfloat16) if bf16_supported(device) else None
    variants = {"normbench": True}
    if off:
        variants["measurements_off"] = False
    if reference:
        variants["reference"] = None
    times, first_steps_s = time_variants(cfg, variants, rounds, warmup, device, say)

    # bf16 may use the fp32 units too: where bf16 is not accelerated (most CPUs) fp32 is its peak
    peak_used = max(peak["fp32"], peak.get("bf16") or 0.0) if precision == "bf16" else peak["fp32"]
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len

    def figures(name: str) -> dict:
        step_s = statistics.median(times[name])  # median over rounds of each round's mean step time
        tps = tokens_per_step / step_s
        return {"tokens_per_s": tps, "step_ms": step_s * 1e3, "gflops": fpt * tps / 1e9,
                "mfu": fpt * tps / 1e9 / peak_used, "round_step_ms": [t * 1e3 for t in times[name]],
                "warmup_s": statistics.median(first_steps_s[name])}

    main = figures("normbench")
    out = {
        **main,
        "flops_per_token": fpt,
        "peak_gflops": peak_used,
        "peak_gflops_fp32": peak["fp32"],
        "peak_gflops_bf16": peak.get("bf16"),
        "precision": precision,
        "compile": cfg.train.compile,
        "device": _device_name(device),
        "threads": torch.get_num_threads(),
        "shape": {"layers": cfg.model.layers, "d_model": cfg.model.d_model, "heads": cfg.model.heads,
                  "d_ff": cfg.model.d_ff, "seq_len": cfg.data.seq_len, "batch_size": cfg.train.batch_size,
                  "vocab_size": task.vocab_size, "norm": cfg.model.norm, "placement": cfg.model.placement},
        "steps": steps, "steps_requested": steps_requested, "measure_every": period, "warmup": warmup,
        "rounds": rounds,
        "versions": {"normbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    out["probe_ms"] = probe_costs(cfg, task, device)
    out["probe_share"] = {k: v / period / main["step_ms"] for k, v in out["probe_ms"].items()}
    out["causal_probe_ms"] = causal_probe_ms(cfg, task, device)
    out["causal_probe_share"] = out["causal_probe_ms"] / (run_steps * main["step_ms"])
    out["run_steps"] = run_steps
    if off:
        out["measurements_off"] = figures("measurements_off")
        out["measurement_overhead"] = main["step_ms"] / out["measurements_off"]["step_ms"] - 1
    if reference:
        out["reference"] = figures("reference")
        out["speedup_vs_reference"] = main["tokens_per_s"] / out["reference"]["tokens_per_s"]
    return out


def causal_probe_ms(cfg: RunConfig, task, device: torch.device, repeats: int = 5) -> float:
    """Median time of the causality probe (two training-mode forwards of one batch), taken once per run."""
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len, bidirectional=not task.causal).to(device)
    x, _, mask = task.batch("val", cfg.train.batch_size, torch.Generator().manual_seed(0))
    autocast = autocast_for(device, cfg.train.precision)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        causal_leak(model, x, mask, task.vocab_size, autocast)  # reads its result back: synchronised
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


PARTS = {"attention": "per-head attention statistics (logits, entropy, sinks)",
         "residual": "per-block residual statistics (RMS, kurtosis, massive activations, token similarity)",
         "norms": "norm statistics (BatchNorm fluctuation, DyT/Derf saturation)"}


def probe_costs(cfg: RunConfig, task, device: torch.device, repeats: int = 7) -> dict[str, float]:
    """Each measurement priced on its own, in ms per measure step: what the model's recording in a
    training forward adds (per part, shared by the probes that read it: ``PARTS``), and what each
    probe's ``take`` costs with its value read back. Median of ``repeats`` against the same forward
    unmeasured."""
    from .evalset import validation_set
    from .probes import Run, Step, make_probes

    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len,
                        bidirectional=not task.causal).to(device).train()
    x, y, mask = task.batch("train", cfg.train.batch_size, task.generator(cfg.seed))
    autocast = autocast_for(device, cfg.train.precision)
    evalset = validation_set(task, cfg.train.eval_tokens)
    run = Run(cfg, model, task, evalset, autocast, [])
    probes = make_probes(run).get("measure", [])

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def forward(parts=()):
        model.measure_attention(bool(parts), parts)
        with torch.no_grad(), autocast():
            return model(x, mask)

    base = timed(forward)
    out = {PARTS[p]: max(0.0, timed(lambda: forward((p,))) - base) for p in PARTS}
    logits = forward(tuple(PARTS))
    for probe in probes:  # on the recorded forward, as on a measure step; read back as at a sync
        def once(probe=probe):
            values = probe.take(Step(1, logits, y))
            if values:
                probe.row(values)

        out[probe.name] = timed(once)
        logits = forward(tuple(PARTS))  # the model update's probe switches recording off
    model.measure_attention(False)
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"

