"""Normalization layers: one registry, one small module each.

Every norm maps (B, T, d) -> (B, T, d) and takes an optional padding mask
``mask`` of shape (B, T), True on real tokens. Per-token norms ignore it; the
batch norms are the reason it exists: ``batchnorm`` is what a user gets by
dropping ``nn.BatchNorm1d`` into a Transformer (statistics over every one of the
B*T positions, padding included), ``batchnorm_masked`` takes its statistics from
real tokens only (Shen et al. 2020, PowerNorm's MaskBN). Both mix positions, so in
training a token's output depends on later tokens; ``batchnorm_causal`` normalises
with running statistics of earlier steps only, which is causal.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps)

    def forward(self, x, mask=None):
        return super().forward(x)


class LayerNormNoBias(nn.LayerNorm):
    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps, bias=False)

    def forward(self, x, mask=None):
        return super().forward(x)


class RMSNorm(nn.RMSNorm):
    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps)

    def forward(self, x, mask=None):
        return super().forward(x)


class ScaleNorm(nn.Module):
    """g * x / max(||x||_2, eps), one scalar g initialised to sqrt(d) (Nguyen & Salazar 2019)."""

    def __init__(self, d: int, eps: float, **_):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(math.sqrt(d)))
        self.eps = eps

    def forward(self, x, mask=None):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


class DyT(nn.Module):
    """gamma * tanh(alpha * x) + beta with a scalar alpha (Zhu et al. 2025)."""

    def __init__(self, d: int, alpha: float = 1.0, bias: bool = True, **_):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x, mask=None):
        y = self.weight * torch.tanh(self.alpha * x)
        return y if self.bias is None else y + self.bias


class DyTNoBias(DyT):
    """DyT without beta, as the DyT LLaMA code has it."""

    def __init__(self, d: int, alpha: float = 1.0, **_):
        super().__init__(d, alpha, bias=False)


class BatchNorm(nn.BatchNorm1d):
    """Per-channel statistics over all B*T positions, running statistics for eval."""

    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps)

    def forward(self, x, mask=None):
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)  # (B*T, d) -> (B, T, d)


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm whose batch statistics (and running statistics) come from real tokens only.

    Normalises every position, padding included, with those statistics, so real
    tokens' outputs do not depend on how much padding the batch carries.
    """

    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps)

    def forward(self, x, mask=None):
        if mask is None or not self.training:
            shape = x.shape
            return super().forward(x.reshape(-1, shape[-1])).reshape(shape)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        n = m.sum()
        mean = (x * m).sum(dim=(0, 1)) / n  # (d,)
        var = (((x - mean) ** 2) * m).sum(dim=(0, 1)) / n  # biased, as BatchNorm normalises with
        with torch.no_grad():  # running stats take the unbiased variance, as nn.BatchNorm1d does
            self.num_batches_tracked += 1
            unbiased = var * n / (n - 1).clamp_min(1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class CausalBatchNorm(nn.BatchNorm1d):
    """BatchNorm that normalises with the running statistics *before* this batch updates them.

    No statistic of the current batch reaches the output, so a token's output never depends
    on other positions (later ones included): causal in training, the same map in train and
    eval mode, and no gradient through the statistics, as PowerNorm after its warmup. The
    running statistics then take this batch's (real-token) mean and unbiased variance.
    """

    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps)

    def forward(self, x, mask=None):
        y = (x - self.running_mean.to(x.dtype)) * torch.rsqrt(self.running_var.to(x.dtype) + self.eps)
        if self.training:
            with torch.no_grad():
                real = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]  # (n, d)
                if real.shape[0] > 1:
                    self.num_batches_tracked += 1
                    self.running_mean.lerp_(real.mean(0).to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(real.var(0).to(self.running_var.dtype), self.momentum)
        return y * self.weight + self.bias


class Identity(nn.Module):
    def __init__(self, *_, **__):
        super().__init__()

    def forward(self, x, mask=None):
        return x


NORMS: dict[str, type[nn.Module]] = {
    "layernorm": LayerNorm,
    "layernorm_nobias": LayerNormNoBias,
    "rmsnorm": RMSNorm,
    "scalenorm": ScaleNorm,
    "dyt": DyT,
    "dyt_nobias": DyTNoBias,
    "batchnorm": BatchNorm,
    "batchnorm_masked": MaskedBatchNorm,
    "batchnorm_causal": CausalBatchNorm,
    "none": Identity,
}


def make_norm(name: str, d: int, eps: float = 1e-5, dyt_alpha: float = 1.0) -> nn.Module:
    return NORMS[name](d, eps=eps, alpha=dyt_alpha)

