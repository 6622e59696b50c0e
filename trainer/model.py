"""The GPT: the 1.0611 stack (PR #1855) and, behind the same switches turned off, the 1.0810 one.

11 layers x 512, 8 query / 4 KV heads, MLP 4x LeakyReLU(0.5)^2, parameter-free RMSNorm, partial
RoPE, layerwise norm scale 1/sqrt(layer+1), learnable per-head QK gain, logit softcap, tied
embeddings, U-Net encoder/decoder skips with sigmoid gates, XSA, depth recurrence. Options, each
behind its setting: GPT-J parallel residuals (PARALLEL_LANES=1) or two residual lanes
(PARALLEL_LANES=2) from PARALLEL_START_LAYER; the sparse attention output gate
(SPARSE_ATTN_GATE); SmearGate with the BOS mask (SMEAR_GATE); document packing (the caller passes
``cu_seqlens``; VARLEN_ATTN makes the trainer and the evaluator do so); shared-specific attention
(SHARED_SPECIFIC_DIMS, PR #1774); a dense headwise output gate (GATED_ATTN); BigramHash. The
``baseline`` preset (relu^2, MLP 2x, full RoPE, no XSA/loops/parallel/skip gates) is the same code
with those switched off.

Contract (docs/design.md): ``forward(input_ids, target_ids=None, cu_seqlens=None, max_seqlen=0)``
gives fp32 softcapped logits or the mean cross-entropy; every 2-D matrix in the blocks is an
``nn.Linear`` (``CastedLinear``) and is always called as a module when it has hooks or the model is
in eval mode (quantization and TTT hook them); the output projection is the submodule ``lm_head``;
on CUDA the residual stream is bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.attention import causal_attention, varlen_causal_attention
from trainer.data import DOC_BOS_ID
from trainer.kernels import linear_leaky_relu2, softcapped_cross_entropy

SMEAR_BOS_ID = DOC_BOS_ID  # SmearGate never mixes the previous token into a document's first token
LANE_RESID_INIT = 1.1  # two-lane residuals: each lane's carry-over weight at init (PR #1530)


class CastedLinear(nn.Linear):
    """fp32 master weight, cast to the input's dtype (bf16 activations on GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class HeadSharedLinear(CastedLinear):
    """Q or K projection of shared-specific attention (PR #1774): the last ``shared`` output rows of
    every head are tied, i.e. the forward uses their mean over heads in each head's place.

    The weight keeps the full ``[heads * head_dim, in]`` shape, as in PR #1774, so Muon sees the
    same matrix; ``bake()`` writes the means into every head (the function is unchanged) so the
    stored copies are identical and compress away."""

    def __init__(self, in_features: int, heads: int, head_dim: int, shared: int):
        super().__init__(in_features, heads * head_dim, bias=False)
        self.heads, self.head_dim, self.shared = heads, head_dim, shared

    def tied_weight(self) -> torch.Tensor:
        w = self.weight.view(self.heads, self.head_dim, -1)
        own = self.head_dim - self.shared
        common = w[:, own:].mean(0, keepdim=True).expand(self.heads, -1, -1)
        return torch.cat((w[:, :own], common), dim=1).reshape(self.heads * self.head_dim, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tied_weight().to(x.dtype))

    @torch.no_grad()
    def bake(self) -> None:
        self.weight.copy_(self.tied_weight())


def _has_hooks(m: nn.Module) -> bool:
    """Whether a call of ``m`` must go through ``m(...)`` (someone observes or changes it)."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


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


def lane_start_position(decoder: list[int] | tuple[int, ...], start_layer: int) -> int:
    """Where two-lane residuals begin in a decoder schedule: the start of its longest tail whose
    layers are all >= ``start_layer`` (``len(decoder)`` when there is none or lanes are off).

    For the 1.0611 stack (decoder [5, 3, 4, 5, 6..10], start 8) that is layers 8, 9, 10, exactly
    the reference's per-layer rule; a schedule that drops below ``start_layer`` again after a lane
    layer (possible with small models and recurrence) keeps those earlier layers single-lane."""
    if start_layer < 0:
        return len(decoder)
    pos = len(decoder)
    while pos > 0 and decoder[pos - 1] >= start_layer:
        pos -= 1
    return pos


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
        if not 0 <= s < d:
            raise ValueError(f"SHARED_SPECIFIC_DIMS={s}: must be in [0, head dim {d})")
        if h.rope_dims % 2 or not 0 < h.rope_dims <= d:
            raise ValueError(f"ROPE_DIMS={h.rope_dims}: need an even number in (0, head dim {d}]")
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, d
        if s:  # shared-specific: the last s dims of every head's q and k are shared by all heads
            self.c_q = HeadSharedLinear(dim, nh, d, s)
            self.c_k = HeadSharedLinear(dim, nkv, d, s)
        else:
            self.c_q = CastedLinear(dim, nh * d, bias=False)
            self.c_k = CastedLinear(dim, nkv * d, bias=False)
        self.c_v = CastedLinear(dim, nkv * d, bias=False)
        self.proj = CastedLinear(nh * d, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((nh,), float(h.qk_gain_init)))
        self.attn_gate = None
        if h.gated_attn:  # headwise sigmoid gate on the attention output (Qiu et al. 2025)
            self.attn_gate = CastedLinear(dim, nh, bias=False)
            self.attn_gate._init_std = 0.01
        # sparse output gate (PR #1787): per head, sigmoid(scale * W x[:window]) of the block's normed
        # input scales that head's output before the projection; zero init
        self.out_gate = None
        if h.sparse_attn_gate:
            if not 0 < h.attn_gate_window <= dim:
                raise ValueError(f"ATTN_GATE_WINDOW={h.attn_gate_window}: must be in (0, MODEL_DIM={dim}]")
            self.out_gate = CastedLinear(h.attn_gate_window, nh, bias=False)
            self.out_gate._zero_init = True
            self.gate_window = h.attn_gate_window
            self.gate_scale = float(h.sparse_attn_gate_scale)
        self.use_xsa = h.xsa_last_n > 0 and layer >= h.num_layers - h.xsa_last_n

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0) -> torch.Tensor:
        b, T, _ = x.shape
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        # separate q/k/v GEMMs: one GEMM over the concatenated weights measured ~2% slower on an
        # H100 (bench/notes-trainer.md), and quantization and TTT hook each Linear
        q = self.c_q(x).view(b, T, nh, d)
        k = self.c_k(x).view(b, T, nkv, d)
        v = self.c_v(x).view(b, T, nkv, d)
        q = apply_partial_rope(F.rms_norm(q, (d,)), cos, sin)
        k = apply_partial_rope(F.rms_norm(k, (d,)), cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        if cu_seqlens is None:
            y = causal_attention(q, k, v)
        else:  # packed documents: the batch is one token stream cut at cu_seqlens
            y = varlen_causal_attention(q.reshape(b * T, nh, d), k.reshape(b * T, nkv, d),
                                        v.reshape(b * T, nkv, d), cu_seqlens, max_seqlen).view(b, T, nh, d)
        if self.use_xsa:
            y = xsa_remove_self(y, v)
        if self.attn_gate is not None:
            y = y * torch.sigmoid(self.attn_gate(x)).unsqueeze(-1)
        if self.out_gate is not None:
            g = torch.sigmoid(self.gate_scale * self.out_gate(x[..., :self.gate_window].contiguous()))
            y = y * g.unsqueeze(-1)
        return self.proj(y.reshape(b, T, nh * d))


class MLP(nn.Module):
    def __init__(self, h):
        super().__init__()
        if h.mlp_act not in ("leaky_relu2", "relu2"):
            raise ValueError(f"MLP_ACT={h.mlp_act!r}: expected leaky_relu2 or relu2")
        hidden = int(h.mlp_mult * h.model_dim)
        self.leaky = h.mlp_act == "leaky_relu2"
        self.fused = bool(h.fused_mlp) and self.leaky
        self.fc = CastedLinear(h.model_dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, h.model_dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and self.training and not _has_hooks(self.fc):
            # fc + LeakyReLU(0.5)^2 in one kernel on CUDA (same function as the branch below)
            return self.proj(linear_leaky_relu2(x, self.fc.weight))
        u = self.fc(x)
        u = F.leaky_relu(u, negative_slope=0.5) if self.leaky else torch.relu(u)
        return self.proj(u.square())


class Block(nn.Module):
    def __init__(self, h, layer: int, lanes: bool = False):
        super().__init__()
        dim = h.model_dim
        self.attn = Attention(h, layer)
        self.mlp = MLP(h)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if h.ln_scale else 1.0
        # GPT-J parallel residual (one lane): attention and MLP read the same normed input
        self.parallel = 0 <= h.parallel_start_layer <= layer and h.parallel_lanes == 1
        # two residual lanes (PR #1530) where this layer runs in the decoder's lane tail: learned
        # carry-over of each lane, and each of the attention / MLP outputs' weight into each lane
        # (lane_post[source, lane])
        self.lane_resid = self.lane_post = None
        if lanes:
            self.lane_resid = nn.Parameter(torch.full((2,), LANE_RESID_INIT))
            self.lane_post = nn.Parameter(torch.ones(2, 2))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        n = F.rms_norm(x, (x.size(-1),))
        return n * self.norm_scale if self.norm_scale != 1.0 else n

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        n = self._norm(x)
        a = self.attn_scale.to(x.dtype) * self.attn(n, cos, sin, cu_seqlens, max_seqlen)
        if self.parallel:
            return x + a + self.mlp_scale.to(x.dtype) * self.mlp(n)
        x = x + a
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self._norm(x))

    def forward_lanes(self, lane0: torch.Tensor, lane1: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor, cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-lane residual block: attention reads lane 0 (mixed with x0), the MLP reads lane 1;
        both outputs are written into both lanes with learned weights."""
        dt = lane0.dtype
        mix = self.resid_mix.to(dt)
        a = self.attn_scale.to(dt) * self.attn(self._norm(mix[0] * lane0 + mix[1] * x0), cos, sin,
                                               cu_seqlens, max_seqlen)
        m = self.mlp_scale.to(dt) * self.mlp(self._norm(lane1))
        r, p = self.lane_resid.to(dt), self.lane_post.to(dt)
        return (r[0] * lane0 + p[0, 0] * a + p[1, 0] * m,
                r[1] * lane1 + p[0, 1] * a + p[1, 1] * m)


class TiedHead(nn.Module):
    """Output projection through the token embedding; owns no weight (quantization hooks it)."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        object.__setattr__(self, "_emb", emb)  # a reference, not a submodule: no duplicate state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._emb.weight.to(x.dtype))


class SmearGate(nn.Module):
    """x_t += lam * sigmoid(W x_t[:window]) * x_{t-1} on the token embeddings, except where token t
    is a BOS (a document's first token never sees the previous document). Zero init: identity."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.window = min(window, dim)
        self.proj = CastedLinear(self.window, 1, bias=False)
        self.proj._zero_init = True
        self.lam = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        cur = x[:, 1:]
        g = self.lam.to(x.dtype) * torch.sigmoid(self.proj(cur[..., :self.window].contiguous()))
        keep = (input_ids[:, 1:] != SMEAR_BOS_ID).to(x.dtype).unsqueeze(-1)
        return torch.cat((x[:, :1], cur + g * x[:, :-1] * keep), dim=1)


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
        if h.parallel_lanes not in (1, 2):
            raise ValueError(f"PARALLEL_LANES={h.parallel_lanes}: expected 1 or 2")
        if h.parallel_final_lane not in ("mean", "attn", "mlp"):
            raise ValueError(f"PARALLEL_FINAL_LANE={h.parallel_final_lane!r}: expected mean, attn or mlp")
        dim = h.model_dim
        self.vocab_size = h.vocab_size
        self.logit_softcap = float(h.logit_softcap)
        self.fused_ce = bool(h.fused_ce)
        self.varlen_attn = bool(h.varlen_attn)  # callers pass document bounds (trainer.data.doc_cu_seqlens)
        self.doc_bos_id = DOC_BOS_ID
        self.act_dtype = torch.bfloat16  # residual-stream dtype on CUDA
        self.tok_emb = nn.Embedding(h.vocab_size, dim)
        self.bigram = BigramHash(h.bigram_hash_buckets, h.bigram_hash_dim, dim) \
            if h.bigram_hash_buckets > 0 else None
        self.smear = SmearGate(dim, h.attn_gate_window) if h.smear_gate else None
        self._sched = {on: tuple(tuple(s) for s in
                                 layer_schedule(L, h.loop_start, h.loop_end, h.num_loops, on))
                       for on in (False, True)}
        lanes_from = h.parallel_start_layer if h.parallel_lanes == 2 else -1
        self._lane_pos = {on: lane_start_position(self._sched[on][1], lanes_from) for on in (False, True)}
        lane_layers = {i for on in (False, True) for i in self._sched[on][1][self._lane_pos[on]:]}
        self.blocks = nn.ModuleList([Block(h, i, lanes=i in lane_layers) for i in range(L)])
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
        self.final_lane = h.parallel_final_lane
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

    @torch.no_grad()
    def bake_shared_heads(self) -> None:
        """Shared-specific attention: store each shared row's mean in every head (same function)."""
        for m in self.modules():
            if isinstance(m, HeadSharedLinear):
                m.bake()

    # --- forward ------------------------------------------------------------------------
    def _skip(self, x: torch.Tensor, j: int, skips: list[torch.Tensor]) -> torch.Tensor:
        s = self.skip_weights[j].to(x.dtype) * skips.pop()
        if self.skip_gates is not None:
            return torch.lerp(s, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))
        return x + s

    def hidden(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
               max_seqlen: int = 0) -> torch.Tensor:
        """Final normed hidden states [B, T, dim] (the input of ``lm_head``).

        ``cu_seqlens`` (int32, see trainer.attention.varlen_causal_attention): document bounds in
        the flattened ``B * T`` tokens; attention then stays inside each segment. ``max_seqlen``:
        a bound on the segment length (0: computed here, a host sync)."""
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        if x.is_cuda:
            x = x.to(self.act_dtype)
        if self.smear is not None:
            x = self.smear(x, input_ids)
        x = F.rms_norm(x, (x.size(-1),))
        x0 = x
        T = input_ids.size(1)
        if cu_seqlens is not None and max_seqlen <= 0:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if T <= self.rope_cos.size(0):
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:  # longer than any configured sequence: build the tables for this length
            cos, sin = (t.to(x.device) for t in rope_tables(self.rope_dims, self.rope_base, T))
        cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
        enc, dec = self._sched[self.recurrence_on]
        lane_pos = self._lane_pos[self.recurrence_on]
        skips = []
        for i in enc:
            x = self.blocks[i](x, x0, cos, sin, cu_seqlens, max_seqlen)
            skips.append(x)
        for j, i in enumerate(dec[:lane_pos]):
            if j < self.num_skips and skips:
                x = self._skip(x, j, skips)
            x = self.blocks[i](x, x0, cos, sin, cu_seqlens, max_seqlen)
        if lane_pos < len(dec):
            lane0 = lane1 = x  # the U-Net skips feed lane 0 only
            for j in range(lane_pos, len(dec)):
                if j < self.num_skips and skips:
                    lane0 = self._skip(lane0, j, skips)
                lane0, lane1 = self.blocks[dec[j]].forward_lanes(lane0, lane1, x0, cos, sin, cu_seqlens,
                                                                 max_seqlen)
            if self.final_lane == "attn":
                x = lane0
            elif self.final_lane == "mlp":
                x = lane1
            else:
                x = 0.5 * (lane0 + lane1)
        return F.rms_norm(x, (x.size(-1),))

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0) -> torch.Tensor:
        raw = self.lm_head(self.hidden(input_ids, cu_seqlens, max_seqlen))
        if target_ids is not None and self.fused_ce and self.training:
            # softcap + cross-entropy in one pass over the logits on CUDA (same function as below)
            return softcapped_cross_entropy(raw.reshape(-1, raw.size(-1)), target_ids.reshape(-1),
                                            self.logit_softcap)
        logits = raw.float()
        logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        if target_ids is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1))
