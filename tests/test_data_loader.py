"""The token streams of trainer/data.py: validation tokens and the distributed training loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.shards import write_shard
from trainer.data import (
    DistributedTokenLoader,
    load_validation_tokens,
)


@pytest.fixture
def shards(tmp_path):
    """Three train shards of distinct sizes holding the stream 0, 1, 2, ... (mod 60000)."""
    sizes = [1000, 700, 1300]
    start = 0
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(start, start + n) % 60000)
        start += n
    return str(tmp_path / "fineweb_train_*.bin"), sum(sizes)


def test_validation_tokens_concatenate_in_order_and_cap(tmp_path):
    write_shard(tmp_path / "fineweb_val_000001.bin", [5, 6, 7])
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 2, 3, 65535])
    pat = str(tmp_path / "fineweb_val_*.bin")
    t = load_validation_tokens(pat)
    assert t.dtype == torch.int64 and t.dim() == 1
    assert t.tolist() == [1, 2, 3, 65535, 5, 6, 7]
    assert load_validation_tokens(pat, max_tokens=5).tolist() == [1, 2, 3, 65535, 5]
    assert load_validation_tokens(pat, max_tokens=100).numel() == 7


def test_loader_gives_shifted_contiguous_batches(shards):
    pat, _ = shards
    ld = DistributedTokenLoader(pat, 0, 1, "cpu")
    x, y = ld.next_batch(64, 16, 1)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x.flatten(), torch.arange(64))
    assert torch.equal(y.flatten(), torch.arange(1, 65))
    x2, _ = ld.next_batch(64, 16, 1)  # the next chunk starts after the +1 token
    assert x2.flatten()[0].item() == 65


def test_ranks_are_disjoint_and_match_micro_steps(shards):
    """2 ranks x 1 micro-step read exactly what 1 rank x 2 micro-steps reads, rank by rank."""
    pat, _ = shards
    two = [DistributedTokenLoader(pat, r, 2, "cpu") for r in range(2)]
    one = DistributedTokenLoader(pat, 0, 1, "cpu")
    for _ in range(5):
        per_rank = [ld.next_batch(128, 16, 1) for ld in two]
        micro = [one.next_batch(128, 16, 2) for _ in range(2)]
        for (xr, yr), (xm, ym) in zip(per_rank, micro):
            assert torch.equal(xr, xm) and torch.equal(yr, ym)
        a, b = (set(p[0].flatten().tolist()) for p in per_rank)
        assert not a & b


def test_loader_is_deterministic_and_cycles_shards(shards):
    pat, total = shards
    a = DistributedTokenLoader(pat, 0, 1, "cpu")
    b = DistributedTokenLoader(pat, 0, 1, "cpu")
    seen = []
    for _ in range(40):  # 40 * 129 tokens > 3000: wraps round to the first shard
        xa, _ = a.next_batch(128, 32, 1)
        xb, _ = b.next_batch(128, 32, 1)
        assert torch.equal(xa, xb)
        seen.append(xa.flatten())
    stream = torch.cat(seen)
    # chunk k starts at token 129 * k of the endless stream 0..total-1, 0..total-1, ...
    k = 30
    assert stream[k * 128].item() == (129 * k) % total


def test_bad_batch_geometry_is_one_clear_error(shards):
    pat, _ = shards
    ld = DistributedTokenLoader(pat, 0, 2, "cpu")
    with pytest.raises(ValueError, match="seq_len"):
        ld.next_batch(100, 16, 1)


def test_missing_shards_raise(tmp_path):
    from trainer.data import ShardError

    with pytest.raises(ShardError, match="no shard files"):
        DistributedTokenLoader(str(tmp_path / "nothing_*.bin"), 0, 1, "cpu")
    with pytest.raises(ShardError):
        load_validation_tokens(str(tmp_path / "nothing_*.bin"))
