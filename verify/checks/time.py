"""Check 5: training <= 600 s and evaluation <= 600 s for every claimed run on the rules' hardware (8xH100);
no training data used after the training wallclock stops.

The wallclock cap is tested between steps, so an honest run stops a step past 600 s: an overshoot of up
to ``TIME_GRACE_MS`` of training is a WARN, more is a FAIL. Evaluation: the log's ``total_eval_time``, else
the timed post-training passes up to the claimed score's line (a pass logged after it, e.g. an unclaimed
extra TTT pass, is not needed for the claim). When only diagnostic passes before the claimed one push the
sum past 600 s, it is a WARN. Time the log shows outside its evaluation timer (compile warm-up,
decompression, precomputation) is a WARN with the numbers. A run on other hardware (the GPU table, the
world size), on the non-record track, or not claimed, is a WARN when over.

[R-data] GPTQ/quantisation calibration after training must not read training data past the 600 s mark:
stop time + calibration time > 600 s is a FAIL when the log itself says the calibration read training data,
a WARN when the code shows it does (the calibration function takes a training loader), and a PASS note
for self-generated calibration data.
"""

from __future__ import annotations

import re

from verify.context import Context
from verify.limits import EVAL_LIMIT_S, TIME_GRACE_MS, TRAIN_LIMIT_S
from verify.logparse import RunSummary, Score
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "time", 5
RULE = (
    f"training <= {TRAIN_LIMIT_S:.0f} s (no training data after it) and evaluation <= {EVAL_LIMIT_S:.0f} s "
    "per claimed run, on 8xH100"
)
_TRAIN_DATA = re.compile(r"(?i)train(?:ing)?[ _](?:data|batch|shard|set|tokens|loader)|from train|\(train")
_SELF_GEN = re.compile(r"(?i)autoregressive|self[-_ ]?gen|generat|synthetic|random tokens")
_CODE_CALIB_TRAIN = re.compile(r"(?m)^\s*def\s+\w*(?:hessian|calib)\w*\s*\([^)]*\btrain\w*", re.I)


def _other_hardware(s: RunSummary) -> str | None:
    n = s.device_count or s.world_size
    name = s.device_name
    if (n is not None and n != 8) or (name and "H100" not in name.upper()):
        return f"{n or '?'}x {name or 'GPU'}"
    return None


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    relaxed = ctx.is_non_record()
    scores = {}
    for c in ctx.match.runs:
        scores.setdefault(id(c.log), c.score)
    claimed = {id(s): scores.get(id(s)) for s in ctx.claimed_logs}
    for s in ctx.logs:
        if not s.is_run:
            continue
        is_claimed = id(s) in claimed
        score = claimed.get(id(s))
        other = _other_hardware(s)
        hard = is_claimed and not relaxed and other is None
        why = (
            ""
            if hard
            else (
                " (non-record track)"
                if relaxed
                else f" (on {other})"
                if other
                else " (a run the submission does not claim)"
            )
        )
        if s.train_time_ms is not None:
            _limit(
                r, "training", s.train_time_ms, TRAIN_LIMIT_S, s.at("train_time_ms"), hard, TIME_GRACE_MS, why
            )
        elif is_claimed and not s.eval_only:
            r.add(WARN, f"{s.path}: no training time in the log")
        if is_claimed:
            _eval(r, s, score, hard, why)
            _outside(r, s)
            _calibration(ctx, r, s, hard, relaxed)
    if r.status == SKIP:
        r.add(SKIP, "no log with timings")
        return r
    _hardware(ctx, r)
    return r


def _limit(
    r: CheckResult, what: str, ms: float, limit_s: float, where: str, hard: bool, grace_ms: float, why: str
) -> None:
    lim = limit_s * 1000.0
    if ms <= lim:
        r.add(PASS, f"{where} {what} {ms / 1000:.3f} s <= {limit_s:.0f} s")
    elif ms <= lim + grace_ms:
        r.add(
            PASS,
            f"{where} {what} {ms / 1000:.3f} s: {ms - lim:.0f} ms past {limit_s:.0f} s, within the "
            f"{grace_ms / 1000:.0f} s grace (the cap is tested between steps)",
        )
    else:
        r.add(FAIL if hard else WARN, f"{where} {what} {ms / 1000:.3f} s > {limit_s:.0f} s{why}")


def _eval(r: CheckResult, s: RunSummary, score: Score | None, hard: bool, why: str) -> None:
    if s.total_eval_time_ms is not None or s.format == "pgolf":
        if s.eval_time_ms is not None:
            _limit(r, "evaluation", s.eval_time_ms, EVAL_LIMIT_S, s.at("eval_time_ms"), hard, 0.0, why)
        return
    if score is None:
        return
    timed = [x for x in s.scores if x.kind >= 2 and x.eval_time_ms is not None and x.line <= score.line]
    if not timed:
        r.add(WARN, f"{s.path}: no evaluation time in the log for the claimed score (line {score.line})")
        return
    total = sum(x.eval_time_ms for x in timed)
    where = f"{s.path}:{timed[0].line}-{timed[-1].line}" if len(timed) > 1 else f"{s.path}:{timed[0].line}"
    lim = EVAL_LIMIT_S * 1000.0
    own = score.eval_time_ms
    if total > lim and own is not None and own <= lim and hard:
        r.add(
            WARN,
            f"{where} evaluation passes up to the claimed one sum to {total / 1000:.3f} s > "
            f"{EVAL_LIMIT_S:.0f} s; the claimed pass alone ({score.label}) takes {own / 1000:.3f} s",
        )
        return
    what = "evaluation" if len(timed) == 1 else f"evaluation ({len(timed)} timed passes)"
    _limit(r, what, total, EVAL_LIMIT_S, where, hard, 0.0, why)


def _outside(r: CheckResult, s: RunSummary) -> None:
    if not s.outside_timer:
        return
    extra = sum(sec for _, _, sec in s.outside_timer)
    parts = ", ".join(f"{what} {sec:.1f} s (line {no})" for no, what, sec in s.outside_timer[:6])
    timed = s.eval_time_ms / 1000.0 if s.eval_time_ms is not None else None
    tail = ""
    if timed is not None:
        tot = timed + extra
        tail = f"; with the timed {timed:.1f} s that is {tot:.1f} s" + (
            f" > {EVAL_LIMIT_S:.0f} s" if tot > EVAL_LIMIT_S else ""
        )
    r.add(WARN, f"{s.path}: the log shows {extra:.1f} s outside its evaluation timer: {parts}{tail}")


def _calibration(ctx: Context, r: CheckResult, s: RunSummary, hard: bool, relaxed: bool) -> None:
    if s.train_time_ms is None or s.stop_line is None:
        return
    after = [(no, text, sec) for no, text, sec in s.calibration if no > s.stop_line]
    if not after:
        return
    secs = sum(sec for _, _, sec in after if sec is not None)
    text = " ".join(t for _, t, _ in after)
    end_s = s.train_time_ms / 1000.0 + secs
    lines = f"{s.path}:{after[0][0]}-{after[-1][0]}" if len(after) > 1 else f"{s.path}:{after[0][0]}"
    if _TRAIN_DATA.search(text):
        source, proven = "training data (the log says so)", True
    elif _SELF_GEN.search(text):
        r.add(
            PASS,
            f"{lines} quantisation calibration on self-generated tokens ({secs:.1f} s), no training data",
        )
        return
    elif any(_CODE_CALIB_TRAIN.search(f.text) for f in ctx.code.scan):
        source, proven = "training batches (the calibration function takes a training loader)", False
    else:
        return
    head = (
        f"[R-data] {lines} calibration on {source} takes {secs:.1f} s after training stopped at "
        f"{s.train_time_ms / 1000:.3f} s"
    )
    if end_s <= TRAIN_LIMIT_S + TIME_GRACE_MS / 1000.0:
        r.add(
            PASS,
            f"{head}: ends at {end_s:.1f} s, within {TRAIN_LIMIT_S:.0f} s (+{TIME_GRACE_MS / 1000:.0f} s "
            "grace; time reserved for it)",
        )
    elif proven and hard and not relaxed:
        r.add(FAIL, f"{head}: training data read until {end_s:.1f} s > {TRAIN_LIMIT_S:.0f} s")
    else:
        r.add(WARN, f"{head}: training data read until {end_s:.1f} s > {TRAIN_LIMIT_S:.0f} s")


def _hardware(ctx: Context, r: CheckResult) -> None:
    named = [s for s in ctx.claimed_logs if s.device_name or s.world_size]
    if named:
        kinds: dict[tuple, RunSummary] = {}
        for s in named:
            kinds.setdefault((s.device_count or s.world_size, s.device_name), s)
        for (n, name), s in kinds.items():
            if name is None:
                hw = (ctx.submission or {}).get("hardware")
                ok = n == 8 and isinstance(hw, str) and "H100" in hw.upper()
                r.add(
                    PASS if ok else WARN,
                    f"{s.at('world_size')} world_size {n}"
                    + (
                        f"; {ctx.submission_name} hardware {hw!r}"
                        if isinstance(hw, str)
                        else "; the GPU model is named neither in the logs nor in the submission"
                    ),
                )
                continue
            ok = n == 8 and "H100" in name.upper()
            r.add(
                PASS if ok else WARN,
                f"{s.at('device_name')} hardware {n or '?'}x {name}"
                + ("" if ok else ": not the 8xH100 of the rules"),
            )
        return
    hw = (ctx.submission or {}).get("hardware") or (ctx.submission or {}).get("gpu")
    if isinstance(hw, str) and hw:
        mm = re.search(r"(\d+)\s*[x×]\s*(?:NVIDIA\s+)?H100", hw, re.I)
        ok = bool(mm and mm.group(1) == "8")
        r.add(
            PASS if ok else WARN,
            f"{ctx.submission_name} hardware {hw!r} (the logs do not name the GPUs)"
            + ("" if ok else ": not the 8xH100 of the rules"),
        )
    else:
        r.add(WARN, "the hardware is named neither in the logs nor in the submission JSON")
