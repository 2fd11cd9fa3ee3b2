"""``normbench sample RUN``: text from a run's saved weights (model.pt, or its last checkpoint).

The weights file carries what decoding needs (checkpoint.codec): the vocabulary (id -> token), the
tokenizer's name and, for a BPE, the tokenizer itself. A decoder continues the prompt one token at a
time, from softmax(logits / temperature) with a seeded generator; the context is the last
data.seq_len tokens (the positions are learned up to it). An encoder (task mlm) is sampled the way
it was trained: a mask token after the context is predicted, replaced, and the next one appended.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .catalog import CHECKPOINT, WEIGHTS
from .errors import NormbenchError


def load(run_dir: Path):
    """(config, model in eval mode, codec, step) from a run folder's model.pt or else its checkpoint."""
    from .config import from_dict
    from .model import Transformer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NormbenchError("no such run folder", key=str(run_dir))
    path = next((run_dir / n for n in (WEIGHTS, CHECKPOINT) if (run_dir / n).exists()), None)
    if path is None:
        raise NormbenchError("no weights saved in this run folder: train with train.save_final: true (model.pt) "
                             "or train.checkpoint_every N (checkpoint.pt)", key=str(run_dir))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line, not a traceback
        raise NormbenchError(f"cannot read {path.name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}",
                             key=str(run_dir)) from None
    if not isinstance(state, dict) or "codec" not in state:
        raise NormbenchError(f"{path.name} was written by an older normbench and lacks its vocabulary; "
                             "retrain with train.save_final: true", key=str(run_dir))
    cfg = from_dict({**state["config"], "device": "cpu"})
    codec = state["codec"]
    model = Transformer(cfg.model, len(codec["vocab"]), cfg.data.seq_len, norm_warmup=cfg.train.warmup_steps,
                        bidirectional=not codec["causal"])
    model.load_state_dict(state["model"])
    return cfg, model.eval(), codec, state["step"]


class Codec:
    """Text <-> ids for a run's tokenizer (ids are 1-based; 0 is padding)."""

    def __init__(self, codec: dict):
        self.vocab, self.kind = codec["vocab"], codec["tokenizer"]
        self.bpe = None
        if self.kind == "bpe" and codec.get("tokenizer_json"):
            from .tokenizer import import_tokenizers

            self.bpe = import_tokenizers().Tokenizer.from_str(codec["tokenizer_json"])
        self.index = {t: i for i, t in enumerate(self.vocab) if i > 0}
        self.text = self.kind in ("char", "byte", "bpe") or codec.get("text", False)

    def encode(self, prompt: str) -> list[int]:
        if self.kind == "bpe" and self.bpe is not None:
            return [i + 1 for i in self.bpe.encode(prompt).ids]
        if self.kind == "byte":
            return [b + 1 for b in prompt.encode("utf-8")]
        if self.text:  # characters (or a token file's characters)
            missing = sorted({c for c in prompt if c not in self.index})
            if missing:
                raise NormbenchError(f"the prompt has characters the vocabulary lacks: {''.join(missing)!r}",
                                     key="--prompt")
            return [self.index[c] for c in prompt]
        ids = []  # tokens by name or number, separated by spaces (token files without itos, copy, reverse)
        for part in prompt.split():
            i = self.index.get(part, self.index.get(f"t{part}"))
            if i is None:
                raise NormbenchError(f"unknown token {part!r}: give token names or ids separated by spaces",
                                     key="--prompt")
            ids.append(i)
        return ids

    def decode(self, ids: list[int]) -> str:
        if self.kind == "byte":
            return bytes(i - 1 for i in ids if 0 < i <= 256).decode("utf-8", errors="replace")
        if self.kind == "bpe":
            from .tokenizer import gpt2_byte_chars

            to_byte = gpt2_byte_chars()
            raw = b"".join(bytes(to_byte[c] for c in self.vocab[i]) if all(c in to_byte for c in self.vocab[i])
                           else self.vocab[i].encode() for i in ids if 0 < i < len(self.vocab))
            return raw.decode("utf-8", errors="replace")
        if self.text:
            return "".join(self.vocab[i] for i in ids if 0 < i < len(self.vocab))
        return " ".join(self.vocab[i] for i in ids if 0 <= i < len(self.vocab))


@torch.no_grad()
def generate(model, ids: list[int], tokens: int, temperature: float, seed: int, seq_len: int,
             mask: int | None = None, bos: int | None = None) -> list[int]:
    """``tokens`` new ids after ``ids``; temperature 0 is greedy. ``mask``: an encoder's mask id; ``bos``: the
    first token of every training window (data.bos), put before the context as in training."""
    gen = torch.Generator().manual_seed(seed)
    out = list(ids)
    for _ in range(tokens):
        if mask is not None:
            ctx = out[-(seq_len - 1):] + [mask]
        elif bos is not None:
            ctx = [bos] + out[-(seq_len - 1):]
        else:
            ctx = out[-seq_len:]
        logits = model(torch.tensor([ctx]))[0, -1].float()
        logits[0] = -float("inf")  # never padding
        for special in (mask, bos):
            if special is not None:
                logits[special] = -float("inf")
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        out.append(nxt)
    return out[len(ids):]


def sample(run_dir: Path, prompt: str = "", tokens: int = 200, temperature: float = 1.0, seed: int = 0) -> dict:
    """The continuation of ``prompt``: {"prompt", "text", "output" (the two joined), "ids", "step", "from"}."""
    cfg, model, codec, step = load(run_dir)
    c = Codec(codec)
    ids = c.encode(prompt) if prompt else []
    if not ids:
        ids = [codec["start"]]  # no prompt: start from a frequent token (the first of the validation set)
    new = generate(model, ids, tokens, temperature, seed, cfg.data.seq_len, codec.get("mask"), codec.get("bos"))
    text = c.decode(new)
    joined = prompt + ("" if c.text or not prompt else " ") + text  # token names are separated by spaces
    return {"prompt": prompt, "text": text, "output": joined, "ids": new, "step": step,
            "from": WEIGHTS if (Path(run_dir) / WEIGHTS).exists() else CHECKPOINT}
