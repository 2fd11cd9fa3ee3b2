"""The validation set: fixed in tokens, the same windows for every run of a task and sequence length.

Windows are drawn once from ``EVAL_SEED`` in draws of ``DRAW`` sequences until they hold at least
``train.eval_tokens`` target tokens, so the set depends on the task and ``data.seq_len`` only, never
on the batch size: a batch-1 run and a batch-32 run are scored on the same tokens. Losses are
token-weighted means over the whole set. The unigram baseline (``unigram_loss``) scores the same
set by each token's frequency among the training split's targets: a run that ends near it has
learned the token frequencies and nothing more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import EVAL_SEED, IGNORE, Batch

DRAW = 64  # sequences per draw of the validation windows (and per forward in eval mode)
UNIGRAM_SEED = EVAL_SEED + 1  # tasks without a stored training split: targets sampled from this seed
UNIGRAM_SAMPLE = 65536  # target tokens sampled for those tasks' frequencies


@dataclass(frozen=True)
class EvalSet:
    chunks: list[Batch]  # DRAW sequences each, in draw order
    tokens: int  # target tokens scored (those not IGNORE)
    bytes: int | None = None  # the UTF-8 bytes those targets stand for (text tasks): bits per byte

    def batches(self, batch_size: int) -> list[Batch]:
        """The same sequences re-cut into training-sized batches (BatchNorm's batch-statistics
        evaluation normalises by the batch in hand, so its batches must be the training batch size)."""
        x = torch.cat([c.x for c in self.chunks])
        y = torch.cat([c.y for c in self.chunks])
        masks = [c.mask if c.mask is not None else torch.ones_like(c.x, dtype=torch.bool) for c in self.chunks]
        mask = torch.cat(masks)
        out = []
        for i in range(0, len(x), batch_size):
            m = mask[i:i + batch_size]
            out.append(Batch(x[i:i + batch_size], y[i:i + batch_size], None if bool(m.all()) else m))
        return out

    def first(self, n: int) -> Batch:
        """The first ``n`` sequences (the probes' fixed batch)."""
        return first_rows(self.chunks[0], n)


def first_rows(b: Batch, n: int) -> Batch:
    mask = None if b.mask is None else b.mask[:n]
    return Batch(b.x[:n], b.y[:n], None if mask is None or bool(mask.all()) else mask)


def targets(b: Batch) -> int:
    return int((b.y != IGNORE).sum())


def validation_set(task, eval_tokens: int, full: bool = False) -> EvalSet:
    """Draws of ``DRAW`` validation windows from the fixed seed until ``eval_tokens`` targets are held.
    ``full``: windows of data.seq_len, unpadded, even for a padded task (the unpadded validation)."""
    gen = torch.Generator().manual_seed(EVAL_SEED)  # on the host: the same windows on every device
    chunks, n = [], 0
    while n < eval_tokens:
        chunks.append(task.batch("val", DRAW, gen, full=True) if full else task.batch("val", DRAW, gen))
        got = targets(chunks[-1])
        if got == 0 and len(chunks) > 1000:  # a task with no targets would loop for ever
            raise RuntimeError("the validation draws hold no target tokens")
        n += got
    return EvalSet(chunks, n, target_bytes(task, chunks))


def target_bytes(task, chunks: list[Batch]) -> int | None:
    """The UTF-8 bytes the validation targets stand for; None where tokens carry no bytes (token
    files, the symbolic tasks)."""
    table = getattr(task, "token_bytes", None)
    if table is None:
        return None
    return int(sum(int(table[c.y[c.y != IGNORE].cpu()].sum()) for c in chunks))


def loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the non-ignored targets, fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")


def mean_loss(model, batches: list[Batch], autocast) -> float:
    """Token-weighted mean loss of ``model`` over ``batches`` (in whatever mode the caller set)."""
    total, n = 0.0, 0
    for x, y, mask in batches:
        with autocast():
            logits = model(x, mask)
        total += loss_sum(logits, y).item()
        n += targets(Batch(x, y, mask))
    return total / max(n, 1)


@torch.no_grad()
def evaluate(model, batches, autocast) -> float:
    """Token-weighted mean loss over ``batches`` in eval mode (BatchNorm normalises with its running
    statistics)."""
    model.eval()
    try:
        return mean_loss(model, batches, autocast)
    finally:
        model.train()


def train_target_counts(task) -> torch.Tensor:
    """(V,) how often each token is a target in the training split: the corpus itself for the text
    tasks (every token is some window's target), a fixed sample of training batches otherwise."""
    V = task.vocab_size
    splits = getattr(task, "splits", None)
    if splits is not None:
        return torch.bincount(splits["train"].cpu(), minlength=V)[:V]
    gen, counts, n = torch.Generator().manual_seed(UNIGRAM_SEED), torch.zeros(V, dtype=torch.long), 0
    while n < UNIGRAM_SAMPLE:
        y = task.batch("train", DRAW, gen).y.cpu()
        y = y[y != IGNORE]
        counts += torch.bincount(y, minlength=V)[:V]
        n += len(y)
    return counts


def unigram_loss(task, evalset: EvalSet) -> float:
    """The validation loss of predicting every target by its training-split frequency (add-one
    smoothed, so an unseen token costs a finite amount), in nats."""
    counts = train_target_counts(task).double() + 1.0
    logp = (counts / counts.sum()).log()
    total, n = 0.0, 0
    for c in evalset.chunks:
        y = c.y.cpu()
        y = y[y != IGNORE]
        total -= float(logp[y].sum())
        n += len(y)
    return total / n if n else math.nan
