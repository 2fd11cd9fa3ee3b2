"""The rules between recipe keys: which combinations a run may not have, each refused in one line
that names the key and says what would make sense. config.py holds the keys and their own bounds;
``config.from_dict`` calls ``check`` once every key is valid on its own, so every broken rule of a
recipe is reported in the same round. Torch-free, like config.py.
"""
from __future__ import annotations

from . import textfile
from .catalog import NEEDS_A_NORM
from .errors import NormbenchError, Problems


def check(cfg) -> None:
    """Rules that involve more than one key of a ``config.RunConfig`` (every broken rule is reported)."""
    m, d = cfg.model, cfg.data
    problems = Problems()
    if m.d_model % m.heads:
        problems.add(NormbenchError(f"model.heads={m.heads} must divide model.d_model={m.d_model}", key="model.heads"))
    if m.placement == "deepnorm" and m.norm == "none":
        problems.add(NormbenchError(
            "model.placement=deepnorm needs a normalization: with model.norm=none each block computes "
            "alpha*x + F(x) and the residual stream grows as alpha^N; pick another model.norm or placement",
            key="model.norm"))
    elif m.placement in NEEDS_A_NORM and m.norm == "none":
        problems.add(NormbenchError(
            f"model.placement={m.placement} places norms, and model.norm=none makes every one an identity (the "
            "same model as placement pre with norm none); pick a norm, or placement pre", key="model.norm"))
    if m.embed_norm and m.norm == "none":
        problems.add(NormbenchError("model.embed_norm=true needs a norm (model.norm is none)", key="model.embed_norm"))
    check_interventions(cfg, problems)
    check_data(d, problems)
    problems.raise_any()


def check_interventions(cfg, problems: Problems) -> None:
    """The rules of the interventions (docs/interventions.md): each refusal names what would make sense."""
    m, t = cfg.model, cfg.train

    def refuse(key: str, text: str) -> None:
        problems.add(NormbenchError(text, key=key))

    if m.init == "admin" and m.placement != "post":
        refuse("model.init", f"model.init=admin sets Post-LN's residual scales omega (Liu et al. 2020); it needs "
                             f"model.placement=post (got {m.placement})")
    elif m.init == "admin" and m.norm == "none":
        refuse("model.init", "model.init=admin scales the skip of LN(x*omega + F(x)) (Liu et al. 2020); it needs a "
                             "norm (model.norm is none)")
    if m.init == "tfixup" and (m.norm != "none" or m.qk_norm):
        refuse("model.init", "model.init=tfixup replaces the norms (Huang et al. 2020); set model.norm: none and "
                             "model.qk_norm: false")
    if m.placement == "ngpt":
        from .implied import IMPLIED

        for k, want in IMPLIED[("model.placement", "ngpt")].items():  # the settings it brings, set otherwise
            section, name = k.split(".")
            v = getattr(getattr(cfg, section), name)
            if v == want:
                continue
            refuse(k, f"model.placement=ngpt (Loshchilov et al. 2024) needs {k}: {str(want).lower()} (got "
                      f"{str(v).lower()}); leave {k} unset and the placement sets it (docs/interventions.md)")
        if m.init in ("admin", "tfixup"):
            refuse("model.init", f"model.init={m.init} scales weights that model.placement=ngpt puts back on the "
                                 "unit sphere; use xavier, gpt2, torch or depth_scaled")
    if m.placement == "hybridnorm" and (m.qk_norm or m.v_norm):
        refuse("model.qk_norm", "model.placement=hybridnorm already normalises q, k and v with model.norm; leave "
                                "model.qk_norm and model.v_norm false")
    if m.v_norm and not m.qk_norm:
        refuse("model.v_norm", "model.v_norm normalises values beside qk-norm, with its norm; set model.qk_norm: "
                               "true (or placement hybridnorm)")
    if t.qk_clip is not None and (m.qk_norm or m.placement in ("hybridnorm", "ngpt")):
        refuse("train.qk_clip", "train.qk_clip rescales W_q and W_k, which normalised queries and keys undo (the "
                                "logits would not move); use it without qk-norm (qk_norm false, placement not "
                                "hybridnorm or ngpt)")
    if m.norm_affine == "none" and m.norm_unit_offset:
        refuse("model.norm_unit_offset", "model.norm_affine=none leaves no gain to offset")
    if m.norm_affine == "none" and t.norm_weight_decay > 0:
        refuse("train.norm_weight_decay", "model.norm_affine=none leaves no gain to decay")
    has_norm = m.norm != "none" or m.qk_norm
    if not has_norm and (m.norm_affine != "full" or m.norm_unit_offset or t.norm_weight_decay > 0):
        key = "model.norm_affine" if m.norm_affine != "full" else \
            "model.norm_unit_offset" if m.norm_unit_offset else "train.norm_weight_decay"
        refuse(key, f"{key} shapes the norms' gains, and this model has none (model.norm none, no qk-norm)")
    from .registry import plugin_of

    if plugin_of(m.norm) is not None and (m.norm_affine != "full" or m.norm_unit_offset or t.norm_weight_decay):
        refuse("model.norm_affine", f"a plugin norm ({m.norm}) keeps its own parameters: model.norm_affine, "
                                    "model.norm_unit_offset and train.norm_weight_decay apply to built-in norms")






TEXT_TASKS = ("charlm", "text", "prose", "mlm")  # the tasks a tokenizer applies to


def check_data(d, problems: Problems) -> None:
    """The data keys' rules: which task takes a path, a tokenizer, a vocabulary, a mask rate."""
    if d.task in ("text", "tokens") and not d.path:
        what = "a UTF-8 text file" if d.task == "text" else "a folder of token files"
        problems.add(NormbenchError(f"data.task={d.task} needs data.path, {what}", key="data.path"))
    if d.task not in ("text", "mlm", "tokens") and d.path:
        problems.add(NormbenchError(f"data.path is only used by data.task=text, mlm or tokens (task is {d.task})",
                                    key="data.path"))
    if d.corpus != "code" and (d.task != "mlm" or d.path):
        problems.add(NormbenchError("data.corpus chooses the built-in text of data.task=mlm without data.path (task "
                                    f"is {d.task}{', with a path' if d.path else ''})", key="data.corpus"))
    if d.task != "mlm" and d.mask_rate != type(d).mask_rate:
        problems.add(NormbenchError(f"data.mask_rate is only used by data.task=mlm (task is {d.task})",
                                    key="data.mask_rate"))
    if d.tokenizer != "char" and d.task not in TEXT_TASKS:
        problems.add(NormbenchError(f"data.tokenizer applies to the text tasks ({', '.join(TEXT_TASKS)}), not to "
                                    f"{d.task}", key="data.tokenizer"))
    if d.vocab_size is not None and not (d.tokenizer == "bpe" or d.task == "tokens"):
        problems.add(NormbenchError("data.vocab_size is used by data.tokenizer=bpe and data.task=tokens",
                                    key="data.vocab_size"))
    if d.tokenizer == "bpe":
        import importlib.util

        if importlib.util.find_spec("tokenizers") is None:
            problems.add(NormbenchError("bpe needs Hugging Face tokenizers: pip install -c constraints.txt -e "
                                        "\".[bpe]\"", key="data.tokenizer"))
    if d.tokenizer == "bpe" and d.vocab_size is not None and d.vocab_size < 300:
        problems.add(NormbenchError(f"expected at least 300 for a byte-level BPE (256 bytes and merges), got "
                                    f"{d.vocab_size}", key="data.vocab_size"))
    if d.task == "tokens" and d.variable_length:
        problems.add(NormbenchError("data.variable_length is not supported by data.task=tokens",
                                    key="data.variable_length"))
    if d.task in ("text", "mlm") and d.path:
        with problems.check():
            textfile.check_length(d.path, d.max_chars, d.val_fraction, d.seq_len)
    if d.task == "tokens" and d.path:
        from . import tokenfile

        with problems.check():
            tokenfile.check(d.path, d.vocab_size, d.seq_len)
    if d.task in ("copy", "reverse") and d.seq_len < 4:
        problems.add(NormbenchError(f"data.task={d.task} needs data.seq_len >= 4 (symbols, separator, answer)",
                                    key="data.seq_len"))
    if d.bos and d.task not in ("charlm", "text", "prose"):
        problems.add(NormbenchError(f"data.bos applies to the decoder text tasks (charlm, text, prose), not to "
                                    f"{d.task}", key="data.bos"))
    if d.variable_length and d.min_len > d.seq_len:
        problems.add(NormbenchError(f"data.min_len={d.min_len} exceeds data.seq_len={d.seq_len}", key="data.min_len"))
