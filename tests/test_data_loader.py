"""The token streams of trainer/data.py: validation tokens, the shuffled-window and stream training
loaders, and the document bounds (cu_seqlens) of packed batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.shards import write_shard
from trainer.config import Hyperparameters
from trainer.data import (
    CU_SEQLENS_BUCKET,
    DOC_BOS_ID,
    DistributedTokenLoader,
    ShardError,
    StreamTokenLoader,
    doc_cu_seqlens,
    load_validation_tokens,
    make_train_loader,
)

SIZES = [1000, 700, 1300]


@pytest.fixture
def shards(tmp_path):
    """Three train shards of distinct sizes holding the stream 0, 1, 2, ..., 2999 (every token
    value names its position: a window is recognisable by its first token)."""
    start = 0
    for i, n in enumerate(SIZES):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(start, start + n))
        start += n
    return str(tmp_path / "fineweb_train_*.bin"), sum(SIZES)


def test_validation_tokens_concatenate_in_order_and_cap(tmp_path):
    write_shard(tmp_path / "fineweb_val_000001.bin", [5, 6, 7])
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 2, 3, 65535])
    pat = str(tmp_path / "fineweb_val_*.bin")
    t = load_validation_tokens(pat)
    assert t.dtype == torch.int64 and t.dim() == 1
    assert t.tolist() == [1, 2, 3, 65535, 5, 6, 7]
    assert load_validation_tokens(pat, max_tokens=5).tolist() == [1, 2, 3, 65535, 5]
    assert load_validation_tokens(pat, max_tokens=100).numel() == 7


# --- shuffled windows (DATA_SAMPLER=shuffled, the default) ------------------------------------------


def _step_rows(pat: str, world: int, steps: int, global_tokens: int = 256, seq_len: int = 16,
               seed: int = 7) -> list[list[list[int]]]:
    """Per step, the first input token of every row read by all ranks and micro-steps, in the
    global order (micro-step, then rank), with a batch split over ``world`` ranks x 4/world micro-steps."""
    ga = 4 // world
    loaders = [DistributedTokenLoader(pat, r, world, "cpu", seed=seed) for r in range(world)]
    out = []
    for _ in range(steps):
        rows = []
        for _ in range(ga):
            for ld in loaders:
                x, y = ld.next_batch(global_tokens, seq_len, ga)
                assert x.shape == y.shape == (global_tokens // (world * ga * seq_len), seq_len)
                assert x.dtype == torch.int64
                # a window is a contiguous piece of the stream and y is x shifted by one
                assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones_like(x[:, 1:]))
                assert torch.equal(y, x + 1)
                rows.append(x[:, 0].tolist())
        out.append(rows)
    return out


def test_shuffled_windows_are_the_same_for_1_2_and_4_ranks_and_disjoint(shards):
    pat, _ = shards
    per_world = {w: _step_rows(pat, w, steps=8) for w in (1, 2, 4)}
    for w, steps in per_world.items():
        for rows in steps:
            flat = [s for part in rows for s in part]
            assert len(flat) == len(set(flat)) == 16, w  # no window twice in a step: ranks disjoint
    # the same windows in the same places, whatever the split over ranks and micro-steps
    flat = {w: [[s for part in rows for s in part] for rows in steps] for w, steps in per_world.items()}
    assert flat[1] == flat[2] == flat[4]
    # and no window repeats within the epoch (128 of the ~185 windows)
    seen = [s for step in flat[1] for s in step]
    assert len(seen) == len(set(seen))


def test_an_epoch_visits_every_window_once_in_a_seeded_random_order(shards):
    pat, _ = shards
    ld = DistributedTokenLoader(pat, 0, 1, "cpu", seed=3)
    x, _ = ld.next_batch(16, 16, 1)
    total = int(ld._first[-1])  # windows in this epoch (random phase per shard)
    starts = [int(x[0, 0])] + [int(ld.next_batch(16, 16, 1)[0][0, 0]) for _ in range(total - 1)]
    assert ld.epoch == 0 and len(set(starts)) == total
    # windows of one shard are seq_len apart from its phase, and never run past the shard's end
    bounds = np.cumsum([0] + SIZES)
    for s in range(len(SIZES)):
        mine = sorted(v for v in starts if bounds[s] <= v < bounds[s + 1])
        assert np.all(np.diff(mine) == 16) and mine[-1] + 16 < bounds[s + 1]
        assert mine[0] - bounds[s] < 16
    assert starts != sorted(starts)  # shuffled, not streamed
    # the next call starts a new epoch (new phases, new order)
    ld.next_batch(16, 16, 1)
    assert ld.epoch == 1
    # same seed: same order; another seed: another order
    again = DistributedTokenLoader(pat, 0, 1, "cpu", seed=3)
    assert [int(again.next_batch(16, 16, 1)[0][0, 0]) for _ in range(20)] == starts[:20]
    other = DistributedTokenLoader(pat, 0, 1, "cpu", seed=4)
    assert [int(other.next_batch(16, 16, 1)[0][0, 0]) for _ in range(20)] != starts[:20]


def test_shards_are_memory_mapped_not_loaded(shards):
    pat, _ = shards
    ld = DistributedTokenLoader(pat, 0, 1, "cpu")
    ld.next_batch(64, 16, 1)
    maps = [ld.shards.tokens(i) for i in range(len(SIZES))]
    assert all(isinstance(m, np.memmap) for m in maps)
    assert [m.size for m in maps] == SIZES


def test_shards_too_small_for_one_window_are_a_clear_error(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(10))
    ld = DistributedTokenLoader(str(tmp_path / "fineweb_train_*.bin"), 0, 1, "cpu")
    with pytest.raises(ShardError, match="TRAIN_SEQ_LEN=16"):
        ld.next_batch(16, 16, 1)


def test_the_sampler_follows_the_setting(shards):
    pat, _ = shards
    h = Hyperparameters.from_env({"PRESET": "tiny", "SEED": "11"})
    ld = make_train_loader(h, pat, 0, 1, "cpu")
    assert isinstance(ld, DistributedTokenLoader) and ld.seed == 11
    h.data_sampler = "stream"
    assert isinstance(make_train_loader(h, pat, 0, 1, "cpu"), StreamTokenLoader)
    h.data_sampler = "sorted"
    with pytest.raises(ValueError, match="DATA_SAMPLER"):
        make_train_loader(h, pat, 0, 1, "cpu")


# --- document bounds ---------------------------------------------------------------------------------


def test_doc_cu_seqlens_cuts_rows_and_documents_and_pads_to_a_bucket():
    x = torch.tensor([[5, 6, DOC_BOS_ID, 7, 8, 9],
                      [DOC_BOS_ID, 4, 4, 4, DOC_BOS_ID, 3],
                      [2, 2, 2, 2, 2, 2]])
    cu = doc_cu_seqlens(x)
    assert cu.dtype == torch.int32 and cu.numel() == CU_SEQLENS_BUCKET
    # row starts 0, 6, 12 and the BOS at 2 and 10 (the one at 6 is a row start already), then 18
    assert cu[:6].tolist() == [0, 2, 6, 10, 12, 18]
    assert torch.all(cu[6:] == 18)
    assert doc_cu_seqlens(x, bucket=4).tolist() == [0, 2, 6, 10, 12, 18, 18, 18]
    with pytest.raises(ValueError, match="batch, seq"):
        doc_cu_seqlens(x.flatten())


@pytest.mark.parametrize("kind", ["shuffled", "stream"])
def test_packed_batches_carry_the_bounds_of_their_rows(tmp_path, kind):
    rng = np.random.default_rng(0)
    stream = rng.integers(2, 50, 4000)
    stream[rng.random(4000) < 0.05] = DOC_BOS_ID
    write_shard(tmp_path / "fineweb_train_000000.bin", stream)
    pat = str(tmp_path / "fineweb_train_*.bin")
    cls = DistributedTokenLoader if kind == "shuffled" else StreamTokenLoader
    for _ in range(3):
        x, y, cu = cls(pat, 0, 1, "cpu").next_packed_batch(512, 32, 1)
        assert x.shape == (16, 32) and torch.equal(cu, doc_cu_seqlens(x))
        starts = set(cu.tolist()) - {x.numel()}
        flat = x.flatten()
        assert starts == {i for i in range(x.numel()) if i % 32 == 0 or flat[i] == DOC_BOS_ID}


# --- the stream (DATA_SAMPLER=stream) ----------------------------------------------------------------


def test_stream_gives_shifted_contiguous_batches(shards):
    pat, _ = shards
    ld = StreamTokenLoader(pat, 0, 1, "cpu")
    x, y = ld.next_batch(64, 16, 1)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x.flatten(), torch.arange(64))
    assert torch.equal(y.flatten(), torch.arange(1, 65))
    x2, _ = ld.next_batch(64, 16, 1)  # the next chunk starts after the +1 token
    assert x2.flatten()[0].item() == 65


def test_stream_ranks_are_disjoint_and_match_micro_steps(shards):
    """2 ranks x 1 micro-step read exactly what 1 rank x 2 micro-steps reads, rank by rank."""
    pat, _ = shards
    two = [StreamTokenLoader(pat, r, 2, "cpu") for r in range(2)]
    one = StreamTokenLoader(pat, 0, 1, "cpu")
    for _ in range(5):
        per_rank = [ld.next_batch(128, 16, 1) for ld in two]
        micro = [one.next_batch(128, 16, 2) for _ in range(2)]
        for (xr, yr), (xm, ym) in zip(per_rank, micro):
            assert torch.equal(xr, xm) and torch.equal(yr, ym)
        a, b = (set(p[0].flatten().tolist()) for p in per_rank)
        assert not a & b


def test_stream_is_deterministic_and_cycles_shards(shards):
    pat, total = shards
    a = StreamTokenLoader(pat, 0, 1, "cpu")
    b = StreamTokenLoader(pat, 0, 1, "cpu")
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


@pytest.mark.parametrize("cls", [DistributedTokenLoader, StreamTokenLoader])
def test_bad_batch_geometry_is_one_clear_error(shards, cls):
    pat, _ = shards
    ld = cls(pat, 0, 2, "cpu")
    with pytest.raises(ValueError, match="seq_len"):
        ld.next_batch(100, 16, 1)


def test_missing_shards_raise(tmp_path):
    for cls in (DistributedTokenLoader, StreamTokenLoader):
        with pytest.raises(ShardError, match="no shard files"):
            cls(str(tmp_path / "nothing_*.bin"), 0, 1, "cpu")
    with pytest.raises(ShardError):
        load_validation_tokens(str(tmp_path / "nothing_*.bin"))
