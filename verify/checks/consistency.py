"""Check 3: every number submission.json shares with the logs agrees within the claimed rounding.

Per seed (``seed_results``): val_bpb, val_loss, artifact_bytes/bytes_total (= the log's total
submission size), steps, eval_time_s, train_time_s. Over seeds: val_bpb and val_loss (the mean; a value
that equals one seed's instead is a WARN), val_bpb_std/val_loss_std (sample or population std),
bytes_total (the max over seeds, or the mean), bytes_code (the size of train_gpt.py or the logged
code size), seeds (every claimed seed has a log; logs of unclaimed seeds are a WARN).
Tolerance: half a unit in the last decimal the JSON shows (a whole unit for means and stds, which
are often computed from rounded values), plus the rounding of the log's own value.
"""

from __future__ import annotations

import math
import statistics
from decimal import Decimal, InvalidOperation

from verify.context import Context
from verify.logparse import RunSummary
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "consistency", 3
RULE = "numbers in submission.json agree with the logs (per seed and mean/std, bytes, seeds)"


def unit(v) -> float:
    """One unit in the last decimal place ``v`` is written with (1 for integers)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0.0
    if isinstance(v, int):
        return 1.0
    if not math.isfinite(v):
        return 0.0
    try:
        exp = Decimal(repr(v)).as_tuple().exponent
    except (InvalidOperation, ValueError):
        return 0.0
    return 10.0**exp if isinstance(exp, int) and exp < 0 else 1.0


def agrees(claimed, actual: float, aggregate: bool = False, actual_unit: float = 0.0) -> bool:
    if isinstance(claimed, bool) or not isinstance(claimed, int | float) or actual is None:
        return False
    if not (math.isfinite(float(claimed)) and math.isfinite(actual)):
        return False
    # a mean/std may be computed from per-seed values rounded like the claim: half a unit more
    tol = (1.0 if aggregate else 0.5) * unit(claimed) + 0.5 * actual_unit + 1e-12 * max(1.0, abs(actual))
    return abs(float(claimed) - actual) <= tol


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.10g}"


def _at(s: RunSummary, key: str) -> str:
    line = s.lines.get(key)
    return f"{s.path}:{line}" if line else s.path


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    for s in ctx.logs:
        for p in s.problems:
            r.add(
                FAIL if p.startswith(("truncated", "no final", "final val_bpb is")) else WARN,
                f"{s.path}: {p}",
            )
    sub = ctx.submission
    if sub is None:
        r.add(SKIP, "no usable submission.json")
        return r
    runs = ctx.runs
    if not runs:
        r.add(SKIP, "no log with a final val_bpb")
        return r
    by_seed: dict[int | None, RunSummary] = {}
    for s in runs:
        if s.seed in by_seed:
            prev = by_seed[s.seed]
            r.add(
                WARN,
                f"two different runs with seed {s.seed}: {prev.path} (val_bpb {prev.val_bpb}) "
                f"and {s.path} (val_bpb {s.val_bpb})",
            )
        else:
            by_seed[s.seed] = s
    claimed = _claimed_seeds(sub, r)
    if claimed:
        for seed in claimed:
            if seed not in by_seed:
                r.add(
                    FAIL,
                    f"submission.json claims seed {seed} but no log shows a final score for it "
                    f"(logs: {', '.join(f'{s.path} seed {s.seed}' for s in runs)})",
                )
        extra = [s for k, s in by_seed.items() if k not in claimed]
        for s in extra:
            r.add(
                WARN,
                f"{s.path}: seed {s.seed} (val_bpb {s.val_bpb}) is not among the claimed seeds {claimed}",
            )
        chosen = [by_seed[k] for k in claimed if k in by_seed]
    else:
        chosen = list(by_seed.values())
    _seed_results(sub, by_seed, r)
    if chosen:
        for key in ("val_bpb", "val_loss"):
            _mean(sub, key, chosen, r)
        for key, field in (("val_bpb_std", "val_bpb"), ("val_loss_std", "val_loss")):
            _std(sub, key, field, chosen, r)
        _bytes_total(sub, chosen, r)
    _bytes_code(ctx, sub, runs, r)
    if r.status == SKIP:
        r.add(SKIP, "submission.json shares no number with the logs")
    return r


def _claimed_seeds(sub: dict, r: CheckResult) -> list[int]:
    seeds = sub.get("seeds")
    out: list[int] = []
    if isinstance(seeds, list):
        out = [x for x in seeds if isinstance(x, int) and not isinstance(x, bool)]
    sr = sub.get("seed_results")
    if isinstance(sr, dict):
        keys = []
        for k in sr:
            try:
                keys.append(int(k))
            except (TypeError, ValueError):
                continue
        if out and sorted(set(keys)) != sorted(set(out)):
            r.add(FAIL, f"seeds {out} and seed_results keys {keys} differ")
        if not out:
            out = keys
    if not out and isinstance(sub.get("seed"), int) and not isinstance(sub.get("seed"), bool):
        out = [sub["seed"]]
    return out


def _seed_results(sub: dict, by_seed: dict, r: CheckResult) -> None:
    sr = sub.get("seed_results")
    if not isinstance(sr, dict):
        return
    for key, res in sr.items():
        try:
            seed = int(key)
        except (TypeError, ValueError):
            continue
        s = by_seed.get(seed)
        if s is None or not isinstance(res, dict):
            continue
        pairs = [
            ("val_bpb", s.val_bpb, "val_bpb", 1.0),
            ("val_loss", s.val_loss, "val_loss", 1.0),
            ("artifact_bytes", s.total_bytes, "total_bytes", 1.0),
            ("bytes_total", s.total_bytes, "total_bytes", 1.0),
            ("steps", s.steps, "steps", 1.0),
            ("eval_time_s", s.eval_time_ms, "eval_time_ms", 1e-3),
            ("train_time_s", s.train_time_ms, "train_time_ms", 1e-3),
        ]
        for name, actual, field, scale in pairs:
            v = res.get(name)
            if not _num(v) or actual is None:
                continue
            a = actual * scale
            ok = agrees(v, a, actual_unit=unit(actual) * scale) or (
                name.endswith("_time_s") and agrees(v, a, aggregate=True, actual_unit=unit(actual) * scale)
            )
            where = _at(s, field)
            if ok:
                r.add(PASS, f"seed_results[{key}].{name} {v} = {where} {_fmt(a)}")
            else:
                r.add(FAIL, f"seed_results[{key}].{name} is {v} but {where} says {_fmt(a)}")


def _mean(sub: dict, key: str, runs: list[RunSummary], r: CheckResult) -> None:
    v = sub.get(key)
    vals = [getattr(s, key) for s in runs]
    if not _num(v) or any(x is None or not math.isfinite(x) for x in vals):
        return
    mean = statistics.fmean(vals)
    u = max(unit(x) for x in vals)
    where = ", ".join(_at(s, key) for s in runs[:5]) + (" ..." if len(runs) > 5 else "")
    if agrees(v, mean, aggregate=True, actual_unit=u):
        what = f"the mean of {len(runs)} seeds" if len(runs) > 1 else "the log"
        r.add(PASS, f"{key} {v} = {what} {mean:.8f} ({where})")
        return
    single = [s for s in runs if agrees(v, getattr(s, key), actual_unit=unit(getattr(s, key)))]
    if single:
        r.add(
            WARN,
            f"{key} {v} equals {single[0].path}'s value, not the mean of the {len(runs)} seeds ({mean:.8f})",
        )
    else:
        r.add(
            FAIL,
            f"{key} is {v} in submission.json but the logs give {mean:.8f} "
            f"({'mean of ' + str(len(runs)) + ' seeds: ' if len(runs) > 1 else ''}{where})",
        )


def _std(sub: dict, key: str, field: str, runs: list[RunSummary], r: CheckResult) -> None:
    v = sub.get(key)
    vals = [getattr(s, field) for s in runs]
    if not _num(v) or len(vals) < 2 or any(x is None or not math.isfinite(x) for x in vals):
        return
    sample, pop = statistics.stdev(vals), statistics.pstdev(vals)
    u = max(unit(x) for x in vals)
    if agrees(v, sample, True, u) or agrees(v, pop, True, u):
        r.add(PASS, f"{key} {v} = std of {len(vals)} seeds (sample {sample:.6f}, population {pop:.6f})")
    else:
        r.add(
            FAIL,
            f"{key} is {v} but the {len(vals)} logged seeds give sample std {sample:.6f} "
            f"(population {pop:.6f})",
        )


def _total(s: RunSummary) -> int | None:
    if s.total_bytes is not None:
        return s.total_bytes
    if s.code_bytes is not None and s.model_bytes is not None:
        return s.code_bytes + s.model_bytes
    return None


def _bytes_total(sub: dict, runs: list[RunSummary], r: CheckResult) -> None:
    v = sub.get("bytes_total")
    totals = [(s, _total(s)) for s in runs if _total(s) is not None]
    if not _num(v) or not totals:
        return
    mx = max(t for _, t in totals)
    mean = statistics.fmean(t for _, t in totals)
    top = next(s for s, t in totals if t == mx)
    if v == mx:
        r.add(PASS, f"bytes_total {v} = the largest logged total ({_at(top, 'total_bytes')})")
    elif abs(v - mean) <= 1.0:
        r.add(
            PASS,
            f"bytes_total {v} = the mean of {len(totals)} logged totals ({mean:.1f}); "
            f"the largest is {mx} ({_at(top, 'total_bytes')})",
        )
    elif any(v == t for _, t in totals):
        s = next(s for s, t in totals if t == v)
        r.add(
            WARN,
            f"bytes_total {v} is {_at(s, 'total_bytes')}'s total, below the largest {mx} "
            f"({_at(top, 'total_bytes')})",
        )
    else:
        r.add(
            FAIL,
            f"bytes_total is {v} in submission.json but the logs give "
            + ", ".join(f"{t} ({_at(s, 'total_bytes')})" for s, t in totals[:5]),
        )


def _bytes_code(ctx: Context, sub: dict, runs: list[RunSummary], r: CheckResult) -> None:
    v = sub.get("bytes_code")
    if not _num(v):
        return
    f = ctx.train_gpt
    size = f.stat().st_size if f is not None else None
    logged = {s.code_bytes: s for s in runs if s.code_bytes is not None}
    if size is not None and v == size:
        r.add(PASS, f"bytes_code {v} = size of train_gpt.py")
    elif v in logged:
        s = logged[v]
        extra = f", but train_gpt.py is {size} bytes" if size is not None else ""
        r.add(WARN if size is not None else PASS, f"bytes_code {v} = {_at(s, 'code_bytes')}{extra}")
    else:
        parts = ([f"train_gpt.py is {size} bytes"] if size is not None else []) + [
            f"{_at(s, 'code_bytes')} says {c}" for c, s in list(logged.items())[:3]
        ]
        r.add(
            FAIL, f"bytes_code is {v} in submission.json but " + ("; ".join(parts) or "nothing confirms it")
        )
