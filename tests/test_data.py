import pytest
import torch

from normbench.config import DataConfig
import numpy as np

from normbench.data import IGNORE, PAD, make_task, stdlib_text
from normbench.tokenizer import char_ids

CPU = torch.device("cpu")


def test_stdlib_corpus_is_deterministic_and_fingerprinted():
    text, fp = stdlib_text(50_000)
    assert len(text) == 50_000 == fp["chars"]
    stdlib_text.cache_clear()
    text2, fp2 = stdlib_text(50_000)
    assert text2 == text and fp2 == fp
    assert fp["source"] == "python-stdlib" and len(fp["sha256"]) == 16 and fp["files"] >= 1
    assert "def " in text  # it is Python source


def test_char_ids_equal_numpy_unique():
    """The counting tokenizer against np.unique(return_inverse=True), on the corpus and on text
    with characters beyond the BMP (emoji) and a NUL."""
    for text in (stdlib_text(200_000)[0], "h\u00e9llo \U0001f600 w\x00rld \u4e16\u754c \U0010ffff"):
        codes = np.array([ord(ch) for ch in text])
        want_chars, want_ids = np.unique(codes, return_inverse=True)
        chars, ids = char_ids(text)
        assert np.array_equal(chars, want_chars) and np.array_equal(ids, want_ids)
        assert "".join(chr(chars[i]) for i in ids) == text


def test_charlm_batches_are_shifted_windows_of_the_corpus():
    task = make_task(DataConfig(max_chars=20_000, seq_len=16), CPU)
    x, y, mask = task.batch("train", 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and mask is None
    assert torch.equal(x[:, 1:], y[:, :-1])
    decoded = "".join(task.vocab[i] for i in x[0].tolist())
    assert decoded in stdlib_text(20_000)[0]


def test_variable_length_pads_masks_and_ignores_padding():
    task = make_task(DataConfig(max_chars=20_000, seq_len=16, variable_length=True, min_len=3), CPU)
    x, y, mask = task.batch("train", 64, torch.Generator().manual_seed(0))
    lengths = mask.sum(1)
    assert lengths.min() >= 3 and lengths.max() <= 16 and len(set(lengths.tolist())) > 3
    assert (x[~mask] == PAD).all() and (x[mask] != PAD).all()
    assert torch.equal(y != IGNORE, mask)  # a loss on every real position, none on padding


def test_copy_and_reverse_answers():
    for task_name, f in (("copy", lambda s: s), ("reverse", lambda s: s[::-1])):
        for variable in (False, True):
            task = make_task(DataConfig(task=task_name, seq_len=12, variable_length=variable, min_len=2), CPU)
            x, y, mask = task.batch("train", 8, torch.Generator().manual_seed(1))
            for b in range(8):
                row = x[b].tolist()
                L = row.index(task.SEP)
                symbols = row[:L]
                targets = [t for t in y[b].tolist() if t != IGNORE]
                assert targets == f(symbols)  # the loss is on the answer, nothing else
                if mask is not None:
                    assert mask[b].sum().item() == 2 * L + 1 or mask[b].sum().item() == 2 * L
            if not variable:
                assert mask is None


def test_bos_starts_every_window_with_one_fixed_token_that_is_never_a_target():
    """data.bos: <bos> at position 0 of every input, the corpus's next T tokens as targets (the window
    shifted by one), in padded batches too; one more vocabulary entry with no bytes; refused off the
    decoder text tasks."""
    import torch

    from conftest import tiny
    from normbench.config import from_dict
    from normbench.data import make_task
    from normbench.errors import NormbenchError

    plain = make_task(from_dict(tiny()).data, torch.device("cpu"))
    task = make_task(from_dict(tiny(data={"bos": True})).data, torch.device("cpu"))
    assert task.vocab_size == plain.vocab_size + 1 and task.vocab[task.BOS] == "<bos>"
    assert int(task.token_bytes[task.BOS]) == 0
    a = plain.batch("train", 8, torch.Generator().manual_seed(3))
    b = task.batch("train", 8, torch.Generator().manual_seed(3))  # the same windows, shifted by <bos>
    assert (b.x[:, 0] == task.BOS).all() and torch.equal(b.x[:, 1:], a.x[:, :-1]) and torch.equal(b.y, a.x)
    assert not (b.y == task.BOS).any()
    padded = make_task(from_dict(tiny(data={"bos": True, "variable_length": True})).data, torch.device("cpu"))
    p = padded.batch("train", 8, torch.Generator().manual_seed(3))
    assert (p.x[:, 0] == padded.BOS).all() and p.mask[:, 0].all()
    with pytest.raises(NormbenchError) as e:
        from_dict(tiny(data={"task": "mlm", "bos": True}))
    assert e.value.key == "data.bos" or any(err.key == "data.bos" for err in getattr(e.value, "errors", []))
