"""The training loop: warm-up and reset, gradient accumulation, schedules, recurrence, EMA, cap.

As the records do: compile warm-up steps (with and without recurrence) run on real batches and
are then undone (model, optimizer and loader restored); training time excludes validation;
progress is elapsed / (MAX_WALLCLOCK_SECONDS - GPTQ_RESERVE_SECONDS) when a cap is set, else
step / ITERATIONS; the EMA of the weights is swapped in at the end.

Any world size sees the same global batch: GRAD_ACCUM_STEPS (0 = 8 // world size) micro-steps
of TRAIN_BATCH_TOKENS / world / accum tokens per rank (DATA_SAMPLER=shuffled: the same windows for
any world size), gradients averaged by a few large collectives (trainer.optim.TrainOptimizers).
With VARLEN_ATTN the batches carry their document bounds (cu_seqlens, padded to buckets of 64
entries so a compiled model sees few shapes; the warm-up compiles the likely buckets). In
distributed runs the clock readings that drive decisions (recurrence, LR, cap) are the maximum
over ranks, so every rank switches and stops at the same step. The clock is a parameter
(``time.perf_counter`` by default) so the cap's logic is testable without wall time.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from trainer.attention import varlen_traceable
from trainer.data import CU_SEQLENS_BUCKET, doc_cu_seqlens, make_train_loader
from trainer.dist import DistInfo, all_reduce_
from trainer.model import GPT
from trainer.optim import build_optimizers, lr_scale_at, muon_momentum_at, training_fraction
from trainer.runlog import RunLog

# inductor options for torch.compile of the training model (benchmarks may change them)
COMPILE_OPTIONS: dict = {}


@dataclass
class TrainOutcome:
    model: GPT  # the trained model (uncompiled) with the EMA weights swapped in
    runner: nn.Module  # its torch.compile wrapper on CUDA (same parameters), else the model itself
    steps: int  # optimizer steps taken (warm-up steps not counted)
    iterations: int
    train_time_ms: float  # training only: warm-up, compilation and validation excluded
    stop_reason: str  # "wallclock_cap" | "iterations"
    peak_mem_mib: float  # peak CUDA memory allocated (0 on CPU)
    recurrence_step: int | None  # step at which depth recurrence switched on
    final_train_loss: float  # mean loss of the last step (nan if no step ran)
    grad_accum_steps: int
    tokens_seen: int


def resolve_grad_accum(h, world_size: int) -> int:
    """GRAD_ACCUM_STEPS, 0 meaning 8 // world size; checks the batch splits into whole sequences."""
    ga = h.grad_accum_steps if h.grad_accum_steps > 0 else max(1, 8 // world_size)
    per = h.train_batch_tokens / (world_size * ga * h.train_seq_len)
    if per != int(per) or per < 1:
        raise ValueError(f"TRAIN_BATCH_TOKENS={h.train_batch_tokens} does not split into whole "
                         f"{h.train_seq_len}-token sequences over {world_size} ranks x {ga} micro-steps")
    return ga


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_model(h, device: torch.device) -> GPT:
    """The GPT built on the CPU from SEED (identical on every rank and device), then moved."""
    seed_everything(h.seed)
    return GPT(h).to(device)


def autocast_context(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _inductor_has(key: str) -> bool:
    """Whether this torch's inductor knows the (possibly dotted) option ``key``."""
    import torch._inductor.config as ic

    obj = ic
    for part in key.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _val_numbers(res) -> tuple[float, float]:
    if hasattr(res, "val_loss"):
        return float(res.val_loss), float(getattr(res, "val_bpb", float("nan")))
    loss, bpb = res
    return float(loss), float("nan") if bpb is None else float(bpb)


def mean_loss_validator(h, dist: DistInfo, val_tokens: torch.Tensor, max_seqs: int = 0) -> Callable:
    """A simple validation: mean next-token loss over non-overlapping TRAIN_SEQ_LEN windows,
    split over the ranks (no bpb: returns (loss, None)). For use where no exact evaluator is wired."""
    T = h.train_seq_len
    n_seq = (val_tokens.numel() - 1) // T
    if max_seqs > 0:
        n_seq = min(n_seq, max_seqs)
    if n_seq < 1:
        raise ValueError(f"validation stream of {val_tokens.numel()} tokens is shorter than one "
                         f"{T}-token window")
    lo, hi = n_seq * dist.rank // dist.world_size, n_seq * (dist.rank + 1) // dist.world_size

    def validate(model: nn.Module) -> tuple[float, None]:
        sums = torch.zeros(2, dtype=torch.float64, device=dist.device)
        was = model.training
        model.eval()
        with torch.no_grad():
            for s in range(lo, hi, 8):
                e = min(s + 8, hi)
                chunk = val_tokens[s * T:e * T + 1].to(dist.device, dtype=torch.int64)
                x, y = chunk[:-1].view(-1, T), chunk[1:].view(-1, T)
                with autocast_context(dist.device):
                    if getattr(model, "varlen_attn", False):  # no attention across documents
                        loss = model(x, y, cu_seqlens=doc_cu_seqlens(x), max_seqlen=T)
                    else:
                        loss = model(x, y)
                sums[0] += loss.double() * y.numel()
                sums[1] += y.numel()
        model.train(was)
        all_reduce_(sums)
        return float(sums[0] / sums[1]), None

    return validate


def _raise_recompile_limit(limit: int = 64) -> None:
    """Room for the compiled graphs a run needs (train/eval x recurrence x cu_seqlens buckets)."""
    import torch._dynamo.config as dc

    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, key):
            setattr(dc, key, max(getattr(dc, key), limit))


def warmup_buckets(observed: list[int], rows: int, bucket: int = CU_SEQLENS_BUCKET, spread: int = 1
                   ) -> list[int]:
    """cu_seqlens lengths to compile ahead: every bucket from one below the smallest observed to one
    above the largest (``spread`` buckets of margin), never below what ``rows`` rows need."""
    lowest = -(-(rows + 1) // bucket) * bucket
    lo = max(lowest, min(observed) - spread * bucket)
    return list(range(lo, max(observed) + spread * bucket + 1, bucket))


def run_training(h, dist: DistInfo, log: RunLog, validate: Callable | None = None,
                 train_pattern: str | None = None, clock: Callable[[], float] = time.perf_counter
                 ) -> TrainOutcome:
    """Train per ``h`` on this rank; returns the EMA model and how training went.

    ``validate(model)`` (optional) runs every VAL_LOSS_EVERY steps (0: only at the end) and at the
    last step, on all ranks, returning an object with ``val_loss``/``val_bpb`` or a pair.
    ``train_pattern`` defaults to DATA_PATH/fineweb_train_*.bin. ``clock()`` returns seconds; it
    times training and drives the wallclock cap, the LR schedule and recurrence.
    """
    device = dist.device
    cuda = device.type == "cuda"
    ga = resolve_grad_accum(h, dist.world_size)
    T = h.train_seq_len
    pattern = train_pattern or os.path.join(h.data_path, "fineweb_train_*.bin")

    def new_loader():
        return make_train_loader(h, pattern, dist.rank, dist.world_size, device)

    loader = new_loader()
    model = build_model(h, device)
    params = list(model.parameters())
    log.line(f"model_params:{sum(p.numel() for p in params)}")
    log.line(f"world_size:{dist.world_size} grad_accum_steps:{ga} micro_batch_tokens:"
             f"{h.train_batch_tokens // (dist.world_size * ga)} seq_len:{T} data_sampler:{h.data_sampler} "
             f"varlen_attn:{int(h.varlen_attn)}")
    runner: nn.Module = model
    if cuda and h.compile:
        _raise_recompile_limit()
        opts = {k: v for k, v in COMPILE_OPTIONS.items() if _inductor_has(k)}
        # the per-segment varlen fallback reads cu_seqlens on the host: graph breaks, not an error
        full = not (h.varlen_attn and not varlen_traceable())
        if not full:
            log.line("compile: fullgraph off (varlen attention falls back to the per-segment loop)")
        runner = torch.compile(model, dynamic=False, fullgraph=full, options=opts or None)
    opt = build_optimizers(h, model)
    cap_ms = None
    if h.max_wallclock_seconds > 0:
        cap_ms = 1000.0 * (h.max_wallclock_seconds - h.gptq_reserve_seconds)
    if cap_ms is not None:
        if cap_ms <= 0:
            raise ValueError(f"MAX_WALLCLOCK_SECONDS={h.max_wallclock_seconds} leaves no training time after "
                             f"GPTQ_RESERVE_SECONDS={h.gptq_reserve_seconds}")
        log.line(f"wallclock_cap: {h.max_wallclock_seconds:g}s - reserve {h.gptq_reserve_seconds:g}s "
                 f"= {cap_ms:.0f}ms of training")

    def forward_loss(x, y, cu) -> torch.Tensor:
        with autocast_context(device):
            if cu is None:
                return runner(x, y)
            return runner(x, y, cu_seqlens=cu, max_seqlen=T)

    def micro_batch(ld):
        if h.varlen_attn:
            return ld.next_packed_batch(h.train_batch_tokens, T, ga)
        x, y = ld.next_batch(h.train_batch_tokens, T, ga)
        return x, y, None

    def train_step(step: int, lr_scale: float) -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), device=device)
        for _ in range(ga):
            x, y, cu = micro_batch(loader)
            loss = forward_loss(x, y, cu)
            (loss / ga).backward()
            total += loss.detach()
        opt.set_muon_momentum(muon_momentum_at(h, step))
        opt.set_lr_scale(lr_scale)
        opt.sync_and_clip(h.grad_clip_norm)
        opt.step()
        return total / ga

    # --- compile warm-up, then undo it --------------------------------------------------
    if h.warmup_steps > 0:
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())
        t_w = time.perf_counter()
        modes = [False, True] if model.has_loops else [False]
        if h.varlen_attn:
            # each cu_seqlens length is its own compiled graph: compile the likely ones now, from the
            # lengths a sample of batches needs (forward + backward only; nothing is stepped)
            x, y, _ = micro_batch(loader)
            sizes = [micro_batch(loader)[2].numel() for _ in range(16)]
            buckets = warmup_buckets(sizes, x.size(0))
            log.line(f"warmup_cu_buckets:{','.join(map(str, buckets))} (observed {min(sizes)}-{max(sizes)})")
            starts = torch.arange(0, x.numel(), T, dtype=torch.int32, device=device)
            for on in modes:
                model.set_recurrence(on)
                for size in buckets:
                    cu = torch.full((size,), x.numel(), dtype=torch.int32, device=device)
                    cu[:starts.numel()] = starts
                    opt.zero_grad()
                    (forward_loss(x, y, cu) / ga).backward()
            model.set_recurrence(False)
            opt.zero_grad()
        for on in modes:
            model.set_recurrence(on)
            if on:
                log.line(f"loop_warmup:enabled encoder:{model.encoder_indices} "
                         f"decoder:{model.decoder_indices}")
            for i in range(h.warmup_steps):
                train_step(i, 1.0)
        model.set_recurrence(False)
        _sync(device)
        log.line(f"warmup: {h.warmup_steps} steps per graph in {time.perf_counter() - t_w:.1f}s "
                 "(state reset after)")
        model.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)
        opt.zero_grad()
        loader = new_loader()
        del saved_model, saved_opt

    ema = [p.detach().float().clone() for p in params] if h.ema_decay > 0 else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def shared_elapsed(train_ms: float, t0: float) -> float:
        ms = train_ms + 1000.0 * (clock() - t0)
        if dist.world_size > 1:  # one clock for all ranks: the slowest
            t = torch.tensor([ms], dtype=torch.float64, device=device)
            all_reduce_(t, op="max")
            ms = float(t.item())
        return ms

    def run_validation(step: int, train_ms: float) -> None:
        loss, bpb = _val_numbers(validate(runner))
        avg = train_ms / max(step, 1)
        log.line(f"step:{step}/{h.iterations} val_loss:{loss:.4f} val_bpb:{bpb:.4f} "
                 f"train_time:{train_ms:.0f}ms step_avg:{avg:.2f}ms")
        log.event("val", step=step, val_loss=loss, val_bpb=bpb, train_time_ms=train_ms)

    step, train_ms, rec_step = 0, 0.0, None
    last_loss = float("nan")
    stop_reason = "iterations"
    _sync(device)
    t0 = clock()
    while True:
        elapsed = shared_elapsed(train_ms, t0)
        capped = cap_ms is not None and elapsed >= cap_ms
        last = step >= h.iterations or capped
        if validate is not None and (last or (h.val_loss_every > 0 and step % h.val_loss_every == 0)):
            _sync(device)
            train_ms = shared_elapsed(train_ms, t0)
            run_validation(step, train_ms)
            _sync(device)
            t0 = clock()
        if last:
            if capped and step < h.iterations:
                stop_reason = "wallclock_cap"
            break
        frac = training_fraction(step, h.iterations, elapsed, cap_ms)
        if model.has_loops and not model.recurrence_on and frac >= h.enable_looping_at:
            model.set_recurrence(True)
            rec_step = step
            log.line(f"layer_loop:enabled step:{step} frac:{frac:.3f} encoder:{model.encoder_indices} "
                     f"decoder:{model.decoder_indices}")
            log.event("recurrence_on", step=step, frac=frac)
        loss = train_step(step, lr_scale_at(frac, h.warmdown_frac, h.min_lr))
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - h.ema_decay)
        step += 1
        every = h.train_log_every
        if every > 0 and (step <= 5 or step % every == 0 or step == h.iterations):
            if dist.world_size > 1:
                loss = all_reduce_(loss.detach().clone()) / dist.world_size
            last_loss = float(loss.item())  # syncs: the clock below is exact
            t_ms = train_ms + 1000.0 * (clock() - t0)
            tok_s = step * h.train_batch_tokens / max(t_ms / 1000.0, 1e-9)
            log.line(f"step:{step}/{h.iterations} train_loss:{last_loss:.4f} train_time:{t_ms:.0f}ms "
                     f"step_avg:{t_ms / step:.2f}ms tok/s:{tok_s:.0f}")
            log.event("train", step=step, iterations=h.iterations, train_loss=last_loss,
                      train_time_ms=t_ms, tok_s=tok_s)

    _sync(device)
    if validate is None:
        train_ms = shared_elapsed(train_ms, t0)
    if step > 0:  # the last step's loss, averaged over ranks
        if dist.world_size > 1:
            loss = all_reduce_(loss.detach().clone()) / dist.world_size
        last_loss = float(loss.item())
    if stop_reason == "wallclock_cap":
        log.line(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{h.iterations}")
    peak = reserved = 0.0
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        reserved = torch.cuda.max_memory_reserved(device) / 2**20
        log.line(f"peak memory allocated: {peak:.0f} MiB reserved: {reserved:.0f} MiB")
    log.event("train_end", steps=step, iterations=h.iterations, train_time_ms=train_ms,
              stop_reason=stop_reason, peak_mem_mib=peak)
    if ema is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, ema)
        log.line(f"ema: applied EMA weights (decay {h.ema_decay})")
    model.bake_shared_heads()  # shared-specific attention: identical stored copies (same function)
    return TrainOutcome(model=model, runner=runner, steps=step, iterations=h.iterations,
                        train_time_ms=train_ms, stop_reason=stop_reason, peak_mem_mib=peak,
                        recurrence_step=rec_step, final_train_loss=last_loss, grad_accum_steps=ga,
                        tokens_seen=step * h.train_batch_tokens)
