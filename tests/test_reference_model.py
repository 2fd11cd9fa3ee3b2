"""normbench's model, optimizer and training loop against an independent minimal implementation.

The reference below is written from the formulas (LITERATURE.md), not from normbench's code:
LayerNorm by its mean and variance, attention as an explicit masked softmax, GELU by erf,
cross-entropy by log-softmax, and torch's plain (non-fused) AdamW over the same two parameter
groups. Weights are copied in from normbench's initialised model and it sees the same batches,
so the per-step training losses must agree to float tolerance. It guards every later change to
the model, the init conventions or the loop.
"""
import json
import math

import pytest
import torch

from normbench.config import from_dict
from normbench.data import IGNORE, make_task
from normbench.model import Transformer
from normbench.trainer import train

STEPS = 24


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


class MinimalGPT(torch.nn.Module):
    """Token + learned position embeddings (token part times ``scale``), blocks of causal
    multi-head attention and a GELU MLP with LayerNorm before (pre) or after the add (post),
    a final LayerNorm for pre, a head tied to the token table."""

    def __init__(self, params: dict[str, torch.Tensor], layers: int, heads: int, placement: str, scale: float,
                 causal: bool = True):
        super().__init__()
        self.causal = causal  # False: an encoder, every real key visible from every query
        self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(v.detach().clone())
                                         for k, v in params.items()})
        self.layers, self.heads, self.placement, self.scale = layers, heads, placement, scale

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def attention(self, x, i, mask=None):
        B, T, d = x.shape
        h = self.heads
        qkv = x @ self.w(f"blocks.{i}.attn.qkv.weight").T + self.w(f"blocks.{i}.attn.qkv.bias")
        q, k, v = (t.reshape(B, T, h, d // h).transpose(1, 2) for t in qkv.split(d, dim=-1))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        hidden = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1) if self.causal else \
            torch.zeros(T, T, dtype=torch.bool)
        if mask is not None:  # padded keys are never attended to
            hidden = hidden | ~mask[:, None, None, :]
        att = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        return y @ self.w(f"blocks.{i}.attn.proj.weight").T + self.w(f"blocks.{i}.attn.proj.bias")

    def mlp(self, x, i):
        a = x @ self.w(f"blocks.{i}.mlp.fc1.weight").T + self.w(f"blocks.{i}.mlp.fc1.bias")
        a = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
        return a @ self.w(f"blocks.{i}.mlp.fc2.weight").T + self.w(f"blocks.{i}.mlp.fc2.bias")

    def forward(self, idx, mask=None):
        T = idx.shape[1]
        x = self.scale * self.w("tok.weight")[idx] + self.w("pos.weight")[:T]
        for i in range(self.layers):
            attention = (lambda h, j: self.attention(h, j, mask))
            for f, norms in ((attention, "attn_norms"), (self.mlp, "mlp_norms")):
                if self.placement == "pre":
                    n = f"blocks.{i}.{norms}.0"
                    x = x + f(layer_norm(x, self.w(f"{n}.weight"), self.w(f"{n}.bias")), i)
                else:
                    n = f"blocks.{i}.{norms}.2"
                    x = layer_norm(x + f(x, i), self.w(f"{n}.weight"), self.w(f"{n}.bias"))
        if self.placement == "pre":
            x = layer_norm(x, self.w("final_norm.weight"), self.w("final_norm.bias"))
        return x @ self.w("tok.weight").T



def reference_losses(ref, task, seed: int, batch_size: int) -> list[float]:
    """The reference's per-step training losses: the same batches as train() (the run's seed), its
    loss by log-softmax over the targets that count, torch's plain AdamW over the same two groups."""
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    rest = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), foreach=False, fused=False)
    gen = task.generator(seed)
    losses = []
    for _ in range(STEPS):
        x, y, mask = task.batch("train", batch_size, gen)
        logp = torch.log_softmax(ref(x, mask), dim=-1)
        keep = y != IGNORE
        loss = -logp[keep].gather(-1, y[keep][:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("placement,embed_scale", [("pre", "sqrt_d"), ("post", "sqrt_d"), ("post", "none")])
def test_normbench_trains_exactly_like_an_independent_minimal_gpt(placement, embed_scale, tmp_path):
    raw = {"model": {"layers": 2, "d_model": 32, "heads": 2, "d_ff": 64, "norm": "layernorm",
                     "placement": placement, "embed_scale": embed_scale, "init": "xavier"},
           "data": {"seq_len": 16, "max_chars": 20000},
           "train": {"steps": STEPS, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "schedule": "constant",
                     "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eval_every": STEPS, "eval_tokens": 64},
           "device": "cpu"}
    cfg = from_dict(raw)
    s = train(cfg, tmp_path, threads=1)
    ours = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(l)]
    assert len(ours) == STEPS and not s["diverged"]

    # the same initial weights (train() seeds, builds the task, then the model) and the same batches
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.data, torch.device("cpu"))
    nb = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len)
    params = {k: v for k, v in nb.state_dict().items() if k != "head.weight"}  # tied to tok.weight
    scale = math.sqrt(32) if embed_scale == "sqrt_d" else 1.0
    ref = MinimalGPT(params, 2, 2, placement, scale)
    theirs = reference_losses(ref, task, cfg.seed, batch_size=4)
    assert theirs[0] == pytest.approx(ours[0], abs=1e-5)  # the same function at init
    assert theirs == pytest.approx(ours, abs=2e-4)  # and the same training, step by step
    assert theirs[-1] < theirs[0] - 0.5  # it learned: the comparison is not between two flat lines


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_the_encoder_trains_exactly_like_an_independent_minimal_encoder(placement, tmp_path):
    """Task mlm: the same check with bidirectional attention, padded batches (padded keys hidden from
    every query) and the loss on the selected positions only."""
    raw = {"model": {"layers": 2, "d_model": 32, "heads": 2, "d_ff": 64, "norm": "layernorm",
                     "placement": placement, "init": "xavier"},
           "data": {"task": "mlm", "seq_len": 16, "max_chars": 20000, "variable_length": True, "min_len": 6},
           "train": {"steps": STEPS, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "schedule": "constant",
                     "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eval_every": STEPS, "eval_tokens": 64},
           "device": "cpu"}
    cfg = from_dict(raw)
    s = train(cfg, tmp_path, threads=1)
    ours = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(l)]
    assert len(ours) == STEPS and not s["diverged"] and s["train_causal_leak"] is None

    torch.manual_seed(cfg.seed)
    task = make_task(cfg.data, torch.device("cpu"))
    nb = Transformer(cfg.model, task.vocab_size, cfg.data.seq_len, bidirectional=True)
    params = {k: v for k, v in nb.state_dict().items() if k != "head.weight"}
    ref = MinimalGPT(params, 2, 2, placement, math.sqrt(32), causal=False)
    theirs = reference_losses(ref, task, cfg.seed, batch_size=8)
    assert theirs[0] == pytest.approx(ours[0], abs=1e-5)
    assert theirs == pytest.approx(ours, abs=2e-4)
    assert theirs[-1] < theirs[0] - 0.5
