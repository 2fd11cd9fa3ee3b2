"""The normalization zoo: the new placements as slots (against hand computations), Derf and
PowerNorm (against their formulas and PowerNorm's official backward), the residual RMS, and a
researcher's own norm through --plugin."""
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from normbench.config import from_dict
from normbench.errors import NormbenchError
from normbench.model import Transformer, residual_rms, subln_gain
from normbench.norms import Derf, Identity, PowerNorm
from normbench.recipe import load_recipe
from conftest import tiny


def model(layers=4, seed=0, **m):
    cfg = from_dict({"model": {"layers": layers, "d_model": 32, "heads": 2, "d_ff": 64, **m}})
    torch.manual_seed(seed)
    return Transformer(cfg.model, 40, 16)


def filled(norms):
    return [not isinstance(n, Identity) for n in norms]


def test_mixln_is_post_ln_in_its_first_quarter_and_pre_ln_after():
    m = model(layers=8, placement="mixln")  # floor(0.25 * 8) = 2 Post-LN blocks
    for i, b in enumerate(m.blocks):
        assert filled(b.attn_norms) == ([False, False, True] if i < 2 else [True, False, False])
    assert not isinstance(m.final_norm, Identity)
    m = model(layers=8, placement="mixln", mixln_ratio=0.5)
    assert [filled(b.mlp_norms)[2] for b in m.blocks] == [True] * 4 + [False] * 4


def test_lns_scales_each_norm_output_by_one_over_sqrt_layer():
    m = model(layers=4, placement="lns")
    x = torch.randn(2, 16, 32)
    for i, b in enumerate(m.blocks):
        before = b.attn_norms[0]
        assert torch.allclose(before(x), nn.functional.layer_norm(x, (32,)) / math.sqrt(i + 1), atol=1e-6)


def test_outnorm_block_is_x_plus_norm_of_f_x_by_hand():
    m = model(layers=2, placement="outnorm").eval()
    b, x = m.blocks[0], torch.randn(2, 16, 32)
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    h = x + nn.functional.layer_norm(b.attn(x, None), (32,))  # the attn norm's weights are the init ones
    want = h + nn.functional.layer_norm(b.mlp(h), (32,))
    assert torch.allclose(b(x, None, None), want, atol=1e-5)
    assert filled(b.attn_norms) == [False, True, False] and not isinstance(m.final_norm, Identity)
    del causal


def test_subln_adds_inner_norms_and_scales_the_init_by_sqrt_ln_2n():
    pre, sub = model(layers=4, placement="pre", init="torch"), model(layers=4, placement="subln", init="torch")
    g = subln_gain(4)
    assert g == pytest.approx(math.sqrt(math.log(8)))
    for bp, bs in zip(pre.blocks, sub.blocks):
        assert isinstance(bs.attn.inner, nn.LayerNorm) and bs.attn.inner.normalized_shape == (32,)
        assert isinstance(bs.mlp.inner, nn.LayerNorm) and bs.mlp.inner.normalized_shape == (64,)  # over d_ff
        for name in ("fc1", "fc2"):
            assert torch.allclose(getattr(bs.mlp, name).weight, g * getattr(bp.mlp, name).weight)
        assert torch.allclose(bs.attn.proj.weight, g * bp.attn.proj.weight)
        q_s, k_s, v_s = bs.attn.qkv.weight.view(3, 32, 32)
        q_p, k_p, v_p = bp.attn.qkv.weight.view(3, 32, 32)
        assert torch.equal(q_s, q_p) and torch.equal(k_s, k_p) and torch.allclose(v_s, g * v_p)


def test_embed_norm_normalises_what_the_first_block_sees():
    m = model(embed_norm=True)
    seen = []
    m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    m(torch.randint(1, 40, (2, 16)))
    x = seen[0]
    assert torch.allclose(x.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(x.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-3)


def test_full_width_qk_norm_normalises_the_whole_projection():
    m = model(qk_norm=True, qk_norm_scope="full")
    assert m.blocks[0].attn.q_norm.normalized_shape == (32,)
    assert model(qk_norm=True).blocks[0].attn.q_norm.normalized_shape == (16,)  # per head: d_model / heads


def test_combinations_that_make_no_sense_are_one_line_naming_the_key():
    for placement in ("lns", "subln", "outnorm", "mixln"):
        with pytest.raises(NormbenchError) as e:
            from_dict({"model": {"placement": placement, "norm": "none"}})
        assert e.value.key == "model.norm" and f"model.placement={placement}" in str(e.value)
    with pytest.raises(NormbenchError) as e:
        from_dict({"model": {"embed_norm": True, "norm": "none"}})
    assert e.value.key == "model.embed_norm"
    # keys a placement does not use do not split run ids
    assert from_dict({"model": {"mixln_ratio": 0.5}}).run_id() == from_dict({}).run_id()
    assert from_dict({"model": {"qk_norm_scope": "full"}}).run_id() == from_dict({}).run_id()


def test_derf_is_its_formula():
    n = Derf(8)
    with torch.no_grad():
        n.weight.uniform_(0.5, 2)
        n.bias.uniform_(-1, 1)
        n.shift.fill_(0.3)
    x = torch.randn(3, 5, 8)
    assert n.alpha.item() == 0.5
    assert torch.allclose(n(x), n.weight * torch.erf(0.5 * x + 0.3) + n.bias)


def group_scaled(x, groups, eps=1e-5):
    """PowerNorm's GroupScaling1D by hand: each channel group divided by its own quadratic mean."""
    out = torch.empty_like(x)
    w = x.shape[-1] // groups
    for g in range(groups):
        part = x[..., g * w:(g + 1) * w]
        out[..., g * w:(g + 1) * w] = part / torch.sqrt((part ** 2).mean(-1, keepdim=True) + eps)
    return out


def test_powernorm_forward_and_running_statistics_by_hand():
    torch.manual_seed(0)
    n = PowerNorm(6, eps=1e-5, heads=2, warmup=2)
    x = torch.randn(2, 4, 6) * 3
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    xs = group_scaled(x, 2)
    var = (xs[mask] ** 2).mean(0)  # the quadratic mean of real tokens, not centred
    assert torch.allclose(n(x, mask), xs / torch.sqrt(var + 1e-5), atol=1e-5)  # step 1 <= warmup: batch
    # running: step 1 < warmup: cumulative mean (var), then the EMA 0.9 phi + 0.1 var, as the code does
    assert torch.allclose(n.running_phi, 0.9 * var + 0.1 * var, atol=1e-6)
    x[1, 2:] = 1e3  # padding: its content changes nothing
    assert torch.allclose(n.running_phi, 0.9 * var + 0.1 * var, atol=1e-6)
    n(x, mask)  # step 2 <= warmup: batch statistics again; step 2 is not < warmup: only the EMA
    assert torch.allclose(n.running_phi, 0.9 * var + 0.1 * var, atol=1e-6)
    phi = n.running_phi.clone()
    y = n(x, mask)  # step 3 > warmup: the running statistic, so a token no longer depends on the batch
    assert torch.allclose(y[mask], (xs / torch.sqrt(phi + 1e-5))[mask], atol=1e-5)
    n.eval()
    assert torch.allclose(n(x, mask)[mask], (xs / torch.sqrt(n.running_phi + 1e-5))[mask], atol=1e-5)


def test_powernorm_backward_is_the_official_approximation_by_hand():
    torch.manual_seed(1)
    n = PowerNorm(4, eps=1e-5, heads=1, warmup=100)
    with torch.no_grad():
        n.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    x = torch.randn(2, 3, 4, requires_grad=True)
    gout = torch.randn(2, 3, 4)
    ema = torch.zeros(4)
    for _ in range(2):  # twice: the second backward uses the ema of the first
        x.grad = None
        n(x).backward(gout)
        xs = group_scaled(x.detach(), 1).reshape(-1, 4)
        var = (xs ** 2).mean(0)
        z = xs / torch.sqrt(var + 1e-5)
        g = gout.reshape(-1, 4) * n.weight.detach()
        g_hat = g - 0.1 * ema * z  # (1 - alpha_bkw) = 0.1
        ema = ema + (g_hat * z).mean(0)
        dxs = g_hat / torch.sqrt(var + 1e-5)
        # through the group scaling (exact autograd): the vector-Jacobian product of xs(x) with dxs
        xg = x.detach().clone().requires_grad_(True)
        (group_scaled(xg, 1).reshape(-1, 4) * dxs).sum().backward()
        assert torch.allclose(x.grad, xg.grad, atol=1e-5)
        assert torch.allclose(n.ema_gz, ema, atol=1e-6)
        assert torch.allclose(n.weight.grad, (gout.reshape(-1, 4) * z).sum(0), atol=1e-5)
        n.weight.grad = n.bias.grad = None


def test_powernorm_trains_and_is_causal_after_its_warmup(tmp_path):
    from normbench.trainer import train

    s = train(from_dict(tiny(model={"norm": "powernorm"}, train={"steps": 12, "warmup_steps": 4})), tmp_path)
    assert not s["diverged"] and s["final_val_loss"] < s["initial_loss"] - 0.5  # it learns
    assert s["train_causal_leak"] < 1e-6  # taken after training: past the warmup, running statistics only


def test_residual_rms_per_layer_is_measured_and_summarised(tmp_path):
    from normbench.trainer import train

    m = model(layers=3)
    m.measure_attention(True)
    outs = []
    for b in m.blocks:
        b.register_forward_hook(lambda mod, args, out: outs.append(out))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 9:] = False
    m(torch.randint(1, 40, (2, 16)), mask)
    want = [o[mask].pow(2).mean().sqrt() for o in outs]
    assert torch.allclose(m.resid_rms_by_layer(), torch.stack(want))
    assert residual_rms(outs[0], None) == pytest.approx(outs[0].pow(2).mean().sqrt().item())
    s = train(from_dict(tiny(model={"layers": 3}, train={"steps": 12, "measure_every": 5})), tmp_path)
    assert len(s["resid_rms_by_layer"]) == len(s["resid_rms_by_layer_init"]) == 3
    assert s["resid_rms_last"] == s["resid_rms_by_layer"][-1]
    assert s["resid_rms_growth"] == pytest.approx(s["resid_rms_by_layer"][-1] / s["resid_rms_by_layer_init"][-1])
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "resid_rms" in r] == [1, 6, 11]


# --- bring your own norm ------------------------------------------------------------------------

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


# --- strict recipes -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 2.5, 4.0, "4"])
def test_a_count_takes_only_integers(value):
    with pytest.raises(NormbenchError, match="expected an integer"):
        from_dict({"model": {"layers": value}})


def test_pathological_yaml_is_refused_in_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("base: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(NormbenchError, match="refused: nested"):
        load_recipe(deep)
    laughs = tmp_path / "laughs.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    laughs.write_text("description: x\nbase: {}\nsweep:\n  grid:\n    " + "\n    ".join(lines) + "\n")
    with pytest.raises(NormbenchError, match="aliases are expanded"):
        load_recipe(laughs)
    shallow = tmp_path / "anchors.yaml"  # ordinary anchors and aliases still work
    shallow.write_text("name: a\nbase:\n  model: &m {layers: 2}\nsweep:\n  grid:\n    model.layers: [2, 3]\n")
    assert len(load_recipe(shallow).runs) == 2


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
