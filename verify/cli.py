"""``python -m verify PATH``: the reviewer's rule checker for a records folder.

Exit status: 0 no FAIL, 1 at least one FAIL, 2 the input itself is unusable (a missing path, not
a directory, an unreadable PR list or git range).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verify import render
from verify.context import Options
from verify.pr import PRInputError, git_range_changes, read_pr_file, record_folder
from verify.result import FAIL
from verify.runner import verify_folder

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify",
        description="Check a Parameter Golf records folder against the challenge's rules: one line per check "
        "(PASS/FAIL/WARN/SKIP), the rule and the evidence.",
        epilog="exit status: 0 no FAIL, 1 a FAIL, 2 unusable input",
    )
    p.add_argument(
        "path",
        nargs="?",
        help="the records folder (optional with --pr-files/--git-range: then the PR's folder under --repo)",
    )
    pr = p.add_mutually_exclusive_group()
    pr.add_argument(
        "--pr-files",
        metavar="FILE",
        help="the PR's changed paths, one per line (plain, or `git diff --name-status` lines)",
    )
    pr.add_argument("--git-range", metavar="A..B", help="take the changed paths from git diff A..B in --repo")
    p.add_argument(
        "--repo",
        metavar="DIR",
        default=".",
        help="the repository for --git-range and for finding the PR's folder (default: .)",
    )
    p.add_argument(
        "--sota",
        metavar="VALUE|FOLDER",
        help="SOTA for check 6: a mean val_loss in nats per token, or the SOTA's records folder "
        "(its per-seed val_loss from the logs)",
    )
    p.add_argument("--min-improvement", type=float, default=0.005, help="nats (default 0.005)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p.add_argument(
        "--data", metavar="DIR", help="folder with the validation shards fineweb_val_*.bin (checks 8 and 9)"
    )
    p.add_argument("--tokenizer", metavar="FILE", help="the SentencePiece model of those shards (check 9)")
    p.add_argument(
        "--deep",
        action="store_true",
        help="check 9: eval-only reproduction and probes (our trainer only; slow)",
    )
    p.add_argument("--deep-timeout", type=float, default=1800.0, metavar="S")
    p.add_argument(
        "--deep-tolerance",
        type=float,
        default=None,
        metavar="BPB",
        help="reproduced vs logged val_bpb (default 1e-4; 1e-3 when the score is a TTT phase)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--markdown", action="store_true", help="a PR comment")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="text: one line per check, without the full evidence"
    )
    return p


def _bad(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = Options(
        sota=args.sota,
        data=args.data,
        tokenizer=args.tokenizer,
        deep=args.deep,
        deep_timeout_s=args.deep_timeout,
        deep_tolerance_bpb=args.deep_tolerance,
        min_improvement=args.min_improvement,
        alpha=args.alpha,
    )
    try:
        if args.pr_files:
            opts.pr_changes, opts.pr_source = read_pr_file(args.pr_files), args.pr_files
        elif args.git_range:
            if not Path(args.repo).is_dir():
                return _bad(f"--repo {args.repo}: not a directory")
            opts.pr_changes, opts.pr_source = git_range_changes(args.git_range, args.repo), args.git_range
    except PRInputError as e:
        return _bad(str(e))
    folder: Path | None = None
    if args.path:
        folder = Path(args.path)
        if not folder.exists():
            return _bad(f"{folder}: no such file or directory")
        if not folder.is_dir():
            return _bad(f"{folder}: not a directory (give a records folder)")
    elif opts.pr_changes is not None:
        folders = {record_folder(p) for _, p in opts.pr_changes} - {None}
        if len(folders) == 1:
            cand = Path(args.repo) / folders.pop()
            folder = cand if cand.is_dir() else None
    else:
        return _bad("give a records folder, --pr-files FILE or --git-range A..B")
    target = str(folder) if folder is not None else f"PR {opts.pr_source}"
    results = verify_folder(folder, opts)
    if args.json:
        print(render.as_json(results, target))
    elif args.markdown:
        print(render.as_markdown(results, target))
    else:
        print(render.as_text(results, target, verbose=not args.quiet), end="")
    return EXIT_FAIL if any(r.status == FAIL for r in results) else EXIT_OK
