"""FineWeb shards: the challenge's binary format, and the token streams read from them.

A shard is 256 little-endian int32 (magic 20240520, version 1, token count, then zeros)
followed by that many uint16 tokens.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import torch

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class ShardError(ValueError):
    """A shard file that is missing, truncated or not in the challenge's format."""


def read_shard_header(path: str) -> int:
    """Validate a shard's header and size; return its token count."""
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror or e})") from None
    if header.size < HEADER_INTS:
        raise ShardError(f"{path}: truncated header ({size} bytes, need {HEADER_BYTES})")
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {SHARD_MAGIC})")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise ShardError(f"{path}: size {size} bytes does not match header token count {count} "
                         f"(expected {expected} bytes)")
    return count


def load_shard(path: str) -> np.ndarray:
    """All tokens of one shard as a uint16 array (validated)."""
    count = read_shard_header(path)
    return np.fromfile(path, dtype="<u2", count=count, offset=HEADER_BYTES)


def shard_paths(pattern: str) -> list[str]:
    """Sorted shard files matching a glob; a clear error when there are none."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ShardError(f"{pattern}: no shard files match")
    return paths


VAL_BYTES_PREFIX = "fineweb_val_bytes_"  # CaseOps byte sidecars, also matched by fineweb_val_*.bin


def validation_shard_paths(pattern: str) -> list[str]:
    """The token shards matching ``pattern``, without the byte sidecars that the same glob matches."""
    paths = [p for p in shard_paths(pattern) if not os.path.basename(p).startswith(VAL_BYTES_PREFIX)]
    if not paths:
        raise ShardError(f"{pattern}: only byte sidecars ({VAL_BYTES_PREFIX}*) match, no token shards")
    return paths


def load_validation_tokens(pattern: str, max_tokens: int = 0) -> torch.Tensor:
    """Every validation token shard matching ``pattern`` (byte sidecars left out), concatenated in
    name order, as int64 1-D.

    ``max_tokens > 0`` keeps only the first ``max_tokens`` tokens (benchmarks on a budget).
    """
    parts = []
    have = 0
    for path in validation_shard_paths(pattern):
        toks = load_shard(path)
        parts.append(toks)
        have += toks.size
        if 0 < max_tokens <= have:
            break
    tokens = torch.from_numpy(np.concatenate(parts).astype(np.int64))
    if max_tokens > 0:
        tokens = tokens[:max_tokens]
    return tokens


class _ShardStream:
    """Reads the shards in name order, forever, wrapping round to the first one."""

    def __init__(self, pattern: str):
        self.paths = shard_paths(pattern)
        for p in self.paths:  # fail at start-up, not hours in, on a bad shard
            read_shard_header(p)
        self.index = 0
        self.tokens = load_shard(self.paths[0])
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        chunks = []
        while n > 0:
            avail = self.tokens.size - self.pos
            if avail <= 0:
                self.index = (self.index + 1) % len(self.paths)
                self.tokens = load_shard(self.paths[self.index])
                self.pos = 0
                continue
            k = min(n, avail)
            chunks.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            n -= k
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


class DistributedTokenLoader:
    """The challenge baseline's loader: each call takes one contiguous chunk of the stream and
    gives each rank its own disjoint span of it (+1 token for the shifted targets).

    Ranks x grad-accumulation micro-steps see consecutive spans, so any split of the same
    global batch over processes and micro-steps reads the same tokens in the same places.
    """

    def __init__(self, pattern: str, rank: int, world_size: int, device: torch.device | str):
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.stream = _ShardStream(pattern)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        local = global_tokens // (self.world_size * grad_accum_steps)
        if local <= 0 or local % seq_len:
            raise ValueError(f"batch of {global_tokens} tokens over {self.world_size} ranks x "
                             f"{grad_accum_steps} micro-steps gives {local} tokens per rank: "
                             f"not a positive multiple of seq_len {seq_len}")
        span = local + 1
        chunk = self.stream.take(span * self.world_size)
        mine = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span].astype(np.int64))
        if self.device.type == "cuda":
            mine = mine.pin_memory().to(self.device, non_blocking=True)
        x = mine[:-1].reshape(-1, seq_len)
        y = mine[1:].reshape(-1, seq_len)
        return x, y
