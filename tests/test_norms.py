"""Every norm in every placement; our norms against hand formulas (Derf and PowerNorm too, with
PowerNorm's official backward); BatchNorm and padding. Which slots a placement fills: test_placements.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from normbench.catalog import NORMS as NORM_DOCS, PLACEMENTS
from conftest import tiny
from normbench.config import ModelConfig, from_dict
from normbench.model import BLOCKS, SLOTS, SPLIT_SLOTS, Transformer
from normbench.norms import NORMS, Derf, PowerNorm, make_norm


def test_registry_matches_documented_names():
    assert set(NORMS) == set(NORM_DOCS)
    # mixln fills pre or post slots per layer; nGPT is a block of its own
    assert set(SLOTS) | set(SPLIT_SLOTS) | set(BLOCKS) | {"mixln"} == set(PLACEMENTS)


def valid(norm, placement):
    from normbench.catalog import NEEDS_A_NORM

    if placement == "ngpt":  # nGPT normalises itself: model.norm none only
        return norm == "none"
    return not (placement in NEEDS_A_NORM and norm == "none")


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("padded", [False, True])
def test_forward_backward_every_norm_and_placement(norm, placement, padded):
    if not valid(norm, placement):
        pytest.skip("rejected by validation (tested in test_recipe)")
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, d_model=16, heads=2, d_ff=32, norm=norm, placement=placement,
                      qk_norm=padded and placement not in ("hybridnorm", "ngpt"), bias=placement != "ngpt")
    model = Transformer(cfg, vocab_size=11, seq_len=8)
    idx = torch.randint(1, 11, (3, 8))
    mask = None
    if padded:
        mask = torch.arange(8) < torch.tensor([[8], [5], [2]])
        idx = idx.masked_fill(~mask, 0)
    logits = model(idx, mask)
    assert logits.shape == (3, 8, 11)
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    assert torch.isfinite(model(idx, mask)).all()


def test_layernorm_matches_hand_formula_and_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8) * 3 + 1
    ln = make_norm("layernorm", 8, eps=1e-5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    hand = (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias
    torch.testing.assert_close(ln(x), hand)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (8,), ln.weight, ln.bias, 1e-5))
    nobias = make_norm("layernorm_nobias", 8, eps=1e-5)
    assert nobias.bias is None
    torch.testing.assert_close(nobias(x), (x - mu) / torch.sqrt(var + 1e-5))


def test_rmsnorm_matches_hand_formula_and_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8) * 3 + 1
    rn = make_norm("rmsnorm", 8, eps=1e-6)
    with torch.no_grad():
        rn.weight.uniform_(0.5, 1.5)
    hand = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * rn.weight
    torch.testing.assert_close(rn(x), hand)
    torch.testing.assert_close(rn(x), F.rms_norm(x, (8,), rn.weight, 1e-6))


def test_scalenorm_and_dyt_match_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    sn = make_norm("scalenorm", 8)
    assert sn.g.item() == pytest.approx(math.sqrt(8))
    torch.testing.assert_close(sn(x), math.sqrt(8) * x / x.norm(dim=-1, keepdim=True))
    dyt = make_norm("dyt", 8, dyt_alpha=0.5)
    assert dyt.alpha.item() == 0.5 and dyt.alpha.dim() == 0
    with torch.no_grad():
        dyt.weight.uniform_(0.5, 1.5)
        dyt.bias.uniform_(-1, 1)
    torch.testing.assert_close(dyt(x), dyt.weight * torch.tanh(0.5 * x) + dyt.bias)


def padded_batch():
    """The same 2 real sequences, once with 3 padding positions, once with 6 (different pad values)."""
    torch.manual_seed(0)
    real = torch.randn(2, 5, 4) * 2 + 1
    short = torch.cat([real, torch.full((2, 3, 4), 7.0)], dim=1)
    long = torch.cat([real, torch.full((2, 6, 4), -3.0)], dim=1)
    mask = lambda T: torch.arange(T) < 5
    return real, (short, mask(8).expand(2, 8)), (long, mask(11).expand(2, 11))


def test_padding_changes_batchnorm_on_real_tokens_but_not_masked_batchnorm():
    real, (short, ms), (long, ml) = padded_batch()
    bn = make_norm("batchnorm", 4)
    assert not torch.allclose(bn(short, ms)[:, :5], bn(long, ml)[:, :5], atol=1e-3)
    mbn = make_norm("batchnorm_masked", 4)
    torch.testing.assert_close(mbn(short, ms)[:, :5], mbn(long, ml)[:, :5])
    # and masked BN on a padded batch is plain BatchNorm1d on the real tokens alone
    ref = torch.nn.BatchNorm1d(4)
    torch.testing.assert_close(mbn(short, ms)[:, :5], ref(real.reshape(-1, 4)).reshape(2, 5, 4))
    # running statistics too come from the real tokens only
    mbn, ref = make_norm("batchnorm_masked", 4), torch.nn.BatchNorm1d(4)
    for _ in range(3):
        mbn(long, ml)
        ref(real.reshape(-1, 4))
    torch.testing.assert_close(mbn.running_mean, ref.running_mean)
    torch.testing.assert_close(mbn.running_var, ref.running_var)


def test_batchnorm_by_hand_in_training_and_in_eval():
    """normbench's batchnorm on (B, T, d): per-channel statistics over all B*T positions (not per
    time step, not per token), running statistics (momentum 0.1, unbiased variance) for eval."""
    torch.manual_seed(0)
    bn = make_norm("batchnorm", 4, eps=1e-5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 6, 4) * 5 + 2  # (B, T, d)
    flat = x.reshape(18, 4)  # (B*T, d)
    mu, var = flat.mean(0), flat.var(0, unbiased=False)
    torch.testing.assert_close(bn(x), (x - mu) / torch.sqrt(var + 1e-5) * bn.weight + bn.bias)
    run_mu, run_var = 0.9 * 0 + 0.1 * mu, 0.9 * 1 + 0.1 * flat.var(0, unbiased=True)  # from 0 and 1
    torch.testing.assert_close(bn.running_mean, run_mu)
    torch.testing.assert_close(bn.running_var, run_var)
    bn.eval()
    y = torch.randn(2, 5, 4)  # another batch: eval normalises it with the running statistics alone
    torch.testing.assert_close(bn(y), (y - run_mu) / torch.sqrt(run_var + 1e-5) * bn.weight + bn.bias)
    torch.testing.assert_close(bn.running_mean, run_mu)  # and leaves them alone


def test_qk_norm_bounds_attention_logits():
    """With LayerNorm'd q and k (unit gain), |q.k| <= |q||k| = d_head, so logits <= sqrt(d_head)."""
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, d_model=32, heads=2, d_ff=64, qk_norm=True)
    m = Transformer(cfg, 11, 8)
    with torch.no_grad():
        m.tok.weight.mul_(100)  # huge activations that would blow logits up without qk-norm
        m.measure_attention(True)
        m(torch.randint(1, 11, (2, 8)))
    assert 0 < m.attention_logit_max().item() <= math.sqrt(16) + 1e-4


def max_attention_logit(q, k, attn_mask):
    """The largest |logit| over heads, as the probe reads it: attention_stats' first column."""
    from normbench.attention import attention_stats

    return attention_stats(q, k, attn_mask, None)[:, 0].amax()


def test_max_attention_logit_matches_explicit_scores():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    scores = (q @ k.transpose(-2, -1)) / 2.0
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert max_attention_logit(q, k, None).item() == pytest.approx(scores.abs()[..., causal].max().item())


def test_max_attention_logit_takes_negative_logits_and_ignores_masked_pairs():
    q = torch.zeros(1, 1, 4, 2)
    k = torch.zeros(1, 1, 4, 2)
    q[0, 0, 2, 0], k[0, 0, 1, 0] = 3.0, -2.0  # allowed pair (2, 1): logit -6 / sqrt(2)
    q[0, 0, 0, 0], k[0, 0, 3, 0] = 10.0, 10.0  # future pair (0, 3): 100 / sqrt(2), masked by causality
    assert max_attention_logit(q, k, None).item() == pytest.approx(6 / math.sqrt(2))
    # a padding mask (B, 1, T, T) that also hides key 1 leaves only zeros
    allowed = torch.ones(4, 4, dtype=torch.bool).tril()[None, None] & torch.tensor([True, False, True, True])
    assert max_attention_logit(q, k, allowed).item() == 0.0


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
