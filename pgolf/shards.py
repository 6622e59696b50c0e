"""Write token streams as shards in the challenge's format (header and reader: trainer/data.py).

Documents are encoded separately and each is preceded by the BOS token, as in the challenge's
shards; the stream is then cut into shards of at most ``shard_tokens`` tokens.

CaseOps validation data also gets a byte sidecar (the record's layout): ``fineweb_val_bytes_NNNNNN.bin``
beside each ``fineweb_val_NNNNNN.bin``, same header, same count, one uint16 per token = the UTF-8
bytes of the original (untransformed) text that token stands for (``trainer.bpb.position_bytes``;
0 for BOS and the operators).
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


def byte_sidecar(counter, tokens: np.ndarray) -> np.ndarray:
    """Original-text bytes per token of a BOS-separated stream, as uint16: ``trainer.bpb.position_bytes``
    with ``counter`` (a ``trainer.bpb.ByteCounter`` of the tokenizer)."""
    import torch

    from trainer.bpb import position_bytes

    t = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    out = position_bytes(counter, t).numpy()
    if out.size and int(out.max()) > 65535:
        raise PgolfError(f"a token stands for {int(out.max())} bytes: more than a uint16 sidecar holds")
    return out.astype(np.uint16)


class ShardWriter:
    """Cuts a stream fed in pieces into ``fineweb_{split}_NNNNNN.bin`` shards of ``shard_tokens``
    tokens (the last one may be shorter), with a parallel byte sidecar when ``sidecar``. Each shard
    is written atomically when full; ``close`` writes the rest and returns the token shard paths."""

    def __init__(self, directory: str | os.PathLike, split: str, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 sidecar: bool = False):
        if shard_tokens <= 0:
            raise PgolfError(f"shard size must be positive, got {shard_tokens}")
        self.directory, self.split, self.shard_tokens = os.fspath(directory), split, shard_tokens
        self.sidecar = sidecar
        self.paths: list[str] = []
        self.tokens = 0
        self._buf: list[np.ndarray] = []
        self._side: list[np.ndarray] = []
        self._fill = 0

    def add(self, tokens: np.ndarray, side: np.ndarray | None = None) -> None:
        if self.sidecar and (side is None or side.size != tokens.size):
            raise ValueError("a byte sidecar entry is needed for every token")
        self.tokens += tokens.size
        while tokens.size:
            take = min(self.shard_tokens - self._fill, tokens.size)
            self._buf.append(tokens[:take])
            if self.sidecar:
                self._side.append(side[:take])
                side = side[take:]
            tokens = tokens[take:]
            self._fill += take
            if self._fill == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        i = len(self.paths)
        path = os.path.join(self.directory, f"fineweb_{self.split}_{i:06d}.bin")
        write_shard(path, np.concatenate(self._buf).astype(np.uint16))
        if self.sidecar:
            write_shard(os.path.join(self.directory, f"fineweb_{self.split}_bytes_{i:06d}.bin"),
                        np.concatenate(self._side).astype(np.uint16))
        self.paths.append(path)
        self._buf, self._side, self._fill = [], [], 0

    def close(self, partial: bool = True) -> list[str]:
        """Write what is left as a last, shorter shard (``partial``) or drop it; return the paths."""
        if partial and (self._fill or not self.paths):
            self._flush()
        return self.paths
