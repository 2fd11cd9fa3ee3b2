"""The README's TensorBoard figure: a small sweep logged with --log tensorboard, read back from its
event files with TensorBoard's own EventAccumulator and grouped by the factors its hparams hold.

    python benchmarks/tensorboard_figure.py [--out /tmp/tb_sweep] [--figure docs/figures/tensorboard_sweep.png]

Trains the sweep first (LayerNorm / RMSNorm x Pre-LN / Post-LN, two seeds, a small model: about
3 minutes on 2 cores) unless its runs are already there (resume).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

RECIPE = {
    "name": "tb_sweep",
    "description": "LayerNorm vs RMSNorm x Pre-LN vs Post-LN, two seeds, logged to TensorBoard",
    "base": {"model": {"layers": 4, "d_model": 64, "heads": 4, "d_ff": 256},
             "data": {"seq_len": 64}, "train": {"steps": 200, "batch_size": 16, "lr": 3.0e-3, "warmup_steps": 20,
                                                "eval_every": 25, "eval_tokens": 16384}},
    "sweep": {"grid": {"model.norm": ["layernorm", "rmsnorm"], "model.placement": ["pre", "post"]}, "seeds": 2},
}


def read_run(logdir: Path) -> tuple[dict, dict]:
    """(hparams, {tag: [(step, value)]}) of one run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    ea.Reload()
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: v.string_value or v.number_value for k, v in info.hparams.items()}
    return hparams, {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def smooth(values, weight: float = 0.9) -> list[float]:
    """TensorBoard's own curve smoothing (an exponential moving average, debiased), at its slider's 0.9."""
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/tb_sweep")
    ap.add_argument("--figure", default=str(Path(__file__).resolve().parent.parent / "docs/figures/tensorboard_sweep.png"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "tb_sweep.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    subprocess.run([sys.executable, "-m", "normbench", "run", str(recipe), "--out", str(out), "-q",
                    "--log", "tensorboard"], check=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)  # (norm, placement) -> [scalars of each seed]
    for logdir in sorted(out.glob("tb_sweep/*/tensorboard")):
        hp, scalars = read_run(logdir)
        groups[(hp["model.norm"], hp["model.placement"])].append(scalars)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (norm, placement), runs in sorted(groups.items()):
        color = {"layernorm": "tab:blue", "rmsnorm": "tab:orange"}[norm]
        style = {"pre": "-", "post": "--"}[placement]
        for i, sc in enumerate(runs):
            label = f"model.norm={norm}, model.placement={placement}" if i == 0 else None
            for ax, tag in zip(axes, ("loss", "val_loss")):
                steps, values = zip(*sc[tag])
                ax.plot(steps, smooth(values) if tag == "loss" else values, style, color=color, alpha=0.8, lw=1.2,
                        label=label)
    for ax, tag in zip(axes, ("train loss (tag loss; TensorBoard's smoothing 0.9)", "validation loss (tag val_loss)")):
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(top=3.2)
    axes[1].legend(fontsize=8)
    fig.suptitle("tb_sweep read from its TensorBoard event files, grouped by the hparams (the sweep's factors); "
                 "one line per seed", fontsize=9)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print(f"wrote {args.figure} from {sum(len(r) for r in groups.values())} runs")


if __name__ == "__main__":
    main()
