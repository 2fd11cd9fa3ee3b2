"""Ray's overhead: the same 8 tiny runs through the local executor and through Ray (one CPU and
one thread per run), on the same cores, through the real CLI, alternating, median of the repeats.
Two Ray figures: `ray-start`, where each sweep starts and stops its own local instance (no
--address, as on a laptop), and `ray-join`, where the sweep joins an instance that is already up
(`ray start --head` once, then `--address auto`, as on a cluster). Times to the first run are
reported apart.

Run: python benchmarks/ray_overhead.py [--repeats 3]   (about 6 minutes on a 2-core CPU)
"""
import argparse
import shutil
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
    modes = {"local": [], "ray-start": ["--executor", "ray"], "ray-join": ["--executor", "ray", "--address", "auto"]}
    times = {m: [] for m in modes}
    firsts = {m: [] for m in modes}
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    head = [ray_cli, "start", "--head", "--num-cpus", "2", "--object-store-memory", str(200 * 2**20),
            "--include-dashboard=false", "--disable-usage-stats"]
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "tiny8.yaml"
        recipe.write_text(yaml.safe_dump(RECIPE))
        for rep in range(args.repeats):
            for mode in (list(modes) if rep % 2 == 0 else list(modes)[::-1]):
                out = Path(tmp) / f"out-{rep}-{mode}"
                if mode == "ray-join":  # the instance is up before the sweep, as a cluster is
                    subprocess.run(head, check=True, capture_output=True)
                    time.sleep(5)  # let the head settle: a cluster is up long before a sweep arrives
                try:
                    wall, first = timed(recipe, out, modes[mode])
                finally:
                    if mode == "ray-join":
                        subprocess.run([ray_cli, "stop"], capture_output=True)
                times[mode].append(wall)
                firsts[mode].append(first)
                print(f"repeat {rep + 1}: {mode:<9} {wall:6.1f} s (first run started after {first:.1f} s)", flush=True)
    loc = statistics.median(times["local"])
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"{mode:<9} median wall {med:5.1f} s ({med / loc - 1:+.1%} against local), "
              f"median time to the first run {statistics.median(firsts[mode]):.1f} s")


if __name__ == "__main__":
    main()
