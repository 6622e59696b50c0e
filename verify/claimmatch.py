"""Which logged runs a submission claims: match the claimed scores against every score line of every log.

A per-seed claim belongs to the log line whose val_bpb equals it within the rounding of both numbers
(the log's seed only breaks ties, since seeds are sometimes mislabelled). A mean claim without per-seed
values belongs to the runs whose same-labelled scores average to it, else to the single line it equals.
The claimed runs are what the size and time rules apply to; other logs (side experiments, extra seeds,
unfinished runs) are evidence only. When nothing can be matched, every log with a score counts.

A claim is only a FAIL when it is better (lower) than every logged final score it could stand for,
beyond rounding: a number in no log. Every other mismatch is a WARN naming both values.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from verify.claims import Claim, SeedClaim, Value, unit
from verify.logparse import RunSummary, Score, best_score, seed_from_name
from verify.result import FAIL, PASS, WARN


@dataclass
class ClaimedRun:
    log: RunSummary
    score: Score
    claim: SeedClaim | None = None

    @property
    def where(self) -> str:
        return f"{self.log.path}:{self.score.line}"


@dataclass
class Match:
    runs: list[ClaimedRun] = field(default_factory=list)
    matched: bool = False  # the runs come from matching the claim (else: every log with a score)
    findings: list[tuple[str, str]] = field(default_factory=list)  # (status, text) for the consistency check

    def add(self, status: str, text: str) -> None:
        self.findings.append((status, text))


def score_unit(s: Score) -> float:
    return 10.0**-s.digits if s.digits else 0.0


def close(claim: Value, s: Score, aggregate: bool = False) -> bool:
    tol = (1.0 if aggregate else 0.5) * claim.unit + 0.5 * score_unit(s) + 1e-9
    return abs(claim.value - s.val_bpb) <= tol


def fail_margin(claim: Value, s: Score) -> float:
    """How far below a logged score a claim may be before it is a number in no log."""
    return claim.unit + 0.5 * score_unit(s) + 1e-6


def log_seeds(log: RunSummary) -> set[int]:
    out = set(log.seeds_seen)
    if log.seed is not None:
        out.add(log.seed)
    fs = seed_from_name(log.path)
    if fs is not None:
        out.add(fs)
    return out


def _fmt(x: float) -> str:
    return f"{x:.8f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.0f}"


def _desc(log: RunSummary, s: Score) -> str:
    return f"{log.path}:{s.line} {s.label} val_bpb {_fmt(s.val_bpb)}"


def match_claim(claim: Claim | None, runs: list[RunSummary]) -> Match:
    m = Match()
    scored = [r for r in runs if r.scores]
    if claim is None or claim.empty:
        m.runs = [ClaimedRun(r, best_score(r.scores)) for r in scored]
        if claim is not None:
            m.add(
                WARN,
                "the submission JSON states no val_bpb: the claimed runs cannot be told apart; "
                "every log with a score counts",
            )
        return m
    used: set[int] = set()
    per = [p for p in claim.per_seed if p.val_bpb is not None]
    for p in per:
        _match_seed(p, scored, runs, used, m)
    if claim.mean_bpb is not None:
        _match_mean(claim, scored, m)
    m.matched = bool(m.runs)
    if not m.runs:
        m.runs = [ClaimedRun(r, best_score(r.scores)) for r in scored]
    return m


def _match_seed(
    p: SeedClaim, scored: list[RunSummary], runs: list[RunSummary], used: set[int], m: Match
) -> None:
    cands = [(r, s) for r in scored for s in r.scores if close(p.val_bpb, s)]
    if cands:
        r, s = max(
            cands,
            key=lambda rs: (
                id(rs[0]) not in used,
                p.seed in log_seeds(rs[0]),
                rs[1].final,
                rs[1].kind,
                rs[1].exact,
                -abs(rs[1].val_bpb - p.val_bpb.value),
            ),
        )
        used.add(id(r))
        m.runs.append(ClaimedRun(r, s, p))
        text = f"{p.val_bpb.key} {p.val_bpb.value} = {_desc(r, s)}"
        if not s.final:
            m.add(WARN, f"{text}: a pre-quantization score, not the exported model's")
        elif p.seed is not None and log_seeds(r) and p.seed not in log_seeds(r):
            m.add(
                WARN,
                f"{text}, but that run is seed {r.seed} ({r.at('seed')}), not {p.seed}: a mislabelled seed",
            )
        else:
            m.add(PASS, text)
        return
    same = [r for r in runs if p.seed is not None and p.seed in log_seeds(r)]
    finals = [(r, s) for r in same for s in r.scores if s.final]
    if finals:
        r, s = min(finals, key=lambda rs: rs[1].val_bpb)
        if p.val_bpb.value < s.val_bpb - fail_margin(p.val_bpb, s):
            m.add(
                FAIL,
                f"{p.val_bpb.key} is {p.val_bpb.value}, better than every logged final score of seed "
                f"{p.seed} (best: {_desc(r, s)}): a number in no log",
            )
        else:
            m.add(
                WARN,
                f"{p.val_bpb.key} is {p.val_bpb.value} but no log line has it; seed {p.seed}'s logs give "
                f"{_desc(r, s)} (the claim is not better)",
            )
        m.runs.append(ClaimedRun(r, best_score(r.scores), p))
        return
    names = ", ".join(sorted({r.path for r in same})) or "none"
    m.add(
        FAIL,
        f"{p.val_bpb.key} is {p.val_bpb.value}, but no log has that score and no log of seed {p.seed} "
        f"has a final score (logs of that seed: {names}): a number in no log",
    )


def _groups(claim: Claim, scored: list[RunSummary]) -> list[list[RunSummary]]:
    """One log per seed: the claimed seeds' logs (or every log) with distinct seeds."""
    by_seed: dict = {}
    for r in scored:
        key = r.seed if r.seed is not None else r.path
        by_seed.setdefault(key, []).append(r)
    if claim.seeds:
        picked = {k: v for k, v in by_seed.items() if k in claim.seeds}
        if picked:
            by_seed = picked
    return [v[-1:] if len(v) == 1 else v for v in by_seed.values()]


def _match_mean(claim: Claim, scored: list[RunSummary], m: Match) -> None:
    c = claim.mean_bpb
    if m.runs:  # per-seed claims matched: the mean must be theirs
        vals = [r.score.val_bpb for r in m.runs]
        mean = statistics.fmean(vals)
        tol = c.unit + 0.5 * max(score_unit(r.score) for r in m.runs) + 1e-9
        where = ", ".join(r.where for r in m.runs[:5])
        if abs(c.value - mean) <= tol:
            what = f"the mean of {len(vals)} claimed runs" if len(vals) > 1 else "the claimed run's score"
            m.add(PASS, f"{c.key} {c.value} = {what} {mean:.8f} ({where})")
        elif c.value < min(vals) - c.unit - 1e-6:
            m.add(
                FAIL,
                f"{c.key} is {c.value}, better than every claimed run's score (best {min(vals):.8f}; "
                f"{where}): a number in no log",
            )
        elif len(vals) > 1 and any(close(c, r.score) for r in m.runs):
            one = next(r for r in m.runs if close(c, r.score))
            m.add(
                WARN,
                f"{c.key} {c.value} equals {one.log.path}'s value ({one.where}), not the mean of the "
                f"{len(vals)} claimed runs ({mean:.8f})",
            )
        else:
            m.add(WARN, f"{c.key} is {c.value} but the claimed runs average {mean:.8f} ({where})")
        return
    groups = _groups(claim, scored)
    # the mean of one label's scores over one log per seed
    labels: set[str] = set()
    for g in groups:
        labels |= {s.label for s in g[0].scores}
    best = None
    if len(groups) > 1:
        for lab in sorted(labels):
            picks = []
            for g in groups:
                hit = next(((r, s) for r in g for s in r.scores if s.label == lab), None)
                if hit is None:
                    break
                picks.append(hit)
            else:
                vals = [s.val_bpb for _, s in picks]
                mean = statistics.fmean(vals)
                tol = c.unit + 0.5 * max(score_unit(s) for _, s in picks) + 1e-9
                if abs(c.value - mean) <= tol and (best is None or abs(c.value - mean) < best[0]):
                    best = (abs(c.value - mean), picks, mean)
    if best is not None:
        _, picks, mean = best
        m.runs = [ClaimedRun(r, s) for r, s in picks]
        where = ", ".join(f"{r.path}:{s.line}" for r, s in picks[:5])
        m.add(
            PASS,
            f"{c.key} {c.value} = the mean of {len(picks)} seeds' {picks[0][1].label} {mean:.8f} ({where})",
        )
        return
    singles = [(r, s) for r in scored for s in r.scores if close(c, s)]
    if singles:
        r, s = max(singles, key=lambda rs: (rs[1].final, rs[1].kind, rs[1].exact, rs[1].line))
        m.runs = [ClaimedRun(r, s)]
        text = f"{c.key} {c.value} = {_desc(r, s)}"
        if len(claim.seeds) > 1:
            m.add(
                WARN,
                f"{c.key} {c.value} equals {r.path}'s value ({_desc(r, s)}), not the mean of the "
                f"{len(claim.seeds)} claimed seeds",
            )
        elif not s.final:
            m.add(WARN, f"{text}: a pre-quantization score, not the exported model's")
        else:
            m.add(PASS, text)
        return
    finals = [(r, s) for r in scored for s in r.scores if s.final]
    if not finals:
        what = "only pre-quantization diagnostics" if scored else "no log has any score"
        m.add(FAIL, f"{c.key} is {c.value}, but no log has a final score ({what}): a number in no log")
        return
    r, s = min(finals, key=lambda rs: rs[1].val_bpb)
    if c.value < s.val_bpb - fail_margin(c, s):
        m.add(
            FAIL,
            f"{c.key} is {c.value}, better than every logged final score (best: {_desc(r, s)}): a number "
            "in no log",
        )
    else:
        nearest = min(finals, key=lambda rs: abs(rs[1].val_bpb - c.value))
        m.add(
            WARN,
            f"{c.key} is {c.value}; no log line or mean of seeds has it (nearest: "
            f"{_desc(*nearest)}; best: {_desc(r, s)})",
        )


def unit_of(v) -> float:  # re-exported for the checks
    return unit(v)
