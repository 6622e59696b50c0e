"""Check 1: the required material is there: code (train_gpt.py, or the file that is clearly the trainer),
a train log, nothing required empty; README.md and a submission JSON are expected (a WARN when absent);
a PR changes nothing outside one new records/<track>/<name>/ folder."""

from __future__ import annotations

from verify.context import Context
from verify.pr import record_folder
from verify.result import FAIL, PASS, WARN, CheckResult

ID, NUMBER = "files", 1
RULE = "code, a train log, README.md and submission.json present, none empty; a PR adds one records/ folder"


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if ctx.folder is not None and ctx.folder.is_dir():
        _folder(ctx, r)
    if ctx.options.pr_changes is not None:
        _pr(ctx, r)
    return r


def _size(ctx: Context, rel: str) -> int:
    try:
        return (ctx.folder / rel).stat().st_size
    except OSError:
        return -1


def _folder(ctx: Context, r: CheckResult) -> None:
    top = {f for f in ctx.files if "/" not in f}
    if not ctx.files:
        r.add(FAIL, f"{ctx.folder}: the folder is empty")
        return
    # code
    for rel in ctx.code.empty:
        if rel.rsplit("/", 1)[-1].startswith("train") or rel == "train_gpt.py":
            r.add(FAIL, f"{rel} is empty (0 bytes of code)")
    trainer = ctx.code.trainer
    if trainer is None:
        others = [f.rel for f in ctx.code.files]
        r.add(
            FAIL,
            "no code: no train_gpt.py and no *.py that trains and reports val_bpb"
            + (f" (other .py files: {', '.join(others[:5])})" if others else ""),
        )
    else:
        if trainer.rel == "train_gpt.py":
            r.add(PASS, f"code: train_gpt.py, {trainer.size} bytes")
        else:
            why = "train_gpt.py runs it" if "train_gpt.py" in top else "no train_gpt.py"
            r.add(WARN, f"code: the trainer is {trainer.rel} ({trainer.size} bytes; {why}), not train_gpt.py")
    # logs
    if not ctx.logs:
        named = [f for f in ctx.files if f.endswith((".log", ".txt", ".tsv", ".csv", ".out"))]
        r.add(
            FAIL,
            "no train log: no *.log/*.txt file shows a run (training steps or a final score)"
            + (f"; files looked at: {', '.join(named[:6])}" if named else ""),
        )
    else:
        logs = [s.path for s in ctx.logs]
        r.add(PASS, f"{len(logs)} run log(s): {', '.join(logs[:6])}" + (" ..." if len(logs) > 6 else ""))
    for rel in ctx.empty_logs:
        r.add(FAIL if not ctx.logs else WARN, f"{rel} is empty")
    for s in ctx.other_logs:
        r.add(PASS, f"{s.path}: no run in it (a summary or notes), read as evidence only")
    # README and the submission JSON
    if "README.md" not in top:
        readmes = [f for f in top if f.lower().startswith("readme")]
        r.add(WARN, "README.md missing" + (f" (found {', '.join(readmes)})" if readmes else ""))
    elif _size(ctx, "README.md") == 0:
        r.add(WARN, "README.md is empty")
    if ctx.submission_name is None:
        r.add(WARN, "submission.json missing: the claimed score is not stated")
    elif ctx.submission_name != "submission.json":
        r.add(WARN, f"the submission JSON is named {ctx.submission_name}, not submission.json")
    for dropped, kept in ctx.duplicates:
        r.add(PASS, f"{dropped} is the same run as {kept} (counted once)")


def _pr(ctx: Context, r: CheckResult) -> None:
    changes = ctx.options.pr_changes or []
    src = ctx.options.pr_source or "the PR"
    if not changes:
        r.add(FAIL, f"{src}: no changed paths")
        return
    folders = {}
    for status, path in changes:
        folders.setdefault(record_folder(path), []).append((status, path))
    outside = folders.pop(None, [])
    for status, path in outside[:20]:
        r.add(FAIL, f"{src}: {path} ({status}) is outside a records/<track>/<name>/ folder")
    if len(outside) > 20:
        r.add(FAIL, f"{src}: ... and {len(outside) - 20} more paths outside records/")
    if len(folders) > 1:
        r.add(FAIL, f"{src}: touches {len(folders)} record folders: {', '.join(sorted(folders))}")
    for folder, items in sorted(folders.items()):
        not_added = [(s, p) for s, p in items if s not in ("A", "?")]
        for s, p in not_added[:10]:
            what = {"M": "modifies", "D": "deletes", "T": "changes the type of"}.get(s, f"status {s} for")
            r.add(FAIL, f"{src}: {what} {p}: a record PR only adds a new folder")
        if not not_added and len(folders) == 1 and not outside:
            known = "" if all(s == "A" for s, _ in items) else " (statuses not given: assumed added)"
            r.add(PASS, f"{src}: {len(items)} path(s), all in the new folder {folder}{known}")
        if ctx.folder is not None and not str(ctx.folder.resolve().as_posix()).endswith(folder):
            r.add(WARN, f"{src}: the PR's folder is {folder} but the folder checked is {ctx.folder}")
