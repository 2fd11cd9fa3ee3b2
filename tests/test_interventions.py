"""The interventions of issue 23, each against a hand computation on a small tensor: soft-caps,
QK-Clip, ReZero and LayerScale, weightless, scalar and unit-offset gains with norm weight decay,
HybridNorm, gated attention, sinks, nGPT, Admin, T-Fixup and the depth-scaled init; every new key
trains a few steps in every placement it allows; earlier runs keep their ids."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import tiny
from normbench.attention import Attention, attention_probs, softcap
from normbench.catalog import PLACEMENTS
from normbench.config import ModelConfig, RunConfig, TrainConfig, from_dict
from normbench.errors import NormbenchError
from normbench.inits import profile_admin, tfixup_scale
from normbench.model import Transformer
from normbench.ngpt import ALPHA_INIT
from normbench.norms import Identity
from normbench.poststep import QKClip, SphereProjection, make_post_step

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(layers=2, d_model=16, heads=2, d_ff=32)
NGPT = {"placement": "ngpt", "norm": "none", "bias": False, "embed_scale": "none", "tie_embeddings": False}


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**SMALL, **kw}), 11, 8)


# --- soft-caps ---

def test_softcap_values_and_gradient_by_hand():
    s = torch.tensor([-200.0, -30.0, -1.0, 0.0, 0.5, 30.0, 200.0], requires_grad=True)
    c = 30.0
    y = softcap(s, c)
    for si, yi in zip(s.tolist(), y.tolist()):
        assert yi == pytest.approx(c * math.tanh(si / c), rel=1e-6)
    assert y.abs().max() < c and softcap(s, None) is s
    y.sum().backward()
    for si, gi in zip(s.tolist(), s.grad.tolist()):  # d/ds c tanh(s/c) = 1 - tanh(s/c)^2
        assert gi == pytest.approx(1 - math.tanh(si / c) ** 2, rel=1e-5, abs=1e-7)


def test_attention_softcap_and_sinks_against_a_hand_softmax():
    """The explicit path: softmax over [c tanh(s/c) for allowed keys, the sink logit], the sink's share dropped."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 4, 3) * 5, torch.randn(1, 2, 4, 3) * 5
    sinks = torch.tensor([0.5, -1.0])
    allowed = torch.ones(4, 4, dtype=torch.bool).tril()
    p = attention_probs(q, k, allowed, 3 ** -0.5, cap=2.0, sinks=sinks)
    for h in range(2):
        for i in range(4):
            s = [2.0 * math.tanh(float(q[0, h, i] @ k[0, h, j]) * 3 ** -0.5 / 2.0) for j in range(i + 1)]
            z = sum(math.exp(v) for v in s) + math.exp(float(sinks[h]))
            want = [math.exp(v) / z for v in s] + [0.0] * (3 - i)
            assert p[0, h, i].tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert (p.sum(-1) < 1).all()  # the sink takes its share


def test_output_softcap_is_c_tanh_of_the_uncapped_logits():
    capped, plain = model(softcap_output=2.0), model()
    x = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        z, z0 = capped(x), plain(x)  # same seed, same weights
    assert z0.abs().max() > 2.0
    torch.testing.assert_close(z, 2.0 * torch.tanh(z0 / 2.0))
    assert z.abs().max() <= 2.0


# --- QK-Clip ---

@pytest.mark.parametrize("bias", [False, True])
def test_qk_clip_brings_the_next_forward_to_tau(bias):
    """After the hook, the same input's largest logit of each clipped head is tau; other heads are untouched."""
    m = model(bias=bias)
    x = torch.randint(0, 11, (3, 8))
    hook = QKClip(tau=1.0)
    hook.prepare(m)
    m.train()
    with torch.no_grad():
        m.blocks[0].attn.qkv.weight.mul_(3.0)  # block 0: logits far above tau
        m(x)
        before = [b.attn.logit_max.clone() for b in m.blocks]
        tau = float(before[0].min()) / 2  # every head of block 0 is clipped
        hook.tau = tau
        untouched = [b.attn.qkv.weight.clone() for b in m.blocks]
        hook.after_step(m)
        m(x)
    after = m.blocks[0].attn.logit_max
    assert after.tolist() == pytest.approx([tau] * 2, rel=1e-4)
    for h, s in enumerate(before[1].tolist()):  # block 1: clipped only where S_max > tau
        w = m.blocks[1].attn.qkv.weight.view(3, 2, 8, 16)[:2, h]
        w0 = untouched[1].view(3, 2, 8, 16)[:2, h]
        if s <= tau:
            assert torch.equal(w, w0)
        else:
            torch.testing.assert_close(w, w0 * math.sqrt(tau / s))
    v = m.blocks[0].attn.qkv.weight[32:]  # values are never touched
    assert torch.equal(v, untouched[0][32:])


def test_qk_clip_keeps_the_signed_logit_near_tau_from_the_first_clip_on(tmp_path):
    """At a moderate rate (3e-3) each measured forward's largest signed logit, from the first that exceeds tau
    (the first clip) to the end, stays within 1.5 tau: the clip leaves tau on the batch it saw, and the next
    AdamW step and the next batch add little. The magnitude (negative logits too) is not what it bounds."""
    tau = 4.0
    cfg = from_dict(tiny(model={"layers": 2, "d_model": 64, "heads": 4, "d_ff": 128, "bias": False},
                         data={"seq_len": 64, "max_chars": 200_000},
                         train={"steps": 150, "lr": 3e-3, "qk_clip": tau, "measure_every": 1, "warmup_steps": 10,
                                "eval_every": 150, "batch_size": 16, "eval_tokens": 2048}))
    from normbench.trainer import train

    s = train(cfg, tmp_path, threads=1)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    top = [r["attn_logit_top"] for r in rows if "attn_logit_top" in r]
    first = next(i for i, v in enumerate(top) if v > tau)  # the clip acts after this step
    assert first > 0 and max(top[first + 1:]) <= 1.5 * tau
    assert s["max_attn_logit_signed"] == pytest.approx(max(top), rel=1e-5)
    assert s["max_attn_logit"] >= s["max_attn_logit_signed"]


def test_post_step_hooks_come_from_the_config():
    cfg = from_dict(tiny(train={"qk_clip": 5.0}))
    assert [type(h) for h in make_post_step(cfg)] == [QKClip]
    cfg = from_dict(tiny(model=NGPT, train={"weight_decay": 0.0}))
    assert [type(h) for h in make_post_step(cfg)] == [SphereProjection]
    assert make_post_step(from_dict(tiny())) == []


# --- residual gates ---

def test_rezero_model_is_the_embedding_path_at_initialisation():
    m = model(residual_gate="rezero", norm="none")
    x = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        want = m.head(m.embed_output(x))  # no norms: the head on x_0
        torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    assert all(b.attn_gate.alpha.item() == 0 and b.mlp_gate.alpha.dim() == 0 for b in m.blocks)


def test_layerscale_scales_each_branch_per_channel():
    m = model(residual_gate="layerscale", layerscale_init=0.25)
    g = m.blocks[0].attn_gate
    assert g.alpha.shape == (16,) and torch.all(g.alpha == 0.25)
    h = torch.randn(2, 3, 16)
    torch.testing.assert_close(g(h), 0.25 * h)


# --- norm gains ---

def test_weightless_scalar_and_unit_offset_gains():
    x = torch.randn(2, 5, 16)
    full = model(norm="rmsnorm")
    none = model(norm="rmsnorm", norm_affine="none")
    scalar = model(norm="rmsnorm", norm_affine="scalar")
    offset = model(norm="rmsnorm", norm_unit_offset=True)
    assert none.norm_gains() == []
    assert [g.shape for g in scalar.norm_gains()] == [torch.Size([])] * 5  # 2 blocks x 2 + final
    assert all(torch.all(g == 0) for g in offset.norm_gains())  # theta = gamma - 1 starts at 0
    n = offset.blocks[0].attn_norms[0]
    torch.testing.assert_close(n.weight, torch.ones(16))
    with torch.no_grad():  # at initialisation the four compute the same function
        for m in (none, scalar, offset):
            torch.testing.assert_close(m(x.argmax(-1).clamp(max=10)), full(x.argmax(-1).clamp(max=10)))
    # the weightless norm is F.rms_norm with no weight
    n = none.blocks[0].attn_norms[0]
    torch.testing.assert_close(n(x), F.rms_norm(x, (16,), eps=1e-5))


@pytest.mark.parametrize("unit_offset", [False, True])
def test_norm_weight_decay_pulls_the_gain_to_zero_or_to_one(unit_offset):
    """One AdamW step with zero gradients: decoupled decay multiplies the stored gain by 1 - lr*wd. A plain
    gamma = 1 shrinks to 1 - lr*wd; a unit-offset theta = 0 stays 0, so gamma stays 1."""
    m = model(norm="rmsnorm", norm_unit_offset=unit_offset)
    lr, wd = 0.1, 2.0
    groups = m.param_groups(0.0, wd)
    assert {id(p) for p in groups[2]["params"]} == {id(g) for g in m.norm_gains()} and groups[2]["weight_decay"] == wd
    opt = torch.optim.AdamW(groups, lr=lr)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    gamma = m.blocks[0].attn_norms[0].weight
    torch.testing.assert_close(gamma, torch.full((16,), 1.0 if unit_offset else 1 - lr * wd))
    assert len(m.param_groups(0.1)) == 2  # without norm decay: today's two groups


# --- HybridNorm, v-norm, gated attention ---

def test_hybridnorm_block_by_hand():
    """y = x + Attn(QKV-norm(x)); out = Norm(y) + MLP(Norm(y)) (Zhuo et al. 2025's code); a final norm."""
    m = model(placement="hybridnorm", norm="rmsnorm")
    b = m.blocks[0]
    assert all(isinstance(n, Identity) for n in b.attn_norms)
    assert [isinstance(n, Identity) for n in b.mlp_norms] == [False, True, True]
    assert not any(isinstance(n, Identity) for n in (b.attn.q_norm, b.attn.k_norm, b.attn.v_norm))
    assert not isinstance(m.final_norm, Identity)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        y = x + b.attn(x, None, None)
        n = b.mlp_norms[0](y)
        torch.testing.assert_close(b(x, None, None), n + b.mlp(n))


def test_gate_multiplies_each_head_by_sigmoid_of_its_logit():
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL, attn_gate=True)
    a = Attention(cfg, Identity())
    plain = Attention(ModelConfig(**SMALL), Identity())
    plain.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("gate")})
    with torch.no_grad():
        a.gate.weight.zero_()
        a.gate.bias.copy_(torch.tensor([2.0, -1.0]))
        a.proj.weight.copy_(torch.eye(16))
        a.proj.bias.zero_()
        plain.proj.load_state_dict(a.proj.state_dict())
        x = torch.randn(2, 5, 16)
        y, y0 = a(x, None), plain(x, None)
    g = torch.sigmoid(torch.tensor([2.0, -1.0])).repeat_interleave(8)
    torch.testing.assert_close(y, y0 * g)


def test_v_norm_normalises_each_heads_values():
    cfg = ModelConfig(**SMALL, qk_norm=True, qk_norm_type="rmsnorm", v_norm=True)
    a = Attention(cfg, Identity())
    v = torch.randn(2, 2, 5, 8) * 7
    torch.testing.assert_close(a.v_norm(v), F.rms_norm(v, (8,), a.v_norm.weight, eps=1e-5))


# --- nGPT ---

def test_ngpt_weights_and_states_on_the_unit_sphere_after_a_step():
    cfg = from_dict(tiny(model={**SMALL, **NGPT}, train={"weight_decay": 0.0}))
    torch.manual_seed(0)
    m = Transformer(cfg.model, 11, 8)
    hooks = make_post_step(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.0)
    x = torch.randint(0, 11, (4, 8))
    m(x).logsumexp(-1).mean().backward()
    opt.step()
    assert (m.blocks[0].attn.qkv.weight.norm(dim=1) - 1).abs().max() > 1e-3  # the step left the sphere
    for h in hooks:
        h.after_step(m)
    ones = (lambda t: torch.testing.assert_close(t, torch.ones_like(t)))
    ones(m.tok.weight.norm(dim=1))
    ones(m.head.weight.norm(dim=1))
    for b in m.blocks:
        ones(b.attn.qkv.weight.norm(dim=1))
        ones(b.attn.proj.weight.norm(dim=0))
        ones(b.mlp.fc1.weight.norm(dim=1))
        ones(b.mlp.fc2.weight.norm(dim=0))
        assert b.alpha_attn().mean().item() == pytest.approx(ALPHA_INIT, rel=0.2)
    states = []
    m.blocks[0].register_forward_hook(lambda mod, i, out: states.append(out))
    with torch.no_grad():
        m(x)
    ones(states[0].norm(dim=-1))


def test_ngpt_scales_are_stored_scaled():
    m = model(**NGPT)
    b = m.blocks[0]
    assert b.attn.q_norm.s.param.shape == (16,) and b.attn.k_norm.s() is not b.attn.q_norm.s()  # sq, sk: d_model
    assert m.head.weight is not m.tok.weight
    assert b.alpha_attn.param[0].item() == pytest.approx(16 ** -0.5)  # stored at alpha_scale = 1/sqrt(d)
    assert b.alpha_attn()[0].item() == pytest.approx(ALPHA_INIT)  # seen at alpha_init
    assert m.logit_scale()[0].item() == pytest.approx(1.0)
    assert b.attn.scale == pytest.approx(math.sqrt(8))  # softmax scale sqrt(d_head)


# --- initialisations ---

def test_admin_omegas_from_the_profiling_pass_by_hand():
    """Transformer-Clinic's rule, sublayer by sublayer: omega_1 = 1, omega_{i+1} = sqrt(Var(x_i omega_i) + Var F_i)."""
    m = model(placement="post", init="admin")
    x = torch.randint(0, 11, (4, 8))
    omegas = profile_admin(m, x, None)
    with torch.no_grad():
        h, omega, want = m.embed_output(x), 1.0, []
        for b in m.blocks:
            for f, norms in ((lambda z: b.attn(z, None, None), b.attn_norms), (b.mlp, b.mlp_norms)):
                out = f(h)
                want.append(omega)
                omega = math.sqrt((h * omega).var().item() + out.var().item())
                h = norms[2](h * want[-1] + out)
    assert omegas == pytest.approx(want, rel=1e-5) and omegas[0] == 1.0
    assert m.blocks[1].mlp_skip.omega[0].item() == pytest.approx(want[3], rel=1e-5)
    assert torch.all(m.blocks[1].mlp_skip.omega == m.blocks[1].mlp_skip.omega[0])  # a vector, filled once


def test_tfixup_scales_xavier_by_9n_to_the_minus_quarter():
    d, N = 16, 2
    x, t = model(init="xavier", norm="none"), model(init="tfixup", norm="none")
    s = tfixup_scale(N)
    assert s == pytest.approx((9 * N) ** -0.25)
    torch.testing.assert_close(t.tok.weight, x.tok.weight * s)
    for bx, bt in zip(x.blocks, t.blocks):
        wx, wt = bx.attn.qkv.weight.view(3, d, d), bt.attn.qkv.weight.view(3, d, d)
        torch.testing.assert_close(wt[:2], wx[:2])  # q and k are not scaled
        torch.testing.assert_close(wt[2], wx[2] * s)
        for a, b in ((bt.attn.proj, bx.attn.proj), (bt.mlp.fc1, bx.mlp.fc1), (bt.mlp.fc2, bx.mlp.fc2)):
            torch.testing.assert_close(a.weight, b.weight * s)


def test_depth_scaled_init_std_per_layer():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(layers=4, d_model=256, heads=4, d_ff=1024, init="depth_scaled"), 11, 8)
    for layer, b in enumerate(m.blocks):
        assert b.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.02)
        for w in (b.attn.proj.weight, b.mlp.fc2.weight):
            assert w.std().item() == pytest.approx(0.02 / math.sqrt(2 * (layer + 1)), rel=0.03)


# --- every key, every placement it allows ---

NEW_KEYS = [
    {"model": {"softcap_attn": 5.0, "softcap_output": 3.0}},
    {"model": {"residual_gate": "rezero"}},
    {"model": {"residual_gate": "layerscale", "layerscale_init": 0.01}},
    {"model": {"norm_affine": "none"}},
    {"model": {"norm_affine": "scalar", "norm_unit_offset": True}, "train": {"norm_weight_decay": 0.5}},
    {"model": {"qk_norm": True, "v_norm": True}},
    {"model": {"attn_gate": True, "attn_sinks": True}},
    {"train": {"qk_clip": 2.0}},
    {"model": {"init": "depth_scaled"}},
    {"model": {"init": "admin"}},
    {"model": {"init": "tfixup", "norm": "none"}},
]


def config_for(keys: dict, placement: str) -> RunConfig | None:
    """The tiny config with these keys in this placement, or None where validation refuses it."""
    model_keys = {"norm": "rmsnorm", **keys.get("model", {}), "placement": placement, **SMALL}
    train = {"steps": 3, "eval_every": 3, "measure_every": 1, **keys.get("train", {})}
    if placement == "ngpt":
        model_keys.update({k: v for k, v in NGPT.items() if k != "placement"})
        train["weight_decay"] = 0.0
    try:
        return from_dict(tiny(model=model_keys, train=train))
    except NormbenchError:
        return None


@pytest.mark.parametrize("keys", NEW_KEYS, ids=[str(k) for k in NEW_KEYS])
def test_every_new_key_trains_in_every_placement_it_allows(keys):
    from normbench.trainer import train

    trained = 0
    for placement in PLACEMENTS:
        cfg = config_for(keys, placement)
        if cfg is None:
            continue
        s = train(cfg)
        assert s["steps_done"] == 3 and math.isfinite(s["final_val_loss"]), (keys, placement)
        trained += 1
    assert trained >= (1 if keys["model"].get("init") in ("admin", "tfixup") else 5) if "model" in keys else trained >= 5


REFUSED = [
    ({"init": "tfixup", "norm": "layernorm"}, {}, "model.init", "model.norm: none"),
    ({"init": "admin", "placement": "pre"}, {}, "model.init", "needs model.placement=post"),
    ({"placement": "ngpt", "norm": "rmsnorm"}, {}, "model.norm", "ngpt"),
    ({"placement": "ngpt", "bias": True}, {}, "model.bias", "leave model.bias unset"),
    ({"placement": "ngpt", "tie_embeddings": True}, {"weight_decay": 0.0}, "model.tie_embeddings",
     "ngpt (Loshchilov et al. 2024) needs model.tie_embeddings: false"),
    ({"qk_norm": True}, {"qk_clip": 10.0}, "train.qk_clip", "qk-norm"),
    ({"placement": "hybridnorm", "qk_norm": True}, {}, "model.qk_norm", "hybridnorm already"),
    ({"v_norm": True}, {}, "model.v_norm", "qk_norm: true"),
    ({"norm_affine": "none", "norm_unit_offset": True}, {}, "model.norm_unit_offset", "no gain"),
    ({"norm": "none"}, {"norm_weight_decay": 0.1}, "train.norm_weight_decay", "has none"),
]


@pytest.mark.parametrize("model_keys,train_keys,key,text", REFUSED, ids=[r[2] + ":" + r[3] for r in REFUSED])
def test_combinations_that_make_no_sense_are_refused_in_one_line(model_keys, train_keys, key, text):
    with pytest.raises(NormbenchError) as e:
        from_dict(tiny(model=model_keys, train=train_keys))
    problems = getattr(e.value, "errors", [e.value])
    assert any(p.key == key and text in str(p) for p in problems), [str(p) for p in problems]
    assert all("\n" not in str(p) for p in problems)


@pytest.mark.parametrize("model_keys,brought", [
    ({"placement": "ngpt"}, {**{f"model.{k}": v for k, v in NGPT.items() if k != "placement"},
                             "model.qk_norm": False, "model.embed_norm": False, "model.residual_gate": "none",
                             "train.weight_decay": 0.0}),
    ({"init": "tfixup"}, {"model.norm": "none", "model.qk_norm": False}),
    ({"init": "admin"}, {"model.placement": "post"}),
])
def test_a_placement_or_init_brings_its_conventions_where_unset(model_keys, brought):
    """Keys left unset follow the placement or init; the run is the one with them written out (same id)."""
    from normbench.implied import apply

    raw = tiny(model=model_keys)
    filled, by = apply(raw)
    assert set(by) == set(brought) and all(v == f"model.{next(iter(model_keys))}={next(iter(model_keys.values()))}"
                                           for v in by.values())
    cfg = from_dict(raw)
    for key, want in brought.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == want, key
    explicit = tiny(model={**model_keys, **{k.split(".")[1]: v for k, v in brought.items() if k.startswith("model.")}},
                    train={k.split(".")[1]: v for k, v in brought.items() if k.startswith("train.")})
    assert apply(explicit)[1] == {} and from_dict(explicit).run_id() == cfg.run_id()
    assert raw == tiny(model=model_keys)  # the caller's mapping is not changed
    from normbench.trainer import train

    s = train(from_dict(tiny(model=model_keys, train={"steps": 2, "eval_every": 2})), threads=1)  # it trains
    assert s["steps_done"] == 2 and math.isfinite(s["final_val_loss"])


def test_keys_and_dry_run_show_what_a_placement_brought(tmp_path):
    from typer.testing import CliRunner

    from normbench.cli import app

    res = CliRunner().invoke(app, ["keys", "tie_embeddings"], terminal_width=300)
    assert res.exit_code == 0 and "false under model.placement=ngpt" in res.output
    recipe = {"name": "r", "base": tiny(), "sweep": {"grid": {"model.placement": ["pre", "ngpt"]}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "--dry-run", "--out", str(tmp_path / "o")],
                             terminal_width=400)
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("model.placement=ngpt set"))
    assert "model.norm=none" in line and "train.weight_decay=0.0" in line and line.endswith("(runs 2)")


def test_the_cli_refuses_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from normbench.cli import app

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "r", "base": {"model": {"init": "admin",
                                                                                    "placement": "pre"}}}))
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "r.yaml")])
    assert res.exit_code == 2 and "model.init" in res.output and "Traceback" not in res.output


# --- run ids ---

def test_every_committed_run_keeps_its_id():
    """Each completed run folder under results/reference is named by its id: the configs of every
    earlier release hash, under this one, to the same ids (the new keys enter only when set)."""
    checked = 0
    for path in sorted((ROOT / "results" / "reference").glob("*/*/config.yaml")):
        if not (path.parent / "summary.json").exists():
            continue
        raw = yaml.safe_load(path.read_text())["base"]
        if raw.get("data", {}).get("path") or "eval_batches" in raw.get("train", {}):
            continue  # a file's digest depends on the file (test_recipe); eval_batches runs predate 0.5.0's new ids
        assert from_dict(raw).run_id() == path.parent.name, path
        checked += 1
    assert checked > 300


def test_new_keys_enter_the_id_only_when_set():
    base = from_dict(tiny()).run_id()
    defaults = {"model": {"softcap_attn": None, "softcap_output": None, "residual_gate": "none",
                          "layerscale_init": 0.1, "norm_affine": "full", "norm_unit_offset": False,
                          "v_norm": False, "attn_gate": False, "attn_sinks": False},
                "train": {"norm_weight_decay": 0.0, "qk_clip": None}}
    assert from_dict(tiny(**defaults)).run_id() == base
    assert from_dict(tiny(model={"attn_gate": True})).run_id() != base
    assert TrainConfig().qk_clip is None


def test_a_claim_may_select_a_key_at_null():
    """A null key (the interventions' off state) is None in a config and NaN in a results table: a
    claim's `{model.softcap_attn: null}` selects both."""
    from normbench.dotted import matches

    for v in (None, float("nan")):
        assert matches(v, "None") and matches(v, "null") and not matches(v, "50.0")
    assert matches(50.0, "50.0") and not matches(50.0, "None")


def test_the_inits_are_named_once_in_each_place_that_lists_them():
    import typing

    from normbench.catalog import INITS as DOCS
    from normbench.config import Init
    from normbench.inits import INITS

    assert list(DOCS) == list(typing.get_args(Init)) and set(INITS) == set(DOCS)
