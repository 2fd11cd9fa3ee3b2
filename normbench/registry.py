"""Norms a researcher brings: ``register_norm`` and plugin files (``--plugin FILE.py``).

Torch-free, so recipes are validated and run ids computed without importing torch. A plugin
(plugins.py loads one) is a Python file that calls ``normbench.register_norm(name, factory)`` when imported; a recipe
stays data and can only name a registered norm. The factory is called as ``factory(d_model)``
and returns an ``nn.Module`` mapping (B, T, d) to (B, T, d); its ``forward`` takes ``x``, or
``x`` and the padding ``mask`` (B, T), True on real tokens.

Every run is trained in another process (a local child, a Ray worker), so a norm must come
from a file the workers can load: the driver sends each plugin's text with the run, the
worker executes it, and the run id includes the text's SHA-256 (editing the norm gives new
run ids, so no stale result is reused). A norm registered from the calling script itself,
not from a plugin file, serves ``normbench.train`` in that process only.
"""
from __future__ import annotations

import hashlib
import re
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Callable

from .catalog import NORMS
from .errors import NormbenchError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class PluginFile:
    path: str  # as given (absolute after load)
    text: str  # the source, sent to workers
    sha256: str  # of the text: part of the run id of every run using one of its norms


@dataclass(frozen=True)
class Registered:
    name: str
    factory: Callable
    description: str
    plugin: PluginFile | None  # None: registered from the calling script, not from a plugin file


_NORMS: dict[str, Registered] = {}
_PLUGINS: dict[str, PluginFile] = {}  # sha256 -> file, every plugin loaded in this process
_loading: list[PluginFile] = []  # the plugin file being executed now, so register_norm knows its source


def builtin_norms() -> dict[str, str]:
    return NORMS


def register_norm(name: str, factory: Callable, description: str = "") -> None:
    """Make ``model.norm: <name>`` build ``factory(d_model)``. Call it from a plugin file (``--plugin``,
    ``normbench.load_plugin``) so that worker processes get it too."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise NormbenchError(f"a norm name is lowercase letters, digits and _, starting with a letter; got {name!r}",
                             key="register_norm")
    if name in builtin_norms():
        raise NormbenchError(f"{name!r} is a built-in norm; pick another name", key="register_norm")
    if not callable(factory):
        raise NormbenchError(f"the factory for {name!r} is not callable", key="register_norm")
    plugin = _loading[-1] if _loading else None
    old = _NORMS.get(name)
    if old is not None and old.plugin is not None and plugin is not None and old.plugin.path != plugin.path:
        raise NormbenchError(f"norm {name!r} is registered by two plugins: {old.plugin.path} and {plugin.path}",
                             key="--plugin")
    _NORMS[name] = Registered(name, factory, description or f"registered by {plugin.path if plugin else 'a script'}",
                              plugin)


def registered() -> dict[str, Registered]:
    return dict(_NORMS)


def norm_names() -> list[str]:
    """Every name ``model.norm`` accepts now: the built-in norms, then the registered ones."""
    return list(builtin_norms()) + [n for n in _NORMS if n not in builtin_norms()]


def plugin_of(name: str) -> PluginFile | None:
    entry = _NORMS.get(name)
    return entry.plugin if entry else None


def factory_of(name: str) -> Callable | None:
    entry = _NORMS.get(name)
    return entry.factory if entry else None






def load_plugin_source(path: str, text: str) -> PluginFile:
    """Execute a plugin's text as a module (on the driver, or on a worker that got it with a run)."""
    plugin = PluginFile(path, text, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])
    if plugin.sha256 in _PLUGINS:  # already loaded here (a reused worker process)
        return _PLUGINS[plugin.sha256]
    module = types.ModuleType(f"normbench_plugin_{plugin.sha256}")
    module.__file__ = path
    sys.modules[module.__name__] = module  # dataclasses and pickling look their module up
    _loading.append(plugin)
    try:
        exec(compile(text, path, "exec"), module.__dict__)
    except NormbenchError as e:
        sys.modules.pop(module.__name__, None)
        raise NormbenchError(e.message, key="--plugin", file=path) from None
    except BaseException as e:  # noqa: BLE001 - any error in a user's file is bad input: one line
        sys.modules.pop(module.__name__, None)
        where = next((f"line {fr.lineno}: " for fr in reversed(traceback.extract_tb(e.__traceback__))
                      if fr.filename == path), "")
        raise NormbenchError(f"the plugin failed to import: {where}{type(e).__name__}: {e}", key="--plugin",
                             file=path) from None
    finally:
        _loading.pop()
    if not any(r.plugin == plugin for r in _NORMS.values()):
        raise NormbenchError("the plugin registered no norm (call normbench.register_norm(name, factory) in it)",
                             key="--plugin", file=path)
    _PLUGINS[plugin.sha256] = plugin
    return plugin


def plugins_for(norms: set[str]) -> list[tuple[str, str]]:
    """(path, text) of the plugin files the given norm names need, for the workers; one line (exit 2)
    for a norm registered from a script, which workers cannot load."""
    out = {}
    for name in sorted(norms):
        entry = _NORMS.get(name)
        if entry is None:
            continue
        if entry.plugin is None:
            raise NormbenchError(f"norm {name!r} was registered from the calling script, which worker processes do "
                                 "not import: put it in a plugin file and load it with normbench.load_plugin(path) "
                                 "or --plugin", key="model.norm")
        out[entry.plugin.sha256] = (entry.plugin.path, entry.plugin.text)
    return list(out.values())
