"""A tiny stand-in GPT following the model contract in docs/design.md, and a synthetic task to
train it on, for the quantization and artifact tests (independent of trainer/model.py); a helper
that rebuilds an artifact with edits (valid checksum) to reach the loader's later checks."""

from __future__ import annotations

import json
import struct
import types
import zlib

import brotli
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, DIM, LAYERS, HEADS, SEQ = 64, 64, 2, 4, 32
GATE_WINDOW = 12


class Attn(nn.Module):
    def __init__(self, dim: int, heads: int, gate: bool = False):
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_gain = nn.Parameter(torch.ones(heads))
        # the sparse attention output gate: per head, from the first GATE_WINDOW input dims
        self.out_gate = nn.Linear(GATE_WINDOW, heads, bias=False) if gate else None

    def forward(self, x):
        B, T, D = x.shape
        sh = lambda t: t.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        q, k, v = sh(self.c_q(x)), sh(self.c_k(x)), sh(self.c_v(x))
        q = q * self.q_gain[None, :, None, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.out_gate is not None:
            y = y * torch.sigmoid(self.out_gate(x[..., :GATE_WINDOW])).transpose(1, 2).unsqueeze(-1)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, gate: bool = False):
        super().__init__()
        self.attn = Attn(dim, heads, gate)
        self.mlp = MLP(dim)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = x + self.attn_scale * self.attn(F.rms_norm(x, (x.shape[-1],)))
        return x + self.mlp_scale * self.mlp(F.rms_norm(x, (x.shape[-1],)))


class TiedHead(nn.Module):
    """Owns no weight: multiplies by the embedding (as the contract's tied lm_head does)."""

    def __init__(self, owner: nn.Module):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule (deepcopy still follows it)

    def forward(self, x):
        return F.linear(x, self.owner.tok_emb.weight)


class TinyGPT(nn.Module):
    def __init__(self, vocab=VOCAB, dim=DIM, layers=LAYERS, heads=HEADS, seq=SEQ, gates=False):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        nn.init.normal_(self.tok_emb.weight, std=0.3)
        self.blocks = nn.ModuleList([Block(dim, heads, gates) for _ in range(layers)])
        self.lm_head = TiedHead(self)
        self.register_buffer("pos_table", torch.linspace(0, 1, seq * dim).view(seq, dim) * 0.1 + 1e-4 / 3)

    def forward(self, input_ids, target_ids=None):
        x = self.tok_emb(input_ids) + self.pos_table[: input_ids.shape[1]]
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(F.rms_norm(x, (x.shape[-1],))).float()
        if target_ids is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1))


def synthetic_batch(gen: torch.Generator, batch: int = 32, seq: int = SEQ, vocab: int = VOCAB):
    """Sequences mixing a fixed bigram map (an MLP can learn it) and copies of the token two back
    (attention must find it): learnable in a few hundred steps, not trivial."""
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(1234))
    x = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    for t in range(2, seq + 1):
        r = torch.rand(batch, generator=gen)
        x[:, t] = torch.where(r < 0.6, perm[x[:, t - 1]], torch.where(r < 0.9, x[:, t - 2], x[:, t]))
    return x[:, :-1], x[:, 1:]


def train_tiny(steps: int = 300, seed: int = 0, gates: bool = False) -> TinyGPT:
    torch.manual_seed(seed)
    model = TinyGPT(gates=gates)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = synthetic_batch(gen)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def qconfig(**over) -> types.SimpleNamespace:
    """The quantization fields of the hyperparameters (record defaults), with overrides."""
    base = dict(matrix_bits=6, mlp_bits=6, embed_bits=8, matrix_clip_sigmas=12.85, mlp_clip_sigmas=12.85,
                attn_clip_sigmas=12.85, embed_clip_sigmas=20.0, fp16_tensors="", gptq=True,
                gptq_block_size=128, gptq_damp=0.01, gate_bits=0, lqer_rank=0, lqer_top_k=3,
                lqer_factor_bits=4, lqer_group=64)
    base.update(over)
    return types.SimpleNamespace(**base)


def rebuild_artifact(blob: bytes, edit_header=None, edit_raw=None, edit_comp=None) -> bytes:
    """``blob`` (a version-2 artifact whose header and non-lrzip segments are brotli or none)
    reassembled after ``edit_header(header)``, ``edit_raw(i, raw) -> raw`` on decompressed
    segments (recompressed; their declared sizes follow) and ``edit_comp(i, comp) -> comp`` on
    stored segments, with a valid checksum, so that the loader's later checks are reached."""
    fixed = struct.Struct("<8sHBBIIQI")
    magic, version, codec_id, flags, hlen, _hraw, _raw, _crc = fixed.unpack_from(blob, 0)
    header = json.loads(brotli.decompress(blob[32 : 32 + hlen]))
    pos, comps = 32 + hlen, []
    for s in header["segments"]:
        comps.append(blob[pos : pos + s["comp"]])
        pos += s["comp"]
    for i, s in enumerate(header["segments"]):
        if edit_raw is not None and s["codec"] in ("brotli", "none"):
            raw = brotli.decompress(comps[i]) if s["codec"] == "brotli" else comps[i]
            new = edit_raw(i, raw)
            if new != raw:
                comps[i] = brotli.compress(new) if s["codec"] == "brotli" else new
                s["raw"] = len(new)
        if edit_comp is not None:
            comps[i] = edit_comp(i, comps[i])
        s["comp"] = len(comps[i])
    if edit_header is not None:
        edit_header(header)
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h = brotli.compress(hjson)
    body = h + b"".join(comps)
    head = struct.pack("<8sHBBIIQ", magic, version, codec_id, flags, len(h), len(hjson),
                       sum(s["raw"] for s in header["segments"]))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
