"""Run: python benchmarks/measurement_overhead.py  (about 1 minute on a 2-core CPU)"""
# Measurement overhead: the default model (4 layers, d 128, seq 128, batch 32, fp32), 1 thread,
# attention-logit probe every 10 steps (default) vs never; alternating, median of 5 each.
import statistics, torch
from normbench.config import from_dict
from normbench.train import train
res = {"on": [], "off": []}
for rep in range(5):
    for mode, every in (("on", 10), ("off", 10**6)):
        s = train(from_dict({"device": "cpu", "data": {"max_chars": 200000},
                             "train": {"steps": 30, "eval_every": 1000, "measure_every": every}}), threads=1)
        res[mode].append(s["tokens_per_s"])
on, off = statistics.median(res["on"]), statistics.median(res["off"])
print(f"tokens/s median: probe on {on:.0f}, off {off:.0f}, overhead {100*(off/on-1):.2f}%")
