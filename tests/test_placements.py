"""Placements as slots, each against a hand computation: which slots pre, post, sandwich, deepnorm
and the rest fill; DeepNorm's constants; Mix-LN, LNS, OutNorm, SubLN, the embedding norm and
full-width qk-norm; and the combinations that make no sense, refused in one line."""
import math

import pytest
import torch
from torch import nn

from normbench.config import ModelConfig, from_dict
from normbench.errors import NormbenchError
from normbench.model import SLOTS, Transformer, deepnorm_constants, subln_gain
from normbench.norms import Identity


def model(layers=4, seed=0, **m):
    cfg = from_dict({"model": {"layers": layers, "d_model": 32, "heads": 2, "d_ff": 64, **m}})
    torch.manual_seed(seed)
    return Transformer(cfg.model, 40, 16)


def filled(norms):
    return [not isinstance(n, Identity) for n in norms]


def test_placement_slots():
    """pre, lns, subln: norm before the branch; post/deepnorm: after the add; sandwich: before and after the
    branch; outnorm: after the branch only. A final norm wherever the last block leaves the stream unnormalised."""
    for placement, (before, after_branch, after_add) in SLOTS.items():
        m = Transformer(ModelConfig(layers=1, d_model=8, heads=2, d_ff=16, placement=placement), 5, 4)
        assert [not isinstance(getattr(n, "norm", n), Identity) for n in m.blocks[0].attn_norms] == \
            [before, after_branch, after_add]
        assert (not isinstance(m.final_norm, Identity)) == (not after_add)


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
    h = x + nn.functional.layer_norm(b.attn(x, None), (32,))  # the attn norm's weights are the init ones
    want = h + nn.functional.layer_norm(b.mlp(h), (32,))
    assert torch.allclose(b(x, None, None), want, atol=1e-5)
    assert filled(b.attn_norms) == [False, True, False] and not isinstance(m.final_norm, Identity)


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
