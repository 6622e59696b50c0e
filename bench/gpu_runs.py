"""The GPU benchmark runs (issues 3, 4, 5), each through the packed submission/train_gpt.py.

Runs, in the order given (each one a fresh process, logs to OUT/<run_id>.log + .console.txt):
  record    PRESET=record on bench text, sp8192 (bench/text_data.py), a fixed training wallclock,
            then the whole final pipeline: GPTQ -> artifact -> quantized / sliding / TTT eval
  baseline  PRESET=baseline (the challenge's naive baseline as a preset) on the same text, sp1024,
            same wallclock
  reproduce EVAL_ONLY=1 on OUT/record.ptz (or --artifact) with the record run's settings, no
            training shards: the reproduction check

    python3 bench/gpu_runs.py record baseline --data .gpu --out $OUT --train-seconds 180
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

SCRIPT = "submission/train_gpt.py"


def common(a) -> dict:
    # WARMUP_STEPS=3: the compile warm-up is undone anyway; fewer steps only save device time.
    # TTT_CHUNK_TOKENS=4096: on one GPU, each chunk is one rank's share of a 32K chunk on 8 GPUs
    # (the same windows scored and sequences trained per rank), so per-chunk times extrapolate.
    # EMA_DECAY=0.95: 0.9965 averages over ~285 steps, 6% of a 600 s run on 8 GPUs but more than
    # the whole of a 180 s run on one (the init weights would keep ~50% weight); 0.95 keeps the
    # horizon at ~10% of the run.
    return {"MAX_WALLCLOCK_SECONDS": str(a.train_seconds), "GPTQ_RESERVE_SECONDS": "0", "EMA_DECAY": "0.95",
            "TRAIN_LOG_EVERY": "5", "OUTPUT_DIR": a.out, "SEED": "42", "WARMUP_STEPS": "3",
            "TTT_CHUNK_TOKENS": "4096"}


def sp(a, v: int) -> dict:
    return {"DATA_PATH": os.path.join(a.data, "datasets", f"text_sp{v}"),
            "TOKENIZER_PATH": os.path.join(a.data, "tokenizers", f"fineweb_{v}_bpe.model")}


def val_only(a, v: int) -> str:
    """A folder with the val shard only: eval-only runs prove they need no training data."""
    d = os.path.join("/tmp", f"val_only_sp{v}")
    os.makedirs(d, exist_ok=True)
    src = sp(a, v)["DATA_PATH"]
    for f in os.listdir(src):
        if f.startswith("fineweb_val_"):
            shutil.copy(os.path.join(src, f), d)
    return d


def run(name: str, env_over: dict, timeout: float) -> int:
    """One trainer process; its own log is OUT/<name>.log, stdout+stderr OUT/<name>.console.txt."""
    env = {**os.environ, "RUN_ID": name, **env_over}
    out = env["OUTPUT_DIR"]
    t0 = time.time()
    with open(os.path.join(out, f"{name}.console.txt"), "w") as con:
        try:
            rc = subprocess.run([sys.executable, SCRIPT], env=env, stdout=con, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    print(f"== {name}: exit {rc} after {time.time() - t0:.0f}s", flush=True)
    return rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", choices=["record", "baseline", "reproduce"])
    ap.add_argument("--data", default=".gpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-seconds", type=float, default=180)
    ap.add_argument("--val-every", type=int, default=25, help="record run; baseline uses 2x")
    ap.add_argument("--artifact", help="for reproduce (default OUT/record.ptz)")
    ap.add_argument("--timeout", type=float, default=560, help="per run, seconds")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    art = os.path.abspath(a.artifact or os.path.join(a.out, "record.ptz"))
    for r in a.runs:
        if r == "record":
            run("record", {**common(a), **sp(a, 8192), "PRESET": "record",
                           "VAL_LOSS_EVERY": str(a.val_every)}, a.timeout)
        elif r == "baseline":
            run("baseline", {**common(a), **sp(a, 1024), "PRESET": "baseline",
                             "VAL_LOSS_EVERY": str(2 * a.val_every)}, a.timeout)
        else:
            run(r, {**common(a), **sp(a, 8192), "PRESET": "record", "EVAL_ONLY": "1", "ARTIFACT": art,
                    "DATA_PATH": val_only(a, 8192)}, a.timeout)


if __name__ == "__main__":
    main()
