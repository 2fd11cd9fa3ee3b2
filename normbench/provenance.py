"""Where a run came from, beyond its config: the recipe's git state (driver side, into config.yaml)
and the CPU it ran on (worker side, into summary.json). bf16 speed on a CPU depends on its flags
(AVX512-BF16, AMX), and an unstable run's numbers on the exact machine, so both are recorded."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

# the CPU flags that decide the speed of fp32 and bf16 matmuls
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


@functools.lru_cache(maxsize=64)  # once per recipe file and process: a sweep asks for every run
def git_state(path: str | Path | None) -> dict | None:
    """{"commit", "dirty"} of the git repository holding ``path`` (a recipe file), None outside one
    or without git. ``dirty``: uncommitted changes to tracked files (results folders are ignored)."""
    if path is None:
        return None
    where = Path(path).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model", "flags"}: the CPU's name and which of ``CPU_FLAGS`` it has (Linux: /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}
