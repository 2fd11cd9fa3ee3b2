"""The output formats of ``compare`` and ``claims``, by name: the one place to add one.

A format names its file suffixes (``--output results.md`` picks markdown) and how it writes a
comparison and a claims ledger as text. ``table`` is the terminal's rich table: the CLI draws it
(cli/results.py), so it has no writers here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import NormbenchError


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]
    comparison: Callable | None = None  # Comparison -> text
    ledger: Callable | None = None  # the ledger DataFrame -> text


def _comparison(name: str) -> Callable:
    def write(c) -> str:
        from . import tables

        return {"csv": tables.to_csv, "markdown": tables.to_markdown, "json": tables.to_json}[name](c)
    return write


def _ledger_markdown(df) -> str:
    from .tables import ledger_markdown

    return ledger_markdown(df)


FORMATS: dict[str, Format] = {
    "table": Format("table", (".txt",)),
    "csv": Format("csv", (".csv",), _comparison("csv"), lambda df: df.to_csv(index=False)),
    "markdown": Format("markdown", (".md", ".markdown"), _comparison("markdown"), _ledger_markdown),
    "json": Format("json", (".json",), _comparison("json"), lambda df: df.to_json(orient="records", indent=2) + "\n"),
}


def pick(fmt: str | None, output: Path | None) -> Format:
    """``--format`` as given, else the one ``--output``'s suffix names, else ``table``."""
    if fmt is None:
        suffix = output.suffix.lower() if output is not None else ""
        return next((f for f in FORMATS.values() if suffix in f.suffixes), FORMATS["table"])
    if fmt not in FORMATS:
        raise NormbenchError(f"expected one of {', '.join(FORMATS)}, got {fmt!r}", key="--format")
    return FORMATS[fmt]
