"""Check 2: submission.json is valid JSON and validates against verify/submission.schema.json."""

from __future__ import annotations

from verify.context import Context
from verify.result import FAIL, PASS, SKIP, CheckResult
from verify.schema import validate_submission

ID, NUMBER = "schema", 2
RULE = "submission.json is valid JSON and matches the schema (author, github_id, name, date, val_bpb, ...)"
USUAL = ("blurb", "val_loss", "bytes_total", "bytes_code", "seeds", "seed_results", "hardware", "track")


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if ctx.folder is None or not (ctx.folder / "submission.json").is_file():
        r.add(SKIP, "no submission.json")
        return r
    if ctx.submission_error:
        r.add(FAIL, f"submission.json: {ctx.submission_error}")
        return r
    errors = validate_submission(ctx.submission_raw)
    for e in errors[:25]:
        r.add(FAIL, f"submission.json {e}")
    if len(errors) > 25:
        r.add(FAIL, f"submission.json: ... and {len(errors) - 25} more schema errors")
    if not errors:
        sub = ctx.submission or {}
        absent = [k for k in USUAL if k not in sub]
        r.add(
            PASS,
            "submission.json validates (Draft 2020-12)"
            + (f"; usual fields absent: {', '.join(absent)}" if absent else ""),
        )
    return r
