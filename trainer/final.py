"""The final evaluation, from the artifact file: quantized, sliding window, then test-time training.

The evaluation starts from the file on disk, exactly as ``EVAL_ONLY=1`` does, so a reviewer's
re-run scores the same weights the run scored: quantized (plain windows), sliding window, then
score-first TTT (it adapts the model in place, so it goes last). Its phases' times, loading and
decompressing the artifact included, add up to ``total_eval_time``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from trainer.artifact import ArtifactError, load_artifact
from trainer.dist import DistInfo
from trainer.evaluate import EvalResult, eval_plain, eval_sliding
from trainer.export import ARCH_FIELDS
from trainer.quant import dequantize_into
from trainer.runlog import RunLog
from trainer.train import build_model
from trainer.ttt import eval_ttt


@dataclass
class FinalScore:
    phase: str
    result: EvalResult
    eval_ms: float  # every phase from loading the artifact on


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
                      val_bytes: torch.Tensor) -> FinalScore:
    """Load the artifact and run the enabled final phases; the last one is the score."""
    t0 = time.perf_counter()
    model = model_from_artifact(h, dist, path, log)
    runner = eval_runner(h, model, dist)
    r = eval_plain(h, runner, dist, val_tokens, val_bytes)
    log_eval(log, "quantized", "quantized", r)
    phase, best = "quantized", r
    if h.sliding_window:
        r = eval_sliding(h, runner, dist, val_tokens, val_bytes)
        log_eval(log, f"quantized_sliding_window stride:{h.eval_stride}", "sliding_window", r)
        phase, best = "sliding_window", r
    if h.ttt_enabled:
        r = eval_ttt(h, runner, dist, val_tokens, val_bytes, progress=ttt_progress_logger(log, dist),
                     train_model=model)
        log_eval(log, "quantized_ttt", "ttt", r)
        phase, best = "ttt", r
    eval_ms = 1000.0 * (time.perf_counter() - t0)
    log.line(f"total_eval_time:{eval_ms / 1000:.1f}s")
    return FinalScore(phase, best, eval_ms)

