"""The GPT: the published 1.0810 record's stack, with the newer options behind flags.

11 layers x 512, 8 query / 4 KV heads, MLP 4x LeakyReLU(0.5)^2, parameter-free RMSNorm, partial
RoPE, layerwise norm scale 1/sqrt(layer+1), learnable per-head QK gain, logit softcap, tied
embeddings, U-Net encoder/decoder skips with sigmoid gates, XSA, depth recurrence, GPT-J
parallel residuals. The ``baseline`` preset (relu^2, MLP 2x, full RoPE, no XSA/loops/parallel/
skip gates) is the same code with those switched off.

Contract (docs/design.md): ``forward(input_ids, target_ids=None)`` gives fp32 softcapped logits
or the mean cross-entropy; every 2-D matrix in the blocks is an ``nn.Linear`` (``CastedLinear``);
the output projection is the submodule ``lm_head``; on CUDA the residual stream is bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.attention import causal_attention

SMEAR_BOS_ID = 1  # <s> in the challenge's SentencePiece models; documents start with it
SMEAR_WINDOW = 12  # SmearGate reads the first dims of each embedding


class CastedLinear(nn.Linear):
    """fp32 master weight, cast to the input's dtype (bf16 activations on GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def layer_schedule(num_layers: int, loop_start: int, loop_end: int, num_loops: int,
                   recurrence_on: bool) -> tuple[list[int], list[int]]:
    """Physical layer indices run by the encoder and decoder halves.

    With recurrence on, layers ``loop_start..loop_end`` run ``num_loops`` extra times
    (11 layers, 3..5, 2 extra -> 17 virtual: encoder [0..5, 3, 4], decoder [5, 3, 4, 5, 6..10]).
    """
    if not recurrence_on or num_loops <= 0:
        half = num_layers // 2
        return list(range(half)), list(range(half, num_layers))
    seg = list(range(loop_start, loop_end + 1))
    seq = list(range(loop_start)) + seg * (num_loops + 1) + list(range(loop_end + 1, num_layers))
    half = len(seq) // 2
    return seq[:half], seq[half:]


def rope_tables(rope_dims: int, base: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos, sin [T, rope_dims/2] for positions 0..T-1."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rope_dims, 2, dtype=torch.float64) / rope_dims))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return freqs.cos().float(), freqs.sin().float()


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.size(-1)`` dims of each head ([B, T, H, D]); the rest pass."""
    half = cos.size(-1)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def xsa_remove_self(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exclusive self-attention: subtract from each head's output at each position its
    projection onto that position's own value vector (the KV head of its group).
    y [B, T, H, D], v [B, T, Hkv, D]."""
    b, t, h, d = y.shape
    hkv = v.size(2)
    yg = y.reshape(b, t, hkv, h // hkv, d)
    vn = F.normalize(v, dim=-1).unsqueeze(3)
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).reshape(b, t, h, d)


class Attention(nn.Module):
    def __init__(self, h, layer: int):
        super().__init__()
        dim, nh, nkv = h.model_dim, h.num_heads, h.num_kv_heads
        if dim % nh or nh % nkv:
            raise ValueError(f"MODEL_DIM={dim}, NUM_HEADS={nh}, NUM_KV_HEADS={nkv}: "
                             "heads must divide the width and KV heads the heads")
        d = dim // nh
        s = h.shared_specific_dims
        if not 0 <= s < d or h.rope_dims % 2 or not 0 < h.rope_dims <= d - s:
            raise ValueError(f"ROPE_DIMS={h.rope_dims}, SHARED_SPECIFIC_DIMS={s}: need an even "
                             f"ROPE_DIMS in (0, {d} - SHARED_SPECIFIC_DIMS]")
        self.num_heads, self.num_kv_heads, self.head_dim, self.shared_dims = nh, nkv, d, s
        # shared-specific: each head's q/k = its own (d - s) dims + s dims shared by all heads
        self.c_q = CastedLinear(dim, nh * (d - s) + s, bias=False)
        self.c_k = CastedLinear(dim, nkv * (d - s) + s, bias=False)
        self.c_v = CastedLinear(dim, nkv * d, bias=False)
        self.proj = CastedLinear(nh * d, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((nh,), float(h.qk_gain_init)))
        self.attn_gate = None
        if h.gated_attn:  # headwise sigmoid gate on the attention output (Qiu et al. 2025)
            self.attn_gate = CastedLinear(dim, nh, bias=False)
            self.attn_gate._init_std = 0.01
        self.use_xsa = h.xsa_last_n > 0 and layer >= h.num_layers - h.xsa_last_n

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        b, T, _ = t.shape
        d, s = self.head_dim, self.shared_dims
        if s == 0:
            return t.reshape(b, T, n, d)
        own = t[..., :n * (d - s)].reshape(b, T, n, d - s)
        shared = t[..., n * (d - s):].unsqueeze(2).expand(b, T, n, s)
        return torch.cat((own, shared), dim=-1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, T, _ = x.shape
        # separate q/k/v GEMMs: one GEMM over the concatenated weights measured ~2% slower on an
        # H100 (bench/notes-trainer.md), and quantization hooks each Linear
        q = self._heads(self.c_q(x), self.num_heads)
        k = self._heads(self.c_k(x), self.num_kv_heads)
        v = self.c_v(x).view(b, T, self.num_kv_heads, self.head_dim)
        q = apply_partial_rope(F.rms_norm(q, (self.head_dim,)), cos, sin)
        k = apply_partial_rope(F.rms_norm(k, (self.head_dim,)), cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        y = causal_attention(q, k, v)
        if self.use_xsa:
            y = xsa_remove_self(y, v)
        if self.attn_gate is not None:
            y = y * torch.sigmoid(self.attn_gate(x)).unsqueeze(-1)
        return self.proj(y.reshape(b, T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, h):
        super().__init__()
        if h.mlp_act not in ("leaky_relu2", "relu2"):
            raise ValueError(f"MLP_ACT={h.mlp_act!r}: expected leaky_relu2 or relu2")
        hidden = int(h.mlp_mult * h.model_dim)
        self.leaky = h.mlp_act == "leaky_relu2"
        self.fc = CastedLinear(h.model_dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, h.model_dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.fc(x)
        u = F.leaky_relu(u, negative_slope=0.5) if self.leaky else torch.relu(u)
        return self.proj(u.square())


class Block(nn.Module):
    def __init__(self, h, layer: int):
        super().__init__()
        dim = h.model_dim
        self.attn = Attention(h, layer)
        self.mlp = MLP(h)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if h.ln_scale else 1.0
        # GPT-J parallel residual: attention and MLP read the same normed input
        self.parallel = 0 <= h.parallel_start_layer <= layer

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        n = F.rms_norm(x, (x.size(-1),))
        return n * self.norm_scale if self.norm_scale != 1.0 else n

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        n = self._norm(x)
        a = self.attn_scale.to(x.dtype) * self.attn(n, cos, sin)
        if self.parallel:
            return x + a + self.mlp_scale.to(x.dtype) * self.mlp(n)
        x = x + a
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self._norm(x))


class TiedHead(nn.Module):
    """Output projection through the token embedding; owns no weight (quantization hooks it)."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        object.__setattr__(self, "_emb", emb)  # a reference, not a submodule: no duplicate state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._emb.weight.to(x.dtype))


class SmearGate(nn.Module):
    """Adds to each token's embedding a gated share of the previous token's (not across a BOS)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(SMEAR_WINDOW, 1, bias=False)
        self.proj._zero_init = True
        self.lam = nn.Parameter(torch.zeros(1))
        self.window = min(SMEAR_WINDOW, dim)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        cur = x[:, 1:]
        g = self.lam.to(x.dtype) * torch.sigmoid(F.linear(cur[..., :self.window],
                                                           self.proj.weight[:, :self.window].to(x.dtype)))
        keep = (input_ids[:, 1:] != SMEAR_BOS_ID).to(x.dtype).unsqueeze(-1)
        return torch.cat((x[:, :1], cur + g * keep * x[:, :-1]), dim=1)


class BigramHash(nn.Module):
    """Embedding of a hash of (previous token, token), projected to the model width."""

    def __init__(self, buckets: int, dim: int, model_dim: int):
        super().__init__()
        if buckets < 2:
            raise ValueError(f"BIGRAM_HASH_BUCKETS={buckets}: need at least 2")
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        nn.init.zeros_(self.embed.weight)  # starts as a no-op; the projection learns from step 1
        self.proj = CastedLinear(dim, model_dim, bias=False) if dim != model_dim else None
        self.scale = nn.Parameter(torch.tensor(0.05))

    def bucket_ids(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.to(torch.int64)
        mod = self.buckets - 1
        pair = torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % mod
        return torch.cat((torch.full_like(t[:, :1], mod), pair), dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(self.bucket_ids(ids))
        if self.proj is not None:
            e = self.proj(e)
        return e * self.scale.to(e.dtype)


class GPT(nn.Module):
    def __init__(self, h):
        super().__init__()
        L = h.num_layers
        if h.num_loops > 0 and not 0 <= h.loop_start <= h.loop_end < L:
            raise ValueError(f"LOOP_START={h.loop_start}, LOOP_END={h.loop_end}: need "
                             f"0 <= LOOP_START <= LOOP_END < NUM_LAYERS={L}")
        if h.logit_softcap <= 0:
            raise ValueError(f"LOGIT_SOFTCAP={h.logit_softcap}: must be > 0")
        dim = h.model_dim
        self.vocab_size = h.vocab_size
        self.logit_softcap = float(h.logit_softcap)
        self.act_dtype = torch.bfloat16  # residual-stream dtype on CUDA
        self.tok_emb = nn.Embedding(h.vocab_size, dim)
        self.bigram = BigramHash(h.bigram_hash_buckets, h.bigram_hash_dim, dim) \
            if h.bigram_hash_buckets > 0 else None
        self.smear = SmearGate(dim) if h.smear_gate else None
        self.blocks = nn.ModuleList([Block(h, i) for i in range(L)])
        if h.tie_embeddings:
            self.lm_head = TiedHead(self.tok_emb)
        else:
            self.lm_head = CastedLinear(dim, h.vocab_size, bias=False)
            self.lm_head._zero_init = True
        # RoPE tables precomputed once (computing cos/sin inside the fused kernels made the q/k
        # norm+rotary kernels compute-bound: ~5x slower than their memory traffic on an H100)
        self.rope_dims, self.rope_base = h.rope_dims, float(h.rope_base)
        cos, sin = rope_tables(h.rope_dims, h.rope_base, max(h.train_seq_len, h.eval_seq_len))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._sched = {on: tuple(tuple(s) for s in
                                 layer_schedule(L, h.loop_start, h.loop_end, h.num_loops, on))
                       for on in (False, True)}
        self.has_loops = h.num_loops > 0
        self.recurrence_on = False
        enc, dec = self._sched[self.has_loops]
        self.num_skips = min(len(enc), len(dec))
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips, dim))
        self.skip_gates = nn.Parameter(torch.zeros(self.num_skips, dim)) if h.skip_gates else None
        self._init_weights(h)

    def _init_weights(self, h) -> None:
        if h.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=h.tied_embed_init_std)
        ortho = h.preset != "baseline"  # the naive baseline kept PyTorch's default Linear init
        for m in self.modules():
            if not isinstance(m, nn.Linear):
                continue
            if getattr(m, "_zero_init", False):
                nn.init.zeros_(m.weight)
            elif hasattr(m, "_init_std"):
                nn.init.normal_(m.weight, std=m._init_std)
            elif ortho and min(m.weight.shape) >= 64:
                nn.init.orthogonal_(m.weight)

    # --- depth recurrence ---------------------------------------------------------------
    def set_recurrence(self, on: bool) -> None:
        """Run the looped layers (LOOP_START..LOOP_END) NUM_LOOPS extra times from now on."""
        self.recurrence_on = bool(on) and self.has_loops

    @property
    def encoder_indices(self) -> list[int]:
        return list(self._sched[self.recurrence_on][0])

    @property
    def decoder_indices(self) -> list[int]:
        return list(self._sched[self.recurrence_on][1])

    @property
    def virtual_layers(self) -> int:
        enc, dec = self._sched[self.recurrence_on]
        return len(enc) + len(dec)

    # --- forward ------------------------------------------------------------------------
    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states [B, T, dim] (the input of ``lm_head``)."""
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        if x.is_cuda:
            x = x.to(self.act_dtype)
        x = F.rms_norm(x, (x.size(-1),))
        if self.smear is not None:
            x = self.smear(x, input_ids)
        x0 = x
        T = input_ids.size(1)
        if T <= self.rope_cos.size(0):
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:  # longer than any configured sequence: build the tables for this length
            cos, sin = (t.to(x.device) for t in rope_tables(self.rope_dims, self.rope_base, T))
        cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
        enc, dec = self._sched[self.recurrence_on]
        skips = []
        for i in enc:
            x = self.blocks[i](x, x0, cos, sin)
            skips.append(x)
        for j, i in enumerate(dec):
            if j < self.num_skips and skips:
                s = self.skip_weights[j].to(x.dtype) * skips.pop()
                if self.skip_gates is not None:
                    x = torch.lerp(s, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))
                else:
                    x = x + s
            x = self.blocks[i](x, x0, cos, sin)
        return F.rms_norm(x, (x.size(-1),))

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.lm_head(self.hidden(input_ids)).float()
        logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        if target_ids is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1))
