"""Sweep scheduling: 8 tiny runs with the default --jobs against the same 8 runs one after
another with two threads each, through the real CLI, alternating, median of the repeats.

Run: python benchmarks/sweep_parallel.py [--repeats 3]   (about 3 minutes on a 2-core CPU)
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RECIPE = {
    "name": "tiny8",
    "description": "8 tiny runs: 2 norms x 2 placements x 2 seeds",
    "base": {"model": {"layers": 2, "d_model": 64, "heads": 2, "d_ff": 256},
             "data": {"seq_len": 64},
             "train": {"steps": 150, "batch_size": 16, "eval_every": 50},
             "device": "cpu"},
    "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"], "model.placement": ["pre", "post"]}, "seeds": 2},
}


def timed(recipe: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "normbench", "run", str(recipe), "--out", str(out), "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    modes = {"default --jobs": [], "--jobs 1 --threads 2": ["--jobs", "1", "--threads", "2"]}
    times = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "tiny8.yaml"
        recipe.write_text(yaml.safe_dump(RECIPE))
        for rep in range(args.repeats):
            order = list(modes) if rep % 2 == 0 else list(modes)[::-1]
            for mode in order:
                out = Path(tmp) / f"out-{rep}-{len(times[mode])}-{mode.replace(' ', '')}"
                times[mode].append(timed(recipe, out, modes[mode]))
                print(f"repeat {rep + 1}: {mode:<22} {times[mode][-1]:6.1f} s", flush=True)
    par, seq = statistics.median(times["default --jobs"]), statistics.median(times["--jobs 1 --threads 2"])
    print(f"median wall time: default --jobs {par:.1f} s, --jobs 1 --threads 2 {seq:.1f} s; "
          f"speed-up {seq / par:.2f}x")


if __name__ == "__main__":
    main()
