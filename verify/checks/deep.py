"""Check 9 (only with --deep): reproduce the score from the artifact and probe the evaluation.

For folders made by our trainer (pgolf_json logs): per seed with its artifact in the folder,
``EVAL_ONLY=1 ARTIFACT=... python train_gpt.py`` (through torch.distributed.run with the logged
world size when this machine has that many GPUs) with the hyperparameters its log recorded, the val
shards of ``--data`` and ``--tokenizer``; the reproduced val_bpb must match the logged one within
``--deep-tolerance`` (default as ``pgolf reproduce``: 1e-4, 1e-3 for a TTT score). Then
``python -m verify.deep_probe`` runs trainer.probes' causality and score-before-update probes on
the dequantized model. Each part SKIPs with the reason when the trainer modules, the data or the
artifacts are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from verify.checks.size import ARTIFACT_SUFFIXES
from verify.checks.tokenizer import val_pattern
from verify.context import Context
from verify.logparse import RunSummary, parse_log
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "deep", 9
RULE = "our trainer only: eval-only reproduction of each artifact, causality and score-before-update probes"
OVERRIDDEN = {
    "eval_only",
    "artifact",
    "data_path",
    "tokenizer_path",
    "output_dir",
    "run_id",
    "extra",
    "preset",
}
REPO_ROOT = Path(__file__).resolve().parents[2]
TOL_PLAIN, TOL_TTT = 1e-4, 1e-3  # bits/byte; TTT's SGD steps amplify non-deterministic GPU kernels


def _nproc(s: RunSummary) -> int:
    """The logged world size when this machine has that many GPUs, else one process."""
    want = s.world_size or 1
    if want <= 1:
        return 1
    try:
        import torch

        return want if torch.cuda.device_count() >= want else 1
    except ImportError:
        return 1


def _command(ctx: Context, nproc: int) -> list[str]:
    script = str(ctx.train_gpt.resolve())
    if nproc <= 1:
        return [sys.executable, script]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        script,
    ]


def uses_our_trainer(ctx: Context) -> bool:
    if any(s.format == "pgolf" for s in ctx.logs):
        return True
    src = ctx.source()
    return bool(src and "pgolf_json" in src.text)


def hparam_env(hparams: dict) -> dict[str, str]:
    env = {}
    for k, v in hparams.items():
        if k in OVERRIDDEN or isinstance(v, dict | list) or v is None:
            continue
        env[k.upper()] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    if "preset" in hparams and isinstance(hparams["preset"], str):
        env["PRESET"] = hparams["preset"]
    return env


def artifact_for(ctx: Context, s: RunSummary) -> Path | None:
    names = []
    if s.artifact_name:
        names.append(Path(s.artifact_name).name)
    stem = Path(s.path).name.split(".")[0]
    names += [f for f in ctx.files if f.endswith(ARTIFACT_SUFFIXES) and Path(f).name.split(".")[0] == stem]
    for n in names:
        for f in ctx.files:
            if Path(f).name == Path(n).name:
                return ctx.folder / f
    return None


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    o = ctx.options
    if not o.deep:
        r.add(SKIP, "not asked (--deep)")
        return r
    if ctx.folder is None or ctx.train_gpt is None:
        r.add(SKIP, "no train_gpt.py")
        return r
    if not uses_our_trainer(ctx):
        r.add(
            SKIP, "the folder does not use our trainer (no pgolf_json log lines): nothing to reproduce with"
        )
        return r
    if not o.data or not o.tokenizer:
        r.add(SKIP, "needs --data DIR (val shards) and --tokenizer FILE")
        return r
    if not os.path.isfile(o.tokenizer):
        r.add(SKIP, f"--tokenizer {o.tokenizer}: no such file")
        return r
    import glob

    if not glob.glob(val_pattern(o.data)):
        r.add(SKIP, f"--data {o.data}: no validation shards ({val_pattern(o.data)})")
        return r
    runs = [(s, artifact_for(ctx, s)) for s in ctx.runs if s.format == "pgolf"]
    runs = [(s, a) for s, a in runs if a is not None]
    if not runs:
        r.add(SKIP, "no artifact file (*.ptz) next to the logs: nothing to reproduce")
        return r
    for s, art in runs:
        _reproduce(ctx, r, s, art)
    s, art = runs[0]
    _probes(ctx, r, s, art)
    return r


def _env(ctx: Context, s: RunSummary, art: Path, out: str, run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(hparam_env(s.hparams))
    env.update(
        EVAL_ONLY="1",
        ARTIFACT=str(art.resolve()),
        DATA_PATH=os.path.abspath(ctx.options.data),
        TOKENIZER_PATH=os.path.abspath(ctx.options.tokenizer),
        OUTPUT_DIR=out,
        RUN_ID=run_id,
    )
    if s.seed is not None:
        env["SEED"] = str(s.seed)
    return env


def _reproduce(ctx: Context, r: CheckResult, s: RunSummary, art: Path) -> None:
    nproc = _nproc(s)
    with tempfile.TemporaryDirectory(prefix="verify_deep_") as out:
        run_id = f"reproduce_{Path(s.path).name.split('.')[0]}"
        try:
            proc = subprocess.run(
                _command(ctx, nproc),
                cwd=out,
                env=_env(ctx, s, art, out, run_id),
                capture_output=True,
                text=True,
                timeout=ctx.options.deep_timeout_s,
            )
        except subprocess.TimeoutExpired:
            r.add(FAIL, f"{art.name}: eval-only run exceeded {ctx.options.deep_timeout_s:.0f} s")
            return
        tail = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()][-1:] or [
            ""
        ]
        if proc.returncode != 0:
            r.add(
                FAIL, f"{art.name}: EVAL_ONLY=1 python train_gpt.py exited {proc.returncode}: {tail[0][:200]}"
            )
            return
        got = parse_log(os.path.join(out, f"{run_id}.log"))
        if got.val_bpb is None:
            got.val_bpb = _from_stdout(proc.stdout)
    if got.val_bpb is None:
        r.add(FAIL, f"{art.name}: the eval-only run logged no final val_bpb")
        return
    diff = abs(got.val_bpb - s.val_bpb)
    tol = ctx.options.deep_tolerance_bpb
    if tol is None:
        tol = TOL_TTT if s.final_phase and "ttt" in s.final_phase else TOL_PLAIN
    status = PASS if diff <= tol else FAIL
    r.add(
        status,
        f"{art.name}: eval-only val_bpb {got.val_bpb:.8f} vs {s.path} {s.val_bpb:.8f} "
        f"(|diff| {diff:.2e}, tolerance {tol:g}, {nproc} process(es))",
    )


def _from_stdout(text: str) -> float | None:
    from verify.logparse import parse_log_text

    return parse_log_text(text).val_bpb


def _probes(ctx: Context, r: CheckResult, s: RunSummary, art: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="verify_probe_") as out:
        env = _env(ctx, s, art, out, "probe")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "verify.deep_probe"],
                cwd=out,
                env=env,
                capture_output=True,
                text=True,
                timeout=ctx.options.deep_timeout_s,
            )
        except subprocess.TimeoutExpired:
            r.add(FAIL, f"probes on {art.name}: exceeded {ctx.options.deep_timeout_s:.0f} s")
            return
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 3:
        r.add(SKIP, f"probes: {(proc.stdout.strip().splitlines() or [''])[-1][:200]}")
        return
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        r.add(FAIL, f"probes on {art.name}: exited {proc.returncode}: {tail[0][:200]}")
        return
    for ln in lines:
        try:
            res = json.loads(ln)
        except json.JSONDecodeError:
            continue
        r.add(
            PASS if res.get("passed") else FAIL,
            f"probe {res.get('name')} on {art.name}: {res.get('message')}",
        )
    if not lines:
        r.add(WARN, "probes printed nothing")
