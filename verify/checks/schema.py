"""Check 2: the submission JSON is readable; how far it is from the schema (verify/submission.schema.json).

Unreadable JSON (not UTF-8, a syntax error, an empty file, a top level that is not an object) is a FAIL:
the claim cannot be read. Everything the schema would reject beyond that (missing author/github_id/
name/date/val_bpb, ``seeds`` as an object keyed by seed, nulls, other types) is a WARN naming the field:
accepted records show all of these, and the claim is still read tolerantly (verify/claims.py).
"""

from __future__ import annotations

from verify.context import Context
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult
from verify.schema import validate_submission

ID, NUMBER = "schema", 2
RULE = "the submission JSON parses; fields as the schema says (author, github_id, name, date, val_bpb, ...)"
USUAL = ("blurb", "val_loss", "bytes_total", "bytes_code", "seeds", "seed_results", "hardware", "track")
MAX_LISTED = 25


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    name = ctx.submission_name
    if ctx.folder is None or name is None:
        r.add(SKIP, "no submission JSON")
        return r
    if ctx.submission_error:
        r.add(FAIL, f"{name}: {ctx.submission_error}")
        return r
    errors = validate_submission(ctx.submission_raw)
    for e in errors[:MAX_LISTED]:
        r.add(WARN, f"{name} {e}")
    if len(errors) > MAX_LISTED:
        r.add(WARN, f"{name}: ... and {len(errors) - MAX_LISTED} more schema deviations")
    claim = ctx.claim
    for note in claim.notes if claim else []:
        r.add(WARN, f"{name}: {note} (read anyway)")
    if not errors:
        sub = ctx.submission or {}
        absent = [k for k in USUAL if k not in sub]
        r.add(
            PASS,
            f"{name} validates (Draft 2020-12)"
            + (f"; usual fields absent: {', '.join(absent)}" if absent else ""),
        )
    return r
