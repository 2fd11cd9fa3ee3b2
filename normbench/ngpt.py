"""The normalized Transformer, nGPT (Loshchilov et al. 2024, arXiv 2410.01131), as placement ngpt.

Hidden states live on the unit sphere: each block moves h toward its branches' (normalised) outputs,

    h <- Norm(h + alpha_A * (Norm(Attn(h)) - h)),   h <- Norm(h + alpha_M * (Norm(MLP(h)) - h)),

with Norm the L2 normalisation and alpha per-channel "eigen learning rates". Queries and keys are
L2-normalised per head and scaled by a learned s_qk, and the softmax scale is sqrt(d_head) (the dot
of unit vectors is at most 1); the MLP's input to its activation is scaled by s_v * sqrt(d_model);
the logits by a learned s_z. Every learned scale s is stored as s_param with the effective value
s_param * (s_init / s_scale), s_param initialised to s_scale, as in the paper's code: Adam's steps on
s_param are then steps of s_init/s_scale times the learning rate on s. After every optimizer step
the embeddings and every matrix are put back on the unit sphere along d_model (sphere_project, run
by the post-step hook of poststep.py).

Departures, named in docs/interventions.md: normbench's MLP is GELU (the paper's SwiGLU scales its
two inputs by s_u and s_v; here the one input by s_v); positions are learned embeddings (the paper
uses RoPE), normalised like the token embeddings, and h_0 = Norm(tok + pos). The token embedding is
not scaled (model.embed_scale none) and the head is not tied to it (model.tie_embeddings false):
config refuses the others.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .config import ModelConfig
from .norms import Identity

ALPHA_INIT = 0.05  # the eigen learning rates' initial value (the paper's alpha_A, alpha_M = 0.05)


class Scale(nn.Module):
    """A learned per-channel (or scalar, ``width`` None) scale with nGPT's storage: the effective value
    is param * (init / scale), param initialised to ``scale``."""

    def __init__(self, width: int | None, init: float, scale: float):
        super().__init__()
        self.factor = init / scale
        self.param = nn.Parameter(torch.full(() if width is None else (width,), float(scale)))

    def forward(self) -> torch.Tensor:
        return self.param * self.factor


class L2Norm(nn.Module):
    """x / ||x||_2 over the last dimension (norm slots take a padding mask; it has no use for it)."""

    def forward(self, x, mask=None):
        return F.normalize(x, dim=-1)


class ScaledL2(nn.Module):
    """nGPT's query (or key) normalisation: s * x / ||x|| per head, with s one value per channel of the
    d_model-wide projection, seen per head (init 1, scale 1/sqrt(d_model); OLMo-core's sq and sk)."""

    def __init__(self, heads: int, d_model: int):
        super().__init__()
        self.heads = heads
        self.s = Scale(d_model, 1.0, d_model ** -0.5)

    def forward(self, x, mask=None):  # x (B, H, T, d_head)
        return F.normalize(x, dim=-1) * self.s().view(self.heads, 1, -1)


class NGPTMLP(nn.Module):
    """fc2(GELU(s_v * sqrt(d) * fc1(h))), s_v per hidden channel (init 1, scale 1); no biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.s_v = Scale(cfg.d_ff, 1.0, 1.0)
        self.root_d = math.sqrt(cfg.d_model)

    def forward(self, x, mask=None):
        return self.fc2(F.gelu(self.fc1(x) * (self.s_v() * self.root_d)))


class NGPTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0, norm_warmup: int = 0):
        super().__init__()
        dh = cfg.d_model // cfg.heads
        qk = (ScaledL2(cfg.heads, cfg.d_model), ScaledL2(cfg.heads, cfg.d_model), Identity())
        self.attn = Attention(cfg, Identity(), norms=qk, scale=math.sqrt(dh))
        self.mlp = NGPTMLP(cfg)
        self.alpha_attn = Scale(cfg.d_model, ALPHA_INIT, cfg.d_model ** -0.5)
        self.alpha_mlp = Scale(cfg.d_model, ALPHA_INIT, cfg.d_model ** -0.5)
        self.profile = None  # Admin's profiling does not apply to nGPT

    def forward(self, x, mask, attn_mask):
        x = step_on_sphere(x, self.attn(x, attn_mask, mask), self.alpha_attn())
        return step_on_sphere(x, self.mlp(x), self.alpha_mlp())


def step_on_sphere(h: torch.Tensor, f: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Norm(h + |alpha| * (Norm(f) - h)): a step from h toward the branch's output on the unit sphere
    (|alpha|, as OLMo-core's and NVIDIA's code: a step size, never a step away)."""
    return F.normalize(h + alpha.abs() * (F.normalize(f, dim=-1) - h), dim=-1)


@torch.no_grad()
def sphere_project(model) -> None:
    """Put the embeddings and every matrix back on the unit sphere along d_model: the embedding and
    head rows, the rows of W_q, W_k, W_v and fc1 (their inputs are d_model wide), the columns of the
    output projection and fc2 (their outputs are)."""
    mats = [(model.tok.weight, 1), (model.pos.weight, 1)]
    if model.head.weight is not model.tok.weight:
        mats.append((model.head.weight, 1))
    for b in model.blocks:
        mats += [(b.attn.qkv.weight, 1), (b.attn.proj.weight, 0), (b.mlp.fc1.weight, 1), (b.mlp.fc2.weight, 0)]
    for w, dim in mats:
        w.copy_(F.normalize(w, dim=dim))
