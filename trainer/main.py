"""Orchestration: settings -> process group -> input checks -> run log -> training -> (final phases).

Bad input (unknown preset or malformed variable, no GPU for a full-size run, missing shards or
tokenizer, VOCAB_SIZE disagreeing with the tokenizer or the data) ends the run with one
``error: ...`` line on stderr and exit status 1. A CPU run is allowed for ``PRESET=tiny`` or
with ``ALLOW_CPU=1``. ``EVAL_ONLY=1`` skips training and quantization and scores ARTIFACT (no
training shards needed).
"""

from __future__ import annotations

import os
import platform
import sys
import time

import sentencepiece as spm
import torch

from trainer.accounting import LimitError, account_bytes, counted_code_path
from trainer.artifact import ArtifactError
from trainer.attention import attention_backend, attention_notes, select_attention_backend
from trainer.bpb import build_val_bytes
from trainer.config import Hyperparameters
from trainer.data import ShardError, load_shard, load_validation_tokens, shard_paths
from trainer.dist import DistInfo, barrier, init_distributed, shutdown
from trainer.evaluate import eval_plain
from trainer.export import artifact_path, quantize_and_save
from trainer.final import check_eval_settings, evaluate_artifact, log_eval
from trainer.kernels import enable_fused_kernels
from trainer.runlog import RunLog, die
from trainer.train import resolve_grad_accum, run_training


def train_pattern(h) -> str:
    return os.path.join(h.data_path, "fineweb_train_*.bin")


def val_pattern(h) -> str:
    return os.path.join(h.data_path, "fineweb_val_*.bin")


def load_tokenizer(h) -> spm.SentencePieceProcessor:
    if not os.path.isfile(h.tokenizer_path):
        raise ValueError(f"{h.tokenizer_path}: tokenizer not found (TOKENIZER_PATH)")
    try:
        sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
    except Exception as e:  # noqa: BLE001 - sentencepiece raises plain RuntimeError/OSError
        raise ValueError(f"{h.tokenizer_path}: not a SentencePiece model ({e})") from None
    if int(sp.vocab_size()) != h.vocab_size:
        raise ValueError(f"VOCAB_SIZE={h.vocab_size} does not match {h.tokenizer_path} "
                         f"({int(sp.vocab_size())} pieces)")
    return sp


def check_token_range(where: str, max_id: int, vocab_size: int) -> None:
    if max_id >= vocab_size:
        raise ValueError(f"{where}: token id {max_id} >= VOCAB_SIZE={vocab_size} "
                         "(data tokenized with another vocabulary?)")


def check_inputs(h, need_train: bool = True) -> tuple[spm.SentencePieceProcessor, torch.Tensor]:
    """Tokenizer, shards and token ids agree with VOCAB_SIZE; returns (tokenizer, val tokens)."""
    sp = load_tokenizer(h)
    if need_train:
        first = shard_paths(train_pattern(h))[0]
        toks = load_shard(first)
        if toks.size:
            check_token_range(first, int(toks.max()), h.vocab_size)
    val = load_validation_tokens(val_pattern(h), h.val_max_tokens)
    if val.numel() < 2:
        raise ValueError(f"{val_pattern(h)}: validation split holds {val.numel()} tokens")
    check_token_range(val_pattern(h), int(val.max()), h.vocab_size)
    return sp, val


def configure_cuda() -> None:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def run_start_fields(h, dist: DistInfo) -> dict:
    """Everything the run_start event records: seed, world, versions, devices, hparams."""
    cuda = dist.device.type == "cuda"
    return dict(
        seed=h.seed, run_id=h.run_id, world_size=dist.world_size,
        grad_accum_steps=resolve_grad_accum(h, dist.world_size),
        device_name=torch.cuda.get_device_name(dist.device) if cuda else platform.processor() or "cpu",
        device_count=torch.cuda.device_count() if cuda else 0,
        torch_version=torch.__version__, python_version=platform.python_version(),
        cuda_version=torch.version.cuda if cuda else None,
        attention_backend=attention_backend(), eval_only=bool(h.eval_only), hparams=h.as_dict(),
    )


def log_run_start(h, dist: DistInfo, log: RunLog) -> None:
    f = run_start_fields(h, dist)
    log.line("Hyperparameters:")
    for k, v in sorted(f["hparams"].items()):
        log.line(f"  {k}: {v}")
    log.line(f"Running Python {sys.version.split()[0]}, PyTorch {f['torch_version']}, "
             f"CUDA {f['cuda_version']}")
    log.line(f"device: {f['device_name']} x{f['device_count']} world_size:{f['world_size']} "
             f"grad_accum_steps:{f['grad_accum_steps']} attention:{f['attention_backend']}")
    log.event("run_start", **f)


def main() -> int:
    t_start = time.perf_counter()  # EVAL_ONLY: the strict eval timer starts here
    try:
        h = Hyperparameters.from_env()
    except ValueError as e:
        die(str(e))
    allow_cpu = h.preset == "tiny" or h.allow_cpu
    try:
        dist = init_distributed(require_cuda=not allow_cpu)
    except RuntimeError as e:
        die(str(e))
    try:
        resolve_grad_accum(h, dist.world_size)
        check_eval_settings(h)
        sp, val_tokens = check_inputs(h, need_train=not h.eval_only)
        val_bytes = build_val_bytes(h, sp, val_tokens, val_pattern(h))
        if h.eval_only and not os.path.isfile(artifact_path(h)):
            raise ValueError(f"{artifact_path(h)}: artifact not found (EVAL_ONLY=1 needs ARTIFACT)")
    except (ShardError, ValueError) as e:
        die(str(e))
    configure_cuda()
    try:
        select_attention_backend(dist.device, h.attention_backend, heads=h.num_heads,
                                 kv_heads=h.num_kv_heads, head_dim=h.model_dim // h.num_heads)
    except ValueError as e:  # AttentionBackendError: a forced backend that is missing or fails
        die(str(e))
    kernels = enable_fused_kernels(dist.device) if (h.fused_ce or h.fused_mlp) and not h.eval_only else {}
    log = RunLog(os.path.join(h.output_dir, f"{h.run_id}.log"), dist.is_main)
    log_run_start(h, dist, log)
    for note in attention_notes():
        log.line(f"attention_note: {note}")
    if kernels:
        log.line("fused_kernels: " + " ".join(f"{k}={v}" for k, v in sorted(kernels.items())))
    log.line(f"val_tokens:{val_tokens.numel()} val_bytes:{int(val_bytes[1:].sum())} "
             f"({'sidecar' if h.extra.get('val_bytes_source') == 'sidecar' else 'tokenizer'})")

    train_ms = None
    if h.eval_only:
        path = artifact_path(h)
    else:
        def validate(model):
            return eval_plain(h, model, dist, val_tokens, val_bytes)

        outcome = run_training(h, dist, log, validate=validate, train_pattern=train_pattern(h))
        try:
            saved = quantize_and_save(h, dist, log, outcome.model, train_pattern(h),
                                      train_time_ms=outcome.train_time_ms)
        except (LimitError, ValueError) as e:
            die(str(e))
        # calibration reads training data: training time (inside GPTQ_RESERVE_SECONDS); the GPTQ
        # solve, compression and writing read none: export_time, counted in neither budget
        train_ms = outcome.train_time_ms + saved.calib_ms
        log.line(f"train_time_total:{train_ms:.0f}ms (training {outcome.train_time_ms:.0f}ms + "
                 f"calibration {saved.calib_ms:.0f}ms; export {saved.export_ms:.0f}ms not counted)")
        if h.prequant_eval:  # diagnostic only: not part of the score nor of total_eval_time
            log_eval(log, "pre-quantization post-ema", "prequant_ema",
                     eval_plain(h, outcome.runner, dist, val_tokens, val_bytes))
        path = saved.path
        del outcome
    try:
        score = evaluate_artifact(h, dist, log, path, val_tokens, val_bytes,
                                  started_at=t_start if h.eval_only else None)
        acc = account_bytes(counted_code_path(), path, h.artifact_limit_bytes)
    except (ArtifactError, ValueError) as e:
        die(str(e))
    r = score.result
    log.line(f"final {score.phase} val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f}")
    log.event("final", seed=h.seed, phase=score.phase, val_loss=r.val_loss, val_bpb=r.val_bpb,
              eval_time_ms=score.eval_ms, train_time_ms=train_ms, code_bytes=acc.code_bytes,
              model_bytes=acc.model_bytes, total_bytes=acc.total_bytes)

    barrier()  # no rank tears the process group down while a peer still uses it
    shutdown()
    return 0
