"""The catalogue: the names a recipe may use (norms, placements, tasks) and what each means.

A leaf: it imports nothing of normbench, so the config, the plugin registry, the norms and the CLI
(``normbench list``) read the same names without importing each other or torch. The norms'
classes are in norms.py (``norms.NORMS``), keyed by these names.
"""
from __future__ import annotations

NORMS = {
    "layernorm": "LayerNorm over d_model (nn.LayerNorm): per-token mean and variance, gain and bias",
    "layernorm_nobias": "LayerNorm without the bias (nn.LayerNorm(bias=False))",
    "rmsnorm": "RMSNorm (nn.RMSNorm): x/rms(x) with a gain, no centring",
    "scalenorm": "ScaleNorm: g*x/||x||, one scalar gain g initialised to sqrt(d_model)",
    "dyt": "Dynamic Tanh: gamma*tanh(alpha*x)+beta, scalar alpha initialised to model.dyt_alpha "
           "(model.dyt_alpha_ffn for the norms not in front of attention)",
    "dyt_nobias": "Dynamic Tanh without beta, as the DyT LLaMA code: gamma*tanh(alpha*x)",
    "derf": "Dynamic erf (Chen et al. 2025): gamma*erf(alpha*x + s) + beta, scalars alpha (init 0.5) and s (init 0)",
    "batchnorm": "BatchNorm over all B*T token positions, padding included (nn.BatchNorm1d)",
    "batchnorm_masked": "BatchNorm with statistics from non-padding tokens only (PowerNorm's MaskBN)",
    "batchnorm_causal": "BatchNorm that normalises with running statistics of earlier steps only (updated after "
                        "use, from non-padding tokens): causal within a step, unlike batchnorm",
    "powernorm": "PowerNorm (Shen et al. 2020) as its official code: per-head group scaling, then x/sqrt(psi^2) "
                 "without centring, psi^2 the batch quadratic mean of real tokens during train.warmup_steps and the "
                 "running one after, with its approximate backward",
    "none": "no normalization (identity)",
}
# norms whose training-mode output at one position depends on other positions of the batch (later
# tokens included): the training loss of a causal LM is then optimistic (docs/conventions.md: causality)
LEAKY_NORMS = ("batchnorm", "batchnorm_masked", "powernorm")  # powernorm: during its warmup (batch statistics)
PLACEMENTS = {
    "pre": "Pre-LN: x + F(norm(x)), plus a final norm",
    "post": "Post-LN: norm(x + F(x))",
    "sandwich": "Peri-LN (sandwich; Gemma 2, Kim et al. 2025): x + norm(F(norm(x))), plus a final norm",
    "deepnorm": "DeepNorm: norm(alpha*x + F(x)), alpha=(2N)^(1/4), FFN/value/output init scaled by beta=(8N)^(-1/4)",
    "mixln": "Mix-LN (Li et al. 2024): the first floor(model.mixln_ratio*N) blocks Post-LN, the rest Pre-LN, "
             "plus a final norm",
    "lns": "LayerNorm Scaling (Sun et al. 2025): Pre-LN with each block's norm outputs times 1/sqrt(l), "
           "l the 1-based layer",
    "outnorm": "OLMo 2's reordered norm: x + norm(F(x)), no norm on the branch input, plus a final norm",
    "subln": "SubLN (Magneto, Wang et al. 2022): Pre-LN plus a norm inside each branch (before attention's output "
             "projection, after the MLP's activation); fc1, fc2, value and output projections init times "
             "sqrt(ln 2N)",
    "hybridnorm": "HybridNorm (Zhuo et al. 2025): y = x + Attn(x) with q, k and v each normalised per head "
                  "(QKV-norm, model.norm) and no norm on attention's input, then Norm(y) + MLP(Norm(y)) (the MLP's "
                  "residual starts from the normed stream, as the paper's code); a final norm",
    "ngpt": "the normalized Transformer, nGPT (Loshchilov et al. 2024): h <- Norm(h + alpha*(Norm(F(h)) - h)) "
            "with L2 norms, per-channel alpha (eigen learning rates, init 0.05, stored scaled by 1/sqrt(d)); "
            "q and k L2-normalised then scaled by s_qk, softmax scale sqrt(d_head); MLP input scaled by "
            "s_v*sqrt(d); logits times s_z; embeddings and every matrix along d_model back on the unit sphere "
            "after each step. Needs model.norm none, model.bias false, model.embed_scale none, "
            "model.tie_embeddings false, train.weight_decay 0",
}
# a run folder's weights: its last checkpoint (train.checkpoint_every; removed once the run is complete)
# and its final weights (train.save_final)
CHECKPOINT, WEIGHTS = "checkpoint.pt", "model.pt"
INITS = {
    "xavier": "Xavier-normal, zero biases (fairseq: Xiong et al., DeepNet)",
    "gpt2": "N(0, 0.02), the residual projections times 1/sqrt(2N), zero biases (GPT-2, nanoGPT)",
    "torch": "PyTorch's nn.Linear default: uniform, std 1/sqrt(3*fan_in), biases too",
    "depth_scaled": "torchtitan: N(0, 0.02), the residual projections of block l N(0, 0.02/sqrt(2(l+1)))",
    "admin": "Admin (Liu et al. 2020), placement post: Xavier, then each skip x*omega_i set by one profiling "
             "forward: omega_1 = 1, omega_{i+1} = sqrt(Var(x_i omega_i) + Var F_i)",
    "tfixup": "T-Fixup (Huang et al. 2020), model.norm none: Xavier, embeddings N(0, d^-1/2), v, output, MLP "
              "and embeddings times (9N)^-1/4",
}
# tasks trained as an encoder (bidirectional attention): no causal leak to warn of or to measure
ENCODER_TASKS = ("mlm",)
# placements whose every norm slot would be an identity with model.norm: none (a plain residual stack)
NEEDS_A_NORM = ("deepnorm", "mixln", "lns", "outnorm", "subln", "hybridnorm")
TASKS = {
    "charlm": "character LM on the Python standard library's own .py files (built in, no download)",
    "text": "character LM on your own UTF-8 text file (data.path)",
    "prose": "LM on natural English built in: the Python documentation topics (pydoc_data, ~465k characters)",
    "tokens": "LM on pre-tokenised files (data.path: nanoGPT's train.bin/val.bin or modded-nanogpt's shards)",
    "copy": "synthetic: random symbols, a separator, then the same symbols again (loss on the copy)",
    "reverse": "synthetic: random symbols, a separator, then the symbols reversed (loss on the answer)",
    "mlm": "masked language modelling, BERT's encoder task, on the built-in code or prose (data.corpus) or "
           "data.path's text: "
           "bidirectional attention; data.mask_rate of the tokens selected (80% masked, 10% random, 10% kept), "
           "the loss on them",
}
# keys that act only after step 0 (the schedule, the optimizer...): a measurement taken at
# initialisation is the same for every value of them, so it is never split by them
AFTER_INIT = {"train.steps", "train.lr", "train.warmup_steps", "train.schedule", "train.min_lr_ratio",
              "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip", "train.eval_every",
              "train.eval_tokens", "train.measure_every", "train.spike_factor", "train.spike_window",
              "train.divergence_margin"}
