"""``pgolf budget DIR``: training and evaluation wallclock per seed, from the logs, against 600 s each.

The limits hold on 8xH100. When a log says the run was on other hardware (device name and count
from its run_start event), the times are printed for information and the verdict says the limit
was NOT checked (exit 0). On 8xH100, a seed over either limit exits 1.
"""

from __future__ import annotations

import argparse

from pgolf.runs import folder_seeds, load_run, seed_files
from verify.limits import EVAL_LIMIT_S, TRAIN_LIMIT_S
from verify.logparse import RunSummary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="records folder")
    p.add_argument("--train-limit", type=float, default=TRAIN_LIMIT_S, help="seconds (default 600)")
    p.add_argument("--eval-limit", type=float, default=EVAL_LIMIT_S, help="seconds (default 600)")
    return p


def on_8xh100(run: RunSummary) -> bool:
    count = run.device_count or run.world_size
    return count == 8 and "H100" in (run.device_name or "").upper()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seeds = folder_seeds(args.folder)
    print(f"{'seed':>6} {'train s':>9} {'eval s':>9}  hardware  verdict")
    over, unchecked, unknown = 0, 0, 0
    for seed in seeds:
        run = load_run(seed_files(args.folder, seed).log)
        train_s = run.train_time_ms / 1000 if run.train_time_ms is not None else None
        eval_s = run.eval_time_ms / 1000 if run.eval_time_ms is not None else None
        hw = f"{run.device_count or run.world_size or '?'}x {run.device_name or 'unknown device'}"
        problems = []
        if train_s is None or eval_s is None:
            problems.append("time missing from the log")
            unknown += 1
        if train_s is not None and train_s > args.train_limit:
            problems.append(f"training {train_s:.1f} s > {args.train_limit:.0f} s")
        if eval_s is not None and eval_s > args.eval_limit:
            problems.append(f"evaluation {eval_s:.1f} s > {args.eval_limit:.0f} s")
        if not on_8xh100(run):
            unchecked += 1
            verdict = "NOT CHECKED (not 8xH100)"
            if problems:
                verdict += f"; would fail: {'; '.join(problems)}"
        elif problems:
            over += 1
            verdict = "FAIL: " + "; ".join(problems)
        else:
            verdict = "ok"
        ts = f"{train_s:9.1f}" if train_s is not None else f"{'?':>9}"
        es = f"{eval_s:9.1f}" if eval_s is not None else f"{'?':>9}"
        print(f"{seed:>6} {ts} {es}  {hw}  {verdict}")
    if unchecked:
        print(f"budget: the 600 s limits were NOT checked for {unchecked} of {len(seeds)} seed(s): they did "
              f"not run on 8xH100, so their times say nothing about the challenge's limits")
    if over:
        print(f"budget: FAIL ({over} seed(s) over a limit on 8xH100)")
        return 1
    if unchecked == 0:
        print(f"budget: ok, every seed within {args.train_limit:.0f} s training and {args.eval_limit:.0f} s "
              f"evaluation on 8xH100")
    return 0
