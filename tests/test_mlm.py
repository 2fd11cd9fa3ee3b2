"""The encoder task (issue 26): BERT's masking by hand, a validation selection fixed for every run,
bidirectional attention (its probe included), every norm and placement training as an encoder,
and the keys refused where they do not apply. The loss against an independent minimal encoder:
tests/test_reference_model.py."""
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny
from normbench.catalog import NEEDS_A_NORM, PLACEMENTS
from normbench.config import from_dict
from normbench.data import IGNORE, PAD, make_task
from normbench.evalset import validation_set
from normbench.attention import attention_stats
from normbench.model import Transformer
from normbench.norms import NORMS
from normbench.trainer import lm_loss


def task(**data):
    return make_task(from_dict(tiny(data={"task": "mlm", **data})).data, torch.device("cpu"))


def test_bert_masking_by_hand():
    t = task(seq_len=64, variable_length=True, min_len=8)
    assert t.vocab[-1] == "<mask>" and t.MASK == t.vocab_size - 1 and not t.causal
    x, y, mask = t.batch("train", 256, torch.Generator().manual_seed(3))
    sel = y != IGNORE
    assert not (sel & ~mask).any()  # padding is never selected
    assert (x[~mask] == PAD).all() and (y[~sel] == IGNORE).all()
    real = int(mask.sum())
    assert int(sel.sum()) / real == pytest.approx(0.15, abs=0.01)  # ~12,000 real tokens: sd 0.003
    masked = (x == t.MASK) & sel
    kept = (x == y) & sel
    changed = sel & ~masked & ~kept
    n = int(sel.sum())
    assert int(masked.sum()) / n == pytest.approx(0.8, abs=0.03)
    # 10% kept, plus the random replacements that drew the same character (1 in ~160)
    assert int(kept.sum()) / n == pytest.approx(0.1 + 0.1 / t.n_chars, abs=0.02)
    assert int(changed.sum()) / n == pytest.approx(0.1 - 0.1 / t.n_chars, abs=0.02)
    assert ((x[changed] >= 1) & (x[changed] <= t.n_chars)).all()  # a random character, never pad or mask
    assert not (x == t.MASK)[~sel].any()  # unselected tokens are the text itself
    assert (y[sel] != t.MASK).all()


def test_the_mask_rate_and_the_seed_decide_the_selection():
    t = task(seq_len=32, mask_rate=0.5)
    x, y, _ = t.batch("train", 128, torch.Generator().manual_seed(0))
    assert float((y != IGNORE).float().mean()) == pytest.approx(0.5, abs=0.02)
    a = t.batch("train", 4, torch.Generator().manual_seed(7))
    b = t.batch("train", 4, torch.Generator().manual_seed(7))
    c = t.batch("train", 4, torch.Generator().manual_seed(8))
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)


def test_the_validation_selection_is_the_same_for_every_run():
    """Drawn from the fixed EVAL_SEED: the same masked positions whatever the run's seed or batch size."""
    one, two = validation_set(task(), 512), validation_set(task(), 512)
    assert all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(one.chunks, two.chunks))
    assert one.tokens >= 512 and one.tokens == int(sum((c.y != IGNORE).sum() for c in one.chunks))


def test_the_encoder_sees_the_future_and_its_probe_counts_it():
    """A key after the query with the largest q.k: an encoder's largest logit includes it, a
    decoder's does not (the probe follows the attention's own mask)."""
    q = torch.zeros(1, 1, 3, 1)
    k = torch.zeros(1, 1, 3, 1)
    q[0, 0, 0, 0], k[0, 0, 2, 0] = 10.0, 3.0  # query 0 and key 2: 30, a future key
    assert attention_stats(q, k, None, None, causal=False)[0, 0].item() == pytest.approx(30.0)
    assert attention_stats(q, k, None, None, causal=True)[0, 0].item() == pytest.approx(0.0)
    # and the model: changing the last token changes the first position's output in an encoder only
    cfg = from_dict(tiny()).model
    for bidirectional, moves in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = Transformer(cfg, 20, 8, bidirectional=bidirectional).eval()
        idx = torch.randint(1, 20, (1, 8))
        other = idx.clone()
        other[0, -1] = (idx[0, -1] % 19) + 1
        with torch.no_grad():
            diff = (model(idx)[0, 0] - model(other)[0, 0]).abs().max().item()
        assert (diff > 1e-6) == moves


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_every_norm_and_placement_trains_as_an_encoder(placement):
    """Three AdamW steps on padded MLM batches, for every norm that the placement takes."""
    t = task(seq_len=16, variable_length=True, min_len=4)
    for norm in NORMS:
        if (placement in NEEDS_A_NORM and norm == "none") or (placement == "ngpt") != (norm == "none"):
            continue
        torch.manual_seed(0)
        ngpt = {"bias": False, "embed_scale": "none", "tie_embeddings": False} if placement == "ngpt" else {}
        cfg = from_dict(tiny(model={"norm": norm, "placement": placement, "d_model": 16, "heads": 2,
                                    "d_ff": 32, **ngpt}, train={"weight_decay": 0.0})).model
        model = Transformer(cfg, t.vocab_size, 16, bidirectional=True).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            x, y, mask = t.batch("train", 6, gen)
            loss, objective = lm_loss(model(x, mask), y)
            opt.zero_grad()
            objective.backward()
            opt.step()
            assert torch.isfinite(loss), (norm, placement)


def test_mlm_keys_are_refused_where_they_do_not_apply(tmp_path):
    from normbench.cli import app

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "m", "base": tiny(data={"mask_rate": 0.3})}))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 2 and "data.mask_rate: data.mask_rate is only used by data.task=mlm" in res.output
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    p.write_text(yaml.safe_dump({"name": "m", "base": tiny(data={"task": "mlm", "path": str(text)})}))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 0, res.output  # your own text, as an encoder's corpus


def test_run_ids_of_earlier_tasks_are_unchanged():
    """data.mask_rate enters the id only when set: every decoder run keeps its id."""
    assert from_dict(tiny()).run_id() == from_dict(tiny(data={"mask_rate": 0.15})).run_id()
    assert from_dict(tiny(data={"task": "mlm"})).run_id() != from_dict(tiny(data={"task": "mlm", "mask_rate": 0.3})).run_id()


def test_every_sequence_has_a_target():
    """A batch with no selected token would have no loss (NaN): each sequence gets at least one, its
    smallest draw, even at a tiny rate and with padding."""
    t = task(seq_len=8, mask_rate=0.01, variable_length=True, min_len=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        x, y, mask = t.batch("train", 4, gen)
        assert ((y != IGNORE).sum(1) >= 1).all()
        assert not ((y != IGNORE) & ~mask).any()
