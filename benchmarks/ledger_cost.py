"""What the literature ledger's verdicts cost: decided claims per CPU-hour, per recipe and in all.

Run: python benchmarks/ledger_cost.py [--out results/reference]   (about a minute: it judges the ledger)

CPU time is the sum of the runs' wall_s (every run is one single-threaded process, so its wall time
is its CPU time on its core; two at a time on this 2-core machine). "runs" and "cpu_h" count every
run in the recipe's folder (the recipe as written, 0.7.0's Stein stages, every look settle added);
"cpu_h_used" only the runs at the look each verdict used. A claim is decided when it is held (or equivalent) or not held.
"""
import argparse
import glob

import pandas as pd

from normbench.analysis.compare import collect
from normbench.analysis.decide import standing
from normbench.analysis.ledger import judge, sources_for

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="results/reference")
args = ap.parse_args()
paths = sorted(glob.glob("recipes/literature/*.yaml"))
members = standing(judge(sources_for(paths, args.out)))
rows = []
for rec in dict.fromkeys(m["recipe"] for m in members):
    mine = [m for m in members if m["recipe"] == rec]
    runs = collect([f"{args.out}/{rec}"])[0]  # every run in the folder: what the recipe and settle cost
    used = set()
    for m in mine:
        if m["res"] is not None:
            for s in m["res"]["looks"][m["at"]]["settings"]:
                for part in s["parts"]:
                    used |= set(part["run_id"])
    rows.append({"recipe": rec, "claims": len(mine),
                 "decided": sum(m["verdict"] != "inconclusive" for m in mine),
                 "runs": len(runs), "cpu_h": runs["wall_s"].sum() / 3600,
                 "cpu_h_used": runs[runs["run_id"].isin(used)]["wall_s"].sum() / 3600})
df = pd.DataFrame(rows)
total = df[["claims", "decided", "runs", "cpu_h", "cpu_h_used"]].sum()
df.loc[len(df)] = {"recipe": "all", **total.to_dict()}
df["decided_per_cpu_h"] = df["decided"] / df["cpu_h"]
pd.set_option("display.width", 160)
print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
print(f"\n{int(total['decided'])} of {int(total['claims'])} claims decided "
      f"({total['decided'] / total['claims']:.0%}) on {int(total['runs'])} runs, {total['cpu_h']:.1f} CPU-hours: "
      f"{total['decided'] / total['cpu_h']:.1f} decided claims per CPU-hour")
