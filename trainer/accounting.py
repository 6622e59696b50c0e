"""Byte accounting against the challenge's limit, and fitting the model under it.

Total = bytes of the counted code file (the ``train_gpt.py`` being run) + bytes of the compressed
model file, both as sizes on disk; the limit is decimal (16,000,000). ``fit_to_limit`` prunes
quantized ±1 values of the GPTQ classes (cheapest Hessian cost first; never gates) until the
encoded model fits, and raises ``LimitError`` rather than return an over-limit artifact. Each
pruning round re-encodes the whole model: with ``COMPRESSOR=pergroup`` and lrzip that is slow
(ZPAQ runs at ~0.3 MB/s per stream), so a run that must prune should leave clip sigmas room.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.artifact import EncodedArtifact, encode_artifact
from trainer.quant import QuantizedModel, prune_candidates

ARTIFACT_LIMIT_BYTES = 16_000_000


class LimitError(ValueError):
    """Code + model cannot be brought under the byte limit."""


@dataclass
class ByteAccount:
    code_bytes: int
    model_bytes: int
    total_bytes: int
    limit_bytes: int
    headroom_bytes: int  # limit - total (negative when over)

    def lines(self, codec: str) -> list[str]:
        """The conventional log lines (as the records print them)."""
        return [f"Code size: {self.code_bytes} bytes",
                f"Serialized model quantized+{codec}: {self.model_bytes} bytes",
                f"Total submission size quantized+{codec}: {self.total_bytes} bytes"]

    def fields(self) -> dict:
        return {"code_bytes": self.code_bytes, "model_bytes": self.model_bytes,
                "total_bytes": self.total_bytes, "limit_bytes": self.limit_bytes,
                "headroom_bytes": self.headroom_bytes}


def counted_code_path(env: dict[str, str] | None = None) -> str:
    """The counted code file: ``CODE_PATH`` if set, else the file being run (``__main__``)."""
    env = os.environ if env is None else env
    path = env.get("CODE_PATH") or getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:
        raise ValueError("cannot tell which file is the counted code (no __main__ file); set CODE_PATH")
    return os.path.abspath(path)


def file_size_bytes(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot measure size ({e.strerror or e})") from None


def account_bytes(code_path: str, artifact_path: str,
                  limit_bytes: int = ARTIFACT_LIMIT_BYTES) -> ByteAccount:
    """Code + model bytes from the files on disk."""
    code, model = file_size_bytes(code_path), file_size_bytes(artifact_path)
    return ByteAccount(code, model, code + model, limit_bytes, limit_bytes - (code + model))


@dataclass
class FitResult:
    encoded: EncodedArtifact  # what to write (``write_artifact(path, fit.encoded.blob)``)
    pruned_values: int  # ±1 values set to 0 (0 if it fitted as is)
    rounds: int  # encodings tried
    account: ByteAccount  # code + the encoded model against the limit (headroom >= 0)
    unpruned_bytes: int  # the model as quantized, before any pruning (its first encoding)

    @property
    def codec(self) -> str:
        return self.encoded.codec


def fit_to_limit(qm: QuantizedModel, hessians: dict[str, torch.Tensor] | None, *, code_bytes: int,
                 limit_bytes: int = ARTIFACT_LIMIT_BYTES, codec: str = "brotli", max_rounds: int = 6,
                 tolerance_bytes: int = 0, log: Callable[[str], None] | None = None) -> FitResult:
    """Encode ``qm``; if code + model exceed ``limit_bytes``, set the cheapest ±1 values of the
    quantized tensors to 0 (in place) until it fits, pruning as few as the search finds.

    The count is predicted from the values' entropy, calibrated by each real encoding (a secant
    search kept between the largest count known too big and the smallest known to fit); it stops
    once a fitting encoding leaves at most ``tolerance_bytes`` of headroom (default: 1% of the
    excess, at least 512) or after ``max_rounds`` pruning rounds, returning the fitting encoding
    with the fewest pruned values (``qm`` is left pruned to match it); if no round fitted by then,
    it doubles the count until one does. Raises ``LimitError`` only if even pruning every ±1
    value does not fit."""
    say = log or (lambda _msg: None)
    enc = encode_artifact(qm, codec)
    codec = enc.codec  # "auto" is decided once, on the unpruned model
    base = len(enc.blob)

    def result(e: EncodedArtifact, pruned: int, rounds: int) -> FitResult:
        total = code_bytes + len(e.blob)
        return FitResult(e, pruned, rounds, ByteAccount(code_bytes, len(e.blob), total, limit_bytes,
                                                        limit_bytes - total), base)

    if code_bytes + base <= limit_bytes:
        qm.meta["pruned_values"] = 0
        return result(enc, 0, 1)
    excess = code_bytes + base - limit_bytes
    tol = tolerance_bytes or max(512, excess // 100)
    cands = prune_candidates(qm, hessians)
    if len(cands) == 0:
        raise LimitError(f"code {code_bytes} + model {base} = {code_bytes + base} bytes exceeds the limit "
                         f"{limit_bytes} by {excess}, and there are no ±1 values to prune")
    e0 = cands.entropy_bits(0)
    seen = [(0.0, 0.0)]  # (entropy bytes saved, real bytes saved) per encoding tried
    too_big, fits = 0, len(cands) + 1  # counts known not to fit / known to fit
    best: tuple[int, EncodedArtifact] | None = None
    rounds = 1

    def attempt(n: int) -> bool:
        """Prune ``n``, encode, record; True if it fits."""
        nonlocal too_big, fits, best, rounds
        cands.prune(qm, n)
        enc = encode_artifact(qm, codec)
        rounds += 1
        size = len(enc.blob)
        say(f"fit_to_limit: round {rounds - 1}: pruned {n} of {len(cands)} ±1 values -> "
            f"model {size} bytes, total {code_bytes + size} (limit {limit_bytes})")
        seen.append(((e0 - cands.entropy_bits(n)) / 8.0, float(base - size)))
        if code_bytes + size <= limit_bytes:
            fits, best = n, (n, enc)
            return True
        too_big = n
        if n == len(cands):
            raise LimitError(f"cannot fit: even with all {len(cands)} ±1 values pruned, code {code_bytes} "
                             f"+ model {size} = {code_bytes + size} bytes exceeds the limit {limit_bytes}; "
                             f"lower the bits or raise the clip sigmas")
        return False

    while rounds <= max_rounds:
        target = _entropy_target(seen, excess + tol / 2)
        n = min(max(cands.count_for_saving(8.0 * target), too_big + 1), fits - 1, len(cands))
        if n <= too_big:
            break  # nothing left between the bounds
        if attempt(n) and limit_bytes - code_bytes - len(best[1].blob) <= tol:
            break
    while best is None:  # out of rounds without a fit: double the count until it fits
        attempt(min(len(cands), max(2 * too_big, too_big + 1)))
    cands.prune(qm, best[0])  # leave qm as the returned encoding
    return result(best[1], best[0], rounds)


def _entropy_target(seen: list[tuple[float, float]], want: float) -> float:
    """Entropy bytes to save so that the real saving is ``want``: a line through the two
    observations nearest to ``want`` (the origin counts only until two real ones exist)."""
    pts = seen[1:] if len(seen) >= 3 else list(seen)
    if len(pts) < 2:
        return want
    (e1, r1), (e2, r2) = sorted(pts, key=lambda p: abs(p[1] - want))[:2]
    if r1 == r2 or (e2 - e1) / (r2 - r1) <= 0:
        return want * max(e1, e2) / max(r1, r2, 1.0)
    return max(0.0, e1 + (want - r1) * (e2 - e1) / (r2 - r1))


def classes_summary(class_bytes: dict[str, int]) -> str:
    """One log line: compressed bytes per segment class (LQER factors as ``lqer``)."""
    keys = ["attn", "mlp", "embed", "other", "gate", "small", "lqer", "header"]
    return "bytes_by_class " + " ".join(f"{k}:{class_bytes.get(k, 0)}" for k in keys)


def groups_summary(group_bytes: dict[str, int]) -> str:
    """One log line: compressed bytes per stored group and its codec (``q:mlp.fc.weight[lrzip]``)."""
    return "bytes_by_group " + " ".join(f"{k}:{v}" for k, v in group_bytes.items())
