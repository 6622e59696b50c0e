"""Launch the trainer through torchrun, stream its output, and keep a copy of it.

``torchrun`` is run as ``python -m torch.distributed.run`` with the current interpreter (the same
program as the ``torchrun`` script, but always the one of this environment).
"""

from __future__ import annotations

import collections
import glob
import os
import signal
import subprocess
import sys

from pgolf.errors import PgolfError, os_error_message

PIPELINE_VARS = ("SEED", "RUN_ID", "OUTPUT_DIR", "ARTIFACT", "EVAL_ONLY")


def torchrun_command(script: str, nproc: int) -> list[str]:
    if nproc < 1:
        raise PgolfError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            script]


def parse_env_pairs(pairs: list[str] | None, reserved: tuple[str, ...] = PIPELINE_VARS) -> dict[str, str]:
    """``["K=V", ...]`` -> dict; the variables the pipeline sets itself cannot be overridden."""
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise PgolfError(f"--env {p!r}: expected KEY=VALUE")
        if key in reserved:
            raise PgolfError(f"--env {key}: set by the pipeline itself ({', '.join(reserved)})")
        out[key] = value
    return out


def effective_hparams(env: dict[str, str]):
    """The trainer's hyperparameters for this environment (to check paths before launching)."""
    from trainer.config import Hyperparameters

    try:
        return Hyperparameters.from_env(env)
    except ValueError as e:
        raise PgolfError(str(e)) from None


def check_inputs(env: dict[str, str], nproc: int, need_train: bool = True, gpu_check: bool = True) -> None:
    """Fail fast, with one line, on what would crash the trainer in its first seconds."""
    h = effective_hparams(env)
    data, tok = h.data_path, h.tokenizer_path
    if not os.path.isdir(data):
        raise PgolfError(f"{data}: data folder not found (DATA_PATH; prepare it with `python -m pgolf data`)")
    for split in (("train", "val") if need_train else ("val",)):
        if not glob.glob(os.path.join(data, f"fineweb_{split}_*.bin")):
            raise PgolfError(f"{data}: no fineweb_{split}_*.bin shards (DATA_PATH)")
    if not os.path.isfile(tok):
        raise PgolfError(f"{tok}: tokenizer not found (TOKENIZER_PATH)")
    if gpu_check and h.preset != "tiny":
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < nproc:
            raise PgolfError(f"PRESET={h.preset} needs {nproc} CUDA GPU(s) for --nproc {nproc}, found "
                             f"{have}; use PRESET=tiny for a CPU run (or --no-gpu-check)")


def run_streamed(cmd: list[str], env: dict[str, str], console_path: str, tail_lines: int = 40
                 ) -> tuple[int, list[str]]:
    """Run ``cmd``; echo its output live and save it to ``console_path``; return (exit code, tail)."""
    try:
        os.makedirs(os.path.dirname(console_path), exist_ok=True)
        console = open(console_path, "w", encoding="utf-8")
    except OSError as e:
        raise PgolfError(os_error_message(e, console_path)) from None
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with console:
        proc = subprocess.Popen(cmd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                console.write(line)
                tail.append(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:  # Ctrl-C, or our own output failing (a full disk): stop the run too
            proc.send_signal(signal.SIGINT)  # torchrun forwards it to the workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        sys.stdout.flush()
    return rc, list(tail)


def error_line(tail: list[str]) -> str:
    """The most telling line of a crashed run's output (the exception, else the last line)."""
    lines = [s.strip() for s in tail if s.strip() and "ChildFailedError" not in s]
    for s in reversed(lines):
        if s.startswith("error:") or (": " in s and s.split(":", 1)[0].endswith(("Error", "Exception"))):
            return s
    for s in reversed(lines):  # killed without a traceback (e.g. out of memory): torchrun's summary
        if s.startswith("exitcode"):
            return s
    lines = [s for s in lines if s.strip("=-")]
    return lines[-1] if lines else "no output"
