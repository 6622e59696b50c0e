"""Stand-in for FlashAttention 3's ``flash_attn_interface`` so the reference trainers run without it.

Benchmark-only (bench/ref_compare.py and bench/parity.py put this folder on PYTHONPATH): both
entry points route to the project's own attention backends (trainer/attention.py), so a
side-by-side run of a reference script and ours uses the same attention kernel and differs only
in everything else. ``PGOLF_SHIM_BACKEND`` picks the backend (default: auto).
"""

from __future__ import annotations

import os

import torch

from trainer.attention import causal_attention, select_attention_backend, varlen_causal_attention

_SELECTED: dict[str, str] = {}


def _select(device: torch.device) -> None:
    _SELECTED["name"] = select_attention_backend(device, os.environ.get("PGOLF_SHIM_BACKEND", "auto"))


# chosen at import, outside any compiled graph: the selection imports modules and probes kernels,
# which dynamo refuses to trace (the first call usually happens inside the reference's compiled model)
if torch.cuda.is_available():
    _select(torch.device("cuda", torch.cuda.current_device()))


def _ensure_backend(t: torch.Tensor) -> None:
    if "name" not in _SELECTED:
        _select(t.device)


def flash_attn_func(q, k, v, causal=True, **_kwargs):
    """q [B,T,H,D], k/v [B,T,Hkv,D] -> [B,T,H,D] (causal only, as the references call it)."""
    if not causal:
        raise NotImplementedError("the shim implements causal attention only")
    _ensure_backend(q)
    return causal_attention(q, k, v)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True,
                           **_kwargs):
    """Packed q [N,H,D], k/v [N,Hkv,D] with cumulative segment starts -> [N,H,D]."""
    if not causal or cu_seqlens_q is not cu_seqlens_k and not torch.equal(cu_seqlens_q, cu_seqlens_k):
        raise NotImplementedError("the shim implements causal self-attention with one cu_seqlens only")
    _ensure_backend(q)
    return varlen_causal_attention(q, k, v, cu_seqlens_q, int(max_seqlen_q))
