"""How long a plan will take, before it starts (``run --dry-run`` and ``validate``).

Calibrated on this machine, not guessed: the first run to do trains a few timed steps here (one
thread, as a sweep's runs get), which gives the model FLOP/s this machine achieves on these
shapes. Every run's training FLOPs (PaLM's 6N + 12LTd per token, ``bench.flops_per_token``) and
its evaluations (a forward, a third of that, over ``train.eval_tokens`` each time) are divided
by it; the wall time schedules the runs in order on ``jobs`` workers, each taking the next run
when it is free. Small models are dominated by overheads the FLOPs do not see, so the estimate is
a guide: docs/performance.md says how close it came on the literature suite.
"""
from __future__ import annotations

import dataclasses
import heapq
import math

CALIBRATION_STEPS = 6


@dataclasses.dataclass
class Estimate:
    cpu_s: float  # the runs' time added up
    wall_s: float  # at ``jobs`` at a time
    runs: int
    jobs: int
    achieved_flops: float  # model FLOP/s of the calibration run

    def text(self) -> str:
        return (f"estimate: {self.runs} run(s) to do, about {_dur(self.cpu_s)} of run time, {_dur(self.wall_s)} at "
                f"{self.jobs} at a time (calibrated here: {CALIBRATION_STEPS} timed steps of the first run, "
                f"{self.achieved_flops / 1e9:.2f} model GFLOP/s)")


def _dur(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def run_seconds(cfg, vocab_size: int, flops: float) -> float:
    """One run's training and evaluation time at ``flops`` model FLOP/s."""
    from .bench import flops_per_token

    t = cfg.train
    fpt = flops_per_token(cfg, vocab_size)
    train = fpt * t.batch_size * cfg.data.seq_len * t.steps
    evals = t.steps // t.eval_every + (t.steps % t.eval_every != 0)
    return (train + evals * t.eval_tokens * fpt / 3) / flops


def makespan(durations: list[float], jobs: int) -> float:
    """Runs taken in order by ``jobs`` workers, each starting the next run when it is free."""
    free = [0.0] * max(1, jobs)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def estimate(runs: list, jobs: int) -> Estimate | None:
    """Calibrate on the first of ``runs`` (RunSpecs) and estimate them all; None when there are none."""
    if not runs:
        return None
    import torch

    from .bench import flops_per_token
    from .data import make_task
    from .trainer import resolve_device, train

    first = runs[0].cfg
    t = dataclasses.replace(first.train, steps=CALIBRATION_STEPS, eval_every=CALIBRATION_STEPS, eval_tokens=1,
                            warmup_steps=0)
    threads = torch.get_num_threads()
    summary = train(dataclasses.replace(first, train=t), threads=1)
    torch.set_num_threads(threads)
    flops = summary["tokens_per_s"] * flops_per_token(first, summary["vocab_size"])
    vocab: dict = {}
    durations = []
    for r in runs:
        key = r.cfg.data
        if key not in vocab:
            vocab[key] = make_task(r.cfg.data, resolve_device("cpu")).vocab_size
        durations.append(run_seconds(r.cfg, vocab[key], flops))
    return Estimate(sum(durations), makespan(durations, jobs), len(runs), jobs, flops if math.isfinite(flops) else 0)
