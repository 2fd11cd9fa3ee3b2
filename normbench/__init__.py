"""normbench: normalization ablations for tiny Transformers.

The Python API (``run_recipe``, ``load_results``, ``load_curves``, ``train``, ...) is imported lazily so
that ``normbench --help`` never pays for importing torch.
"""
__version__ = "0.5.0"

__all__ = ["run_recipe", "load_results", "load_curves", "train", "load_recipe", "compare_results", "write_report",
           "register_norm", "load_plugin", "claims_ledger", "__version__"]


def __dir__():  # the lazy names too, for tab completion and dir(normbench)
    return sorted(set(globals()) | set(__all__))


def __getattr__(name):
    if name == "run_recipe":
        from .sweep import run_recipe
        return run_recipe
    if name == "load_results":
        from .store import load_results
        return load_results
    if name in ("register_norm", "load_plugin"):
        from . import registry
        return getattr(registry, name)
    if name == "claims_ledger":
        from .ledger import claims_ledger
        return claims_ledger
    if name == "load_curves":
        from .curves import load_curves
        return load_curves
    if name == "load_recipe":
        from .recipe import load_recipe
        return load_recipe
    if name == "compare_results":  # not "compare": that is the submodule normbench.compare
        from .compare import compare as compare_results
        return compare_results
    if name == "write_report":
        from .report import write_report
        return write_report
    if name == "train":
        from .trainer import train
        return train
    raise AttributeError(f"module 'normbench' has no attribute {name!r}")
