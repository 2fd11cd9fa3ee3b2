"""Dotted keys (``model.norm``, ``train.lr``): reading and setting them in a raw nested dict,
resolving a short name to its key, matching a value as typed, and suggesting near misses.

A leaf that imports only errors.py, so the config, the recipe, the claims and compare share it.
"""
from __future__ import annotations

import difflib
from typing import Any

from .errors import NormbenchError


def get_dotted(cfg_dict: dict, key: str) -> Any:
    node = cfg_dict
    for part in key.split("."):
        node = node[part]
    return node


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level of dotted keys: {"model": {"norm": x}} -> {"model.norm": x}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``key`` (``model.norm``, ``seed``) in a raw nested dict, creating sections."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise NormbenchError("cannot set a key inside a non-mapping", key=key)
    node[parts[-1]] = value


def suggest(key: str, choices) -> str:
    near = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def resolve_key(key: str, valid, flag: str) -> str:
    """A dotted key as given, or the one key whose last part it is (``norm`` -> ``model.norm``)."""
    if key in valid:
        return key
    found = [v for v in valid if v.split(".")[-1] == key]
    if len(found) == 1:
        return found[0]
    if found:
        raise NormbenchError(f"{key!r} is ambiguous: it could be {' or '.join(sorted(found))}", key=flag)
    raise NormbenchError(f"unknown key {key!r}{suggest(key, valid)}", key=flag)


def matches(v, wanted: str) -> bool:
    """A run's value against a value as typed (numbers compare as numbers, the rest case-blind; a null
    key, None in a config and NaN in a table, matches null, none or nan)."""
    if v is None or (isinstance(v, float) and v != v):
        return wanted.lower() in ("none", "null", "nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v).lower() == wanted.lower()
    try:
        return float(v) == float(wanted)
    except ValueError:
        return False
