"""The command line: parse, call, print. Bad input: one line on stderr, exit code 2.

One module per group of commands, each registering on the app of app.py; they are imported here
in the order ``normbench --help`` lists them. torch is imported only by commands that train, so
``--help``, ``list`` and ``keys`` are instant.
"""
from __future__ import annotations

import sys

import typer

from . import run, results, bench, info, sample  # noqa: F401 (registers the commands, in this order)
from .app import app, err_console

__all__ = ["app", "main"]


def main() -> None:
    """The console script. Usage errors caught before our code runs (an unknown option, a missing
    argument, --jobs 0) get the same one-line format as ours, with click's exit code (2)."""
    import signal

    from ..errors import Terminated, raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)  # SIGTERM is handled as Ctrl-C, exit code 143
    try:
        code = app(standalone_mode=False)
    except Terminated:
        err_console.print("normbench: terminated (SIGTERM); rerun the same command to resume", markup=False)
        sys.exit(143)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("normbench: interrupted", markup=False)
        sys.exit(130)
    except Exception as e:
        # click's exceptions (vendored by newer typer, so matched by shape rather than by class)
        if not (hasattr(e, "exit_code") and hasattr(e, "format_message")):
            raise
        ctx = getattr(e, "ctx", None)
        if ctx is not None and not e.format_message().strip():  # `normbench` alone: the help
            sys.stdout.write(ctx.get_help() or "")  # rich help prints itself and returns ""
            sys.exit(e.exit_code)
        where = ctx.command_path if ctx is not None else "normbench"
        hint = f" (see `{where} --help`)" if ctx is not None else ""
        err_console.print(f"{where}: error: {e.format_message().rstrip('.')}{hint}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
