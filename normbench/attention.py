"""Multi-head self-attention, with the interventions that act on it as options of one module.

The logits s = q.k * scale go through, in order: an optional soft-cap c*tanh(s/c) (Gemma 2), the
causal and padding mask, and a softmax whose denominator may hold one learned sink logit per head
(gpt-oss); the heads' outputs may be gated by sigmoid(x W_g), one gate per head (Qiu et al. 2025).
Without a cap or sinks the softmax is PyTorch's fused SDPA. Queries, keys (and values) pass through
norm slots: identities, qk-norm, HybridNorm's QKV-norm or nGPT's scaled L2 norm. The statistics of
the diagnostics (attention_stats) and QK-Clip's per-head largest logit are recorded here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .norms import Identity, make_norm

DIAG_SEQS = 4  # sequences the costlier diagnostics use (entropy, sinks, massive activations, token similarity)


def softcap(s: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's soft-cap c*tanh(s/c): about s for |s| << c, bounded by c; None leaves s as it is."""
    return s if cap is None else cap * torch.tanh(s / cap)


def qkv_norms(cfg: ModelConfig, width: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The norm slots of queries, keys and values: qk-norm (and v-norm) with qk_norm_type, HybridNorm's
    QKV-norm with model.norm, identities otherwise."""
    if cfg.placement == "hybridnorm":
        make = (lambda: make_norm(cfg.norm, width, cfg.norm_eps, cfg.dyt_alpha, affine=cfg.norm_affine,
                                  unit_offset=cfg.norm_unit_offset))
        return make(), make(), make()
    if not cfg.qk_norm:
        return Identity(), Identity(), Identity()
    make = (lambda: make_norm(cfg.qk_norm_type, width, cfg.norm_eps, cfg.dyt_alpha, affine=cfg.norm_affine,
                              unit_offset=cfg.norm_unit_offset))
    return make(), make(), make() if cfg.v_norm else Identity()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, inner: nn.Module, norms: tuple | None = None,
                 scale: float | None = None):
        """``inner``: SubLN's norm before the output projection; ``norms``: the (q, k, v) norm slots (default:
        qkv_norms); ``scale``: the softmax's logit scale (default 1/sqrt(d_head); nGPT's is sqrt(d_head))."""
        super().__init__()
        self.heads, self.d_head = cfg.heads, cfg.d_model // cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.full_qk = cfg.qk_norm and cfg.qk_norm_scope == "full"  # OLMo 2: the whole projection, before the split
        self.q_norm, self.k_norm, self.v_norm = norms or qkv_norms(cfg, cfg.d_model if self.full_qk else self.d_head)
        self.scale = self.d_head ** -0.5 if scale is None else scale
        self.sdpa_scale = scale  # None: SDPA's own default 1/sqrt(d_head), bit for bit
        self.cap = cfg.softcap_attn
        self.sinks = nn.Parameter(torch.zeros(cfg.heads)) if cfg.attn_sinks else None  # gpt-oss: one logit a head
        self.gate = nn.Linear(cfg.d_model, cfg.heads, bias=cfg.bias) if cfg.attn_gate else None  # Qiu et al. 2025
        self.inner = inner  # SubLN: a norm before the output projection
        self.dropout = cfg.dropout
        self.causal = True  # False in an encoder (task mlm): every position attends to every real one
        self.measure = False  # when set, the next forward records its per-head statistics (attention_stats)
        self.stats: torch.Tensor | None = None  # (H, 4): largest |logit|, entropy, weight on position 0, largest logit
        self.track_max = False  # when set (QK-Clip), every training forward records logit_max
        self.logit_max: torch.Tensor | None = None  # (H,) the step's largest q.k*scale per head

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, mask: torch.Tensor | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, d)
        if self.full_qk:
            q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        q, k, v = (t.view(B, T, self.heads, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        if not self.full_qk:
            q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        if self.measure:
            self.stats = attention_stats(q, k, attn_mask, mask, self.causal, self.scale, self.cap, self.sinks)
        if self.track_max and self.training:
            self.logit_max = logit_max(q, k, attn_mask, self.causal, self.scale)
        if self.cap is None and self.sinks is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None,
                                               dropout_p=self.dropout if self.training else 0.0, scale=self.sdpa_scale)
        else:
            p = attention_probs(q, k, allowed_keys(attn_mask, self.causal, q.shape[2], q.device), self.scale,
                                self.cap, self.sinks)
            y = F.dropout(p, self.dropout, self.training).to(v.dtype) @ v
        if self.gate is not None:  # a gate per head, from the attention's input
            y = y * torch.sigmoid(self.gate(x)).transpose(1, 2)[..., None]  # (B, H, T, 1)
        return self.proj(self.inner(y.transpose(1, 2).reshape(B, T, C), mask))


def allowed_keys(attn_mask: torch.Tensor | None, causal: bool, T: int, device) -> torch.Tensor:
    """The (query, key) pairs attention may use: the mask given, or causal (or everything) without one."""
    if attn_mask is not None:
        return attn_mask
    allowed = torch.ones(T, T, dtype=torch.bool, device=device)
    return allowed.tril_() if causal else allowed


def attention_probs(q, k, allowed, scale: float, cap: float | None = None,
                    sinks: torch.Tensor | None = None) -> torch.Tensor:
    """softmax over the allowed keys of softcap(q.k * scale), with one sink logit per head in the
    denominator when ``sinks`` is given; (B, H, T, T) in float32."""
    return masked_softmax(softcap((q.float() @ k.float().transpose(-2, -1)) * scale, cap), allowed, sinks)


def masked_softmax(s: torch.Tensor, allowed: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """The softmax of logits s (b, H, T, T) over the allowed keys; with ``sinks`` (H,), each head's sink
    logit joins the denominator (its weight goes nowhere: the rows then sum to less than 1)."""
    s = s.masked_fill(~allowed, -math.inf)
    if sinks is None:
        return torch.softmax(s, dim=-1)
    sink = sinks.float()[None, :, None, None].expand(*s.shape[:-1], 1)
    return torch.softmax(torch.cat([s, sink], dim=-1), dim=-1)[..., :-1]


@torch.no_grad()
def logit_max(q, k, attn_mask, causal: bool, scale: float) -> torch.Tensor:
    """(H,) the largest q.k * scale per head over the pairs attention may use (QK-Clip's S_max)."""
    s = (q.float() @ k.float().transpose(-2, -1)).masked_fill_(~allowed_keys(attn_mask, causal, q.shape[2],
                                                                             q.device), -math.inf)
    return s.amax(dim=(0, 2, 3)) * scale


@torch.no_grad()
def attention_stats(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None,
                    mask: torch.Tensor | None, causal: bool = True, scale: float | None = None,
                    cap: float | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Per head (H, 4): the largest |q.k| * scale (before any soft-cap: the growth a cap hides) over the
    (query, key) pairs attention may use; the entropy of the attention weights over the allowed keys,
    averaged over real queries (Zhai et al. 2023's entropy collapse, in nats); the weight on the first
    position, averaged over real queries (Gu et al. 2025's attention sink); the largest signed q.k * scale
    (QK-Clip's S_max). The entropy and the sink, from the softmax the model uses (cap and sinks included),
    on the first DIAG_SEQS sequences."""
    B, H, T, dh = q.shape
    scale = dh ** -0.5 if scale is None else scale
    s = q.float() @ k.float().transpose(-2, -1)  # (B, H, T, T), unscaled
    allowed = allowed_keys(attn_mask, causal, T, q.device)
    # entropy and sinks on the first DIAG_SEQS sequences: a softmax over every score would double the cost
    b = min(B, DIAG_SEQS)
    p = masked_softmax(softcap(s[:b] * scale, cap), allowed if allowed.dim() == 2 else allowed[:b], sinks)
    w = (torch.ones(b, T, device=q.device) if mask is None else mask[:b].float())[:, None, :]  # real queries
    entropy = (torch.special.entr(p).sum(-1) * w).sum((0, 2)) / w.sum((0, 2))  # (H,)
    sink_w = (p[..., 0] * w).sum((0, 2)) / w.sum((0, 2))  # (H,)
    # |s| peaks at max(hi, -lo), and masked pairs set to 0 cannot win: no abs() pass over the scores
    s = s.masked_fill_(~allowed, 0.0)
    hi = s.amax(dim=(0, 2, 3))
    logit = torch.maximum(hi, -s.amin(dim=(0, 2, 3))) * abs(scale)  # (H,)
    # the largest signed logit (what QK-Clip bounds and the softmax follows), over the allowed pairs only
    top = s.masked_fill_(~allowed, -math.inf).amax(dim=(0, 2, 3)) * scale  # in place: no second (B, H, T, T)
    return torch.stack([logit, entropy, sink_w, top], dim=1)
