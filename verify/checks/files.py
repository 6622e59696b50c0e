"""Check 1: the folder holds README.md, submission.json, train_gpt.py and a train log; a PR changes
nothing outside one new records/<track>/<name>/ folder."""

from __future__ import annotations

from verify.context import Context, is_log_name
from verify.pr import record_folder
from verify.result import FAIL, PASS, WARN, CheckResult

ID, NUMBER = "files", 1
RULE = "README.md, submission.json, train_gpt.py and a train log; the PR adds one folder under records/"
REQUIRED = ("README.md", "submission.json", "train_gpt.py")


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if ctx.folder is not None and ctx.folder.is_dir():
        _folder(ctx, r)
    if ctx.options.pr_changes is not None:
        _pr(ctx, r)
    return r


def _folder(ctx: Context, r: CheckResult) -> None:
    top = {f for f in ctx.files if "/" not in f}
    if not ctx.files:
        r.add(FAIL, f"{ctx.folder}: the folder is empty")
        return
    missing = [n for n in REQUIRED if n not in top]
    for n in missing:
        r.add(FAIL, f"{n} missing from {ctx.folder}")
    logs = [f for f in ctx.files if is_log_name(f)]
    if not logs:
        r.add(FAIL, f"no train log (*.log) in {ctx.folder}")
    for name in ("README.md", "train_gpt.py", "submission.json"):
        if name in top and (ctx.folder / name).stat().st_size == 0:
            r.add(FAIL, f"{name} is empty")
    if not missing and logs:
        r.add(
            PASS,
            f"{', '.join(REQUIRED)} present; {len(logs)} log(s): {', '.join(logs[:6])}"
            + (" ..." if len(logs) > 6 else ""),
        )
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
