"""Replay every finished run's losses through the divergence rule of this version (trainer.Stability)
and list the runs whose verdict (diverged, diverged_step) would change.

Run: python benchmarks/divergence_replay.py [results/reference]     (about a minute)

metrics.jsonl holds every step's loss and gradient norm (6 significant digits; a non-finite value as
null), so the rule is replayed step by step as the run met it. 0.9.0: 882 reference runs, 0 changed.
"""
import json
import sys
from pathlib import Path

import yaml

from normbench.config import from_dict
from normbench.trainer import Stability


def replay(run_dir: Path, summary: dict) -> Stability:
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())["base"])
    st = Stability(cfg.train, summary["vocab_size"])
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" not in r:
            continue
        loss = math_nan if r["loss"] is None else r["loss"]
        grad = (math_nan if r["grad_norm"] is None else r["grad_norm"]) if "grad_norm" in r else None
        if st.update(r["step"], loss, grad):
            return st
    st.finish()
    return st


math_nan = float("nan")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/reference")
    total = changed = 0
    for f in sorted(root.glob("**/summary.json")):
        d = f.parent
        if not (d / "metrics.jsonl").exists() or not (d / "config.yaml").exists():
            continue
        s = json.loads(f.read_text())
        st = replay(d, s)
        total += 1
        new = st.diverged_step is not None
        if new != bool(s["diverged"]) or (new and st.diverged_step != s["diverged_step"]):
            changed += 1
            print(f"{d}: was diverged={s['diverged']} at {s['diverged_step']} ({s['divergence_reason']}); "
                  f"now diverged={new} at {st.diverged_step} ({st.reason})")
    print(f"runs {total}, verdicts changed {changed}")


if __name__ == "__main__":
    main()
