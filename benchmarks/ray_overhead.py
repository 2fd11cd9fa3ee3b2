"""Ray's overhead: the same 8 tiny runs through the local executor and through a local Ray
instance (`--executor ray`, one CPU and one thread per run), on the same cores, through the real
CLI, alternating, median of the repeats. The Ray figure includes starting and stopping the Ray
instance, as a user pays it; its time to first run is reported apart.

Run: python benchmarks/ray_overhead.py [--repeats 3]   (about 4 minutes on a 2-core CPU)
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sweep_parallel import RECIPE


def timed(recipe: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds of the whole command, seconds until its first run started)."""
    cmd = [sys.executable, "-m", "normbench", "run", str(recipe), "--out", str(out), "-q", "--threads", "1", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        if first is None and line.startswith("start "):
            first = time.perf_counter() - t0
    proc.wait()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read()}")
    return elapsed, first or float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    modes = {"local": [], "ray": ["--executor", "ray"]}
    times = {m: [] for m in modes}
    firsts = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "tiny8.yaml"
        recipe.write_text(yaml.safe_dump(RECIPE))
        for rep in range(args.repeats):
            for mode in (list(modes) if rep % 2 == 0 else list(modes)[::-1]):
                out = Path(tmp) / f"out-{rep}-{mode}"
                wall, first = timed(recipe, out, modes[mode])
                times[mode].append(wall)
                firsts[mode].append(first)
                print(f"repeat {rep + 1}: {mode:<6} {wall:6.1f} s (first run started after {first:.1f} s)", flush=True)
    loc, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    print(f"median wall time: local {loc:.1f} s, ray {ray:.1f} s; Ray's overhead {ray / loc - 1:+.1%} of the sweep; "
          f"median time to the first run: local {statistics.median(firsts['local']):.1f} s, "
          f"ray {statistics.median(firsts['ray']):.1f} s")


if __name__ == "__main__":
    main()
