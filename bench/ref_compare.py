"""Side by side on one data set and schedule: our trainer (a preset) against a reference record script.

Both train the same number of steps of the same global batch on the same shards, validate every
VAL_EVERY steps, then quantize and score; the table gives val_bpb at the validation steps,
throughput before and after depth recurrence, and the final quantized score. The reference runs
with bench/shims/flash_attn_interface.py (our attention backends stand in for FlashAttention 3).
With two GPUs given the two runs go side by side (one GPU each); with one, one after the other on
the same GPU (what a speed comparison needs).

    python bench/ref_compare.py --ref ../shared/reference/r1493_1.0810/train_gpt.decoded.py \
        --preset pr1493 --data /tmp/bench/datasets/text_sp8192 \
        --tokenizer /tmp/bench/tokenizers/fineweb_8192_bpe.model --steps 200 --gpus 0,1 --out $OUT/cmp

Benchmark input only; the product never runs the reference scripts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIMS = ROOT / "bench" / "shims"
# ours: "step:S/N val_loss:L val_bpb:B"; references: "S/N val_loss: L val_bpb: B"
_VAL = re.compile(r"^(?:step:)?(\d+)/\d+ val_loss:\s*([\d.]+) val_bpb:\s*([\d.]+)", re.M)
_TRAIN = re.compile(r"^(?:step:)?(\d+)/\d+ train_loss:\s*([\d.]+) .*?tok/s:\s*([\d.]+)", re.M)
_LOOP = re.compile(r"^layer_loop:enabled step:\s*(\d+)", re.M)
_QUANT = re.compile(r"^(?:diagnostic )?quantized val_loss:\s*([\d.]+) val_bpb:\s*([\d.]+)", re.M)
_TTT = re.compile(r"^quantized_ttt\S* val_loss:\s*([\d.]+) val_bpb:\s*([\d.]+)", re.M)


def common_env(a) -> dict[str, str]:
    return {"ITERATIONS": str(a.steps), "MAX_WALLCLOCK_SECONDS": "0",
            "TRAIN_BATCH_TOKENS": str(a.batch_tokens), "VAL_LOSS_EVERY": str(a.val_every),
            "TRAIN_LOG_EVERY": "10", "SEED": str(a.seed),
            "WARMUP_STEPS": str(a.warmup), "VOCAB_SIZE": str(a.vocab), "TTT_ENABLED": "0",
            "GPTQ_RESERVE_SECONDS": "0", "PYTHONUNBUFFERED": "1"}


def ours_cmd(a, out: Path) -> tuple[list[str], dict[str, str], Path]:
    env = {**common_env(a), "PRESET": a.preset, "DATA_PATH": a.data, "TOKENIZER_PATH": a.tokenizer,
           "OUTPUT_DIR": str(out), "RUN_ID": "ours", "SLIDING_WINDOW": "0", "PREQUANT_EVAL": "0"}
    return [sys.executable, str(ROOT / a.script)], env, out / "ours.log"


def ref_cmd(a, out: Path) -> tuple[list[str], dict[str, str], Path]:
    """The reference reads DATA_DIR/datasets/fineweb10B_sp{V} and DATA_DIR/tokenizers/ unless told
    otherwise (the CaseOps one reads DATA_PATH/TOKENIZER_PATH); logs go to ./logs/RUN_ID.txt."""
    work = out / "ref_work"
    ds = work / "data" / "datasets"
    tk = work / "data" / "tokenizers"
    ds.mkdir(parents=True, exist_ok=True)
    tk.mkdir(parents=True, exist_ok=True)
    link = ds / f"fineweb10B_sp{a.vocab}"
    if not link.exists():
        link.symlink_to(Path(a.data).resolve())
    tok = tk / f"fineweb_{a.vocab}_bpe.model"
    if not tok.exists():
        shutil.copyfile(a.tokenizer, tok)
    env = {**common_env(a), "DATA_DIR": str(work / "data"), "RUN_ID": "ref", "SLIDING_WINDOW_ENABLED": "0",
           "DATA_PATH": a.data, "TOKENIZER_PATH": a.tokenizer,
           "PYTHONPATH": os.pathsep.join([str(SHIMS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for kv in a.ref_env:
        k, _, v = kv.partition("=")
        env[k] = v
    return [sys.executable, str(Path(a.ref).resolve())], env, work / "logs" / "ref.txt"


def launch(cmd: list[str], env: dict[str, str], gpu: str, console: Path, cwd: Path) -> subprocess.Popen:
    full = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": gpu}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # one process each: no process group
        full.pop(k, None)
    return subprocess.Popen(cmd, env=full, cwd=cwd, stdout=console.open("w"), stderr=subprocess.STDOUT)


def summarize(log: Path) -> dict:
    text = log.read_text(errors="replace") if log.exists() else ""
    vals = {int(s): float(b) for s, _l, b in _VAL.findall(text)}
    train = [(int(s), float(t)) for s, _l, t in _TRAIN.findall(text)]
    loop = _LOOP.search(text)
    loop_step = int(loop.group(1)) if loop else None
    # tok/s in both logs is cumulative (tokens so far / time so far): per-interval rates from it
    rates_before, rates_after = [], []
    for (s0, r0), (s1, r1) in zip(train, train[1:]):
        if s1 <= s0 or r0 <= 0 or r1 <= 0 or s0 < 10:
            continue
        dt = s1 / r1 - s0 / r0  # seconds per token-of-batch units cancel: relative time
        if dt <= 0:
            continue
        rate = (s1 - s0) / dt
        (rates_after if loop_step is not None and s0 >= loop_step else rates_before).append(rate)
    q = _QUANT.findall(text)
    t = _TTT.findall(text)
    return {"vals": vals, "loop_step": loop_step,
            "tok_s_before": statistics.median(rates_before) if rates_before else None,
            "tok_s_after": statistics.median(rates_after) if rates_after else None,
            "quantized_bpb": float(q[-1][1]) if q else None, "ttt_bpb": float(t[-1][1]) if t else None,
            "found": bool(text)}


def fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def table(res: dict[str, dict], steps: list[int]) -> str:
    head = "| run | " + " | ".join(f"val_bpb @{s}" for s in steps) + \
        " | tok/s before loop | tok/s after loop | quantized val_bpb |"
    lines = [head, "|" + " --- |" * (4 + len(steps))]
    for name, r in res.items():
        cells = [fmt(r["vals"].get(s)) for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(r['tok_s_before'], ',.0f')} | "
                     f"{fmt(r['tok_s_after'], ',.0f')} | {fmt(r['quantized_bpb'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the reference train_gpt.py")
    ap.add_argument("--preset", default="pr1493")
    ap.add_argument("--script", default="submission/train_gpt.py", help="ours, relative to the repo")
    ap.add_argument("--data", required=True, help="folder with fineweb_{train,val}_*.bin")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-tokens", type=int, default=196_608)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--gpus", default="0", help="'0' (one after the other) or '0,1' (side by side)")
    ap.add_argument("--ref-env", nargs="*", default=[], help="extra K=V for the reference only")
    ap.add_argument("--only", choices=["ours", "ref"], help="run one side only")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=560)
    ap.add_argument("--md", help="also write the table here")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = a.gpus.split(",")
    jobs = {"ours": ours_cmd(a, out), "ref": ref_cmd(a, out)}
    if a.only:
        jobs = {a.only: jobs[a.only]}
    t0 = time.time()
    procs = {}
    for i, (name, (cmd, env, _log)) in enumerate(jobs.items()):
        gpu = gpus[i % len(gpus)]
        cwd = out / "ref_work" if name == "ref" else ROOT
        p = launch(cmd, env, gpu, out / f"{name}.console.txt", cwd)
        if len(gpus) == 1:  # same GPU: strictly one after the other
            try:
                p.wait(timeout=max(1.0, a.timeout - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
        procs[name] = p
    for name, p in procs.items():
        try:
            p.wait(timeout=max(1.0, a.timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
        print(f"== {name}: exit {p.returncode} ({time.time() - t0:.0f}s since start)", flush=True)
    res = {name: summarize(log) for name, (_c, _e, log) in jobs.items()}
    steps = sorted({s for r in res.values() for s in r["vals"]})
    md = table(res, steps)
    print(md)
    if a.md:
        Path(a.md).write_text(md + "\n")
    return 0 if all(r["found"] for r in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
