"""A lone tiny run with 1 or 2 torch threads, on an idle machine and beside busy processes.

Why normbench gives every CPU run one thread (issue 21): torch's intra-op threads wait for each
other, so a multi-threaded run beside other busy processes can collapse. Each variant trains the
same tiny model in a fresh process; "loaded" starts one busy-looping process per core first.
OMP_WAIT_POLICY=PASSIVE is shown too (it must be set before torch starts).

    python benchmarks/threads_under_load.py [--steps 60] [--repeats 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys

RUN = """
from normbench.config import from_dict
from normbench.trainer import train
cfg = from_dict({"model": {"layers": 2, "d_model": 64, "heads": 2, "d_ff": 256},
                 "data": {"seq_len": 64, "max_chars": 200000},
                 "train": {"steps": STEPS, "batch_size": 16, "eval_every": STEPS, "eval_tokens": 64}, "device": "cpu"})
print(train(cfg, threads=THREADS)["tokens_per_s"])
"""


def busy():
    while True:
        pass


def one(threads: int, steps: int, passive: bool) -> float:
    env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if passive else {}))
    code = RUN.replace("STEPS", str(steps)).replace("THREADS", str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    variants = [(1, False), (2, False), (2, True)]
    for load in ("idle", "loaded"):
        procs = [mp.Process(target=busy, daemon=True) for _ in range(cores if load == "loaded" else 0)]
        for p in procs:
            p.start()
        try:
            res = {v: [one(v[0], args.steps, v[1]) for _ in range(args.repeats)] for v in variants}
        finally:
            for p in procs:
                p.terminate()
        base = statistics.median(res[(1, False)])
        for (threads, passive), vals in res.items():
            med = statistics.median(vals)
            print(f"{load:6s} threads={threads} {'OMP_WAIT_POLICY=PASSIVE' if passive else '':24s} "
                  f"median {med:9,.0f} tok/s  ({med / base:.2f}x one thread)")


if __name__ == "__main__":
    main()
