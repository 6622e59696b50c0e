"""Check 3: the claimed score is in the logs; the other numbers of the submission JSON agree with them.

The claimed runs are found by matching the claim (verify/claimmatch.py): each per-seed val_bpb against
every score line of every log, the mean against the same-labelled scores of one log per seed or a single
line. FAIL only when a claimed score is better than every logged final score it could stand for, beyond
rounding (a number in no log). Everything else that disagrees is a WARN naming both values and the
file:line: val_loss, stds, bytes, steps, times, seed labels, the mean of per-seed values, unfinished or
side logs. Tolerance: half a unit in the last decimal the JSON shows plus the log's own rounding (a
whole unit for means and stds, which are often computed from rounded values).
"""

from __future__ import annotations

import math
import statistics

from verify.claims import Value, unit
from verify.context import Context
from verify.logparse import RunSummary
from verify.result import PASS, SKIP, WARN, CheckResult

ID, NUMBER = "consistency", 3
RULE = "the claimed score is a logged final score; the submission's other numbers agree with the logs"


def agrees(claimed, actual: float | None, aggregate: bool = False, actual_unit: float = 0.0) -> bool:
    if isinstance(claimed, bool) or not isinstance(claimed, int | float) or actual is None:
        return False
    if not (math.isfinite(float(claimed)) and math.isfinite(actual)):
        return False
    tol = (1.0 if aggregate else 0.5) * unit(claimed) + 0.5 * actual_unit + 1e-12 * max(1.0, abs(actual))
    return abs(float(claimed) - actual) <= tol


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.10g}"


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if not ctx.logs:
        r.add(SKIP, "no run log to compare with (check 1 says why)")
        return r
    m = ctx.match
    claimed_logs = {id(c.log) for c in m.runs}
    for s in ctx.logs:
        for p in s.problems:
            if p.startswith("no final val_bpb"):
                continue
            status = WARN if (p.startswith("unfinished") or "seed" in p or p.startswith("unknown")) else WARN
            r.add(status, f"{s.path}: {p}")
    if ctx.submission is None:
        r.add(
            SKIP,
            "no usable submission JSON: the claim cannot be compared "
            f"(logs with a score: {', '.join(s.path for s in ctx.runs[:6]) or 'none'})",
        )
        return r
    for status, text in m.findings:
        r.add(status, text)
    if m.matched:
        others = [s.path for s in ctx.runs if id(s) not in claimed_logs]
        if others:
            r.add(
                PASS,
                f"logs not claimed (side runs, other seeds, re-runs): {', '.join(others[:8])}"
                + (" ..." if len(others) > 8 else ""),
            )
    claim = ctx.claim
    if claim is None:
        return r
    _seed_numbers(m, r)
    _loss(claim, m, r)
    _stds(claim, m, r)
    _bytes_total(claim, m, r)
    _bytes_code(ctx, claim, r)
    for seed in claim.seeds:
        if not any(seed in _seeds(c.log) for c in m.runs) and not any(
            c.claim and c.claim.seed == seed for c in m.runs
        ):
            if not any(seed in _seeds(s) for s in ctx.logs):
                r.add(WARN, f"seed {seed} is claimed but no log is of that seed")
    if r.status == SKIP:
        r.add(SKIP, "the submission JSON shares no number with the logs")
    return r


def _seeds(log: RunSummary) -> set[int]:
    from verify.claimmatch import log_seeds

    return log_seeds(log)


def _cmp(
    r: CheckResult,
    v: Value | None,
    actual: float | None,
    where: str,
    aggregate: bool = False,
    actual_unit: float = 0.0,
    scale: float = 1.0,
) -> None:
    if v is None or actual is None:
        return
    a = actual * scale
    if agrees(v.value, a, aggregate, actual_unit * scale):
        r.add(PASS, f"{v.key} {v.value} = {where} {_fmt(a)}")
    else:
        r.add(WARN, f"{v.key} is {v.value} but {where} says {_fmt(a)}")


def _seed_numbers(m, r: CheckResult) -> None:
    for c in m.runs:
        p, s = c.claim, c.log
        if p is None:
            continue
        if p.val_loss is not None and c.score.val_loss is not None:
            _cmp(r, p.val_loss, c.score.val_loss, c.where, actual_unit=10.0**-c.score.digits)
        _cmp(r, p.total_bytes, s.total_bytes, s.at("total_bytes"))
        _cmp(r, p.steps, s.steps, s.at("steps"))
        if s.train_time_ms is not None:
            _cmp(r, p.train_time_s, s.train_time_ms, s.at("train_time_ms"), aggregate=True, scale=1e-3)
        if s.eval_time_ms is not None:
            _cmp(r, p.eval_time_s, s.eval_time_ms, s.at("eval_time_ms"), aggregate=True, scale=1e-3)


def _loss(claim, m, r: CheckResult) -> None:
    v = claim.mean_loss
    vals = [c.score.val_loss for c in m.runs]
    if v is None or not vals or any(x is None for x in vals):
        return
    mean = statistics.fmean(vals)
    bpbs = statistics.fmean(c.score.val_bpb for c in m.runs)
    where = ", ".join(c.where for c in m.runs[:5])
    if agrees(v.value, mean, aggregate=True, actual_unit=1e-4):
        r.add(PASS, f"{v.key} {v.value} = the claimed runs' val_loss {mean:.8f} ({where})")
    elif agrees(v.value, bpbs, aggregate=True, actual_unit=1e-4):
        r.add(
            WARN,
            f"{v.key} is {v.value}: the claimed runs' val_bpb ({bpbs:.8f}), not their val_loss "
            f"({mean:.8f}; {where})",
        )
    else:
        r.add(WARN, f"{v.key} is {v.value} but the claimed runs' val_loss is {mean:.8f} ({where})")


def _stds(claim, m, r: CheckResult) -> None:
    for v, field in ((claim.std_bpb, "val_bpb"), (claim.std_loss, "val_loss")):
        vals = [getattr(c.score, field) for c in m.runs]
        if v is None or len(vals) < 2 or any(x is None for x in vals):
            continue
        sample, pop = statistics.stdev(vals), statistics.pstdev(vals)
        if agrees(v.value, sample, True, 1e-6) or agrees(v.value, pop, True, 1e-6):
            r.add(
                PASS,
                f"{v.key} {v.value} = std of {len(vals)} claimed runs (sample {sample:.6f}, "
                f"population {pop:.6f})",
            )
        else:
            r.add(
                WARN,
                f"{v.key} is {v.value} but the {len(vals)} claimed runs give sample std {sample:.6f} "
                f"(population {pop:.6f})",
            )


def _total(s: RunSummary) -> int | None:
    if s.total_bytes is not None:
        return s.total_bytes
    if s.code_bytes is not None and s.model_bytes is not None:
        return s.code_bytes + s.model_bytes
    return None


def _bytes_total(claim, m, r: CheckResult) -> None:
    v = claim.total_bytes
    totals = [(c.log, _total(c.log)) for c in m.runs if _total(c.log) is not None]
    if v is None or not totals:
        return
    mx = max(t for _, t in totals)
    mean = statistics.fmean(t for _, t in totals)
    top = next(s for s, t in totals if t == mx)
    if v.value == mx:
        r.add(PASS, f"{v.key} {v.value} = the largest logged total ({top.at('total_bytes')})")
    elif abs(v.value - mean) <= 1.0:
        r.add(
            PASS,
            f"{v.key} {v.value} = the mean of {len(totals)} logged totals ({mean:.1f}); the largest is "
            f"{mx} ({top.at('total_bytes')})",
        )
    elif any(v.value == t for _, t in totals):
        s = next(s for s, t in totals if t == v.value)
        r.add(
            WARN,
            f"{v.key} {v.value} is {s.at('total_bytes')}'s total, not the largest {mx} "
            f"({top.at('total_bytes')})",
        )
    else:
        r.add(
            WARN,
            f"{v.key} is {v.value} but the claimed runs' logs give "
            + ", ".join(f"{t} ({s.at('total_bytes')})" for s, t in totals[:5]),
        )


def _bytes_code(ctx: Context, claim, r: CheckResult) -> None:
    v = claim.code_bytes
    if v is None:
        return
    tr = ctx.code.trainer
    size = tr.size if tr is not None else None
    logged = {s.code_bytes: s for s in ctx.logs if s.code_bytes is not None}
    logged.update({s.code_bytes_uncompressed: s for s in ctx.logs if s.code_bytes_uncompressed})
    if size is not None and v.value == size:
        r.add(PASS, f"{v.key} {v.value} = size of {tr.rel}")
    elif v.value in logged:
        s = logged[v.value]
        r.add(PASS, f"{v.key} {v.value} = {s.at('code_bytes')}")
    else:
        parts = ([f"{tr.rel} is {size} bytes"] if size is not None else []) + [
            f"{s.at('code_bytes')} says {c}" for c, s in list(logged.items())[:3]
        ]
        r.add(WARN, f"{v.key} is {v.value} but " + ("; ".join(parts) or "nothing confirms it"))
