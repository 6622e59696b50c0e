"""``pgolf reproduce DIR``: re-run the final evaluation from each saved artifact; compare val_bpb.

Per seed: ``EVAL_ONLY=1 ARTIFACT=DIR/train_seed{SEED}.ptz torchrun --standalone --nproc_per_node=N
DIR/train_gpt.py`` with the hyperparameters the seed's log recorded (its run_start event), and a
data folder that holds only the validation shards (symbolic links to the val shards of DATA_PATH),
so the run proves it needs no training data. The reproduced val_bpb must match the logged one:

  |reproduced - logged| <= --tol; default 1e-4 bits/byte when the scored phase is a plain or
  sliding-window evaluation (deterministic up to float summation order), 1e-3 when it is test-time
  training (``ttt``), whose SGD steps amplify non-deterministic GPU kernels.

Run it on the hardware of the original run (N defaults to the logged world size). Outputs go to
the scratch folder ``.{DIR}.pgolf/reproduce/`` next to DIR, never into the records folder.
Exit 1 when a seed does not match or its run fails.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

from pgolf.errors import PgolfError, os_error_message
from pgolf.launch import check_inputs, error_line, parse_env_pairs, run_streamed, torchrun_command
from pgolf.runs import folder_seeds, load_run, require_score, scratch_dir, seed_files

TOL_PLAIN = 1e-4
TOL_TTT = 1e-3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="records folder")
    p.add_argument("--seeds", type=int, nargs="+", help="default: every seed of the folder")
    p.add_argument("--nproc", type=int, help="processes per run (default: the logged world size)")
    p.add_argument("--tol", type=float,
                   help=f"val_bpb tolerance (default {TOL_PLAIN:g}; {TOL_TTT:g} for TTT)")
    p.add_argument("--data-path", help="folder with the val shards (default: the logged DATA_PATH)")
    p.add_argument("--tokenizer-path", help="tokenizer model (default: the logged TOKENIZER_PATH)")
    p.add_argument("--env", nargs="+", action="extend", default=[], metavar="K=V", help="extra environment")
    p.add_argument("--no-gpu-check", action="store_true", help="launch even without enough CUDA GPUs")
    return p


def tolerance(phase: str | None, tol: float | None) -> float:
    if tol is not None:
        return tol
    return TOL_TTT if phase and "ttt" in phase else TOL_PLAIN


def val_only_dir(data_path: str, work: str) -> str:
    """A folder of links to the val shards of ``data_path`` only (no training data reachable)."""
    shards = sorted(glob.glob(os.path.join(data_path, "fineweb_val_*.bin")))
    if not shards:
        raise PgolfError(f"{data_path}: no fineweb_val_*.bin shards (pass --data-path)")
    dest = os.path.join(work, "val_data", os.path.basename(os.path.normpath(data_path)))
    try:
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        for s in shards:
            os.symlink(os.path.abspath(s), os.path.join(dest, os.path.basename(s)))
    except OSError as e:
        raise PgolfError(os_error_message(e, dest)) from None
    return dest


def main(argv: list[str] | None = None) -> int:
    from verify.checks.deep import hparam_env  # the verifier's rule for replaying logged hparams

    args = build_parser().parse_args(argv)
    folder = args.folder
    script = os.path.join(folder, "train_gpt.py")
    if not os.path.isfile(script):
        raise PgolfError(f"{script}: not found")
    seeds = args.seeds or folder_seeds(folder)
    extra = parse_env_pairs(args.env)
    work = os.path.join(scratch_dir(folder), "reproduce")
    rows, bad = [], 0
    for seed in seeds:
        f = seed_files(folder, seed)
        run = load_run(f.log)
        require_score(run)
        if not os.path.isfile(f.artifact):
            raise PgolfError(f"{f.artifact}: artifact not found")
        hp = run.hparams or {}
        data = args.data_path or hp.get("data_path")
        tok = args.tokenizer_path or hp.get("tokenizer_path")
        if not data or not tok:
            raise PgolfError(f"{f.log}: no data/tokenizer path logged; pass --data-path and --tokenizer-path")
        env = {**os.environ, **hparam_env(hp), **extra}
        run_id = f"reproduce_seed{seed}"
        env.update(EVAL_ONLY="1", ARTIFACT=os.path.abspath(f.artifact), SEED=str(seed), RUN_ID=run_id,
                   OUTPUT_DIR=work, DATA_PATH=val_only_dir(data, work), TOKENIZER_PATH=os.path.abspath(tok))
        nproc = args.nproc or run.world_size or 1
        check_inputs(env, nproc, need_train=False, gpu_check=not args.no_gpu_check)
        out_log = os.path.join(work, f"{run_id}.log")
        if os.path.exists(out_log):
            os.unlink(out_log)  # the trainer appends
        cmd = torchrun_command(script, nproc)
        print(f"== seed {seed}: EVAL_ONLY=1 ARTIFACT={f.artifact} {' '.join(cmd[2:])}", flush=True)
        rc, tail = run_streamed(cmd, env, os.path.join(work, f"{run_id}.console.txt"))
        got = load_run(out_log) if os.path.isfile(out_log) else None
        tol = tolerance(run.final_phase, args.tol)
        if rc != 0 or got is None or got.val_bpb is None:
            rows.append((seed, run.final_phase, run.val_bpb, None, None, tol,
                         f"FAIL: eval-only run exit code {rc}: {error_line(tail)}"))
            bad += 1
            continue
        diff = got.val_bpb - run.val_bpb
        ok = abs(diff) <= tol
        bad += not ok
        rows.append((seed, run.final_phase, run.val_bpb, got.val_bpb, diff, tol, "ok" if ok else "FAIL"))
    print(f"\n{'seed':>6} {'phase':<16} {'logged':>12} {'reproduced':>12} {'diff':>10} {'tol':>8}  verdict")
    for seed, phase, logged, got, diff, tol, verdict in rows:
        g = f"{got:12.8f}" if got is not None else f"{'-':>12}"
        d = f"{diff:+10.2e}" if diff is not None else f"{'-':>10}"
        print(f"{seed:>6} {phase or '?':<16} {logged:12.8f} {g} {d} {tol:8.0e}  {verdict}")
    if bad:
        print(f"reproduce: FAIL ({bad} of {len(rows)} seed(s)); outputs in {work}")
        return 1
    print(f"reproduce: ok, every seed's val_bpb reproduced from its artifact (outputs in {work})")
    return 0
