"""Weight initialisations (model.init): one function per scheme over a block's linear layers, then
the placements' own scales (DeepNet's beta, Magneto's sqrt(ln 2N)), and Admin's profiling pass.

The conventions and their sources are in docs/conventions.md and docs/interventions.md. Each
function sees q, k and v as three d x d projections (views of the fused qkv weight).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def torch_default(lins, q, k, v, layer, cfg):
    for lin in lins:
        lin.reset_parameters()  # uniform, std 1/sqrt(3 fan_in); qkv's fan_in is d as for q, k, v


def xavier(lins, q, k, v, layer, cfg):
    a, m = lins[1], lins[2:]
    for w in (q, k, v, a.weight, m[0].weight, m[1].weight):
        nn.init.xavier_normal_(w)


def gpt2(lins, q, k, v, layer, cfg):  # residual projections scaled by 1/sqrt(2N)
    proj, fc1, fc2 = lins[1], lins[2], lins[3]
    for w in (q, k, v, fc1.weight):
        nn.init.normal_(w, std=0.02)
    for w in (proj.weight, fc2.weight):
        nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.layers))


def depth_scaled(lins, q, k, v, layer, cfg):
    """torchtitan's depth init: N(0, 0.02), the residual projections of block l (0-based) N(0, 0.02/sqrt(2(l+1)))."""
    proj, fc1, fc2 = lins[1], lins[2], lins[3]
    for w in (q, k, v, fc1.weight):
        nn.init.normal_(w, std=0.02)
    for w in (proj.weight, fc2.weight):
        nn.init.normal_(w, std=0.02 / math.sqrt(2 * (layer + 1)))


def tfixup(lins, q, k, v, layer, cfg):
    """T-Fixup's decoder (Huang et al. 2020): Xavier, then v, the output projection and the MLP's weights
    times (9N)^(-1/4) (the embeddings are scaled in ``init_weights``)."""
    xavier(lins, q, k, v, layer, cfg)
    proj, fc1, fc2 = lins[1], lins[2], lins[3]
    for w in (v, proj.weight, fc1.weight, fc2.weight):
        w.mul_(tfixup_scale(cfg.layers))


def tfixup_scale(layers: int) -> float:
    return (9 * layers) ** -0.25


INITS = {"torch": torch_default, "xavier": xavier, "gpt2": gpt2, "depth_scaled": depth_scaled,
         "tfixup": tfixup, "admin": xavier}  # Admin's paper keeps fairseq's Xavier init; omega comes after


def init_weights(model, beta: float) -> None:
    """Embeddings N(0, embed_std), the linear weights by ``cfg.init``, an untied head N(0, head_std), then
    ``beta`` (DeepNet's or Magneto's) on the FFN, value and output projections."""
    cfg, d = model.cfg, model.cfg.d_model
    embed_std = cfg.embed_std or (0.02 if cfg.embed_scale == "none" and cfg.init != "tfixup" else d ** -0.5)
    for emb in (model.tok, model.pos):
        nn.init.normal_(emb.weight, std=embed_std)
    nn.init.normal_(model.head.weight, std=cfg.head_std or d ** -0.5)
    with torch.no_grad():
        if cfg.init == "tfixup":
            for emb in (model.tok, model.pos):
                emb.weight.mul_(tfixup_scale(cfg.layers))
        for layer, block in enumerate(model.blocks):
            a, m = block.attn, block.mlp
            lins = (a.qkv, a.proj, m.fc1, m.fc2)
            if cfg.init != "torch":
                for lin in lins:
                    if lin.bias is not None:
                        nn.init.zeros_(lin.bias)
            q, k, v = a.qkv.weight.view(3, d, d).unbind(0)  # init as three d x d projections
            INITS[cfg.init](lins, q, k, v, layer, cfg)
            for w in (v, a.proj.weight, m.fc1.weight, m.fc2.weight):
                w.mul_(beta)


class AdminProfile:
    """Admin's profiling (Liu et al. 2020, as Transformer-Clinic's code): sublayer by sublayer, in one
    forward, omega_1 = 1 and omega_{i+1} = sqrt(Var(x_i * omega_i) + Var F_i(x_i)), x_i the residual
    entering sublayer i (the embedding's output for the first) and the variances over every real
    element. Each skip's omega is set before its add, so later sublayers see the earlier omegas."""

    def __init__(self):
        self.omega, self.omegas = 1.0, []

    def visit(self, skip, x, h, mask) -> None:
        real = (lambda t: (t if mask is None else t[mask]).float())
        skip.omega.fill_(self.omega)
        self.omegas.append(self.omega)
        self.omega = math.sqrt(real(x * skip.omega).var().item() + real(h).var().item())


@torch.no_grad()
def profile_admin(model, idx: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
    """One profiling forward (training mode, as the reference) that sets every omega; returns them, attention's
    and the MLP's of each block in order."""
    was = model.training
    profile = AdminProfile()
    model.train()
    for b in model.blocks:
        b.profile = profile
    try:
        model(idx, mask)
    finally:
        for b in model.blocks:
            b.profile = None
        model.train(was)
    return profile.omegas
