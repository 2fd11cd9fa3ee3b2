"""The house stays tidy (issue 19): no import cycles, counting imports inside functions; no module
imports another's private names; no function much over 80 lines."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "normbench"
MAX_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def imports(name: str, path: Path, mods: dict) -> list[tuple[str, str]]:
    """(module imported, name imported) for every import in the file, at any depth."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in mods else base, alias.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return [(m, n) for m, n in out if m in mods and m != name]


def test_the_scan_sees_the_package():
    mods = modules()
    assert {"normbench.trainer", "normbench.sweep.execute", "normbench.analysis.ledger", "normbench.render.plots",
            "normbench.cli"} <= set(mods)
    edges = {m: {t for t, _ in imports(m, p, mods)} for m, p in mods.items()}
    assert "normbench.measures" in edges["normbench.analysis.compare"]  # a function-level import counts too
    assert "normbench.norms" in edges["normbench.plugins"]


def find_cycle(edges: dict) -> list | None:
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(edges):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    mods = modules()
    edges = {m: {t for t, _ in imports(m, p, mods)} for m, p in mods.items()}
    assert find_cycle(edges) is None


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    private = [(m, t, n) for m, p in mods.items() for t, n in imports(m, p, mods)
               if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_no_function_is_much_over_80_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # the signature and docstring of a Typer command (its options) do not count
                body = (node.body[1:] if ast.get_docstring(node) else node.body) or node.body
                lines = node.end_lineno - body[0].lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{name}.{node.name}: {lines}")
    assert long == []


def test_the_core_imports_no_subpackage():
    """The flat core (config, norms, model, data, trainer, recipe...) never reaches into sweep/, analysis/,
    render/ or cli/: those build on it."""
    mods = modules()
    core = [m for m in mods if m.count(".") == 1 and m.split(".")[1] not in ("sweep", "analysis", "render", "cli")
            and m not in ("normbench.docgen", "normbench.__main__")]  # tools that read the CLI
    bad = [(m, t) for m in core for t, _ in imports(m, mods[m], mods)
           if t.split(".")[1] in ("sweep", "analysis", "render", "cli")]
    assert bad == []


LAYERS = {"sweep": 1, "analysis": 2, "render": 3, "cli": 4}  # the flat core is 0


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def test_dependencies_point_one_way():
    """core <- sweep <- analysis <- render <- cli: a module imports only its own layer or lower ones
    (the package's lazy API, docgen and __main__ read the CLI: they stand outside)."""
    mods = modules()
    outside = ("normbench", "normbench.docgen", "normbench.__main__")
    bad = [(m, t) for m, p in mods.items() if m not in outside for t, _ in imports(m, p, mods)
           if layer(t) > layer(m)]
    assert bad == []
