"""Loading a plugin file (``--plugin FILE.py``, ``normbench.load_plugin``): read it, execute it (it
registers its norms in registry.py) and try each of its norms on a small input, so a broken norm
is one line now rather than a shape error deep in torch in the middle of a sweep."""
from __future__ import annotations

from pathlib import Path

from .errors import NormbenchError
from .registry import PluginFile, load_plugin_source, registered


def load_plugin(path: str | Path) -> PluginFile:
    """Import a plugin file (it registers its norms). Bad input: one line naming the file (--plugin)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NormbenchError("no such plugin file", key="--plugin", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise NormbenchError(f"cannot read the plugin: {e}", key="--plugin", file=str(path)) from None
    plugin = load_plugin_source(str(path.resolve()), text)
    check_plugin_norms(plugin)
    return plugin


def check_plugin_norms(plugin: PluginFile, d: int = 8) -> None:
    """Build each norm of ``plugin`` and run it on a (2, 3, d) tensor, with and without a padding
    mask: a wrong output shape, or an error, is one line naming the norm now, not a shape error
    deep in torch in the middle of a sweep."""
    import torch

    from .norms import Plugin


    for name, entry in registered().items():
        if entry.plugin != plugin:
            continue
        x, mask = torch.randn(2, 3, d), torch.tensor([[True, True, False], [True, True, True]])
        try:
            module = Plugin(entry.factory(d))
            for m in (None, mask):
                y = module(x, m)
                if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                    got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                    raise ValueError(f"maps a (2, 3, {d}) input to {got}; a norm must keep the shape (B, T, d)")
        except Exception as e:  # noqa: BLE001 - the user's code: one line
            raise NormbenchError(f"norm {name!r} fails on a (2, 3, {d}) test input: {type(e).__name__}: {e}",
                                 key="--plugin", file=plugin.path) from None
