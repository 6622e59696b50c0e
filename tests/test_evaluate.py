"""Plain and sliding-window evaluation against naive per-position scoring on a tiny causal model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest_eval import TinyCausalLM, cpu_dist, eval_hparams, make_sp, naive_nll, real_val_tokens

from trainer.bpb import ByteCounter, position_bytes
from trainer.evaluate import EvalResult, eval_plain, eval_sliding, eval_window_plan


@pytest.fixture(scope="module")
def counter():
    return ByteCounter(make_sp(), 768)


@pytest.fixture(scope="module")
def model():
    return TinyCausalLM().eval()


def _target_bytes(counter, tokens):
    return int(counter.token_bytes(tokens[:-1], tokens[1:]).sum())


@pytest.mark.parametrize("n,seq_len,stride", [(300, 32, 8), (301, 32, 7), (97, 32, 32), (20, 32, 8),
                                              (2, 16, 4), (150, 16, 1), (64, 16, 16)])
def test_plan_scores_every_target_once_with_longest_context(n, seq_len, stride):
    plan = eval_window_plan(1, n, seq_len, stride)
    ws, lo, hi = plan.unbind(1)
    assert (hi > lo).all() and (ws % stride == 0).all()
    assert lo[0] == 1 and hi[-1] == n and (lo[1:] == hi[:-1]).all()  # disjoint, covering [1, n)
    assert ((hi - 1 - ws) <= seq_len).all() and (lo - ws >= 1).all()  # inputs fit in the window
    for w, a, b in plan.tolist():
        for k in range(a, b):
            # the window layout's longest context: the smallest start (multiple of s) within L of k
            want = next(c for c in range(0, k, stride) if k - c <= seq_len)
            assert w == want


@pytest.mark.parametrize("k_lo,k_hi", [(1, 50), (50, 130), (37, 38), (129, 300), (1, 300)])
def test_plan_of_a_range_is_the_global_plan_clipped(k_lo, k_hi):
    full = {k: w for w, a, b in eval_window_plan(1, 300, 32, 8).tolist() for k in range(a, b)}
    part = {k: w for w, a, b in eval_window_plan(k_lo, k_hi, 32, 8).tolist() for k in range(a, b)}
    assert part == {k: full[k] for k in range(k_lo, k_hi)}


def test_plan_rejects_bad_stride():
    with pytest.raises(ValueError, match="EVAL_STRIDE=40"):
        eval_window_plan(1, 100, 32, 40)
    with pytest.raises(ValueError, match="EVAL_STRIDE=0"):
        eval_window_plan(1, 100, 32, 0)


@pytest.mark.parametrize("n,seq_len,stride,batch", [(257, 32, 8, 4), (200, 32, 5, 3), (150, 16, 1, 16),
                                                    (20, 32, 8, 4), (3, 8, 2, 2)])
def test_sliding_equals_naive_per_position(model, counter, n, seq_len, stride, batch):
    tokens = real_val_tokens(600)[:n]
    h = eval_hparams(eval_seq_len=seq_len, eval_stride=stride, eval_batch_seqs=batch)
    res = eval_sliding(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    if stride == 1:
        start = lambda k: max(0, k - seq_len)  # literally the longest allowed context
    else:
        start = lambda k: max(0, math.ceil((k - seq_len) / stride) * stride)
    ref, _ = naive_nll(model, tokens, start)
    assert isinstance(res, EvalResult)
    assert res.tokens == n - 1
    assert res.bytes == _target_bytes(counter, tokens)
    assert res.nll_sum == pytest.approx(ref, rel=1e-5)
    assert res.val_loss == pytest.approx(ref / (n - 1), rel=1e-5)
    assert res.val_bpb == pytest.approx(ref / math.log(2) / res.bytes, rel=1e-5)
    assert res.seconds > 0


def test_context_matters_so_the_comparison_can_fail(model, counter):
    """Scoring with short contexts gives a different sum, so the naive check is meaningful."""
    tokens = real_val_tokens(600)[:257]
    res = eval_sliding(eval_hparams(eval_seq_len=32, eval_stride=8), model, cpu_dist(), tokens,
                       position_bytes(counter, tokens))
    short, _ = naive_nll(model, tokens, lambda k: max(0, k - 4))
    assert abs(res.nll_sum - short) > 1e-3 * abs(short)


def test_plain_equals_sliding_at_full_stride_and_naive(model, counter):
    tokens = real_val_tokens(600)[:300]  # 299 targets: the last window is short
    h = eval_hparams(eval_seq_len=32, eval_stride=32, eval_batch_seqs=3)
    plain = eval_plain(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    slide = eval_sliding(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    assert (plain.nll_sum, plain.tokens, plain.bytes) == (slide.nll_sum, slide.tokens, slide.bytes)
    ref, _ = naive_nll(model, tokens, lambda k: (k - 1) // 32 * 32)  # non-overlapping windows
    assert plain.nll_sum == pytest.approx(ref, rel=1e-5)
    # plain ignores EVAL_STRIDE
    h.eval_stride = 8
    assert eval_plain(h, model, cpu_dist(), tokens, position_bytes(counter, tokens)).nll_sum == plain.nll_sum


def test_sliding_beats_plain_on_a_context_sensitive_model(counter):
    """Longer context helps a model that uses it: train the tiny model briefly, then compare."""
    torch.manual_seed(0)
    m = TinyCausalLM(seed=1)
    tokens = real_val_tokens(20000)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(300):
        i = torch.randint(0, 18000 - 33, (16,))
        seqs = tokens[i[:, None] + torch.arange(33)]
        loss = m(seqs[:, :-1], seqs[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    held = tokens[18000:]
    h = eval_hparams(eval_seq_len=32, eval_stride=4, eval_batch_seqs=16)
    plain = eval_plain(h, m, cpu_dist(), held, position_bytes(counter, held))
    slide = eval_sliding(h, m, cpu_dist(), held, position_bytes(counter, held))
    assert slide.tokens == plain.tokens == held.numel() - 1
    assert slide.val_bpb < plain.val_bpb


def test_batch_size_does_not_change_the_result(model, counter):
    tokens = real_val_tokens(600)[:401]
    vb = position_bytes(counter, tokens)
    out = [eval_sliding(eval_hparams(eval_seq_len=32, eval_stride=8, eval_batch_seqs=b), model, cpu_dist(),
                        tokens, vb).nll_sum for b in (1, 5, 64)]
    assert out[1] == pytest.approx(out[0], rel=1e-6) and out[2] == pytest.approx(out[0], rel=1e-6)


def test_mode_is_restored_and_no_grad(counter):
    m = TinyCausalLM().train()
    tokens = real_val_tokens(600)[:100]
    eval_sliding(eval_hparams(), m, cpu_dist(), tokens, position_bytes(counter, tokens))
    assert m.training and all(p.grad is None for p in m.parameters())


def test_too_short_stream_is_a_clear_error(model, counter):
    with pytest.raises(ValueError, match="too short"):
        one = torch.tensor([1])
        eval_sliding(eval_hparams(), model, cpu_dist(), one, position_bytes(counter, one))
