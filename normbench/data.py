"""Tasks and batches.

A batch is ``(x, y, mask)``: inputs (B, T), targets (B, T) with -100 where no loss
is taken, and a padding mask (B, T), True on real tokens, or None when nothing in
the batch is padded. Token id 0 is always padding, so every task has the same
convention and padded batches (``data.variable_length``) work everywhere.
"""
from __future__ import annotations

import functools
import os
import sysconfig
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import textfile, tokenizer
from .config import DataConfig
from .errors import NormbenchError

PAD, IGNORE = 0, -100
EVAL_SEED = 1234  # validation batches are the same for every run and seed
# Generated tables and test suites are not the library's prose-like code.
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings"}


class Batch(NamedTuple):
    x: torch.Tensor  # (B, T) int64
    y: torch.Tensor  # (B, T) int64, IGNORE where no loss
    mask: torch.Tensor | None  # (B, T) bool, True on real tokens


@functools.lru_cache(maxsize=4)
def stdlib_text(max_chars: int) -> tuple[str, dict]:
    """The running interpreter's standard-library .py files, in sorted path order, capped at max_chars."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n, files = [], 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            parts.append(Path(dirpath, name).read_text(encoding="utf-8", errors="replace"))
            n += len(parts[-1])
            files += 1
            if n >= max_chars:
                break
        if n >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    return text, textfile.fingerprint(text, source="python-stdlib", files=files)


def file_text(path: str, max_chars: int) -> tuple[str, dict]:
    text = textfile.read(path, max_chars)
    return text, textfile.fingerprint(text, source=str(path), files=1)


@functools.lru_cache(maxsize=2)
def prose_text(max_chars: int) -> tuple[str, dict]:
    """Natural English with no download: the running Python's documentation topics
    (``pydoc_data.topics``, about 465,000 characters in CPython 3.11) in sorted topic order; where
    they are missing, the standard library modules' docstrings."""
    try:
        from pydoc_data.topics import topics

        parts, source = [topics[k] for k in sorted(topics)], "python-pydoc-topics"
    except ImportError:  # a Python built without them: the modules' docstrings, read, never imported
        import ast

        parts, source = [], "python-stdlib-docstrings"
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in sorted(root.glob("*.py")):
            try:
                doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8", errors="replace")))
            except (SyntaxError, ValueError):
                continue
            if doc:
                parts.append(doc)
    text = "\n\n".join(parts)[:max_chars]
    return text, textfile.fingerprint(text, source=source, files=len(parts))


def corpus(cfg: DataConfig) -> tuple[str, dict]:
    """The text of a text task: data.path's file, the documentation topics (prose), or the library's code."""
    if cfg.path:
        return file_text(cfg.path, cfg.max_chars)
    prose = cfg.task == "prose" or (cfg.task == "mlm" and cfg.corpus == "prose")
    return prose_text(cfg.max_chars) if prose else stdlib_text(cfg.max_chars)


class CharLM:
    """Language modelling on a text (charlm, text, prose): random windows of its tokens (nanoGPT
    style), the tokens by ``data.tokenizer`` (characters by default)."""
    causal = True  # a decoder: position t sees positions <= t

    def __init__(self, cfg: DataConfig, device: torch.device, cache: Path | None = None):
        text, self.fingerprint = corpus(cfg)
        n_train, _ = textfile.split_sizes(len(text), cfg.val_fraction)  # the tail is validation, in characters
        enc = tokenizer.encode(text, n_train, cfg.tokenizer, cfg.vocab_size, cache)
        if cfg.tokenizer != "char":
            self.fingerprint = {**self.fingerprint, **enc.info}
        self.vocab = enc.vocab
        self.tokenizer_json = enc.model  # the BPE itself (sampling encodes a prompt with it); None otherwise
        self.token_bytes = torch.from_numpy(enc.token_bytes)  # (V,) bytes per token: bits per byte
        self.splits = {"train": torch.from_numpy(enc.train).to(device), "val": torch.from_numpy(enc.val).to(device)}
        self.BOS = None
        if cfg.bos:  # one more token, never a target and no bytes
            self.vocab, self.BOS = self.vocab + ["<bos>"], len(self.vocab)
            self.token_bytes = torch.cat([self.token_bytes, torch.zeros(1, dtype=self.token_bytes.dtype)])
        for split, data in self.splits.items():
            if len(data) < cfg.seq_len + 2:
                raise NormbenchError(f"the {split} split has {len(data)} tokens, fewer than data.seq_len + 2 = "
                                     f"{cfg.seq_len + 2}; use a longer text or a shorter data.seq_len",
                                     key="data.seq_len")
        self.cfg, self.device = cfg, device

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def generator(self, seed: int) -> torch.Generator:
        """Training batches are drawn on the corpus's device: on a GPU no copy, no host sync, per step.
        (A CPU generator gives CPU batches; the same seed draws other windows on a GPU.)"""
        return torch.Generator(device=self.device).manual_seed(seed)

    def batch(self, split: str, batch_size: int, gen: torch.Generator, full: bool = False) -> Batch:
        """``full``: every sequence data.seq_len long, unpadded, even where data.variable_length is set."""
        data, T = self.splits[split], self.cfg.seq_len
        starts = torch.randint(0, len(data) - T - 1, (batch_size, 1), generator=gen, device=gen.device)
        tok = data[(starts + torch.arange(T + 1, device=gen.device)).to(self.device)]  # (B, T+1)
        if self.BOS is not None:  # <bos> then T - 1 tokens as inputs; the T tokens after <bos> as targets
            tok = torch.cat([torch.full_like(tok[:, :1], self.BOS), tok[:, :-1]], dim=1)
        if full or not self.cfg.variable_length:
            return Batch(tok[:, :-1], tok[:, 1:], None)
        lengths = torch.randint(self.cfg.min_len, T + 1, (batch_size, 1), generator=gen).to(self.device)
        real = torch.arange(T, device=self.device) < lengths  # (B, T): L inputs, L targets
        return Batch(tok[:, :-1].masked_fill(~real, PAD), tok[:, 1:].masked_fill(~real, IGNORE), real)


class MaskedLM(CharLM):
    """Masked language modelling (BERT, Devlin et al. 2019) on the same corpus: windows of T
    characters; each real token is selected with probability ``data.mask_rate``, and a selected
    token becomes the mask token (80%), a random character (10%) or stays (10%); the loss is on the
    selected positions only, and each sequence has at least one. The model attends both ways (``causal`` False). The selection is drawn
    from the batch's generator: the run's seed for training, the fixed EVAL_SEED for the validation
    set, which is therefore the same for every run."""
    causal = False

    def __init__(self, cfg: DataConfig, device: torch.device, cache: Path | None = None):
        super().__init__(cfg, device, cache)
        self.n_chars = len(self.vocab) - 1  # ids 1..n_chars are the tokenizer's (characters by default)
        self.vocab = self.vocab + ["<mask>"]
        self.token_bytes = torch.cat([self.token_bytes, torch.zeros(1, dtype=self.token_bytes.dtype)])
        self.MASK = len(self.vocab) - 1

    def batch(self, split: str, batch_size: int, gen: torch.Generator, full: bool = False) -> Batch:
        data, T, dev = self.splits[split], self.cfg.seq_len, gen.device
        starts = torch.randint(0, len(data) - T, (batch_size, 1), generator=gen, device=dev)
        tok = data[(starts + torch.arange(T, device=dev)).to(self.device)]  # (B, T)
        real = None
        if self.cfg.variable_length and not full:
            lengths = torch.randint(self.cfg.min_len, T + 1, (batch_size, 1), generator=gen, device=dev)
            real = (torch.arange(T, device=dev) < lengths).to(self.device)  # (B, T)
            tok = tok.masked_fill(~real, PAD)
        pick, how = (torch.rand(batch_size, T, generator=gen, device=dev).to(self.device) for _ in range(2))
        other = torch.randint(1, self.n_chars + 1, (batch_size, T), generator=gen, device=dev).to(self.device)
        if real is not None:
            pick = pick.masked_fill(~real, 2.0)  # padding is never selected
        # at least one selected token per sequence (its smallest draw): a batch with no target has no
        # loss (cross-entropy over nothing is NaN), which a batch of one short sequence would hit
        sel = (pick < self.cfg.mask_rate) | (pick == pick.amin(dim=1, keepdim=True))
        x = torch.where(sel & (how < 0.8), self.MASK, torch.where(sel & (how < 0.9), other, tok))
        return Batch(x, tok.masked_fill(~sel, IGNORE), real)


class TokenLM:
    """Language modelling on pre-tokenised files (``data.task: tokens``, tokenfile.py), memory-mapped:
    each sequence is a random window of a random file of the split, files weighted by their length.
    Ids are the files' plus 1 (id 0 is padding, as in every task). Token files carry no bytes, so no
    bits per byte: losses stay in nats per token."""
    causal = True
    token_bytes = None

    def __init__(self, cfg: DataConfig, device: torch.device, cache: Path | None = None):
        from . import tokenfile

        splits, vocab = tokenfile.find_splits(cfg.path, cfg.vocab_size)
        self.arrays = {name: tokenfile.open_split(split) for name, split in splits.items()}
        self.vocab = ["<pad>"] + [f"t{i}" for i in range(vocab)]
        meta = tokenfile.read_meta_dict(Path(cfg.path)) if Path(cfg.path).is_dir() else None
        itos = (meta or {}).get("itos")  # nanoGPT's character datasets: id -> character (for sampling)
        if isinstance(itos, dict) and all(isinstance(v, str) for v in itos.values()):
            self.vocab = ["<pad>"] + [itos.get(i, f"t{i}") for i in range(vocab)]
        self.fingerprint = {"source": "tokens", "digest": tokenfile.digest(cfg.path), "vocab_size": vocab,
                            "tokens": {name: int(sum(len(a) for a in arrays)) for name, arrays in self.arrays.items()}}
        self.cfg, self.device = cfg, device

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # windows are read on the host, then copied

    def batch(self, split: str, batch_size: int, gen: torch.Generator, full: bool = False) -> Batch:
        T, arrays = self.cfg.seq_len, self.arrays[split]  # never padded: full changes nothing
        sizes = torch.tensor([max(0, len(a) - T - 1) for a in arrays], dtype=torch.float64)
        which = torch.multinomial(sizes, batch_size, replacement=True, generator=gen)
        starts = (torch.rand(batch_size, generator=gen, dtype=torch.float64) * sizes[which]).long()
        tok = torch.from_numpy(np.stack([np.asarray(arrays[f][s:s + T + 1], dtype=np.int64)
                                         for f, s in zip(which.tolist(), starts.tolist())])) + 1  # (B, T+1)
        if int(tok.max()) >= self.vocab_size:  # an id the validation's sample missed: say so, not an IndexError
            raise NormbenchError(f"a {split} token id ({int(tok.max()) - 1}) is beyond the vocabulary "
                                 f"({self.vocab_size - 1}; data.vocab_size or meta.pkl)", key="data.path")
        return Batch(_to(tok[:, :-1], self.device), _to(tok[:, 1:], self.device), None)


class Symbolic:
    """copy / reverse: L random symbols, a separator, then the answer; loss on the answer only."""
    causal = True
    token_bytes = None

    SEP = 1

    def __init__(self, cfg: DataConfig, device: torch.device, cache: Path | None = None):
        self.cfg, self.device = cfg, device
        self.vocab = ["<pad>", "<sep>"] + [f"s{i}" for i in range(cfg.symbols)]
        self.fingerprint = {"source": f"synthetic-{cfg.task}", "symbols": cfg.symbols}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def batch(self, split: str, batch_size: int, gen: torch.Generator, full: bool = False) -> Batch:
        T = self.cfg.seq_len
        L_max = T // 2  # 2L+1 tokens: L symbols, the separator, L answer tokens
        if self.cfg.variable_length and not full:
            L = torch.randint(max(1, self.cfg.min_len // 2), L_max + 1, (batch_size, 1), generator=gen)
        else:
            L = torch.full((batch_size, 1), L_max)
        sym = torch.randint(2, 2 + self.cfg.symbols, (batch_size, L_max), generator=gen)  # (B, L_max)
        if self.cfg.task == "reverse":  # row b's answer is its first L[b] symbols reversed
            answer = torch.gather(sym, 1, (L - 1 - torch.arange(L_max)).clamp_min(0))
        else:
            answer = sym
        p = torch.arange(T + 1)[None, :]  # (1, T+1)
        tok = torch.where(p < L, torch.gather(sym, 1, p.clamp_max(L_max - 1).expand(batch_size, -1)),
              torch.where(p == L, self.SEP,
              torch.where(p <= 2 * L, torch.gather(answer, 1, (p - L - 1).clamp(0, L_max - 1)), PAD)))
        t = p[:, :-1]  # target t is token t+1: the answer tokens are targets L .. 2L-1
        y = tok[:, 1:].masked_fill((t < L) | (t >= 2 * L), IGNORE)
        real = (t <= 2 * L).expand(batch_size, -1)  # the last answer token is an input too
        mask = None if bool(real.all()) else _to(real, self.device)
        return Batch(_to(tok[:, :-1], self.device), _to(y, self.device), mask)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # batches are built on the host, then copied


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without blocking the host: a copy from pageable memory would synchronise."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


TASKS = {"charlm": CharLM, "text": CharLM, "prose": CharLM, "copy": Symbolic, "reverse": Symbolic, "mlm": MaskedLM,
         "tokens": TokenLM}


def make_task(cfg: DataConfig, device: torch.device, cache: Path | None = None):
    """The task of ``cfg``; ``cache``: where a trained BPE is kept (the results folder's .cache/bpe)."""
    return TASKS[cfg.task](cfg, device, cache)
