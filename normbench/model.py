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

from .attention import DIAG_SEQS, Attention, softcap
from .config import ModelConfig
from .inits import init_weights
from .ngpt import L2Norm, NGPTBlock, Scale, sphere_project
from .norms import NORMS, Identity, make_norm
from .residual import make_gate, make_skip

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
# placements whose attention and MLP fill different slots: (attention's, the MLP's)
# HybridNorm: no norm around attention (QKV-norm inside it); the MLP's input normed, and its residual taken
# from that normed input: x + Attn(QKVnorm(x)) = y, then Norm(y) + MLP(Norm(y)) (Zhuo et al. 2025's code)
SPLIT_SLOTS = {"hybridnorm": ((False, False, False), (True, False, False))}
NORMED_SKIP = ("hybridnorm",)  # placements whose MLP residual starts from the normed input
BLOCKS = {"ngpt": NGPTBlock}  # placements that are a block of their own, not norm slots


def block_slots(cfg: ModelConfig, layer: int) -> tuple[tuple, tuple]:
    """The filled slots of block ``layer`` (0-based), attention's and the MLP's; Mix-LN's first
    floor(ratio*N) blocks are Post-LN."""
    if cfg.placement in SPLIT_SLOTS:
        return SPLIT_SLOTS[cfg.placement]
    if cfg.placement == "mixln":
        slots = SLOTS["post" if layer < mixln_post_blocks(cfg) else "pre"]
    else:
        slots = SLOTS[cfg.placement]
    return slots, slots


def mixln_post_blocks(cfg: ModelConfig) -> int:
    return math.floor(cfg.mixln_ratio * cfg.layers)


def has_final_norm(cfg: ModelConfig) -> bool:
    """A final norm wherever the last block leaves its residual stream unnormalised."""
    if cfg.placement == "mixln":
        return mixln_post_blocks(cfg) < cfg.layers
    if cfg.placement in BLOCKS:
        return False  # nGPT's blocks end on the unit sphere
    return not block_slots(cfg, cfg.layers - 1)[1][2]


def subln_gain(layers: int) -> float:
    """Magneto's init gain gamma = sqrt(ln 2N) for fc1, fc2, value and output projections."""
    return math.sqrt(math.log(2 * layers))


def deepnorm_constants(layers: int) -> tuple[float, float]:
    """DeepNet (Wang et al. 2022), decoder-only with N layers: alpha=(2N)^(1/4), beta=(8N)^(-1/4)."""
    return (2 * layers) ** 0.25, (8 * layers) ** -0.25


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
        return make_norm(cfg.norm, width, cfg.norm_eps, alpha, heads=cfg.heads, warmup=norm_warmup,
                         affine=cfg.norm_affine, unit_offset=cfg.norm_unit_offset)
    return norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0, norm_warmup: int = 0):
        super().__init__()
        norm = norm_maker(cfg, norm_warmup)
        attn_slots, mlp_slots = block_slots(cfg, layer)
        scale = 1 / math.sqrt(layer + 1) if cfg.placement == "lns" else 1.0  # LNS: 1/sqrt(l), l 1-based

        def slots(alpha, filled):
            before, after_branch, after_add = filled
            first = norm(alpha) if before else Identity()
            return nn.ModuleList([Scaled(first, scale) if scale != 1.0 else first,
                                  norm(alpha) if after_branch else Identity(), norm(alpha) if after_add else Identity()])

        attn_alpha, ffn_alpha = dyt_alphas(cfg)
        subln = cfg.placement == "subln"
        self.attn = Attention(cfg, norm(attn_alpha) if subln else Identity())
        self.mlp = MLP(cfg, norm(ffn_alpha, cfg.d_ff) if subln else Identity())
        self.attn_norms, self.mlp_norms = slots(attn_alpha, attn_slots), slots(ffn_alpha, mlp_slots)
        self.alpha = deepnorm_constants(cfg.layers)[0] if cfg.placement == "deepnorm" else 1.0
        self.attn_skip, self.mlp_skip = make_skip(cfg, self.alpha), make_skip(cfg, self.alpha)  # DeepNorm, Admin
        self.attn_gate, self.mlp_gate = make_gate(cfg), make_gate(cfg)  # ReZero, LayerScale
        self.mlp_normed_skip = cfg.placement in NORMED_SKIP
        self.drop = nn.Dropout(cfg.dropout)
        self.profile = None  # Admin's profiling pass (inits.AdminProfile) sets each skip's omega as it goes

    def forward(self, x, mask, attn_mask):  # x (B, T, d); mask (B, T) or None
        x = self.residual(x, lambda h, m: self.attn(h, attn_mask, m), self.attn_norms, self.attn_skip,
                          self.attn_gate, mask)
        return self.residual(x, self.mlp, self.mlp_norms, self.mlp_skip, self.mlp_gate, mask, self.mlp_normed_skip)

    def residual(self, x, f, norms, skip, gate, mask, normed_skip: bool = False):
        before, after_branch, after_add = norms
        n = before(x, mask)
        h = after_branch(self.drop(f(n, mask)), mask)
        if normed_skip:
            x = n
        if self.profile is not None:
            self.profile.visit(skip, x, h, mask)
        return after_add(skip(x) + gate(h), mask)


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
        ngpt = cfg.placement == "ngpt"
        # BLOOM's embedding norm; nGPT's h_0 on the unit sphere
        self.embed_norm = L2Norm() if ngpt else norm(dyt_alphas(cfg)[0]) if cfg.embed_norm else Identity()
        block = BLOCKS.get(cfg.placement, Block)
        self.blocks = nn.ModuleList([block(cfg, i, norm_warmup) for i in range(cfg.layers)])
        self.bidirectional = bidirectional  # an encoder (task mlm): attention sees both ways
        for b in self.blocks:
            b.attn.causal = not bidirectional
        self.final_norm = norm(dyt_alphas(cfg)[1]) if has_final_norm(cfg) else Identity()
        self.measure_resid = False  # when set, the next forward records the residual stream per block
        self.resid_stats: list[torch.Tensor] = []  # per block, (4,): residual_stats
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.logit_scale = Scale(vocab_size, 1.0, cfg.d_model ** -0.5) if ngpt else None  # nGPT's s_z
        self.register_buffer("causal", torch.ones(seq_len, seq_len, dtype=torch.bool).tril_(), persistent=False)
        beta = deepnorm_constants(cfg.layers)[1] if cfg.placement == "deepnorm" else \
            subln_gain(cfg.layers) if cfg.placement == "subln" else 1.0
        init_weights(self, beta)
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight
        if ngpt:
            sphere_project(self)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids; mask (B, T) True on real tokens, None when nothing is padded."""
        B, T = idx.shape
        if mask is None:
            attn_mask = None  # SDPA's own causal kernel, or full attention in an encoder
        elif self.bidirectional:
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, T): every real key, from every query
        else:
            attn_mask = self.causal[:T, :T] & mask[:, None, None, :]  # (B, 1, T, T)
        x = self.embed_output(idx, mask)  # (B, T, d)
        self.resid_stats = []
        for block in self.blocks:
            x = block(x, mask, attn_mask)
            if self.measure_resid:
                self.resid_stats.append(residual_stats(x, mask))
        z = self.head(self.final_norm(x, mask))  # (B, T, vocab)
        if self.logit_scale is not None:
            z = z * self.logit_scale()
        return softcap(z, self.cfg.softcap_output)

    def embed_output(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_0, what the first block receives: the scaled token embedding plus the position's, normed
        where the model has an embedding norm."""
        T = idx.shape[1]
        return self.embed_norm(self.drop(self.embed_scale * self.tok(idx) + self.pos.weight[:T]), mask)

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

    def norm_gains(self) -> list[nn.Parameter]:
        """The stored gains of every built-in norm (block, embedding, final and qk-norms)."""
        from .affine import stored_gain

        norms = tuple(c for c in NORMS.values() if c is not Identity)
        return [g for m in self.modules() if isinstance(m, norms) and (g := stored_gain(m)) is not None]

    def param_groups(self, weight_decay: float, norm_weight_decay: float = 0.0) -> list[dict]:
        """AdamW groups: decay on matrices and embeddings; on the norms' (stored) gains only at
        ``norm_weight_decay`` (a third group, when it is set); never on biases or other scalars."""
        params = list(dict.fromkeys(self.parameters()))  # tied weights once
        gains = {id(g) for g in self.norm_gains()} if norm_weight_decay else set()
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2 and id(p) not in gains], "weight_decay": 0.0}]
        if gains:
            groups.append({"params": [p for p in params if id(p) in gains], "weight_decay": norm_weight_decay})
        return groups
