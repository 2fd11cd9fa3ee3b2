"""A run's measurements on the host: the per-step record read back from the device (``StepRecord``),
what a run accumulates (``Trace``), and the summary.json they become (``summarize``). The trainer
(trainer.py) fills them; this file says what every summary key is made of."""
from __future__ import annotations

import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from .version import __version__
from .evalset import unigram_loss
from .measures import SUMMARY_KEYS
from .numbers import finite_or_none
from .provenance import cpu_info


def plugin_record(norm: str) -> dict | None:
    """Where a plugin norm came from: the file and its text's SHA-256 (part of the run id)."""
    from .registry import plugin_of

    plugin = plugin_of(norm)
    return None if plugin is None else {"norm": norm, "path": plugin.path, "sha256": plugin.sha256}


STALL_MARGIN = 0.05  # nats: a run that ends within this of the unigram loss learned only token frequencies


@dataclass
class StepRecord:
    """One trained step's values, still on the device until the trainer's ``flush`` reads them back."""
    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor | None = None
    values: dict = field(default_factory=dict)  # Probe -> its device values (measure and first steps)


@dataclass
class Trace:
    """The host-side measurements a run accumulates; ``summarize`` turns them into summary keys."""
    losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)  # (step, loss)
    rows: dict = field(default_factory=dict)  # probe name -> [(step, its host row)]

    def add(self, probe, step: int, values: dict) -> dict:
        """A probe's values, read back: kept for its summary; returns its metrics.jsonl columns."""
        if not values:  # nothing measured on this step (a norm that kept no statistics this time)
            return {}
        host = probe.row(values)
        self.rows.setdefault(probe.name, []).append((step, host))
        return {k: v for k, v in host.items() if k not in probe.hidden} if probe.logged else {}

    def record(self, r: StepRecord) -> dict:
        """Read one step back to the host; its metrics.jsonl row."""
        row = {"step": r.step, "loss": float(r.loss), "lr": r.lr}
        if r.grad_norm is not None:
            row["grad_norm"] = float(r.grad_norm)
        for probe, values in r.values.items():
            row.update(self.add(probe, r.step, values))
        self.losses.append(row["loss"])
        return row


def summarize(cfg, trace: Trace, stab, probes: list, run, params, device, precision: str, tokens, train_s,
              wall0, started_at, resumed_from: int | None = None) -> dict:
    """The summary.json of a run (written last by the caller), its keys in measures.py's order."""
    t, task, evalset = cfg.train, run.task, run.evalset
    diverged = stab.diverged_step is not None
    run.diverged, run.steps_done = diverged, len(trace.losses)
    run.last_val = trace.val_losses[-1][1] if trace.val_losses else None
    finite_vals = [v for _, v in trace.val_losses if math.isfinite(v)]
    tail = [v for v in trace.losses[-10:] if math.isfinite(v)]
    final_val = None if diverged or not trace.val_losses else finite_or_none(trace.val_losses[-1][1])
    unigram = finite_or_none(unigram_loss(task, evalset))
    peak_mem = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10))
    best_val = min(finite_vals) if finite_vals else None
    out = {
        "run_id": cfg.run_id(),
        **bits_per_byte(final_val, best_val, evalset),
        "final_val_loss": final_val,
        "best_val_loss": min(finite_vals) if finite_vals else None,
        "final_train_loss": None if diverged or not tail else sum(tail) / len(tail),
        "initial_loss": finite_or_none(trace.losses[0]) if trace.losses else None,
        "eval_tokens": evalset.tokens,
        "unigram_loss": unigram,
        "stalled": stalled(diverged, final_val, unigram),
        "below_ceiling_step": stab.below_step,
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
        "precision_used": precision,
        "threads": torch.get_num_threads(),
        "resumed_from": resumed_from,
        "versions": {"normbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    for probe in probes:
        out.update(probe.summary(trace.rows.get(probe.name, []), run))
    return {k: out.get(k) for k in SUMMARY_KEYS}


def stalled(diverged: bool, final_val, unigram) -> bool | None:
    """Did the run learn nothing beyond the token frequencies? True when it ends at or above the unigram
    loss less STALL_MARGIN, a diverged run included (it ends above the ceiling, above the unigram);
    null only where the unigram loss is undefined (or a run that did not diverge has no final loss)."""
    if unigram is None:
        return None
    if diverged:
        return True
    return None if final_val is None else final_val >= unigram - STALL_MARGIN


def bits_per_byte(final_val, best_val, evalset) -> dict:
    """The validation losses in bits per UTF-8 byte: nats per token x tokens / (bytes x ln 2), the
    enwik8/text8 convention, so character, byte and BPE arms compare on one scale."""
    scale = evalset.tokens / (evalset.bytes * math.log(2)) if evalset.bytes else None
    return {"final_val_bpb": None if scale is None or final_val is None else final_val * scale,
            "best_val_bpb": None if scale is None or best_val is None else best_val * scale,
            "eval_bytes": evalset.bytes}
