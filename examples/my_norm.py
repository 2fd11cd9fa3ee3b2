"""A norm of your own: a plugin file for normbench (docs/plugins.md).

    normbench run examples/my_norm_vs_ln.yaml --plugin examples/my_norm.py
    normbench compare results/my_norm_vs_ln

This one generalises RMSNorm from the quadratic mean to a power mean: x / (mean |x|^p)^(1/p)
with a per-channel gain, p = 4 here (p = 2 is RMSNorm). A plugin registers each norm with
``normbench.register_norm(name, factory)``; ``factory(d_model)`` returns an ``nn.Module``
whose ``forward`` takes ``x`` (B, T, d), or ``x`` and the padding mask (B, T).
"""
import torch
from torch import nn

import normbench


class PowerMeanNorm(nn.Module):
    def __init__(self, d: int, p: float = 4.0, eps: float = 1e-5):
        super().__init__()
        self.p, self.eps = p, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        scale = x.abs().pow(self.p).mean(-1, keepdim=True).add(self.eps).pow(-1 / self.p)
        return x * scale * self.weight


normbench.register_norm("pmean4", PowerMeanNorm, "power-mean norm, p = 4: x / (mean |x|^4)^(1/4) with a gain")
