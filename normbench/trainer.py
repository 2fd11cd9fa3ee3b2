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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import checkpoint
from .config import RunConfig, TrainConfig
from .data import IGNORE, make_task
from .errors import NormbenchError
from .evalset import evaluate, validation_set
from .inits import profile_admin
from .model import Transformer
from .poststep import PostStep, make_post_step
from .probes import Run, Step, log_value, make_probes
from .summary import StepRecord, Trace, summarize

# a step is synchronised with the host (losses read, divergence checked) every
# SYNC_EVERY steps: every step on CPU, where reading is free, less often on GPU
SYNC_EVERY = {"cpu": 1, "cuda": 16}
ADMIN_SEED = 7_919  # added to the run's seed for Admin's profiling batch


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
    ceiling (it stops there), or when it ends above it (see ``finish``), and in either case its
    loss has *risen*: its level (the median of the last ``spike_window`` losses) is more than
    ``divergence_margin`` above the lowest level it had reached. ``diverged_step`` is the step at
    which that last stretch above the ceiling began.

    The rise is what makes it a divergence. The initial loss lies above ln(vocab) + 1 at many widths
    (docs/conventions.md, "The initial loss"), and a run that has not yet come down from it, or
    never learns (lr 1e-7), sits above or around the ceiling without having gone anywhere: it is
    not diverged (``below_ceiling_step`` null where it never came below) and ``stalled`` says it
    learned nothing.
    """

    low: float | None = None  # class defaults: a checkpoint of 0.8.0 resumes with them
    below_step: int | None = None

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
        self.low: float | None = None  # the lowest level (median of the recent losses) so far
        self.below_step: int | None = None  # the first step at or below the ceiling
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
        spike = len(self.recent) == self.recent.maxlen and loss > self.t.spike_factor * statistics.median(self.recent)
        if spike and not self.in_spike:  # consecutive spiking steps are one spike
            self.spike_steps.append(step)
        self.in_spike = spike
        self.recent.append(loss)
        level = statistics.median(self.recent)
        self.low = level if self.low is None else min(self.low, level)
        if loss <= self.ceiling:
            self.above_since = None
            self.below_step = self.below_step or step
            return False
        self.unstable_steps += 1
        self.above_since = self.above_since or step
        if step - self.above_since + 1 >= self.t.divergence_patience and self.rose():
            return self._diverge(self.above_since, f"loss above ln(vocab) + margin = {self.ceiling:.3f} for "
                                                  f"{self.t.divergence_patience} consecutive steps")
        return False

    def rose(self) -> bool:
        """The loss's level is more than divergence_margin above the lowest it reached."""
        return bool(self.recent) and statistics.median(self.recent) > self.low + self.t.divergence_margin

    def finish(self) -> None:
        """At the end of a run that was not stopped: one that ends above the ceiling, risen, has diverged."""
        if self.diverged_step is None and self.above_since is not None and self.rose():
            self._diverge(self.above_since, f"ended above ln(vocab) + margin = {self.ceiling:.3f} "
                                            f"(since step {self.above_since})")

    def _diverge(self, step: int, reason: str) -> bool:
        self.diverged_step, self.reason = step, reason
        return True


class MetricsLog:
    """metrics.jsonl, one JSON object per step; floats to 6 significant digits (a relative 1e-6, far
    below any difference a curve shows; it halves the log), non-finite numbers as null."""

    def __init__(self, path: Path | None, trackers: list | None = None):
        self.path, self.trackers = path, trackers or []
        self.f = open(path, "w") if path else None

    def write(self, row: dict) -> None:
        row = {k: log_value(v) for k, v in row.items()}
        if self.f:
            self.f.write(json.dumps(row, separators=(",", ":")) + "\n")
        for t in self.trackers:
            t.log(row)

    def flush(self) -> None:
        if self.f:
            self.f.flush()

    def restart(self, text: str) -> None:
        """Start again from a checkpoint's copy of the log (resume); the trackers get those rows again,
        so a dashboard holds the whole run."""
        if self.f:
            self.f.close()
            self.path.write_text(text)
            self.f = open(self.path, "a")
        for line in text.splitlines():
            row = json.loads(line)
            for t in self.trackers:
                t.log(row)

    def close(self) -> None:
        if self.f:
            self.f.close()


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


@dataclass
class Session:
    """One run's state between setup, loop and summary."""
    cfg: RunConfig
    device: torch.device
    model: Transformer
    fwd: Callable  # the model, compiled or not (same parameters)
    opt: torch.optim.Optimizer
    params: list
    gen: torch.Generator  # the training batches' stream
    run: Run  # what the probes read
    probes: dict  # when -> [Probe] (probes.make_probes)
    stab: Stability
    log: MetricsLog
    post_step: list[PostStep] = field(default_factory=list)  # QK-Clip, nGPT's projection (poststep.py)
    on_checkpoint: Callable | None = None  # called with each checkpoint's path
    trace: Trace = field(default_factory=Trace)
    tokens: int = 0
    eval_s: float = 0.0


def setup(cfg: RunConfig, run_dir: Path | None, measure: bool) -> Session:
    """The task, the model, the optimizer, the validation set and the probes, in the order that fixes
    every random draw (the seed, the init, the batches)."""
    device = resolve_device(cfg.device)
    m, t = cfg.model, cfg.train
    torch.manual_seed(cfg.seed)
    # a BPE is trained once per corpus and kept beside the sweep's runs (RESULTS/.cache/bpe) when the run
    # folder is a sweep's (it holds its config.yaml); elsewhere (a Ray worker's temporary folder) the user's cache
    in_results = run_dir is not None and (run_dir / "config.yaml").exists()
    task = make_task(cfg.data, device, cache=run_dir.parent.parent / ".cache" / "bpe" if in_results else None)
    model = Transformer(m, task.vocab_size, cfg.data.seq_len, norm_warmup=t.warmup_steps,
                        bidirectional=not task.causal).to(device)
    if m.init == "admin":  # Admin's profiling forward, on a batch of its own (the training stream is untouched)
        probe = task.batch("train", t.batch_size, task.generator(cfg.seed + ADMIN_SEED))
        profile_admin(model, probe.x, probe.mask)
    post_step = make_post_step(cfg)
    for hook in post_step:
        hook.prepare(model)
    groups = model.param_groups(t.weight_decay, t.norm_weight_decay)
    params = [p for g in groups for p in g["params"]]
    # fused AdamW: one kernel for all parameters (4.5 -> 0.9 ms a step on the default model, CPU)
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused, foreach=not fused)
    autocast = autocast_for(device, t.precision)
    fwd = torch.compile(model) if t.compile else model  # same parameters; evaluation stays eager
    gen = task.generator(cfg.seed)
    evalset = validation_set(task, t.eval_tokens)
    sized = evalset.batches(t.batch_size) if measure else []  # the validation set cut as training batches
    run = Run(cfg, model, task, evalset, autocast, sized)
    return Session(cfg, device, model, fwd, opt, params, gen, run, make_probes(run) if measure else {},
                   Stability(t, task.vocab_size), MetricsLog(run_dir / "metrics.jsonl" if run_dir else None),
                   post_step)


def flush(s: Session, pending: list[StepRecord]) -> bool:
    """Read pending steps back to the host and log them; True if the run diverged (steps after it,
    pending on a GPU, were trained but are not logged)."""
    for r in pending:
        row = s.trace.record(r)
        s.log.write(row)
        if s.stab.update(r.step, row["loss"], row.get("grad_norm")):
            return True
    return False


def train_step(s: Session, step: int, measure: bool) -> StepRecord:
    """One optimizer step; its record holds device tensors (nothing here waits for the GPU)."""
    t = s.cfg.train
    lr = lr_at(step - 1, t)
    for g in s.opt.param_groups:
        g["lr"] = lr
    probe = measure and (step - 1) % t.measure_every == 0
    s.model.measure_attention(probe)
    x, y, mask = s.run.task.batch("train", t.batch_size, s.gen)
    with s.run.autocast():
        logits = s.fwd(x, mask)
    loss, objective = lm_loss(logits, y, t.z_loss)
    s.opt.zero_grad(set_to_none=True)
    objective.backward()
    if step == 1:  # before clipping touches the gradients
        for p in s.probes.get("first_step", []):
            s.trace.add(p, step, p.take(Step(step, logits, y)))
    gnorm = global_grad_norm(s.params, t.grad_clip) if measure or t.grad_clip > 0 else None
    s.opt.step()
    for hook in s.post_step:
        hook.after_step(s.model)
    rec = StepRecord(step, lr, loss.detach(), None if gnorm is None else gnorm.detach())
    if probe:
        for p in s.probes.get("measure", []):
            rec.values[p] = p.take(Step(step, logits, y))
    return rec


def evaluate_step(s: Session, step: int) -> None:
    """The validation loss, and the evaluation probes (BatchNorm's batch-statistics loss)."""
    e0 = time.perf_counter()
    val = evaluate(s.model, s.run.evalset.chunks, s.run.autocast)
    s.trace.val_losses.append((step, val))
    row = {"step": step, "val_loss": val}
    for p in s.probes.get("eval", []):
        row.update(s.trace.add(p, step, p.take_now(s.run)))
    s.log.write(row)
    s.eval_s += time.perf_counter() - e0


def loop(s: Session, on_progress, measure: bool, run_dir: Path | None = None, start: int = 0,
         train_s: float = 0.0) -> float:
    """Train from step ``start`` + 1 to the end or to a divergence, with a checkpoint every
    train.checkpoint_every steps; the training seconds (evaluation excluded, ``train_s`` before)."""
    t = s.cfg.train
    sync_every = SYNC_EVERY.get(s.device.type, 1)
    pending: list[StepRecord] = []
    tokens_per_step = t.batch_size * s.cfg.data.seq_len
    s.model.train()
    loop0 = time.perf_counter() - train_s - s.eval_s  # so that the clock goes on where it stopped
    for step in range(start + 1, t.steps + 1):
        pending.append(train_step(s, step, measure))
        s.tokens += tokens_per_step
        is_eval = step % t.eval_every == 0 or step == t.steps
        is_ckpt = bool(t.checkpoint_every) and step % t.checkpoint_every == 0 and step < t.steps and run_dir
        if len(pending) >= sync_every or is_eval or is_ckpt:
            diverged, pending = flush(s, pending), []
            if diverged:
                break
            if on_progress:
                on_progress(step, s.trace.losses[-1], s.tokens / (time.perf_counter() - loop0 - s.eval_s))
        if is_eval:
            evaluate_step(s, step)
        if is_ckpt:
            path = checkpoint.save(s, run_dir, step, time.perf_counter() - loop0 - s.eval_s)
            if s.on_checkpoint:
                s.on_checkpoint(path)
    else:
        s.stab.finish()  # ran to the end: diverged if it ended above the ceiling
    return time.perf_counter() - loop0 - s.eval_s


def train(cfg: RunConfig, run_dir: Path | None = None, *, threads: int | None = None,
          on_progress: Callable[[int, float, float], None] | None = None, measure: bool = True,
          on_checkpoint: Callable[[Path], None] | None = None, trackers: list | None = None) -> dict:
    """Train one configuration; returns the summary. ``on_progress(step, loss, tokens_per_s)`` is
    called at each host sync. ``measure=False`` switches the stability measurements off (gradient
    norms and every probe; divergence on the loss alone): for ``normbench bench`` only, to price them.
    A run folder holding a checkpoint of this run resumes from it (checkpoint.py); ``on_checkpoint(path)``
    is called after each one is written (a Ray worker sends it to the driver). ``trackers``: live
    loggers (trackers.py), fed every metrics.jsonl row."""
    wall0, started_at = time.perf_counter(), time.time()
    if threads:
        torch.set_num_threads(threads)
    s = setup(cfg, run_dir, measure)
    s.on_checkpoint, s.log.trackers = on_checkpoint, trackers or []
    state = checkpoint.load(run_dir, cfg.run_id())
    start = checkpoint.restore(s, state, run_dir) if state is not None else 0
    try:
        train_s = loop(s, on_progress, measure, run_dir, start, state["train_s"] if state else 0.0)
    finally:
        s.model.measure_attention(False)
        s.log.close()
    for p in s.probes.get("end", []):
        s.trace.add(p, len(s.trace.losses), p.take_now(s.run))
    probes = [p for ps in s.probes.values() for p in ps]
    summary = summarize(cfg, s.trace, s.stab, probes, s.run, s.params, s.device,
                        resolve_precision(s.device, cfg.train.precision), s.tokens, train_s, wall0, started_at,
                        resumed_from=start or None)
    if run_dir is not None and cfg.train.save_final:
        checkpoint.save_weights(s, run_dir, len(s.trace.losses))
    return summary
