"""The loss at initialisation against ln V, by width, vocabulary and embedding convention (issue 32).

Run: python benchmarks/init_loss.py     (about two minutes on a 2-core CPU: one step per model)

The loss of step 1 (before any update) of a 4-layer Pre-LN model, three seeds each, for four widths and
three vocabularies: a 20-symbol text (V 21), the built-in code corpus by character (V about 96) and
the built-in prose with a 1,024-token BPE. Conventions:
- default: normbench's (tied head, N(0, d^-1/2) embeddings times sqrt(d) at the input; fairseq's)
- gpt2: tied head, N(0, 0.02) embeddings, unscaled, GPT-2's init
- untied: the default input, an untied head N(0, d^-1/2) (fairseq's output projection)
- untied_small: the default input, an untied head N(0, 0.02 / sqrt(d))
"""
import math
import random
import statistics
import tempfile
from pathlib import Path

from normbench.config import from_dict
from normbench.trainer import train

CONVENTIONS = {
    "default": {},
    "gpt2": {"embed_scale": "none", "init": "gpt2"},
    "untied": {"tie_embeddings": False},
    "untied_small": {"tie_embeddings": False, "head_std_scale": 0.02},
}


def text20(folder: Path) -> str:
    rng = random.Random(0)
    path = folder / "sym20.txt"
    path.write_text("".join(rng.choice("abcdefghijklmnopqrs ") for _ in range(100_000)))
    return str(path)


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    vocabs = {"20 symbols": {"task": "text", "path": text20(folder)}, "code chars": {"task": "charlm"},
              "prose BPE 1024": {"task": "prose", "tokenizer": "bpe", "vocab_size": 1024}}
    print("| vocabulary | V | ln V | d_model | " + " | ".join(CONVENTIONS) + " |")
    print("|---|---|---|---|" + "---|" * len(CONVENTIONS))
    for vname, data in vocabs.items():
        for d in (32, 64, 128, 256):
            cells, V = [], None
            for conv in CONVENTIONS.values():
                model = {"layers": 4, "d_model": d, "heads": 4, "d_ff": 4 * d,
                         **{k: v for k, v in conv.items() if k != "head_std_scale"}}
                if "head_std_scale" in conv:
                    model["head_std"] = conv["head_std_scale"] / math.sqrt(d)
                losses = []
                for seed in range(3):
                    cfg = from_dict({"model": model, "data": {**data, "seq_len": 64},
                                     "train": {"steps": 1, "batch_size": 16, "eval_every": 1, "eval_tokens": 1024},
                                     "seed": seed, "device": "cpu"})
                    s = train(cfg, threads=1)
                    losses.append(s["initial_loss"])
                    V = s["vocab_size"]
                cells.append(f"{statistics.mean(losses):.2f}")
            print(f"| {vname} | {V} | {math.log(V):.2f} | {d} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
