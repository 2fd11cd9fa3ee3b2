"""A small decoder-only Transformer whose normalization and its placement are config.

Placement is slots, not branches: every sublayer (attention, MLP) has three norm
slots, before the branch, after the branch and after the residual add, plus a
residual scale alpha; each branch has one inner slot (SubLN's); the model has an
embedding slot and a final one. A placement says which slots are filled, per layer
(Mix-LN: Post-LN slots in the first blocks, Pre-LN in the rest), and LNS scales the
before-slot's output by 1/sqrt(layer).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .norms import Identity, make_norm

# placement -> (norm before F, norm after F, norm after the residual add) in a block
SLOTS = {
    "pre": (True, False, False),
    "post": (False, False, True),
    "sandwich": (True, True, False),
    "deepnorm": (False, False, True),
    "lns": (True, False, False),
    "outnorm": (False, True, False),
    "subln": (True, False, False),
}


def block_slots(cfg: ModelConfig, layer: int) -> tuple[bool, bool, bool]:
    """The filled slots of block ``layer`` (0-based); Mix-LN's first floor(ratio*N) blocks are Post-LN."""
    if cfg.placement == "mixln":
        return SLOTS["post" if layer < mixln_post_blocks(cfg) else "pre"]
    return SLOTS[cfg.placement]


def mixln_post_blocks(cfg: ModelConfig) -> int:
    return math.floor(cfg.mixln_ratio * cfg.layers)


def has_final_norm(cfg: ModelConfig) -> bool:
    """A final norm wherever the last block leaves its residual stream unnormalised."""
    if cfg.placement == "mixln":
        return mixln_post_blocks(cfg) < cfg.layers
    return not SLOTS[cfg.placement][2]


def subln_gain(layers: int) -> float:
    """Magneto's init gain gamma = sqrt(ln 2N) for fc1, fc2, value and output projections."""
    return math.sqrt(math.log(2 * layers))


def deepnorm_constants(layers: int) -> tuple[float, float]:
    """DeepNet (Wang et al. 2022), decoder-only with N layers: alpha=(2N)^(1/4), beta=(8N)^(-1/4)."""
    return (2 * layers) ** 0.25, (8 * layers) ** -0.25


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, inner: nn.Module):
        super().__init__()
        self.heads, self.d_head = cfg.heads, cfg.d_model // cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.full_qk = cfg.qk_norm_scope == "full"  # OLMo 2: over the whole projection, before the heads split
        width = cfg.d_model if self.full_qk else self.d_head
        qk = (lambda: make_norm(cfg.qk_norm_type, width, cfg.norm_eps, cfg.dyt_alpha)) if cfg.qk_norm else Identity
        self.q_norm, self.k_norm = qk(), qk()
        self.inner = inner  # SubLN: a norm before the output projection
        self.dropout = cfg.dropout
        self.causal = True  # False in an encoder (task mlm): every position attends to every real one
        self.measure = False  # when set, the next forward records its per-head statistics (attention_stats)
        self.stats: torch.Tensor | None = None  # (H, 3): largest |logit|, entropy, weight on position 0

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, mask: torch.Tensor | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, d)
        if self.full_qk:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(B, T, self.heads, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        if not self.full_qk:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.measure:
            self.stats = attention_stats(q, k, attn_mask, mask, self.causal)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, dh)
        return self.proj(self.inner(y.transpose(1, 2).reshape(B, T, C), mask))


DIAG_SEQS = 4  # sequences the costlier diagnostics use (massive activations, token similarity)


@torch.no_grad()
def attention_stats(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None,
                    mask: torch.Tensor | None, causal: bool = True) -> torch.Tensor:
    """Per head (H, 3): the largest |q.k|/sqrt(d_head) over the (query, key) pairs attention may use;
    the entropy of the attention weights over the allowed keys, averaged over real queries (Zhai et
    al. 2023's entropy collapse, in nats); the weight on the first position, averaged over real
    queries (Gu et al. 2025's attention sink). The last two on the first DIAG_SEQS sequences."""
    B, H, T, dh = q.shape
    scale = dh ** -0.5
    s = q.float() @ k.float().transpose(-2, -1)  # (B, H, T, T), unscaled
    allowed = attn_mask if attn_mask is not None else torch.ones(T, T, dtype=torch.bool, device=q.device)
    if attn_mask is None and causal:
        allowed = allowed.tril_()
    # entropy and sinks on the first DIAG_SEQS sequences: a softmax over every score would double the cost
    b = min(B, DIAG_SEQS)
    sub = s[:b] * scale
    p = torch.softmax(sub.masked_fill_(~(allowed if allowed.dim() == 2 else allowed[:b]), -math.inf), dim=-1)
    w = (torch.ones(b, T, device=q.device) if mask is None else mask[:b].float())[:, None, :]  # real queries
    entropy = (torch.special.entr(p).sum(-1) * w).sum((0, 2)) / w.sum((0, 2))  # (H,)
    sink = (p[..., 0] * w).sum((0, 2)) / w.sum((0, 2))  # (H,)
    # |s| peaks at max(hi, -lo), and masked pairs set to 0 cannot win: no abs() pass over the scores
    s = s.masked_fill_(~allowed, 0.0)
    logit = torch.maximum(s.amax(dim=(0, 2, 3)), -s.amin(dim=(0, 2, 3))) * scale  # (H,)
    return torch.stack([logit, entropy, sink], dim=1)


@torch.no_grad()
def token_cos_sim(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Noci et al. 2022's rank collapse: the mean cosine similarity of the token representations of
    a sequence, over the pairs of distinct real tokens, averaged over the sequences; x (b, T, d)."""
    b, T, _ = x.shape
    xn = F.normalize(x.float(), dim=-1)
    g = xn @ xn.transpose(-2, -1)  # (b, T, T)
    real = torch.ones(b, T, dtype=torch.bool, device=x.device) if mask is None else mask
    pairs = real[:, :, None] & real[:, None, :] & ~torch.eye(T, dtype=torch.bool, device=x.device)
    return g[pairs].mean()


@torch.no_grad()
def residual_stats(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The residual stream after a block, (4,): its RMS over real tokens and channels; He et al.
    2024's activation kurtosis, mean_j s_j^4 / (mean_j s_j^2)^2 of the per-channel RMS s_j over real
    tokens; Sun et al. 2024's massive-activation ratio max |h| / median |h|; and the mean cosine
    similarity of its tokens. The last two on the first DIAG_SEQS sequences (a median and a T x T
    product per sequence cost more than the rest together)."""
    rms = residual_rms(x, mask)
    real = x.float() if mask is None else x[mask].float()
    s2 = real.reshape(-1, x.shape[-1]).pow(2).mean(0)  # (d,) per-channel mean square = s_j^2
    kurtosis = s2.pow(2).mean() / s2.mean().pow(2)
    sub, m = x[:DIAG_SEQS], None if mask is None else mask[:DIAG_SEQS]
    a = (sub.reshape(-1, x.shape[-1]) if m is None else sub[m]).float().abs()
    return torch.stack([rms, kurtosis, a.max() / a.median(), token_cos_sim(sub, m)])


@torch.no_grad()
def residual_rms(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """RMS of the residual stream over real tokens and channels; a 0-dim tensor."""
    x = x.float() if mask is None else x[mask].float()
    return x.pow(2).mean().sqrt()


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, inner: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.inner = inner  # SubLN: a norm (over d_ff) between the activation and fc2

    def forward(self, x, mask=None):
        return self.fc2(self.inner(F.gelu(self.fc1(x)), mask))


class Scaled(nn.Module):
    """A norm whose output is multiplied by a constant (LNS: 1/sqrt(layer))."""

    def __init__(self, norm: nn.Module, scale: float):
        super().__init__()
        self.norm, self.scale = norm, scale

    def forward(self, x, mask=None):
        return self.norm(x, mask) * self.scale


def dyt_alphas(cfg: ModelConfig) -> tuple[float, float]:
    """DyT's initial alpha for attention's norms and for the others (MLP, final): Zhu et al. 2025, Table 11."""
    return cfg.dyt_alpha, cfg.dyt_alpha if cfg.dyt_alpha_ffn is None else cfg.dyt_alpha_ffn


def norm_maker(cfg: ModelConfig, norm_warmup: int = 0):
    """``norm(alpha, width=d_model)``: model.norm over ``width``, with DyT's initial alpha and
    PowerNorm's groups (one per head) and warmup."""
    def norm(alpha: float, width: int = cfg.d_model) -> nn.Module:
        return make_norm(cfg.norm, width, cfg.norm_eps, alpha, heads=cfg.heads, warmup=norm_warmup)
    return norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0, norm_warmup: int = 0):
        super().__init__()
        norm = norm_maker(cfg, norm_warmup)
        before, after_branch, after_add = block_slots(cfg, layer)
        scale = 1 / math.sqrt(layer + 1) if cfg.placement == "lns" else 1.0  # LNS: 1/sqrt(l), l 1-based

        def slots(alpha):
            first = norm(alpha) if before else Identity()
            return nn.ModuleList([Scaled(first, scale) if scale != 1.0 else first,
                                  norm(alpha) if after_branch else Identity(), norm(alpha) if after_add else Identity()])

        attn_alpha, ffn_alpha = dyt_alphas(cfg)
        subln = cfg.placement == "subln"
        self.attn = Attention(cfg, norm(attn_alpha) if subln else Identity())
        self.mlp = MLP(cfg, norm(ffn_alpha, cfg.d_ff) if subln else Identity())
        self.attn_norms, self.mlp_norms = slots(attn_alpha), slots(ffn_alpha)
        self.alpha = deepnorm_constants(cfg.layers)[0] if cfg.placement == "deepnorm" else 1.0
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, attn_mask):  # x (B, T, d); mask (B, T) or None
        x = self.residual(x, lambda h, m: self.attn(h, attn_mask, m), self.attn_norms, mask)
        return self.residual(x, self.mlp, self.mlp_norms, mask)

    def residual(self, x, f, norms, mask):
        before, after_branch, after_add = norms
        h = after_branch(self.drop(f(before(x, mask), mask)), mask)
        return after_add((x if self.alpha == 1.0 else self.alpha * x) + h, mask)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, norm_warmup: int = 0,
                 bidirectional: bool = False):
        """``norm_warmup``: PowerNorm's steps of batch statistics (the trainer passes train.warmup_steps,
        as PowerNorm's code passes its learning-rate warmup). ``bidirectional``: an encoder (the mlm task)."""
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(seq_len, cfg.d_model)
        # the token embedding's input multiplier: 1, a constant sqrt(d) (fairseq) or a learned scalar
        # initialised to sqrt(d) (DyT/Derf code); the tied head reads the unscaled table
        scale = 1.0 if cfg.embed_scale == "none" else math.sqrt(cfg.d_model)
        self.embed_scale = nn.Parameter(torch.tensor(scale)) if cfg.embed_scale == "learned" else scale
        self.drop = nn.Dropout(cfg.dropout)
        norm = norm_maker(cfg, norm_warmup)
        self.embed_norm = norm(dyt_alphas(cfg)[0]) if cfg.embed_norm else Identity()  # BLOOM
        self.blocks = nn.ModuleList([Block(cfg, i, norm_warmup) for i in range(cfg.layers)])
        self.bidirectional = bidirectional  # an encoder (task mlm): attention sees both ways
        for b in self.blocks:
            b.attn.causal = not bidirectional
        self.final_norm = norm(dyt_alphas(cfg)[1]) if has_final_norm(cfg) else Identity()
        self.measure_resid = False  # when set, the next forward records the residual stream per block
        self.resid_stats: list[torch.Tensor] = []  # per block, (4,): residual_stats
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.register_buffer("causal", torch.ones(seq_len, seq_len, dtype=torch.bool).tril_(), persistent=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight

    def _init_weights(self):
        """The conventions of docs/conventions.md "Training conventions: embeddings and init": embeddings N(0, embed_std), the linear
        weights by ``cfg.init``, an untied head N(0, head_std), then DeepNet's beta."""
        cfg, d = self.cfg, self.cfg.d_model
        embed_std = cfg.embed_std or (0.02 if cfg.embed_scale == "none" else d ** -0.5)
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=embed_std)
        nn.init.normal_(self.head.weight, std=cfg.head_std or d ** -0.5)
        beta = deepnorm_constants(cfg.layers)[1] if cfg.placement == "deepnorm" else \
            subln_gain(cfg.layers) if cfg.placement == "subln" else 1.0
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
                # DeepNet scales the FFN, value and output projections by beta; Magneto by sqrt(ln 2N)
                for w in (v, a.proj.weight, m.fc1.weight, m.fc2.weight):
                    w.mul_(beta)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids; mask (B, T) True on real tokens, None when nothing is padded."""
        B, T = idx.shape
        if mask is None:
            attn_mask = None  # SDPA's own causal kernel, or full attention in an encoder
        elif self.bidirectional:
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, T): every real key, from every query
        else:
            attn_mask = self.causal[:T, :T] & mask[:, None, None, :]  # (B, 1, T, T)
        x = self.embed_norm(self.drop(self.embed_scale * self.tok(idx) + self.pos.weight[:T]), mask)  # (B, T, d)
        self.resid_stats = []
        for block in self.blocks:
            x = block(x, mask, attn_mask)
            if self.measure_resid:
                self.resid_stats.append(residual_stats(x, mask))
        return self.head(self.final_norm(x, mask))  # (B, T, vocab)

    # --- hooks for the stability measurements ---
    def ffn_weights(self) -> list[list[nn.Parameter]]:
        """Per layer, the feed-forward weight matrices (Xiong et al. 2020's per-layer gradient profile)."""
        return [[b.mlp.fc1.weight, b.mlp.fc2.weight] for b in self.blocks]

    def measure_attention(self, on: bool, parts: tuple = ("attention", "residual", "norms")) -> None:
        """Record, in the next training forwards, the statistics of ``parts``: attention (per head),
        the residual stream (per block), the norms (batch statistics, saturation)."""
        self.measure_resid = on and "residual" in parts
        for b in self.blocks:
            b.attn.measure = on and "attention" in parts
        for m in self.batch_stat_norms():
            m.measure_stats = on and "norms" in parts
            if on:
                m.stat_dev = None
        for m in self.saturating_norms():
            m.measure_sat = on and "norms" in parts
            if on:
                m.sat = None

    def saturating_norms(self) -> list[nn.Module]:
        """The element-wise norms (DyT, Derf), found once."""
        if getattr(self, "_sat_norms", None) is None:
            from .norms import Saturating

            self._sat_norms = [m for m in self.modules() if isinstance(m, Saturating)]
        return self._sat_norms

    def saturation(self) -> torch.Tensor | None:
        """The share of the element-wise norms' inputs in their flat region, averaged over the norms,
        from the last measured training forward; None without such norms."""
        sats = [m.sat for m in self.saturating_norms() if m.sat is not None]
        return torch.stack(sats).mean() if sats else None

    def batch_stat_norms(self) -> list[nn.Module]:
        """The norms with running statistics, found once (this is asked every training step)."""
        if getattr(self, "_stat_norms", None) is None:
            from .norms import BatchStats

            self._stat_norms = [m for m in self.modules() if isinstance(m, BatchStats)]
        return self._stat_norms

    def bn_stat_dev(self) -> torch.Tensor | None:
        """(2,) Shen et al. 2020's batch-vs-running distance of mean and variance, averaged over the
        norms that keep running statistics, from the last measured training forward; None without them."""
        devs = [m.stat_dev for m in self.batch_stat_norms() if m.stat_dev is not None]
        return torch.stack(devs).mean(0) if devs else None

    def resid_rms_by_layer(self) -> torch.Tensor:
        """(layers,) the residual stream's RMS after each block, from the last measured forward."""
        return self.resid_stats_by_layer()[:, 0]

    def resid_stats_by_layer(self) -> torch.Tensor:
        """(layers, 4) residual_stats after each block, from the last measured forward."""
        return torch.stack(self.resid_stats)

    def attention_stats(self) -> torch.Tensor:
        """(layers, heads, 3) attention_stats of each block, from the last measured forward."""
        return torch.stack([b.attn.stats for b in self.blocks])

    def attention_logit_max(self) -> torch.Tensor:
        return self.attention_stats()[..., 0].amax()

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices and embeddings, never on norms, biases or scalars."""
        params = list(dict.fromkeys(self.parameters()))  # tied weights once
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
