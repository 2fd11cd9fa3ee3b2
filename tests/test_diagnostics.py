"""The diagnostics of 2023-2026 (issue 22), each against a hand computation on a small tensor:
activation kurtosis, massive activations, attention entropy and sinks, token similarity (rank
collapse), DyT/Derf saturation; and each as a summary key of a real run."""
import math

import pytest
import torch

from conftest import tiny
from normbench.config import from_dict
from normbench.attention import DIAG_SEQS, attention_stats
from normbench.model import residual_stats, token_cos_sim
from normbench.norms import ERF_FLAT, TANH_FLAT, Derf, DyT
from normbench.trainer import train


def test_kurtosis_of_known_channels():
    # channel RMS s = (1, 1, 1, 3): Kurt = mean s^4 / (mean s^2)^2 = (3 + 81)/4 / ((3 + 9)/4)^2 = 21 / 9
    x = torch.tensor([[1.0, -1.0, 1.0, 3.0], [-1.0, 1.0, -1.0, -3.0]])[None]  # (1, 2, 4)
    assert residual_stats(x, None)[1].item() == pytest.approx(21 / 9)
    same = torch.randn(1, 8, 4).sign()  # every channel RMS 1: Kurt 1
    assert residual_stats(same, None)[1].item() == pytest.approx(1.0)


def test_massive_ratio_and_rms_by_hand_with_padding():
    x = torch.ones(2, 3, 4)
    x[0, 1, 2] = 100.0  # one massive entry among real tokens
    x[1, 2, :] = 1e6  # a padding position: never counted
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rms, _, massive, _ = residual_stats(x, mask).tolist()
    assert massive == pytest.approx(100.0)  # max |h| / median |h| = 100 / 1
    assert rms == pytest.approx(math.sqrt((19 * 1 + 100 ** 2) / 20))
    assert DIAG_SEQS >= 2


def test_token_similarity_of_identical_and_orthogonal_tokens():
    same = torch.tensor([[1.0, 2.0, 0.0]]).repeat(4, 1)[None]  # four identical tokens: 1
    assert token_cos_sim(same, None).item() == pytest.approx(1.0)
    ortho = torch.eye(3)[None]  # three orthogonal tokens: 0
    assert token_cos_sim(ortho, None).item() == pytest.approx(0.0, abs=1e-7)
    mixed = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # the last one is padding
    # pairs among the three real tokens: (0,1)=1, (0,2)=0, (1,2)=0 -> mean 1/3
    assert token_cos_sim(mixed, torch.tensor([[True, True, True, False]])).item() == pytest.approx(1 / 3)


def test_attention_entropy_sinks_and_logits_of_a_known_pattern():
    """One head attends uniformly (entropy ln(t+1) at query t), one puts all its weight on position 0
    (a sink: entropy 0, weight 1), by construction of q and k."""
    T, big = 4, 50.0
    q = torch.zeros(1, 2, T, 1)
    k = torch.zeros(1, 2, T, 1)
    q[0, 1, :, 0] = big  # head 1: query . key is big only for key 0
    k[0, 1, 0, 0] = 1.0
    stats = attention_stats(q, k, None, None)  # (H, 3): max |logit|, entropy, weight on position 0
    uniform = sum(math.log(t + 1) for t in range(T)) / T
    assert stats[0, 1].item() == pytest.approx(uniform)
    assert stats[0, 2].item() == pytest.approx(sum(1 / (t + 1) for t in range(T)) / T)
    assert stats[1, 1].item() == pytest.approx(0.0, abs=1e-6) and stats[1, 2].item() == pytest.approx(1.0)
    assert stats[:, 0].tolist() == pytest.approx([0.0, big])  # |q.k| / sqrt(1)
    assert stats[:, 3].tolist() == pytest.approx([0.0, big])  # the largest signed logit
    # Gu et al.'s sink share at epsilon 0.3: head 1 (weight 1 on position 0) is a sink, head 0 (mean 0.52
    # over 4 queries, 1/(t+1)) is one too at this length; at T = 64 uniform attention gives 0.074, no sink
    from normbench.probes import SINK_THRESHOLD

    assert SINK_THRESHOLD == 0.3 and (stats[:, 2] > SINK_THRESHOLD).tolist() == [True, True]
    long = attention_stats(torch.zeros(1, 1, 64, 1), torch.zeros(1, 1, 64, 1), None, None)
    assert long[0, 2].item() == pytest.approx(sum(1 / (t + 1) for t in range(64)) / 64) and long[0, 2] < 0.3
    # negative logits count in magnitude only: head 1 with -big has max |logit| big, largest signed logit 0
    neg = attention_stats(q, -k, None, None)
    assert neg[1, 0].item() == pytest.approx(big) and neg[1, 3].item() == pytest.approx(0.0)
    # a padded query does not count: only query 0 is real, and it sees key 0 alone
    one = attention_stats(q, k, torch.ones(T, T, dtype=torch.bool).tril()[None, None] &
                          torch.tensor([True, False, False, False])[None, None, None, :],
                          torch.tensor([[True, False, False, False]]))
    assert one[:, 1].tolist() == pytest.approx([0.0, 0.0]) and one[:, 2].tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("norm, flat", [(DyT, TANH_FLAT), (Derf, ERF_FLAT)])
def test_saturation_share_by_hand(norm, flat):
    m = norm(4).train()
    with torch.no_grad():
        m.alpha.fill_(1.0)
        if hasattr(m, "shift"):
            m.shift.fill_(0.0)
    x = torch.tensor([[[0.0, flat - 0.01, flat + 0.01, -3.0], [0.5, -0.5, 10.0, 0.0]]])  # 3 of 8 flat
    m.measure_sat = True
    m(x)
    assert m.sat.item() == pytest.approx(3 / 8)
    m(x, torch.tensor([[True, False]]))  # the padded token's elements do not count: 2 of 4
    assert m.sat.item() == pytest.approx(2 / 4)
    # the flat region's definition: the slope there is a tenth of the slope at 0
    slope = (1 - math.tanh(flat) ** 2) if norm is DyT else math.exp(-flat ** 2)
    assert slope == pytest.approx(0.1)


def test_a_run_reports_every_diagnostic(tmp_path):
    s = train(from_dict(tiny(model={"norm": "dyt"}, train={"measure_every": 3})), tmp_path, threads=1)
    layers, heads = 2, 2
    assert len(s["act_kurtosis_by_layer"]) == layers and s["max_act_kurtosis"] >= 1.0
    assert s["massive_act_ratio"] >= 1.0 and len(s["massive_act_by_layer"]) == layers
    assert 0 < s["min_attn_entropy"] <= math.log(16) and len(s["attn_entropy_by_layer"]) == layers
    assert 0.0 <= s["attn_sink_share"] <= 1.0 and s["attn_sink_share"] * layers * heads == round(
        s["attn_sink_share"] * layers * heads)
    assert len(s["token_cos_sim_by_layer_init"]) == layers and s["token_cos_sim_last"] == s["token_cos_sim_by_layer"][-1]
    assert 0.0 <= s["saturation_share"] <= 1.0
    assert len(s["attn_logit_by_head"]) == layers and len(s["attn_logit_by_head"][0]) == heads
    assert max(max(h) for h in s["attn_logit_by_head"]) == pytest.approx(s["max_attn_logit"], rel=1e-5)
    ln = train(from_dict(tiny(train={"steps": 3})), threads=1)
    assert ln["saturation_share"] is None  # no element-wise norm


def test_massive_activations_are_seen_when_planted(tmp_path):
    """A massive activation put into the residual stream by hand (a huge bias on one channel of the
    first block's MLP output) shows in the ratio of that block and after it."""
    from normbench.model import Transformer

    cfg = from_dict(tiny())
    torch.manual_seed(0)
    model = Transformer(cfg.model, 50, 16).train()
    x = torch.randint(0, 50, (4, 16))
    model.measure_attention(True)
    model(x)
    before = model.resid_stats_by_layer()[:, 2].tolist()
    with torch.no_grad():
        model.blocks[0].mlp.fc2.bias[3] = 1e4
    model(x)
    after = model.resid_stats_by_layer()[:, 2].tolist()
    assert all(a > 50 * b for a, b in zip(after, before)), (before, after)
