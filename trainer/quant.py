"""Post-training quantization: full-Hessian GPTQ with standard-deviation clipping, int8 gates and
LQER low-rank corrections.

Every state-dict entry falls in one class, decided by its name, then its shape:

- ``attn``:  ``blocks.{i}.attn.{c_q,c_k,c_v,proj}.weight`` -> ``MATRIX_BITS`` (int6), k = ``ATTN_CLIP_SIGMAS``
- ``mlp``:   ``blocks.{i}.mlp.{fc,proj}.weight`` -> ``MLP_BITS`` (int6; int5 option), ``MLP_CLIP_SIGMAS``
- ``embed``: ``tok_emb.weight`` (and an untied ``lm_head.weight``) -> ``EMBED_BITS`` (int8; int7 in
  pr1855), ``EMBED_CLIP_SIGMAS``
- ``other``: any other floating tensor of 2+ dims and at least ``SMALL_NUMEL`` values (BigramHash
  tables by name; anything unknown by shape) -> ``MATRIX_BITS``, ``MATRIX_CLIP_SIGMAS``
- ``gate``:  attention output gates ``blocks.{i}.attn.{out_gate,attn_gate}.weight`` -> with
  ``GATE_BITS=8`` int8 per row, scale = max|row| / 127 (no Hessian, no clipping); else fp16
- ``small``: everything else (gains, scales, lane-mix lambdas, skip weights, 1-D) -> stored as fp16.
Buffers (whatever their class) and integer tensors are stored exactly; only parameters are quantized.
A parameter that no name rule knows falls to a default class by shape (small -> fp16, large -> other,
int6 GPTQ); ``quant_summary`` names each such parameter, so a new model tensor is never stored in a
class by accident unnoticed. ``FP16_TENSORS`` (comma-separated ``fnmatch`` patterns;
``blocks.10.attn.c_k`` also matches its ``.weight``) keeps chosen tensors in fp16 whatever their class.

A quantized tensor is ``q`` (int8 holding values in [-qmax, qmax], qmax = 2**(bits-1) - 1) and a
per-row fp16 ``scale``; it dequantizes to ``q * scale`` (a tensor of more than 2 dims is quantized
as [prod(leading dims), last dim]). The clip is ``k * std(row)`` (scale = clip / qmax): a wider clip
lowers the entropy of ``q`` and so the compressed size (see the 2026-04-05 SDClip record). GPTQ
quantizes columns in order (optionally by decreasing Hessian diagonal, "act order") and spreads each
column's rounding error over the not-yet-quantized ones using the inverse Hessian of the layer
inputs; ``GPTQ=0`` rounds to nearest with the same scales.

LQER (``LQER_RANK`` r > 0, PR #1797): for the ``LQER_TOP_K`` GPTQ tensors with the largest
quantization error ||W - q*scale||_F, the error's truncated SVD ``U_r S_r V_r^T`` is stored as two
factors, ``A = (U_r S_r)^T`` [r, rows] and ``B = V_r^T`` [r, cols], each quantized to
``LQER_FACTOR_BITS`` b bits in groups of ``LQER_GROUP`` consecutive values of one rank component
(a whole component if the group does not divide its length): integer range [-2**(b-1), 2**(b-1)-1]
(the asymmetric range of PR #1797's factors, all 2**b levels used), scale = max|group| / (2**(b-1) - 1/2)
in fp16. Dequantization adds ``A^T @ B`` to ``q * scale``. (PR #1797 stores A as int2 with one scale
per matrix; here both factors use the same b-bit grouped code: a few KB more, a closer correction.)

Hessians come from forward passes over calibration batches of TRAINING data only
(``collect_hessians``); the validation split must never be used here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from trainer.dist import all_reduce_

SMALL_NUMEL = 65_536  # floating tensors below this size (unless named as a matrix class) stay in fp16
QUANT_CLASSES = ("attn", "mlp", "embed", "other")  # GPTQ / round-to-nearest with SD clipping
TENSOR_CLASSES = ("attn", "mlp", "embed", "other", "gate", "small")
_ATTN_RE = re.compile(r"^blocks\.\d+\.attn\.(c_q|c_k|c_v|proj)\.weight$")
_MLP_RE = re.compile(r"^blocks\.\d+\.mlp\.(fc|proj)\.weight$")
_GATE_RE = re.compile(r"^blocks\.\d+\.attn\.(out_gate|attn_gate)\.weight$")
_EMBED_NAMES = ("tok_emb.weight", "lm_head.weight")
_OTHER_RE = re.compile(r"^bigram\.(embed|proj)\.weight$")  # matrices known to be "other"
# names of the model's small control tensors (gains, scales, mixes, lambdas, skip weights, smear gate)
_SMALL_RE = re.compile(r"(gain|scale|mix|lambda|lane|skip|gate|smear|norm|bias)|(^|\.)lam$")


@dataclass
class QTensor:
    """One state-dict entry as stored in the artifact.

    ``kind == "int"``: ``q`` (int8 [rows, cols]) and ``scale`` (fp16 [rows]), plus, with LQER, the
    factors ``lqer_a`` (int8 [r, rows]) and ``lqer_b`` (int8 [r, cols]) with their fp16 group
    scales ``lqer_a_scale`` / ``lqer_b_scale``; ``kind == "raw"``: ``data`` (any dtype, e.g. fp16
    for small float parameters). ``dtype`` is the original dtype, restored on dequantization.
    """

    name: str
    cls: str
    kind: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    bits: int = 0
    q: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    data: torch.Tensor | None = None
    method: str = ""  # "gptq" | "rtn" | "absmax" (gates) | "" (raw)
    clip_sigmas: float = 0.0
    lqer_bits: int = 0  # 0: no LQER correction
    lqer_a: torch.Tensor | None = None
    lqer_a_scale: torch.Tensor | None = None
    lqer_b: torch.Tensor | None = None
    lqer_b_scale: torch.Tensor | None = None

    @property
    def lqer_rank(self) -> int:
        return 0 if self.lqer_a is None else int(self.lqer_a.shape[0])


@dataclass
class QuantizedModel:
    """The whole quantized state dict, in state-dict order; ``aliases`` maps a name to the name of
    the tensor it shares storage with (tied weights are stored once)."""

    tensors: dict[str, QTensor]
    aliases: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass
class QuantConfig:
    """The quantization knobs, from the run's hyperparameters (``QuantConfig.from_hparams(h)``)."""

    bits: dict[str, int]  # per class; bits["gate"] == 0: gates stay fp16
    clip_sigmas: dict[str, float]
    fp16_patterns: list[str]
    gptq: bool = True
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    lqer_rank: int = 0
    lqer_top_k: int = 0
    lqer_bits: int = 4
    lqer_group: int = 64

    @classmethod
    def from_hparams(cls, h) -> QuantConfig:
        bits = {"attn": h.matrix_bits, "mlp": h.mlp_bits, "embed": h.embed_bits, "other": h.matrix_bits,
                "gate": int(getattr(h, "gate_bits", 0))}
        sig = {"attn": getattr(h, "attn_clip_sigmas", h.matrix_clip_sigmas), "mlp": h.mlp_clip_sigmas,
               "embed": h.embed_clip_sigmas, "other": h.matrix_clip_sigmas}
        for c, b in bits.items():
            if not 2 <= int(b) <= 8 and not (c == "gate" and int(b) == 0):
                raise ValueError(f"{c} bits = {b}: must be between 2 and 8 (values are stored as int8)"
                                 + ("; GATE_BITS=0 keeps gates in fp16" if c == "gate" else ""))
        if bits["gate"] not in (0, 8):
            raise ValueError(f"GATE_BITS={bits['gate']}: 8 (int8 per row) or 0 (fp16)")
        for c, k in sig.items():
            if not float(k) > 0:
                raise ValueError(f"{c} clip sigmas = {k}: must be > 0")
        rank, top_k = int(getattr(h, "lqer_rank", 0)), int(getattr(h, "lqer_top_k", 0))
        lbits, group = int(getattr(h, "lqer_factor_bits", 4)), int(getattr(h, "lqer_group", 64))
        if rank < 0 or top_k < 0:
            raise ValueError(f"LQER_RANK={rank}, LQER_TOP_K={top_k}: must be >= 0")
        if rank > 0 and not (2 <= lbits <= 8 and group >= 1):
            raise ValueError(f"LQER_FACTOR_BITS={lbits}, LQER_GROUP={group}: need 2..8 bits and a group >= 1")
        pats = [p.strip() for p in str(getattr(h, "fp16_tensors", "") or "").split(",") if p.strip()]
        return cls(bits=bits, clip_sigmas=sig, fp16_patterns=pats, gptq=bool(h.gptq),
                   block_size=int(h.gptq_block_size), damp=float(h.gptq_damp),
                   act_order=bool(getattr(h, "gptq_act_order", True)), lqer_rank=rank, lqer_top_k=top_k,
                   lqer_bits=lbits, lqer_group=group)


def classify_tensor(name: str, t: torch.Tensor) -> tuple[str, bool]:
    """``(class, by_default)``: the class of a state-dict entry (module docstring) and whether only
    the default rule by shape placed it (no name rule knows it)."""
    if not t.is_floating_point():
        return "small", False  # integer buffers: stored exactly
    if t.dim() == 2:
        if _ATTN_RE.match(name):
            return "attn", False
        if _MLP_RE.match(name):
            return "mlp", False
        if name in _EMBED_NAMES:
            return "embed", False
        if _GATE_RE.match(name):
            return "gate", False
        if _OTHER_RE.match(name):
            return "other", False
    if t.dim() >= 2 and t.numel() >= SMALL_NUMEL:
        return "other", True
    return "small", not _SMALL_RE.search(name)


def tensor_class(name: str, t: torch.Tensor) -> str:
    """The class of a state-dict entry: attn | mlp | embed | other | gate | small."""
    return classify_tensor(name, t)[0]


def _fp16_pattern_match(name: str, pat: str) -> bool:
    return fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(name, pat + ".weight")


# ---------------------------------------------------------------------------------------------
# Hessians


def collect_hessians(model: nn.Module, train_batches: Iterable) -> dict[str, torch.Tensor]:
    """Input second moments ``H = E[x x^T]`` (fp32, [in, in]) of every ``nn.Linear`` and of
    ``model.lm_head``, keyed by the name of the weight they multiply.

    ``train_batches``: calibration batches from the TRAINING split only (never validation),
    each ``input_ids`` [B, T] or an ``(input_ids, target_ids)`` pair. The tied embedding's Hessian
    is that of ``lm_head``'s input (the final normed hidden states), keyed ``tok_emb.weight``.
    Layers run more than once per forward (depth recurrence) contribute every pass.
    Pass the unwrapped model (not DDP / torch.compile wrappers) so names match its state dict.
    """
    names_by_param = {id(p): n for n, p in model.named_parameters()}
    targets: dict[str, nn.Module] = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            targets[f"{mname}.weight"] = mod
    head = getattr(model, "lm_head", None)
    if head is not None:
        w = getattr(head, "weight", None)
        key = names_by_param.get(id(w)) if isinstance(w, torch.Tensor) else None
        targets[key or "tok_emb.weight"] = head
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    last: list = [None, None]  # (input, x^T x): c_q/c_k/c_v see the same input tensor; compute once

    def make_hook(key: str):
        def hook(_mod, args):
            inp = args[0]
            if inp is not last[0]:
                with torch.autocast(device_type=inp.device.type, enabled=False):
                    x = inp.detach().reshape(-1, inp.shape[-1]).float()
                    last[0], last[1] = inp, x.t() @ x
            if key not in sums:
                sums[key] = torch.zeros_like(last[1])
                counts[key] = 0
            sums[key] += last[1]
            counts[key] += inp.numel() // inp.shape[-1]
        return hook

    handles = [mod.register_forward_pre_hook(make_hook(k)) for k, mod in targets.items()]
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        with torch.no_grad():
            for batch in train_batches:
                if isinstance(batch, (tuple, list)):
                    model(*batch[:2])
                else:
                    model(batch)
                n_batches += 1
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
        last[0] = last[1] = None
    if n_batches == 0:
        raise ValueError("collect_hessians: no calibration batches given")
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def all_reduce_hessians_(hessians: dict[str, torch.Tensor], world_size: int) -> dict[str, torch.Tensor]:
    """Average per-rank Hessians over ranks (each rank must have seen the same number of tokens)."""
    if world_size > 1:
        for k in sorted(hessians):
            all_reduce_(hessians[k])
            hessians[k] /= world_size
    return hessians


# ---------------------------------------------------------------------------------------------
# one matrix


def row_scales(w: torch.Tensor, bits: int, clip_sigmas: float) -> torch.Tensor:
    """Per-row scale ``k * std(row) / qmax``, rounded to fp16 (as stored) and returned as fp32."""
    qmax = 2 ** (bits - 1) - 1
    s = clip_sigmas * w.float().std(dim=1) / qmax
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    s16 = s.clamp(min=2.0 ** -24, max=65504.0).to(torch.float16)
    return s16.float()


def quantize_rtn(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(w.float() / scale[:, None]), -qmax, qmax).to(torch.int8)


def quantize_gptq(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, bits: int,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = True) -> torch.Tensor:
    """GPTQ with fixed per-row ``scale``; returns int8 ``q`` [rows, cols] (original column order)."""
    qmax = 2 ** (bits - 1) - 1
    W = w.detach().float().clone()
    cols = W.shape[1]
    H = hessian.detach().to(W.device, torch.float32).clone()
    if H.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight columns {cols}")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0  # inputs never active: their columns cannot matter, quantize them to 0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_hessian_chol(H, damp)
    s = scale.to(W.device, torch.float32)
    Q = torch.zeros_like(W, dtype=torch.int8)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, i]
            q = torch.clamp(torch.round(col / s), -qmax, qmax)
            Q[:, i1 + i] = q.to(torch.int8)
            err = (col - q * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q


def _inverse_hessian_chol(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after damping; more damping if H is not positive definite."""
    mean_diag = torch.diag(H).mean().clamp(min=1e-12)
    eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    for attempt in range(6):
        Hd = H + (damp * 10 ** attempt) * mean_diag * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0:
                return U
    raise ValueError("GPTQ: Hessian is not positive definite even with heavy damping")


def quantize_gate_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 per row for gates: scale = max|row| / 127 in fp16 (``(q, scale)``, scale returned as
    fp32 holding the fp16 value). No clipping: a gate's few values all matter."""
    s = (w.float().abs().amax(dim=1) / 127.0).clamp(min=2.0 ** -24, max=65504.0).to(torch.float16).float()
    return torch.clamp(torch.round(w.float() / s[:, None]), -127, 127).to(torch.int8), s


def quantize_groups(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LQER factor code: ``x`` [r, n] in groups of ``group`` consecutive values of a row (the whole
    row if ``group`` does not divide n), integers in [-2**(bits-1), 2**(bits-1)-1], one fp16 scale
    max|group| / (2**(bits-1) - 1/2) per group. Returns ``(q int8 [r, n], scale fp16 [groups])``."""
    r, n = x.shape
    g = group if n % group == 0 else n
    xf = x.float().reshape(-1, g)
    half = 2 ** (bits - 1)
    s = (xf.abs().amax(dim=1) / (half - 0.5)).clamp(min=2.0 ** -24, max=65504.0).to(torch.float16)
    q = torch.clamp(torch.round(xf / s.float()[:, None]), -half, half - 1).to(torch.int8)
    return q.reshape(r, n), s


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of ``quantize_groups`` (fp32 [r, n]); the group size is numel / number of scales."""
    g = q.numel() // max(scale.numel(), 1)
    return (q.float().reshape(-1, g) * scale.float()[:, None]).reshape(q.shape)


def lqer_correction(t: QTensor) -> torch.Tensor | None:
    """``A^T @ B`` (fp32 [rows, cols]) of a tensor with LQER factors, else None."""
    if t.lqer_a is None:
        return None
    a = dequantize_groups(t.lqer_a, t.lqer_a_scale)
    b = dequantize_groups(t.lqer_b, t.lqer_b_scale)
    return a.t() @ b


def dequantize_tensor(t: QTensor) -> torch.Tensor:
    """The stored tensor as the model sees it (original dtype)."""
    if t.kind == "int":
        w = t.q.float() * t.scale.float()[:, None]
        corr = lqer_correction(t)
        if corr is not None:
            w = w + corr
        return w.reshape(t.shape).to(t.dtype)
    return t.data.reshape(t.shape).to(t.dtype)


def add_lqer_(t: QTensor, w: torch.Tensor, rank: int, bits: int, group: int) -> None:
    """Attach to ``t`` the rank-``rank`` LQER factors of its quantization error against ``w``."""
    w2 = w.detach().float().reshape(t.q.shape)
    err = w2 - (t.q.float() * t.scale.float()[:, None]).to(w2.device)
    U, S, Vh = torch.linalg.svd(err, full_matrices=False)
    r = min(rank, int(S.numel()))
    a = (U[:, :r] * S[:r]).t().contiguous()  # [r, rows]: the singular values go with the row factor
    b = Vh[:r].contiguous()  # [r, cols]
    qa, sa = quantize_groups(a, bits, group)
    qb, sb = quantize_groups(b, bits, group)
    t.lqer_bits = bits
    t.lqer_a, t.lqer_a_scale = qa.cpu().contiguous(), sa.cpu().contiguous()
    t.lqer_b, t.lqer_b_scale = qb.cpu().contiguous(), sb.cpu().contiguous()


def hessian_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor | None) -> float:
    """``tr(dW H dW^T)``: the expected squared output error of the layer (plain MSE sum if no H)."""
    d = (w.float() - w_hat.float()).to(torch.float64)
    if hessian is None:
        return float((d * d).sum())
    Hd = hessian.to(d.device, torch.float64)
    return float(((d @ Hd) * d).sum())


# ---------------------------------------------------------------------------------------------
# the whole model


def quantize_model(h, model: nn.Module, hessians: dict[str, torch.Tensor] | None,
                   clip_sigmas: dict[str, float] | None = None) -> QuantizedModel:
    """Quantize ``model.state_dict()`` by class (module docstring). ``h``: the run's
    hyperparameters (or a ``QuantConfig``); ``hessians`` from ``collect_hessians`` (tensors
    without one, or all with ``GPTQ=0``, are rounded to nearest); ``clip_sigmas`` overrides k per
    class (e.g. from ``search_clip_sigmas``). With LQER on, the ``LQER_TOP_K`` quantized tensors
    of largest error get their low-rank correction. ``meta["defaulted"]`` lists the parameters
    that only the default rule classified."""
    cfg = h if isinstance(h, QuantConfig) else QuantConfig.from_hparams(h)
    sig = dict(cfg.clip_sigmas)
    sig.update(clip_sigmas or {})
    hessians = hessians or {}
    sd = model.state_dict()
    param_names = {n for n, _ in model.named_parameters()}
    for pat in cfg.fp16_patterns:
        if not any(_fp16_pattern_match(n, pat) for n in sd):
            raise ValueError(f"FP16_TENSORS pattern {pat!r} matches no tensor of the model")
    tensors: dict[str, QTensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    defaulted: dict[str, str] = {}
    lqer_err: dict[str, float] = {}
    for name, t in sd.items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype, tuple(t.stride())) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        cls, by_default = classify_tensor(name, t)
        is_param = name in param_names
        if by_default and is_param:
            defaulted[name] = cls
        shape = tuple(t.shape)
        keep16 = any(_fp16_pattern_match(name, p) for p in cfg.fp16_patterns)
        if not is_param and not keep16:  # buffers (e.g. tables) and integers: exact
            data = t.detach().clone().cpu().contiguous()
            tensors[name] = QTensor(name, cls, "raw", shape, t.dtype, data=data)
        elif cls in QUANT_CLASSES and not keep16:
            bits, k = cfg.bits[cls], float(sig[cls])
            w = t.detach().reshape(-1, shape[-1])
            scale = row_scales(w, bits, k)
            H = hessians.get(name)
            if cfg.gptq and H is not None:
                q, method = quantize_gptq(w, H, scale.to(w.device), bits, cfg.block_size, cfg.damp,
                                          cfg.act_order), "gptq"
            else:
                q, method = quantize_rtn(w, scale.to(w.device), bits), "rtn"
            tensors[name] = QTensor(name, cls, "int", shape, t.dtype, bits=bits, q=q.cpu().contiguous(),
                                    scale=scale.to(torch.float16).cpu().contiguous(), method=method,
                                    clip_sigmas=k)
            if cfg.lqer_rank > 0 and cfg.lqer_top_k > 0:
                deq = (q.float() * scale.to(w.device)[:, None])
                lqer_err[name] = float(torch.linalg.vector_norm(w.float() - deq))
        elif cls == "gate" and cfg.bits["gate"] == 8 and not keep16:
            q, scale = quantize_gate_rows(t.detach().reshape(-1, shape[-1]))
            tensors[name] = QTensor(name, cls, "int", shape, t.dtype, bits=8, q=q.cpu().contiguous(),
                                    scale=scale.to(torch.float16).cpu().contiguous(), method="absmax")
        else:
            data = t.detach().to(torch.float16) if t.is_floating_point() else t.detach().clone()
            tensors[name] = QTensor(name, cls, "raw", shape, t.dtype, data=data.cpu().contiguous())
    # LQER on the tensors of largest error (ties: state-dict order)
    top = sorted(lqer_err, key=lambda n: -lqer_err[n])[: cfg.lqer_top_k]
    for name in top:
        add_lqer_(tensors[name], sd[name], cfg.lqer_rank, cfg.lqer_bits, cfg.lqer_group)
    meta = {"gptq": cfg.gptq, "act_order": cfg.act_order, "bits": dict(cfg.bits),
            "clip_sigmas": {c: float(v) for c, v in sig.items()}}
    if cfg.lqer_rank > 0 and cfg.lqer_top_k > 0:
        meta["lqer"] = {"rank": cfg.lqer_rank, "top_k": cfg.lqer_top_k, "bits": cfg.lqer_bits,
                        "group": cfg.lqer_group, "tensors": [n for n in tensors if n in top]}
    if defaulted:
        meta["defaulted"] = defaulted
    return QuantizedModel(tensors=tensors, aliases=aliases, meta=meta)


def dequantize_state_dict(qm: QuantizedModel) -> dict[str, torch.Tensor]:
    """A state dict (original names, dtypes and shapes; aliases resolved) from ``qm``."""
    out = {name: dequantize_tensor(t) for name, t in qm.tensors.items()}
    for name, target in qm.aliases.items():
        out[name] = out[target]
    return out


def dequantize_into(model: nn.Module, qm: QuantizedModel) -> nn.Module:
    """Load the dequantized weights into ``model`` (strict: names must match its state dict)."""
    sd = dequantize_state_dict(qm)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ValueError(f"quantized model does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict(sd, strict=True)
    return model


def _layerless(name: str) -> str:
    return re.sub(r"\.\d+\.", ".", name)


def quant_summary(qm: QuantizedModel) -> list[str]:
    """Log lines like the records': which tensors went through which method at which bits, which
    got an LQER correction, and every parameter that only the default rule classified."""
    groups: dict[tuple[str, int], list[str]] = {}
    for t in qm.tensors.values():
        if t.kind == "int":
            key = (t.method + (f"+lqer(r{t.lqer_rank},int{t.lqer_bits})" if t.lqer_rank else ""), t.bits)
            groups.setdefault(key, []).append(t.name if t.lqer_rank else _layerless(t.name))
    lines = ["Quantized weights:"]
    for (method, bits), names in sorted(groups.items()):
        lines.append(f"  {method} (int{bits}): {', '.join(sorted(set(names)))}")
    raw16 = sorted({_layerless(t.name) for t in qm.tensors.values()
                    if t.kind == "raw" and t.data.dtype == torch.float16})
    if raw16:
        n16 = sum(1 for t in qm.tensors.values() if t.kind == "raw" and t.data.dtype == torch.float16)
        lines.append(f"  passthrough (float16): {n16} tensors: {', '.join(raw16)}")
    defaulted = qm.meta.get("defaulted") or {}
    if defaulted:
        desc = []
        for name, cls in defaulted.items():
            t = qm.tensors.get(name)
            how = f"int{t.bits} {t.method}" if t is not None and t.kind == "int" else "float16"
            desc.append(f"{name} -> {cls} ({how})")
        lines.append(f"  default class (no name rule knows them): {'; '.join(desc)}")
    return lines


# ---------------------------------------------------------------------------------------------
# choosing k, estimating size, pruning


def entropy_bits(q: torch.Tensor) -> float:
    """Empirical entropy of the values of ``q`` times its size, in bits (a compressed-size proxy)."""
    counts = torch.bincount((q.reshape(-1).to(torch.int64) + 128), minlength=256).double()
    return _entropy_of_counts(counts)


def _entropy_of_counts(counts: torch.Tensor) -> float:
    n = float(counts.sum())
    if n == 0:
        return 0.0
    c = counts[counts > 0]
    return float(-(c * torch.log2(c / n)).sum())


def search_clip_sigmas(h, model: nn.Module, hessians: dict[str, torch.Tensor] | None,
                       candidates: dict[str, Sequence[float]]) -> tuple[dict[str, float], dict]:
    """Try each candidate k per class (e.g. ``{"attn": [10, 12.85, 15], "embed": [16, 20]}``);
    keep the k with the lowest total Hessian-weighted error ``tr(dW H dW^T)`` over the class.

    Returns ``(best, table)``: ``best[cls] = k``; ``table[cls][k] = {"error": E,
    "bits_per_value": entropy}``. Smaller k usually means lower error but a larger artifact (the
    entropy column shows the price), so give candidates in a range that fits the byte limit.
    """
    cfg = h if isinstance(h, QuantConfig) else QuantConfig.from_hparams(h)
    hessians = hessians or {}
    sd = model.state_dict()
    best: dict[str, float] = {}
    table: dict[str, dict] = {}
    for cls, ks in candidates.items():
        if cls not in QUANT_CLASSES:
            raise ValueError(f"clip search: unknown class {cls!r} (known: {', '.join(QUANT_CLASSES)})")
        names = [n for n, t in sd.items() if tensor_class(n, t) == cls
                 and not any(_fp16_pattern_match(n, p) for p in cfg.fp16_patterns)]
        if not names or not ks:
            continue
        table[cls] = {}
        bits = cfg.bits[cls]
        for k in ks:
            err, ent, numel = 0.0, 0.0, 0
            for n in names:
                w = sd[n].detach()
                scale = row_scales(w, bits, float(k)).to(w.device)
                H = hessians.get(n)
                if cfg.gptq and H is not None:
                    q = quantize_gptq(w, H, scale, bits, cfg.block_size, cfg.damp, cfg.act_order)
                else:
                    q = quantize_rtn(w, scale, bits)
                err += hessian_error(w, q.float() * scale[:, None], H)
                ent += entropy_bits(q)
                numel += q.numel()
            table[cls][float(k)] = {"error": err, "bits_per_value": ent / max(numel, 1)}
        best[cls] = min(table[cls], key=lambda kk: (table[cls][kk]["error"], kk))
    return best, table


@dataclass
class PruneCandidates:
    """Every quantized value of magnitude 1, cheapest first (cost = diag(H)[col] * scale[row]^2,
    the added squared output error of setting it to 0)."""

    names: list[str]
    tensor_ids: torch.Tensor  # int64 [N], index into names
    flat_index: torch.Tensor  # int64 [N], position inside that tensor's q
    positive: torch.Tensor  # bool [N], the value is +1 (else -1)
    cost: torch.Tensor  # float32 [N], ascending
    base_counts: torch.Tensor  # float64 [len(names), 256]: value histograms before any pruning
    pruned: int = 0  # how many of the cheapest are already set to 0

    def __len__(self) -> int:
        return int(self.cost.numel())

    def prune(self, qm: QuantizedModel, n: int) -> int:
        """Make exactly the ``n`` cheapest candidates 0 in ``qm`` (in place): prunes more, or
        restores the ±1 of candidates beyond ``n``. Returns ``n`` (clamped to the candidates)."""
        n = max(0, min(int(n), len(self)))
        if n != self.pruned:
            lo, hi = min(n, self.pruned), max(n, self.pruned)
            tid, flat, pos = self.tensor_ids[lo:hi], self.flat_index[lo:hi], self.positive[lo:hi]
            for i, name in enumerate(self.names):
                sel = tid == i
                if bool(sel.any()):
                    q = qm.tensors[name].q.view(-1)
                    if n > self.pruned:
                        q[flat[sel]] = 0
                    else:
                        q[flat[sel]] = torch.where(pos[sel], 1, -1).to(q.dtype)
            self.pruned = n
        qm.meta["pruned_values"] = self.pruned
        return self.pruned

    def entropy_bits(self, n: int) -> float:
        """Entropy proxy (bits, summed per tensor) of the tensors holding candidates after pruning
        the ``n`` cheapest; computed from the histograms, whatever has been pruned already."""
        n = max(0, min(int(n), len(self)))
        m = len(self.names)
        if m == 0:
            return 0.0
        moved = torch.bincount(self.tensor_ids[:n] * 2 + self.positive[:n].long(), minlength=2 * m)
        moved = moved.double().view(m, 2)
        counts = self.base_counts.clone()
        counts[:, 127] -= moved[:, 0]
        counts[:, 129] -= moved[:, 1]
        counts[:, 128] += moved.sum(1)
        total = counts.sum(1, keepdim=True)
        plogp = torch.where(counts > 0, counts * torch.log2(counts.clamp(min=1) / total),
                            torch.zeros_like(counts))
        return float(-plogp.sum())

    def count_for_saving(self, bits_needed: float) -> int:
        """The fewest candidates whose pruning lowers the entropy proxy by ``bits_needed``, or
        ``len(self) + 1`` if pruning all of them is not enough."""
        e0 = self.entropy_bits(0)
        lo, hi = 0, len(self)
        if e0 - self.entropy_bits(hi) < bits_needed:
            return len(self) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if e0 - self.entropy_bits(mid) >= bits_needed:
                hi = mid
            else:
                lo = mid + 1
        return lo


def prune_candidates(qm: QuantizedModel, hessians: dict[str, torch.Tensor] | None) -> PruneCandidates:
    """Collect the ±1 values of all quantized tensors, cheapest first. Tensors without a Hessian
    are priced as if their inputs had unit second moment."""
    hessians = hessians or {}
    names, tids, flats, pos, costs, hists = [], [], [], [], [], []
    for name, t in qm.tensors.items():
        if t.kind != "int" or t.cls not in QUANT_CLASSES:  # gates are few values, each one matters
            continue
        q = t.q
        idx = (q.abs() == 1).reshape(-1).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        H = hessians.get(name)
        diag = torch.diag(H).float().cpu() if H is not None else torch.ones(q.shape[1])
        rows, cols = idx // q.shape[1], idx % q.shape[1]
        costs.append(diag[cols] * t.scale.float()[rows] ** 2)
        tids.append(torch.full((idx.numel(),), len(names), dtype=torch.int64))
        names.append(name)
        flats.append(idx)
        pos.append(q.reshape(-1)[idx] > 0)
        hists.append(torch.bincount(q.reshape(-1).to(torch.int64) + 128, minlength=256).double())
    if not names:
        e = torch.zeros(0, dtype=torch.int64)
        return PruneCandidates([], e, e, torch.zeros(0, dtype=torch.bool), torch.zeros(0),
                               torch.zeros(0, 256, dtype=torch.float64))
    cost = torch.cat(costs)
    order = torch.argsort(cost, stable=True)
    return PruneCandidates(names, torch.cat(tids)[order], torch.cat(flats)[order], torch.cat(pos)[order],
                           cost[order], torch.stack(hists))
