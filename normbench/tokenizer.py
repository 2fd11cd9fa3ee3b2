"""How a text task turns its corpus into token ids (``data.tokenizer``): characters, UTF-8 bytes, or
a byte-level BPE trained here on the training split.

Every tokenizer splits the text the same way first (the validation split is the text's tail,
``data.val_fraction`` of its characters), so character, byte and BPE arms train and are scored on
the same text; each token's byte length (``Encoded.token_bytes``) converts a validation loss to
bits per UTF-8 byte. Ids start at 1: id 0 is padding, as in every task.

The BPE (Hugging Face ``tokenizers``, the optional ``bpe`` extra) is trained once per corpus and
settings and cached, as JSON, under the results folder (``<results>/.cache/bpe``; elsewhere the
user's cache); a file lock makes concurrent runs of a sweep wait for the first one's training
rather than race on the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import NormbenchError


class Encoded(NamedTuple):
    train: np.ndarray  # int64 ids, 1-based
    val: np.ndarray
    vocab: list[str]  # id -> token, "<pad>" at 0
    token_bytes: np.ndarray  # id -> the UTF-8 bytes the token stands for (0 for padding)
    info: dict  # the tokenizer, for the corpus fingerprint
    model: str | None = None  # a BPE's JSON (to encode a prompt when sampling)


def char_ids(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct code points, sorted; each character's index among them), as np.unique with
    return_inverse gives, but by counting instead of sorting: O(n), about 12x faster on the
    4M-character corpus, which every run builds."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    present = np.bincount(codes) > 0  # code points stop at 0x10FFFF: at most 1.1M counters
    lut = np.cumsum(present, dtype=np.int64) - 1  # code point -> its rank among those present
    return np.flatnonzero(present), lut[codes]


def chars(text: str, n_train: int) -> Encoded:
    cps, ids = char_ids(text)
    ids = ids + 1
    nbytes = np.array([0] + [len(chr(c).encode("utf-8")) for c in cps], dtype=np.int64)
    return Encoded(ids[:n_train], ids[n_train:], ["<pad>"] + [chr(c) for c in cps], nbytes, {"tokenizer": "char"})


def byte_ids(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1


def utf8_bytes(text: str, n_train: int) -> Encoded:
    vocab = ["<pad>"] + [f"<0x{b:02X}>" for b in range(256)]
    return Encoded(byte_ids(text[:n_train]), byte_ids(text[n_train:]), vocab,
                   np.array([0] + [1] * 256, dtype=np.int64), {"tokenizer": "byte"})


def gpt2_byte_chars() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode), inverted: character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise NormbenchError("bpe needs Hugging Face tokenizers: pip install -c constraints.txt -e \".[bpe]\"",
                             key="data.tokenizer") from None
    return tokenizers


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (fcntl where it exists): one process trains, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a race only trains twice
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normbench" / "bpe"


def bpe_file(train_text: str, vocab_size: int, cache: Path | None) -> Path:
    """The trained tokenizer's JSON, trained now unless the cache holds it (same text, same settings).
    Under the lock, so concurrent runs of a sweep train it once; ``trained`` counts who did."""
    tk = import_tokenizers()
    key = hashlib.sha256(f"{vocab_size};{tk.__version__};".encode() + train_text.encode("utf-8")).hexdigest()[:16]
    path = (cache or default_cache()) / f"bpe-{vocab_size}-{key}.json"
    with locked(path.with_suffix(".lock")):
        if not path.exists():
            tok = tk.Tokenizer(tk.models.BPE())
            tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = tk.decoders.ByteLevel()
            trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                             initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
            tok.train_from_iterator(train_text.splitlines(keepends=True), trainer)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tok.save(str(tmp))
            os.replace(tmp, path)  # atomic: a reader sees the whole file or none
            trained.append(str(path))
    return path


trained: list[str] = []  # the BPE files this process trained (the tests read it)


def bpe(text: str, n_train: int, vocab_size: int, cache: Path | None) -> Encoded:
    tk = import_tokenizers()
    path = bpe_file(text[:n_train], vocab_size, cache)
    tok = tk.Tokenizer.from_file(str(path))
    pieces = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    to_byte = gpt2_byte_chars()
    nbytes = np.array([0] + [len(p) if all(c in to_byte for c in p) else len(p.encode()) for p in pieces],
                      dtype=np.int64)

    def ids(part: str) -> np.ndarray:
        return np.asarray(tok.encode(part).ids, dtype=np.int64) + 1

    return Encoded(ids(text[:n_train]), ids(text[n_train:]), ["<pad>"] + pieces, nbytes,
                   {"tokenizer": "bpe", "vocab_size": vocab_size, "file": path.name}, path.read_text())


def encode(text: str, n_train: int, tokenizer: str, vocab_size: int | None, cache: Path | None = None) -> Encoded:
    """The corpus as ids by ``tokenizer`` (char, byte or bpe), split at character ``n_train``."""
    if tokenizer == "byte":
        return utf8_bytes(text, n_train)
    if tokenizer == "bpe":
        return bpe(text, n_train, vocab_size or 1024, cache)
    return chars(text, n_train)
