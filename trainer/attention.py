"""Causal attention kernels: FlashAttention 4, FlashAttention 3, cuDNN SDPA, PyTorch SDPA.

Dense path ``causal_attention``: q [B, T, H, D], k and v [B, T, Hkv, D] (grouped-query attention
when Hkv < H) -> [B, T, H, D], scale 1/sqrt(D). Packed path ``varlen_causal_attention``: q [N, H, D],
k and v [N, Hkv, D] with segment boundaries ``cu_seqlens``; causal inside each segment, nothing
across segments.

``select_attention_backend(device, prefer)`` chooses once per process, before the model is compiled
(``torch.compile`` then traces the chosen path). A candidate is used only where it imports AND passes
a numerical probe: a small forward+backward (dense, and packed with an empty and a one-token segment)
against a float32 reference. ``auto`` on CUDA tries fa4, fa3, sdpa_cudnn, sdpa for the dense path;
the packed path takes fa4 or fa3 when they pass, else FlexAttention with a document block mask, else
the per-segment reference loop. A forced choice that is unavailable or fails its probe is an error
(one line); ``auto`` falls back and says why in ``attention_notes()`` and, for failures of an
installed kernel, in the bracketed part of ``attention_backend()``.

FlashAttention 4 (``flash_attn.cute``, CuTe DSL kernels compiled just in time) runs behind
``torch.library`` custom ops, ``pgolf_attn::fa4_fwd`` / ``fa4_bwd`` / ``fa4_varlen_fwd`` /
``fa4_varlen_bwd``: dynamo cannot trace FA4's own ``autograd.Function`` (it calls a function that
dynamo skips), while a custom op with a fake implementation and a registered backward traces with
``fullgraph=True``. The forward op returns the log-sum-exp that FA4's backward needs; on CPU the ops
run an explicit float32 stand-in (the same function), so their registration is testable anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

ATTENTION_CHOICES = ("auto", "fa4", "fa3", "sdpa_cudnn", "sdpa")
_DENSE_ORDER = ("fa4", "fa3", "sdpa_cudnn", "sdpa")
_PROBE_TOL = 2e-2  # ||out - ref|| / ||ref|| limit of a probe; bf16 kernels land near 3e-3


class AttentionBackendError(ValueError):
    """A forced ATTENTION_BACKEND cannot run here (the message is one line)."""


class BackendUnavailable(Exception):
    """A candidate kernel is not present on this machine (not an error under ``auto``)."""


# the selection: callables of the dense and packed paths, names for the logs, why others were passed over
_ATTN_STATE: dict = {"backend": "", "repeat_kv": False, "dense": None, "varlen": None, "varlen_name": "",
                     "failed": [], "notes": [], "device_type": ""}
_FA3: dict = {}  # flash_attn_interface functions once loaded


# ---------------------------------------------------------------------------------------------
# float32 reference (the probes' oracle, and the CPU stand-in of the FA4 custom ops)


def _repeat_heads(t: torch.Tensor, rep: int) -> torch.Tensor:
    return t if rep == 1 else t.repeat_interleave(rep, dim=1)


def _ref_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Masked scaled scores [B, H, T, T] in float32 from q [B, T, H, D], k [B, T, Hkv, D]."""
    qf, kf = q.float().transpose(1, 2), k.float().transpose(1, 2)
    kf = _repeat_heads(kf, qf.size(1) // kf.size(1))
    s = (qf @ kf.transpose(-1, -2)) * (1.0 / math.sqrt(q.size(-1)))
    t = q.size(1)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return s.masked_fill(~causal, float("-inf"))


def reference_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention in float32: (out [B, T, H, D] in q's dtype, lse [B, H, T] float32)."""
    s = _ref_scores(q, k)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    vf = v.float().transpose(1, 2)
    vf = _repeat_heads(vf, s.size(1) // vf.size(1))
    out = (p @ vf).transpose(1, 2).to(q.dtype).contiguous()
    return out, lse.contiguous()


def reference_attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                            lse: torch.Tensor, dout: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of the causal attention, explicit float32 formulas (as FA computes:
    P from the saved lse, delta = rowsum(dO * O))."""
    h, hkv = q.size(2), k.size(2)
    rep = h // hkv
    p = torch.exp(_ref_scores(q, k) - lse.float()[..., None])
    qf = q.float().transpose(1, 2)
    kf = _repeat_heads(k.float().transpose(1, 2), rep)
    vf = _repeat_heads(v.float().transpose(1, 2), rep)
    do = dout.float().transpose(1, 2)
    of = out.float().transpose(1, 2)
    scale = 1.0 / math.sqrt(q.size(-1))
    dv = p.transpose(-1, -2) @ do
    ds = p * ((do @ vf.transpose(-1, -2)) - (do * of).sum(-1, keepdim=True))
    dq = (ds @ kf) * scale
    dk = (ds.transpose(-1, -2) @ qf) * scale
    b, _, t, d = dk.shape
    dk = dk.view(b, hkv, rep, t, d).sum(2)
    dv = dv.view(b, hkv, rep, t, v.size(-1)).sum(2)
    return (dq.transpose(1, 2).to(q.dtype).contiguous(), dk.transpose(1, 2).to(k.dtype).contiguous(),
            dv.transpose(1, 2).to(v.dtype).contiguous())


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = [int(b) for b in cu_seqlens.tolist()]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def reference_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed causal attention in float32, one segment at a time: (out [N, H, D], lse [H, N])."""
    out = torch.zeros_like(q)
    lse = torch.full((q.size(1), q.size(0)), float("-inf"), dtype=torch.float32, device=q.device)
    for a, b in _segments(cu_seqlens):
        o, s = reference_attention_fwd(q[None, a:b], k[None, a:b], v[None, a:b])
        out[a:b], lse[:, a:b] = o[0], s[0]
    return out, lse


def reference_varlen_bwd(q, k, v, out, lse, dout, cu_seqlens):
    """Gradients of ``reference_varlen_fwd`` (zero for tokens outside every segment)."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for a, b in _segments(cu_seqlens):
        g = reference_attention_bwd(q[None, a:b], k[None, a:b], v[None, a:b], out[None, a:b],
                                    lse[None, :, a:b], dout[None, a:b])
        dq[a:b], dk[a:b], dv[a:b] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# FlashAttention 4 behind custom ops


def _attn_custom_op(qualname: str, schema: str, impl: Callable, fake: Callable) -> None:
    """Define ``qualname`` once per process (the packed bundle and trainer.attention may both be
    loaded in one interpreter: the second definition reuses the first, which is the same code)."""
    ns, name = qualname.split("::")
    if getattr(getattr(torch.ops, ns), name, None) is not None:
        return
    op = torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    return op


def _dense16(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned, as FA4's CuTe tensors assume (a view with an odd storage
    offset is copied)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _fa4_fwd_impl(q, k, v):
    if not q.is_cuda:
        return reference_attention_fwd(q, k, v)
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse = _flash_attn_fwd(_dense16(q), _dense16(k), _dense16(v), causal=True, return_lse=True)[:2]
    return out, lse


def _fa4_fwd_fake(q, k, v):
    b, t, h, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((b, h, t), dtype=torch.float32)


def _fa4_bwd_impl(q, k, v, out, lse, dout):
    if not q.is_cuda:
        return reference_attention_bwd(q, k, v, out, lse, dout)
    from flash_attn.cute.interface import _flash_attn_bwd

    dq, dk, dv = _flash_attn_bwd(_dense16(q), _dense16(k), _dense16(v), _dense16(out), _dense16(dout),
                                 _dense16(lse), softmax_scale=None, causal=True)[:3]
    return dq, dk, dv


def _fa4_bwd_fake(q, k, v, out, lse, dout):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fa4_varlen_fwd_impl(q, k, v, cu_seqlens, max_seqlen):
    if not q.is_cuda:
        return reference_varlen_fwd(q, k, v, cu_seqlens)
    from flash_attn.cute.interface import _flash_attn_fwd

    cu = _dense16(cu_seqlens)
    out, lse = _flash_attn_fwd(_dense16(q), _dense16(k), _dense16(v), cu_seqlens_q=cu, cu_seqlens_k=cu,
                               max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen, causal=True,
                               return_lse=True)[:2]
    return out, lse


def _fa4_varlen_fwd_fake(q, k, v, cu_seqlens, max_seqlen):
    n, h, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((h, n), dtype=torch.float32)


def _fa4_varlen_bwd_impl(q, k, v, out, lse, dout, cu_seqlens, max_seqlen):
    if not q.is_cuda:
        return reference_varlen_bwd(q, k, v, out, lse, dout, cu_seqlens)
    from flash_attn.cute.interface import _flash_attn_bwd

    cu = _dense16(cu_seqlens)
    dq, dk, dv = _flash_attn_bwd(_dense16(q), _dense16(k), _dense16(v), _dense16(out), _dense16(dout),
                                 _dense16(lse), softmax_scale=None, causal=True,
                                 cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_seqlen,
                                 max_seqlen_k=max_seqlen)[:3]
    return dq, dk, dv


def _fa4_varlen_bwd_fake(q, k, v, out, lse, dout, cu_seqlens, max_seqlen):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fa4_setup_context(ctx, inputs, output) -> None:
    q, k, v = inputs[:3]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *inputs[3:4])  # + cu_seqlens for the packed op
    ctx.max_seqlen = inputs[4] if len(inputs) > 4 else 0
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _fa4_backward(ctx, dout, _dlse):
    if dout is None:
        return None, None, None
    q, k, v, out, lse = ctx.saved_tensors
    return tuple(torch.ops.pgolf_attn.fa4_bwd(q, k, v, out, lse, dout))


def _fa4_varlen_backward(ctx, dout, _dlse):
    if dout is None:
        return None, None, None, None, None
    q, k, v, out, lse, cu = ctx.saved_tensors
    dq, dk, dv = torch.ops.pgolf_attn.fa4_varlen_bwd(q, k, v, out, lse, dout, cu, ctx.max_seqlen)
    return dq, dk, dv, None, None


def _register_fa4_ops() -> None:
    fwd = _attn_custom_op("pgolf_attn::fa4_fwd", "(Tensor q, Tensor k, Tensor v) -> (Tensor, Tensor)",
                          _fa4_fwd_impl, _fa4_fwd_fake)
    _attn_custom_op("pgolf_attn::fa4_bwd",
                    "(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout) "
                    "-> (Tensor, Tensor, Tensor)",
                    _fa4_bwd_impl, _fa4_bwd_fake)
    vfwd = _attn_custom_op("pgolf_attn::fa4_varlen_fwd",
                           "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen) "
                           "-> (Tensor, Tensor)",
                           _fa4_varlen_fwd_impl, _fa4_varlen_fwd_fake)
    _attn_custom_op("pgolf_attn::fa4_varlen_bwd",
                    "(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor cu_seqlens, "
                    "int max_seqlen) -> (Tensor, Tensor, Tensor)",
                    _fa4_varlen_bwd_impl, _fa4_varlen_bwd_fake)
    if fwd is not None:
        fwd.register_autograd(_fa4_backward, setup_context=_fa4_setup_context)
    if vfwd is not None:
        vfwd.register_autograd(_fa4_varlen_backward, setup_context=_fa4_setup_context)


_register_fa4_ops()


def _half(*ts: torch.Tensor) -> list[torch.Tensor]:
    """FlashAttention takes bf16/fp16 only: cast float32 inputs (autocast regions may leave the
    normed q/k in float32) to bf16, as autocast does for SDPA."""
    dt = ts[0].dtype if ts[0].dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    return [t if t.dtype == dt else t.to(dt) for t in ts]


def _fa4_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = _half(q, k, v)
    return torch.ops.pgolf_attn.fa4_fwd(q, k, v)[0]


def _fa4_varlen(q, k, v, cu_seqlens, max_seqlen):
    q, k, v = _half(q, k, v)
    return torch.ops.pgolf_attn.fa4_varlen_fwd(q, k, v, cu_seqlens.to(torch.int32), int(max_seqlen))[0]


# ---------------------------------------------------------------------------------------------
# FlashAttention 3, SDPA, FlexAttention, the reference loop


def _fa3_dense(q, k, v):
    q, k, v = _half(q, k, v)
    out = _FA3["dense"](q, k, v, causal=True)
    return out[0] if isinstance(out, tuple) else out


def _fa3_varlen(q, k, v, cu_seqlens, max_seqlen):
    q, k, v = _half(q, k, v)
    cu = cu_seqlens.to(torch.int32)
    out = _FA3["varlen"](q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=int(max_seqlen),
                         max_seqlen_k=int(max_seqlen), causal=True)
    return out[0] if isinstance(out, tuple) else out


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


def _sdpa_dense(q, k, v):
    return _sdpa(q, k, v, _ATTN_STATE["repeat_kv"])


def _sdpa_cudnn_only(q, k, v):
    """The probe's view of sdpa_cudnn: the cuDNN kernel alone (no silent fallback to another)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return _sdpa(q, k, v, _ATTN_STATE["repeat_kv"])


def reference_varlen_loop(q, k, v, cu_seqlens, max_seqlen):
    """The portable packed path: one SDPA call per segment (host sync; eager only)."""
    out = torch.zeros_like(q)
    for a, b in _segments(cu_seqlens):
        out[a:b] = _sdpa(q[None, a:b], k[None, a:b], v[None, a:b], _ATTN_STATE["repeat_kv"])[0]
    return out


FLEX_BLOCK = 128


def document_block_mask(cu_seqlens: torch.Tensor, n: int, block: int = FLEX_BLOCK):
    """FlexAttention ``BlockMask`` for causal attention inside the segments of ``cu_seqlens``.

    Built from per-block document ids (O((N/block)^2) work, no N x N mask): segments are
    contiguous and ordered, so kv block j can reach q block i iff j <= i and the last document
    of block j is not before the first document of block i; it is full (no mask needed) iff j < i
    and both blocks lie in one document."""
    from torch.nn.attention.flex_attention import BlockMask

    dev = cu_seqlens.device
    cu = cu_seqlens.to(torch.int32).contiguous()
    doc = torch.searchsorted(cu, torch.arange(n, device=dev, dtype=torch.int32), right=True)
    nb = (n + block - 1) // block
    starts = torch.arange(nb, device=dev) * block
    ends = torch.clamp(starts + block, max=n) - 1
    first, last = doc[starts], doc[ends]
    qi = torch.arange(nb, device=dev)[:, None]
    kj = torch.arange(nb, device=dev)[None, :]
    reach = (kj <= qi) & (last[None, :] >= first[:, None])
    full = (kj < qi) & (first[None, :] == last[:, None])
    partial = reach & ~full

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = dense.to(torch.int32)
        idx = torch.argsort(d, dim=-1, descending=True, stable=True)  # the set blocks first, in order
        return d.sum(-1).to(torch.int32)[None, None], idx.to(torch.int32)[None, None].contiguous()

    def same_document_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=same_document_causal, seq_lengths=(n, n))


_FLEX: dict = {}


def _flex_varlen(q, k, v, cu_seqlens, max_seqlen):
    from torch.nn.attention.flex_attention import flex_attention

    n = q.size(0)
    mask = document_block_mask(cu_seqlens, n)
    if torch.compiler.is_compiling():
        fn = flex_attention  # inside the model's graph: inductor generates the fused kernel
    else:
        if "compiled" not in _FLEX:  # eager flex_attention would materialise N x N scores
            _FLEX["compiled"] = torch.compile(flex_attention, dynamic=False)
        fn = _FLEX["compiled"]
    y = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask,
           enable_gqa=q.size(1) != k.size(1))
    return y[0].transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# loaders: name -> (dense callable or None, packed callable or None); BackendUnavailable when absent


def _need_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise BackendUnavailable("needs CUDA")


FA4_MODULE = "flash_attn.cute.interface"
FA3_MODULE = "flash_attn_interface"


def _import_optional(module: str):
    """The module, BackendUnavailable if it is not installed; any other failure (a dependency of an
    installed package missing, a library that does not load) propagates: a broken install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise BackendUnavailable(f"{module} not installed (no module {e.name})") from None
        raise


def _load_fa4(device: torch.device, module: str = FA4_MODULE):
    _import_optional(module)  # CuTe DSL: kernels are compiled at first use
    _need_cuda(device)
    major = torch.cuda.get_device_capability(device)[0]
    if major < 9:
        raise BackendUnavailable(f"FA4's backward needs sm_90 or newer (this GPU is sm_{major}x)")
    return _fa4_dense, _fa4_varlen


def _load_fa3(device: torch.device, module: str = FA3_MODULE):
    fa3 = _import_optional(module)
    _need_cuda(device)
    _FA3["dense"] = fa3.flash_attn_func
    _FA3["varlen"] = getattr(fa3, "flash_attn_varlen_func", None)
    return _fa3_dense, (_fa3_varlen if _FA3["varlen"] is not None else None)


def _load_sdpa_cudnn(device: torch.device):
    _need_cuda(device)
    major = torch.cuda.get_device_capability(device)[0]
    if major != 9:
        raise BackendUnavailable(f"cuDNN SDPA is preferred on Hopper only (this GPU is sm_{major}x)")
    _ATTN_STATE["repeat_kv"] = not _cudnn_gqa_works(device)
    return _sdpa_cudnn_only, None


def _load_sdpa(device: torch.device):
    return _sdpa_dense, None


def _load_flex(device: torch.device):
    _need_cuda(device)
    from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

    return None, _flex_varlen


BUILTIN_LOADERS: dict[str, Callable] = {"fa4": _load_fa4, "fa3": _load_fa3, "sdpa_cudnn": _load_sdpa_cudnn,
                                        "sdpa": _load_sdpa, "flex": _load_flex}


def _cudnn_gqa_works(device: torch.device) -> bool:
    """True when the cuDNN SDPA backend runs GQA inputs directly (forward and backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        q = torch.randn(1, 4, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        kv = torch.randn(1, 2, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True).sum().backward()
        torch.cuda.synchronize(device)
        return True
    except Exception:  # noqa: BLE001 - unsupported: repeat k/v heads instead
        return False


# ---------------------------------------------------------------------------------------------
# probes


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def _probe_inputs(shape_q, shape_kv, device, dtype, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda shape: torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)  # noqa: E731
    return mk(shape_q), mk(shape_kv), mk(shape_kv), mk(shape_q)


def _compare(fn_out: torch.Tensor, grads: tuple, ref_out: torch.Tensor, ref_grads: tuple) -> str | None:
    names = ("out", "dq", "dk", "dv")
    for name, a, r in zip(names, (fn_out, *grads), (ref_out, *ref_grads)):
        if a is None or a.shape != r.shape:
            return f"{name}: shape {None if a is None else tuple(a.shape)} != {tuple(r.shape)}"
        e = _rel_err(a, r)
        if not e <= _PROBE_TOL:
            return f"{name}: relative error {e:.3g} > {_PROBE_TOL:g}"
    return None


def _run_probe(fn: Callable, args: tuple, dout: torch.Tensor, ref: Callable) -> str | None:
    """None if ``fn`` matches ``ref`` (float32 autograd on upcast copies) forward and backward,
    else the reason."""
    leaves = [a.detach().clone().requires_grad_() for a in args[:3]]
    try:
        out = fn(*leaves, *args[3:])
        out.backward(dout)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
    except Exception as e:  # noqa: BLE001 - any failure disqualifies the kernel
        return f"{type(e).__name__}: {_one_line(str(e))}"
    ref_leaves = [a.detach().float().requires_grad_() for a in args[:3]]
    ref_out = ref(*ref_leaves, *args[3:])
    ref_out.backward(dout.float())
    return _compare(out, tuple(t.grad for t in leaves), ref_out, tuple(t.grad for t in ref_leaves))


def _math_attention(q, k, v):
    """Differentiable float32 causal attention for [B, T, H, D] inputs (the probes' oracle)."""
    p = torch.softmax(_ref_scores(q, k), dim=-1)
    vf = _repeat_heads(v.float().transpose(1, 2), q.size(2) // v.size(2))
    return (p @ vf).transpose(1, 2)


def _varlen_ref(q, k, v, cu_seqlens, max_seqlen):
    outs = [q.new_zeros(q.shape).float()]
    for a, b in _segments(cu_seqlens):
        o = _math_attention(q[None, a:b], k[None, a:b], v[None, a:b])[0]
        outs.append(F.pad(o, (0, 0, 0, 0, a, q.size(0) - b)))
    return torch.stack(outs).sum(0)


PROBE_SEGMENTS = (100, 157, 1, 254)  # with two empty (padding) entries: 512 tokens


def probe_dense(fn: Callable, device: torch.device, heads: int = 8, kv_heads: int = 4, head_dim: int = 64,
                seed: int = 0) -> str | None:
    """None if ``fn(q, k, v)`` computes causal GQA attention forward and backward, else why not.
    Two sequences of 320 tokens: several tiles and a partial one at the kernels' block sizes."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v, dout = _probe_inputs((2, 320, heads, head_dim), (2, 320, kv_heads, head_dim), device, dtype,
                                  seed)
    return _run_probe(fn, (q, k, v), dout, _math_attention)


def probe_cu_seqlens(device: torch.device) -> tuple[torch.Tensor, int]:
    bounds = [0]
    for n in PROBE_SEGMENTS:
        bounds.append(bounds[-1] + n)
    bounds += [bounds[-1]] * 2  # padding entries, as the loaders bucket the segment count
    return torch.tensor(bounds, dtype=torch.int32, device=device), max(PROBE_SEGMENTS)


def probe_varlen(fn: Callable, device: torch.device, heads: int = 8, kv_heads: int = 4, head_dim: int = 64,
                 seed: int = 1) -> str | None:
    """As ``probe_dense`` for ``fn(q, k, v, cu_seqlens, max_seqlen)`` on packed segments of
    100, 157, 1 and 254 tokens plus two empty ones."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cu, max_len = probe_cu_seqlens(device)
    n = int(cu[-1])
    q, k, v, dout = _probe_inputs((n, heads, head_dim), (n, kv_heads, head_dim), device, dtype, seed)
    return _run_probe(fn, (q, k, v, cu, max_len), dout, _varlen_ref)


# ---------------------------------------------------------------------------------------------
# selection


def _one_line(msg: str, limit: int = 200) -> str:
    line = " ".join(str(msg).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _try_load(name: str, loader: Callable, device: torch.device):
    """(dense, varlen, None) or (None, None, (kind, reason)); kind 'absent' or 'failed'."""
    try:
        dense, varlen = loader(device)
        return dense, varlen, None
    except BackendUnavailable as e:
        return None, None, ("absent", _one_line(str(e)))
    except Exception as e:  # noqa: BLE001 - a broken install: import error of a library, ...
        return None, None, ("failed", f"import failed: {type(e).__name__}: {_one_line(str(e))}")


def select_attention_backend(device: torch.device, prefer: str = "auto", *, varlen: bool = True,
                             loaders: dict[str, Callable] | None = None, heads: int = 8,
                             kv_heads: int = 4, head_dim: int = 64) -> str:
    """Pick the kernels for ``device`` and return the backend's name (``attention_backend()``).

    ``prefer``: ATTENTION_BACKEND, one of auto | fa4 | fa3 | sdpa_cudnn | sdpa. ``varlen``: also
    choose (and probe) the packed path. ``loaders``: name -> loader(device) returning
    (dense fn, packed fn), overriding the built-in ones (tests inject failing kernels this way).
    ``heads``/``kv_heads``/``head_dim``: the probe's shape (FA4 compiles per head shape: probing
    the model's shape compiles the kernels the model will use).
    ``sdpa_cudnn`` switches flash and memory-efficient SDPA off process-wide so that compiled
    graphs trace the cuDNN kernel (math stays on for odd shapes). On CPU the dense path is SDPA
    (``sdpa_cpu``) and the packed path the per-segment loop.
    """
    prefer = (prefer or "auto").strip().lower()
    if prefer not in ATTENTION_CHOICES:
        raise AttentionBackendError(f"ATTENTION_BACKEND={prefer!r}: expected one of "
                                    f"{', '.join(ATTENTION_CHOICES)}")
    table = dict(BUILTIN_LOADERS)
    table.update(loaders or {})
    shape = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    notes: list[str] = []
    failed: list[str] = []
    state = {"backend": "", "repeat_kv": False, "dense": None, "varlen": None, "varlen_name": "",
             "failed": failed, "notes": notes, "device_type": device.type}
    _ATTN_STATE.update(state)  # loaders may set repeat_kv

    tried: dict[str, tuple | None] = {}  # name -> (dense, packed) if it passed, None if passed over
    order = _DENSE_ORDER if prefer == "auto" else (prefer,)
    for name in order:
        dense, vfn, why = _try_load(name, table[name], device)
        if why is None and dense is None:
            why = ("absent", "no dense kernel")
        if why is None and name != "sdpa":  # the last resort, plain SDPA, is not probed
            err = probe_dense(dense, device, **shape)
            if err is not None:
                why = ("failed", f"probe: {err}")
        if why is not None:
            tried[name] = None
            _ATTN_STATE["repeat_kv"] = False
            kind, reason = why
            status = "not available" if kind == "absent" else "failed"
            notes.append(f"{name}: {status}: {reason}")
            if kind == "failed":
                failed.append(f"{name}:{'import' if reason.startswith('import') else 'probe'}")
            if prefer != "auto":
                raise AttentionBackendError(f"ATTENTION_BACKEND={prefer}: {status} on {device}: {reason}")
            continue
        tried[name] = (dense, vfn)
        _ATTN_STATE["backend"] = name
        _ATTN_STATE["dense"] = _sdpa_dense if name == "sdpa_cudnn" else dense
        break
    name = _ATTN_STATE["backend"]
    if name == "sdpa_cudnn":
        torch.backends.cuda.enable_cudnn_sdp(True)
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(True)
    if name == "sdpa" and device.type != "cuda":
        _ATTN_STATE["backend"] = "sdpa_cpu"
    if varlen:
        _select_varlen(device, prefer, table, tried, shape)
    return attention_backend()


def _select_varlen(device: torch.device, prefer: str, table: dict, tried: dict, shape: dict) -> None:
    """The packed path: the FlashAttention kernels that pass its probe, else FlexAttention, else
    the per-segment loop. A forced sdpa/sdpa_cudnn never takes a FlashAttention kernel."""
    notes, failed = _ATTN_STATE["notes"], _ATTN_STATE["failed"]
    if prefer == "auto":
        candidates: tuple = ("fa4", "fa3", "flex")
    elif prefer in ("fa4", "fa3"):
        candidates = (prefer, "flex")
    else:
        candidates = ("flex",)
    for name in candidates:
        if name in tried:
            if tried[name] is None:
                continue  # passed over as a dense kernel: noted already
            vfn, why = tried[name][1], None
        else:
            _, vfn, why = _try_load(name, table[name], device)
        if why is None and vfn is None:
            why = ("absent", "no packed kernel")
        if why is None:
            err = probe_varlen(vfn, device, **shape)
            if err is not None:
                why = ("failed", f"probe: {err}")
        if why is None:
            _ATTN_STATE["varlen"], _ATTN_STATE["varlen_name"] = vfn, name
            return
        kind, reason = why
        if device.type == "cuda" or kind == "failed":
            notes.append(f"{name} (packed): {'not available' if kind == 'absent' else 'failed'}: {reason}")
        if kind == "failed":
            failed.append(f"{name}_varlen:{'import' if reason.startswith('import') else 'probe'}")
    _ATTN_STATE["varlen"], _ATTN_STATE["varlen_name"] = reference_varlen_loop, "loop"
    if device.type == "cuda":
        notes.append("packed path: the per-segment reference loop (a host sync per call; eager only)")


def attention_backend() -> str:
    """The selected backend's name for the logs: the dense kernel, ``+repeat_kv`` when GQA is done
    by copying k/v heads, ``+varlen_X`` when the packed path uses another kernel X, and in brackets
    the installed kernels that failed (``[fa4:probe]``)."""
    name = _ATTN_STATE["backend"] or "sdpa"
    if _ATTN_STATE["repeat_kv"]:
        name += "+repeat_kv"
    v = _ATTN_STATE["varlen_name"]
    if v and v != _ATTN_STATE["backend"] and not (v == "loop" and _ATTN_STATE["device_type"] != "cuda"):
        name += f"+varlen_{v}"
    if _ATTN_STATE["failed"]:
        name += "[" + ",".join(_ATTN_STATE["failed"]) + "]"
    return name


def varlen_traceable() -> bool:
    """Whether the packed path traces into one graph (every backend except the per-segment loop,
    which reads cu_seqlens on the host): the trainer compiles with fullgraph only then."""
    return _ATTN_STATE["varlen_name"] != "loop"


def attention_notes() -> list[str]:
    """One line per candidate passed over at the last selection, with the reason."""
    return list(_ATTN_STATE["notes"])


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention, scale 1/sqrt(D), on the selected backend."""
    fn = _ATTN_STATE["dense"]
    if fn is None:  # nothing selected yet: plain SDPA
        return _sdpa(q, k, v, False)
    return fn(q, k, v)


def varlen_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_seqlen: int) -> torch.Tensor:
    """Causal attention inside the segments of a packed token stream (no attention across them).

    q [N, H, D], k and v [N, Hkv, D]; ``cu_seqlens`` int32 [S + 1]: segment starts, then N (extra
    trailing entries equal to N are padding, allowed so a compiled graph sees few shapes);
    ``max_seqlen``: the longest segment (a host int; an upper bound such as the training sequence
    length keeps one compiled graph). Returns [N, H, D].
    """
    fn = _ATTN_STATE["varlen"]
    if fn is None:  # nothing selected yet: the reference loop
        return reference_varlen_loop(q, k, v, cu_seqlens, max_seqlen)
    return fn(q, k, v, cu_seqlens, max_seqlen)
