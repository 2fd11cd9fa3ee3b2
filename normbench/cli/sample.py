"""``normbench sample``: text from a run's saved weights."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import NormbenchError
from .app import PluginOpt, app, fail, load_plugins, out_console


@app.command()
def sample(run: Path = typer.Argument(..., metavar="RUN", show_default=False,
                                      help="A run folder (RESULTS/RECIPE/RUN_ID) with model.pt (train.save_final) "
                                           "or checkpoint.pt (train.checkpoint_every)."),
           prompt: str = typer.Option("", "--prompt", help="Text to continue (token names or ids separated by "
                                                           "spaces for token files without itos and for copy and "
                                                           "reverse); empty: one token of the validation set."),
           tokens: int = typer.Option(200, "--tokens", min=1, help="Tokens to generate."),
           temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Softmax temperature; 0 is greedy."),
           seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sampling."),
           plugin: Optional[List[Path]] = PluginOpt):
    """Generate from a run's saved model, for every task and tokenizer (an encoder fills one mask at a time).

    Prints the prompt and its continuation. Refuses, in one line (exit code 2), a folder without
    saved weights."""
    from ..sampling import sample as generate

    try:
        load_plugins(plugin)
        out = generate(run, prompt, tokens, temperature, seed)
    except NormbenchError as e:
        fail(e)
    out_console.print(f"# {run} ({out['from']}, step {out['step']}; temperature {temperature}, seed {seed})",
                      style="dim", markup=False)
    out_console.print(out["output"], markup=False, highlight=False, soft_wrap=True)
