"""Which runs a recipe still needs (resume), and the warnings about a recipe that trains, but not as
its keys suggest."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import ENCODER_TASKS, LEAKY_NORMS
from ..recipe import Recipe, RunSpec
from . import store


class RecipeWarning(UserWarning):
    """A recipe that trains, but not as its keys suggest (a leaky norm, a warmup longer than the run)."""


@dataclass
class Plan:
    recipe: Recipe
    recipe_dir: Path
    statuses: dict[str, str]  # run id -> status before this invocation
    todo: list[RunSpec] = field(default_factory=list)
    force: bool = False
    retry_failed: bool = False


def make_plan(recipe: Recipe, out: str | Path, force: bool = False, retry_failed: bool = False) -> Plan:
    """Which runs to execute: missing and incomplete ones; crashed ones with retry_failed; all with force."""
    recipe_dir = Path(out) / recipe.name
    statuses = {r.run_id: store.status(recipe_dir / r.run_id) for r in recipe.runs}
    redo = {"missing", "incomplete"} | ({"crashed"} if retry_failed else set())
    todo = [r for r in recipe.runs if force or statuses[r.run_id] in redo]
    return Plan(recipe, recipe_dir, statuses, todo, force, retry_failed)


def causality_warning(recipe: Recipe) -> str | None:
    """One line when some runs use a norm whose training-mode statistics mix positions (docs/conventions.md:
    causality probe), else None."""
    runs = [r for r in recipe.runs if r.cfg.model.norm in LEAKY_NORMS and r.cfg.data.task not in ENCODER_TASKS]
    leaky = sorted({r.cfg.model.norm for r in runs})
    if not leaky:
        return None
    n = len(runs)
    return (f"{n} run(s) use {', '.join(leaky)}: in training their batch statistics let a token see later tokens, "
            f"so the training loss is optimistic (train_causal_leak > 0); judge by the eval-mode val loss, "
            f"or compare batchnorm_causal")


def warmup_warning(recipe: Recipe) -> str | None:
    """One line when some runs end before their warmup does (train.warmup_steps > train.steps): their
    learning rate never reaches train.lr. A warning, not a refusal: a shortened look at a recipe
    (``--set train.steps=50``) is legitimate, but it must not pass silently."""
    short = [r for r in recipe.runs if r.cfg.train.warmup_steps > r.cfg.train.steps]
    if not short:
        return None
    pairs = sorted({(r.cfg.train.warmup_steps, r.cfg.train.steps) for r in short})
    shown = ", ".join(f"train.warmup_steps={w} > train.steps={s} (lr peaks at {s / w:.0%} of train.lr)"
                      for w, s in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
    return (f"{len(short)} of {len(recipe.runs)} run(s) end before their warmup does: {shown}; "
            f"shorten the warmup too (--set train.warmup_steps=N) to study the recipe's learning rate")


def checkpoint_warning(recipe: Recipe) -> str | None:
    """One line when train.checkpoint_every is set but no run is long enough to write a checkpoint."""
    never = [r for r in recipe.runs if r.cfg.train.checkpoint_every >= r.cfg.train.steps]
    if not never:
        return None
    t = never[0].cfg.train
    return (f"{len(never)} of {len(recipe.runs)} run(s) never write a checkpoint: train.checkpoint_every="
            f"{t.checkpoint_every} >= train.steps={t.steps} (a checkpoint is written every N steps before the last)")


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Every warning about a recipe that trains but not as its keys suggest (printed by ``run``)."""
    return [w for w in (causality_warning(recipe), warmup_warning(recipe), checkpoint_warning(recipe)) if w]
