"""Causal attention kernel choice: FlashAttention 3, else cuDNN / PyTorch SDPA, else CPU SDPA.

All paths take q [B, T, H, D] and k, v [B, T, Hkv, D] (grouped-query attention when
Hkv < H) and return [B, T, H, D]. The choice is made once per process by
``select_attention_backend(device)`` (the trainer calls it before building the model, so
``torch.compile`` traces the chosen path) and reported by ``attention_backend()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Hopper FlashAttention 3, when installed
    from flash_attn_interface import flash_attn_func as _fa3_func
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _fa3_func = None

# backend name, and whether SDPA needs k/v heads repeated (a backend without GQA support)
_ATTN_STATE = {"backend": "", "repeat_kv": False}


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeat_kv: bool) -> torch.Tensor:
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # -> [B, H, T, D] views
    if k.size(1) == q.size(1):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif repeat_kv:
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return y.transpose(1, 2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention, scale 1/sqrt(D), on the selected backend."""
    if _ATTN_STATE["backend"] == "fa3":
        out = _fa3_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out
    return _sdpa(q, k, v, _ATTN_STATE["repeat_kv"])


def varlen_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_seqlen: int) -> torch.Tensor:
    """Causal attention inside the segments of a packed token stream (no attention across them).

    q [N, H, D], k and v [N, Hkv, D]; ``cu_seqlens`` int32 [S + 1]: segment starts, then N (extra
    trailing entries equal to N are padding, allowed so a compiled graph sees few shapes);
    ``max_seqlen``: the longest segment. Returns [N, H, D]. This is the portable reference path
    (one SDPA call per segment); fast kernels replace it per backend.
    """
    bounds = [int(b) for b in cu_seqlens.tolist()]
    out = torch.empty_like(q)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            out[a:b] = _sdpa(q[None, a:b], k[None, a:b], v[None, a:b], _ATTN_STATE["repeat_kv"])[0]
    return out


def _probe_cudnn_gqa(device: torch.device) -> bool:
    """True when the cuDNN SDPA backend runs GQA inputs directly (forward and backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        q = torch.randn(1, 4, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        kv = torch.randn(1, 2, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True).sum().backward()
        torch.cuda.synchronize(device)
        return True
    except Exception:  # noqa: BLE001 - unsupported: fall back to repeating k/v heads
        return False


def _cudnn_sdpa_works(device: torch.device) -> bool:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        q = torch.randn(1, 4, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
        torch.cuda.synchronize(device)
        return True
    except Exception:  # noqa: BLE001
        return False


def select_attention_backend(device: torch.device, prefer: str = "auto") -> str:
    """Pick the kernel for ``device`` and return its name.

    ``fa3``: flash_attn_interface on CUDA. ``sdpa_cudnn``: on Hopper, PyTorch SDPA with the cuDNN
    backend preferred (flash and memory-efficient SDPA are switched off process-wide so that
    compiled graphs trace the cuDNN kernel; math stays on as the fallback for odd shapes).
    ``sdpa``: PyTorch's default SDPA choice on other GPUs. ``sdpa_cpu``: CPU.
    ``prefer`` forces one of ``fa3``/``sdpa`` (tests, benchmarks) where it is available.
    """
    repeat_kv = False
    if device.type != "cuda":
        name = "sdpa_cpu"
    elif _fa3_func is not None and prefer in ("auto", "fa3"):
        name = "fa3"
    elif prefer in ("auto", "sdpa_cudnn") and torch.cuda.get_device_capability(device)[0] == 9 \
            and _cudnn_sdpa_works(device):
        name = "sdpa_cudnn"
        repeat_kv = not _probe_cudnn_gqa(device)
        torch.backends.cuda.enable_cudnn_sdp(True)
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(True)
    else:
        name = "sdpa"
    _ATTN_STATE["backend"] = name
    _ATTN_STATE["repeat_kv"] = repeat_kv
    return name


def attention_backend() -> str:
    """The selected backend's name for the logs (``+repeat_kv`` when GQA is done by copying)."""
    name = _ATTN_STATE["backend"] or "sdpa"
    return name + ("+repeat_kv" if _ATTN_STATE["repeat_kv"] else "")
