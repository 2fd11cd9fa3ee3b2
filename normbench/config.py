"""The run configuration: frozen dataclasses whose fields are the recipe keys.

Config holds names (``"rmsnorm"``, ``"deepnorm"``); code elsewhere resolves them.
Everything is validated once, here, at the edge: ``from_dict`` turns a raw mapping
(from YAML, ``--set`` or the Python API) into a ``RunConfig`` or raises a
``NormbenchError`` naming the dotted key. This module must not import torch: the
CLI validates recipes and answers ``--help`` without it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from . import textfile
from .dotted import suggest
from .errors import NormbenchError, Problems
from .rules import check  # the rules between keys

QKNorm = Literal["layernorm", "layernorm_nobias", "rmsnorm", "scalenorm", "dyt", "dyt_nobias", "derf"]
Placement = Literal["pre", "post", "sandwich", "deepnorm", "mixln", "lns", "outnorm", "subln", "hybridnorm", "ngpt"]
Init = Literal["xavier", "gpt2", "torch", "depth_scaled", "admin", "tfixup"]
Task = Literal["charlm", "text", "copy", "reverse", "mlm", "prose", "tokens"]
Tokenizer = Literal["char", "byte", "bpe"]


def opt(default, help: str, *, min=None, max=None, min_open=False, max_open=False, choices=None):
    """A config field with its help text, numeric bounds (inclusive unless *_open) and, for a string
    whose choices can grow at run time (plugin norms), a function returning them."""
    return field(default=default, metadata={"help": help, "min": min, "max": max,
                                            "min_open": min_open, "max_open": max_open, "choices": choices})


def _norm_names() -> list[str]:
    from .registry import norm_names

    return norm_names()


@dataclass(frozen=True)
class ModelConfig:
    layers: int = opt(4, "number of Transformer blocks N", min=1)
    d_model: int = opt(128, "residual stream width", min=1)
    heads: int = opt(4, "attention heads; must divide d_model", min=1)
    d_ff: int = opt(512, "hidden width of the MLP", min=1)
    dropout: float = opt(0.0, "dropout on attention weights and residual branches", min=0.0, max=1.0, max_open=True)
    norm: str = opt("layernorm", "normalization layer (see `normbench list`; a norm of your own with --plugin)",
                    choices=_norm_names)
    placement: Placement = opt("pre", "where the norms sit in a block (see `normbench list`)")
    mixln_ratio: float = opt(0.25, "placement mixln: the share of blocks, from the input, that are Post-LN "
                                   "(floor(ratio*N) of them; Li et al. 2024 use 0.25); ignored otherwise",
                             min=0.0, max=1.0)
    embed_norm: bool = opt(False, "a norm (model.norm) on the embeddings before the first block (BLOOM)")
    qk_norm: bool = opt(False, "normalise queries and keys before q.k (Wortsman et al. 2023)")
    qk_norm_type: QKNorm = opt("layernorm", "the norm used when qk_norm is true (ignored otherwise)")
    qk_norm_scope: Literal["head", "full"] = opt(
        "head", "qk-norm per head (over d_model/heads) or over the whole projection width d_model (OLMo 2); "
        "ignored unless qk_norm")
    bias: bool = opt(True, "biases in linear layers (norm biases are set by the norm type)")
    tie_embeddings: bool = opt(True, "share the token embedding with the LM head")
    embed_scale: Literal["none", "sqrt_d", "learned"] = opt(
        "sqrt_d", "multiplier of the token embedding at the input: none (GPT-2, nanoGPT), sqrt_d (a constant "
        "sqrt(d_model), fairseq: Xiong et al., DeepNet) or learned (a scalar initialised to sqrt(d_model), the "
        "DyT and Derf code); a tied head sees the unscaled table")
    embed_std: Optional[float] = opt(
        None, "std of the N(0, std) init of the token and position embeddings; null: the convention's own, "
        "0.02 with embed_scale none (GPT-2), d_model^-1/2 otherwise (fairseq)", min=0.0, min_open=True)
    init: Init = opt(
        "torch", "linear-weight init: xavier (Xavier-normal, zero biases; fairseq, DeepNet), gpt2 (N(0,0.02), "
        "residual projections scaled by 1/sqrt(2N), zero biases), torch (PyTorch's nn.Linear default: "
        "uniform, std 1/sqrt(3*fan_in), biases too), depth_scaled (torchtitan: N(0,0.02), the residual "
        "projections of block l N(0, 0.02/sqrt(2(l+1)))), admin (Liu et al. 2020, placement post: the "
        "residual x*omega_i + F_i(x), omega_1 = 1 and omega_{i+1} = sqrt(Var(x_i omega_i) + Var F_i) set "
        "sublayer by sublayer in one profiling forward at initialisation) or tfixup (Huang et al. 2020, model.norm none: Xavier, embeddings "
        "N(0, d^-1/2), v, output, MLP and embedding weights times (9N)^-1/4)")
    head_std: Optional[float] = opt(
        None, "std of the N(0, std) init of an untied LM head; null: d_model^-1/2 (fairseq's output "
        "projection); ignored when tie_embeddings is true", min=0.0, min_open=True)
    norm_eps: float = opt(1e-5, "epsilon of every norm", min=0.0, min_open=True)
    softcap_attn: Optional[float] = opt(
        None, "attention-logit soft-cap c (Gemma 2: 50): each logit s becomes c*tanh(s/c); null is off",
        min=0.0, min_open=True)
    softcap_output: Optional[float] = opt(
        None, "output-logit soft-cap c (Gemma 2: 30): each logit z becomes c*tanh(z/c); null is off",
        min=0.0, min_open=True)
    residual_gate: Literal["none", "rezero", "layerscale"] = opt(
        "none", "a gate on each residual branch, x + a*F(x): rezero (Bachlechner et al. 2020: a scalar a "
        "initialised to 0) or layerscale (Touvron et al. 2021, CaiT: a per-channel a initialised to "
        "model.layerscale_init)")
    layerscale_init: float = opt(0.1, "residual_gate layerscale: the initial value of a (CaiT: 0.1 up to 18 "
                                      "blocks, 1e-5 deeper); ignored otherwise", min=0.0, min_open=True)
    norm_affine: Literal["full", "none", "scalar"] = opt(
        "full", "the norms' gain: full (per channel, each norm's own), none (weightless: no gain and no bias, "
        "modded-nanogpt's F.rms_norm) or scalar (one gain per norm, outlier-safe pre-training's "
        "single-scale norm; a bias stays per channel)")
    norm_unit_offset: bool = opt(False, "store each norm gain as its offset from its initial value, "
                                        "gamma = gamma_0 + theta with theta initialised to 0 (x-transformers, "
                                        "Qwen3-Next's zero-centred norm): weight decay then pulls gamma to "
                                        "gamma_0 (1), not to 0")
    v_norm: bool = opt(False, "normalise the values too, with qk_norm's norm and scope (needs qk_norm)")
    attn_gate: bool = opt(False, "gated attention (Qiu et al. 2025, Qwen3-Next): each head's output times "
                                 "sigmoid(x W_g), one gate per head from the attention's input x")
    attn_sinks: bool = opt(False, "learned attention sinks (gpt-oss): one logit per head, initialised to 0, "
                                  "in every softmax's denominator")
    dyt_alpha: float = opt(1.0, "initial alpha of DyT in the norms in front of (or after) attention; 1.0 is the "
                                "DyT paper's LLM setting for widths up to 1024 (0.5 for its non-LLM models)",
                           min=0.0, min_open=True)
    dyt_alpha_ffn: Optional[float] = opt(
        None, "initial alpha of DyT in the MLP's norms and the final norm (the paper sets it apart from "
        "attention's for wide LLMs); null: the same as dyt_alpha", min=0.0, min_open=True)


@dataclass(frozen=True)
class DataConfig:
    task: Task = opt("charlm", "what to train on (see `normbench list`)")
    path: Optional[str] = opt(None, "UTF-8 text file for task: text (or mlm instead of the built-in corpus); "
                                    "for task: tokens, the folder of token files (relative to the recipe's folder)")
    seq_len: int = opt(128, "context length T in tokens", min=1)
    max_chars: int = opt(4_000_000, "cap on the corpus size in characters (charlm, text, prose, mlm)", min=1000)
    val_fraction: float = opt(0.1, "share of the corpus held out for validation (its tail)",
                              min=0.0, max=1.0, min_open=True, max_open=True)
    variable_length: bool = opt(False, "draw each sequence's length, right-pad the batch, mask padding "
                                       "out of attention and loss")
    min_len: int = opt(8, "shortest sequence in tokens when variable_length is true", min=2)
    bos: bool = opt(False, "charlm, text, prose: every window starts with one fixed beginning-of-sequence "
                           "token <bos> (never a target), as documents do in LLM training: the first token "
                           "attention sinks form on (Gu et al. 2025)")
    symbols: int = opt(16, "alphabet size of the copy and reverse tasks", min=2)
    tokenizer: Tokenizer = opt("char", "how a text task (charlm, text, prose, mlm) turns text into tokens: char, "
                                       "byte (UTF-8 bytes) or bpe (a byte-level BPE trained on the training split; "
                                       "the bpe extra)")
    vocab_size: Optional[int] = opt(None, "the BPE's vocabulary (tokenizer bpe; default 1024), or the token files' "
                                          "(task tokens, when no meta.pkl gives it)", min=2)
    corpus: Literal["code", "prose"] = opt("code", "task mlm without data.path: the built-in corpus it masks, code "
                                                   "(charlm's) or prose (prose's)")
    mask_rate: float = opt(0.15, "task mlm: the share of real tokens selected for the loss (BERT: 0.15; 80% of "
                                 "them masked, 10% replaced by a random token, 10% kept)",
                           min=0.0, max=1.0, min_open=True)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = opt(500, "optimizer steps", min=1)
    batch_size: int = opt(32, "sequences per step", min=1)
    lr: float = opt(1e-3, "peak learning rate (AdamW)", min=0.0, min_open=True)
    warmup_steps: int = opt(50, "linear warmup from 0 to lr over this many steps", min=0)
    schedule: Literal["constant", "cosine", "linear"] = opt("cosine", "lr after warmup: constant, cosine "
                                                                      "or linear decay to min_lr_ratio*lr")
    min_lr_ratio: float = opt(0.1, "final lr as a fraction of lr for cosine and linear", min=0.0, max=1.0)
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices and embeddings; never on norms and biases",
                              min=0.0)
    beta1: float = opt(0.9, "AdamW beta1", min=0.0, max=1.0, max_open=True)
    beta2: float = opt(0.95, "AdamW beta2", min=0.0, max=1.0, max_open=True)
    grad_clip: float = opt(0.0, "clip the global gradient norm to this; 0 means off", min=0.0)
    norm_weight_decay: float = opt(0.0, "AdamW weight decay on the norms' gains (stored offsets with "
                                        "model.norm_unit_offset); 0 is off", min=0.0)
    qk_clip: Optional[float] = opt(
        None, "QK-Clip threshold tau (Kimi K2): after each optimizer step, every head whose largest "
        "q.k/sqrt(d_head) in the step exceeded tau has its W_q and W_k rows (and biases) scaled by "
        "sqrt(tau/S_max); null is off", min=0.0, min_open=True)
    z_loss: float = opt(0.0, "z-loss coefficient on log^2(Z) of the output logits (Wortsman et al.); 0 is off",
                        min=0.0)
    precision: Literal["fp32", "bf16", "auto"] = opt("fp32", "fp32; bf16 autocast; or auto: bf16 on a CUDA GPU "
                                                             "that supports it, fp32 elsewhere")
    compile: bool = opt(False, "torch.compile the model (how a run executes, like device: not part of the "
                               "run id); see docs/performance.md for when it pays")
    checkpoint_every: int = opt(0, "write checkpoint.pt (model, optimizer, every random state, the data "
                                   "position, the measurements so far) every this many steps; a rerun resumes "
                                   "from it exactly; 0 is off. Not part of the run id", min=0)
    save_final: bool = opt(False, "keep the final weights in model.pt (for `normbench sample`); not part of the "
                                  "run id")
    eval_every: int = opt(100, "validation loss every this many steps (and at the end)", min=1)
    eval_tokens: int = opt(65536, "target tokens in the validation set: a fixed set of windows drawn once, the "
                                  "same for every run with the same task and data.seq_len, whatever the batch "
                                  "size (the last draw of 64 sequences may take it a little over)", min=1)
    measure_every: int = opt(10, "largest attention logit and model update measured every this many steps", min=1)
    spike_factor: float = opt(1.3, "a loss spike is a step whose loss exceeds spike_factor times the median "
                                   "of the previous spike_window steps", min=1.0, min_open=True)
    spike_window: int = opt(20, "steps in the running level used for spike detection", min=2)
    divergence_margin: float = opt(1.0, "the loss ceiling is ln(vocab) + this margin; a step above it is an "
                                        "excursion", min=0.0)
    divergence_patience: int = opt(50, "diverged when the loss stays above the ceiling this many consecutive "
                                       "steps (or ends above it); a non-finite loss or gradient stops a run at once",
                                   min=1)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = opt(0, "seeds parameters, data order and dropout", min=0)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto picks cuda when available")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """Short hash of everything that defines the experiment.

        ``device`` and ``train.compile`` are left out on purpose: where and how a run
        executes (like jobs, threads and the output folder) is not part of what it is,
        so a sweep begun on a laptop resumes on a GPU box. ``data.path`` counts by its content
        (the SHA-256 of the text a run trains on), so editing the file does not reuse stale results
        and the same text in another folder resumes. A plugin norm counts by its file's SHA-256.
        """
        d = self.to_dict()
        for key in EXECUTION_KEYS:  # how a run executes and what it keeps, not what it is
            section, _, name = key.rpartition(".")
            (d[section] if section else d).pop(name)
        for key, default in LATER_KEYS.items():  # added after 0.3.0: in the id only when set
            section, name = key.split(".")
            if d[section][name] == default:
                del d[section][name]
        if d["data"]["path"] and self.data.task == "tokens":  # the token files by size and sampled blocks
            from . import tokenfile

            d["data"]["path"] = "tokens:" + tokenfile.digest(d["data"]["path"])
        elif d["data"]["path"]:  # the text trained on, not where it lies: an edited file gets new ids
            d["data"]["path"] = "sha256:" + textfile.file_digest(d["data"]["path"], d["data"]["max_chars"])
        from .registry import plugin_of

        if (plugin := plugin_of(self.model.norm)) is not None:  # a plugin norm: its code is part of the run
            d["plugin"] = plugin.sha256
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# keys added after run ids were first published (0.3.0), with their defaults: they enter the run id
# only when set away from the default, so adding a key never orphans earlier results
LATER_KEYS = {"model.mixln_ratio": 0.25, "model.embed_norm": False, "model.qk_norm_scope": "head",
              "data.mask_rate": 0.15, "data.tokenizer": "char", "data.vocab_size": None, "data.corpus": "code",
              # 0.7.0: the interventions
              "model.softcap_attn": None, "model.softcap_output": None, "model.residual_gate": "none",
              "model.layerscale_init": 0.1, "model.norm_affine": "full", "model.norm_unit_offset": False,
              "model.v_norm": False, "model.attn_gate": False, "model.attn_sinks": False,
              "train.norm_weight_decay": 0.0, "train.qk_clip": None,
              # 0.9.0
              "data.bos": False}

# keys that say how a run executes and what it keeps, not what it computes: out of the run id, and never a
# factor compare groups by (a sweep begun on a laptop resumes on a GPU box, with checkpoints turned on)
EXECUTION_KEYS = ("device", "train.compile", "train.checkpoint_every", "train.save_final")

# keys that were removed, with what replaced them (one clear line instead of "unknown key")
REMOVED_KEYS = {"train.eval_batches": "removed in 0.5.0: the validation set is now fixed in tokens, whatever the "
                                      "batch size; use train.eval_tokens (default 65536)"}

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
TOP_LEVEL = ("seed", "device")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def all_keys() -> list[tuple[str, Any, str, str]]:
    """(dotted key, default, type text, help) for every recipe key, in schema order; the help ends with
    the values a placement or init brings to the key where the user leaves it unset (implied.py)."""
    from .implied import notes

    implied, out = notes(), []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for name, f in _fields(cls).items():
            tp = " | ".join(f.metadata["choices"]()) if f.metadata.get("choices") else _type_text(hints[name])
            text = f.metadata["help"]
            if f"{section}.{name}" in implied:
                text += f" (default {'; '.join(implied[f'{section}.{name}'])})"
            out.append((f"{section}.{name}", f.default, tp, text))
    hints = typing.get_type_hints(RunConfig)
    for name in TOP_LEVEL:
        f = _fields(RunConfig)[name]
        out.append((name, f.default, _type_text(hints[name]), f.metadata["help"]))
    return out


def config_keys() -> list[str]:
    return [k for k, *_ in all_keys()]


def _type_text(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(typing.get_args(tp))
    if origin is typing.Union:
        return " | ".join("null" if a is type(None) else _type_text(a) for a in typing.get_args(tp))
    return {int: "int", float: "float", bool: "bool", str: "str"}[tp]




def coerce(key: str, value: Any, tp, meta: dict) -> Any:
    """Check one value against its field type and bounds; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(key, value, next(a for a in typing.get_args(tp) if a is not type(None)), meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise NormbenchError(f"expected one of {', '.join(choices)}, got {value!r}{suggest(str(value), choices)}",
                                 key=key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise NormbenchError(f"expected true or false, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NormbenchError(f"expected an integer, got {value!r}", key=key)
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise NormbenchError(f"expected a number, got {value!r}", key=key) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NormbenchError(f"expected a number, got {value!r}", key=key)
        value = float(value)
        if not math.isfinite(value):
            raise NormbenchError(f"expected a finite number, got {value!r}", key=key)
    elif tp is str:
        if not isinstance(value, str):
            raise NormbenchError(f"expected a string, got {value!r}", key=key)
        if meta.get("choices") is not None and value not in (choices := meta["choices"]()):
            raise NormbenchError(f"expected one of {', '.join(choices)}, got {value!r}{suggest(value, choices)}; "
                                 "a norm of your own: --plugin FILE.py (docs/plugins.md)", key=key)
        return value
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_open") and value == lo)):
        raise NormbenchError(f"expected a value {'>' if meta.get('min_open') else '>='} {lo}, got {value!r}", key=key)
    if hi is not None and (value > hi or (meta.get("max_open") and value == hi)):
        raise NormbenchError(f"expected a value {'<' if meta.get('max_open') else '<='} {hi}, got {value!r}", key=key)
    return value


def _section(cls, raw: Any, prefix: str, problems: Problems):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(NormbenchError(f"expected a mapping of keys, got {type(raw).__name__}", key=prefix))
        return None
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    values = {}
    for k, v in raw.items():
        with problems.check():
            if k not in fields and f"{prefix}.{k}" in REMOVED_KEYS:
                raise NormbenchError(REMOVED_KEYS[f"{prefix}.{k}"], key=f"{prefix}.{k}")
            if k not in fields:
                raise NormbenchError(f"unknown key{suggest(f'{prefix}.{k}', [f'{prefix}.{f}' for f in fields])}",
                                     key=f"{prefix}.{k}")
            values[k] = coerce(f"{prefix}.{k}", v, hints[k], fields[k].metadata)
    return cls(**values)


def from_dict(raw: Any) -> RunConfig:
    """Validate a raw ``base`` mapping (sections model/data/train, top-level seed/device). Every
    problem is reported (``NormbenchErrors`` when there are several), not only the first."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise NormbenchError(f"expected a mapping, got {type(raw).__name__}", key="base")
    from .implied import apply

    raw, _ = apply(raw)  # the keys a placement or init brings, where the user left them unset
    problems = Problems()
    known = list(SECTIONS) + list(TOP_LEVEL)
    for k in raw:
        if k not in known:
            problems.add(NormbenchError(f"unknown key{suggest(str(k), known)}; expected one of {', '.join(known)}",
                                        key=str(k)))
    hints = typing.get_type_hints(RunConfig)
    top = {}
    for k in TOP_LEVEL:
        if k in raw:
            with problems.check():
                top[k] = coerce(k, raw[k], hints[k], _fields(RunConfig)[k].metadata)
    sections = {s: _section(cls, raw.get(s), s, problems) or cls() for s, cls in SECTIONS.items()}
    # go on with the valid keys (a mistaken one at its default), so that the rules between keys are
    # checked in the same pass: every mistake at once, not in rounds
    cfg = RunConfig(**sections, **top)
    # keys a configuration does not use are reset, so they cannot make otherwise equal runs look different
    m, unused = cfg.model, {}
    if not m.qk_norm:
        unused["qk_norm_type"], unused["qk_norm_scope"] = "layernorm", "head"
    if m.placement != "mixln":
        unused["mixln_ratio"] = _fields(ModelConfig)["mixln_ratio"].default
    if m.tie_embeddings:
        unused["head_std"] = None
    if m.residual_gate != "layerscale":
        unused["layerscale_init"] = _fields(ModelConfig)["layerscale_init"].default
    if not (m.norm.startswith("dyt") or (m.qk_norm and m.qk_norm_type.startswith("dyt"))):
        unused["dyt_alpha"], unused["dyt_alpha_ffn"] = _fields(ModelConfig)["dyt_alpha"].default, None
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **unused))
    with problems.check():
        check(cfg)
    problems.raise_any()
    return cfg


def check_dotted_key(key: str) -> None:
    """Raise unless ``key`` names a config field (with a suggestion for near misses)."""
    valid = [k for k, *_ in all_keys()]
    if key in REMOVED_KEYS:
        raise NormbenchError(REMOVED_KEYS[key], key=key)
    if key not in valid:
        raise NormbenchError(f"unknown key{suggest(key, valid)}", key=key)
