"""Normalization layers: one registry, one small module each.

Every norm maps (B, T, d) -> (B, T, d) and takes an optional padding mask
``mask`` of shape (B, T), True on real tokens. Per-token norms ignore it; the
batch norms are the reason it exists: ``batchnorm`` is what a user gets by
dropping ``nn.BatchNorm1d`` into a Transformer (statistics over every one of the
B*T positions, padding included), ``batchnorm_masked`` takes its statistics from
real tokens only (Shen et al. 2020, PowerNorm's MaskBN). Both mix positions, so in
training a token's output depends on later tokens; ``batchnorm_causal`` normalises
with running statistics of earlier steps only, which is causal. ``powernorm`` follows its
official code (group scaling, quadratic mean without centring, running statistics after a
warmup, an approximate backward). A norm of one's own is registered by a plugin file
(registry.py) and built through ``make_norm`` like the others.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .affine import shape_affine


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


# the flat region of an element-wise norm: where its slope is below a tenth of its slope at 0
TANH_FLAT = math.atanh(math.sqrt(0.9))  # 1 - tanh(z)^2 < 0.1 for |z| > 1.818
ERF_FLAT = math.sqrt(math.log(10))  # exp(-z^2) < 0.1 for |z| > 1.517


class Saturating:
    """DyT and Derf: when ``measure_sat`` is set (on measure steps), the next training forward stores
    ``sat``, the share of the (real) elements whose pre-activation z lies in the function's flat region
    (|z| > ``flat``): the saturation that predicts whether DyT can stand in for a norm."""
    measure_sat = False
    sat: torch.Tensor | None = None
    flat = TANH_FLAT

    @torch.no_grad()
    def record_sat(self, z: torch.Tensor, mask: torch.Tensor | None) -> None:
        if self.measure_sat and self.training:
            z = z if mask is None else z[mask]
            self.sat = (z.detach().abs() > self.flat).float().mean()


class DyT(Saturating, nn.Module):
    """gamma * tanh(alpha * x) + beta with a scalar alpha (Zhu et al. 2025)."""

    def __init__(self, d: int, alpha: float = 1.0, bias: bool = True, **_):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x, mask=None):
        z = self.alpha * x
        self.record_sat(z, mask)
        y = self.weight * torch.tanh(z)
        return y if self.bias is None else y + self.bias


class DyTNoBias(DyT):
    """DyT without beta, as the DyT LLaMA code has it."""

    def __init__(self, d: int, alpha: float = 1.0, **_):
        super().__init__(d, alpha, bias=False)


class Derf(Saturating, nn.Module):
    """gamma * erf(alpha * x + s) + beta with scalars alpha (init 0.5) and s (init 0) (Chen et al. 2025)."""
    flat = ERF_FLAT

    def __init__(self, d: int, **_):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.shift = nn.Parameter(torch.tensor(0.0))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x, mask=None):
        z = self.alpha * x + self.shift
        self.record_sat(z, mask)
        return self.weight * torch.erf(z) + self.bias


class BatchStats:
    """Shen et al. 2020's measurement for the norms that keep running statistics: how far a training
    batch's statistics lie from the running ones the model is evaluated with. When ``measure_stats``
    is set (on measure steps), the next training forward stores ``stat_dev`` = (||mu_B - mu||_2 / d,
    ||var_B - var||_2 / d), before the running statistics take the batch in (NaN for a statistic the
    norm does not keep: PowerNorm has no mean)."""

    measure_stats = False
    stat_dev: torch.Tensor | None = None

    @torch.no_grad()
    def record_stats(self, mean_b, var_b, mean_run, var_run) -> None:
        if not (self.measure_stats and self.training):
            return
        d = var_b.numel()
        dist = (lambda b, r: torch.linalg.vector_norm(b.float() - r.float()) / d)
        mean_dev = dist(mean_b, mean_run) if mean_b is not None else torch.tensor(math.nan, device=var_b.device)
        self.stat_dev = torch.stack([mean_dev, dist(var_b, var_run)])


class BatchNorm(BatchStats, nn.BatchNorm1d):
    """Per-channel statistics over all B*T positions, running statistics for eval."""

    def __init__(self, d: int, eps: float, **_):
        super().__init__(d, eps=eps)

    def forward(self, x, mask=None):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (B*T, d)
        if self.measure_stats and self.training:
            self.record_stats(flat.mean(0), flat.var(0, unbiased=False), self.running_mean, self.running_var)
        return super().forward(flat).reshape(shape)  # (B*T, d) -> (B, T, d)


class MaskedBatchNorm(BatchNorm):
    """BatchNorm whose batch statistics (and running statistics) come from real tokens only.

    Normalises every position, padding included, with those statistics, so real
    tokens' outputs do not depend on how much padding the batch carries.
    """

    def forward(self, x, mask=None):
        if mask is None or not self.training:  # nothing to leave out: plain BatchNorm
            return super().forward(x)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        n = m.sum()
        mean = (x * m).sum(dim=(0, 1)) / n  # (d,)
        var = (((x - mean) ** 2) * m).sum(dim=(0, 1)) / n  # biased, as BatchNorm normalises with
        self.record_stats(mean, var, self.running_mean, self.running_var)
        with torch.no_grad():  # running stats take the unbiased variance, as nn.BatchNorm1d does
            self.num_batches_tracked += 1
            unbiased = var * n / (n - 1).clamp_min(1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class CausalBatchNorm(BatchStats, nn.BatchNorm1d):
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
                    self.record_stats(real.mean(0), real.var(0, unbiased=False), self.running_mean, self.running_var)
                    self.num_batches_tracked += 1
                    self.running_mean.lerp_(real.mean(0).to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(real.var(0).to(self.running_var.dtype), self.momentum)
        return y * self.weight + self.bias


class _PowerFunction(torch.autograd.Function):
    """PowerNorm's normalisation with its approximate backward, as the official code (Shen et al.
    2020, fairseq/modules/norms/mask_powernorm.py): forward z = x / sqrt(psi2 + eps) (the batch's
    quadratic mean during the warmup, the running one after), y = weight * z + bias; backward
    g_hat = g - (1 - alpha_bkw) * ema_gz * z, ema_gz += mean(g_hat * z), dx = g_hat / sqrt(var_B + eps)
    with the batch's var_B, and the usual weight and bias gradients. x is (N, d), every position."""

    @staticmethod
    def forward(ctx, x, weight, bias, phi, var, ema_gz, alpha_bkw: float, eps: float):
        z = x * torch.rsqrt(phi + eps)
        ctx.save_for_backward(z, var, weight, ema_gz)
        ctx.alpha_bkw, ctx.eps = alpha_bkw, eps
        return z * weight + bias

    @staticmethod
    def backward(ctx, grad):
        z, var, weight, ema_gz = ctx.saved_tensors
        g = grad * weight
        g_hat = g - (1 - ctx.alpha_bkw) * ema_gz * z
        ema_gz.add_((g_hat * z).mean(0))
        return g_hat * torch.rsqrt(var + ctx.eps), (grad * z).sum(0), grad.sum(0), None, None, None, None, None


class PowerNorm(BatchStats, nn.Module):
    """PowerNorm as its official code does it (MaskPowerNorm): each token first divided by the RMS of
    each of its channel groups (one group per head: GroupScaling1D), then per channel x / sqrt(psi2)
    without centring. psi2 is the quadratic mean over the batch's real tokens while the step count is
    within the warmup (the official code passes the learning-rate warmup, here train.warmup_steps),
    and the running quadratic mean after it (psi2 <- 0.9 psi2 + 0.1 psi2_B; during the warmup also a
    cumulative mean, as the code does). The backward is the code's approximation (_PowerFunction).
    After the warmup the forward uses running statistics only, so it is causal; during it, like
    BatchNorm, a token's output depends on the batch."""

    def __init__(self, d: int, eps: float, heads: int = 1, warmup: int = 0, **_):
        super().__init__()
        self.groups, self.eps, self.warmup = heads, eps, warmup
        self.alpha_fwd, self.alpha_bkw, self.group_eps = 0.9, 0.9, 1e-5  # the code's defaults
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_phi", torch.ones(d))
        self.register_buffer("ema_gz", torch.zeros(d))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))

    def group_scale(self, x):
        shape = x.shape
        g = x.reshape(*shape[:-1], self.groups, shape[-1] // self.groups)
        return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.group_eps)).reshape(shape)

    def forward(self, x, mask=None):
        shape = x.shape
        x = self.group_scale(x)
        if not self.training:
            return x * torch.rsqrt(self.running_phi.to(x.dtype) + self.eps) * self.weight + self.bias
        self.iters += 1
        step = int(self.iters)
        flat = x.reshape(-1, shape[-1])
        real = flat if mask is None else x[mask]
        var = real.detach().pow(2).mean(0)  # the batch's quadratic mean over real tokens, per channel
        self.record_stats(None, var, None, self.running_phi)  # its statistic: the quadratic mean, no mean
        phi = var if step <= self.warmup else self.running_phi.to(x.dtype)
        y = _PowerFunction.apply(flat, self.weight, self.bias, phi, var, self.ema_gz, self.alpha_bkw, self.eps)
        with torch.no_grad():
            v = var.to(self.running_phi.dtype)
            if step < self.warmup:
                self.running_phi.copy_(self.running_phi * (step - 1) / step + v / step)
            self.running_phi.copy_(self.alpha_fwd * self.running_phi + (1 - self.alpha_fwd) * v)
        return y.reshape(shape)


class Plugin(nn.Module):
    """A registered norm (registry.py): the user's module, called with the mask only if it takes one."""

    def __init__(self, module: nn.Module):
        super().__init__()
        import inspect

        self.inner = module
        params = inspect.signature(module.forward).parameters
        self.takes_mask = "mask" in params or len(params) > 1

    def forward(self, x, mask=None):
        return self.inner(x, mask) if self.takes_mask else self.inner(x)


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
    "derf": Derf,
    "powernorm": PowerNorm,
    "none": Identity,
}


def make_norm(name: str, d: int, eps: float = 1e-5, dyt_alpha: float = 1.0, heads: int = 1,
              warmup: int = 0, affine: str = "full", unit_offset: bool = False) -> nn.Module:
    """A norm over the last dimension d: a built-in one, or one registered by a plugin (registry.py).
    ``heads``: PowerNorm's channel groups; ``warmup``: PowerNorm's steps of batch statistics;
    ``affine`` and ``unit_offset``: how its gain is stored (affine.py)."""
    if name in NORMS:
        return shape_affine(NORMS[name](d, eps=eps, alpha=dyt_alpha, heads=heads, warmup=warmup), affine, unit_offset)
    from .registry import factory_of

    factory = factory_of(name)
    if factory is None:
        raise KeyError(f"unknown norm {name!r}")
    return Plugin(factory(d))

