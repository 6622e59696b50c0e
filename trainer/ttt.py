"""Legal score-first test-time training (TTT) over the validation stream.

The target tokens are cut into chunks of TTT_CHUNK_TOKENS. For each chunk, in order:
1. score all of it under no_grad with the sliding-window layout of trainer/evaluate.py (the
   context may reach back into earlier chunks, which are already scored) and add to the totals;
2. then adapt the model on that chunk: SGD (TTT_LR, momentum TTT_MOMENTUM), TTT_EPOCHS passes
   over its EVAL_SEQ_LEN-long sequences, TTT_BATCH_SEQS sequences per step, grad clip
   TTT_GRAD_CLIP, learning rate on a cosine from TTT_LR (first chunk) to 0 (last chunk).
A token is therefore never an input or a target of a gradient step before it has been scored;
one pass, full softmax. The last chunk is scored but not trained on.

Distributed: each rank scores its share of a chunk's windows and trains on its share of each
step's TTT_BATCH_SEQS sequences; gradients are summed across ranks (weighted so the step is
the same mean over the whole batch for any world size), so all ranks keep identical weights.
The model is adapted in place.
"""

from __future__ import annotations

import math
import time

import torch

from trainer.dist import all_reduce_
from trainer.evaluate import EvalResult, eval_autocast, eval_result, eval_score_windows, eval_window_plan


def ttt_chunk_bounds(n_tokens: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """Target-token ranges ``[lo, hi)`` of the chunks (token 0 is context only)."""
    if chunk_tokens < 1:
        raise ValueError(f"TTT_CHUNK_TOKENS={chunk_tokens}: must be at least 1")
    return [(lo, min(lo + chunk_tokens, n_tokens)) for lo in range(1, n_tokens, chunk_tokens)]


def cosine_lr(base: float, chunk: int, n_chunks: int) -> float:
    """Cosine decay across chunks: ``base`` at the first chunk, 0 at the last."""
    return base * 0.5 * (1.0 + math.cos(math.pi * chunk / max(n_chunks - 1, 1)))


def ttt_lr_at(h, chunk: int, n_chunks: int) -> float:
    """TTT_LR on the cosine across chunks."""
    return cosine_lr(h.ttt_lr, chunk, n_chunks)


def _ttt_share(n: int, dist) -> tuple[int, int]:
    """This rank's contiguous share ``[a, b)`` of ``n`` items."""
    return n * dist.rank // dist.world_size, n * (dist.rank + 1) // dist.world_size


def _ttt_sync_grads(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Sum the gradients over ranks in one flat all-reduce (missing grads count as zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world_size <= 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce_(flat)
    off = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[off:off + n].view_as(p.grad))
        off += n


def ttt_train_chunk(h, model, dist, tokens: torch.Tensor, lo: int, hi: int, opt: torch.optim.Optimizer,
                    params: list[torch.nn.Parameter], recorder=None) -> int:
    """Adapt on the scored target tokens ``[lo, hi)`` with the TTT_* settings (see
    ``train_scored_sequences``). Returns the number of optimizer steps."""
    return train_scored_sequences(model, dist, tokens, lo, hi, opt, params, h.eval_seq_len, h.ttt_batch_seqs,
                                  h.ttt_epochs, h.ttt_grad_clip, recorder)


def train_scored_sequences(model, dist, tokens: torch.Tensor, lo: int, hi: int, opt: torch.optim.Optimizer,
                           params: list[torch.nn.Parameter], seq_len: int, per_step: int, epochs: int,
                           grad_clip: float, recorder=None) -> int:
    """Train on the target tokens ``[lo, hi)`` of ``tokens``: whole ``seq_len`` sequences only
    (inputs ``tokens[lo-1+m*L : lo-1+(m+1)*L]``), ``epochs`` passes, ``per_step`` sequences per
    step split over the ranks (gradients summed so a step is the same batch mean for any world
    size), clipped to ``grad_clip`` (0 = off). ``recorder.on_train`` gets the positions (in
    ``tokens``) of every step's inputs and targets, ``recorder.on_sync()`` (if it has one) follows
    every step. Returns the number of optimizer steps."""
    n_seq = (hi - lo) // seq_len
    if n_seq == 0 or epochs <= 0:
        return 0
    if per_step < 1:
        raise ValueError(f"TTT_BATCH_SEQS={per_step}: must be at least 1")
    pos = torch.arange(seq_len + 1, device=tokens.device)
    steps = 0
    model.train()
    for _ in range(epochs):
        for s0 in range(0, n_seq, per_step):
            s1 = min(s0 + per_step, n_seq)
            a, b = _ttt_share(s1 - s0, dist)
            opt.zero_grad(set_to_none=True)
            if b > a:
                starts = lo - 1 + (s0 + torch.arange(a, b, device=tokens.device)) * seq_len
                seqs = tokens[starts[:, None] + pos[None, :]]
                if recorder is not None:
                    recorder.on_train(torch.arange(lo - 1 + (s0 + a) * seq_len, lo + (s0 + b) * seq_len))
                with eval_autocast(tokens.device):
                    loss = model(seqs[:, :-1], seqs[:, 1:])
                # weight by this rank's share so the summed gradient is the batch mean
                (loss.float() * ((b - a) / (s1 - s0))).backward()
            _ttt_sync_grads(params, dist.world_size)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            steps += 1
            if recorder is not None and hasattr(recorder, "on_sync"):
                recorder.on_sync()  # a collective update: every rank's weights now hold every rank's step
    model.eval()
    return steps


def eval_ttt(h, model, dist, val_tokens: torch.Tensor, val_bytes: torch.Tensor, recorder=None,
             progress=None, train_model=None, clock=time.perf_counter, deadline: float | None = None,
             log=None) -> EvalResult:
    """Score-first TTT evaluation (see module doc); ``recorder`` (optional) gets
    ``on_score(token_ids)`` for every scored batch and ``on_train(token_ids)`` for the tokens
    of every gradient step, in program order (trainer/probes.py checks the order);
    ``progress(done_chunks, n_chunks, seconds)`` (optional) is called after every chunk.
    ``train_model``: the module the adaptation steps run through, sharing ``model``'s parameters
    (e.g. ``model`` is a torch.compile wrapper for scoring and ``train_model`` the eager module:
    compiling the backward, and again for each odd-sized last batch, costs a minute each).
    ``deadline`` (a ``clock()`` value, EVAL_BUDGET_SECONDS): before training on a chunk, every rank
    projects from its measured times whether training it and scoring the rest still fits; if any
    rank says no, training stops for good and the remaining chunks are only scored."""
    t0 = clock()
    device = dist.device
    tokens = val_tokens.to(device=device, dtype=torch.int64)
    chunks = ttt_chunk_bounds(tokens.numel(), h.ttt_chunk_tokens)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    was_training = model.training
    spent = [0.0, 0.0]  # seconds scoring, seconds training (measured, device-synced when budgeted)
    adapting = True
    model.eval()
    try:
        for ci, (lo, hi) in enumerate(chunks):
            t_s = clock()
            plan = eval_window_plan(lo, hi, h.eval_seq_len, h.eval_stride)
            a, b = _ttt_share(plan.shape[0], dist)
            sums += eval_score_windows(model, tokens, plan[a:b], h.eval_seq_len, h.eval_batch_seqs,
                                       val_bytes, recorder)
            if deadline is not None:
                _ttt_sync(device)
            t_t = clock()
            spent[0] += t_t - t_s
            if ci < len(chunks) - 1 and adapting and deadline is not None and ci > 0:
                left = len(chunks) - ci - 1
                need = spent[1] / ci + spent[0] / (ci + 1) * left
                go = torch.tensor([1.0 if clock() + 1.1 * need <= deadline else 0.0], device=device)
                all_reduce_(go)
                if int(go.item()) < dist.world_size:
                    adapting = False
                    if log is not None and dist.rank == 0:
                        log(f"eval_budget: stop adapting at chunk:{ci + 1}/{len(chunks)} elapsed:"
                            f"{clock() - t0:.1f}s: training the rest would pass EVAL_BUDGET_SECONDS="
                            f"{h.eval_budget_seconds:g}; the rest is only scored")
            if ci < len(chunks) - 1 and adapting:
                for g in opt.param_groups:
                    g["lr"] = ttt_lr_at(h, ci, len(chunks))
                ttt_train_chunk(h, train_model or model, dist, tokens, lo, hi, opt, params, recorder)
                if deadline is not None:
                    _ttt_sync(device)
                spent[1] += clock() - t_t
            if progress is not None:
                progress(ci + 1, len(chunks), clock() - t0)
    finally:
        opt.zero_grad(set_to_none=True)
        model.train(was_training)
    all_reduce_(sums)
    _ttt_sync(device)
    return eval_result(sums, clock() - t0)


def _ttt_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
