"""A PR's changed paths: from a file list (plain paths or ``git diff --name-status`` lines) or a git range.

The rule: a record PR adds exactly one new folder ``records/<track>/<name>/`` and touches nothing else.
"""

from __future__ import annotations

import subprocess
from pathlib import PurePosixPath

STATUS_ADDED = "A"


class PRInputError(Exception):
    """The list or the range cannot be read (an unusable input: exit 2)."""


def parse_pr_list(text: str) -> list[tuple[str, str]]:
    """``path`` or ``STATUS<TAB>path`` (``R100<TAB>old<TAB>new`` for renames) per line -> (status, path)."""
    out = []
    for raw in text.splitlines():
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if (
            len(parts) >= 2
            and parts[0]
            and parts[0][0] in "AMDRCTU"
            and (len(parts[0]) == 1 or parts[0][1:].isdigit())
        ):
            status = parts[0][0]
            if status in "RC" and len(parts) >= 3:
                out.append(("D" if status == "R" else "A", parts[1].strip()))
                out.append(("A", parts[2].strip()))
            else:
                out.append((status, parts[-1].strip()))
        else:
            out.append(("?", line.strip()))
    return out


def read_pr_file(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_pr_list(f.read())
    except OSError as e:
        raise PRInputError(f"{path}: cannot read the PR file list ({e.strerror or e})") from e


def git_range_changes(rng: str, repo: str) -> list[tuple[str, str]]:
    if ".." not in rng:
        raise PRInputError(f"--git-range {rng!r}: expected A..B")
    try:
        proc = subprocess.run(
            ["git", "-C", repo, "diff", "--name-status", "--no-renames", rng],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PRInputError(f"git diff {rng} in {repo}: {e}") from e
    if proc.returncode != 0:
        raise PRInputError(
            f"git diff {rng} in {repo}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
        )
    return parse_pr_list(proc.stdout)


def record_folder(path: str) -> str | None:
    """``records/<track>/<name>`` for a path inside such a folder, else None."""
    s = path.strip()
    while s.startswith("./"):
        s = s[2:]
    parts = PurePosixPath(s).parts
    if len(parts) >= 4 and parts[0] == "records" and ".." not in parts:
        return "/".join(parts[:3])
    return None
