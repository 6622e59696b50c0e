"""FineWeb shards: the challenge's binary format, and the token streams read from them.

A shard is 256 little-endian int32 (magic 20240520, version 1, token count, then zeros)
followed by that many uint16 tokens.
"""

from __future__ import annotations

import glob
import os

import numpy as np

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
