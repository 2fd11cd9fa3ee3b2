"""A researcher's own norm through --plugin: end to end through the CLI (its runs carry the plugin's
path and hash), an unknown norm or a broken plugin in one line, register_norm's refusals, and a
plugin norm of the wrong shape caught at validation. Through Ray's workers: test_ray.py."""
import json
import subprocess
import sys

import pytest
import yaml
from torch import nn

from conftest import tiny
from normbench.errors import NormbenchError

PLUGIN = '''
import torch
from torch import nn
import normbench

class HalfNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
    def forward(self, x):
        return {scale} * x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * self.weight

normbench.register_norm("halfnorm", HalfNorm, "RMSNorm times {scale}")
'''


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "normbench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_a_plugin_norm_runs_end_to_end_through_the_cli(tmp_path):
    plugin = tmp_path / "half.py"
    plugin.write_text(PLUGIN.format(scale=0.5))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "p", "base": tiny(train={"steps": 8}),
                                      "sweep": {"grid": {"model.norm": ["rmsnorm", "halfnorm"]}}}))
    out = tmp_path / "res"
    res = cli("run", str(recipe), "--plugin", str(plugin), "--out", str(out), "-q", "-j", "2")
    assert res.returncode == 0, res.stderr
    summaries = {json.loads(p.read_text())["plugin"] is not None: json.loads(p.read_text())
                 for p in (out / "p").glob("*/summary.json")}
    mine = summaries[True]
    assert mine["plugin"]["norm"] == "halfnorm" and mine["plugin"]["path"] == str(plugin)
    assert len(mine["plugin"]["sha256"]) == 16 and not mine["diverged"]
    # editing the norm changes its runs' ids (no stale result), not the others'
    plugin.write_text(PLUGIN.format(scale=0.25))
    res = cli("run", str(recipe), "--plugin", str(plugin), "--out", str(out), "-q", "--dry-run")
    assert res.stdout.count("completed (kept)") == 1 and res.stdout.count("missing (to run)") == 1


def test_an_unknown_norm_names_the_plugin_option_and_a_broken_plugin_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "p", "base": tiny(model={"norm": "halfnorm"})}))
    res = cli("run", str(recipe), "--out", str(tmp_path / "res"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "model.norm: expected one of layernorm" in res.stderr and "--plugin" in res.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("import normbench\n\nx = 1 / 0\n")
    res = cli("run", str(recipe), "--plugin", str(broken), "--out", str(tmp_path / "res"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert f"{broken}: --plugin: the plugin failed to import: line 3: ZeroDivisionError" in res.stderr
    res = cli("run", str(recipe), "--plugin", str(tmp_path / "nope.py"))
    assert res.returncode == 2 and "no such plugin file" in res.stderr
    assert not (tmp_path / "res").exists()


def test_register_norm_refuses_builtin_and_bad_names():
    import normbench

    for name in ("layernorm", "Bad Name", "1x"):
        with pytest.raises(NormbenchError):
            normbench.register_norm(name, nn.Identity)


def test_a_plugin_norm_with_the_wrong_shape_is_one_line_at_validation(tmp_path):
    """Issue 21: it failed deep in torch (mat1 and mat2 shapes cannot be multiplied) mid-run."""
    plugin = tmp_path / "bad.py"
    plugin.write_text("import torch\nimport normbench\n\n"
                      "class Sum(torch.nn.Module):\n    def forward(self, x):\n        return x.sum(-1)\n\n"
                      "normbench.register_norm('sumnorm', lambda d: Sum())\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "base": tiny(model={"norm": "sumnorm"})}))
    res = cli("validate", str(recipe), "--plugin", str(plugin))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "norm 'sumnorm' fails on a (2, 3, 8) test input" in res.stderr and "to (2, 3)" in res.stderr
