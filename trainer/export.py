"""After training: quantize the model into the artifact file.

The budget split is stricter than the record's (PR #1855 ran its Hessians after the 600 s mark):

- calibration reads TRAINING data, so it is training time. The training loop stops at
  MAX_WALLCLOCK_SECONDS - GPTQ_RESERVE_SECONDS, and calibration (a fresh training-data loader,
  forward passes with input hooks, the Hessian all-reduce) runs inside that reserve. Its time is
  ``calib_ms``; the reported train time is training + calibration. Calibration stops drawing
  batches once MAX_WALLCLOCK_SECONDS is reached (after at least one), and a line says so, and
  another if it still ended past the cap.
- the GPTQ solve, LQER, fitting under the byte limit, compression and writing read no data: their
  time is ``export_ms``, logged as ``export_time`` and in the ``artifact`` event, and counted in
  neither budget.

The artifact's meta stores the architecture fields, so an eval-only run rebuilds the same network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from trainer.accounting import account_bytes, classes_summary, counted_code_path, fit_to_limit, groups_summary
from trainer.artifact import artifact_bytes_by_class, write_artifact
from trainer.data import DistributedTokenLoader
from trainer.dist import DistInfo, barrier
from trainer.quant import all_reduce_hessians_, collect_hessians, quant_summary, quantize_model
from trainer.runlog import RunLog
from trainer.train import autocast_context, resolve_grad_accum

# Hyperparameters that shape the network (or its forward computation): stored in the artifact so
# an eval-only run rebuilds the same model even if its environment says otherwise.
ARCH_FIELDS = (
    "vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "mlp_act",
    "rope_dims", "rope_base", "qk_gain_init", "logit_softcap", "tie_embeddings", "ln_scale",
    "skip_gates", "xsa_last_n", "loop_start", "loop_end", "num_loops", "parallel_start_layer",
    "shared_specific_dims", "gated_attn", "smear_gate", "bigram_hash_buckets", "bigram_hash_dim",
    "parallel_lanes", "parallel_final_lane", "sparse_attn_gate", "attn_gate_window",
    "sparse_attn_gate_scale", "varlen_attn",
)


@dataclass
class SavedArtifact:
    path: str
    calib_ms: float  # calibration on training data: counted as training time
    export_ms: float  # GPTQ solve + LQER + fitting + compression + writing: counted in neither budget
    calib_batches: int

    @property
    def quant_ms(self) -> float:
        """The part of quantization counted as training time (= ``calib_ms``)."""
        return self.calib_ms


def artifact_path(h) -> str:
    return h.artifact or os.path.join(h.output_dir, f"{h.run_id}.ptz")


def calibration_batch_shape(h, world_size: int) -> tuple[int, int, int]:
    """``(global_tokens, seq_len, grad_accum)`` for ``next_batch``: GPTQ_CALIB_SEQS sequences per
    rank, or with 0 one training micro-batch per rank (TRAIN_BATCH_TOKENS / (world x accum)
    tokens, as the records calibrate)."""
    seqs = int(getattr(h, "gptq_calib_seqs", 1))
    if seqs > 0:
        return h.train_seq_len * seqs * world_size, h.train_seq_len, 1
    return h.train_batch_tokens, h.train_seq_len, resolve_grad_accum(h, world_size)


def calibration_batches(h, dist: DistInfo, pattern: str, deadline: float | None = None,
                        clock: Callable[[], float] = time.perf_counter,
                        counter: list | None = None) -> Iterator[torch.Tensor]:
    """GPTQ_CALIBRATION_BATCHES batches from the training split (a fresh loader: never
    validation data); stops early, after at least one, once ``clock()`` passes ``deadline``.
    ``counter[0]`` counts the batches yielded."""
    loader = DistributedTokenLoader(pattern, dist.rank, dist.world_size, dist.device)
    shape = calibration_batch_shape(h, dist.world_size)
    for i in range(h.gptq_calibration_batches):
        if i > 0 and deadline is not None and clock() >= deadline:
            return
        x, _y = loader.next_batch(*shape)
        if counter is not None:
            counter[0] = i + 1
        yield x


def _sync_device(dist: DistInfo) -> None:
    if dist.device.type == "cuda":
        torch.cuda.synchronize(dist.device)


def quantize_and_save(h, dist: DistInfo, log: RunLog, model: nn.Module, train_pattern: str,
                      train_time_ms: float = 0.0,
                      clock: Callable[[], float] = time.perf_counter) -> SavedArtifact:
    """Calibrate (inside the training budget), quantize, fit under the byte limit, write the
    artifact (rank 0), log the bytes and times. ``train_time_ms``: the training loop's time, to
    hold calibration to MAX_WALLCLOCK_SECONDS; ``clock``: seconds (injectable for tests).

    Raises ``LimitError`` (nothing written) when even pruning cannot fit the limit."""
    t0 = clock()
    cap_s = float(h.max_wallclock_seconds)
    deadline = t0 + cap_s - train_time_ms / 1000.0 if cap_s > 0 else None
    hessians, used = None, [0]
    if h.gptq:
        with autocast_context(dist.device):
            batches = calibration_batches(h, dist, train_pattern, deadline, clock, used)
            hessians = collect_hessians(model, batches)
        all_reduce_hessians_(hessians, dist.world_size)
        _sync_device(dist)
    t_cal = clock()
    calib_s = t_cal - t0
    if h.gptq:
        tokens = calibration_batch_shape(h, dist.world_size)
        per_rank = tokens[0] // (dist.world_size * tokens[2])
        log.line(f"gptq: calibration {used[0]} batches x {per_rank} tokens/rank in {calib_s:.1f}s "
                 f"(training data; counted as training time; reserve {h.gptq_reserve_seconds:g}s)")
        if used[0] < h.gptq_calibration_batches:
            log.line(f"gptq: calibration stopped after {used[0]} of {h.gptq_calibration_batches} batches "
                     f"at MAX_WALLCLOCK_SECONDS={cap_s:g}")
    if cap_s > 0 and train_time_ms / 1000.0 + calib_s > cap_s:
        log.line(f"gptq: calibration overran the reserve: training {train_time_ms / 1000:.1f}s + calibration "
                 f"{calib_s:.1f}s = {train_time_ms / 1000 + calib_s:.1f}s > MAX_WALLCLOCK_SECONDS={cap_s:g} "
                 f"(GPTQ_RESERVE_SECONDS={h.gptq_reserve_seconds:g} is too small for this machine)")
    qm = quantize_model(h, model, hessians)
    t_q = clock()
    for line in quant_summary(qm):
        log.line(line)
    qm.meta["model"] = {k: getattr(h, k) for k in ARCH_FIELDS}
    qm.meta["recurrence_on"] = bool(getattr(model, "recurrence_on", False))
    code_path = counted_code_path()
    code_bytes = os.path.getsize(code_path)
    fit = fit_to_limit(qm, hessians, code_bytes=code_bytes, limit_bytes=h.artifact_limit_bytes,
                       codec=h.compressor, log=log.line)
    t_fit = clock()
    path = artifact_path(h)
    if dist.is_main:
        write_artifact(path, fit.encoded.blob)
    barrier()  # every rank loads the file only once it is complete
    t1 = clock()
    export_s = t1 - t_cal
    log.line(f"export_time:{export_s:.1f}s (GPTQ solve + LQER {t_q - t_cal:.1f}s, fit + compress "
             f"{t_fit - t_q:.1f}s, write {t1 - t_fit:.1f}s; reads no data: counted in neither budget; "
             f"{'gptq' if h.gptq else 'round-to-nearest'}, {fit.pruned_values} values pruned)")
    acc = account_bytes(code_path, path, h.artifact_limit_bytes)
    for line in acc.lines(fit.codec):
        log.line(line)
    by_class = artifact_bytes_by_class(path)
    log.line(f"{classes_summary(by_class)}; headroom {acc.headroom_bytes} bytes")
    log.line(groups_summary(fit.encoded.group_bytes))
    log.event("artifact", artifact=os.path.basename(path), codec=fit.codec, pruned_values=fit.pruned_values,
              bytes_by_class=by_class, bytes_by_group=fit.encoded.group_bytes, calib_ms=1000.0 * calib_s,
              calib_batches=used[0], export_ms=1000.0 * export_s, quant_ms=1000.0 * calib_s, **acc.fields())
    return SavedArtifact(path, 1000.0 * calib_s, 1000.0 * export_s, used[0])
