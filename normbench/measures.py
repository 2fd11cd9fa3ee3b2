"""The measurements: one entry each, the single place that says what a run records.

A ``Measurement`` says when it is taken (``WHEN``), the summary.json keys it writes (``Metric``:
column title, direction, whether diverged runs have it, when compare shows it, the scale claims
use) and the metrics.jsonl columns it logs (``Series``: drawn as a panel of the training curves).
The trainer (through probes.py, which holds the code of each measurement taken during training),
compare, the index, the figures, the claims and docs/measurements.md all derive from this table:
adding a measurement is one entry here plus its ``Probe`` in probes.py (docs/extending.md).

Torch-free, so compare and the claims read it without importing torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .numbers import missing

WHEN = {
    "step": "every training step",
    "measure": "every train.measure_every steps (step 1 included), on the training batch",
    "first_step": "once, on the first batch, before any update",
    "eval": "every train.eval_every steps and at the end, on the validation set",
    "end": "once, after the last step",
    "run": "once per run (setup, timing, provenance)",
}
COLUMN = ("always", "measured", "nonzero", "no")  # Metric.column: when compare shows it by default
LEAK_TOL = 1e-6  # "nonzero": above this (a per-token norm's causal leak is 0 to float rounding)


@dataclass(frozen=True)
class Metric:
    """One summary.json key (or, with ``derive``, a value computed from a run's summary for claims)."""
    key: str
    doc: str
    title: str = ""  # compare's column title; "" for keys compare does not aggregate
    lower_better: bool = True
    on_diverged: bool = False  # measured on diverged runs too (their losses are not)
    column: str = "no"  # compare's default columns: always; measured (where some run has it); nonzero
    loss: bool = False  # in nats: a diverged run counts as the worst (+inf) in claims
    scale: str = "linear"  # the scale claims compare it on by default: linear, or log (ratios)
    listed: bool = False  # a list or mapping: kept in summary.json, out of index.csv
    speed: bool = False  # measured while runs shared the machine: shown, never ranked on
    derive: Callable | None = None  # a claim's metric computed from a run's summary row
    binary: bool = False  # a 0/1 per run: tested as a rate (Fisher's exact test)
    at_init: bool = False  # taken at initialisation: keys that act after step 0 never split it
    nats: bool = True  # a loss in nats per token (bits per byte are not: LR sensitivity's cap is in nats)
    across_lrs: bool = False  # a claim's metric over a group's learning rates, per seed (the ledger's)
    discrete: bool = False  # a count over few units (a share of the heads): claims test it by ranks

    @property
    def compared(self) -> bool:
        """Aggregated by compare (a column, a --metric) and usable by claims."""
        return bool(self.title) and not self.listed and self.derive is None and not self.across_lrs


@dataclass(frozen=True)
class Series:
    """One metrics.jsonl column; with ``panel``, a panel of the training-curve figure."""
    column: str
    doc: str
    panel: str = ""  # the panel's title ("" : not drawn)
    ylabel: str = ""
    log: bool = False  # a log y axis (geometric means)
    smoothed: bool = False  # a running mean (every-step series)
    extra: bool = False  # drawn only where a claim of the recipe uses its measurement (the diagnostics)
    share: bool = False  # a share in [0, 1]: its band over seeds is clipped there


@dataclass(frozen=True)
class Measurement:
    name: str
    when: str  # a key of WHEN
    doc: str
    metrics: tuple[Metric, ...] = ()
    series: tuple[Series, ...] = ()
    probe: bool = False  # its code is a Probe in probes.py (the trainer takes it), not the loop's own


def _finite(v) -> float | None:
    return None if missing(v) else float(v)


def log_slope(profile: list) -> float | None:
    """Least-squares slope of ln(value) over the 1-based index: how fast a per-layer profile grows."""
    pts = [(i + 1, math.log(v)) for i, v in enumerate(profile or []) if v is not None and v > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _last(profile) -> float | None:
    return profile[-1] if profile else None


def _init_ratio(r) -> float | None:
    prof = r.get("grad_norm_init_by_layer") or []
    return prof[-1] / prof[0] if len(prof) >= 2 and prof[0] and prof[-1] is not None else None


def _stalled(r) -> float | None:
    v = r.get("stalled")
    if r.get("diverged"):  # a diverged run ends above the ceiling, above the unigram (0.8.0 wrote null)
        return 1.0
    return None if v is None or _finite(v) is None else float(bool(v))


def _abs_log_z(r) -> float | None:
    v = _finite(r.get("final_log_z"))
    return None if v is None else abs(v)


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("training loss", "step", "cross-entropy on the non-padding targets of the training batch", (
        Metric("final_train_loss", "the mean training loss of the last 10 steps (null for a diverged run)",
               "final train", loss=True),
        Metric("initial_loss", "the training loss of step 1, before any update: the cap of the LR sensitivity",
               "loss at step 1", on_diverged=True, loss=True),
    ), (Series("loss", "the training loss", "training loss", "loss (nats)", smoothed=True),
        Series("lr", "the learning rate of the step"))),
    Measurement("validation loss", "eval", "token-weighted mean loss over the fixed validation set, eval mode "
                "(BatchNorm uses its running statistics)", (
        Metric("final_val_loss", "the validation loss at the end (null for a diverged run)", "final val",
               column="always", loss=True),
        Metric("best_val_loss", "the lowest validation loss of any evaluation", "best val", column="always",
               loss=True),
        Metric("val_losses", "[step, loss] of every evaluation", listed=True),
        Metric("eval_tokens", "the targets the validation set holds (train.eval_tokens, rounded up to whole "
                              "draws of 64 sequences)"),
        Metric("final_val_bpb", "final_val_loss in bits per UTF-8 byte of the text its targets cover "
                                "(text tasks; null for token files and the symbolic tasks)", "final val bpb",
               loss=True, nats=False),
        Metric("best_val_bpb", "best_val_loss in bits per UTF-8 byte", "best val bpb", loss=True, nats=False),
        Metric("eval_bytes", "the UTF-8 bytes the validation targets cover (text tasks)"),
    ), (Series("val_loss", "the validation loss", "validation loss (seed mean ± std)", "loss (nats)"),)),
    Measurement("causality", "end", "the RMS change of the training-mode logits at positions ≤ T/2 when every "
                "later token changes: 0 for a causal model, above 0 when a norm mixes positions; null for an "
                "encoder (task mlm), which may see every position", (
        Metric("train_causal_leak", "the causal leak", "causal leak", column="nonzero"),
    ), probe=True),
    Measurement("excursions", "step", "loss spikes, and steps above the ceiling ln(vocab) + "
                "train.divergence_margin", (
        Metric("loss_spikes", "steps whose loss exceeds train.spike_factor x the median of the previous "
                              "train.spike_window losses; consecutive ones count once", "spikes",
               on_diverged=True, column="always"),
        Metric("spike_steps", "the first step of each loss spike", listed=True),
        Metric("unstable_steps", "steps whose loss was above the ceiling ln(vocab) + train.divergence_margin",
               "steps > ceiling", on_diverged=True, column="nonzero"),
        Metric("max_loss", "the largest finite training loss", "max loss", on_diverged=True),
    )),
    Measurement("divergence", "step", "a non-finite loss or gradient norm stops a run at once; a loss above the "
                "ceiling for train.divergence_patience consecutive steps, or at the end, is a divergence once the "
                "loss has risen: its level (the median of the last train.spike_window losses) more than "
                "train.divergence_margin above the lowest it reached", (
        Metric("diverged", "true when the run diverged (a result, not a crash)", binary=True,
               derive=lambda r: 1.0 if r.get("diverged") else 0.0),
        Metric("diverged_step", "the step where the final stretch above the ceiling began"),
        Metric("divergence_reason", "why the run was judged diverged"),
        Metric("steps_done", "the steps trained"),
        Metric("below_ceiling_step", "the first step whose loss was at or below the ceiling (null: the run never "
                                     "came down from above it)", on_diverged=True),
    )),
    Measurement("unigram baseline", "run", "the validation loss of predicting every target by its frequency in "
                "the training split (add-one smoothed)", (
        Metric("unigram_loss", "the unigram baseline's validation loss", "unigram loss", on_diverged=True),
        Metric("stalled", "the run learned nothing beyond token frequencies: it ended at or above the unigram "
                          "loss less 0.05 nats, or diverged (null only where the unigram loss is undefined)",
               "stalled", binary=True),
    )),
    Measurement("gradient norm", "step", "the global gradient norm before clipping", (
        Metric("max_grad_norm", "the largest gradient norm", "max |grad|", on_diverged=True, column="always",
               scale="log"),
        Metric("median_grad_norm", "the median gradient norm", "median |grad|", on_diverged=True, scale="log"),
        Metric("clip_fraction", "the share of steps clipped (null without train.grad_clip)"),
    ), (Series("grad_norm", "the global gradient norm before clipping", "global gradient norm before clipping",
               "‖g‖₂", log=True, smoothed=True),)),
    Measurement("attention logits", "measure", "max of |q·k|/√d_head over heads, layers and allowed pairs, "
                "and the largest signed q·k/√d_head", (
        Metric("max_attn_logit", "the largest attention logit over training, in magnitude (a large negative "
                                 "logit counts)", "max logit", on_diverged=True, column="always", scale="log"),
        Metric("max_attn_logit_signed", "the largest signed attention logit over training: the one the softmax "
                                        "follows and QK-Clip bounds (its S_max)", "max signed logit",
               on_diverged=True, scale="log"),
        Metric("attn_logit_by_head", "per block, per head, the largest logit over training: what QK-Clip acts on",
               listed=True),
    ), (Series("attn_logit_max", "the largest attention logit of the step",
               "largest attention logit q·k/√d_h (seed geometric mean; thin: max over seeds)",
               "max |logit| over heads and layers", log=True),
       Series("attn_logit_top", "the largest signed attention logit of the step")), probe=True),
    Measurement("residual stream", "measure", "the RMS of the residual stream after each block over real "
                "tokens (the curse of depth, Sun et al. 2025)", (
        Metric("resid_rms_by_layer_init", "the per-block profile at the first measure step", listed=True),
        Metric("resid_rms_by_layer", "the per-block profile at the last measure step", listed=True),
        Metric("resid_rms_last", "the last block's RMS at the last measure step", "resid RMS, last block",
               scale="log"),
        Metric("resid_rms_growth", "the last block's RMS, last measure step over first", "resid RMS growth",
               scale="log"),
        Metric("resid_log_slope", "the least-squares slope of ln(residual RMS) over the block index, at the last "
                                  "measure step", derive=lambda r: log_slope(r.get("resid_rms_by_layer"))),
    ), (Series("resid_rms", "the RMS after each block (a list, one per block)"),), probe=True),
    Measurement("output log-partition", "measure", "log Z = logsumexp of the output logits, mean over the real "
                "targets of the training batch (Wortsman et al. 2023)", (
        Metric("max_abs_log_z", "the largest |log Z| over training, step 1 included", "max |log Z|",
               on_diverged=True),
        Metric("final_log_z", "log Z at the last measure step", "final log Z"),
        Metric("abs_final_log_z", "|final_log_z|: how far log Z ends from 0, where z-loss pushes it",
               derive=_abs_log_z),
    ), (Series("log_z", "the output log-partition"),), probe=True),
    Measurement("BatchNorm fluctuation", "measure", "Shen et al. 2020: ‖μ_B − μ‖₂/d and ‖σ²_B − σ²‖₂/d between "
                "the batch's and the running statistics, norms with running statistics only; the summary averages "
                "the measure steps of the second half of training", (
        Metric("bn_mean_dev", "the batch-vs-running distance of the mean", "BN mean fluctuation",
               on_diverged=True, scale="log"),
        Metric("bn_var_dev", "the batch-vs-running distance of the variance", "BN var fluctuation",
               on_diverged=True, scale="log"),
    ), (Series("bn_mean_dev", "the batch-vs-running distance of the mean"),
        Series("bn_var_dev", "the batch-vs-running distance of the variance")), probe=True),
    Measurement("activation kurtosis", "measure", "He et al. 2024's outlier features: for the residual stream "
                "after each block, Kurt = mean_j s_j⁴ / (mean_j s_j²)² of the per-channel RMS s_j over real tokens "
                "(1 when every channel has the same scale)", (
        Metric("max_act_kurtosis", "the largest kurtosis over blocks and training", "max kurtosis", on_diverged=True,
               scale="log"),
        Metric("act_kurtosis_by_layer", "per block, at the last measure step", listed=True),
    ), (Series("act_kurtosis_max", "the largest kurtosis over the blocks", "activation kurtosis (largest over "
               "blocks)", "mean s⁴ / (mean s²)²", log=True, extra=True),), probe=True),
    Measurement("massive activations", "measure", "Sun et al. 2024: per block, max |h| / median |h| of the "
                "residual stream, on the first 4 sequences of the batch", (
        Metric("massive_act_ratio", "the largest ratio over blocks and training", "massive act. ratio",
               on_diverged=True, scale="log"),
        Metric("massive_act_by_layer", "per block, at the last measure step", listed=True),
    ), (Series("massive_act_max", "the largest ratio over the blocks", "massive activations (largest max|h| / "
               "median|h| over blocks)", "ratio", log=True, extra=True),), probe=True),
    Measurement("attention entropy", "measure", "Zhai et al. 2023's entropy collapse: per head, the entropy "
                "(nats) of the attention weights over the allowed keys, averaged over real queries", (
        Metric("min_attn_entropy", "the smallest over heads, blocks and training", "min attn entropy",
               lower_better=False, on_diverged=True),
        Metric("attn_entropy_by_layer", "per block, the smallest over its heads, at the last measure step",
               listed=True),
    ), (Series("attn_entropy_min", "the smallest over heads and blocks", "smallest attention entropy over "
               "heads and blocks", "nats", extra=True),), probe=True),
    Measurement("attention sinks", "measure", "Gu et al. 2025: the share of (block, head) pairs whose attention "
                "weight on the first position, averaged over real queries, exceeds 0.3", (
        Metric("attn_sink_share", "at the last measure step", "sink share", discrete=True),
    ), (Series("attn_sink_share", "the sink share", "attention sinks (share of heads with mean weight > 0.3 on "
               "position 0)", "share of heads", extra=True, share=True),), probe=True),
    Measurement("rank collapse", "measure", "Noci et al. 2022: per block, the mean cosine similarity of the "
                "tokens of a sequence over pairs of distinct real tokens, on the first 4 sequences", (
        Metric("token_cos_sim_by_layer_init", "per block, at the first measure step (initialisation)", listed=True),
        Metric("token_cos_sim_by_layer", "per block, at the last measure step", listed=True),
        Metric("token_cos_sim_last", "the last block's, at the last measure step", "token similarity"),
        Metric("token_cos_sim_init_last", "the last block's at initialisation (the first measure step)",
               derive=lambda r: _last(r.get("token_cos_sim_by_layer_init")), at_init=True),
    ), (Series("token_cos_sim_last", "the last block's token similarity", "token similarity, last block",
               "mean cosine", extra=True),), probe=True),
    Measurement("saturation", "measure", "DyT and Derf: the share of their inputs' elements in the flat region "
                "of tanh or erf, where the slope is below a tenth of its slope at 0 (|αx| > 1.818 for tanh, "
                "|αx + s| > 1.517 for erf), averaged over the norms; null for other norms", (
        Metric("saturation_share", "at the last measure step", "saturation"),
    ), (Series("saturation", "the saturation share", "saturation of DyT/Derf (share in the flat region)",
               "share", extra=True, share=True),), probe=True),
    Measurement("model update", "measure", "Wang et al. 2022's ‖F(x, θ_t) − F(x, θ_0)‖: the RMS change of the "
                "logits, eval mode, on the first 8 validation sequences", (
        Metric("max_model_update", "the largest model update over training", "max update", on_diverged=True,
               column="measured", scale="log"),
    ), (Series("model_update", "the model update since initialisation",
               "model update ‖F(x, θ_t) − F(x, θ_0)‖ (Wang et al. 2022)",
               "RMS change of the logits on a fixed batch", log=True),), probe=True),
    Measurement("gradient at initialisation", "first_step", "the norm of each block's FFN weight gradients on the "
                "first batch (Xiong et al. 2020's profile)", (
        Metric("grad_norm_init_by_layer", "one norm per block", listed=True),
        Metric("grad_norm_init_last_over_first", "the last block's norm over the first's (above 1 under Post-LN)",
               scale="log", derive=_init_ratio, at_init=True),
    ), probe=True),
    Measurement("BatchNorm train/eval gap", "eval", "the validation loss with every BatchNorm normalising by the "
                "batch's own statistics, as in training (batchnorm and batchnorm_masked only)", (
        Metric("final_val_loss_batch_stats", "that loss at the end", "final val, batch stats", loss=True),
        Metric("bn_eval_gap", "final_val_loss − final_val_loss_batch_stats", "BN eval gap", column="measured"),
    ), (Series("val_loss_batch_stats", "the validation loss with batch statistics"),), probe=True),
    Measurement("unpadded validation", "end", "a padded run (data.variable_length) scored in eval mode on "
                "unpadded validation windows of data.seq_len, drawn once from the validation seed (one "
                "validation pass per run)", (
        Metric("final_val_loss_unpadded", "that loss at the end (null for unpadded runs)", "final val, unpadded",
               loss=True, column="measured"),
    ), probe=True),
    Measurement("learning-rate sensitivity", "run", "per seed, over the learning rates of a group (train.lr must "
                "vary): the mean of min(loss, initial loss) minus the best (Wortsman et al. 2023)", (
        Metric("lr_sensitivity", "the LR sensitivity of final_val_loss per seed; a diverged run at the cap",
               across_lrs=True),
    )),
    Measurement("speed and size", "run", "throughput over training time (evaluation excluded), size, memory", (
        Metric("tokens_per_s", "B·T positions per step over training time", "tok/s", lower_better=False,
               column="always", speed=True),
        Metric("wall_s", "the run's wall-clock seconds", "wall s", speed=True),
        Metric("started_at", "Unix time the run started"),
        Metric("ended_at", "Unix time the run ended"),
        Metric("params", "parameters"),
        Metric("peak_mem_mb", "peak memory, MiB"),
        Metric("peak_mem_kind", "process_max_rss on CPU, cuda_max_allocated on GPU"),
    )),
    Measurement("provenance", "run", "what the run was and where it ran", (
        Metric("run_id", "the run id: a hash of the resolved config"),
        Metric("vocab_size", "the task's vocabulary"),
        Metric("corpus", "the corpus fingerprint (source, files, characters, sha256)", listed=True),
        Metric("plugin", "a plugin norm's name, file and SHA-256 (null otherwise)", listed=True),
        Metric("device", "the device trained on"),
        Metric("cpu", "the CPU model and its vector units"),
        Metric("precision_used", "the precision trained in (auto resolved)"),
        Metric("threads", "torch threads"),
        Metric("resumed_from", "the step of the checkpoint the run resumed from (train.checkpoint_every); null "
               "for a run trained in one go"),
        Metric("versions", "normbench, torch and Python versions", listed=True),
    )),
)

METRICS: dict[str, Metric] = {m.key: m for meas in MEASUREMENTS for m in meas.metrics}
SUMMARY_KEYS = [k for k, m in METRICS.items() if (m.derive is None and not m.across_lrs) or k == "diverged"]
COMPARED = {k: m for k, m in METRICS.items() if m.compared}  # compare's metrics, in this order
SERIES: dict[str, Series] = {s.column: s for meas in MEASUREMENTS for s in meas.series}
PANELS = [s for s in SERIES.values() if s.panel and not s.extra]  # the training-curve panels, in this order
# the diagnostics' panels, drawn where a claim uses their measurement: metric key -> its panels
EXTRA_PANELS = {m.key: [s for s in meas.series if s.extra] for meas in MEASUREMENTS for m in meas.metrics
                if any(s.extra for s in meas.series)}
# claims: every compared metric but speed, then the derived ones (a rate, a ratio, a slope...)
CLAIM_METRICS = [k for k, m in COMPARED.items() if not m.speed] + \
    [k for k, m in METRICS.items() if m.derive is not None or m.across_lrs]
INDEX_SKIP = {k for k, m in METRICS.items() if m.listed}
# the per-block and per-step lists of the measurements (not the run's provenance): compare reads them
# with each run (the figures draw them, the claims' derived metrics use them)
PROFILES = tuple(m.key for meas in MEASUREMENTS if meas.when != "run" for m in meas.metrics if m.listed)
ON_DIVERGED = tuple(k for k, m in COMPARED.items() if m.on_diverged)  # over every run, diverged ones included
SPEED = tuple(k for k, m in COMPARED.items() if m.speed)
# the losses of a finished run (not initial_loss, which every run has): LR sensitivity's choices
LOSSES = tuple(k for k, m in COMPARED.items() if m.loss and m.nats and not m.on_diverged)
LOG_SCALE = tuple(k for k, m in METRICS.items() if m.scale == "log")
BINARY = tuple(k for k, m in METRICS.items() if m.binary)
AT_INIT = tuple(k for k, m in METRICS.items() if m.at_init)
DISCRETE = tuple(k for k, m in METRICS.items() if m.discrete)


def default_columns(has_values, nonzero) -> list[str]:
    """compare's default columns: the ``always`` ones, then those ``measured`` where ``has_values(key)``,
    then the ``nonzero`` ones where ``nonzero(key)``."""
    return [k for k, m in COMPARED.items() if m.column == "always"] + \
        [k for k, m in COMPARED.items() if m.column == "measured" and has_values(k)] + \
        [k for k, m in COMPARED.items() if m.column == "nonzero" and nonzero(k)]


def run_value(r, key: str) -> float | None:
    """One run's value of a metric for claims: a diverged run's loss is +inf (the worst), a rate 0 or 1,
    None where the run has no value (a measure taken only on runs that did not diverge)."""
    m = METRICS[key]
    if m.derive is not None:
        return m.derive(r)
    if key == "stalled":
        return _stalled(r)
    diverged = bool(r.get("diverged"))
    if diverged and m.loss:
        return math.inf
    if diverged and not m.on_diverged:
        return None
    return _finite(r.get(key))
