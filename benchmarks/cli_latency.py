"""How fast the CLI answers when nothing needs torch: --help, list, keys, compare --help.

Run: python benchmarks/cli_latency.py   (a few seconds)
Each command runs 7 times as a fresh process (the installed console script); median wall time.
"""
import shutil
import statistics
import subprocess
import time

exe = shutil.which("normbench") or "normbench"
for args in (["--help"], ["list"], ["keys"], ["compare", "--help"], ["bench", "--help"]):
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        subprocess.run([exe, *args], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    print(f"normbench {' '.join(args):<16} median {statistics.median(times) * 1e3:6.0f} ms")
