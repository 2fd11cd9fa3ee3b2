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
import platform
import resource
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import __version__
from .config import RunConfig, TrainConfig
from .data import IGNORE, make_task
from .evalset import mean_loss, unigram_loss, validation_set
from .errors import NormbenchError
from .model import Transformer
from .provenance import cpu_info

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


def plugin_record(norm: str) -> dict | None:
    """Where a plugin norm came from: the file and its text's SHA-256 (part of the run id)."""
    from .registry import plugin_of

    plugin = plugin_of(norm)
    return None if plugin is None else {"norm": norm, "path": plugin.path, "sha256": plugin.sha256}


def resid_summary(profiles: list[list]) -> dict:
    """The residual stream's RMS per block at the first and the last measure step, and its last block's
    growth between them (Sun et al. 2025's curse of depth: Pre-LN's residual grows with depth)."""
    if not profiles:
        return {"resid_rms_by_layer_init": None, "resid_rms_by_layer": None, "resid_rms_last": None,
                "resid_rms_growth": None}
    first, last = profiles[0], profiles[-1]
    growth = last[-1] / first[-1] if first[-1] and last[-1] is not None else None
    return {"resid_rms_by_layer_init": first, "resid_rms_by_layer": last, "resid_rms_last": last[-1],
            "resid_rms_growth": finite_or_none(growth)}


def finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def log_value(v):
    """A metrics.jsonl value: floats rounded to 6 significant digits, non-finite ones null."""
    v = finite_or_none(v)
    return float(f"{v:.6g}") if isinstance(v, float) else v


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


STALL_MARGIN = 0.05  # nats: a run that ends within this of the unigram loss learned only token frequencies


@dataclass
class StepRecord:
    """One trained step's values, still on the device until ``flush`` reads them back."""
    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor | None = None
    attn_logit: torch.Tensor | None = None  # on measure steps
    model_update: torch.Tensor | None = None
    resid_rms: torch.Tensor | None = None  # (layers,)
    log_z: torch.Tensor | None = None  # mean log-partition of the output logits over real targets
    bn_dev: torch.Tensor | None = None  # (2,) batch-vs-running mean and variance distance


@dataclass
class Trace:
    """The host-side measurements a run accumulates; ``summary`` turns them into summary keys."""
    losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    val_batch_stats: list = field(default_factory=list)
    attn_max: list = field(default_factory=list)
    updates: list = field(default_factory=list)
    resid: list = field(default_factory=list)
    log_z: list = field(default_factory=list)
    bn_dev: list = field(default_factory=list)  # (step, mean dev, var dev)
    init_profile: list = field(default_factory=list)

    def record(self, r: StepRecord) -> dict:
        """Read one step back to the host; its metrics.jsonl row."""
        row = {"step": r.step, "loss": float(r.loss), "lr": r.lr}
        if r.grad_norm is not None:
            row["grad_norm"] = float(r.grad_norm)
        if r.attn_logit is not None:
            row["attn_logit_max"] = float(r.attn_logit)
            self.attn_max.append(row["attn_logit_max"])
        if r.model_update is not None:
            row["model_update"] = float(r.model_update)
            self.updates.append(row["model_update"])
        if r.resid_rms is not None:  # the residual stream's RMS after each block (the curse of depth)
            row["resid_rms"] = [log_value(v) for v in r.resid_rms.tolist()]
            self.resid.append(row["resid_rms"])
        if r.log_z is not None:  # Wortsman et al.'s output-logit drift, what z-loss targets
            row["log_z"] = float(r.log_z)
            self.log_z.append(row["log_z"])
        if r.bn_dev is not None:  # Shen et al.'s fluctuation of batch statistics
            mean_dev, var_dev = (float(v) for v in r.bn_dev.tolist())
            row["bn_mean_dev"], row["bn_var_dev"] = mean_dev, var_dev
            self.bn_dev.append((r.step, mean_dev, var_dev))
        self.losses.append(row["loss"])
        return row


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
    bn_batches = evalset.batches(t.batch_size) if measure and batch_norms(model) else []
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
        x0, _, mask0 = (bn_batches or evalset.batches(t.batch_size))[0]
        leak = causal_leak(model, x0, mask0, task.vocab_size, autocast)
    return summarize(cfg, trace, stab, task, model, params, device, evalset, leak, tokens, train_s, wall0,
                     started_at)


def summarize(cfg, trace: Trace, stab: Stability, task, model, params, device, evalset, leak, tokens, train_s,
              wall0, started_at) -> dict:
    """The summary.json of a run (written last by the caller)."""
    t = cfg.train
    diverged = stab.diverged_step is not None
    finite_vals = [v for _, v in trace.val_losses if math.isfinite(v)]
    tail = [v for v in trace.losses[-10:] if math.isfinite(v)]
    final_val = None if diverged or not trace.val_losses else finite_or_none(trace.val_losses[-1][1])
    unigram = finite_or_none(unigram_loss(task, evalset))
    vbs = trace.val_batch_stats
    peak_mem = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10))
    return {
        "run_id": cfg.run_id(),
        "final_val_loss": final_val,
        "best_val_loss": min(finite_vals) if finite_vals else None,
        "final_train_loss": None if diverged or not tail else sum(tail) / len(tail),
        "initial_loss": finite_or_none(trace.losses[0]) if trace.losses else None,
        "eval_tokens": evalset.tokens,
        "unigram_loss": unigram,
        "stalled": None if diverged or final_val is None or unigram is None else final_val >= unigram - STALL_MARGIN,
        "diverged": diverged,
        "diverged_step": stab.diverged_step,
        "divergence_reason": stab.reason,
        "steps_done": len(trace.losses),
        "unstable_steps": stab.unstable_steps,
        "max_loss": stab.max_loss,
        "loss_spikes": len(stab.spike_steps),
        "spike_steps": stab.spike_steps,
        "max_grad_norm": max(stab.grad_norms) if stab.grad_norms else None,
        "median_grad_norm": statistics.median(stab.grad_norms) if stab.grad_norms else None,
        "clip_fraction": (sum(g > t.grad_clip for g in stab.grad_norms) / len(stab.grad_norms)
                          if t.grad_clip > 0 and stab.grad_norms else None),
        "max_attn_logit": max((a for a in trace.attn_max if math.isfinite(a)), default=None),
        "max_model_update": max((u for u in trace.updates if math.isfinite(u)), default=None),
        **resid_summary(trace.resid),
        **log_z_summary(trace.log_z),
        **bn_dev_summary(trace.bn_dev, len(trace.losses)),
        "final_val_loss_batch_stats": None if diverged or not vbs else finite_or_none(vbs[-1]),
        "bn_eval_gap": (None if diverged or not vbs or not trace.val_losses
                        else finite_or_none(trace.val_losses[-1][1] - vbs[-1])),
        "train_causal_leak": None if leak is None else finite_or_none(leak),
        "grad_norm_init_by_layer": [finite_or_none(g) for g in trace.init_profile],
        "val_losses": [[s, finite_or_none(v)] for s, v in trace.val_losses],
        "tokens_per_s": tokens / train_s if train_s > 0 else None,
        "wall_s": time.perf_counter() - wall0,
        "started_at": started_at,
        "ended_at": time.time(),
        "params": sum(p.numel() for p in params),
        "vocab_size": task.vocab_size,
        "peak_mem_mb": peak_mem,
        "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "corpus": task.fingerprint,
        "plugin": plugin_record(cfg.model.norm),
        "device": str(device),
        "cpu": cpu_info(),  # bf16 speed and an unstable run's exact numbers depend on it
        "precision_used": resolve_precision(device, t.precision),
        "threads": torch.get_num_threads(),
        "versions": {"normbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def log_z_summary(log_z: list[float]) -> dict:
    """The output log-partition log Z (mean over real targets of a measure step's training batch):
    its largest |value| over training and its value at the last measure step (z-loss keeps it near 0)."""
    finite = [v for v in log_z if math.isfinite(v)]
    return {"max_abs_log_z": max((abs(v) for v in finite), default=None),
            "final_log_z": finite_or_none(log_z[-1]) if log_z else None}


def bn_dev_summary(devs: list[tuple], steps: int) -> dict:
    """Shen et al. 2020's fluctuation: the batch-vs-running distances of mean and variance, averaged
    over the measure steps of the second half of training (the running statistics start at 0 and 1,
    so the first steps measure their init, not the batches' fluctuation)."""
    late = [(m, v) for s, m, v in devs if s > steps / 2]
    if not late:
        return {"bn_mean_dev": None, "bn_var_dev": None}
    means = [m for m, _ in late if math.isfinite(m)]
    return {"bn_mean_dev": sum(means) / len(means) if means else None,
            "bn_var_dev": finite_or_none(sum(v for _, v in late) / len(late))}
