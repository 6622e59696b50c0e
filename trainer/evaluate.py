"""Exact validation scoring: plain (non-overlapping windows) and sliding-window evaluation.

Indexing: token ``k`` (1 <= k < N) of the validation stream is a target, predicted from the
inputs ``tokens[ws:k]`` of the window that scores it. Windows start at multiples of the stride
``s`` and hold ``L`` (EVAL_SEQ_LEN) inputs; token ``k`` is scored by the window starting at
``max(0, ceil((k - L) / s) * s)``, i.e. with the longest context that window layout allows
(between L - s + 1 and L tokens once k > L). Every target is scored exactly once. With
``s == L`` this is the challenge's plain evaluation (non-overlapping windows; a short final
window scores the tail that the baseline's loader would have cut off).

val_loss = sum NLL / tokens (nats); val_bpb = sum NLL / ln 2 / bytes (trainer/bpb.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.data import doc_cu_seqlens
from trainer.dist import all_reduce_


@dataclass
class EvalResult:
    val_loss: float  # mean NLL, nats per token
    val_bpb: float
    nll_sum: float  # nats
    tokens: int
    bytes: int
    seconds: float


def eval_autocast(device: torch.device):
    """bf16 autocast on CUDA (as training runs), plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_window_plan(k_lo: int, k_hi: int, seq_len: int, stride: int) -> torch.Tensor:
    """Windows scoring the target tokens ``[k_lo, k_hi)`` in the global layout (see module doc).

    Returns int64 [W, 3] on CPU: window start ``ws`` and the scored token range ``[lo, hi)``.
    A range cut out of the stream (a TTT chunk) gets the same windows as the whole-stream
    evaluation, clipped to the range, so chunked scoring of an unchanged model is identical.
    """
    if not 1 <= stride <= seq_len:
        raise ValueError(f"EVAL_STRIDE={stride}: must be between 1 and EVAL_SEQ_LEN={seq_len}")
    k_lo = max(int(k_lo), 1)
    if k_hi <= k_lo:
        return torch.zeros((0, 3), dtype=torch.int64)
    first = max(0, -(-(k_lo - seq_len) // stride) * stride)
    last = max(0, -(-(k_hi - 1 - seq_len) // stride) * stride)
    ws = torch.arange(first, last + 1, stride, dtype=torch.int64)
    # window ws scores tokens (ws + L - s, ws + L]; the first window scores everything from 1
    own_lo = torch.where(ws == 0, torch.ones_like(ws), ws + seq_len - stride + 1)
    lo = own_lo.clamp(min=k_lo)
    hi = (ws + seq_len + 1).clamp(max=k_hi)
    return torch.stack([ws, lo, hi], dim=1)


def eval_score_windows(model, tokens: torch.Tensor, plan: torch.Tensor, seq_len: int, batch_seqs: int,
                       val_bytes: torch.Tensor, recorder=None) -> torch.Tensor:
    """Score the plan's windows (no grad), ``batch_seqs`` at a time; ``tokens`` is the whole
    stream on the model's device and ``val_bytes`` its per-position target bytes
    (``trainer.bpb.position_bytes`` or a byte sidecar, same length). Returns the local sums
    float64 [nll, tokens, bytes] there.

    Batches are always ``[batch_seqs, seq_len]`` (short windows padded at the end, where a
    causal model cannot see them; missing rows padded with empty windows), so a compiled model
    sees one shape. A model with ``varlen_attn`` set gets each batch's document bounds (one host
    sync per batch: ``trainer.data.doc_cu_seqlens``).
    """
    if batch_seqs < 1:
        raise ValueError(f"EVAL_BATCH_SEQS={batch_seqs}: must be at least 1")
    device = tokens.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    n = tokens.numel()
    if val_bytes.numel() != n:
        raise ValueError(f"val_bytes holds {val_bytes.numel()} entries for {n} validation tokens")
    val_bytes = val_bytes.to(device)
    if plan.numel() == 0:
        return sums
    n_win = plan.shape[0]
    n_pad = -n_win % batch_seqs  # pad with empty windows: start 0, nothing scored
    plan = torch.cat([plan, torch.tensor([[0, 1, 1]], dtype=torch.int64).expand(n_pad, 3)])
    plan_dev = plan.to(device)  # one copy up front: no host-device sync inside the loop
    pos = torch.arange(seq_len, dtype=torch.int64, device=device)
    packed = bool(getattr(model, "varlen_attn", False))
    for b0 in range(0, n_win, batch_seqs):
        part, part_dev = plan[b0:b0 + batch_seqs], plan_dev[b0:b0 + batch_seqs]
        # scored positions j = k - ws - 1 span [p0, p1) in this batch (from the CPU copy: no sync)
        live = part[:, 2] > part[:, 1]
        p0 = int((part[live, 1] - part[live, 0] - 1).min())
        p1 = int((part[live, 2] - part[live, 0] - 1).max())
        idx = (part_dev[:, :1] + pos[None, :]).clamp(max=n - 1)
        x = tokens[idx]
        y = tokens[(idx[:, p0:p1] + 1).clamp(max=n - 1)]
        with torch.no_grad(), eval_autocast(device):
            if packed:  # VARLEN_ATTN: attention stays inside each document, as in training
                logits = model(x, cu_seqlens=doc_cu_seqlens(x, model.doc_bos_id), max_seqlen=seq_len)
            else:
                logits = model(x)
        logits = logits[:, p0:p1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        k = part_dev[:, :1] + 1 + pos[None, p0:p1]
        mask = (k >= part_dev[:, 1:2]) & (k < part_dev[:, 2:3])
        nb = val_bytes[k.clamp(max=n - 1)]
        sums[0] += (nll.view_as(mask).double() * mask).sum()
        sums[1] += mask.sum()
        sums[2] += (nb * mask).sum()
        if recorder is not None:
            recorder.on_score(k[mask].cpu())
    return sums


def _ev_share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous share ``[a, b)`` of ``n`` items."""
    return n * rank // world_size, n * (rank + 1) // world_size


def eval_result(sums: torch.Tensor, seconds: float) -> EvalResult:
    nll, count, nbytes = (float(v) for v in sums.cpu())
    if count <= 0 or nbytes <= 0:
        raise ValueError(f"evaluation scored {int(count)} tokens / {int(nbytes)} bytes: "
                         "validation stream too short (need at least 2 tokens)")
    return EvalResult(val_loss=nll / count, val_bpb=nll / math.log(2) / nbytes, nll_sum=nll,
                      tokens=int(count), bytes=int(nbytes), seconds=seconds)


def _ev_run(h, model, dist, val_tokens: torch.Tensor, val_bytes: torch.Tensor, stride: int) -> EvalResult:
    t0 = time.perf_counter()
    device = dist.device
    tokens = val_tokens.to(device=device, dtype=torch.int64)
    plan = eval_window_plan(1, tokens.numel(), h.eval_seq_len, stride)
    a, b = _ev_share(plan.shape[0], dist.rank, dist.world_size)
    was_training = model.training
    model.eval()
    try:
        sums = eval_score_windows(model, tokens, plan[a:b], h.eval_seq_len, h.eval_batch_seqs, val_bytes)
    finally:
        model.train(was_training)
    all_reduce_(sums)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return eval_result(sums, time.perf_counter() - t0)


def eval_plain(h, model, dist, val_tokens: torch.Tensor, val_bytes: torch.Tensor) -> EvalResult:
    """Non-overlapping EVAL_SEQ_LEN windows (the challenge's baseline evaluation)."""
    return _ev_run(h, model, dist, val_tokens, val_bytes, h.eval_seq_len)


def eval_sliding(h, model, dist, val_tokens: torch.Tensor, val_bytes: torch.Tensor) -> EvalResult:
    """Sliding windows of EVAL_SEQ_LEN inputs, stride EVAL_STRIDE, split over the ranks."""
    return _ev_run(h, model, dist, val_tokens, val_bytes, h.eval_stride)
