"""What a block does at its residual add, x' = skip(x) + gate(h) for a branch output h: the gate on
the branch (ReZero, LayerScale) and the skip's scale (DeepNorm's constant alpha, Admin's omega).
Identities unless a recipe asks: the default block computes x + h, bit for bit."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class Keep(nn.Module):
    """x unchanged (no gate, or a skip of scale 1)."""

    def forward(self, x):
        return x


class ReZero(nn.Module):
    """alpha * h with one scalar alpha initialised to 0 (Bachlechner et al. 2020): every block starts as
    the identity."""

    def __init__(self, d: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, h):
        return self.alpha * h


class LayerScale(nn.Module):
    """alpha * h with a per-channel alpha initialised to a small value (Touvron et al. 2021, CaiT)."""

    def __init__(self, d: int, init: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((d,), float(init)))

    def forward(self, h):
        return self.alpha * h


class ConstantSkip(nn.Module):
    """alpha * x with a constant alpha (DeepNorm's (2N)^(1/4))."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return self.alpha * x


class AdminSkip(nn.Module):
    """x * omega with a learned per-channel omega (Liu et al. 2020), 1 until inits.profile_admin sets it
    from a profiling forward."""

    def __init__(self, d: int):
        super().__init__()
        self.omega = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.omega


def make_gate(cfg: ModelConfig) -> nn.Module:
    if cfg.residual_gate == "rezero":
        return ReZero(cfg.d_model)
    if cfg.residual_gate == "layerscale":
        return LayerScale(cfg.d_model, cfg.layerscale_init)
    return Keep()


def make_skip(cfg: ModelConfig, alpha: float) -> nn.Module:
    if cfg.init == "admin":
        return AdminSkip(cfg.d_model)
    return Keep() if alpha == 1.0 else ConstantSkip(alpha)
