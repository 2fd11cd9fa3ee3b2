"""A small decoder-only Transformer whose normalization and its placement are config.

Placement is slots, not branches: every sublayer (attention, MLP) has three norm
slots, before the branch, after the branch and after the residual add, plus a
residual scale alpha. pre, post, sandwich and deepnorm say which slots are filled.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .norms import Identity, make_norm

# placement -> (norm before F, norm after F, norm after the residual add, final norm)
SLOTS = {
    "pre": (True, False, False, True),
    "post": (False, False, True, False),
    "sandwich": (True, True, False, True),
    "deepnorm": (False, False, True, False),
}


def deepnorm_constants(layers: int) -> tuple[float, float]:
    """DeepNet (Wang et al. 2022), decoder-only with N layers: alpha=(2N)^(1/4), beta=(8N)^(-1/4)."""
    return (2 * layers) ** 0.25, (8 * layers) ** -0.25


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.d_head = cfg.heads, cfg.d_model // cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        qk = (lambda: make_norm(cfg.qk_norm_type, self.d_head, cfg.norm_eps, cfg.dyt_alpha)) if cfg.qk_norm else Identity
        self.q_norm, self.k_norm = qk(), qk()
        self.dropout = cfg.dropout
        self.measure = False  # when set, the next forward records its largest |q.k|/sqrt(d_head)
        self.logit_max: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, dh)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.measure:
            self.logit_max = max_attention_logit(q, k, attn_mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


@torch.no_grad()
def max_attention_logit(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Largest |q.k|/sqrt(d_head) over the (query, key) pairs attention may use; a 0-dim tensor."""
    T = q.shape[-2]
    s = q.float() @ k.float().transpose(-2, -1)  # (B, H, T, T), unscaled
    allowed = attn_mask if attn_mask is not None else torch.ones(T, T, dtype=torch.bool, device=q.device).tril_()
    # two passes over the scores (mask, then min and max together) rather than five: |s| peaks at
    # max(hi, -lo), and masked pairs set to 0 cannot win; 2.9x faster on the default model's shapes
    lo, hi = torch.aminmax(s.masked_fill_(~allowed, 0.0))
    return torch.maximum(hi, -lo) * q.shape[-1] ** -0.5


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def dyt_alphas(cfg: ModelConfig) -> tuple[float, float]:
    """DyT's initial alpha for attention's norms and for the others (MLP, final): Zhu et al. 2025, Table 11."""
    return cfg.dyt_alpha, cfg.dyt_alpha if cfg.dyt_alpha_ffn is None else cfg.dyt_alpha_ffn


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        before, after_branch, after_add, _ = SLOTS[cfg.placement]

        def slots(alpha):
            return nn.ModuleList([make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, alpha) if on else Identity()
                                  for on in (before, after_branch, after_add)])

        attn_alpha, ffn_alpha = dyt_alphas(cfg)
        self.attn, self.attn_norms = Attention(cfg), slots(attn_alpha)
        self.mlp, self.mlp_norms = MLP(cfg), slots(ffn_alpha)
        self.alpha = deepnorm_constants(cfg.layers)[0] if cfg.placement == "deepnorm" else 1.0
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, attn_mask):  # x (B, T, d); mask (B, T) or None
        x = self.residual(x, lambda h: self.attn(h, attn_mask), self.attn_norms, mask)
        return self.residual(x, self.mlp, self.mlp_norms, mask)

    def residual(self, x, f, norms, mask):
        before, after_branch, after_add = norms
        h = after_branch(self.drop(f(before(x, mask))), mask)
        return after_add((x if self.alpha == 1.0 else self.alpha * x) + h, mask)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(seq_len, cfg.d_model)
        # the token embedding's input multiplier: 1, a constant sqrt(d) (fairseq) or a learned scalar
        # initialised to sqrt(d) (DyT/Derf code); the tied head reads the unscaled table
        scale = 1.0 if cfg.embed_scale == "none" else math.sqrt(cfg.d_model)
        self.embed_scale = nn.Parameter(torch.tensor(scale)) if cfg.embed_scale == "learned" else scale
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        final = SLOTS[cfg.placement][3]
        self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, dyt_alphas(cfg)[1]) if final else Identity()
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.register_buffer("causal", torch.ones(seq_len, seq_len, dtype=torch.bool).tril_(), persistent=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight

    def _init_weights(self):
        """The conventions of README "Training conventions: embeddings and init": embeddings N(0, embed_std), the linear
        weights by ``cfg.init``, an untied head N(0, head_std), then DeepNet's beta."""
        cfg, d = self.cfg, self.cfg.d_model
        embed_std = cfg.embed_std or (0.02 if cfg.embed_scale == "none" else d ** -0.5)
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=embed_std)
        nn.init.normal_(self.head.weight, std=cfg.head_std or d ** -0.5)
        beta = deepnorm_constants(cfg.layers)[1] if cfg.placement == "deepnorm" else 1.0
        for block in self.blocks:
            a, m = block.attn, block.mlp
            with torch.no_grad():
                for lin in (a.qkv, a.proj, m.fc1, m.fc2):
                    if cfg.init == "torch":
                        lin.reset_parameters()  # uniform, std 1/sqrt(3 fan_in); qkv's fan_in is d as for q, k, v
                    elif lin.bias is not None:
                        nn.init.zeros_(lin.bias)
                q, k, v = a.qkv.weight.view(3, d, d).unbind(0)  # init as three d x d projections
                if cfg.init == "xavier":
                    for w in (q, k, v, a.proj.weight, m.fc1.weight, m.fc2.weight):
                        nn.init.xavier_normal_(w)
                elif cfg.init == "gpt2":  # residual projections scaled by 1/sqrt(2N)
                    for w in (q, k, v, m.fc1.weight):
                        nn.init.normal_(w, std=0.02)
                    for w in (a.proj.weight, m.fc2.weight):
                        nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.layers))
                # DeepNet scales the FFN, value and output projections by beta
                for w in (v, a.proj.weight, m.fc1.weight, m.fc2.weight):
                    w.mul_(beta)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids; mask (B, T) True on real tokens, None when nothing is padded."""
        B, T = idx.shape
        attn_mask = None if mask is None else self.causal[:T, :T] & mask[:, None, None, :]  # (B, 1, T, T)
        x = self.drop(self.embed_scale * self.tok(idx) + self.pos.weight[:T])  # (B, T, d)
        for block in self.blocks:
            x = block(x, mask, attn_mask)
        return self.head(self.final_norm(x, mask))  # (B, T, vocab)

    # --- hooks for the stability measurements ---
    def ffn_weights(self) -> list[list[nn.Parameter]]:
        """Per layer, the feed-forward weight matrices (Xiong et al. 2020's per-layer gradient profile)."""
        return [[b.mlp.fc1.weight, b.mlp.fc2.weight] for b in self.blocks]

    def measure_attention(self, on: bool) -> None:
        for b in self.blocks:
            b.attn.measure = on

    def attention_logit_max(self) -> torch.Tensor:
        return torch.stack([b.attn.logit_max for b in self.blocks]).amax()

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices and embeddings, never on norms, biases or scalars."""
        params = list(dict.fromkeys(self.parameters()))  # tied weights once
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
