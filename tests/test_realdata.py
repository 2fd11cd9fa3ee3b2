"""Real data (issue 24): token files (nanoGPT's and modded-nanogpt's), char/byte/BPE tokenizers,
bits per byte by hand, the built-in prose, and bad files refused in one line."""
import math
import pickle
import sys

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny
from normbench.config import from_dict
from normbench.data import make_task, prose_text
from normbench.tokenfile import HEADER_INTS, SHARD_MAGIC
from normbench.trainer import train

runner = CliRunner()


def nanogpt_folder(tmp_path, vocab=100, n=5000, meta=True, dtype=np.uint16):
    rng = np.random.default_rng(0)
    folder = tmp_path / "tok"
    folder.mkdir()
    for split in ("train", "val"):
        rng.integers(0, vocab, n).astype(dtype).tofile(folder / f"{split}.bin")
    if meta:
        (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": vocab, "itos": {0: "a"}}))
    return folder


def shard(path, tokens, magic=SHARD_MAGIC, count=None):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = magic, 1, len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def tokens_cfg(folder, **data):
    return from_dict(tiny(data={"task": "tokens", "path": str(folder), **data}))


def test_a_nanogpt_bin_written_by_numpy_trains(tmp_path):
    folder = nanogpt_folder(tmp_path)
    cfg = tokens_cfg(folder)
    task = make_task(cfg.data, torch.device("cpu"))
    assert task.vocab_size == 101  # the file's 100 ids, plus padding at 0
    x, y, mask = task.batch("train", 4, task.generator(0))
    assert mask is None and torch.equal(x[:, 1:], y[:, :-1])
    raw = np.fromfile(folder / "train.bin", dtype=np.uint16).astype(np.int64) + 1
    row = x[0].numpy()  # every window is a slice of the file, shifted by one id
    starts = [i for i in range(len(raw) - 16) if (raw[i:i + 16] == row).all()]
    assert starts
    s = train(cfg, threads=1)
    assert s["steps_done"] > 0 and s["final_val_bpb"] is None and s["eval_bytes"] is None  # token files: no bytes
    assert s["corpus"]["source"] == "tokens" and s["corpus"]["tokens"] == {"train": 5000, "val": 5000}


def test_modded_nanogpt_shards_train_and_their_digest_is_the_run_id(tmp_path):
    folder = tmp_path / "fineweb"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_val_000000.bin"):
        shard(folder / name, rng.integers(0, 300, 3000))
    cfg = tokens_cfg(folder, vocab_size=300)
    assert not train(cfg, threads=1)["diverged"]
    before = cfg.run_id()
    data = bytearray((folder / "fineweb_val_000000.bin").read_bytes())
    data[HEADER_INTS * 4] ^= 1  # a token in the first sampled block
    (folder / "fineweb_val_000000.bin").write_bytes(bytes(data))
    assert tokens_cfg(folder, vocab_size=300).run_id() != before


@pytest.mark.parametrize("case, text", [
    ("magic", "not a token shard: magic 1234"),
    ("truncated", "truncated shard header"),
    ("count", "the header declares 999"),
    ("beyond", "token id 500 is beyond the vocabulary (300"),
    ("missing", "no val split"),
])
def test_bad_token_files_are_one_line_and_exit_2(tmp_path, case, text):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = np.arange(1, 200) % 300
    shard(folder / "x_train_0.bin", good)
    if case == "magic":
        shard(folder / "x_val_0.bin", good, magic=1234)
    elif case == "truncated":
        (folder / "x_val_0.bin").write_bytes(b"\x00" * 100)
    elif case == "count":
        shard(folder / "x_val_0.bin", good, count=999)
    elif case == "beyond":
        shard(folder / "x_val_0.bin", [500] * 199)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "base": tiny(data={"task": "tokens", "path": str(folder),
                                                                 "vocab_size": 300})}))
    from normbench.cli import app

    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 2 and text in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_meta_pkl_is_read_without_running_code(tmp_path):
    folder = nanogpt_folder(tmp_path, meta=False)
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 100, "f": math.sqrt}))
    with pytest.raises(Exception) as e:
        tokens_cfg(folder)
    assert "only plain dicts" in str(e.value)


def test_bits_per_byte_by_hand(tmp_path):
    """bpb = loss (nats/token) x tokens / (bytes x ln 2): the bytes are those of the validation targets."""
    from normbench.evalset import validation_set

    text = "The quick brown fox jumps over the lazy dög; ünïcode çharacters. " * 300  # 2-byte ones among 1-byte
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    for tokenizer in ("char", "byte"):
        cfg = from_dict(tiny(data={"task": "text", "path": str(f), "tokenizer": tokenizer},
                             train={"steps": 40, "lr": 3e-3, "eval_every": 20}))
        task = make_task(cfg.data, torch.device("cpu"))
        ev = validation_set(task, cfg.train.eval_tokens)
        targets = torch.cat([c.y[c.y != -100] for c in ev.chunks])
        if tokenizer == "char":
            by_hand = sum(len(task.vocab[int(t)].encode("utf-8")) for t in targets)
        else:
            by_hand = len(targets)
        assert ev.bytes == by_hand
        s = train(cfg, threads=1)
        assert not s["diverged"] and s["eval_bytes"] == by_hand
        assert s["final_val_bpb"] == pytest.approx(s["final_val_loss"] * s["eval_tokens"] / (by_hand * math.log(2)))
        assert s["best_val_bpb"] == pytest.approx(s["best_val_loss"] * s["eval_tokens"] / (by_hand * math.log(2)))
    assert by_hand == s["eval_tokens"]  # bytes: one byte per token


@pytest.mark.parametrize("chars", [60_000, 1_500_000])  # validation split shorter, longer than eval_tokens
def test_one_byte_per_token_on_ascii_gives_bits_per_byte_of_loss_over_ln2(tmp_path, chars):
    """Character and byte tokens on plain ASCII: one byte per target, so bpb = loss / ln 2 exactly,
    whether the validation windows overlap (a split shorter than train.eval_tokens) or not."""
    import random

    rng = random.Random(0)
    words = "the of and to in is was that for it with as his on be at by had not are but from".split()
    text = " ".join(rng.choice(words) for _ in range(chars // 3))[:chars]
    assert text.isascii()
    f = tmp_path / "words.txt"
    f.write_text(text)
    for tokenizer in ("char", "byte"):
        cfg = from_dict({"model": {"layers": 1, "d_model": 32, "heads": 2, "d_ff": 64},
                         "train": {"steps": 6, "batch_size": 4, "warmup_steps": 0, "eval_every": 6, "lr": 3e-3},
                         "data": {"task": "text", "seq_len": 32, "tokenizer": tokenizer, "path": str(f)},
                         "device": "cpu"})
        s = train(cfg, threads=1)
        assert s["eval_bytes"] == s["eval_tokens"] == 65536
        assert s["best_val_bpb"] == pytest.approx(s["best_val_loss"] / math.log(2), abs=1e-6)
        if s["final_val_loss"] is not None:
            assert s["final_val_bpb"] == pytest.approx(s["final_val_loss"] / math.log(2), abs=1e-6)


def test_bpe_trains_once_per_corpus_and_is_reused(tmp_path):
    pytest.importorskip("tokenizers")
    cfg = from_dict(tiny(data={"task": "prose", "tokenizer": "bpe", "vocab_size": 400}))
    cache = tmp_path / ".cache" / "bpe"
    task = make_task(cfg.data, torch.device("cpu"), cache)
    files = list(cache.glob("bpe-400-*.json"))
    assert len(files) == 1 and task.vocab_size == 401
    mtime = files[0].stat().st_mtime_ns
    again = make_task(cfg.data, torch.device("cpu"), cache)  # a second run: read, not trained
    assert files[0].stat().st_mtime_ns == mtime and list(cache.glob("bpe-400-*.json")) == files
    assert torch.equal(again.splits["val"], task.splits["val"])
    # the tokens' bytes add up to the text: the validation split's byte table covers its text exactly
    text, _ = prose_text(cfg.data.max_chars)
    n_train = len(text) - int(len(text) * cfg.data.val_fraction)
    assert int(task.token_bytes[task.splits["val"]].sum()) == len(text[n_train:].encode("utf-8"))
    # a sweep trains it beside its runs: RESULTS/.cache/bpe
    from normbench.sweep import store

    run_dir = tmp_path / "res" / "r" / "run"
    cfg = from_dict(tiny(data={"task": "prose", "tokenizer": "bpe", "vocab_size": 400}))
    store.prepare(run_dir, {"name": "r", "base": cfg.to_dict()})  # a sweep's run folder holds its config
    s = train(cfg, run_dir, threads=1)
    assert s["corpus"]["tokenizer"] == "bpe" and list((tmp_path / "res" / ".cache" / "bpe").glob("*.json"))
    assert s["final_val_bpb"] < s["final_val_loss"] / math.log(2)  # more than one byte per BPE token


def test_the_prose_corpus_is_natural_english_and_stable():
    text, fp = prose_text(4_000_000)
    again, fp2 = prose_text.__wrapped__(4_000_000)
    assert fp == fp2 and text == again
    assert fp["source"] == "python-pydoc-topics" and 400_000 < fp["chars"] < 600_000
    assert text.count(" the ") > 1000  # prose, not code
    if sys.version_info[:3] == (3, 11, 7):  # the corpus is the running Python's: pinned for CI's
        assert fp["sha256"] == "71f2ff5d99bdc1f9" and fp["chars"] == 465126


def test_tokenizer_keys_are_refused_where_they_do_not_apply(tmp_path):
    from normbench.cli import app

    p = tmp_path / "r.yaml"
    for data, text in (({"task": "copy", "tokenizer": "byte"}, "data.tokenizer: data.tokenizer applies to the text"),
                       ({"vocab_size": 500}, "data.vocab_size: data.vocab_size is used by"),
                       ({"tokenizer": "bpe", "vocab_size": 100}, "expected at least 300")):
        p.write_text(yaml.safe_dump({"name": "t", "base": tiny(data=data)}))
        res = runner.invoke(app, ["validate", str(p)])
        assert res.exit_code == 2 and text in res.output, res.output


def test_earlier_run_ids_are_unchanged():
    """The new keys enter the id only when set."""
    assert from_dict(tiny()).run_id() == from_dict(tiny(data={"tokenizer": "char"})).run_id()
    assert from_dict(tiny()).run_id() != from_dict(tiny(data={"tokenizer": "byte"})).run_id()


def _build_bpe(cache: str) -> list:
    from normbench import tokenizer
    from normbench.data import prose_text

    text, _ = prose_text(200_000)
    tokenizer.bpe_file(text[:150_000], 350, __import__("pathlib").Path(cache))
    return tokenizer.trained


def test_concurrent_runs_train_the_bpe_once(tmp_path):
    """Two processes asking for the same BPE at once: one trains it, the other waits on the lock
    and reads it (a sweep's runs start together)."""
    pytest.importorskip("tokenizers")
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_build_bpe, [str(tmp_path)] * 2))
    assert sorted(len(d) for d in done) == [0, 1]  # exactly one of them trained
    assert len(list(tmp_path.glob("bpe-350-*.json"))) == 1 and not list(tmp_path.glob("*.tmp"))


def test_a_split_pattern_names_one_file_or_a_glob_per_split(tmp_path):
    """data.path with {split}: a glob of shards per split, or one raw file per split."""
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in ("web_train_01.bin", "web_train_02.bin", "web_val_01.bin"):
        shard(folder / name, rng.integers(0, 300, 2000))
    cfg = tokens_cfg(str(folder / "web_{split}_*.bin"), vocab_size=300)
    task = make_task(cfg.data, torch.device("cpu"))
    assert [len(a) for a in task.arrays["train"]] == [2000, 2000] and len(task.arrays["val"]) == 1
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "val"):
        rng.integers(0, 50, 3000).astype(np.uint16).tofile(raw / f"{split}.tokens")
    cfg = tokens_cfg(str(raw / "{split}.tokens"), vocab_size=50)
    s = train(cfg, threads=1)  # random ids: it trains (whether it learns anything is not the point)
    assert s["steps_done"] > 0 and s["corpus"]["tokens"] == {"train": 3000, "val": 3000}
    p = tmp_path / "r.yaml"  # from the command line too, relative to the current folder
    p.write_text(yaml.safe_dump({"name": "t", "base": tiny(data={"task": "tokens", "vocab_size": 50})}))
    from normbench.cli import app

    res = runner.invoke(app, ["validate", str(p), "--set", f"data.path={raw / '{split}.tokens'}"])
    assert res.exit_code == 0, res.output


def test_mlm_masks_the_prose_too():
    cfg = from_dict(tiny(data={"task": "mlm", "corpus": "prose"}))
    task = make_task(cfg.data, torch.device("cpu"))
    assert task.fingerprint["source"] == "python-pydoc-topics" and task.vocab[-1] == "<mask>"
    with pytest.raises(Exception) as e:
        from_dict(tiny(data={"corpus": "prose"}))
    assert "data.corpus" in str(e.value)


def test_ranking_token_runs_by_bits_per_byte_says_why_nothing_is_ranked(tmp_path):
    import normbench

    folder = nanogpt_folder(tmp_path)
    recipe = {"name": "tok", "base": tiny(data={"task": "tokens", "path": str(folder)}, train={"steps": 4})}
    normbench.run_recipe(recipe, out=tmp_path / "res", jobs=1)
    c = normbench.compare_results([tmp_path / "res"], metric="final_val_bpb")
    assert c.best is None and any("bits per byte need text" in n for n in c.notes)
