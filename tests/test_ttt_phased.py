"""Phased per-document LoRA TTT (trainer/ttt_phased.py): the plan, a plain one-document-at-a-time
reference loop, per-document reset, the no-learning cases, score-before-update across phases,
the budget stop, and 2 gloo processes against one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest_eval import (
    cpu_dist,
    gloo_group,
    lora_hparams,
    make_sp,
    paragraph_val_tokens,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_gpt,
)

from trainer.bpb import ByteCounter, position_bytes
from trainer.dist import DistInfo
from trainer.probes import TokenTimeline, check_timelines, probe_score_before_update
from trainer.ttt_lora import DocLoraBank
from trainer.ttt_phased import (
    _PhasedRun,
    batch_work,
    eval_ttt_phased,
    find_documents,
    plan_phased,
    rank_batches,
    score_only_chunk,
    work_cost,
)

N_DOCS = 14


@pytest.fixture(scope="module")
def stream():
    tokens = paragraph_val_tokens(N_DOCS, 2)
    return tokens, position_bytes(ByteCounter(make_sp(), 768), tokens)


class ScoreLog:
    """Recorder keeping each token's NLL (and the timeline)."""

    def __init__(self, n: int):
        self.tl = TokenTimeline(n)
        self.nll: dict[int, float] = {}

    def on_score(self, ids):
        self.tl.on_score(ids)

    def on_train(self, ids):
        self.tl.on_train(ids)

    def on_sync(self):
        self.tl.on_sync()

    def on_nll(self, ids, nll):
        for k, v in zip(ids.tolist(), nll.tolist()):
            self.nll[k] = v


def run_phased(h, model, tokens, val_bytes, lines=None, **kw):
    rec = ScoreLog(tokens.numel())
    res = eval_ttt_phased(h, model, cpu_dist(), tokens, val_bytes, recorder=rec,
                          log=None if lines is None else lines.append, **kw)
    return res, rec


# --- the plan -----------------------------------------------------------------------------------

def test_documents_split_before_every_bos():
    t = torch.tensor([5, 1, 7, 8, 1, 1, 9])
    assert find_documents(t).tolist() == [[0, 1], [1, 3], [4, 1], [5, 2]]
    assert find_documents(torch.tensor([1, 4, 4, 1, 6])).tolist() == [[0, 3], [3, 2]]
    assert find_documents(torch.tensor([3, 4])).tolist() == [[0, 2]]


@pytest.mark.parametrize("world", [1, 3])
def test_plan_schedules_every_document_once(stream, world):
    tokens, _ = stream
    h = lora_hparams(phased_ttt_prefix_docs=7, phased_ttt_phases=3, ttt_lora_batch_docs=3)
    docs = find_documents(tokens)
    plan = plan_phased(h, docs, world)
    lengths = docs[:, 1].tolist()
    assert plan.order == sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
    assert plan.bounds == [2, 4, 7] and len(plan.segments) == 4
    seen = [j for seg in plan.segments for bt in seg for j in bt]
    assert sorted(seen) == [j for j in range(len(lengths)) if lengths[j] >= 2]
    flat_order = [j for j in plan.order if lengths[j] >= 2]
    assert seen == flat_order  # segments in order, batches consecutive in the order
    cuts = [0, 2, 4, 7, len(lengths)]
    for si, seg in enumerate(plan.segments):
        assert {j for bt in seg for j in bt} <= set(plan.order[cuts[si]:cuts[si + 1]])
        assert all(1 <= len(bt) <= 3 for bt in seg)
        loads = [0] * world
        for k, r in enumerate(plan.owner[si]):
            loads[r] += work_cost(plan.adapt_work[si][k])
        biggest = max((work_cost(w) for w in plan.adapt_work[si]), default=0)
        assert max(loads) - min(loads) <= biggest  # longest processing time first
        assert sorted(k for r in range(world) for k in rank_batches(plan, si, r)) == list(range(len(seg)))


def test_batch_work_is_what_the_loop_runs(stream):
    tokens, vb = stream
    h = lora_hparams(phased_ttt_phases=0)
    lines: list[str] = []
    run_phased(h, tiny_gpt(), tokens, vb, lines)
    plan = plan_phased(h, find_documents(tokens), 1)
    logged = [ln for ln in lines if ln.startswith("ttt_lora ")]
    want = [plan.adapt_work[0][k] for k in rank_batches(plan, 0, 0)]
    got = [tuple(int(ln.split(f" {f}:")[1].split()[0]) for f in ("iters", "row_iters", "passes"))
           for ln in logged]
    assert got == want
    assert batch_work([1, 1], 16, 64) == (0, 0, 0)
    assert batch_work([70, 20], 16, 64) == (5, 2 + 2 + 2 + 2 + 2, 2 * (16 + 32 + 48 + 64 + 64))


# --- against a plain loop -----------------------------------------------------------------------

def reference_phased(h, model, tokens: torch.Tensor) -> dict[int, float]:
    """The algorithm written out plainly, one document at a time: document ends first, then
    the documents longest first, each chunk scored then trained on with its own fresh adapter;
    after each prefix part, SGD on every document scored so far. Returns NLL per token."""
    n, L, C = tokens.numel(), h.eval_seq_len, h.ttt_lora_chunk_tokens
    starts = [0] + [k for k in range(1, n) if int(tokens[k]) == 1]
    docs = list(zip(starts, starts[1:] + [n]))
    for p in model.parameters():
        p.requires_grad_(False)
    bank = DocLoraBank(model, 1, h.ttt_lora_rank, h.ttt_lora_alpha, h.seed, torch.device("cpu"),
                       h.ttt_lora_lr, (h.ttt_beta1, h.ttt_beta2), h.ttt_weight_decay)

    def per_token(x, y):
        bank.weights(1)
        out = F.cross_entropy(model(x[None])[0], y, reduction="none")
        bank.end_forward()
        return out

    nll: dict[int, float] = {}
    bank.reset()
    with torch.no_grad():
        for s, e in docs[:-1]:
            ws = max(s, e - L)
            nll[e] = float(per_token(tokens[ws:e], tokens[ws + 1:e + 1])[-1])
    order = sorted(range(len(docs)), key=lambda j: (-(docs[j][1] - docs[j][0]), j))
    p = min(len(docs), h.phased_ttt_prefix_docs)
    bounds = [p * (i + 1) // h.phased_ttt_phases for i in range(h.phased_ttt_phases)] if p else []
    cuts = [0] + bounds + [len(docs)]
    for si, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        for j in order[a:b]:
            s, e = docs[j]
            m = e - s - 1
            bank.reset()
            nc = -(-m // C)
            for ci in range(nc):
                cs, ce = ci * C, min((ci + 1) * C, m)
                ws = max(0, ce - L)
                per = per_token(tokens[s + ws:s + ce], tokens[s + ws + 1:s + ce + 1])
                for q in range(cs, ce):
                    nll[s + q + 1] = float(per[q - ws].detach())
                if ci < nc - 1:
                    per[cs - ws:ce - ws].mean().backward()
                    bank.adam_step(1, ci + 1)
        if si < len(bounds) and si < len(cuts) - 2:
            seq = torch.cat([tokens[docs[j][0]:docs[j][1]] for j in sorted(order[:bounds[si]])])
            params = list(model.parameters())
            for q in params:
                q.requires_grad_(True)
            opt = torch.optim.SGD(params, lr=h.global_ttt_lr, momentum=h.global_ttt_momentum)
            chunks = [(lo, min(lo + h.global_ttt_chunk_tokens, seq.numel()))
                      for lo in range(1, seq.numel(), h.global_ttt_chunk_tokens)]
            for ci, (lo, hi) in enumerate(chunks[:-1]):
                for g in opt.param_groups:
                    g["lr"] = h.global_ttt_lr * 0.5 * (1 + math.cos(math.pi * ci / (len(chunks) - 1)))
                seqs = [seq[lo - 1 + k * L: lo + (k + 1) * L] for k in range((hi - lo) // L)]
                for b0 in range(0, len(seqs), h.global_ttt_batch_seqs):
                    batch = torch.stack(seqs[b0:b0 + h.global_ttt_batch_seqs])
                    opt.zero_grad()
                    model(batch[:, :-1], batch[:, 1:]).backward()
                    torch.nn.utils.clip_grad_norm_(params, h.global_ttt_grad_clip)
                    opt.step()
            for q in params:
                q.requires_grad_(False)
    bank.close()
    return nll


@pytest.mark.parametrize("over", [dict(), dict(phased_ttt_phases=0, ttt_lora_batch_docs=3)])
def test_matches_plain_reference_loop(stream, over):
    tokens, vb = stream
    h = lora_hparams(**over)
    model = tiny_gpt()
    ref = reference_phased(h, copy.deepcopy(model), tokens)
    res, rec = run_phased(h, model, tokens, vb)
    assert sorted(rec.nll) == sorted(ref) == list(range(1, tokens.numel()))
    assert res.tokens == tokens.numel() - 1 and res.bytes == int(vb[1:].sum())
    diff = max(abs(rec.nll[k] - ref[k]) for k in ref)
    assert diff < 1e-4, diff
    assert res.nll_sum == pytest.approx(sum(ref.values()), rel=1e-6)
    base, _ = run_phased(lora_hparams(ttt_lora_rank=0, phased_ttt_phases=0), tiny_gpt(), tokens, vb)
    assert res.nll_sum < base.nll_sum - 1e-3 * base.nll_sum  # adaptation helped (well beyond tolerance)


def per_document_scores(model, tokens: torch.Tensor, seq_len: int, chunk: int) -> float:
    """Plain per-document scoring, no learning: each target of a document predicted from the
    window of at most ``seq_len`` tokens ending at its chunk's end (never before the document
    start); a document's end (the next BOS) from its last ``seq_len`` tokens."""
    n = tokens.numel()
    starts = [0] + [k for k in range(1, n) if int(tokens[k]) == 1]
    total = 0.0
    with torch.no_grad():
        for s, e in zip(starts, starts[1:] + [n]):
            m = e - s - 1
            for ci in range(-(-m // chunk)):
                cs, ce = ci * chunk, min((ci + 1) * chunk, m)
                ws = max(0, ce - seq_len)
                lp = torch.log_softmax(model(tokens[None, s + ws:s + ce])[0].double(), -1)
                total -= sum(float(lp[q - ws, tokens[s + q + 1]]) for q in range(cs, ce))
            if e < n:
                ws = max(s, e - seq_len)
                total -= float(torch.log_softmax(model(tokens[None, ws:e])[0, -1].double(), -1)[tokens[e]])
    return total


@pytest.mark.parametrize("over", [dict(ttt_lora_rank=0), dict(ttt_lora_lr=0.0, ttt_weight_decay=0.0)])
def test_without_learning_equals_plain_per_document_scoring(stream, over):
    tokens, vb = stream
    h = lora_hparams(phased_ttt_phases=0, **over)
    model = tiny_gpt()
    res, rec = run_phased(h, model, tokens, vb)
    chunk = score_only_chunk(h) if h.ttt_lora_rank == 0 else h.ttt_lora_chunk_tokens
    assert res.tokens == tokens.numel() - 1
    assert res.nll_sum == pytest.approx(per_document_scores(model, tokens, h.eval_seq_len, chunk), rel=1e-6)


def test_each_document_starts_from_fresh_adapters(stream):
    """Change one document (same length, so the same plan): every other token's score is the
    same, including its batch neighbours and the documents that reuse its rows later."""
    tokens, vb = stream
    h = lora_hparams(ttt_lora_batch_docs=3, ttt_lora_lr=0.05)
    docs = find_documents(tokens)
    plan = plan_phased(h, docs, 1)
    j = plan.segments[-1][0][0]  # first document of the suffix's first batch (after every global phase)
    s, ln = docs[j].tolist()
    other = tokens.clone()
    body = other[s + 1:s + ln]
    other[s + 1:s + ln] = torch.where((body + 7) % 768 == 1, 2, (body + 7) % 768)
    _, a = run_phased(h, tiny_gpt(), tokens, vb)
    _, b = run_phased(h, tiny_gpt(), other, vb)
    mine = set(range(s + 1, s + ln + 1))  # its targets and its end
    assert max(abs(a.nll[k] - b.nll[k]) for k in a.nll if k not in mine) < 1e-5
    assert max(abs(a.nll[k] - b.nll[k]) for k in mine) > 1e-2  # the change did reach its own scores


# --- score before update ------------------------------------------------------------------------

def test_score_before_update_across_phases(stream):
    tokens, vb = stream
    h = lora_hparams(phased_ttt_prefix_docs=9, phased_ttt_phases=3)
    r = probe_score_before_update(h, tiny_gpt(), cpu_dist(), tokens, vb)  # TTT_MODE picks the phased eval
    assert r.passed, r.message
    ev = r.evidence
    assert ev["tokens_scored"] == tokens.numel() - 1 and ev["tokens_scored_twice_or_more"] == 0
    assert ev["tokens_used_for_updates"] > 0.8 * tokens.numel()


def test_the_records_document_end_order_would_be_caught(stream, monkeypatch):
    """Scoring each document's end last (where the record does), after the next document's
    adapter already read that BOS, is reported as use before score."""
    tokens, vb = stream
    h = lora_hparams()
    real_ends, real_run = _PhasedRun.doc_ends, _PhasedRun.run

    def ends_last(self, plan, t_start):
        self.doc_ends = lambda plan: None
        real_run(self, plan, t_start)
        real_ends(self, plan)

    monkeypatch.setattr(_PhasedRun, "run", ends_last)
    r = probe_score_before_update(h, tiny_gpt(), cpu_dist(), tokens, vb)
    assert not r.passed and "used by a gradient step before" in r.message
    assert int(tokens[r.evidence["first_offending_token"]]) == 1  # a BOS


# --- the budget ---------------------------------------------------------------------------------

class WorkClock(TokenTimeline):
    """A timeline whose clock is the work itself (no timing depends on the machine): every model
    forward advances it by its window tokens, every training step by 1.5x the tokens it used
    (the backward)."""

    def __init__(self, model, n_tokens: int):
        super().__init__(n_tokens)
        self.t = 0.0
        model.register_forward_hook(self.tick)

    def tick(self, mod, args, out):
        self.t += args[0].numel()

    def on_train(self, ids):
        super().on_train(ids)
        self.t += 1.5 * ids.numel()

    def __call__(self) -> float:
        return self.t


def test_budget_stop_keeps_the_score_legal(stream):
    tokens, vb = stream
    h = lora_hparams(ttt_lora_batch_docs=2)
    model = tiny_gpt()
    full = WorkClock(model, tokens.numel())
    res_full = eval_ttt_phased(h, model, cpu_dist(), tokens, vb, recorder=full, clock=full)
    for frac, phases in ((0.5, 0), (0.8, 1)):
        model = tiny_gpt()
        wc = WorkClock(model, tokens.numel())
        lines: list[str] = []
        res = eval_ttt_phased(h, model, cpu_dist(), tokens, vb, recorder=wc, clock=wc, log=lines.append,
                              deadline=frac * full.t)
        stops = [ln for ln in lines if ln.startswith("eval_budget: stop adapting")]
        assert len(stops) == 1 and "the rest is only scored" in stops[0]
        done = [ln for ln in lines if ln.startswith("ttt_phased_done")][0]
        assert f"global_phases:{phases}/2" in done
        assert "scored_only_docs:0 " not in done and "adapted_docs:0 " not in done
        assert wc.t <= frac * full.t  # the projection kept the run inside its deadline
        check = check_timelines([wc])
        assert check.passed, check.message
        assert res.tokens == res_full.tokens and res.bytes == res_full.bytes
        assert res.nll_sum > res_full.nll_sum  # less adaptation, worse score (and not the same run)


# --- two gloo processes against one -------------------------------------------------------------

def _worker(rank: int, world: int, init: str, tokens, vb, state, out_path: str) -> None:
    with gloo_group(rank, world, init) as dist:
        torch.set_num_threads(1)
        model = tiny_gpt()
        model.load_state_dict(state)
        tl = TokenTimeline(tokens.numel())
        res = eval_ttt_phased(lora_hparams(), model, dist, tokens, vb, recorder=tl)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [None] * world
        tdist.all_gather_object(gathered, dict(state=tl.state(), weights=flat))
        if rank == 0:
            torch.save(dict(nll=res.nll_sum, tokens=res.tokens, bytes=res.bytes, bpb=res.val_bpb,
                            ranks=gathered), out_path)


@pytest.mark.slow
def test_two_gloo_processes_match_one(stream, tmp_path):
    tokens, vb = stream
    state = tiny_gpt().state_dict()
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", tokens, vb, state, out), nprocs=2, join=True)
    got = torch.load(out)
    model = tiny_gpt()
    one = eval_ttt_phased(lora_hparams(), model, cpu_dist(), tokens, vb)
    assert (got["tokens"], got["bytes"]) == (one.tokens, one.bytes)
    assert got["bpb"] == pytest.approx(one.val_bpb, rel=1e-5)
    w0, w1 = (r["weights"] for r in got["ranks"])
    assert torch.equal(w0, w1)  # the global phases kept every rank's weights identical ...
    mine = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(w0, mine, atol=1e-5) and not torch.allclose(w0, torch.cat(
        [p.reshape(-1) for p in tiny_gpt().parameters()]))  # ... those of one process, trained
    states = [r["state"] for r in got["ranks"]]
    assert all(int(s["score_count"].sum()) > 0 for s in states)  # both ranks did score
    check = check_timelines(states)
    assert check.passed, check.message
    assert check.evidence["tokens_scored"] == tokens.numel() - 1


# --- on a GPU (the lead runs these) -------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.compile of the hooked model)")
def test_compiled_on_cuda_matches_eager_and_compiles_once(stream):
    import torch._dynamo.utils as dynamo_utils

    from trainer.ttt_phased import LoraRunner, lora_warmup

    tokens, vb = stream
    dev = torch.device("cuda")
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    results = {}
    for compiled in (False, True):
        h = lora_hparams(compile=compiled)
        model = tiny_gpt().to(dev)
        runner = LoraRunner(h, model, dev)
        lora_warmup(h, runner)
        graphs = dynamo_utils.counters["stats"]["unique_graphs"]
        results[compiled] = eval_ttt_phased(h, model, dist, tokens, vb, runner=runner)
        runner.close()
        if compiled:  # the warm-up compiled every shape the evaluation ran: no recompilation during it
            assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs
    assert results[True].tokens == results[False].tokens == tokens.numel() - 1
    assert results[True].val_bpb == pytest.approx(results[False].val_bpb, rel=1e-2)
