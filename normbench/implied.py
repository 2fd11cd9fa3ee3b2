"""Settings a placement or an initialisation brings with it (its paper's conventions).

nGPT (Loshchilov et al. 2024) normalises by its own projection onto the unit sphere, so it runs
without norms, biases, qk-norm, an embedding scale, a tied head or weight decay; T-Fixup (Huang et
al. 2020) replaces the norms; Admin (Liu et al. 2020) rescales Post-LN's skips. A key the user did
not set follows the placement or init (``apply``); a key the user set to another value is refused in
one line by rules.py (nGPT's from this table). ``normbench keys`` and ``run --dry-run`` show the
values a run took from here. Torch-free, like config.py.
"""
from __future__ import annotations

from typing import Any

# (trigger key, its value) -> {key: the value it brings}; applied in this order (admin brings post
# before post's own conventions would be looked up, were there any)
IMPLIED: dict[tuple[str, Any], dict[str, Any]] = {
    ("model.init", "admin"): {"model.placement": "post"},
    ("model.init", "tfixup"): {"model.norm": "none", "model.qk_norm": False},
    ("model.placement", "ngpt"): {
        "model.norm": "none", "model.bias": False, "model.qk_norm": False, "model.embed_norm": False,
        "model.residual_gate": "none", "model.embed_scale": "none", "model.tie_embeddings": False,
        "train.weight_decay": 0.0},
}


def _get(raw: dict, key: str):
    section, _, name = key.rpartition(".")
    part = raw.get(section) if section else raw
    return part.get(name, _MISSING) if isinstance(part, dict) else _MISSING


_MISSING = object()


def apply(raw: Any) -> tuple[Any, dict[str, str]]:
    """(the raw config with every key a placement or init implies filled in where the user left it
    unset, {key: "model.placement=ngpt" that brought it}). A raw that is not a mapping is returned as is
    (config.from_dict refuses it)."""
    if not isinstance(raw, dict):
        return raw, {}
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    brought: dict[str, str] = {}
    for (trigger, value), settings in IMPLIED.items():
        if _get(out, trigger) != value:
            continue
        for key, want in settings.items():
            section, _, name = key.rpartition(".")
            if _get(out, key) is _MISSING and (section not in out or isinstance(out[section], dict)):
                out.setdefault(section, {})[name] = want
                brought[key] = f"{trigger}={value}"
    return out, brought


def notes() -> dict[str, list[str]]:
    """{key: ["none under model.placement=ngpt", ...]}: what ``normbench keys`` shows beside a default."""
    out: dict[str, list[str]] = {}
    for (trigger, value), settings in IMPLIED.items():
        for key, want in settings.items():
            shown = "null" if want is None else str(want).lower() if isinstance(want, bool) else str(want)
            out.setdefault(key, []).append(f"{shown} under {trigger}={value}")
    return out
