"""Post-step hooks: what runs on the weights after every optimizer step (QK-Clip, nGPT's projection
back onto the unit sphere), behind one interface, so a new one is a class and a line in POST_STEP.

A hook's ``prepare(model)`` runs once, before training (it may ask the model to record what the hook
needs during the forward); ``after_step(model)`` runs after each ``optimizer.step()``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .config import RunConfig
from .ngpt import sphere_project


class PostStep:
    def prepare(self, model) -> None:
        """Before the first step (and after the init)."""

    def after_step(self, model) -> None:
        """After each optimizer step."""


class QKClip(PostStep):
    """Kimi K2's QK-Clip (arXiv 2507.20534) for multi-head attention: every head h whose largest
    q.k/sqrt(d_head) in the step, S_max, exceeded tau gets W_q's and W_k's rows of that head (and their
    biases) scaled by sqrt(gamma), gamma = tau / S_max: the same input's largest logit becomes tau."""

    def __init__(self, tau: float):
        self.tau = tau

    def prepare(self, model) -> None:
        for b in model.blocks:
            b.attn.track_max = True

    @torch.no_grad()
    def after_step(self, model) -> None:
        for b in model.blocks:
            a = b.attn
            s_max = a.logit_max
            if s_max is None:
                continue
            gamma = (self.tau / s_max.clamp_min(self.tau)).sqrt()  # 1 where S_max <= tau
            rows = gamma.to(a.qkv.weight.dtype).repeat_interleave(a.d_head)  # (d,) one factor per head row
            d = rows.numel()
            for part in (slice(0, d), slice(d, 2 * d)):  # W_q, then W_k
                a.qkv.weight[part].mul_(rows[:, None])
                if a.qkv.bias is not None:
                    a.qkv.bias[part].mul_(rows)
            a.logit_max = None


class SphereProjection(PostStep):
    """nGPT: the embeddings and every matrix back on the unit sphere along d_model (ngpt.sphere_project)."""

    def prepare(self, model) -> None:
        sphere_project(model)

    def after_step(self, model) -> None:
        sphere_project(model)


# (does this config use it, how to build it), in the order they run after a step
POST_STEP: list[tuple[Callable[[RunConfig], bool], Callable[[RunConfig], PostStep]]] = [
    (lambda cfg: cfg.train.qk_clip is not None, lambda cfg: QKClip(cfg.train.qk_clip)),
    (lambda cfg: cfg.model.placement == "ngpt", lambda cfg: SphereProjection()),
]


def make_post_step(cfg: RunConfig) -> list[PostStep]:
    return [build(cfg) for uses, build in POST_STEP if uses(cfg)]


def clip_factor(tau: float, s_max: float) -> float:
    """sqrt(min(1, tau / S_max)): the factor on each of W_q and W_k (for the docs and tests)."""
    return math.sqrt(min(1.0, tau / s_max))
