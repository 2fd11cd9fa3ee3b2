"""Every norm in every placement; our norms against hand formulas; DeepNorm's constants; BatchNorm and padding."""
import math

import pytest
import torch
import torch.nn.functional as F

from normbench.catalog import NORMS as NORM_DOCS, PLACEMENTS
from normbench.config import ModelConfig
from normbench.model import SLOTS, Transformer, deepnorm_constants
from normbench.norms import NORMS, make_norm


def test_registry_matches_documented_names():
    assert set(NORMS) == set(NORM_DOCS)
    assert set(SLOTS) | {"mixln"} == set(PLACEMENTS)  # mixln fills pre or post slots per layer


def valid(norm, placement):
    from normbench.catalog import NEEDS_A_NORM

    return not (placement in NEEDS_A_NORM and norm == "none")


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("padded", [False, True])
def test_forward_backward_every_norm_and_placement(norm, placement, padded):
    if not valid(norm, placement):
        pytest.skip("rejected by validation (tested in test_recipe)")
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, d_model=16, heads=2, d_ff=32, norm=norm, placement=placement, qk_norm=padded)
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


@pytest.mark.parametrize("layers", [1, 6, 12, 100])
def test_deepnorm_constants_and_init(layers):
    alpha, beta = deepnorm_constants(layers)
    assert alpha == pytest.approx((2 * layers) ** 0.25)
    assert beta == pytest.approx((8 * layers) ** -0.25)
    if layers > 12:
        return
    d = 64
    cfg = dict(layers=layers, d_model=d, heads=4, d_ff=4 * d)
    torch.manual_seed(0)
    deep = Transformer(ModelConfig(**cfg, placement="deepnorm"), 10, 8)
    torch.manual_seed(0)
    post = Transformer(ModelConfig(**cfg, placement="post"), 10, 8)
    for bd, bp in zip(deep.blocks, post.blocks):
        assert bd.alpha == pytest.approx(alpha) and bp.alpha == 1.0
        # same seed, same draws: DeepNet scales the value, output and FFN weights by beta, not q and k
        wd, wp = bd.attn.qkv.weight.view(3, d, d), bp.attn.qkv.weight.view(3, d, d)
        torch.testing.assert_close(wd[:2], wp[:2])
        torch.testing.assert_close(wd[2], wp[2] * beta)
        for a, b in ((bd.attn.proj, bp.attn.proj), (bd.mlp.fc1, bp.mlp.fc1), (bd.mlp.fc2, bp.mlp.fc2)):
            torch.testing.assert_close(a.weight, b.weight * beta)


def test_placement_slots():
    """pre, lns, subln: norm before the branch; post/deepnorm: after the add; sandwich: before and after the
    branch; outnorm: after the branch only. A final norm wherever the last block leaves the stream unnormalised."""
    from normbench.norms import Identity

    for placement, (before, after_branch, after_add) in SLOTS.items():
        m = Transformer(ModelConfig(layers=1, d_model=8, heads=2, d_ff=16, placement=placement), 5, 4)
        slots = [not isinstance(n, Identity) for n in m.blocks[0].attn_norms]
        assert [not isinstance(getattr(n, "norm", n), Identity) for n in m.blocks[0].attn_norms] == \
            [before, after_branch, after_add]
        assert (not isinstance(m.final_norm, Identity)) == (not after_add)
        del slots


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


def test_batchnorm_eval_uses_running_statistics():
    bn = make_norm("batchnorm", 4)
    x = torch.randn(3, 6, 4) * 5 + 2
    bn(x)
    bn.eval()
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(bn(x), expected)


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


def test_max_attention_logit_matches_explicit_scores():
    from normbench.model import max_attention_logit

    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    scores = (q @ k.transpose(-2, -1)) / 2.0
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert max_attention_logit(q, k, None).item() == pytest.approx(scores.abs()[..., causal].max().item())


def test_max_attention_logit_takes_negative_logits_and_ignores_masked_pairs():
    from normbench.model import max_attention_logit

    q = torch.zeros(1, 1, 4, 2)
    k = torch.zeros(1, 1, 4, 2)
    q[0, 0, 2, 0], k[0, 0, 1, 0] = 3.0, -2.0  # allowed pair (2, 1): logit -6 / sqrt(2)
    q[0, 0, 0, 0], k[0, 0, 3, 0] = 10.0, 10.0  # future pair (0, 3): 100 / sqrt(2), masked by causality
    assert max_attention_logit(q, k, None).item() == pytest.approx(6 / math.sqrt(2))
    # a padding mask (B, 1, T, T) that also hides key 1 leaves only zeros
    allowed = torch.ones(4, 4, dtype=torch.bool).tril()[None, None] & torch.tensor([True, False, True, True])
    assert max_attention_logit(q, k, allowed).item() == 0.0
