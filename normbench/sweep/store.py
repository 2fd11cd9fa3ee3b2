"""Results folders: one folder per run, an index, resume, and a lock.

Layout::

    results/<recipe name>/
        index.csv            # one row per finished run (completed, diverged or crashed)
        .lock                # held by the normbench process using this folder
        <run id>/            # short hash of the resolved config, seed included
            config.yaml      # the resolved config, itself a recipe that reruns this run
            metrics.jsonl    # one line per step (and per evaluation)
            summary.json     # written atomically, last: its presence means "complete"
            error.txt        # the traceback, when the run crashed

The run folders are the truth; ``index.csv`` is derived from them and rewritten
atomically, so a process killed at any moment leaves no corrupt index and loses
no completed run.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from ..catalog import CHECKPOINT
from ..config import LATER_KEYS
from ..dotted import flatten
from ..measures import INDEX_SKIP
from ..errors import NormbenchError

SUMMARY, CONFIG, METRICS, ERROR, INDEX, LOCK = "summary.json", "config.yaml", "metrics.jsonl", "error.txt", "index.csv", ".lock"


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write (text, or bytes) via a temporary file in the same folder and rename: readers see all or nothing. The
    file gets the permissions a plain write would (0666 less the umask), not mkstemp's 0600, so
    colleagues can read shared results."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # not on Windows
            os.fchmod(fd, 0o666 & ~_umask())
        binary = isinstance(text, bytes)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_if_changed(path: Path, text: str) -> bool:
    """``write_atomic`` unless the file already holds exactly ``text`` (a regenerated report that
    did not change leaves a clone clean). True when written."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    write_atomic(path, text)
    return True


def status(run_dir: Path) -> str:
    """completed | diverged | crashed | incomplete | missing."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).exists():
        try:
            return "diverged" if json.loads((run_dir / SUMMARY).read_text())["diverged"] else "completed"
        except (ValueError, KeyError, OSError):
            return "incomplete"
    if (run_dir / ERROR).exists():
        return "crashed"
    return "incomplete" if run_dir.exists() else "missing"


DONE = ("completed", "diverged")


def prepare(run_dir: Path, config_recipe: dict) -> None:
    """Empty ``run_dir`` (a previous incomplete or crashed attempt) but for its checkpoint, which the
    run resumes from (checkpoint.py), and write its config.yaml."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        for path in run_dir.iterdir():
            if path.name == CHECKPOINT:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / CONFIG, yaml.safe_dump(config_recipe, sort_keys=False))


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, last: the run is complete, and its checkpoint is no longer needed."""
    write_atomic(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (Path(run_dir) / CHECKPOINT).unlink(missing_ok=True)


def write_error(run_dir: Path, text: str) -> None:
    write_atomic(Path(run_dir) / ERROR, text)


def write_record(run_dir: Path, record: dict) -> None:
    """A run record returned by a remote worker: metrics.jsonl, then summary.json last (its presence
    means complete), or error.txt. The same files a local child writes."""
    run_dir = Path(run_dir)
    for name, data in (record.get("files") or {}).items():  # model.pt, the trackers' logs
        path = (run_dir / name).resolve()
        if run_dir.resolve() in path.parents:  # never outside the run folder
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
    if record.get("metrics") is not None:
        write_atomic(run_dir / METRICS, record["metrics"])
    if record.get("summary") is not None and not record.get("error"):
        write_summary(run_dir, record["summary"])
    else:
        write_error(run_dir, record.get("error") or "the worker returned no summary\n")



def read_run(run_dir: Path, keep: tuple = ()) -> dict | None:
    """One index row: run_id, status, the resolved config as dotted keys, the summary's scalars (a
    list or mapping only if named in ``keep``: measures.py's ``listed`` keys stay out of the index)."""
    st = status(run_dir)
    if st not in DONE and st != "crashed":
        return None
    try:
        recipe = yaml.safe_load((run_dir / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    row = {"run_id": run_dir.name, "status": st, "recipe": recipe.get("name")}
    row.update(flatten(recipe.get("base") or {}))
    for key, default in LATER_KEYS.items():  # a run made before the key existed had its default behaviour
        row.setdefault(key, default)
    if st in DONE:
        summary = json.loads((run_dir / SUMMARY).read_text())
        row.update({k: v for k, v in summary.items() if (k not in INDEX_SKIP or k in keep) and k != "run_id"})
        row["device_used"] = row.pop("device", None)
    else:
        row["error"] = (run_dir / ERROR).read_text().strip().splitlines()[-1][:200] if (run_dir / ERROR).exists() else ""
    return row


def _config_order(row: dict) -> tuple:
    """index.csv's order: by configuration (the recipe keys in schema order), then seed; numbers as
    numbers, so 1e-3 comes before 1e-2."""
    from ..config import all_keys

    def part(v):
        if isinstance(v, bool) or v is None:
            return (1, str(v))
        if isinstance(v, (int, float)):
            return (0, float(v))
        return (1, str(v))

    return tuple(part(row.get(k)) for k, *_ in all_keys() if k != "seed") + (part(row.get("seed")),)


def scan(recipe_dir: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in Path(recipe_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        row = read_run(run_dir)
        if row:
            rows.append(row)
    return rows


def rebuild_index(recipe_dir: Path) -> Path:
    import pandas as pd

    rows = sorted(scan(recipe_dir), key=_config_order)
    path = Path(recipe_dir) / INDEX
    write_atomic(path, pd.DataFrame(rows).to_csv(index=False) if rows else "run_id,status\n")
    return path


def load_results(path: str | Path = "results"):
    """A results folder as a DataFrame: ``results/<name>`` (one recipe) or ``results/`` (every recipe in it).

    Reads the run folders themselves, so it is right even while a sweep is running.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_dir():
        raise NormbenchError("no such results folder", file=str(path))
    recipe_dirs = [path] if (path / INDEX).exists() or any((p / CONFIG).exists() for p in path.iterdir()) else \
        sorted(p for p in path.iterdir() if p.is_dir())
    rows = [row for d in recipe_dirs for row in scan(d)]
    return pd.DataFrame(rows)


class Lock:
    """An exclusive lock on a recipe's results folder; a second process gets a clear refusal."""

    def __init__(self, recipe_dir: Path):
        self.path = Path(recipe_dir) / LOCK
        self.f = None

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a+")
        except OSError as e:
            raise NormbenchError(f"cannot create the results folder: {e.strerror}", key="--out",
                                 file=str(self.path.parent)) from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; documented
            return self
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "?"
            self.f.close()
            raise NormbenchError(f"in use by another normbench process (pid {holder}); wait for it or stop it",
                                 file=str(self.path.parent)) from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()
        return self

    def __exit__(self, *exc):
        if self.f and not self.f.closed:
            self.f.truncate(0)
            self.f.close()
