"""Write token streams as shards in the challenge's format (header and reader: trainer/data.py).

Documents are encoded separately and each is preceded by the BOS token, as in the challenge's
shards; the stream is then cut into shards of at most ``shard_tokens`` tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from pgolf.errors import PgolfError
from pgolf.fsutil import atomic_writer
from pgolf.tokenizer import MAX_UINT16_VOCAB
from trainer.data import HEADER_INTS, SHARD_MAGIC, SHARD_VERSION

DEFAULT_SHARD_TOKENS = 100_000_000  # the challenge's shard size


def encode_documents(sp, documents: Sequence[str], vocab_size: int, where: str = "<tokenizer>") -> np.ndarray:
    """BOS + tokens of each document, concatenated, as uint16; ids must be < ``vocab_size``."""
    if vocab_size > MAX_UINT16_VOCAB:
        raise PgolfError(f"{where}: vocab size {vocab_size} does not fit uint16 shards "
                         f"(max {MAX_UINT16_VOCAB})")
    bos = sp.bos_id()
    encoded = sp.encode(list(documents), num_threads=min(8, os.cpu_count() or 1))
    total = sum(len(ids) + 1 for ids in encoded)
    out = np.empty(total, dtype=np.int64)
    pos = 0
    for ids in encoded:
        out[pos] = bos
        out[pos + 1: pos + 1 + len(ids)] = ids
        pos += len(ids) + 1
    check_token_ids(out, vocab_size, where)
    return out.astype(np.uint16)


def check_token_ids(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    """Every id in [0, vocab_size) and storable as uint16, else a one-line PgolfError."""
    if tokens.size == 0:
        return
    hi, lo = int(tokens.max()), int(tokens.min())
    if lo < 0 or hi > 65535:
        raise PgolfError(f"{where}: token id {hi if hi > 65535 else lo} cannot be stored as uint16")
    if hi >= vocab_size:
        raise PgolfError(f"{where}: token id {hi} >= vocab size {vocab_size} (wrong --vocab-size "
                         f"for this tokenizer?)")


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Atomically write one shard: 256 int32 header (magic, version, count) then uint16 tokens."""
    tokens = np.asarray(tokens)
    if tokens.dtype != np.uint16:
        check_token_ids(tokens, MAX_UINT16_VOCAB, os.fspath(path))
        tokens = tokens.astype(np.uint16)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    with atomic_writer(path) as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())


def write_split(directory: str | os.PathLike, split: str, tokens: np.ndarray,
                shard_tokens: int = DEFAULT_SHARD_TOKENS) -> list[str]:
    """Write ``fineweb_{split}_NNNNNN.bin`` shards of at most ``shard_tokens`` tokens; return paths."""
    if shard_tokens <= 0:
        raise PgolfError(f"shard size must be positive, got {shard_tokens}")
    paths = []
    for i, start in enumerate(range(0, max(tokens.size, 1), shard_tokens)):
        p = os.path.join(os.fspath(directory), f"fineweb_{split}_{i:06d}.bin")
        write_shard(p, tokens[start:start + shard_tokens])
        paths.append(p)
    return paths
