"""``normbench bench``: throughput, MFU and the price of the measurements, side by side."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table

from ..errors import NormbenchError
from .app import PluginOpt, SetOpt, app, err_console, fail, load, out_console


@app.command()
def bench(recipe: Optional[Path] = typer.Argument(None, help="Recipe whose first run sets the shapes and precision. "
                                                             "Default: the defaults (`normbench keys`).",
                                                  show_default=False),
          set_: Optional[List[str]] = SetOpt, plugin: Optional[List[Path]] = PluginOpt,
          device: Optional[str] = typer.Option(None, help="auto, cpu or cuda; overrides the config's device."),
          threads: Optional[int] = typer.Option(None, min=1, help="torch threads, for the model and the peak "
                                                "alike. Default: every core, as a single `normbench run` gets."),
          steps: int = typer.Option(30, min=2, help="Timed steps per variant and round, rounded up to whole "
                                                    "periods of train.measure_every (the periodic probes)."),
          warmup: int = typer.Option(5, min=1, help="Untimed steps first (allocator, caches, compilation)."),
          rounds: int = typer.Option(3, min=1, help="Rounds; the variants alternate within each."),
          reference: bool = typer.Option(True, "--reference/--no-reference",
                                         help="Also time the plain-PyTorch Pre-LN GPT of the same shapes."),
          overhead: bool = typer.Option(True, "--overhead/--no-overhead",
                                        help="Also time the loop with the stability measurements off."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table.")):
    """Training throughput, model FLOPs, MFU against a matmul peak measured now, the cost of the
    stability measurements, and a plain-PyTorch reference of the same shapes, side by side."""
    try:
        base = recipe if recipe is not None else {"name": "bench", "base": {}}
        rec = load(base, set_, device, plugin)
        cfg = rec.runs[0].cfg
    except NormbenchError as e:
        fail(e)
    from ..bench import bench as run_bench
    from ..sweep.executor import cpu_count

    say = (lambda msg: err_console.print(f"bench: {msg}", markup=False)) if sys.stderr.isatty() else None
    try:
        res = run_bench(cfg, steps=steps, warmup=warmup, rounds=rounds, threads=threads or cpu_count(),
                        reference=reference, off=overhead, progress=say)
    except NormbenchError as e:
        fail(e)
    if as_json:
        import json

        sys.stdout.write(json.dumps(res, indent=2, allow_nan=False) + "\n")
        return
    sh = res["shape"]
    out_console.print(f"{sh['layers']} layers, d_model {sh['d_model']}, {sh['heads']} heads, d_ff {sh['d_ff']}, "
                      f"seq {sh['seq_len']}, batch {sh['batch_size']}, vocab {sh['vocab_size']}, {res['precision']}"
                      f"{', compiled' if res['compile'] else ''}; {res['device']}, {res['threads']} threads; "
                      f"median of {res['rounds']} x {res['steps']} steps", markup=False)
    if res["steps"] != res["steps_requested"]:
        out_console.print(f"note: --steps {res['steps_requested']} rounded up to {res['steps']}, whole periods of "
                          f"train.measure_every={res['measure_every']}, so the periodic measurements are timed at "
                          "their real rate", markup=False, style="yellow")
    peak = f"{res['peak_gflops_fp32']:.1f} GFLOP/s fp32"
    if res["peak_gflops_bf16"] is not None:
        peak += f", {res['peak_gflops_bf16']:.1f} bf16"
    if res["peak_gflops_bf16"] is not None and res["peak_gflops_bf16"] < res["peak_gflops_fp32"]:
        out_console.print(f"note: bf16 is not accelerated on this device ({res['peak_gflops_bf16']:.1f} GFLOP/s "
                          f"against {res['peak_gflops_fp32']:.1f} fp32): use fp32 here", markup=False, style="yellow")
    out_console.print(f"model FLOPs/token {res['flops_per_token'] / 1e6:.2f} M (PaLM: 6N + 12·L·T·d); "
                      f"matmul peak {peak}", markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("variant", "tokens/s", "step ms", "GFLOP/s", "MFU", "first steps s"):
        table.add_column(c, justify="left" if c == "variant" else "right")
    rows = [("normbench (measurements on)", res)]
    if "measurements_off" in res:
        rows.append(("measurements off", res["measurements_off"]))
    if "reference" in res:
        rows.append(("plain-PyTorch reference", res["reference"]))
    for name, r in rows:
        table.add_row(name, f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}", f"{r['gflops']:.1f}",
                      f"{r['mfu']:.1%}", f"{r['warmup_s']:.2f}")
    out_console.print(table)
    if "measurement_overhead" in res:
        out_console.print(f"stability measurements cost {res['measurement_overhead']:+.1%} of step time", markup=False)
    print_probe_costs(res)
    out_console.print(f"the causality probe, taken once per run, costs {res['causal_probe_ms']:.1f} ms: "
                      f"{res['causal_probe_share']:.2%} of a {res['run_steps']}-step run", markup=False)
    if "speedup_vs_reference" in res:
        out_console.print(f"normbench runs at {res['speedup_vs_reference']:.3f}x the reference's tokens/s",
                          markup=False)


def print_probe_costs(res: dict) -> None:
    """Each measurement on its own: ms per measure step, and its share of step time at its rate."""
    table = Table(title=f"each measurement on its own (one measure step in {res['measure_every']}): the model's "
                        "recordings first, shared by the probes that read them, then what each probe adds on top",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("measurement", "ms per measure step", "share of step time"):
        table.add_column(c, justify="left" if c == "measurement" else "right")
    for name, ms in res["probe_ms"].items():
        table.add_row(name, f"{ms:.2f}", f"{res['probe_share'][name]:.2%}")
    out_console.print(table)
