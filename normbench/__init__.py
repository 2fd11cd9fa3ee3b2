"""normbench: normalization ablations for tiny Transformers.

The Python API (``run_recipe``, ``load_results``, ``load_curves``, ``train``, ...) is imported lazily so
that ``normbench --help`` never pays for importing torch: each name below is resolved from its
module the first time it is read.
"""
import importlib

from .version import __version__

# public name -> "module:attribute"
API = {
    "run_recipe": "normbench.sweep.execute:run_recipe",
    "load_results": "normbench.sweep.store:load_results",
    "load_curves": "normbench.analysis.curves:load_curves",
    "train": "normbench.trainer:train",
    "load_recipe": "normbench.recipe:load_recipe",
    "compare_results": "normbench.analysis.compare:compare",  # "compare" is the subpackage's module
    "write_report": "normbench.render.report:write_report",
    "register_norm": "normbench.registry:register_norm",
    "load_plugin": "normbench.plugins:load_plugin",
    "claims_ledger": "normbench.analysis.decide:claims_ledger",
    "sample": "normbench.sampling:sample",
}
__all__ = [*API, "__version__"]


def __dir__():  # the lazy names too, for tab completion and dir(normbench)
    return sorted(set(globals()) | set(__all__))


def __getattr__(name):
    if name not in API:
        raise AttributeError(f"module 'normbench' has no attribute {name!r}")
    module, attr = API[name].split(":")
    return getattr(importlib.import_module(module), attr)
