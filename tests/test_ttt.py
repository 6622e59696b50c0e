"""Score-first TTT: against a plain reference loop, against sliding evaluation when nothing is
learned, and across 2 gloo processes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from conftest_eval import (
    TinyCausalLM,
    cpu_dist,
    eval_hparams,
    gloo_group,
    make_sp,
    real_val_tokens,
    single_thread,  # noqa: F401 - autouse fixture
)

from trainer.bpb import ByteCounter, position_bytes
from trainer.evaluate import eval_sliding
from trainer.probes import TokenTimeline, check_timelines
from trainer.ttt import eval_ttt, ttt_chunk_bounds, ttt_lr_at


@pytest.fixture(scope="module")
def counter():
    return ByteCounter(make_sp(), 768)


def reference_ttt(h, model, tokens: torch.Tensor) -> float:
    """The algorithm written out plainly, one process: for each chunk score every token alone
    (context from the sliding-window rule), then train on the chunk's whole sequences."""
    n, seq_len, stride = tokens.numel(), h.eval_seq_len, h.eval_stride
    chunks = [(lo, min(lo + h.ttt_chunk_tokens, n)) for lo in range(1, n, h.ttt_chunk_tokens)]
    opt = torch.optim.SGD(model.parameters(), lr=h.ttt_lr, momentum=h.ttt_momentum)
    total = 0.0
    for ci, (lo, hi) in enumerate(chunks):
        model.eval()
        with torch.no_grad():
            for k in range(lo, hi):
                c = max(0, math.ceil((k - seq_len) / stride) * stride)
                total -= float(torch.log_softmax(model(tokens[None, c:k])[0, -1].double(), -1)[tokens[k]])
        if ci == len(chunks) - 1:
            break
        for g in opt.param_groups:
            g["lr"] = h.ttt_lr * 0.5 * (1 + math.cos(math.pi * ci / (len(chunks) - 1)))
        seqs = [tokens[lo - 1 + m * seq_len: lo + (m + 1) * seq_len] for m in range((hi - lo) // seq_len)]
        model.train()
        for _ in range(h.ttt_epochs):
            for b in range(0, len(seqs), h.ttt_batch_seqs):
                batch = torch.stack(seqs[b:b + h.ttt_batch_seqs])
                opt.zero_grad()
                model(batch[:, :-1], batch[:, 1:]).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), h.ttt_grad_clip)
                opt.step()
    return total


def test_chunks_and_cosine_schedule():
    assert ttt_chunk_bounds(10, 4) == [(1, 5), (5, 9), (9, 10)]
    assert ttt_chunk_bounds(9, 4) == [(1, 5), (5, 9)]
    assert ttt_chunk_bounds(1, 4) == []
    with pytest.raises(ValueError, match="TTT_CHUNK_TOKENS=0"):
        ttt_chunk_bounds(10, 0)
    h = eval_hparams(ttt_lr=0.005)
    assert ttt_lr_at(h, 0, 5) == 0.005 and ttt_lr_at(h, 4, 5) == pytest.approx(0.0, abs=1e-12)
    assert ttt_lr_at(h, 2, 5) == pytest.approx(0.0025) and ttt_lr_at(h, 0, 1) == 0.005


@pytest.mark.parametrize("over", [dict(ttt_epochs=0), dict(ttt_lr=0.0)])
def test_without_learning_ttt_equals_sliding(counter, over):
    tokens = real_val_tokens(800)[:701]
    h = eval_hparams(**over)
    model = TinyCausalLM()
    slide = eval_sliding(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    ttt = eval_ttt(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    assert (ttt.tokens, ttt.bytes) == (slide.tokens, slide.bytes) == (700, ttt.bytes)
    assert ttt.nll_sum == pytest.approx(slide.nll_sum, rel=1e-9)


@pytest.mark.parametrize("over", [
    dict(),
    dict(ttt_chunk_tokens=96, ttt_batch_seqs=2, ttt_epochs=1, eval_stride=5),
    dict(ttt_chunk_tokens=100, ttt_batch_seqs=8, ttt_grad_clip=0.05, ttt_lr=0.3),
])
def test_matches_reference_loop(counter, over):
    tokens = real_val_tokens(800)[:650]
    h = eval_hparams(**over)
    model = TinyCausalLM()
    ref = reference_ttt(h, copy.deepcopy(model), tokens)
    res = eval_ttt(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    assert res.tokens == 649
    assert res.bytes == int(counter.token_bytes(tokens[:-1], tokens[1:]).sum())
    assert res.nll_sum == pytest.approx(ref, rel=2e-5)
    base = eval_sliding(h, TinyCausalLM(), cpu_dist(), tokens, position_bytes(counter, tokens))
    assert abs(res.nll_sum - base.nll_sum) > 1e-3 * base.nll_sum  # training changed the scores (>> tolerance)


def test_adapts_in_place_and_helps_on_repeated_text(counter):
    """Text that repeats: what TTT learns from early chunks lowers the loss on later ones."""
    part = real_val_tokens(800)[:256]
    tokens = torch.cat([part] * 4)
    h = eval_hparams(ttt_lr=0.3, ttt_epochs=3, ttt_chunk_tokens=256, ttt_batch_seqs=4)
    model = TinyCausalLM()
    before = [p.detach().clone() for p in model.parameters()]
    slide = eval_sliding(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    ttt = eval_ttt(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
    assert ttt.val_bpb < 0.9 * slide.val_bpb
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


# --- two gloo processes against one -------------------------------------------------------------

DIST_CASES = [dict(), dict(ttt_chunk_tokens=96, ttt_batch_seqs=3, eval_batch_seqs=3),
              dict(ttt_chunk_tokens=64, ttt_batch_seqs=1)]  # 1 sequence per step: one rank idle


def _worker(rank: int, world: int, init: str, tokens, state, out_path: str) -> None:
    with gloo_group(rank, world, init) as dist:
        torch.set_num_threads(1)
        counter = ByteCounter(make_sp(), 768)
        results = []
        for over in DIST_CASES:
            h = eval_hparams(**over)
            model = TinyCausalLM()
            model.load_state_dict(state)
            slide = eval_sliding(h, model, dist, tokens, position_bytes(counter, tokens))
            tl = TokenTimeline(tokens.numel())
            ttt = eval_ttt(h, model, dist, tokens, position_bytes(counter, tokens), recorder=tl)
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            tdist.all_gather(gathered, flat)
            same = all(torch.equal(gathered[0], g) for g in gathered)
            timelines = [None] * world
            tdist.all_gather_object(timelines, tl.state())
            results.append(dict(slide=slide.nll_sum, slide_n=slide.tokens, slide_b=slide.bytes,
                                ttt=ttt.nll_sum, ttt_n=ttt.tokens, ttt_b=ttt.bytes, same_weights=same,
                                weights=flat, timelines=timelines))
        if rank == 0:
            torch.save(results, out_path)


@pytest.mark.slow
def test_two_gloo_processes_match_one(counter, tmp_path):
    tokens = real_val_tokens(800)[:600]
    state = TinyCausalLM().state_dict()
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", tokens, state, out), nprocs=2, join=True)
    got = torch.load(out)
    for over, r in zip(DIST_CASES, got):
        h = eval_hparams(**over)
        model = TinyCausalLM()
        model.load_state_dict(state)
        slide = eval_sliding(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
        ttt = eval_ttt(h, model, cpu_dist(), tokens, position_bytes(counter, tokens))
        assert (r["slide_n"], r["slide_b"]) == (slide.tokens, slide.bytes) == (r["ttt_n"], r["ttt_b"])
        assert r["slide"] == pytest.approx(slide.nll_sum, rel=1e-9)
        assert r["ttt"] == pytest.approx(ttt.nll_sum, rel=1e-5), over
        assert abs(r["ttt"] - r["slide"]) > 1e-3 * r["slide"]  # TTT did train in both runs
        assert r["same_weights"]  # every rank ends with the same weights ...
        one = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert torch.allclose(r["weights"], one, atol=1e-5)  # ... those of the 1-process run
        check = check_timelines(r["timelines"])  # scored once, before any step that used it, on any rank
        assert check.passed and check.evidence["tokens_scored"] == tokens.numel() - 1, check.message
        assert all(int(t["score_count"].sum()) > 0 for t in r["timelines"])


class _ForwardClock:
    """A clock advanced by the work: every model forward adds its input tokens (no wall time)."""

    def __init__(self, model):
        self.t = 0.0
        model.register_forward_hook(lambda mod, args, out: setattr(self, "t", self.t + args[0].numel()))

    def __call__(self) -> float:
        return self.t


def test_budget_stop_scores_the_rest_without_training(counter):
    from trainer.probes import TokenTimeline, check_timeline

    tokens = real_val_tokens(800)[:650]
    vb = position_bytes(counter, tokens)
    h = eval_hparams(ttt_chunk_tokens=96, ttt_epochs=2)
    model = TinyCausalLM()
    full = _ForwardClock(model)
    res_full = eval_ttt(h, model, cpu_dist(), tokens, vb, clock=full)
    model = TinyCausalLM()
    clock, tl, lines = _ForwardClock(model), TokenTimeline(tokens.numel()), []
    res = eval_ttt(h, model, cpu_dist(), tokens, vb, recorder=tl, clock=clock, deadline=0.85 * full.t,
                   log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("eval_budget: stop adapting at chunk:")
    assert clock.t <= 0.85 * full.t
    r = check_timeline(tl)
    assert r.passed and r.evidence["tokens_used_for_updates"] > 0, r.message
    assert (res.tokens, res.bytes) == (res_full.tokens, res_full.bytes) and res.nll_sum != res_full.nll_sum
