"""Check 5: training <= 600 s and evaluation <= 600 s per seed, from the logs; the hardware they name.

The wallclock cap is tested between steps, so an honest run stops a step past 600 s: an overshoot
of up to ``TIME_GRACE_MS`` of training is a WARN, more is a FAIL (evaluation has no such grace).
On the non-record track (``track`` or folder name containing non-record) time over the limit is a
WARN. Hardware: the GPU table / pgolf run_start of the logs, else submission.json's ``hardware``;
anything but 8xH100 (or unknown) is a WARN.
"""

from __future__ import annotations

import re

from verify.context import Context
from verify.limits import EVAL_LIMIT_S, TIME_GRACE_MS, TRAIN_LIMIT_S
from verify.logparse import RunSummary
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "time", 5
RULE = f"training <= {TRAIN_LIMIT_S:.0f} s and evaluation <= {EVAL_LIMIT_S:.0f} s per seed, on 8xH100"


def _at(s: RunSummary, key: str) -> str:
    return f"{s.path}:{s.lines[key]}" if key in s.lines else s.path


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    relaxed = ctx.is_non_record()
    for s in ctx.logs:
        if s.val_bpb is None and s.train_time_ms is None and s.eval_time_ms is None:
            continue
        if s.train_time_ms is not None:
            _limit(
                r, "training", s.train_time_ms, TRAIN_LIMIT_S, _at(s, "train_time_ms"), relaxed, TIME_GRACE_MS
            )
        elif not s.eval_only:
            r.add(WARN, f"{s.path}: no training time in the log")
        if s.eval_time_ms is not None:
            _limit(r, "evaluation", s.eval_time_ms, EVAL_LIMIT_S, _at(s, "eval_time_ms"), relaxed, 0.0)
        else:
            r.add(WARN, f"{s.path}: no evaluation time in the log")
    if r.status == SKIP:
        r.add(SKIP, "no log with timings")
        return r
    _hardware(ctx, r)
    return r


def _limit(
    r: CheckResult, what: str, ms: float, limit_s: float, where: str, relaxed: bool, grace_ms: float
) -> None:
    lim = limit_s * 1000.0
    if ms <= lim:
        r.add(PASS, f"{where} {what} {ms / 1000:.3f} s <= {limit_s:.0f} s")
    elif ms <= lim + grace_ms:
        r.add(
            WARN,
            f"{where} {what} {ms / 1000:.3f} s: {ms - lim:.0f} ms past {limit_s:.0f} s "
            "(the last step overran the cap)",
        )
    else:
        status = WARN if relaxed else FAIL
        note = " (non-record track)" if relaxed else ""
        r.add(status, f"{where} {what} {ms / 1000:.3f} s > {limit_s:.0f} s{note}")


def _hardware(ctx: Context, r: CheckResult) -> None:
    named = [s for s in ctx.logs if s.device_name]
    if named:
        kinds: dict[tuple, RunSummary] = {}
        for s in named:
            kinds.setdefault((s.device_count or s.world_size, s.device_name), s)
        for (n, name), s in kinds.items():
            ok = n == 8 and "H100" in name
            r.add(
                PASS if ok else WARN,
                f"{_at(s, 'device_name')} hardware {n or '?'}x {name}"
                + ("" if ok else ": not the 8xH100 of the rules"),
            )
        return
    procs = next((s for s in ctx.logs if s.world_size), None)
    hw = (ctx.submission or {}).get("hardware")
    if isinstance(hw, str) and hw:
        m = re.search(r"(\d+)\s*[x×]\s*(?:NVIDIA\s+)?H100", hw, re.I)
        ok = bool(m and m.group(1) == "8") and (procs is None or procs.world_size == 8)
        extra = f"; {_at(procs, 'world_size')} world_size {procs.world_size}" if procs else ""
        r.add(
            PASS if ok else WARN,
            f"submission.json hardware {hw!r} (the logs do not name the GPUs{extra})"
            + ("" if ok else ": not the 8xH100 of the rules"),
        )
    elif procs is not None:
        r.add(
            WARN,
            f"{_at(procs, 'world_size')} world_size {procs.world_size}, but the GPU model is named "
            "neither in the logs nor in submission.json",
        )
    else:
        r.add(WARN, "the hardware is named neither in the logs nor in submission.json")
