"""The norms' gains: per channel (each norm's own), none (weightless), one scalar, or stored as an
offset from their initial value. One function reshapes any built-in norm after it is built, so a
norm class knows nothing of these options and a new norm gets them for free.

- ``none``: the gain and the bias become constant buffers (ones and zeros): modded-nanogpt's
  weightless ``F.rms_norm``; nothing for the optimizer.
- ``scalar``: the per-channel gain becomes one learned scalar, broadcast (outlier-safe
  pre-training's single-scale norm); a bias stays per channel.
- ``unit_offset``: the stored parameter is theta = gamma - gamma_0, initialised to 0, and the norm
  sees gamma_0 + theta (x-transformers' norm_add_unit_offset, Qwen3-Next's zero-centred norm,
  Megatron's apply_layernorm_1p): weight decay on theta pulls gamma to gamma_0 (1), not to 0.

Both ``scalar`` and ``unit_offset`` are torch parametrizations of the norm's gain, so the norm's own
forward (F.layer_norm, tanh, ...) is untouched.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

GAINS = {"ScaleNorm": "g"}  # a norm class whose gain is not called weight


def gain_name(norm: nn.Module) -> str | None:
    """The attribute holding a built-in norm's gain, or None (the identity; a plugin's own module)."""
    name = next((GAINS[c.__name__] for c in type(norm).__mro__ if c.__name__ in GAINS), "weight")
    return name if isinstance(getattr(norm, name, None), (nn.Parameter, torch.Tensor)) and \
        getattr(norm, name) is not None else None


class StoredGain(nn.Module):
    """gamma from the stored parameter: ``base + theta`` under a unit offset (theta is what is stored
    and decayed), broadcast from one scalar to ``width`` channels under a scalar gain."""

    def __init__(self, base: torch.Tensor | None, width: int | None):
        super().__init__()
        self.width = width
        self.register_buffer("base", None if base is None else base.detach().clone())

    def forward(self, theta):
        gain = theta if self.base is None else self.base + theta
        return gain if self.width is None else gain.expand(self.width)

    def right_inverse(self, gamma):
        gain = gamma if self.width is None else gamma.detach().mean().reshape(())
        return gain if self.base is None else gain - self.base


def shape_affine(norm: nn.Module, affine: str = "full", unit_offset: bool = False) -> nn.Module:
    """Apply ``affine`` (full, none, scalar) and ``unit_offset`` to a built-in norm, in place; returned."""
    name = gain_name(norm)
    if name is None or (affine == "full" and not unit_offset):
        return norm
    gain = getattr(norm, name)
    if affine == "none":
        for attr, value in ((name, gain), ("bias", getattr(norm, "bias", None))):
            if isinstance(value, nn.Parameter):
                delattr(norm, attr)
                norm.register_buffer(attr, value.detach().clone(), persistent=False)
        return norm
    width = gain.shape[0] if affine == "scalar" and gain.dim() == 1 else None
    start = gain.detach() if width is None else gain.detach().mean().reshape(())
    parametrize.register_parametrization(norm, name, StoredGain(start if unit_offset else None, width))
    return norm


def stored_gain(norm: nn.Module) -> nn.Parameter | None:
    """The parameter the optimizer updates for a norm's gain (theta under unit_offset, the scalar under
    scalar), or None where the norm has no learned gain."""
    name = gain_name(norm)
    if name is None:
        return None
    if parametrize.is_parametrized(norm, name):
        return getattr(norm.parametrizations, name).original
    value = getattr(norm, name)
    return value if isinstance(value, nn.Parameter) else None
