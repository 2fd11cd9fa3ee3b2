"""The code of each measurement taken during training: one ``Probe`` per entry of measures.py whose
``probe`` is set, registered in ``PROBES`` under the entry's name.

A probe is built once per run (``Probe(run)``: it may precompute, as the model update does its
F(x, θ_0)) and is then asked, at the times its entry's ``when`` names:

- ``take(step)`` on a ``measure`` or ``first_step`` step: device tensors, read back with the step's
  loss at the next host sync (nothing here synchronises the GPU); ``take_now(run)`` at an
  evaluation (``eval``) or after the last step (``end``): host values;
- ``row(values)``: the metrics.jsonl columns of its values (host floats);
- ``summary(rows, run)``: its summary.json keys, from every row it logged ``(step, row)``.

A test checks that ``summary`` returns exactly the keys its measures.py entry declares.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .data import IGNORE
from .evalset import mean_loss
from .measures import MEASUREMENTS
from .numbers import finite_or_none

UPDATE_PROBE_SEQS = 8  # sequences in the model-update probe batch


@dataclass
class Run:
    """What a probe may read of the run: the model, the task, the validation set, and so on."""
    cfg: object
    model: torch.nn.Module
    task: object
    evalset: object
    autocast: Callable
    sized: list  # the validation set cut as training batches
    diverged: bool = False  # set at the end, for the summaries
    steps_done: int = 0
    last_val: float | None = None  # the last validation loss, as measured


@dataclass
class Step:
    """One measured training step: its number, the logits of the training forward and the targets."""
    step: int
    logits: torch.Tensor  # (B, T, V)
    y: torch.Tensor  # (B, T)


def log_value(v):
    """A metrics.jsonl value: floats rounded to 6 significant digits, non-finite ones null."""
    v = finite_or_none(v)
    return float(f"{v:.6g}") if isinstance(v, float) else v


def finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


class Probe:
    name = ""  # the measures.py entry it implements
    logged = True  # its rows go to metrics.jsonl (else they serve the summary only)
    hidden: tuple = ()  # row keys kept for the summary but not logged (per-block lists, per-head maxima)
    parts: tuple = ()  # what the model records for it in a measured forward (model.measure_attention)

    def __init__(self, run: Run):
        self.run = run

    def active(self) -> bool:
        """False: the probe does not apply to this model (a BatchNorm probe on a LayerNorm model)."""
        return True

    def take(self, step: Step) -> dict:
        raise NotImplementedError

    def take_now(self, run: Run) -> dict:
        raise NotImplementedError

    def row(self, values: dict) -> dict:
        return {k: float(v) for k, v in values.items()}

    def summary(self, rows: list[tuple[int, dict]], run: Run) -> dict:
        raise NotImplementedError


class AttentionLogits(Probe):
    parts = ("attention",)
    name = "attention logits"
    hidden = ("by_head",)

    def take(self, step):
        stats = self.run.model.attention_stats()
        return {"attn_logit_max": stats[..., 0].amax(), "attn_logit_top": stats[..., 3].amax(),
                "by_head": stats[..., 0]}

    def row(self, values):
        return {"attn_logit_max": float(values["attn_logit_max"]), "attn_logit_top": float(values["attn_logit_top"]),
                "by_head": values["by_head"].tolist()}

    def summary(self, rows, run):
        heads = [r["by_head"] for _, r in rows]
        by_head = [[log_value(max(finite(h[i][j] for h in heads), default=math.nan)) for j in range(len(heads[0][i]))]
                   for i in range(len(heads[0]))] if heads else None
        return {"max_attn_logit": max(finite(r["attn_logit_max"] for _, r in rows), default=None),
                "max_attn_logit_signed": max(finite(r.get("attn_logit_top") for _, r in rows), default=None),
                "attn_logit_by_head": by_head}


class PerBlock(Probe):
    """A statistic of the residual stream per block (``residual_stats``' column ``col``): its largest
    over the blocks each measure step, its profile at the last (``by_layer``) and, with ``peak``, its
    largest over blocks and training."""
    parts = ("residual",)
    col, series, by_layer, peak = 0, "", "", ""
    hidden = ("profile",)

    def take(self, step):
        return {"profile": self.run.model.resid_stats_by_layer()[:, self.col]}

    def row(self, values):
        prof = [log_value(v) for v in values["profile"].tolist()]
        return {self.series: max(finite(prof), default=None), "profile": prof}

    def summary(self, rows, run):
        return {self.by_layer: rows[-1][1]["profile"] if rows else None,
                self.peak: max(finite(r[self.series] for _, r in rows if r[self.series] is not None), default=None)}


class ActivationKurtosis(PerBlock):
    name, col, series, by_layer, peak = ("activation kurtosis", 1, "act_kurtosis_max", "act_kurtosis_by_layer",
                                         "max_act_kurtosis")


class MassiveActivations(PerBlock):
    name, col, series, by_layer, peak = ("massive activations", 2, "massive_act_max", "massive_act_by_layer",
                                         "massive_act_ratio")


class AttentionEntropy(Probe):
    parts = ("attention",)
    name = "attention entropy"
    hidden = ("by_layer",)

    def take(self, step):
        return {"by_layer": self.run.model.attention_stats()[..., 1].amin(dim=1)}  # (layers,) min over heads

    def row(self, values):
        prof = [log_value(v) for v in values["by_layer"].tolist()]
        return {"attn_entropy_min": min(finite(prof), default=None), "by_layer": prof}

    def summary(self, rows, run):
        return {"min_attn_entropy": min(finite(r["attn_entropy_min"] for _, r in rows
                                               if r["attn_entropy_min"] is not None), default=None),
                "attn_entropy_by_layer": rows[-1][1]["by_layer"] if rows else None}


SINK_THRESHOLD = 0.3  # Gu et al. 2025's epsilon


class AttentionSinks(Probe):
    parts = ("attention",)
    name = "attention sinks"

    def take(self, step):
        return {"attn_sink_share": (self.run.model.attention_stats()[..., 2] > SINK_THRESHOLD).float().mean()}

    def summary(self, rows, run):
        return {"attn_sink_share": finite_or_none(rows[-1][1]["attn_sink_share"]) if rows else None}


class RankCollapse(Probe):
    parts = ("residual",)
    name = "rank collapse"
    hidden = ("profile",)

    def take(self, step):
        return {"profile": self.run.model.resid_stats_by_layer()[:, 3]}

    def row(self, values):
        prof = [log_value(v) for v in values["profile"].tolist()]
        return {"token_cos_sim_last": prof[-1], "profile": prof}

    def summary(self, rows, run):
        if not rows:
            return {"token_cos_sim_by_layer_init": None, "token_cos_sim_by_layer": None, "token_cos_sim_last": None}
        return {"token_cos_sim_by_layer_init": rows[0][1]["profile"], "token_cos_sim_by_layer": rows[-1][1]["profile"],
                "token_cos_sim_last": rows[-1][1]["token_cos_sim_last"]}


class Saturation(Probe):
    parts = ("norms",)
    name = "saturation"

    def active(self):
        return bool(self.run.model.saturating_norms())

    def take(self, step):
        sat = self.run.model.saturation()
        return {} if sat is None else {"saturation": sat}

    def summary(self, rows, run):
        return {"saturation_share": finite_or_none(rows[-1][1]["saturation"]) if rows else None}


class ResidualStream(Probe):
    """The residual stream's RMS after each block (the curse of depth): its profile at the first and
    the last measure step, and the last block's growth between them."""
    parts = ("residual",)
    name = "residual stream"

    def take(self, step):
        return {"resid_rms": self.run.model.resid_rms_by_layer()}

    def row(self, values):
        return {"resid_rms": [log_value(v) for v in values["resid_rms"].tolist()]}

    def summary(self, rows, run):
        if not rows:
            return {"resid_rms_by_layer_init": None, "resid_rms_by_layer": None, "resid_rms_last": None,
                    "resid_rms_growth": None}
        first, last = rows[0][1]["resid_rms"], rows[-1][1]["resid_rms"]
        growth = last[-1] / first[-1] if first[-1] and last[-1] is not None else None
        return {"resid_rms_by_layer_init": first, "resid_rms_by_layer": last, "resid_rms_last": last[-1],
                "resid_rms_growth": finite_or_none(growth)}


class LogPartition(Probe):
    """Wortsman et al.'s output-logit drift, what z-loss targets: its largest |value| and its last."""
    name = "output log-partition"

    def take(self, step):
        with torch.no_grad():
            return {"log_z": torch.logsumexp(step.logits.detach().float(), dim=-1)[step.y != IGNORE].mean()}

    def summary(self, rows, run):
        log_z = [r["log_z"] for _, r in rows]
        return {"max_abs_log_z": max((abs(v) for v in finite(log_z)), default=None),
                "final_log_z": finite_or_none(log_z[-1]) if log_z else None}


class BatchNormFluctuation(Probe):
    """Shen et al. 2020's fluctuation: averaged over the measure steps of the second half of training
    (the running statistics start at 0 and 1, so the first steps measure their init)."""
    parts = ("norms",)
    name = "BatchNorm fluctuation"

    def active(self):
        return bool(self.run.model.batch_stat_norms())

    def take(self, step):
        dev = self.run.model.bn_stat_dev()
        return {} if dev is None else {"bn_dev": dev}

    def row(self, values):
        mean_dev, var_dev = (float(v) for v in values["bn_dev"].tolist())
        return {"bn_mean_dev": mean_dev, "bn_var_dev": var_dev}

    def summary(self, rows, run):
        late = [(r["bn_mean_dev"], r["bn_var_dev"]) for s, r in rows if s > run.steps_done / 2]
        if not late:
            return {"bn_mean_dev": None, "bn_var_dev": None}
        means = finite(m for m, _ in late)
        return {"bn_mean_dev": sum(means) / len(means) if means else None,
                "bn_var_dev": finite_or_none(sum(v for _, v in late) / len(late))}


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
    """‖F(x, θ_t) − F(x, θ_0)‖ as the RMS over logits; a 0-dim tensor, read back with the step's metrics."""
    return torch.linalg.vector_norm(model_output(model, x, mask) - f0) / f0.numel() ** 0.5


class ModelUpdate(Probe):
    """Wang et al. 2022's ‖F(x, θ_t) − F(x, θ_0)‖ as the RMS over logits (so it does not grow with the
    vocabulary or the probe batch), on the first 8 validation sequences. Taken last on a measure step:
    its forward must not record the training forward's logits."""
    name = "model update"

    def __init__(self, run):
        super().__init__(run)
        self.x, _, self.mask = run.evalset.first(UPDATE_PROBE_SEQS)
        self.f0 = model_output(run.model, self.x, self.mask)

    def take(self, step):
        self.run.model.measure_attention(False)  # the update's forward must not record logits
        return {"model_update": model_update(self.run.model, self.x, self.mask, self.f0)}

    def summary(self, rows, run):
        return {"max_model_update": max(finite(r["model_update"] for _, r in rows), default=None)}


class InitGradient(Probe):
    """Xiong et al. 2020: the norm of each block's FFN weight gradients on the first batch."""
    name = "gradient at initialisation"

    def take(self, step):
        return {"grad_norm_init": [torch.linalg.vector_norm(torch.stack([w.grad.norm() for w in ws])).item()
                                   for ws in self.run.model.ffn_weights()]}

    logged = False  # summary only: not a metrics.jsonl column

    def row(self, values):
        return values

    def summary(self, rows, run):
        prof = rows[0][1]["grad_norm_init"] if rows else []
        return {"grad_norm_init_by_layer": [finite_or_none(g) for g in prof]}


def batch_norms(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def evaluate_batch_stats(model, batches, autocast) -> float | None:
    """The validation loss with every BatchNorm normalising by the statistics of the batch in hand,
    as in training (everything else in eval mode: no dropout); None without BatchNorm. The running
    statistics are restored, so the measurement changes nothing. Eval-mode loss minus this is the
    train/eval gap of BatchNorm: how far its running statistics are from the batches'."""
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


class BatchNormGap(Probe):
    """BatchNorm's train/eval gap (``evaluate_batch_stats``), at each evaluation, on the validation
    set cut as training-sized batches (BatchNorm's statistics depend on the batch size)."""
    name = "BatchNorm train/eval gap"

    def active(self):
        return bool(batch_norms(self.run.model))

    def take_now(self, run):
        return {"val_loss_batch_stats": evaluate_batch_stats(run.model, run.sized, run.autocast)}

    def summary(self, rows, run):
        vals = [r["val_loss_batch_stats"] for _, r in rows]
        if run.diverged or not vals:
            return {"final_val_loss_batch_stats": None, "bn_eval_gap": None}
        return {"final_val_loss_batch_stats": finite_or_none(vals[-1]),
                "bn_eval_gap": None if run.last_val is None else finite_or_none(run.last_val - vals[-1])}


class UnpaddedValidation(Probe):
    """A padded run (data.variable_length) scored on unpadded validation windows of data.seq_len, in eval
    mode: BatchNorm's running statistics meet real tokens only there (Shen et al. 2020's pollution by
    pads shows in them, not on a validation set padded like training)."""
    name = "unpadded validation"
    logged = False  # summary only

    def active(self):
        return bool(self.run.cfg.data.variable_length)

    def take_now(self, run):
        from .evalset import evaluate, validation_set

        chunks = validation_set(run.task, run.cfg.train.eval_tokens, full=True).chunks  # once: an end probe
        return {"val_loss_unpadded": evaluate(run.model, chunks, run.autocast)}

    def summary(self, rows, run):
        if run.diverged or not rows:
            return {"final_val_loss_unpadded": None}
        return {"final_val_loss_unpadded": finite_or_none(rows[-1][1]["val_loss_unpadded"])}


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


class Causality(Probe):
    """Taken once after the last step, on the first training-sized batch of the validation set."""
    name = "causality"

    def active(self):
        return self.run.task.causal  # an encoder may see every position: nothing to leak

    def take_now(self, run):
        x0, _, mask0 = run.sized[0]
        return {"train_causal_leak": causal_leak(run.model, x0, mask0, run.task.vocab_size, run.autocast)}

    logged = False  # summary only

    def summary(self, rows, run):
        leak = rows[0][1]["train_causal_leak"] if rows else None
        return {"train_causal_leak": None if leak is None else finite_or_none(leak)}


# the measures.py entry -> its code; the trainer takes them in measures.py's order
PROBES: dict[str, type[Probe]] = {p.name: p for p in (AttentionLogits, ActivationKurtosis, MassiveActivations,
                                                      AttentionEntropy, AttentionSinks, RankCollapse, Saturation,
                                                      ResidualStream, LogPartition, BatchNormFluctuation,
                                                      ModelUpdate, InitGradient, BatchNormGap, UnpaddedValidation,
                                                      Causality)}


def make_probes(run: Run) -> dict[str, list[Probe]]:
    """The run's active probes by ``when`` (measure, first_step, eval, end), in measures.py's order."""
    out: dict[str, list[Probe]] = {}
    for meas in MEASUREMENTS:
        if meas.probe:
            probe = PROBES[meas.name](run)
            if probe.active():
                out.setdefault(meas.when, []).append(probe)
    return out
