"""One training run, with its stability measurements. Knows nothing of sweeps.

``train(cfg, run_dir)`` builds the task and model, trains, writes
``run_dir/metrics.jsonl`` as it goes and returns the summary dict (the caller
writes ``summary.json``, last). Divergence is a result: the run stops early and
says so in the summary, it does not raise.
"""
from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .config import RunConfig, TrainConfig
from .data import IGNORE, make_task
from .evalset import mean_loss, validation_set
from .errors import NormbenchError
from .model import Transformer
from .summary import StepRecord, Trace, finite_or_none, log_value, summarize

# a step is synchronised with the host (losses read, divergence checked) every
# SYNC_EVERY steps: every step on CPU, where reading is free, less often on GPU
SYNC_EVERY = {"cpu": 1, "cuda": 16}
UPDATE_PROBE_SEQS = 8  # sequences in the model-update probe batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NormbenchError("device is cuda but torch sees no CUDA device; use device: auto or cpu", key="device")
    return torch.device(name)


def lr_at(step: int, t: TrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then constant, cosine or linear decay."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    floor = t.lr * t.min_lr_ratio
    if t.schedule == "cosine":
        return floor + (t.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return t.lr - (t.lr - floor) * progress


def lm_loss(logits: torch.Tensor, y: torch.Tensor, z_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy over non-ignored targets, the loss to optimise with z-loss added)."""
    logits = logits.float().flatten(0, 1)  # (B*T, V)
    y = y.flatten()
    ce = F.cross_entropy(logits, y, ignore_index=IGNORE)
    if not z_loss:
        return ce, ce
    lse = torch.logsumexp(logits[y != IGNORE], dim=-1)
    return ce, ce + z_loss * lse.pow(2).mean()


class Stability:
    """Divergence, excursions and loss spikes, fed one step at a time with host floats.

    Divergence is judged as the literature judges it (runs train to the end; a final loss is
    capped at the loss at initialisation): only a non-finite loss or gradient norm stops a run
    at once. A loss above the ceiling ln(vocab) + margin is an *excursion*: counted, and the run
    goes on; the run has diverged when ``divergence_patience`` consecutive steps are above the
    ceiling (it stops there), or when it ends above it (see ``finish``). ``diverged_step`` is
    the step at which that last stretch above the ceiling began.
    """

    def __init__(self, t: TrainConfig, vocab_size: int):
        self.t = t
        self.ceiling = math.log(vocab_size) + t.divergence_margin
        self.recent: deque[float] = deque(maxlen=t.spike_window)
        self.spike_steps: list[int] = []
        self.in_spike = False
        self.grad_norms: list[float] = []
        self.unstable_steps = 0  # steps with the loss above the ceiling
        self.max_loss: float | None = None  # the largest finite loss
        self.above_since: int | None = None  # first step of the current stretch above the ceiling
        self.diverged_step: int | None = None
        self.reason: str | None = None

    def update(self, step: int, loss: float, grad_norm: float | None) -> bool:
        """Record one step (1-based); True when the run has diverged. ``grad_norm`` None: not measured."""
        if not math.isfinite(loss):
            return self._diverge(step, "non-finite loss")
        if grad_norm is not None and not math.isfinite(grad_norm):
            return self._diverge(step, "non-finite gradient norm")
        self.max_loss = loss if self.max_loss is None else max(self.max_loss, loss)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)
        if loss > self.ceiling:
            self.unstable_steps += 1
            self.above_since = self.above_since or step
            if step - self.above_since + 1 >= self.t.divergence_patience:
                return self._diverge(self.above_since, f"loss above ln(vocab) + margin = {self.ceiling:.3f} for "
                                                      f"{self.t.divergence_patience} consecutive steps")
        else:
            self.above_since = None
        spike = len(self.recent) == self.recent.maxlen and loss > self.t.spike_factor * statistics.median(self.recent)
        if spike and not self.in_spike:  # consecutive spiking steps are one spike
            self.spike_steps.append(step)
        self.in_spike = spike
        self.recent.append(loss)
        return False

    def finish(self) -> None:
        """At the end of a run that was not stopped: one that ends above the ceiling has diverged."""
        if self.diverged_step is None and self.above_since is not None:
            self._diverge(self.above_since, f"ended above ln(vocab) + margin = {self.ceiling:.3f} "
                                            f"(since step {self.above_since})")

    def _diverge(self, step: int, reason: str) -> bool:
        self.diverged_step, self.reason = step, reason
        return True


class MetricsLog:
    """metrics.jsonl, one JSON object per step; floats to 6 significant digits (a relative 1e-6, far
    below any difference a curve shows; it halves the log), non-finite numbers as null."""

    def __init__(self, path: Path | None):
        self.f = open(path, "w") if path else None

    def write(self, row: dict) -> None:
        if self.f:
            self.f.write(json.dumps({k: log_value(v) for k, v in row.items()}, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self.f:
            self.f.close()


@torch.no_grad()
def evaluate(model, batches, autocast) -> float:
    """Token-weighted mean loss over ``batches`` in eval mode (BatchNorm normalises with its running
    statistics)."""
    model.eval()
    try:
        return mean_loss(model, batches, autocast)
    finally:
        model.train()


def batch_norms(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def evaluate_batch_stats(model, batches, autocast) -> float | None:
    """The same loss with every BatchNorm normalising by the statistics of the batch in hand, as
    in training (everything else in eval mode: no dropout); None without BatchNorm. The running
    statistics are restored, so the measurement changes nothing. Eval-mode loss minus this is
    the train/eval gap of BatchNorm: how far its running statistics are from the batches'."""
    bns = batch_norms(model)
    if not bns:
        return None
    saved = [{k: b.clone() for k, b in bn.named_buffers()} for bn in bns]
    model.eval()
    for bn in bns:
        bn.train()
    try:
        return mean_loss(model, batches, autocast)
    finally:
        for bn, state in zip(bns, saved):
            for k, b in bn.named_buffers():
                b.copy_(state[k])
        model.train()


@torch.no_grad()
def model_output(model, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The logits on the real positions of a fixed batch, eval mode, fp32: F(x, θ) for the model update."""
    model.eval()
    try:
        out = model(x, mask).float()
    finally:
        model.train()
    return out[mask] if mask is not None else out.reshape(-1, out.shape[-1])


def model_update(model, x: torch.Tensor, mask: torch.Tensor | None, f0: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2022's model update ‖F(x, θ_t) − F(x, θ_0)‖ as the RMS over logits (so it does not
    grow with the vocabulary or the probe batch); a 0-dim tensor, read back with the step's metrics."""
    return torch.linalg.vector_norm(model_output(model, x, mask) - f0) / f0.numel() ** 0.5


@torch.no_grad()
def causal_leak(model, x: torch.Tensor, mask: torch.Tensor | None, vocab_size: int, autocast) -> float:
    """How much the training-mode outputs at positions <= t move when every token after t changes
    (t = T // 2, in every sequence of the batch): the RMS change of those logits over real positions.

    A causal LM must give 0 (to float rounding); a norm whose statistics mix positions (BatchNorm
    in training mode) does not, and its training loss is then optimistic. Both forwards use the
    same dropout masks; buffers (BatchNorm's running statistics) are restored, so training is
    unchanged."""
    T = x.shape[1]
    t = T // 2
    x2 = x.clone()
    shift = torch.randint(1, vocab_size, x[:, t + 1:].shape, generator=torch.Generator().manual_seed(0))
    x2[:, t + 1:] = (x[:, t + 1:] + shift.to(x.device)) % vocab_size  # every later token differs
    saved = {k: b.clone() for k, b in model.named_buffers()}
    was_training = model.training
    model.train()
    outs = []

    def restore():
        for k, b in model.named_buffers():
            b.copy_(saved[k])

    try:
        for inp in (x, x2):
            restore()  # both forwards from the same state (a training-mode forward updates running stats)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(0)  # the same dropout masks in both forwards
                with autocast():
                    outs.append(model(inp, mask)[:, :t + 1].float())  # (B, t+1, V)
    finally:
        restore()
        model.train(was_training)
    diff = outs[0] - outs[1]
    diff = diff[mask[:, :t + 1]] if mask is not None else diff
    return diff.pow(2).mean().sqrt().item()


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` is bf16 on a CUDA GPU with bf16 support and fp32 elsewhere (CPUs without bf16
    units run bf16 matmuls an order of magnitude slower than fp32)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast_for(device: torch.device, precision: str):
    if resolve_precision(device, precision) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def global_grad_norm(params, clip: float) -> torch.Tensor:
    """The global gradient norm before clipping (and clip when ``clip`` > 0)."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def probe_step(model, ux, umask, f0, logits, y) -> dict:
    """The measurements of a measure step, as device tensors (read back with the step)."""
    out = {"attn_logit": model.attention_logit_max(), "resid_rms": model.resid_rms_by_layer(),
           "bn_dev": model.bn_stat_dev()}
    with torch.no_grad():
        out["log_z"] = torch.logsumexp(logits.detach().float(), dim=-1)[y != IGNORE].mean()
    model.measure_attention(False)  # the update's forward must not record logits
    out["model_update"] = model_update(model, ux, umask, f0)
    return out


def train(cfg: RunConfig, run_dir: Path | None = None, *, threads: int | None = None,
          on_progress: Callable[[int, float, float], None] | None = None, measure: bool = True) -> dict:
    """Train one configuration; returns the summary. ``on_progress(step, loss, tokens_per_s)`` is
    called at each host sync. ``measure=False`` switches the stability measurements off (gradient
    norms, attention logits, the per-layer profile; divergence on the loss alone): for
    ``normbench bench`` only, to price them."""
    wall0, started_at = time.perf_counter(), time.time()
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    m, t = cfg.model, cfg.train
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.data, device)
    model = Transformer(m, task.vocab_size, cfg.data.seq_len, norm_warmup=t.warmup_steps).to(device)
    groups = model.param_groups(t.weight_decay)
    params = [p for g in groups for p in g["params"]]
    # fused AdamW: one kernel for all parameters (4.5 -> 0.9 ms a step on the default model, CPU)
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused, foreach=not fused)
    autocast = autocast_for(device, t.precision)
    fwd = torch.compile(model) if t.compile else model  # same parameters; evaluation stays eager
    gen = task.generator(cfg.seed)
    evalset = validation_set(task, t.eval_tokens)
    eval_chunks = evalset.chunks
    sized = evalset.batches(t.batch_size) if measure else []  # the validation set cut as training batches
    bn_batches = sized if batch_norms(model) else []
    # model-update probe: the first 8 validation sequences, and F(x, θ_0) on them
    ux, _, umask = evalset.first(UPDATE_PROBE_SEQS)
    f0 = model_output(model, ux, umask) if measure else None
    sync_every = SYNC_EVERY.get(device.type, 1)
    stab = Stability(t, task.vocab_size)
    log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None)
    trace = Trace()
    pending: list[StepRecord] = []
    tokens, step = 0, 0
    tokens_per_step = t.batch_size * cfg.data.seq_len

    def flush() -> bool:
        """Read pending steps back to the host; True if the run diverged."""
        nonlocal pending
        rows, pending = pending, []
        for r in rows:
            row = trace.record(r)
            log.write(row)
            if stab.update(r.step, row["loss"], row.get("grad_norm")):
                return True  # steps after it (pending on GPU) were trained but are not logged
        return False

    model.train()
    loop0, eval_s = time.perf_counter(), 0.0
    try:
        for step in range(1, t.steps + 1):
            lr = lr_at(step - 1, t)
            for g in opt.param_groups:
                g["lr"] = lr
            probe = measure and (step - 1) % t.measure_every == 0
            model.measure_attention(probe)
            x, y, mask = task.batch("train", t.batch_size, gen)
            with autocast():
                logits = fwd(x, mask)
            loss, objective = lm_loss(logits, y, t.z_loss)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            if step == 1 and measure:  # Xiong et al. 2020: per-layer FFN gradient norm at initialisation
                trace.init_profile = [torch.linalg.vector_norm(torch.stack([w.grad.norm() for w in ws])).item()
                                      for ws in model.ffn_weights()]
            gnorm = global_grad_norm(params, t.grad_clip) if measure or t.grad_clip > 0 else None
            opt.step()
            rec = StepRecord(step, lr, loss.detach(), None if gnorm is None else gnorm.detach())
            if probe:
                for k, v in probe_step(model, ux, umask, f0, logits, y).items():
                    setattr(rec, k, v)
            pending.append(rec)
            tokens += tokens_per_step
            is_eval = step % t.eval_every == 0 or step == t.steps
            if len(pending) >= sync_every or is_eval:
                if flush():
                    break
                if on_progress:
                    on_progress(step, trace.losses[-1], tokens / (time.perf_counter() - loop0 - eval_s))
            if is_eval:
                e0 = time.perf_counter()
                val = evaluate(model, eval_chunks, autocast)
                trace.val_losses.append((step, val))
                row = {"step": step, "val_loss": val}
                if bn_batches:
                    row["val_loss_batch_stats"] = evaluate_batch_stats(model, bn_batches, autocast)
                    trace.val_batch_stats.append(row["val_loss_batch_stats"])
                log.write(row)
                eval_s += time.perf_counter() - e0
        else:
            stab.finish()  # ran to the end: diverged if it ended above the ceiling
        train_s = time.perf_counter() - loop0 - eval_s
    finally:
        model.measure_attention(False)
        log.close()
    leak = None
    if measure:  # on the first training-sized batch of the validation set
        x0, _, mask0 = sized[0]
        leak = causal_leak(model, x0, mask0, task.vocab_size, autocast)
    return summarize(cfg, trace, stab, task, params, device, resolve_precision(device, t.precision), evalset, leak,
                     tokens, train_s, wall0,
                     started_at)
