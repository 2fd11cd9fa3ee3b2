"""A researcher's own corpus (``data.task: text``, ``data.path``): read, fingerprinted, checked.

Torch-free, so recipes are validated (and run ids computed) without importing torch. The run
id hashes the text a run trains on, not the file's path: editing the file gives new run ids
(no stale result is reused) and the same text in another folder resumes the same runs.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

from .errors import NormbenchError


def read(path: str, max_chars: int) -> str:
    """The file's text, capped at ``max_chars`` characters; one line (key data.path) if unreadable."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise NormbenchError(f"cannot read {path}: {e.strerror}", key="data.path") from None
    return _read(str(path), st.st_size, st.st_mtime_ns, max_chars)


@functools.lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int, max_chars: int) -> str:  # size and mtime: a changed file rereads
    try:
        return Path(path).read_text(encoding="utf-8")[:max_chars]
    except (OSError, UnicodeDecodeError) as e:
        raise NormbenchError(f"cannot read a UTF-8 text file: {e}", key="data.path") from None


def file_digest(path: str, max_chars: int) -> str:
    """``digest`` of the file's text as a run trains on it; computed once per version of the file."""
    st = os.stat(path)
    return _file_digest(str(path), st.st_size, st.st_mtime_ns, max_chars)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int, max_chars: int) -> str:
    return digest(_read(path, size, mtime_ns, max_chars))


def digest(text: str) -> str:
    """The first 16 hex digits of the text's SHA-256 (summary.json's corpus.sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(text: str, source: str, files: int) -> dict:
    """What summary.json records about a corpus."""
    return {"source": source, "files": files, "chars": len(text), "sha256": digest(text),
            "python": ".".join(map(str, sys.version_info[:3]))}


def split_sizes(n_chars: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) characters: validation is the tail, ``int(n * val_fraction)`` characters."""
    n_val = int(n_chars * val_fraction)
    return n_chars - n_val, n_val


def check_length(path: str, max_chars: int, val_fraction: float, seq_len: int) -> None:
    """Refuse, before any run starts, a corpus whose train or validation split is shorter than one
    context (a window needs data.seq_len + 2 characters)."""
    n = len(read(path, max_chars))
    need = seq_len + 2
    for split, size in zip(("train", "validation"), split_sizes(n, val_fraction)):
        if size < need:
            raise NormbenchError(f"{path} has {n:,} characters, so its {split} split (data.val_fraction="
                                 f"{val_fraction:g}) has {size:,}, fewer than one context (data.seq_len + 2 = "
                                 f"{need}); use a longer text or a shorter data.seq_len", key="data.path")
