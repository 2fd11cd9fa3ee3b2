"""Checkpoints: everything a run needs to go on as if it had never stopped, in one atomic file.

``checkpoint.pt`` in the run folder holds the model, the optimizer, the step, every random state
(torch's, CUDA's, the training batches' generator: the data position), the measurements' running
state (the trace of every probe and the stability detector), the time spent so far and the
metrics.jsonl written so far (so a run resumed on another machine, a Ray worker's, rebuilds its log
too). It is written to a temporary file and renamed over the last one: a kill at any moment leaves
the previous checkpoint or the new one, never half of one. ``model.pt`` (``train.save_final``)
holds the final weights and the config, for ``normbench sample``.

A checkpoint is a pickle (``torch.load(weights_only=False)``): load only run folders you trust,
as with any PyTorch checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .catalog import CHECKPOINT, WEIGHTS

FORMAT = 1


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save(s, run_dir: Path, step: int, train_s: float) -> Path:
    """The session ``s`` after ``step`` (its rows flushed to metrics.jsonl) into run_dir/checkpoint.pt."""
    s.log.flush()
    metrics = run_dir / "metrics.jsonl"
    state = {
        "format": FORMAT, "run_id": s.cfg.run_id(), "step": step,
        "model": s.model.state_dict(), "opt": s.opt.state_dict(),
        "gen": s.gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if s.device.type == "cuda" else None,
        "trace": s.trace, "stab": s.stab, "tokens": s.tokens, "eval_s": s.eval_s, "train_s": train_s,
        "metrics": metrics.read_text() if metrics.exists() else "",
        "config": s.cfg.to_dict(), "codec": codec(s.run),
    }
    path = run_dir / CHECKPOINT
    save_atomic(state, path)
    return path


def load(run_dir: Path | None, run_id: str) -> dict | None:
    """The run folder's checkpoint, if it has one of this run (None otherwise)."""
    if run_dir is None or not (run_dir / CHECKPOINT).exists():
        return None
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    if state.get("format") != FORMAT or state.get("run_id") != run_id:
        return None  # another run's, or an older format: start afresh
    return state


def restore(s, state: dict, run_dir: Path) -> int:
    """Put a checkpoint back into the freshly set-up session ``s``; returns its step. metrics.jsonl is
    rewritten as it was at the checkpoint (rows of steps trained after it are dropped: they are
    trained again, identically)."""
    s.model.load_state_dict(state["model"])
    s.opt.load_state_dict(state["opt"])
    s.gen.set_state(state["gen"].to(s.gen.device) if s.gen.device.type != "cpu" else state["gen"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and s.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    s.trace, s.stab, s.tokens, s.eval_s = state["trace"], state["stab"], state["tokens"], state["eval_s"]
    s.log.restart(state["metrics"])
    return state["step"]


def save_weights(s, run_dir: Path, step: int) -> Path:
    """The final weights with what ``normbench sample`` needs to rebuild the model."""
    path = run_dir / WEIGHTS
    save_atomic({"format": FORMAT, "run_id": s.cfg.run_id(), "step": step, "config": s.cfg.to_dict(),
                 "codec": codec(s.run), "model": s.model.state_dict()}, path)
    return path


def codec(run) -> dict:
    """What sampling needs to turn ids back into text: the vocabulary, the tokenizer (a BPE's JSON), the
    mask id of an encoder, and a start token for an empty prompt (the validation set's first)."""
    task = run.task
    synthetic = task.cfg.task in ("tokens", "copy", "reverse")  # no tokenizer: the task names its vocabulary
    return {"vocab": list(task.vocab), "tokenizer": task.cfg.task if synthetic else task.cfg.tokenizer,
            "tokenizer_json": getattr(task, "tokenizer_json", None),
            "causal": task.causal, "mask": getattr(task, "MASK", None), "bos": getattr(task, "BOS", None),
            "text": task.cfg.task == "tokens" and any(len(v) == 1 for v in task.vocab[1:]),
            "start": int(run.evalset.chunks[0][0][0, 0])}
