"""Sweeps: which runs a recipe still needs (plan.py), running them through an executor (execute.py,
executors.py), the run folders and the index (store.py), and what the terminal shows (display.py)."""
from .plan import RecipeWarning

__all__ = ["RecipeWarning"]
