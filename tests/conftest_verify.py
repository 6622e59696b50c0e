"""Records folders for verify's tests, generated from one small template.

``make_record(root, ...)`` writes README.md, train_gpt.py, one log per seed (our pgolf format through
trainer.runlog.RunLog, or the challenge's conventional lines) and a submission.json whose numbers
agree with the logs; keyword arguments break one thing at a time.
"""

from __future__ import annotations

import base64
import json
import lzma
import statistics
import subprocess
import sys
from pathlib import Path

from trainer.runlog import RunLog

LIMIT = 16_000_000
SEEDS = (42, 314, 999)
LOSSES = {42: 2.30011234, 314: 2.30122345, 999: 2.29933456}
BPB_PER_LOSS = 0.45678  # val_bpb = val_loss * this (any fixed tokens/bytes ratio)

# train() and quantize() of every stand-in train_gpt.py (tests/verify_fixtures.py's scaffold has them too)
TRAIN_AND_QUANTIZE = '''def train(model, opt, train_loader, steps):
    for step in range(steps):
        x, y = train_loader.next_batch()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()


def quantize(model):
    return {k: v.half() for k, v in model.state_dict().items()}
'''

CLEAN_TRAIN_GPT = '''"""A tiny stand-in for a record's train_gpt.py: verify's tests scan it, never run it."""
import os

import torch

DATA_PATH = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp8192")


def eval_val(model, val_tokens):
    with torch.no_grad():
        return model(val_tokens[:-1], val_tokens[1:])


''' + TRAIN_AND_QUANTIZE + '''

def main(model, opt, train_loader, val_tokens):
    train(model, opt, train_loader, 10)
    q = quantize(model)
    print(eval_val(model, val_tokens), len(q))
'''

PREQUANT_TTT_TRAIN_GPT = CLEAN_TRAIN_GPT.replace(
    """def quantize(model):""",
    """def adapt(model, opt, val_tokens, epochs):
    for _ in range(epochs):
        loss = model(val_tokens[:-1], val_tokens[1:])
        loss.backward()
        opt.step()


def quantize(model):""",
).replace(
    """    train(model, opt, train_loader, 10)
    q = quantize(model)""",
    """    train(model, opt, train_loader, 10)
    adapt(model, opt, val_tokens, 3)
    q = quantize(model)""",
)


def packed(source: str) -> str:
    """A self-extracting wrapper, as packed submissions look (b85 + lzma + exec)."""
    blob = base64.b85encode(lzma.compress(source.encode())).decode()
    return f'import base64, lzma\nexec(lzma.decompress(base64.b85decode("{blob}")))\n'


def pgolf_log(
    path: Path,
    seed: int,
    val_loss: float,
    val_bpb: float,
    *,
    train_ms: float,
    eval_ms: float,
    code_bytes: int,
    model_bytes: int,
    steps: int = 5000,
    device: str = "NVIDIA H100 80GB HBM3",
    devices: int = 8,
    truncated: bool = False,
    eval_tokens: int = 1_000_000,
    eval_bytes: int = 2_000_000,
) -> None:
    log = RunLog(str(path))
    log.event(
        "run_start",
        seed=seed,
        run_id=path.stem,
        world_size=devices,
        grad_accum_steps=1,
        device_name=device,
        device_count=devices,
        torch_version="2.9.1+cu128",
        python_version="3.12",
        cuda_version="12.8",
        attention_backend="sdpa",
        eval_only=False,
        hparams={
            "seed": seed,
            "iterations": 20000,
            "tokenizer_path": "./data/tokenizers/fineweb_8192_bpe.model",
        },
    )
    for step in (1, 500, 1000):
        log.line(
            f"step:{step}/20000 train_loss:{3.5 - step / 1000:.4f} train_time:{step * 100}ms "
            "step_avg:100.00ms "
            "tok/s:7000000"
        )
        log.event(
            "train",
            step=step,
            iterations=20000,
            train_loss=3.5 - step / 1000,
            train_time_ms=step * 100.0,
            tok_s=7e6,
        )
    if truncated:
        return
    log.line(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{steps}/20000")
    log.event(
        "train_end",
        steps=steps,
        iterations=20000,
        train_time_ms=train_ms,
        stop_reason="wallclock_cap",
        peak_mem_mib=30000,
    )
    total = code_bytes + model_bytes
    log.line(f"Code size: {code_bytes} bytes")
    log.line(f"Total submission size quantized+brotli: {total} bytes")
    log.event(
        "artifact",
        artifact=f"{path.stem}.ptz",
        code_bytes=code_bytes,
        model_bytes=model_bytes,
        total_bytes=total,
        limit_bytes=LIMIT,
        headroom_bytes=LIMIT - total,
        codec="brotli",
    )
    log.line(
        f"quantized_sliding_window val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f} eval_time:{eval_ms:.0f}ms"
    )
    log.event(
        "eval",
        phase="sliding_window",
        val_loss=val_loss,
        val_bpb=val_bpb,
        eval_time_ms=eval_ms,
        tokens=eval_tokens,
        bytes=eval_bytes,
    )
    log.event(
        "final",
        seed=seed,
        phase="sliding_window",
        val_loss=val_loss,
        val_bpb=val_bpb,
        eval_time_ms=eval_ms,
        train_time_ms=train_ms,
        code_bytes=code_bytes,
        model_bytes=model_bytes,
        total_bytes=total,
    )


def conventional_log(
    seed: int,
    val_loss: float,
    val_bpb: float,
    *,
    train_ms: float,
    eval_ms: float,
    code_bytes: int,
    model_bytes: int,
    steps: int = 5000,
    with_source: bool = True,
    truncated: bool = False,
) -> str:
    """The challenge's scripts' format (excerpts of real logs, numbers ours), source code first."""
    out = []
    if with_source:
        out += [
            '"""train_gpt.py: printed at the top of the log, as the challenge scripts do."""',
            "import os",
            "def report(q_val_loss, q_val_bpb, code_bytes):",
            '    log0(f"final_int8_zlib_roundtrip_exact val_loss:{q_val_loss:.8f} val_bpb:{q_val_bpb:.8f}")',
            '    log0(f"Total submission size int8+zlib: {code_bytes} bytes")',
            "final_int8_zlib_roundtrip_exact val_loss:9.99 val_bpb:9.99",
            "=" * 100,
        ]
    out += [
        "Running PyTorch 2.9.1+cu128",
        "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |",
    ]
    out += [
        f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:2A:00.0 Off |                    0 |"
        for i in range(1, 8)
    ]
    out += [
        "=" * 100,
        "val_bpb:enabled tokenizer_kind=sentencepiece "
        "tokenizer_path=./data/tokenizers/fineweb_1024_bpe.model",
        "val_loader:shards pattern=./data/datasets/fineweb10B_sp1024/fineweb_val_*.bin tokens:62021632",
        "world_size:8 grad_accum_steps:1",
        f"seed:{seed}",
        "warmup_step:1/20",
    ]
    out += [
        f"step:{s}/20000 train_loss:{3.0 - s / 10000:.4f} train_time:{s * 100}ms step_avg:100.00ms"
        for s in (1, 2, 200, 400)
    ]
    if truncated:
        out.append("step:600/20000 train_loss:2.94")
        return "\n".join(out)
    total = code_bytes + model_bytes
    out += [
        f"step:{steps}/20000 val_loss:{val_loss + 0.03:.4f} val_bpb:{val_bpb + 0.01:.4f} "
        f"train_time:{train_ms:.0f}ms step_avg:100.00ms",
        f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{steps}/20000",
        "peak memory allocated: 20600 MiB reserved: 20660 MiB",
        "Serialized model: 105783807 bytes",
        f"Code size: {code_bytes} bytes",
        f"Serialized model int6+zstd: {model_bytes} bytes",
        f"Total submission size int6+zstd: {total} bytes",
        f"final_int6_roundtrip val_loss:{val_loss + 0.04:.4f} val_bpb:{val_bpb + 0.02:.4f} eval_time:5637ms",
        f"final_int6_roundtrip_exact val_loss:{val_loss + 0.04:.8f} val_bpb:{val_bpb + 0.02:.8f}",
        f"final_int6_sliding_window val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} stride:64 "
        f"eval_time:{eval_ms - 5637:.0f}ms",
        f"final_int6_sliding_window_exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}",
    ]
    return "\n".join(out) + "\n"


def make_record(
    root: Path,
    *,
    name: str = "2026-05-01_Test_Record",
    fmt: str = "pgolf",
    seeds=SEEDS,
    losses: dict | None = None,
    train_gpt: str = CLEAN_TRAIN_GPT,
    model_bytes: int | dict = 15_000_000,
    train_ms: float | dict = 590_000.0,
    eval_ms: float | dict = 420_000.0,
    sub_overrides: dict | None = None,
    truncated_seed: int | None = None,
    artifacts: bool = False,
) -> Path:
    """A records folder whose files agree with each other (a passing folder unless told otherwise)."""
    folder = root / "records" / "track_10min_16mb" / name
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# Test record\n\nGenerated by tests/conftest_verify.py.\n")
    (folder / "train_gpt.py").write_text(train_gpt)
    code = (folder / "train_gpt.py").stat().st_size
    losses = losses or LOSSES

    def per(v, seed):
        return v[seed] if isinstance(v, dict) else v

    seed_results, totals = {}, []
    for seed in seeds:
        loss = losses[seed]
        bpb = round(loss * BPB_PER_LOSS, 8)
        mb, tms, ems = per(model_bytes, seed), per(train_ms, seed), per(eval_ms, seed)
        kw = dict(
            train_ms=tms, eval_ms=ems, code_bytes=code, model_bytes=mb, truncated=seed == truncated_seed
        )
        log = folder / f"train_seed{seed}.log"
        if fmt == "pgolf":
            pgolf_log(log, seed, loss, bpb, **kw)
        else:
            log.write_text(conventional_log(seed, loss, bpb, **kw))
        if artifacts:
            with open(folder / f"train_seed{seed}.ptz", "wb") as f:
                f.truncate(mb)  # sparse: the size is what counts
        seed_results[str(seed)] = {
            "val_loss": loss,
            "val_bpb": bpb,
            "artifact_bytes": code + mb,
            "steps": 5000,
        }
        totals.append(code + mb)
    vl = [losses[s] for s in seeds]
    vb = [round(losses[s] * BPB_PER_LOSS, 8) for s in seeds]
    sub = {
        "author": "Test Author",
        "github_id": "test-author",
        "name": "Test record",
        "date": "2026-05-01",
        "blurb": "generated",
        "track": "10min_16mb",
        "hardware": "8xH100 80GB HBM3",
        "val_loss": round(statistics.fmean(vl), 8),
        "val_bpb": round(statistics.fmean(vb), 8),
        "val_loss_std": round(statistics.stdev(vl), 8) if len(vl) > 1 else 0.0,
        "val_bpb_std": round(statistics.stdev(vb), 8) if len(vb) > 1 else 0.0,
        "seeds": list(seeds),
        "seed_results": seed_results,
        "bytes_total": max(totals),
        "bytes_code": code,
    }
    sub.update(sub_overrides or {})
    (folder / "submission.json").write_text(json.dumps(sub, indent=2))
    return folder


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or Path(__file__).resolve().parents[1],
        timeout=120,
    )
