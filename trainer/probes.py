"""Legality probes for the evaluation, usable by the verifier on our trainer.

(a) causality: changing the tokens after position t leaves the model's log-probabilities at
    positions <= t unchanged (no information flows backwards from future tokens);
(b) score-before-update: an instrumented TTT run records, per token, when it was scored and when
    it was first an input or a target of a gradient step; every token must be scored first
    (and scored exactly once).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from trainer.evaluate import eval_autocast
from trainer.ttt import eval_ttt
from trainer.ttt_phased import eval_ttt_phased

_PR_NEVER = 2**62  # "not used / not scored" in the timeline


@dataclass
class ProbeResult:
    name: str
    passed: bool
    message: str  # one line: what was checked and what was found
    evidence: dict = field(default_factory=dict)


def probe_causality(model, tokens: torch.Tensor, t: int, tol: float = 1e-5, seed: int = 0) -> ProbeResult:
    """Run ``model`` on ``tokens`` (1-D) and on a copy whose tokens after position ``t`` all
    differ; the log-probabilities at positions ``<= t`` must agree within ``tol``."""
    tokens = tokens.reshape(-1).long()
    n = tokens.numel()
    if not 0 <= t < n - 1:
        raise ValueError(f"probe_causality: t={t} must be in [0, {n - 2}] for {n} tokens")
    device = next(model.parameters()).device
    x = tokens.to(device)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), eval_autocast(device):
            ref = torch.log_softmax(model(x).float(), dim=-1)[0]
            vocab = ref.shape[-1]
            gen = torch.Generator().manual_seed(seed)
            shift = torch.randint(1, vocab, (n - t - 1,), generator=gen).to(device)
            y = x.clone()
            y[0, t + 1:] = (y[0, t + 1:] + shift) % vocab  # every later token changes
            alt = torch.log_softmax(model(y).float(), dim=-1)[0]
    finally:
        model.train(was_training)
    diff = (ref - alt).abs().amax(dim=-1).cpu()
    before, after = diff[:t + 1], diff[t + 1:]
    bad = torch.nonzero(before > tol).reshape(-1)
    evidence = {"t": t, "tokens": n, "tol": tol, "max_diff_at_or_before_t": float(before.max()),
                "max_diff_after_t": float(after.max()) if after.numel() else 0.0,
                "first_offending_position": int(bad[0]) if bad.numel() else None}
    if bad.numel():
        msg = (f"causality FAIL: changing tokens after position {t} changed log-probs at position "
               f"{int(bad[0])} (max diff {evidence['max_diff_at_or_before_t']:.3g} > tol {tol:g})")
    else:
        msg = (f"causality ok: log-probs at positions <= {t} unchanged within {tol:g} "
               f"(max diff {evidence['max_diff_at_or_before_t']:.3g})")
    return ProbeResult("causality", not bad.numel(), msg, evidence)


class TokenTimeline:
    """The recorder a TTT evaluation reports to: one clock tick per event, in program order.

    ``scored_at[k]``: tick when token k was first scored; ``score_count[k]``: times scored;
    ``used_at[k]``: tick of the first gradient step that had k as an input or a target.
    ``on_sync()`` closes an epoch: a collective update (all ranks' gradients all-reduced) after
    which every rank's weights depend on every rank's earlier steps; ``scored_epoch`` /
    ``used_epoch`` keep the epoch of those first events (what ``check_timelines`` needs across ranks).
    Token 0 opens the stream and is never predicted: it counts as scored before any event.
    """

    def __init__(self, n_tokens: int):
        self.n_tokens = n_tokens
        self.clock = 0
        self.epoch = 0
        self.scored_at = torch.full((n_tokens,), _PR_NEVER, dtype=torch.int64)
        self.score_count = torch.zeros(n_tokens, dtype=torch.int64)
        self.used_at = torch.full((n_tokens,), _PR_NEVER, dtype=torch.int64)
        self.scored_epoch = torch.full((n_tokens,), _PR_NEVER, dtype=torch.int64)
        self.used_epoch = torch.full((n_tokens,), _PR_NEVER, dtype=torch.int64)
        if n_tokens:
            self.scored_at[0] = -1
            self.scored_epoch[0] = -1

    def on_score(self, token_ids: torch.Tensor) -> None:
        self.clock += 1
        ids = token_ids.reshape(-1).long().cpu()
        self.score_count.index_add_(0, ids, torch.ones_like(ids))
        self.scored_at[ids] = torch.minimum(self.scored_at[ids], torch.full_like(ids, self.clock))
        self.scored_epoch[ids] = torch.minimum(self.scored_epoch[ids], torch.full_like(ids, self.epoch))

    def on_train(self, token_ids: torch.Tensor) -> None:
        self.clock += 1
        ids = token_ids.reshape(-1).long().cpu()
        self.used_at[ids] = torch.minimum(self.used_at[ids], torch.full_like(ids, self.clock))
        self.used_epoch[ids] = torch.minimum(self.used_epoch[ids], torch.full_like(ids, self.epoch))

    def on_sync(self) -> None:
        self.clock += 1
        self.epoch += 1

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("scored_at", "score_count", "used_at", "scored_epoch",
                                              "used_epoch", "clock")}


def check_timeline(tl: TokenTimeline) -> ProbeResult:
    """Every token used by a gradient step was scored before it; every target scored once."""
    return check_timelines([tl])


def check_timelines(tls: list) -> ProbeResult:
    """The same check over the timelines of all ranks of one run (``TokenTimeline`` or its
    ``state()``). A token is scored on one rank; a step on that rank influences the score if it
    came first in that rank's program order; a step on another rank only through a collective
    update, i.e. if it happened in an earlier epoch than the score."""
    st = [t.state() if isinstance(t, TokenTimeline) else t for t in tls]
    stack = {k: torch.stack([s[k] for s in st]) for k in st[0] if k != "clock"}  # [ranks, tokens]
    n_ranks, n = stack["scored_at"].shape
    cols = torch.arange(n)
    total = stack["score_count"].sum(0)
    never = (total == 0) & (cols > 0)  # token 0 is context only: scored at -1 on every rank
    # the rank that scored each token (the first, if several did: the count check catches that)
    scorer = torch.where(stack["score_count"] > 0, torch.arange(n_ranks)[:, None], n_ranks - 1).amin(0)
    scored_at = torch.where(never, _PR_NEVER, stack["scored_at"][scorer, cols])
    scored_epoch = torch.where(never, _PR_NEVER, stack["scored_epoch"][scorer, cols])
    used_here = stack["used_at"][scorer, cols]
    other = stack["used_epoch"].clone()
    other[scorer, cols] = _PR_NEVER
    used_elsewhere = other.amin(0)
    used = (stack["used_at"] < _PR_NEVER).any(0)
    bad = (used_here < _PR_NEVER) & (used_here <= scored_at)
    bad |= (used_elsewhere < _PR_NEVER) & (used_elsewhere < scored_epoch)
    bad |= used & never
    early = torch.nonzero(bad).reshape(-1)
    tcounts = total[1:]
    evidence = {"tokens": n, "ranks": n_ranks, "events": sum(int(s.get("clock", 0)) for s in st),
                "tokens_used_for_updates": int(used.sum()),
                "tokens_scored": int((tcounts > 0).sum()),
                "tokens_never_scored": int((tcounts == 0).sum()),
                "tokens_scored_twice_or_more": int((tcounts > 1).sum()),
                "tokens_used_before_scored": int(early.numel()),
                "first_offending_token": int(early[0]) if early.numel() else None}
    if early.numel():
        k = int(early[0])
        scored = int(scored_at[k])
        evidence.update(offending_used_at=int(stack["used_at"][:, k].min()),
                        offending_scored_at=None if scored == _PR_NEVER else scored)
        msg = (f"score-before-update FAIL: {early.numel()} tokens were used by a gradient step before "
               f"being scored; first is token {k} (used at event {evidence['offending_used_at']}, scored at "
               f"{'never' if scored == _PR_NEVER else scored})")
        return ProbeResult("score_before_update", False, msg, evidence)
    if evidence["tokens_never_scored"] or evidence["tokens_scored_twice_or_more"]:
        msg = (f"score-before-update FAIL: every target must be scored exactly once; "
               f"{evidence['tokens_never_scored']} never, "
               f"{evidence['tokens_scored_twice_or_more']} twice or more")
        return ProbeResult("score_before_update", False, msg, evidence)
    msg = (f"score-before-update ok: {evidence['tokens_scored']} tokens scored once each, "
           f"{evidence['tokens_used_for_updates']} used for updates, all after being scored")
    return ProbeResult("score_before_update", True, msg, evidence)


def default_ttt_fn(h):
    """The TTT evaluation TTT_MODE selects."""
    return eval_ttt_phased if h.ttt_mode == "lora_phased" else eval_ttt


def probe_score_before_update(h, model, dist, val_tokens: torch.Tensor, val_bytes: torch.Tensor,
                              ttt_fn=None) -> ProbeResult:
    """Run ``ttt_fn`` (default: the TTT evaluation of TTT_MODE) on a copy of ``model`` with a
    timeline recorder and check it (in a distributed run, every rank's timeline together). Use a
    small stream: a few TTT chunks (sgd) or a few dozen documents (lora_phased) are enough."""
    tl = TokenTimeline(int(val_tokens.numel()))
    result = (ttt_fn or default_ttt_fn(h))(h, copy.deepcopy(model), dist, val_tokens, val_bytes, recorder=tl)
    timelines = [tl]
    if dist.world_size > 1 and tdist.is_available() and tdist.is_initialized():
        timelines = [None] * dist.world_size
        tdist.all_gather_object(timelines, tl.state())
        timelines[dist.rank] = tl
    out = check_timelines(timelines)
    out.evidence["val_bpb"] = result.val_bpb
    if not tl.clock:
        msg = "score-before-update FAIL: the run reported no events to the recorder"
        return ProbeResult("score_before_update", False, msg, out.evidence)
    if not out.evidence["tokens_used_for_updates"]:
        out.message += " (note: no gradient steps happened; use more than one TTT chunk)"
    return out
