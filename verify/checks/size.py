"""Check 4: code bytes + compressed model bytes <= 16,000,000 for every claimed run.

By the logs' own count first: each claimed run's ``Total submission size`` (or code + model size lines;
an eval-only re-run takes the total of the training log of the same seed). The logs count the code that
runs: when they count the compressed code and the folder ships the readable source beside it, that is
accepted practice (a PASS note; a WARN when neither the readable nor the compressed size matches the file).
Only where the logs give no size do the files decide: the trainer's size plus the artifact files
(``*.ptz`` ...), else the total the submission JSON states. Unclaimed logs over the limit are a WARN.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from verify.context import Context
from verify.limits import ARTIFACT_LIMIT_BYTES as LIMIT
from verify.logparse import RunSummary
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "size", 4
RULE = f"code bytes + compressed model bytes <= {LIMIT:,} for every claimed run (by the logs' own count)"
ARTIFACT_SUFFIXES = (".ptz", ".ptq", ".pt.xz", ".pt.br", ".pt.zst", ".int6", ".int8")


def _cmp(total: int) -> str:
    return f"<= {LIMIT}" if total <= LIMIT else f"> {LIMIT} by {total - LIMIT}"


def log_total(s: RunSummary) -> tuple[int, str] | None:
    """(total bytes, where) by the log's own count."""
    if s.total_bytes is not None:
        return s.total_bytes, s.at("total_bytes")
    if s.code_bytes is not None and s.model_bytes is not None:
        return s.code_bytes + s.model_bytes, f"{s.at('code_bytes')} code + {s.at('model_bytes')} model"
    return None


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    claimed = ctx.claimed_logs
    seen = {id(s) for s in claimed}
    tr = ctx.code.trainer
    code_file = tr.size if tr is not None else None
    any_total = False
    for s in claimed:
        got = log_total(s)
        if got is None:  # an eval-only re-run: the training log of the same seed counts
            sib = next((o for o in ctx.logs if o is not s and o.seed == s.seed and log_total(o)), None)
            if sib is not None:
                got = log_total(sib)
        if got is None:
            continue
        any_total = True
        total, where = got
        r.add(PASS if total <= LIMIT else FAIL, f"{where} total {total} {_cmp(total)}")
        if (
            s.code_bytes is not None
            and s.model_bytes is not None
            and s.total_bytes is not None
            and s.code_bytes + s.model_bytes != s.total_bytes
        ):
            r.add(WARN, f"{s.path}: total {s.total_bytes} != code {s.code_bytes} + model {s.model_bytes}")
        _code_note(ctx, s, code_file, r)
    for s in ctx.logs:
        if id(s) in seen:
            continue
        got = log_total(s)
        if got is not None and got[0] > LIMIT:
            r.add(WARN, f"{got[1]} total {got[0]} {_cmp(got[0])} (a run the submission does not claim)")
    if not any_total:
        _by_files(ctx, code_file, r)
    _artifacts(ctx, code_file, r)
    v = ctx.claim.total_bytes if ctx.claim else None
    if v is not None and v.value > LIMIT:
        if not any_total:
            r.add(
                FAIL, f"{ctx.submission_name} {v.key} {v.value} {_cmp(int(v.value))} (no log gives a total)"
            )
        elif r.status != FAIL:
            r.add(
                WARN,
                f"{ctx.submission_name} {v.key} {v.value} {_cmp(int(v.value))}, but the claimed runs' "
                "logs count less (they decide)",
            )
    if r.status == SKIP:
        r.add(SKIP, "no sizes in the logs, no artifact files and no total in the submission JSON")
    return r


def _code_note(ctx: Context, s: RunSummary, code_file: int | None, r: CheckResult) -> None:
    if code_file is None or s.code_bytes is None or s.code_bytes == code_file:
        return
    tr = ctx.code.trainer.rel
    if s.code_compressed:
        raw = s.code_bytes_uncompressed
        if raw is None or abs(raw - code_file) <= 16:
            r.add(
                PASS,
                f"{s.at('code_bytes')} counts the compressed code ({s.code_bytes} bytes); {tr} ships "
                f"the readable source ({code_file} bytes)",
            )
        else:
            r.add(
                WARN,
                f"{s.at('code_bytes')} counts compressed code {s.code_bytes} bytes of a {raw}-byte source, "
                f"but {tr} is {code_file} bytes: the folder's code is not the code that ran",
            )
        return
    with_file = f" (with it the total would be {s.model_bytes + code_file})" if s.model_bytes else ""
    r.add(
        WARN,
        f"{s.at('code_bytes')} logged code {s.code_bytes} bytes but {tr} is {code_file} bytes: the "
        f"folder's code is not the code that ran{with_file}",
    )


def _by_files(ctx: Context, code_file: int | None, r: CheckResult) -> None:
    arts = _artifact_files(ctx)
    if code_file is not None and arts:
        for art in arts:
            size = (ctx.folder / art).stat().st_size
            t = code_file + size
            r.add(
                PASS if t <= LIMIT else FAIL,
                f"no log gives a total: {ctx.code.trainer.rel} {code_file} + {art} {size} = {t} {_cmp(t)}",
            )
    elif ctx.logs:
        r.add(WARN, f"no log gives code/model/total sizes ({', '.join(s.path for s in ctx.logs[:4])})")


def _artifacts(ctx: Context, code_file: int | None, r: CheckResult) -> None:
    """Artifact files beside logs with totals: the files must be what the runs wrote."""
    for art in _artifact_files(ctx):
        size = (ctx.folder / art).stat().st_size
        s = _log_for(ctx, art)
        if s is None:
            continue
        if s.model_bytes is not None and s.model_bytes != size:
            r.add(
                WARN,
                f"{art} is {size} bytes but {s.at('model_bytes')} logged model {s.model_bytes} bytes: "
                "not the artifact that run wrote",
            )
        elif code_file is not None and s.total_bytes is not None and code_file + size > LIMIT:
            r.add(
                WARN,
                f"{ctx.code.trainer.rel} {code_file} + {art} {size} = {code_file + size} "
                f"{_cmp(code_file + size)}"
                f" by the files, while {s.at('total_bytes')} logged {s.total_bytes}",
            )


def _artifact_files(ctx: Context) -> list[str]:
    return [f for f in ctx.files if f.endswith(ARTIFACT_SUFFIXES)]


def _log_for(ctx: Context, art: str):
    stem = PurePosixPath(art).name.split(".")[0]
    for s in ctx.logs:
        if s.artifact_name and PurePosixPath(s.artifact_name).name == PurePosixPath(art).name:
            return s
    for s in ctx.logs:
        if PurePosixPath(s.path).name.split(".")[0] == stem:
            return s
    return None
