"""Phased per-document LoRA test-time training (TTT_MODE=lora_phased), the 1.0611 record's evaluation.

Documents: the validation stream split before every BOS (the stream's first document starts at
token 0). Document ``[s, e)`` owns the targets ``s+1 .. e-1``; its end, the next document's BOS at
``e``, is scored first of all (below). Every target ``1 .. N-1`` is scored exactly once.

Order of work (all of it fixed up front, from the document lengths only):
1. Document ends: each BOS after the first is scored with the unadapted model, from the last
   EVAL_SEQ_LEN tokens of the document it ends, before any update. (The record scores it as the
   last target of that document, but the next document's adapter reads the same BOS as its first
   input, possibly earlier: scoring every end first keeps "scored before used" exact.)
2. Documents are processed longest first, as the record's queue does. The first
   PHASED_TTT_PREFIX_DOCS of that order form the prefix, cut at PHASED_TTT_PHASES boundaries
   (``P*(i+1)/K``). Segment i (prefix part i, then the rest) is scored with per-document LoRA;
   after prefix part i, a global SGD phase trains the whole model on every document scored so far
   (cumulative, as the record), then the next segment is scored with the updated model.
3. Per-document LoRA: TTT_LORA_BATCH_DOCS documents of similar length at once, one adapter each
   (trainer/ttt_lora.py), reset for every batch. A document's targets are cut into chunks of
   TTT_LORA_CHUNK_TOKENS; for each chunk in order: one forward over the window of the last
   EVAL_SEQ_LEN tokens up to the chunk's end (never before the document's start) gives the chunk's
   scores (full softmax) and, unless it is the document's last chunk, the loss (mean NLL over the
   chunk) of one AdamW step on that document's adapter. The scores are taken (detached) from that
   forward before its backward and step, so a chunk is scored before the update that uses it; the
   adapter only ever sees its own document, and is reset before the next one.
4. Global SGD (GLOBAL_TTT_*): the scored documents in stream order, cut into
   GLOBAL_TTT_CHUNK_TOKENS chunks of whole EVAL_SEQ_LEN sequences, SGD with momentum on a cosine
   over the chunks (the last chunk is not trained on, as the record), gradients all-reduced so
   every rank keeps the same weights.

Distributed: every rank builds the same plan; each segment's batches go to the ranks by longest
processing time (the cost model below; batches of the longest documents are cut smaller so they
spread over the ranks); the global phases split each step's sequences over ranks.
Rows of a batch are sorted by length, so finished documents drop off the end of the batch.

Budget: with a ``deadline`` (a ``clock()`` value), before each batch a rank projects, from its
measured rates, the time to adapt that batch and then only score all its remaining work; if that
would pass the deadline it stops adapting and scores the rest (score-only windows advance by half
of EVAL_SEQ_LEN). A global phase runs only if every rank can still afford it. Stopping adaptation
never breaks "scored before used": it only removes updates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from trainer.dist import all_reduce_
from trainer.evaluate import EvalResult, eval_autocast, eval_result
from trainer.ttt import cosine_lr, train_scored_sequences, ttt_chunk_bounds
from trainer.ttt_lora import DocLoraBank, lora_token_nll

PHASED_BOS_ID = 1  # documents start with <s> in the challenge's SentencePiece models
# cost model: a row-iteration (one document's adapter state, ~7M values at full size, cast, updated
# and written: ~220 MB of memory traffic, ~90 us on an H100) weighs about as much as this many window
# tokens of forward+backward (~1.2M/s per H100); only balances ranks and scales measured rates
ROW_ITER_PASSES = 128


def find_documents(tokens: torch.Tensor, bos_id: int = PHASED_BOS_ID) -> torch.Tensor:
    """int64 [D, 2]: (start, length) of each document, in stream order (a new one at every BOS
    after position 0; the first starts at 0 whatever its first token)."""
    tokens = tokens.reshape(-1)
    n = tokens.numel()
    starts = torch.nonzero(tokens == bos_id).reshape(-1).cpu()
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), starts[starts > 0]])
    ends = torch.cat([starts[1:], torch.tensor([n], dtype=torch.int64)])
    return torch.stack([starts, ends - starts], dim=1)


def padded_len(t: int, seq_len: int) -> int:
    """Window length a batch runs at: a multiple of 8 (few shapes for the compiler), at least 2."""
    return max(2, min(-(-t // 8) * 8, max(seq_len, t)))


def _window_table(chunk: int, seq_len: int, n: int) -> torch.Tensor:
    """``S[k]``: window tokens of chunks ``0..k-1`` of a document that has more than k chunks."""
    t = torch.minimum(torch.arange(1, n + 1, dtype=torch.int64) * chunk, torch.tensor(seq_len))
    t = torch.minimum(-(-t // 8) * 8, torch.tensor(max(seq_len, 1))).clamp(min=2)
    return torch.cat([torch.zeros(1, dtype=torch.int64), t.cumsum(0)])


def batch_work(lengths: list[int], chunk: int, seq_len: int, min_rows: int = 2) -> tuple[int, int, int]:
    """(iterations, row-iterations, window tokens) of a batch of documents (lengths sorted
    descending), as the loop below runs it (at least ``min_rows`` <= 2 rows, windows
    ``padded_len``), in closed form: every row runs at the first row's window length."""
    m = torch.tensor(lengths, dtype=torch.int64) - 1
    m = m[m > 0]
    if not m.numel():
        return 0, 0, 0
    nc = -(-m // chunk)
    n0 = int(nc[0])
    table = _window_table(chunk, seq_len, n0)
    last = padded_len(min(int(m[0]), seq_len), seq_len)  # the first row's last chunk
    per_row = table[nc.clamp(max=n0 - 1)] + torch.where(nc == n0, last, 0)
    passes, rows = int(per_row.sum()), int(nc.sum())
    if min_rows >= 2:  # while a single row is active it runs alongside a padding row
        n1 = int(nc[1]) if nc.numel() > 1 else 0
        if n1 < n0:
            passes += int(table[n0 - 1] - table[n1]) + last
            rows += n0 - n1
    return n0, rows, passes


def doc_costs(lengths: torch.Tensor, chunk: int, seq_len: int) -> torch.Tensor:
    """``work_cost`` of each document (length >= 2) alone in a batch of one row, vectorised."""
    m = lengths - 1
    nc = -(-m // chunk)
    table = _window_table(chunk, seq_len, int(nc.max()) if nc.numel() else 1)
    last = torch.minimum(-(-m.clamp(max=seq_len) // 8) * 8, torch.tensor(max(seq_len, 1))).clamp(min=2)
    return table[nc - 1] + last + ROW_ITER_PASSES * nc


def work_cost(work: tuple[int, int, int]) -> int:
    return work[2] + ROW_ITER_PASSES * work[1]


@dataclass
class PhasedPlan:
    docs: torch.Tensor  # [D, 2] (start, length), stream order
    order: list[int]  # processing order: longest first
    bounds: list[int]  # end of each prefix part in ``order`` (a global phase after each)
    segments: list[list[list[int]]]  # segment -> batches -> document ids (longest first)
    owner: list[list[int]]  # segment -> batch -> rank
    adapt_work: list[list[tuple[int, int, int]]] = field(default_factory=list)  # with TTT_LORA_CHUNK_TOKENS
    score_work: list[list[tuple[int, int, int]]] = field(default_factory=list)  # with score-only windows


def score_only_chunk(h) -> int:
    return max(h.ttt_lora_chunk_tokens, h.eval_seq_len // 2)


def phase_bounds(n_docs: int, prefix_docs: int, phases: int) -> list[int]:
    p = max(0, min(n_docs, prefix_docs))
    k = max(0, phases) if p > 0 else 0
    return [p * (i + 1) // k for i in range(k)]


def plan_phased(h, docs: torch.Tensor, world_size: int) -> PhasedPlan:
    """The whole schedule (same on every rank): segments, batches, their ranks and work."""
    lengths = docs[:, 1].tolist()
    order = sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
    bounds = phase_bounds(len(order), h.phased_ttt_prefix_docs, h.phased_ttt_phases)
    cuts = [0] + bounds + ([len(order)] if not bounds or bounds[-1] < len(order) else [])
    rows = max(1, h.ttt_lora_batch_docs)
    chunk, L, cs, r2 = h.ttt_lora_chunk_tokens, h.eval_seq_len, score_only_chunk(h), min(2, rows)
    plan = PhasedPlan(docs, order, bounds, [], [])
    for a, b in zip(cuts[:-1], cuts[1:]):
        seg = [j for j in order[a:b] if lengths[j] >= 2]  # a lone BOS has no target of its own
        costs = doc_costs(torch.tensor([lengths[j] for j in seg], dtype=torch.int64), chunk, L).tolist()
        # a batch stays under 1/(2W) of the segment's work so the longest documents spread over ranks,
        # but holds 2 documents at least (a 1-row batch would be padded to 2 rows anyway)
        cap = max(sum(costs) / (2 * world_size), 1)
        batches, cur, cur_cost = [], [], 0
        for j, c in zip(seg, costs):
            if len(cur) >= rows or (len(cur) >= 2 and cur_cost + c > cap):
                batches.append(cur)
                cur, cur_cost = [], 0
            cur.append(j)
            cur_cost += c
        if cur:
            batches.append(cur)
        aw = [batch_work([lengths[j] for j in bt], chunk, L, r2) for bt in batches]
        sw = [batch_work([lengths[j] for j in bt], cs, L, r2) for bt in batches]
        # longest processing time first: each batch to the least loaded rank
        load = [0] * world_size
        owner = [0] * len(batches)
        for k in sorted(range(len(batches)), key=lambda k: (-work_cost(aw[k]), k)):
            r = min(range(world_size), key=lambda r: (load[r], r))
            owner[k] = r
            load[r] += work_cost(aw[k])
        plan.segments.append(batches)
        plan.owner.append(owner)
        plan.adapt_work.append(aw)
        plan.score_work.append(sw)
    return plan


def rank_batches(plan: PhasedPlan, seg: int, rank: int) -> list[int]:
    """This rank's batches of a segment, largest first."""
    mine = [k for k, r in enumerate(plan.owner[seg]) if r == rank]
    return sorted(mine, key=lambda k: (-work_cost(plan.adapt_work[seg][k]), k))


# --- running the forward ------------------------------------------------------------------------

class LoraRunner:
    """The model, its adapter bank (None at TTT_LORA_RANK=0: no adaptation) and the per-token NLL
    function (torch.compile'd with dynamic shapes on CUDA when COMPILE=1)."""

    def __init__(self, h, model, device: torch.device):
        self.model, self.device = model, device
        self.rows = max(1, h.ttt_lora_batch_docs)
        self.bank = None
        if h.ttt_lora_rank > 0:
            self.bank = DocLoraBank(model, self.rows, h.ttt_lora_rank, h.ttt_lora_alpha, h.seed, device,
                                    h.ttt_lora_lr, (h.ttt_beta1, h.ttt_beta2), h.ttt_weight_decay)
        compiled = device.type == "cuda" and h.compile
        self.fn = torch.compile(lora_token_nll, dynamic=True) if compiled else lora_token_nll
        self.checked = False

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-token NLL [n, T]; with a bank, through a fresh leaf over its rows ``[:n]``."""
        if self.bank is not None:
            self.bank.weights(x.shape[0])
        with eval_autocast(self.device):
            out = self.fn(self.model, x, y)
        if self.bank is not None:
            if not self.checked:
                self.bank.check_calls()
                self.checked = True
            self.bank.end_forward()
        return out

    def close(self) -> None:
        if self.bank is not None:
            self.bank.close()


def lora_warmup(h, runner: LoraRunner) -> None:
    """Compile (and autotune) the LoRA forward/backward and the AdamW step on random tokens, at the
    shapes the evaluation will run (full and short windows, full and 2-row batches); no
    validation data is read. Leaves the bank reset."""
    g = torch.Generator().manual_seed(h.seed)
    chunk, L = h.ttt_lora_chunk_tokens, h.eval_seq_len
    short = padded_len(chunk, L)
    for n, t in ((runner.rows, short), (runner.rows, L), (min(2, runner.rows), short)):
        x = torch.randint(0, h.vocab_size, (n, t), generator=g).to(runner.device)
        y = torch.randint(0, h.vocab_size, (n, t), generator=g).to(runner.device)
        nll = runner.nll(x, y)
        if runner.bank is not None:
            nll[:, :min(chunk, t)].mean(-1).sum().backward()
            runner.bank.adam_step(n, 1)
    if runner.bank is not None:
        runner.bank.reset()
        runner.bank.detach()
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)


# --- the budget ---------------------------------------------------------------------------------

class EvalBudget:
    """Rates measured on this rank, the projection, and the stop decision."""

    def __init__(self, clock, deadline: float | None):
        self.clock, self.deadline = clock, deadline
        self.spent = {"adapt": [0.0, 0.0], "score": [0.0, 0.0], "global": [0.0, 0.0]}  # kind -> [cost, s]
        self.stopped = False

    def record(self, kind: str, cost: float, seconds: float) -> None:
        self.spent[kind][0] += cost
        self.spent[kind][1] += seconds

    def seconds_for(self, kind: str, cost: float) -> float:
        """Projected seconds for ``cost`` of ``kind``; unmeasured kinds are derived from measured
        ones (scoring ~ 1/2.5 of adapting per window token, global SGD ~ 1.5x per token)."""
        c, s = self.spent[kind]
        if c > 0 and s > 0:
            return cost * s / c
        ca, sa = self.spent["adapt"]
        cs, ss = self.spent["score"]
        per_adapt = sa / ca if ca > 0 and sa > 0 else (2.5 * ss / cs if cs > 0 and ss > 0 else 0.0)
        return cost * per_adapt * {"adapt": 1.0, "score": 0.4, "global": 1.5}[kind]

    def fits(self, seconds: float) -> bool:
        if self.deadline is None:
            return True
        return self.clock() + 1.1 * seconds <= self.deadline


# --- the evaluation -----------------------------------------------------------------------------

class _MappedRecorder:
    """Passes a recorder the stream positions of indices into a gathered token array."""

    def __init__(self, recorder, positions: torch.Tensor):
        self.recorder, self.positions = recorder, positions

    def on_train(self, ids: torch.Tensor) -> None:
        self.recorder.on_train(self.positions[ids.reshape(-1).long().cpu()])

    def on_sync(self) -> None:
        if hasattr(self.recorder, "on_sync"):
            self.recorder.on_sync()


class _PhasedRun:
    def __init__(self, h, model, dist, tokens: torch.Tensor, val_bytes: torch.Tensor, runner: LoraRunner,
                 recorder, log, budget: EvalBudget):
        self.h, self.model, self.dist, self.runner = h, model, dist, runner
        self.tokens, self.val_bytes = tokens, val_bytes
        self.recorder, self.log, self.budget = recorder, log, budget
        self.device = dist.device
        self.n = tokens.numel()
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.arange = torch.arange(h.eval_seq_len + 8, device=self.device)
        self.stats = {"adapted_docs": 0, "scored_only_docs": 0, "global_phases": 0}
        self.plan: PhasedPlan | None = None
        self.mine: list[list[int]] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _line(self, msg: str) -> None:
        if self.log is not None and self.dist.rank == 0:
            self.log(msg)

    def _part(self, name: str) -> None:
        """``ttt_part:NAME time:S.SSs``: this rank's wall time since the previous part."""
        self._sync()
        now = self.budget.clock()
        self._line(f"ttt_part:{name} time:{now - self.part_mark:.2f}s")
        self.part_mark = now

    def _score(self, nll: torch.Tensor, base: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Add window positions ``[lo, hi)`` of each row (row ``b`` starts at stream position
        ``base[b]``; position ``j`` predicts token ``base + j + 1``) to the sums."""
        t = nll.shape[1]
        j = self.arange[None, :t]
        mask = (j >= lo[:, None]) & (j < hi[:, None])
        k = (base[:, None] + j + 1).clamp(max=self.n - 1)
        self.sums[0] += (nll.detach().double() * mask).sum()
        self.sums[1] += mask.sum()
        self.sums[2] += (self.val_bytes[k] * mask).sum()
        if self.recorder is not None:
            self.recorder.on_score(k[mask].cpu())
            if hasattr(self.recorder, "on_nll"):  # per-token scores, for tests
                self.recorder.on_nll(k[mask].cpu(), nll.detach()[mask].cpu())

    def _windows(self, base: torch.Tensor, wl: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.arange[None, :t]
        idx = (base[:, None] + j).clamp(max=self.n - 1)
        valid = j < wl[:, None]
        x = torch.where(valid, self.tokens[idx], 0)
        y = torch.where(valid, self.tokens[(idx + 1).clamp(max=self.n - 1)], 0)
        return x, y

    def doc_ends(self, plan: PhasedPlan) -> None:
        """Score every document's end (the next BOS) with the unadapted model, this rank's share."""
        t0 = self.budget.clock()
        docs = plan.docs
        ends = docs[1:, 0]  # the BOS positions after 0
        lens = docs[:-1, 1].clamp(max=self.h.eval_seq_len).tolist()
        order = sorted(range(len(lens)), key=lambda i: (-lens[i], i))
        mine = order[self.dist.rank::self.dist.world_size]
        rows = self.runner.rows
        # per-row values on the device once (a zero row at the end pads a last batch of one)
        wl_all = torch.tensor([lens[i] for i in mine] + [0], dtype=torch.int64)
        base_all = torch.cat([ends[mine] - wl_all[:-1], torch.zeros(1, dtype=torch.int64)])
        wl_d, base_d = wl_all.to(self.device), base_all.to(self.device)
        if self.runner.bank is not None:
            self.runner.bank.reset()
        passes = row_iters = 0
        for b0 in range(0, len(mine), rows):
            n = max(min(rows, len(mine) - b0), min(2, rows))
            t = padded_len(lens[mine[b0]], self.h.eval_seq_len)
            wl, base = wl_d[b0:b0 + n], base_d[b0:b0 + n]
            x, y = self._windows(base, wl, t)
            nll = self.runner.nll(x, y)
            self._score(nll, base, wl - 1, wl)  # the last input predicts the BOS
            passes += n * t
            row_iters += n
        if self.runner.bank is not None:
            self.runner.bank.detach()
        self._sync()
        sec = self.budget.clock() - t0
        self.budget.record("score", passes + ROW_ITER_PASSES * row_iters, sec)
        self._line(f"ttt_doc_ends targets:{ends.numel()} rank0_targets:{len(mine)} passes:{passes} "
                   f"row_iters:{row_iters} time:{sec:.3f}s")

    def lora_batch(self, doc_ids: list[int], adapt: bool) -> tuple[int, int, int, int]:
        """Score (and, if ``adapt``, adapt on) one batch of documents (longest first); returns
        (iterations, row-iterations, window tokens, targets). Rows that finished drop off the end
        of the batch; shapes come from host-side values, so the loop never waits for the GPU."""
        h = self.h
        docs = self.plan.docs[doc_ids]
        starts, m = docs[:, 0], docs[:, 1] - 1
        chunk = h.ttt_lora_chunk_tokens if adapt else score_only_chunk(h)
        L = h.eval_seq_len
        nc = -(-m // chunk)
        rows, m0 = self.runner.rows, int(m[0])
        pad = max(0, min(2, rows) - len(doc_ids))  # 2 rows at least: 1 row would be one more compiled shape
        starts_d = torch.cat([starts, starts.new_zeros(pad)]).to(self.device)
        m_d = torch.cat([m, m.new_zeros(pad)]).to(self.device)  # a padding row has no target
        bank = self.runner.bank
        if bank is not None:
            bank.reset()
        iters = row_iters = passes = 0
        for ci in range(int(nc[0])):
            n_act = int((nc > ci).sum())
            n_tr = int((nc - 1 > ci).sum()) if adapt else 0
            n = max(n_act, min(2, rows))  # a finished row kept as padding scores nothing
            cs = ci * chunk
            ce = m_d[:n].clamp(max=cs + chunk)
            ws = (ce - L).clamp(min=0)
            wl, lo, base = ce - ws, cs - ws, starts_d[:n] + ws
            ce0 = min(m0, cs + chunk)
            ws0 = max(0, ce0 - L)  # row 0 has the longest window
            x, y = self._windows(base, wl, padded_len(ce0 - ws0, L))
            nll = self.runner.nll(x, y)
            self._score(nll, base, lo, wl)
            if n_tr > 0:  # training rows are at a full chunk, all with row 0's window layout
                if self.recorder is not None:
                    pos = starts[:n_tr, None] + ws0 + torch.arange(ce0 - ws0 + 1)[None, :]
                    self.recorder.on_train(pos.reshape(-1))
                nll[:n_tr, cs - ws0:cs - ws0 + chunk].mean(-1).sum().backward()
                bank.adam_step(n_tr, ci + 1)
            del nll
            iters += 1
            row_iters += n
            passes += n * x.shape[1]
        if bank is not None:
            bank.detach()
        return iters, row_iters, passes, int(m.sum())

    def global_phase(self, phase: int, doc_ids: list[int]) -> None:
        """Full-model SGD on the documents ``doc_ids`` (all scored), in stream order."""
        h, t0 = self.h, self.budget.clock()
        docs = self.plan.docs[sorted(doc_ids)]
        pos = torch.cat([torch.arange(int(s), int(s + n)) for s, n in docs.tolist()]) if len(doc_ids) else \
            torch.zeros(0, dtype=torch.int64)
        gtok = self.tokens[pos.to(self.device)]
        chunks = ttt_chunk_bounds(gtok.numel(), h.global_ttt_chunk_tokens) if gtok.numel() > 1 else []
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=h.global_ttt_lr, momentum=h.global_ttt_momentum)
        rec = _MappedRecorder(self.recorder, pos) if self.recorder is not None else None
        steps = 0
        for ci, (lo, hi) in enumerate(chunks[:-1]):  # the last chunk is not trained on (as the record)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(h.global_ttt_lr, ci, len(chunks))
            steps += train_scored_sequences(self.model, self.dist, gtok, lo, hi, opt, params, h.eval_seq_len,
                                            h.global_ttt_batch_seqs, h.global_ttt_epochs,
                                            h.global_ttt_grad_clip, rec)
        opt.zero_grad(set_to_none=True)
        for p in params:
            p.requires_grad_(False)
        if self.recorder is not None and hasattr(self.recorder, "on_sync"):
            self.recorder.on_sync()
        self._sync()
        sec = self.budget.clock() - t0
        self.budget.record("global", gtok.numel(), sec)
        self.stats["global_phases"] += 1
        self._line(f"ttt_global phase:{phase + 1}/{len(self.plan.bounds)} docs:{len(doc_ids)} "
                   f"tokens:{gtok.numel()} chunks:{len(chunks)} steps:{steps} time:{sec:.3f}s "
                   f"tok/s:{gtok.numel() / max(sec, 1e-9):.0f}")

    def remaining_score_seconds(self, seg: int, after: int) -> float:
        """Projected score-only time of this rank's work from batch index ``after`` of its list
        in segment ``seg`` on."""
        cost = 0
        for s in range(seg, len(self.plan.segments)):
            for k in self.mine[s][after if s == seg else 0:]:
                cost += work_cost(self.plan.score_work[s][k])
        return self.budget.seconds_for("score", cost)

    def run(self, plan: PhasedPlan, t_start: float) -> None:
        self.plan = plan
        self.part_mark = t_start
        h, budget = self.h, self.budget
        n_seg = len(plan.segments)
        self.mine = [rank_batches(plan, s, self.dist.rank) for s in range(n_seg)]
        self._part("plan")
        self.doc_ends(plan)
        self._part("doc_ends")
        scored: list[int] = []
        for si in range(n_seg):
            mine = self.mine[si]
            for bi, k in enumerate(mine):
                ids = plan.segments[si][k]
                adapt = self.runner.bank is not None and not budget.stopped
                if adapt:
                    need = budget.seconds_for("adapt", work_cost(plan.adapt_work[si][k])) + \
                        self.remaining_score_seconds(si, bi + 1)
                    if not budget.fits(need):
                        budget.stopped = adapt = False
                        el = budget.clock() - t_start
                        self._line(f"eval_budget: stop adapting at segment:{si + 1}/{n_seg} batch:{bi + 1}/"
                                   f"{len(mine)} (rank {self.dist.rank}) elapsed:{el:.1f}s: adapting would "
                                   f"pass the deadline (EVAL_BUDGET_SECONDS={h.eval_budget_seconds:g} from "
                                   "the eval start); the rest is only scored (no update uses it: legal)")
                        budget.stopped = True
                t0 = budget.clock()
                it, ri, passes, ntok = self.lora_batch(ids, adapt)
                self._sync()
                sec = budget.clock() - t0
                budget.record("adapt" if adapt else "score", passes + ROW_ITER_PASSES * ri, sec)
                self.stats["adapted_docs" if adapt else "scored_only_docs"] += len(ids)
                lens = plan.docs[ids, 1]
                self._line(f"ttt_lora segment:{si + 1}/{n_seg} batch:{bi + 1}/{len(mine)} docs:{len(ids)} "
                           f"doc_len:{int(lens.min())}-{int(lens.max())} adapt:{int(adapt)} iters:{it} "
                           f"row_iters:{ri} passes:{passes} tokens:{ntok} time:{sec:.3f}s "
                           f"docs/s:{len(ids) / max(sec, 1e-9):.2f} tok/s:{ntok / max(sec, 1e-9):.0f} "
                           f"elapsed:{budget.clock() - t_start:.1f}s")
            if si < len(plan.bounds):
                scored.extend(plan.order[plan.bounds[si - 1] if si else 0:plan.bounds[si]])
            if si >= len(plan.bounds) or si == n_seg - 1 or not scored or h.global_ttt_epochs <= 0:
                self._part(f"lora_segment_{si + 1}")
                continue  # a global phase only where documents were scored and some are left to score
            n_tok = sum(int(plan.docs[j, 1]) for j in scored)
            go = torch.ones(1, device=self.device)
            if budget.stopped or not budget.fits(budget.seconds_for("global", n_tok)
                                                 + self.remaining_score_seconds(si + 1, 0)):
                go.zero_()
            all_reduce_(go)  # every rank must agree: the phase is collective (waits for the slowest)
            self._part(f"lora_segment_{si + 1}")
            if int(go.item()) == self.dist.world_size:
                self.global_phase(si, scored)
                self._part(f"global_{si + 1}")
                continue
            if not budget.stopped:
                self._line(f"eval_budget: skip global phase {si + 1}/{len(plan.bounds)}: it would pass the "
                           f"deadline (EVAL_BUDGET_SECONDS={h.eval_budget_seconds:g}) on some rank; no more "
                           "adaptation, the rest is only scored")
            budget.stopped = True


def eval_ttt_phased(h, model, dist, val_tokens: torch.Tensor, val_bytes: torch.Tensor, recorder=None,
                    log=None, runner: LoraRunner | None = None, clock=time.perf_counter,
                    deadline: float | None = None) -> EvalResult:
    """Phased per-document LoRA TTT (see module doc). ``recorder`` (optional) gets
    ``on_score(positions)``, ``on_train(positions)`` in program order and ``on_sync()`` after
    each global phase; ``log`` (optional, called on rank 0) gets the progress lines; ``runner``:
    a warmed-up ``LoraRunner`` (built here if None); ``deadline``: the ``clock()`` value the
    evaluation must end by (EVAL_BUDGET_SECONDS; None = no budget). The model's weights change
    in place (global phases)."""
    t_start = clock()
    device = dist.device
    tokens = val_tokens.to(device=device, dtype=torch.int64)
    if val_bytes.numel() != tokens.numel():
        raise ValueError(f"val_bytes holds {val_bytes.numel()} entries for {tokens.numel()} "
                         "validation tokens")
    own_runner = runner is None
    if own_runner:
        runner = LoraRunner(h, model, device)
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    plan = plan_phased(h, find_documents(val_tokens), dist.world_size)
    nb = sum(len(s) for s in plan.segments)
    if log is not None and dist.rank == 0:
        log(f"ttt_phased docs:{plan.docs.shape[0]} prefix_docs:{plan.bounds[-1] if plan.bounds else 0} "
            f"phases:{len(plan.bounds)} boundaries:{plan.bounds} segments:{len(plan.segments)} batches:{nb} "
            f"lora_rank:{h.ttt_lora_rank} chunk:{h.ttt_lora_chunk_tokens} batch_docs:{runner.rows} "
            f"world_size:{dist.world_size}")
    run = _PhasedRun(h, model, dist, tokens, val_bytes.to(device), runner, recorder, log,
                     EvalBudget(clock, deadline))
    try:
        run.run(plan, t_start)
    finally:
        if own_runner:
            runner.close()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.train(was_training)
    all_reduce_(run.sums)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    res = eval_result(run.sums, clock() - t_start)
    st = run.stats
    if log is not None and dist.rank == 0:
        log(f"ttt_phased_done adapted_docs:{st['adapted_docs']} scored_only_docs:{st['scored_only_docs']} "
            f"(rank 0) global_phases:{st['global_phases']}/{len(plan.bounds)} time:{res.seconds:.3f}s")
    return res
