"""After training: quantize the model into the artifact file (GPTQ calibration reads training data).

Calibration reads the training split, so it belongs to the training budget; its time, the GPTQ
solve, compression and writing included (conservatively), is reported as ``quant_ms`` and added to
the reported train time (GPTQ_RESERVE_SECONDS holds it back from the wallclock cap). The artifact's
meta stores the architecture fields, so an eval-only run rebuilds the same network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from trainer.accounting import account_bytes, classes_summary, counted_code_path, fit_to_limit
from trainer.artifact import artifact_bytes_by_class, write_artifact
from trainer.data import DistributedTokenLoader
from trainer.dist import DistInfo, barrier
from trainer.quant import all_reduce_hessians_, collect_hessians, quantize_model
from trainer.runlog import RunLog
from trainer.train import autocast_context

# Hyperparameters that shape the network: stored in the artifact so an eval-only run rebuilds the
# same model even if its environment says otherwise.
ARCH_FIELDS = (
    "vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "mlp_act",
    "rope_dims", "rope_base", "qk_gain_init", "logit_softcap", "tie_embeddings", "ln_scale",
    "skip_gates", "xsa_last_n", "loop_start", "loop_end", "num_loops", "parallel_start_layer",
    "shared_specific_dims", "gated_attn", "smear_gate", "bigram_hash_buckets", "bigram_hash_dim",
)


@dataclass
class SavedArtifact:
    path: str
    quant_ms: float  # calibration + GPTQ + fitting + writing


def artifact_path(h) -> str:
    return h.artifact or os.path.join(h.output_dir, f"{h.run_id}.ptz")


def calibration_batches(h, dist: DistInfo, pattern: str) -> Iterator[torch.Tensor]:
    """GPTQ_CALIBRATION_BATCHES batches of one TRAIN_SEQ_LEN sequence per rank, from the
    training split (a fresh loader: never validation data)."""
    loader = DistributedTokenLoader(pattern, dist.rank, dist.world_size, dist.device)
    for _ in range(h.gptq_calibration_batches):
        x, _y = loader.next_batch(h.train_seq_len * dist.world_size, h.train_seq_len, 1)
        yield x


def quantize_and_save(h, dist: DistInfo, log: RunLog, model: nn.Module, train_pattern: str) -> SavedArtifact:
    """Calibrate, quantize, fit under the byte limit, write the artifact (rank 0), log the bytes.

    Raises ``LimitError`` (nothing written) when even pruning cannot fit the limit."""
    t0 = time.perf_counter()
    hessians = None
    if h.gptq:
        with autocast_context(dist.device):
            hessians = collect_hessians(model, calibration_batches(h, dist, train_pattern))
        all_reduce_hessians_(hessians, dist.world_size)
    t_h = time.perf_counter()
    qm = quantize_model(h, model, hessians)
    t_q = time.perf_counter()
    qm.meta["model"] = {k: getattr(h, k) for k in ARCH_FIELDS}
    qm.meta["recurrence_on"] = bool(getattr(model, "recurrence_on", False))
    code_path = counted_code_path()
    code_bytes = os.path.getsize(code_path)
    fit = fit_to_limit(qm, hessians, code_bytes=code_bytes, limit_bytes=h.artifact_limit_bytes,
                       codec=h.compressor, log=log.line)
    path = artifact_path(h)
    if dist.is_main:
        write_artifact(path, fit.encoded.blob)
    barrier()  # every rank loads the file only once it is complete
    t1 = time.perf_counter()
    log.line(f"gptq: hessians {t_h - t0:.1f}s, quantize {t_q - t_h:.1f}s, compress+fit+write {t1 - t_q:.1f}s "
             f"({'gptq' if h.gptq else 'round-to-nearest'}, {fit.pruned_values} values pruned)")
    acc = account_bytes(code_path, path, h.artifact_limit_bytes)
    for line in acc.lines(fit.codec):
        log.line(line)
    by_class = artifact_bytes_by_class(path)
    log.line(f"{classes_summary(by_class)}; headroom {acc.headroom_bytes} bytes")
    log.event("artifact", artifact=os.path.basename(path), codec=fit.codec, pruned_values=fit.pruned_values,
              bytes_by_class=by_class, quant_ms=1000.0 * (t1 - t0), **acc.fields())
    return SavedArtifact(path, 1000.0 * (t1 - t0))
