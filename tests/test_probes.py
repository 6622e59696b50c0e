"""Legality probes: they pass on our evaluation and catch deliberately illegal variants."""

from __future__ import annotations

import pytest
import torch
from conftest_eval import (
    TinyCausalLM,
    cpu_dist,
    eval_hparams,
    make_sp,
    real_val_tokens,
    single_thread,  # noqa: F401 - autouse fixture
)

from trainer.bpb import ByteCounter, position_bytes
from trainer.evaluate import eval_result, eval_score_windows, eval_window_plan
from trainer.probes import (
    ProbeResult,
    TokenTimeline,
    check_timeline,
    check_timelines,
    default_ttt_fn,
    probe_causality,
    probe_score_before_update,
)
from trainer.ttt import ttt_chunk_bounds, ttt_lr_at, ttt_train_chunk


@pytest.fixture(scope="module")
def counter():
    return ByteCounter(make_sp(), 768)


# --- causality ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 17, 62])
def test_causal_model_passes(t):
    tokens = real_val_tokens(800)[:64]
    r = probe_causality(TinyCausalLM(), tokens, t, tol=0.0)
    assert isinstance(r, ProbeResult) and r.passed, r.message
    assert r.evidence["max_diff_at_or_before_t"] == 0.0
    assert r.evidence["max_diff_after_t"] > 1e-3  # the perturbation did reach the model
    assert r.evidence["first_offending_position"] is None


def test_bidirectional_model_is_caught():
    tokens = real_val_tokens(800)[:64]
    r = probe_causality(TinyCausalLM(causal=False), tokens, 30)
    assert not r.passed and "FAIL" in r.message
    assert r.evidence["first_offending_position"] == 0
    assert r.evidence["max_diff_at_or_before_t"] > 1e-5


class _PeekNext(torch.nn.Module):
    """A subtle leak: position p sees token p+1 through a small additive term."""

    def __init__(self):
        super().__init__()
        self.base = TinyCausalLM()

    def forward(self, idx, targets=None):
        logits = self.base(idx)
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return logits + 0.01 * torch.nn.functional.one_hot(nxt, logits.shape[-1]).float()


def test_one_step_lookahead_is_caught_at_t():
    tokens = real_val_tokens(800)[:64]
    r = probe_causality(_PeekNext(), tokens, 40)
    assert not r.passed and r.evidence["first_offending_position"] == 40


def test_causality_rejects_bad_position():
    with pytest.raises(ValueError, match="t=63"):
        probe_causality(TinyCausalLM(), real_val_tokens(800)[:64], 63)


# --- score before update ------------------------------------------------------------------------

def _illegal_train_then_score(h, model, dist, val_tokens, val_bytes, recorder=None):
    """Adapts on each chunk, then scores it: the classic leak."""
    tokens = val_tokens.long()
    chunks = ttt_chunk_bounds(tokens.numel(), h.ttt_chunk_tokens)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum)
    sums = torch.zeros(3, dtype=torch.float64)
    for ci, (lo, hi) in enumerate(chunks):
        for g in opt.param_groups:
            g["lr"] = ttt_lr_at(h, ci, len(chunks))
        ttt_train_chunk(h, model, dist, tokens, lo, hi, opt, params, recorder)
        sums += eval_score_windows(model, tokens, eval_window_plan(lo, hi, h.eval_seq_len, h.eval_stride),
                                   h.eval_seq_len, h.eval_batch_seqs, val_bytes, recorder)
    return eval_result(sums, 0.0)


def _illegal_rescore(h, model, dist, val_tokens, val_bytes, recorder=None):
    """Scores each chunk, adapts, then scores it again and keeps the second score."""
    tokens = val_tokens.long()
    chunks = ttt_chunk_bounds(tokens.numel(), h.ttt_chunk_tokens)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum)
    sums = torch.zeros(3, dtype=torch.float64)
    for lo, hi in chunks:
        plan = eval_window_plan(lo, hi, h.eval_seq_len, h.eval_stride)
        eval_score_windows(model, tokens, plan, h.eval_seq_len, h.eval_batch_seqs, val_bytes, recorder)
        ttt_train_chunk(h, model, dist, tokens, lo, hi, opt, params, recorder)
        sums += eval_score_windows(model, tokens, plan, h.eval_seq_len, h.eval_batch_seqs, val_bytes,
                                   recorder)
    return eval_result(sums, 0.0)


def _illegal_peek_next_chunk(h, model, dist, val_tokens, val_bytes, recorder=None):
    """Scores a chunk, then trains on the *next* chunk (not yet scored)."""
    tokens = val_tokens.long()
    chunks = ttt_chunk_bounds(tokens.numel(), h.ttt_chunk_tokens)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum)
    sums = torch.zeros(3, dtype=torch.float64)
    for ci, (lo, hi) in enumerate(chunks):
        plan = eval_window_plan(lo, hi, h.eval_seq_len, h.eval_stride)
        sums += eval_score_windows(model, tokens, plan, h.eval_seq_len, h.eval_batch_seqs, val_bytes,
                                   recorder)
        if ci + 1 < len(chunks):
            ttt_train_chunk(h, model, dist, tokens, *chunks[ci + 1], opt, params, recorder)
    return eval_result(sums, 0.0)


def _run(ttt_fn, counter):
    tokens = real_val_tokens(800)[:600]
    h = eval_hparams()
    return probe_score_before_update(h, TinyCausalLM(), cpu_dist(), tokens, position_bytes(counter, tokens),
                                     ttt_fn=ttt_fn)


def test_our_ttt_passes(counter):
    model = TinyCausalLM()
    before = [p.detach().clone() for p in model.parameters()]
    r = probe_score_before_update(eval_hparams(ttt_mode="sgd"), model, cpu_dist(), real_val_tokens(800)[:600],
                                  position_bytes(counter, real_val_tokens(800)[:600]))
    assert r.passed, r.message
    ev = r.evidence
    assert ev["tokens_scored"] == 599 and ev["tokens_never_scored"] == 0
    assert ev["tokens_scored_twice_or_more"] == 0 and ev["tokens_used_before_scored"] == 0
    assert ev["tokens_used_for_updates"] >= 400  # every chunk but the last was trained on
    assert ev["first_offending_token"] is None
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # ran on a copy


def test_train_then_score_is_caught(counter):
    r = _run(_illegal_train_then_score, counter)
    assert not r.passed and "used by a gradient step before" in r.message
    assert r.evidence["first_offending_token"] == 1  # token 0 opens the stream; 1 is the first target
    assert r.evidence["offending_used_at"] < r.evidence["offending_scored_at"]
    assert r.evidence["tokens_used_before_scored"] >= 400


def test_rescoring_after_update_is_caught(counter):
    r = _run(_illegal_rescore, counter)
    assert not r.passed and r.evidence["tokens_scored_twice_or_more"] == 599


def test_training_on_the_next_chunk_is_caught(counter):
    r = _run(_illegal_peek_next_chunk, counter)
    h = eval_hparams()
    assert not r.passed
    # chunk 1's first input (token 128) was scored in chunk 0; its first target was not
    assert r.evidence["first_offending_token"] == 1 + h.ttt_chunk_tokens


def test_timeline_bookkeeping():
    tl = TokenTimeline(6)
    tl.on_score(torch.tensor([1, 2, 3]))
    tl.on_train(torch.tensor([0, 1, 2, 3]))
    tl.on_score(torch.tensor([4, 5]))
    tl.on_train(torch.tensor([3, 4, 5]))
    assert tl.scored_at.tolist() == [-1, 1, 1, 1, 3, 3] and tl.used_at.tolist() == [2, 2, 2, 2, 4, 4]
    assert check_timeline(tl).passed
    tl.on_train(torch.tensor([5]))
    assert check_timeline(tl).passed  # later reuse is fine
    bad = TokenTimeline(4)
    bad.on_score(torch.tensor([1, 2]))
    bad.on_train(torch.tensor([2, 3]))
    r = check_timeline(bad)
    assert not r.passed and r.evidence["first_offending_token"] == 3
    assert r.evidence["offending_scored_at"] is None


def test_a_run_without_events_fails(counter):
    def silent(h, model, dist, val_tokens, c, recorder=None):
        return eval_result(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), 0.0)

    r = _run(silent, counter)
    assert not r.passed and "no events" in r.message


# --- the real model (trainer/model.py), tiny preset ----------------------------------------------

def _tiny_gpt():
    import trainer.model as model_mod
    from trainer.attention import select_attention_backend
    from trainer.config import Hyperparameters

    select_attention_backend(torch.device("cpu"))
    h = Hyperparameters.from_env({"PRESET": "tiny"})
    torch.manual_seed(0)
    gpt = model_mod.GPT(h).float()
    gpt.set_recurrence(True)
    return h, gpt


def test_gpt_is_causal_and_its_ttt_is_score_first(counter):
    h, gpt = _tiny_gpt()
    tokens = real_val_tokens(800)[:64]
    for t in (0, 31, 62):
        r = probe_causality(gpt, tokens, t)
        assert r.passed, r.message
    e = eval_hparams(vocab_size=h.vocab_size)
    r = probe_score_before_update(e, gpt, cpu_dist(), real_val_tokens(800)[:400],
                                  position_bytes(counter, real_val_tokens(800)[:400]))
    assert r.passed and r.evidence["tokens_used_for_updates"] > 0, r.message


def test_gpt_sliding_equals_naive(counter):
    from conftest_eval import naive_nll

    from trainer.evaluate import eval_sliding

    _, gpt = _tiny_gpt()
    gpt.eval()
    tokens = real_val_tokens(800)[:120]
    e = eval_hparams(eval_seq_len=32, eval_stride=8, eval_batch_seqs=4)
    res = eval_sliding(e, gpt, cpu_dist(), tokens, position_bytes(counter, tokens))
    ref, _ = naive_nll(gpt, tokens, lambda k: max(0, -(-(k - 32) // 8) * 8))
    assert res.tokens == 119 and res.nll_sum == pytest.approx(ref, rel=1e-4)


# --- several ranks ------------------------------------------------------------------------------

def test_timelines_of_several_ranks():
    """A step on another rank reaches a score only through a collective update (an earlier
    epoch); a step on the scoring rank counts in program order."""
    a, b = TokenTimeline(6), TokenTimeline(6)
    a.on_score(torch.tensor([1, 2, 3]))
    b.on_score(torch.tensor([4, 5]))
    b.on_train(torch.tensor([0, 1, 2, 3]))  # same epoch, other rank: cannot have reached a's scores
    a.on_train(torch.tensor([1, 2]))
    a.on_sync()
    b.on_sync()
    a.on_train(torch.tensor([4, 5]))  # b scored them in epoch 0: fine in epoch 1
    ok = check_timelines([a, b.state()])
    assert ok.passed and ok.evidence["ranks"] == 2 and ok.evidence["tokens_scored"] == 5, ok.message
    c, d = TokenTimeline(6), TokenTimeline(6)
    c.on_score(torch.tensor([1, 2, 3]))
    d.on_train(torch.tensor([4, 5]))  # epoch 0 on d ...
    c.on_sync()
    d.on_sync()
    c.on_score(torch.tensor([4, 5]))  # ... reached c's epoch-1 score of 4 and 5
    bad = check_timelines([c, d])
    assert not bad.passed and bad.evidence["first_offending_token"] == 4
    e, f = TokenTimeline(4), TokenTimeline(4)
    e.on_score(torch.tensor([1, 2, 3]))
    f.on_score(torch.tensor([3]))
    twice = check_timelines([e, f])
    assert not twice.passed and twice.evidence["tokens_scored_twice_or_more"] == 1


def test_the_probe_runs_the_ttt_mode_of_the_settings(counter):
    from conftest_eval import lora_hparams, paragraph_val_tokens, tiny_gpt

    tokens = paragraph_val_tokens(10, 1)
    seen = []

    def spy(h, model, dist, val_tokens, val_bytes, recorder=None):
        seen.append(h.ttt_mode)
        return default_ttt_fn(h)(h, model, dist, val_tokens, val_bytes, recorder=recorder)

    vb = position_bytes(counter, tokens)
    for mode in ("sgd", "lora_phased"):
        h = lora_hparams(ttt_mode=mode, ttt_chunk_tokens=128, eval_seq_len=64)
        r = probe_score_before_update(h, tiny_gpt(), cpu_dist(), tokens, vb, ttt_fn=spy)
        assert r.passed and r.evidence["tokens_used_for_updates"] > 0, r.message
    assert seen == ["sgd", "lora_phased"]
    assert default_ttt_fn(lora_hparams()).__name__ == "eval_ttt_phased"
    assert default_ttt_fn(lora_hparams(ttt_mode="sgd")).__name__ == "eval_ttt"
