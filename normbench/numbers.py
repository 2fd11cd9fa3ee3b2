"""Missing and non-finite numbers, and how a number is shown: one rule for the whole package.

A leaf (it imports only math), shared by the trainer's summaries, compare, the ledger and the tables.
"""
from __future__ import annotations

import math


def missing(v) -> bool:
    """None or NaN (a float or a numpy float): no value."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def finite_or_none(v):
    """``v``, or None when it is a non-finite float (NaN, ±inf): summary.json holds no NaN."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def none_if_missing(v):
    return None if missing(v) else v


def fmt_number(v, digits: int = 4, inf: str = "inf") -> str:
    """A number for a table or a sentence: ``-`` when missing, ``inf`` (or ``inf`` as given) when
    infinite, 1,234 from 100 up, 4 significant digits below, and 7.714e+13 from 1e7 up (a run of
    digits that long reads as noise)."""
    if missing(v):
        return "-"
    if not isinstance(v, float):
        return str(v)
    if math.isinf(v):
        return inf if v > 0 else f"-{inf}"
    if abs(v) >= 1e7:
        return f"{v:.{digits}g}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"
