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


# --- training batches ------------------------------------------------------------------------------

DOC_BOS_ID = 1  # <s> in the challenge's SentencePiece models: every document starts with it
CU_SEQLENS_BUCKET = 64  # cu_seqlens lengths are padded to a multiple of this: few compiled shapes


def doc_cu_seqlens(input_ids: torch.Tensor, bos_id: int = DOC_BOS_ID,
                   bucket: int = CU_SEQLENS_BUCKET) -> torch.Tensor:
    """Document bounds of a batch [B, T] for varlen attention, on the batch's device.

    Segments start at every row start and at every BOS; no segment crosses a row, so none is longer
    than T (the record caps segments at the sequence length too). Returns int32 cu_seqlens over the
    flattened ``B * T`` tokens: the segment starts, then ``B * T``, then more ``B * T`` up to a
    multiple of ``bucket`` entries (empty segments: the padding keeps compiled shapes few). On a
    GPU tensor this syncs with the host (the loader computes it on the CPU before the copy)."""
    if input_ids.dim() != 2:
        raise ValueError(f"doc_cu_seqlens: expected a [batch, seq] tensor, got {tuple(input_ids.shape)}")
    b, t = input_ids.shape
    starts = input_ids == bos_id
    starts[:, 0] = True
    idx = starts.reshape(-1).nonzero().flatten()
    size = -(-(idx.numel() + 1) // bucket) * bucket
    cu = torch.full((size,), b * t, dtype=torch.int32, device=input_ids.device)
    cu[:idx.numel()] = idx.to(torch.int32)
    return cu


class _ShardSet:
    """The training shards matching a glob: headers validated at start-up (fail at once, not hours
    in), token arrays memory-mapped on first use (the corpus is never loaded as a whole)."""

    def __init__(self, pattern: str):
        self.paths = shard_paths(pattern)
        self.counts = [read_shard_header(p) for p in self.paths]
        self._maps: dict[int, np.ndarray] = {}

    def tokens(self, i: int) -> np.ndarray:
        mm = self._maps.get(i)
        if mm is None:
            mm = np.memmap(self.paths[i], dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(self.counts[i],))
            self._maps[i] = mm
        return mm


def _local_batch(global_tokens: int, seq_len: int, world_size: int, grad_accum_steps: int) -> int:
    """Tokens per rank and micro-step; a clear error unless it is a positive multiple of seq_len."""
    local = global_tokens // (world_size * grad_accum_steps)
    if local <= 0 or local % seq_len or local * world_size * grad_accum_steps != global_tokens:
        raise ValueError(f"batch of {global_tokens} tokens over {world_size} ranks x "
                         f"{grad_accum_steps} micro-steps gives {local} tokens per rank: "
                         f"not a positive multiple of seq_len {seq_len}")
    return local


class _BatchSource:
    """What both samplers share: host batches [B, T + 1] in, (x, y[, cu_seqlens]) on the device out."""

    def __init__(self, rank: int, world_size: int, device: torch.device | str):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)

    def _host_rows(self, rows: int, seq_len: int) -> np.ndarray:
        raise NotImplementedError

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.contiguous().pin_memory().to(self.device, non_blocking=True)
        return t.contiguous()

    def _rows(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> torch.Tensor:
        local = _local_batch(global_tokens, seq_len, self.world_size, grad_accum_steps)
        return torch.from_numpy(self._host_rows(local // seq_len, seq_len).astype(np.int64))

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of one micro-step: inputs and next-token targets, int64 [B, seq_len]."""
        rows = self._rows(global_tokens, seq_len, grad_accum_steps)
        return self._to_device(rows[:, :-1]), self._to_device(rows[:, 1:])

    def next_packed_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int,
                          bos_id: int = DOC_BOS_ID, bucket: int = CU_SEQLENS_BUCKET
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``next_batch`` plus the document bounds of its rows (``doc_cu_seqlens``, computed on the
        host before the copy: no device sync)."""
        rows = self._rows(global_tokens, seq_len, grad_accum_steps)
        x = rows[:, :-1]
        cu = doc_cu_seqlens(x, bos_id, bucket)
        return self._to_device(x), self._to_device(rows[:, 1:]), self._to_device(cu)


class DistributedTokenLoader(_BatchSource):
    """Seeded random TRAIN_SEQ_LEN windows across all shards (DATA_SAMPLER=shuffled, the default).

    An epoch cuts every shard into windows of ``seq_len`` inputs (+1 target) from a random phase
    and visits all windows of all shards once, in one random order drawn from ``seed`` and the epoch
    number. Each call takes the next ``world_size * B`` windows of that order (the call's share of
    the global batch) and rank ``r`` keeps the ``r``-th run of B: ranks never share a window, and
    any split of one global batch over ranks and micro-steps reads the same windows in the same
    places (W ranks x A micro-steps: call ``a`` of rank ``r`` == call ``a * W + r`` of one rank).
    Shards are memory-mapped; a window is read when it is used.
    """

    def __init__(self, pattern: str, rank: int, world_size: int, device: torch.device | str, seed: int = 0):
        super().__init__(rank, world_size, device)
        self.shards = _ShardSet(pattern)
        self.seed = int(seed)
        self.epoch = -1
        self._seq_len = 0
        self._order = np.zeros(0, dtype=np.int64)
        self._pos = 0

    def _start_epoch(self, seq_len: int) -> None:
        self.epoch += 1
        rng = np.random.default_rng([self.seed, self.epoch])
        phases, counts = [], []
        for n in self.shards.counts:  # a random phase per shard, so epochs see new window edges
            max_phase = min(seq_len - 1, max(0, n - seq_len - 1))
            phase = int(rng.integers(max_phase + 1)) if max_phase > 0 else 0
            phases.append(phase)
            counts.append(max(0, (n - 1 - phase) // seq_len))
        if sum(counts) == 0:
            raise ShardError(f"{self.shards.paths[0]}: no training shard holds {seq_len + 1} tokens "
                             f"(one TRAIN_SEQ_LEN={seq_len} window and its target)")
        self._phases = np.array(phases, dtype=np.int64)
        self._first = np.cumsum([0] + counts)  # id of each shard's first window
        self._order = rng.permutation(int(self._first[-1]))
        self._pos = 0

    def _window_ids(self, n: int) -> list[int]:
        """The next ``n`` window ids of the global order (continuing into new epochs)."""
        ids: list[int] = []
        while len(ids) < n:
            if self._pos >= self._order.size:
                self._start_epoch(self._seq_len)
            k = min(n - len(ids), self._order.size - self._pos)
            ids.extend(self._order[self._pos:self._pos + k].tolist())
            self._pos += k
        return ids

    def _host_rows(self, rows: int, seq_len: int) -> np.ndarray:
        if seq_len != self._seq_len:  # windows depend on the length: start a fresh layout
            self._seq_len = seq_len
            self.epoch = -1
            self._start_epoch(seq_len)
        ids = self._window_ids(rows * self.world_size)[self.rank * rows:(self.rank + 1) * rows]
        out = np.empty((rows, seq_len + 1), dtype=np.int64)
        for j, w in enumerate(ids):
            s = int(np.searchsorted(self._first, w, side="right")) - 1
            start = int(self._phases[s]) + (w - int(self._first[s])) * seq_len
            out[j] = self.shards.tokens(s)[start:start + seq_len + 1]
        return out


class StreamTokenLoader(_BatchSource):
    """The challenge baseline's order (DATA_SAMPLER=stream): the shards in name order, forever.

    Each call takes one contiguous chunk of the stream and gives each rank its own disjoint span of
    it (+1 token for the shifted targets); ranks x micro-steps see consecutive spans, so any split
    of the same global batch reads the same tokens in the same places.
    """

    def __init__(self, pattern: str, rank: int, world_size: int, device: torch.device | str):
        super().__init__(rank, world_size, device)
        self.shards = _ShardSet(pattern)
        self.index = 0
        self.pos = 0

    def _take(self, n: int) -> np.ndarray:
        chunks = []
        while n > 0:
            toks = self.shards.tokens(self.index)
            avail = toks.size - self.pos
            if avail <= 0:
                self.index = (self.index + 1) % len(self.shards.paths)
                self.pos = 0
                continue
            k = min(n, avail)
            chunks.append(np.asarray(toks[self.pos:self.pos + k], dtype=np.int64))
            self.pos += k
            n -= k
        return np.concatenate(chunks)

    def _host_rows(self, rows: int, seq_len: int) -> np.ndarray:
        span = rows * seq_len + 1
        mine = self._take(span * self.world_size)[self.rank * span:(self.rank + 1) * span]
        # rows overlap by one token: row j's targets end where row j + 1's inputs begin
        idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
        return mine[idx]


def make_train_loader(h, pattern: str, rank: int, world_size: int, device: torch.device | str
                      ) -> _BatchSource:
    """The training loader DATA_SAMPLER names: ``shuffled`` (seeded by SEED) or ``stream``."""
    if h.data_sampler == "shuffled":
        return DistributedTokenLoader(pattern, rank, world_size, device, seed=h.seed)
    if h.data_sampler == "stream":
        return StreamTokenLoader(pattern, rank, world_size, device)
    raise ValueError(f"DATA_SAMPLER={h.data_sampler!r}: expected shuffled or stream")
