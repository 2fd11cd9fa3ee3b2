"""The CLI end to end, through CliRunner and as a real subprocess."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from normbench.cli.app import app
from conftest import tiny

runner = CliRunner()


def recipe(tmp_path, sweep=None, name="t", **sections):
    r = {"name": name, "description": "a test", "base": tiny(**sections)}
    if sweep:
        r["sweep"] = sweep
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_run_end_to_end(tmp_path):
    p = recipe(tmp_path, sweep={"grid": {"model.placement": ["pre", "post"]}})
    out = tmp_path / "res"
    res = runner.invoke(app, ["run", str(p), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "2 completed" in res.output and "results" in res.output
    df = pd.read_csv(out / "t" / "index.csv")
    assert sorted(df["model.placement"]) == ["post", "pre"] and (df["status"] == "completed").all()
    run_dir = out / "t" / df["run_id"][0]
    for f in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / f).stat().st_size > 0
    # config.yaml is itself a recipe that reruns exactly this run: resuming finds it done
    again = runner.invoke(app, ["run", str(run_dir / "config.yaml"), "--out", str(out), "-q"])
    assert again.exit_code == 0 and "0 to run" in again.output


def test_dry_run_and_validate_write_nothing(tmp_path):
    p = recipe(tmp_path, sweep={"grid": {"model.norm": ["layernorm", "rmsnorm"]}, "seeds": 3})
    for args in (["run", str(p), "--dry-run"], ["validate", str(p)]):
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "res")])
        assert res.exit_code == 0 and "6 runs" in res.output and "rmsnorm" in res.output
    assert not (tmp_path / "res").exists()


BAD = {
    "unknown key": ("base: {model: {nrom: layernorm}}\n", "model.nrom: unknown key (did you mean model.norm?)"),
    "bad choice": ("base: {model: {norm: lnorm}}\n", "model.norm: expected one of"),
    "bad yaml": ("base: {model: [1\n", "malformed YAML at line"),
    "tag": ("base: !!python/object/apply:os.getcwd []\n", "tags are not allowed"),
    "not a mapping": ("[1, 2]\n", "top level must be a mapping"),
    "escape": ("name: ../x\n", "name: expected a plain folder name"),
    "size": ("base: {train: {batch_size: 0}}\n", "train.batch_size: expected a value >= 1"),
    "heads": ("base: {model: {d_model: 30, heads: 4}}\n", "must divide"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    text, message = BAD[case]
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    res = runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "res")])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr and str(p) in res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert not (tmp_path / "res").exists()


def test_missing_file_and_bad_set(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "nope.yaml: no such file" in res.stderr
    p = recipe(tmp_path)
    res = runner.invoke(app, ["run", str(p), "--set", "train.stpes=3"])
    assert res.exit_code == 2 and "did you mean train.steps" in res.stderr


def test_list_and_keys():
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0
    for name in ("batchnorm_masked", "deepnorm", "sandwich", "charlm", "reverse", "dyt"):
        assert name in res.output
    res = runner.invoke(app, ["keys"])
    assert res.exit_code == 0 and "train.grad_clip" in res.output and "model.qk_norm" in res.output


def test_subprocess_run_and_module_entry(tmp_path):
    p = recipe(tmp_path, model={"norm": "rmsnorm"})
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "normbench", "run", str(p), "--out", str(tmp_path / "res")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "1 completed" in res.stdout
    (run_dir,) = [d for d in (tmp_path / "res" / "t").iterdir() if d.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_id"] == run_dir.name and summary["diverged"] is False
    bad = subprocess.run([sys.executable, "-m", "normbench", "run", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("no such file") and "Traceback" not in bad.stderr
    script = os.path.join(os.path.dirname(sys.executable), "normbench")  # the installed console script
    helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "run" in helped.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--jobs", "0", "recipes/quickstart.yaml"],
     "normbench run: error: Invalid value for '--jobs' / '-j': Input should be greater than or equal to 1 "
     "(see `normbench run --help`)"),
    (["compare", "--bogus"], "normbench compare: error: No such option: --bogus (see `normbench compare --help`)"),
    (["run"], "normbench run: error: Missing argument 'RECIPE...' (see `normbench run --help`)"),
    (["nosuch"], "normbench: error: No such command 'nosuch' (see `normbench --help`)"),
])
def test_usage_errors_from_the_console_script_are_one_line_exit_2(args, message):
    """Errors that typer/click catch before our code runs get our format too, via main()."""
    script = os.path.join(os.path.dirname(sys.executable), "normbench")
    res = subprocess.run([script, *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "300"})
    assert res.returncode == 2 and res.stderr.splitlines() == [message], res.stderr
    assert res.stdout == ""


def test_the_console_script_alone_prints_its_help():
    script = os.path.join(os.path.dirname(sys.executable), "normbench")
    res = subprocess.run([script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Usage: normbench" in res.stdout and "compare" in res.stdout


def test_out_that_is_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "afile").write_text("")
    res = runner.invoke(app, ["run", str(recipe(tmp_path)), "--out", str(tmp_path / "afile")])
    assert res.exit_code == 2 and "cannot create the results folder" in res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_help_list_and_keys_never_import_torch():
    """They must answer at once (docs/performance.md: under 0.5 s); importing torch alone takes over
    a second."""
    import subprocess
    import sys

    for args in (["--help"], ["list"], ["keys"], ["compare", "--help"], ["bench", "--help"], ["report", "--help"]):
        code = ("import sys\nfrom normbench.cli.app import app\n"
                f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stderr[-500:])


def test_version_short_help_and_flags_shown_as_flags():
    from normbench import __version__

    for flag in ("--version", "-V"):
        res = runner.invoke(app, [flag])
        assert res.exit_code == 0 and res.output.strip() == f"normbench {__version__}"
    for args in (["-h"], ["run", "-h"], ["compare", "-h"], ["bench", "-h"]):
        res = runner.invoke(app, args, env={"COLUMNS": "160"})
        assert res.exit_code == 0 and "Usage" in res.output
        assert "<bool>" not in res.output, args  # a flag takes no value
    res = runner.invoke(app, ["compare", "-h"], env={"COLUMNS": "200"})
    assert ".pdf" in res.output and ".svg" in res.output


def test_several_mistakes_are_one_line_each_exit_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "b", "base": {"model": {"layers": 0, "nrom": "x"}, "train": {"lr": "fast"}}}))
    res = runner.invoke(app, ["run", str(p), "--set", "train.stpes=3", "--out", str(tmp_path / "res")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normbench: error: --set train.stpes")  # flags first
    res = runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "res")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 3 and all(ln.startswith(f"normbench: error: {p}: ") for ln in lines)
    assert {ln.split(": ")[3] for ln in lines} == {"model.layers", "model.nrom", "train.lr"}
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("columns", ["80", "120"])
def test_the_table_at_the_end_of_run_never_cuts_a_name(tmp_path, columns, monkeypatch):
    """Issue 21: `run`'s table cut headers and values at 80 and 120 columns (placeme…, 6a99b…)."""
    monkeypatch.setenv("COLUMNS", columns)
    recipe = {"name": "w", "base": tiny(train={"steps": 2, "eval_every": 2}),
              "sweep": {"grid": {"model.placement": ["pre", "sandwich"], "train.warmup_steps": [0, 1]}}}
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    ids = [d.name for d in (tmp_path / "r" / "w").iterdir() if d.is_dir()]
    assert all(i in res.output for i in ids) and "sandwich" in res.output and "placement" in res.output
    if columns == "80":
        assert "left out for width" in res.output


def test_huge_values_print_in_scientific_notation():
    from normbench.render.tables import fmt_value

    assert fmt_value(77138552160256.0) == "7.714e+13" and fmt_value(1234.5) == "1,234"


def test_dir_lists_the_lazy_api():
    import normbench

    assert {"run_recipe", "compare_results", "claims_ledger", "train"} <= set(dir(normbench))


def test_a_crashed_runs_reason_is_printed_by_run(tmp_path):
    from conftest import ALLOC_ERROR, TOO_BIG_D_FF

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "c", "base": tiny(model={"d_ff": TOO_BIG_D_FF})}))
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 1 and "crashed: " in res.output and ALLOC_ERROR in res.output


@pytest.mark.parametrize("module", ["render.tables", "analysis.evidence", "analysis.ledger", "analysis.settle", "analysis.decide", "analysis.sequential",
                                    "summary", "estimate", "probes", "sweep.executors"])
def test_every_module_imports_on_its_own(module):
    """No import cycle that only works in one order (tables imported first used to fail)."""
    res = subprocess.run([sys.executable, "-c", f"import normbench.{module}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
