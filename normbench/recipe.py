"""Recipes: YAML -> validated runs.

A recipe is a mapping with ``name``, ``description``, ``base`` (the config, see
``config.py``), an optional ``sweep`` with ``grid``, ``zip`` and ``seeds``, and optional
``claims`` (``claims.py``).
``load_recipe`` reads it safely (``yaml.SafeLoader``: tags such as
``!!python/object`` are refused, never executed), applies ``--set`` overrides,
expands the sweep and validates every run before anything is trained.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import RunConfig, check_dotted_key, from_dict
from . import implied
from .dotted import set_dotted, suggest
from .errors import NormbenchError, Problems

RECIPE_KEYS = ("name", "description", "base", "sweep", "claims", "provenance")  # provenance: written into
# a run's config.yaml (the recipe's git state) and ignored when that file is run again
SWEEP_KEYS = ("grid", "zip", "seeds")
MAX_PROBLEMS = 10  # a sweep's runs can repeat one mistake many times: stop listing after this many
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class RunSpec:
    cfg: RunConfig
    values: dict[str, Any]  # the swept keys and this run's values, for tables
    implied: dict[str, str] = field(default_factory=dict)  # keys its placement or init set: {key: by what}

    @property
    def run_id(self) -> str:
        return self.cfg.run_id()

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or "base"


@dataclass
class Recipe:
    name: str
    description: str
    runs: list[RunSpec]
    varied: list[str] = field(default_factory=list)
    path: str | None = None
    claims: list = field(default_factory=list)  # claims.Claim, checked by `normbench claims` and the report
    # the run ids of the recipe as written, when --set changed them (a shortened look): the claims stay
    # judged on those, and `run` leaves claims.yaml alone; None when the recipe runs as written
    claims_ids: list[str] | None = None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last silently."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NormbenchError("no such file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise NormbenchError(f"cannot read: {e}", file=str(path)) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise NormbenchError(f"refused: nested more than Python can read (a recipe is at most {MAX_DEPTH} levels "
                             "deep)", file=str(path)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "malformed YAML"
        if "could not determine a constructor" in problem:
            tag = problem.split(" for the tag ")[-1].replace("tag:yaml.org,2002:", "!!")
            problem = f"tag {tag} refused: recipes are data, tags are not allowed"
        raise NormbenchError(f"malformed YAML at {where}{problem}", file=str(path)) from None
    except yaml.YAMLError as e:
        raise NormbenchError(f"malformed YAML: {e}", file=str(path)) from None
    _check_size(data, str(path))
    return data


MAX_DEPTH, MAX_NODES = 32, 100_000


def _check_size(data: Any, file: str) -> None:
    """Refuse pathological YAML before anything walks it: nesting deeper than MAX_DEPTH, or more than
    MAX_NODES values once aliases are expanded (a "billion laughs" file is a few lines that expand
    to 10^9 values through aliases of aliases)."""
    budget = [MAX_NODES]

    def walk(node, depth):
        budget[0] -= 1
        if budget[0] < 0:
            raise NormbenchError(f"refused: more than {MAX_NODES:,} values once YAML aliases are expanded; "
                                 "a recipe is small", file=file)
        if depth > MAX_DEPTH:
            raise NormbenchError(f"refused: nested deeper than {MAX_DEPTH} levels; a recipe is shallow", file=file)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            walk(child, depth + 1)

    walk(data, 0)


def parse_set(items: list[str] | dict | None) -> dict[str, Any]:
    """``["train.lr=3e-4", "model.norm=rmsnorm", "sweep.seeds=3"]`` (or a dict) -> {dotted key: value};
    values are YAML. Config keys, ``sweep.seeds`` and ``sweep.grid.<config key>`` (a list: an axis)."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise NormbenchError(f"expected KEY=VALUE, got {item!r}", key="--set")
            k, v = item.split("=", 1)
            try:
                pairs.append((k.strip(), yaml.safe_load(v) if v.strip() else v))
            except yaml.YAMLError:
                pairs.append((k.strip(), v))
    problems = Problems()
    for k, _ in pairs:
        with problems.check():
            if k == "sweep.seeds":
                continue
            if k.startswith("sweep.grid."):
                try:
                    check_dotted_key(k[len("sweep.grid."):])
                except NormbenchError as e:
                    raise NormbenchError(e.message, key=k) from None
                continue
            try:
                check_dotted_key(k)
            except NormbenchError as e:
                sweep = " (or sweep.seeds, sweep.grid.KEY)" if k.startswith("sweep") else ""
                raise NormbenchError(e.message + sweep, key=k) from None
    for e in problems.errors:  # a mistake on the command line is the flag's, not the file's
        e.key = f"--set {e.key}"
    problems.raise_any()
    return dict(pairs)


def load_recipe(source: str | Path | dict, overrides: list[str] | dict | None = None) -> Recipe:
    """Read, validate and expand a recipe (a path or a dict). Raises NormbenchError, or
    NormbenchErrors listing every problem found. Problems in ``overrides`` (``--set``) are named by
    their flag, without the file; ``--set data.path`` is relative to the current folder."""
    file = None
    if isinstance(source, (str, Path)):
        file = str(source)
        raw = read_yaml(source)
        base_dir = Path(source).resolve().parent
    else:
        raw, base_dir = copy.deepcopy(source), Path.cwd()
    sets = parse_set(overrides)
    try:
        recipe = _build(copy.deepcopy(raw), sets, base_dir, default_name=Path(file).stem if file else "recipe")
    except NormbenchError as e:
        for err in getattr(e, "errors", None) or [e]:
            if not (err.key or "").startswith("--"):
                err.with_file(file)
        raise e from None
    recipe.path = file
    if sets and recipe.claims:
        try:
            written = [r.run_id for r in _build(copy.deepcopy(raw), {}, base_dir,
                                                default_name=Path(file).stem if file else "recipe").runs]
        except NormbenchError as e:  # valid only with its --set: nothing as written to judge, unless
            claims_errors = [err for err in getattr(e, "errors", None) or [e] if (err.key or "").startswith("claims")]
            if claims_errors:  # the claims themselves are wrong: say so, as without --set
                for err in claims_errors:
                    err.with_file(file)
                raise claims_errors[0] if len(claims_errors) == 1 else e from None
            written = []
        if set(written) != {r.run_id for r in recipe.runs}:
            recipe.claims_ids = written
    return recipe


def _build(raw: Any, sets: dict, base_dir: Path, default_name: str) -> Recipe:
    if raw is None:
        raise NormbenchError("is empty; a recipe needs at least a name or a base: mapping (see recipes/)")
    if not isinstance(raw, dict):
        raise NormbenchError(f"the top level must be a mapping with keys {', '.join(RECIPE_KEYS)}, "
                             f"got {type(raw).__name__}")
    problems = Problems()
    for k in raw:
        if k not in RECIPE_KEYS:
            problems.add(NormbenchError(f"unknown top-level key{suggest(str(k), RECIPE_KEYS)}; expected "
                                        f"{', '.join(RECIPE_KEYS)} (config keys go under base:)", key=str(k)))
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        problems.add(NormbenchError(f"expected a plain folder name (letters, digits, . _ -; no '/' or '..'), "
                                    f"got {name!r}", key="name"))
    description = raw.get("description") or ""
    if not isinstance(description, str):
        problems.add(NormbenchError("expected a string", key="description"))
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        problems.add(NormbenchError(f"expected a mapping, got {type(base).__name__}", key="base"))
        base = {}
    base = copy.deepcopy(base)
    before = len(problems.errors)
    axes, zipped, seeds = _sweep(raw.get("sweep"), problems)
    sweep_broken = len(problems.errors) > before
    flagged = _apply_sets(sets, base, axes, zipped, problems)
    if "seed" in flagged and "sweep.seeds" not in sets:
        seeds = None
    if "sweep.seeds" in sets:
        with problems.check():
            seeds = _seeds(sets["sweep.seeds"], "--set sweep.seeds", axes, zipped)
    skip = set()
    try:
        _resolve_path(base, base_dir, "base.data.path")
    except NormbenchError as e:  # reported once here; the runs go on without it, for their own mistakes
        problems.add(e)
        base["data"].pop("path")
        skip.add("data.path")
    # go on with what is valid: the runs' own mistakes are reported with those found so far
    if sweep_broken:  # the recipe is refused anyway: check each swept value once, not the whole product
        # (a million-run grid with one repeated value is refused at once)
        axes = {k: [[v] for v in vs] for k, vs in axes.items()}
        for k, vs in axes.items():
            for v in vs:
                _expand(base, {k: v}, {}, None, base_dir, flagged, problems, skip)
        _expand(base, {}, {k: v[:1] for k, v in zipped.items()}, None, base_dir, flagged, problems, skip)
        with problems.check():
            from .claims import parse_claims

            parse_claims(raw.get("claims"))
        problems.raise_any()
    runs = _expand(base, axes, zipped, seeds, base_dir, flagged, problems, skip)
    claims = []
    with problems.check():
        from .claims import parse_claims

        # runs: are the groups real? Under --set the groups are checked on the recipe as written
        # (load_recipe), since an override may remove a value a claim names (a shortened look)
        claims = parse_claims(raw.get("claims"), None if problems.errors or sets else runs)
    problems.raise_any()
    varied = list(axes) + list(zipped) + (["seed"] if seeds is not None and len(seeds) > 1 else [])
    return Recipe(name=name, description=description, runs=runs, varied=varied, claims=claims)


def _expand(base: dict, axes: dict, zipped: dict, seeds, base_dir: Path, flagged: set, problems: Problems,
            skip: set = frozenset()) -> list:
    """The sweep's runs (grid x zip rows x seeds), each validated; a mistake shared by many runs is
    reported once, with how many runs it is in and the first of them. Mistakes of the keys in
    ``skip`` were reported already (a missing file)."""
    zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    seed_list = [{"seed": s} for s in seeds] if seeds is not None else [{}]
    runs, seen = [], set()
    combos = list(itertools.product(*[[(k, v) for v in vs] for k, vs in axes.items()]))
    total = len(combos) * len(zip_rows) * len(seed_list)
    failed: dict[tuple, list] = {}  # (key, message) -> [error, runs it appears in, first run: number, label]
    index = 0
    for combo in combos:
        for zrow in zip_rows:
            for srow in seed_list:
                values = {**dict(combo), **zrow, **srow}
                index += 1
                run_raw = copy.deepcopy(base)
                for k, v in values.items():
                    set_dotted(run_raw, k, v)
                try:
                    if "data.path" in values:  # a swept path; the base's is resolved above
                        _resolve_path(run_raw, base_dir, "sweep: data.path")
                    cfg = from_dict(run_raw)
                except NormbenchError as e:
                    for err in getattr(e, "errors", None) or [e]:
                        if err.key in skip:
                            continue
                        entry = failed.setdefault((err.key, err.message), [err, 0, index, _label(values)])
                        entry[1] += 1
                    if len(failed) >= MAX_PROBLEMS:
                        break
                    continue
                spec = RunSpec(cfg, values, implied.apply(run_raw)[1])
                if spec.run_id not in seen:
                    seen.add(spec.run_id)
                    runs.append(spec)
    for err, count, first, label in failed.values():
        if err.key in flagged:  # the value came from --set
            err.key = f"--set {err.key}"
        if total > 1:
            err.message += (" (in every run)" if count == total else f" (in run {first} of {total}: {label})"
                            if count == 1 else f" (in {count} of {total} runs, the first run {first}: {label})")
        problems.add(err)
    return runs


def _label(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "base"


def _apply_sets(sets: dict, base: dict, axes: dict, zipped: dict, problems: Problems) -> set[str]:
    """Apply ``--set``: a config key fixes the key (replacing a swept axis and the base value), a
    ``sweep.grid.KEY`` list becomes an axis. Returns the config keys whose values came from a flag."""
    flagged = set()
    for k, v in sets.items():
        with problems.check():
            if k == "sweep.seeds":
                continue
            if k.startswith("sweep.grid."):
                key = k[len("sweep.grid."):]
                if key in zipped:
                    raise NormbenchError("is varied by sweep.zip; edit the recipe instead", key=f"--set {k}")
                if not isinstance(v, list) or not v or len({repr(x) for x in v}) != len(v):
                    raise NormbenchError(f"expected a non-empty list of distinct values, e.g. [1, 2], got {v!r}",
                                         key=f"--set {k}")
                axes[key] = v
                flagged.add(key)
                continue
            if k in zipped:
                raise NormbenchError("is varied together with other keys by sweep.zip; edit the recipe instead",
                                     key=f"--set {k}")
            if isinstance(v, list):  # a list for one key: the user meant to sweep it
                shown = ", ".join(map(str, v))
                raise NormbenchError(f"takes one value; to sweep it: --set 'sweep.grid.{k}=[{shown}]'",
                                     key=f"--set {k}")
            axes.pop(k, None)
            if k == "data.path" and isinstance(v, str):  # typed on the command line: relative to here
                path = (Path.cwd() / v).resolve()
                if not (path.exists() or ("{split}" in path.name and path.parent.is_dir())):
                    raise NormbenchError(f"no such file or folder: {path}", key=f"--set {k}")
                v = str(path)
            set_dotted(base, k, v)
            flagged.add(k)
    return flagged


def _resolve_path(raw: dict, base_dir: Path, where: str) -> None:
    """data.path is relative to the recipe's folder; make it absolute and check it exists (what it must
    be, a text file or a folder of token files, the config's check says in one line)."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        path = (base_dir / data["path"]).resolve()
        if not (path.exists() or ("{split}" in path.name and path.parent.is_dir())):  # a file, a folder, a pattern
            raise NormbenchError(f"no such file or folder: {path}", key=where)
        data["path"] = str(path)


def _sweep(raw: Any, problems: Problems) -> tuple[dict, dict, list[int] | None]:
    if raw is None:
        return {}, {}, None
    if not isinstance(raw, dict):
        problems.add(NormbenchError(f"expected a mapping with keys {', '.join(SWEEP_KEYS)}", key="sweep"))
        return {}, {}, None
    for k in raw:
        if k not in SWEEP_KEYS:
            problems.add(NormbenchError(f"unknown key{suggest(str(k), SWEEP_KEYS)}; expected {', '.join(SWEEP_KEYS)}",
                                        key=f"sweep.{k}"))
    axes, zipped = {}, {}
    for section, out in (("grid", axes), ("zip", zipped)):
        block = raw.get(section) or {}
        if not isinstance(block, dict):
            problems.add(NormbenchError("expected a mapping of dotted keys to lists", key=f"sweep.{section}"))
            continue
        for k, vs in block.items():
            where = f"sweep.{section}.{k}"
            with problems.check():
                try:
                    check_dotted_key(str(k))
                except NormbenchError as e:
                    raise NormbenchError(e.message, key=where) from None
                if not isinstance(vs, list) or not vs:
                    raise NormbenchError(f"expected a non-empty list of values, got {vs!r}", key=where)
                if section == "grid" and len({repr(v) for v in vs}) != len(vs):  # zip rows may share values
                    seen, dup = set(), None
                    for v in vs:
                        if repr(v) in seen:
                            dup = v
                            break
                        seen.add(repr(v))
                    shown = f"{vs!r}" if len(vs) <= 8 else f"its list of {len(vs)} values"
                    raise NormbenchError(f"repeated value {dup!r} in {shown}", key=where)
                out[str(k)] = vs
    both = set(axes) & set(zipped)
    if both:
        problems.add(NormbenchError("a key cannot be in both sweep.grid and sweep.zip",
                                    key=f"sweep.zip.{sorted(both)[0]}"))
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        problems.add(NormbenchError("zip lists must have equal lengths, got " +
                                    ", ".join(f"{k}: {n}" for k, n in lengths.items()), key="sweep.zip"))
        zipped = {}
    rows = [repr(row) for row in zip(*zipped.values())]
    if len(set(rows)) != len(rows):
        problems.add(NormbenchError("two zip rows are the same (the same values of every zipped key)", key="sweep.zip"))
    seeds = None
    if raw.get("seeds") is not None:
        with problems.check():
            seeds = _seeds(raw["seeds"], "sweep.seeds", axes, zipped)
    return axes, zipped, seeds


def _seeds(seeds: Any, where: str, axes: dict, zipped: dict) -> list[int]:
    """sweep.seeds: a count n (seeds 0..n-1) or a list of distinct integers >= 0."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise NormbenchError(f"expected a count >= 1 or a list of seeds, got {seeds}", key=where)
        seeds = list(range(seeds))
    elif not (isinstance(seeds, list) and seeds and
              all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise NormbenchError(f"expected a count n (seeds 0..n-1) or a non-empty list of integers >= 0, "
                             f"got {seeds!r}", key=where)
    elif len(set(seeds)) != len(seeds):
        raise NormbenchError(f"repeated seed in {seeds!r}", key=where)
    if "seed" in axes or "seed" in zipped:
        raise NormbenchError("seed is swept both by sweep.seeds and by grid/zip; keep one", key=where)
    return seeds
