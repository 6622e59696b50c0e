"""After training: quantize into the artifact, then the final evaluation from that artifact.

Quantization (``quantize_and_save``) reads training data (GPTQ calibration), so it belongs to the
training budget: its time, compression and writing included (conservatively), is added to the
reported train time and is what GPTQ_RESERVE_SECONDS holds back. The final evaluation
(``evaluate_artifact``) starts from the file on disk, exactly as ``EVAL_ONLY=1`` does, so a
reviewer's re-run scores the same weights the run scored: quantized (plain windows), sliding
window, then score-first TTT (it adapts the model in place, so it goes last). Its phases' times
add up to ``total_eval_time``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from trainer.accounting import account_bytes, classes_summary, counted_code_path, fit_to_limit
from trainer.artifact import ArtifactError, artifact_bytes_by_class, load_artifact, write_artifact
from trainer.bpb import ByteCounter
from trainer.data import DistributedTokenLoader
from trainer.dist import DistInfo, barrier
from trainer.evaluate import EvalResult, eval_plain, eval_sliding
from trainer.quant import all_reduce_hessians_, collect_hessians, dequantize_into, quantize_model
from trainer.runlog import RunLog
from trainer.train import autocast_context, build_model
from trainer.ttt import eval_ttt

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


@dataclass
class FinalScore:
    phase: str
    result: EvalResult
    eval_ms: float  # every phase from loading the artifact on


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


def model_from_artifact(h, dist: DistInfo, path: str, log: RunLog) -> nn.Module:
    """A fresh GPT holding the artifact's dequantized weights; the artifact's architecture wins
    over the environment's (a mismatch is logged)."""
    qm = load_artifact(path)
    arch = qm.meta.get("model", {})
    for k, v in arch.items():
        if k in ARCH_FIELDS and getattr(h, k) != v:
            log.line(f"artifact: {k}={v!r} from {os.path.basename(path)} "
                     f"(environment said {getattr(h, k)!r})")
            setattr(h, k, type(getattr(h, k))(v))
    model = build_model(h, dist.device)
    try:
        dequantize_into(model, qm)
    except ValueError as e:
        raise ArtifactError(f"{path}: {e}") from None
    if qm.meta.get("recurrence_on", model.has_loops):
        model.set_recurrence(True)
    return model.eval()


def eval_runner(h, model: nn.Module, dist: DistInfo) -> nn.Module:
    if dist.device.type == "cuda" and h.compile:
        return torch.compile(model, dynamic=False)
    return model


def log_eval(log: RunLog, label: str, phase: str, r: EvalResult) -> None:
    log.line(f"{label} val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f} eval_time:{1000 * r.seconds:.0f}ms")
    log.event("eval", phase=phase, val_loss=r.val_loss, val_bpb=r.val_bpb, eval_time_ms=1000.0 * r.seconds,
              tokens=r.tokens, bytes=r.bytes)


def ttt_progress_logger(log: RunLog, dist: DistInfo, lines: int = 20):
    """Logs ``ttt_progress chunk:i/n elapsed:S`` about ``lines`` times over the phase (with a
    device sync, so the times are exact): TTT is the long phase, and the steady per-chunk time
    is what extrapolates to another GPU count."""
    def progress(done: int, n: int, seconds: float) -> None:
        if done == 1 or done == n or done % max(1, n // lines) == 0:
            if dist.device.type == "cuda":
                torch.cuda.synchronize(dist.device)
            log.line(f"ttt_progress chunk:{done}/{n} elapsed:{seconds:.2f}s")
    return progress


def evaluate_artifact(h, dist: DistInfo, log: RunLog, path: str, val_tokens: torch.Tensor,
                      counter: ByteCounter) -> FinalScore:
    """Load the artifact and run the enabled final phases; the last one is the score."""
    t0 = time.perf_counter()
    model = model_from_artifact(h, dist, path, log)
    runner = eval_runner(h, model, dist)
    r = eval_plain(h, runner, dist, val_tokens, counter)
    log_eval(log, "quantized", "quantized", r)
    phase, best = "quantized", r
    if h.sliding_window:
        r = eval_sliding(h, runner, dist, val_tokens, counter)
        log_eval(log, f"quantized_sliding_window stride:{h.eval_stride}", "sliding_window", r)
        phase, best = "sliding_window", r
    if h.ttt_enabled:
        r = eval_ttt(h, runner, dist, val_tokens, counter, progress=ttt_progress_logger(log, dist),
                     train_model=model)
        log_eval(log, "quantized_ttt", "ttt", r)
        phase, best = "ttt", r
    eval_ms = 1000.0 * (time.perf_counter() - t0)
    log.line(f"total_eval_time:{eval_ms / 1000:.1f}s")
    return FinalScore(phase, best, eval_ms)

