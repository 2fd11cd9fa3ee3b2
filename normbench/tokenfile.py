"""Pre-tokenised data (``data.task: tokens``): the files peers train on, memory-mapped, never loaded.

Two layouts, found in the folder ``data.path`` (or named by a pattern holding ``{split}``, such as
``data/fineweb_{split}_*.bin`` or ``data/{split}.bin``: one file or a glob of files per split):

- nanoGPT's: ``train.bin`` and ``val.bin``, raw token ids (uint16, or uint32 when the vocabulary
  needs it), with an optional ``meta.pkl`` holding ``vocab_size``;
- modded-nanogpt's shards: ``*train*.bin`` and ``*val*.bin``, each a 256 x int32 header (magic
  20240520, version 1, the token count) then that many uint16 tokens.

The vocabulary size comes from ``meta.pkl`` or ``data.vocab_size``. A file's digest (its part of the
run id) hashes its size and a fixed sample of 65 blocks of 4 KiB (the first and the last among them), not the
whole file, so that a large shard is fingerprinted in milliseconds; an edit that touches none of
those blocks and keeps the size would go unnoticed. Torch-free: recipes are validated and run ids
computed without torch.
"""
from __future__ import annotations

import functools
import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NormbenchError

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
SAMPLE_BLOCKS, BLOCK = 64, 4096
CHECK_TOKENS = 1 << 16  # token ids checked against the vocabulary, spread over each split


@dataclass(frozen=True)
class Split:
    files: tuple[str, ...]
    offset: int  # bytes before the tokens (the shard header)
    dtype: str  # uint16 or uint32


def fail(message: str, path) -> NormbenchError:
    return NormbenchError(message, key="data.path", file=str(path))


def shard_tokens(path: Path) -> int:
    """The token count a modded-nanogpt shard's header declares, its header checked."""
    with open(path, "rb") as f:
        head = f.read(HEADER_INTS * 4)
    if len(head) < HEADER_INTS * 4:
        raise fail(f"truncated shard header: {len(head)} bytes, expected {HEADER_INTS * 4}", path)
    header = np.frombuffer(head, dtype="<i4")
    if header[0] != SHARD_MAGIC:
        raise fail(f"not a token shard: magic {int(header[0])}, expected {SHARD_MAGIC}", path)
    if header[1] != SHARD_VERSION:
        raise fail(f"unsupported shard version {int(header[1])}, expected {SHARD_VERSION}", path)
    n = int(header[2])
    if path.stat().st_size != HEADER_INTS * 4 + 2 * n:
        raise fail(f"the header declares {n:,} tokens but the file holds {(path.stat().st_size - 1024) // 2:,}", path)
    return n


def read_meta(folder: Path) -> int | None:
    """``vocab_size`` from nanoGPT's meta.pkl: unpickled with builtins only (a pickle can run code)."""
    meta = read_meta_dict(folder)
    return None if meta is None else meta["vocab_size"]


def read_meta_dict(folder: Path) -> dict | None:
    """nanoGPT's meta.pkl (vocab_size, and for its character datasets itos and stoi), or None."""
    path = Path(folder) / "meta.pkl"
    if not path.exists():
        return None

    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            raise fail(f"meta.pkl holds a {module}.{name}; only plain dicts, lists, strings and numbers are read",
                       path)

    try:
        meta = Plain(io.BytesIO(path.read_bytes())).load()
    except NormbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken file: one line
        raise fail(f"cannot read meta.pkl: {type(e).__name__}: {e}", path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int):
        raise fail("meta.pkl has no integer vocab_size", path)
    return meta


def is_shard(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and int(np.frombuffer(head, dtype="<i4")[0]) == SHARD_MAGIC


def pattern_splits(pattern: str, vocab_size: int | None) -> tuple[dict[str, Split], int]:
    """``data.path`` with ``{split}``: each split's files by the glob, shards or raw ids by their header."""
    folder, out, vocab = Path(pattern).parent, {}, read_meta(Path(pattern).parent) or vocab_size
    for split in ("train", "val"):
        files = sorted(folder.glob(Path(pattern.format(split=split)).name))
        if not files:
            raise fail(f"no {split} split: nothing matches {pattern.format(split=split)}", folder)
        if is_shard(files[0]):
            for f in files:
                shard_tokens(f)
            out[split] = Split(tuple(map(str, files)), HEADER_INTS * 4, "uint16")
        else:
            if vocab is None:
                raise fail("the vocabulary size is unknown: give data.vocab_size, or a meta.pkl with vocab_size",
                           folder)
            out[split] = Split(tuple(map(str, files)), 0, "uint16" if vocab <= 1 << 16 else "uint32")
    if vocab is None:
        raise fail("the vocabulary size is unknown: give data.vocab_size (GPT-2's is 50257)", folder)
    return out, vocab


def find_splits(path: str, vocab_size: int | None) -> tuple[dict[str, Split], int]:
    """The train and val splits under ``path`` and the vocabulary size; one line when something is off."""
    if "{split}" in str(path):
        return pattern_splits(str(path), vocab_size)
    folder = Path(path)
    if not folder.is_dir():
        raise fail("expected a folder with train.bin and val.bin (nanoGPT) or *train*.bin and *val*.bin shards",
                   folder)
    vocab = read_meta(folder) or vocab_size
    if (folder / "train.bin").exists() or (folder / "val.bin").exists():
        if vocab is None:
            raise fail("the vocabulary size is unknown: give data.vocab_size, or a meta.pkl with vocab_size", folder)
        dtype = "uint16" if vocab <= 1 << 16 else "uint32"
        out = {}
        for split in ("train", "val"):
            f = folder / f"{split}.bin"
            if not f.exists():
                raise fail(f"{split}.bin is missing", folder)
            if f.stat().st_size % np.dtype(dtype).itemsize:
                raise fail(f"its size is not a whole number of {dtype} tokens", f)
            out[split] = Split((str(f),), 0, dtype)
        return out, vocab
    out = {}
    for split in ("train", "val"):
        files = sorted(folder.glob(f"*{split}*.bin"))
        if not files:
            raise fail(f"no {split} split: expected {split}.bin or *{split}*.bin shards", folder)
        for f in files:
            shard_tokens(f)
        out[split] = Split(tuple(map(str, files)), HEADER_INTS * 4, "uint16")
    if vocab is None:
        raise fail("the vocabulary size is unknown: give data.vocab_size (GPT-2's is 50257)", folder)
    return out, vocab


def open_split(split: Split) -> list[np.memmap]:
    return [np.memmap(f, dtype=split.dtype, mode="r", offset=split.offset) for f in split.files]


def check_ids(arrays: list[np.memmap], vocab: int, where: str) -> None:
    """Token ids on a fixed sample of positions must lie below the vocabulary size."""
    for a in arrays:
        if len(a) == 0:
            continue
        idx = np.linspace(0, len(a) - 1, min(len(a), CHECK_TOKENS)).astype(np.int64)
        top = int(np.asarray(a[idx]).max())
        if top >= vocab:
            raise fail(f"token id {top} is beyond the vocabulary ({vocab}; data.vocab_size or meta.pkl)", where)


def digest(path: str) -> str:
    """The token files by size and a fixed sample of blocks (part of the run id): the folder's, or those
    a ``{split}`` pattern matches."""
    if "{split}" in str(path):
        files = sorted(p for s in ("train", "val") for p in Path(path).parent.glob(Path(path.format(split=s)).name))
    else:
        files = sorted(p for p in Path(path).glob("*") if p.suffix in (".bin", ".pkl"))
    return _digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=8)
def _digest(files: tuple) -> str:
    h = hashlib.sha256()
    for name, size, _ in files:
        h.update(f"{Path(name).name}:{size};".encode())
        with open(name, "rb") as f:
            for i in range(SAMPLE_BLOCKS + 1):
                f.seek(min(size, max(0, (size - BLOCK) * i // SAMPLE_BLOCKS)))
                h.update(f.read(BLOCK))
    return h.hexdigest()[:16]


def check(path: str, vocab_size: int | None, seq_len: int) -> None:
    """Everything a run will need, before any run starts: the splits, the vocabulary, the ids, the length."""
    splits, vocab = find_splits(path, vocab_size)
    for name, split in splits.items():
        arrays = open_split(split)
        check_ids(arrays, vocab, split.files[0])
        if max((len(a) for a in arrays), default=0) < seq_len + 2:
            raise fail(f"the {name} split has no file of data.seq_len + 2 = {seq_len + 2} tokens", path)
