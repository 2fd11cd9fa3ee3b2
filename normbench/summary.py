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

from . import __version__
from .evalset import unigram_loss
from .provenance import cpu_info


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


def summarize(cfg, trace: Trace, stab, task, params, device, precision: str, evalset, leak, tokens, train_s,
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
        "precision_used": precision,
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
