"""``pgolf size DIR``: code bytes + compressed model bytes per seed against 16,000,000 (decimal).

Code bytes are the file size of DIR/train_gpt.py; model bytes the file size of each seed's
artifact DIR/train_seed{SEED}.ptz. The logs' own numbers are shown beside them and must agree
(a disagreement means the files are not the ones the logs describe). Exit 1 when any seed is over
the limit, a file is missing, or the numbers disagree.
"""

from __future__ import annotations

import argparse
import os

from pgolf.errors import PgolfError
from pgolf.runs import folder_seeds, load_run, seed_files
from verify.limits import ARTIFACT_LIMIT_BYTES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="records folder")
    p.add_argument("--limit", type=int, default=ARTIFACT_LIMIT_BYTES, help="bytes (default 16,000,000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder, limit = args.folder, args.limit
    seeds = folder_seeds(folder)
    script = os.path.join(folder, "train_gpt.py")
    if not os.path.isfile(script):
        raise PgolfError(f"{script}: not found")
    code = os.path.getsize(script)
    print(f"{folder}: limit {limit:,} bytes (decimal); code = {script} ({code:,} bytes)")
    print(f"{'seed':>6} {'code':>10} {'model':>12} {'total':>12} {'margin':>12}  "
          f"log (code/model/total)  verdict")
    bad = 0
    for seed in seeds:
        f = seed_files(folder, seed)
        run = load_run(f.log) if os.path.isfile(f.log) else None
        logged = "-"
        if run is not None:
            logged = "/".join(f"{v:,}" if v is not None else "?" for v in (run.code_bytes, run.model_bytes,
                                                                          run.total_bytes))
        if not os.path.isfile(f.artifact):
            print(f"{seed:>6} {code:>10,} {'missing':>12} {'-':>12} {'-':>12}  {logged}  "
                  f"FAIL: {f.artifact} not found")
            bad += 1
            continue
        model = os.path.getsize(f.artifact)
        total = code + model
        margin = limit - total
        problems = []
        if margin < 0:
            problems.append(f"over the limit by {-margin:,} bytes")
        if run is not None:
            for what, mine, theirs in (("code", code, run.code_bytes), ("model", model, run.model_bytes),
                                       ("total", total, run.total_bytes)):
                if theirs is not None and theirs != mine:
                    problems.append(f"{what} bytes {mine:,} on disk but {theirs:,} in {f.log}")
        verdict = "FAIL: " + "; ".join(problems) if problems else "ok"
        bad += bool(problems)
        print(f"{seed:>6} {code:>10,} {model:>12,} {total:>12,} {margin:>12,}  {logged}  {verdict}")
    if bad:
        print(f"size: FAIL ({bad} of {len(seeds)} seed(s))")
        return 1
    print(f"size: ok, every seed within {limit:,} bytes")
    return 0
