"""Run every check on a folder: ``verify_folder(path, options) -> list[CheckResult]``."""

from __future__ import annotations

from pathlib import Path

from verify.checks import ALL
from verify.context import Context, Options, load_context
from verify.result import FAIL, SKIP, CheckResult


def run_checks(ctx: Context) -> list[CheckResult]:
    out = []
    for mod in ALL:
        if ctx.folder is None and mod.ID != "files":  # PR-only mode: the folder is not here
            res = CheckResult(mod.ID, mod.NUMBER, mod.RULE)
            res.add(
                SKIP, "no folder to check: only the PR's file list was checked (give the folder or --repo)"
            )
            out.append(res)
            continue
        try:
            res = mod.run(ctx)
        except Exception as e:  # one broken check must not hide the others' evidence
            res = CheckResult(mod.ID, mod.NUMBER, mod.RULE)
            res.add(FAIL, f"internal error in the {mod.ID} check: {type(e).__name__}: {e}")
        out.append(res)
    return out


def verify_folder(folder: str | Path | None, options: Options | None = None) -> list[CheckResult]:
    """All checks on ``folder`` (None: only the PR file-list part of check 1)."""
    ctx = load_context(Path(folder) if folder is not None else None, options)
    return run_checks(ctx)
