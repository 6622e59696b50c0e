"""Training throughput of our trainer at the record config on one GPU (synthetic tokens).

    python bench/train_throughput.py [--variants default,multi_kernel,...] [--attn] [--out DIR]

In one process (it fits one device call):
  * environment: torch / CUDA / cuDNN versions, device;
  * with --attn, an attention micro-benchmark: causal bf16 SDPA forward+backward at the training
    shape (48 x 2048 tokens, 8 query / 4 KV heads, head dim 64) per SDPA backend and GQA handling;
  * per variant (inductor options of the training compile): run_training() at the record config
    (11 layers, seq 2048, global batch 786,432 tokens, grad accumulation 8 on one GPU,
    torch.compile) on random tokens from a synthetic shard. "both" variants switch recurrence on
    half-way (by steps) and give tokens/s before and after; "rec" variants run with recurrence on
    from step 0 (no warm-up, only the looped graph compiled). Per-step times come from the train
    events; the first 2 steps of each phase are skipped;
  * for the default variant: a torch.profiler look at one compiled micro-step in each mode (time
    by kernel class, top kernels to profile_rec*.txt), and the optimizer step / EMA update alone.
A short table goes to stdout last; logs and JSON go to --out (default $OUT or ./bench_out).
Results and the commands used: bench/notes-trainer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from trainer.attention import attention_backend, select_attention_backend  # noqa: E402
from trainer.config import Hyperparameters  # noqa: E402
from trainer.data import HEADER_INTS, SHARD_MAGIC, SHARD_VERSION  # noqa: E402
from trainer.dist import DistInfo  # noqa: E402
from trainer.optim import build_optimizers  # noqa: E402
from trainer.runlog import RunLog, parse_json_lines  # noqa: E402
from trainer.train import autocast_context, run_training  # noqa: E402

try:
    from flops import train_flops_per_token  # bench/flops.py
except Exception:  # noqa: BLE001
    train_flops_per_token = None


def cuda_time_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def attention_bench(report: dict) -> list[tuple[str, str]]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, T, H, HKV, D = 48, 2048, 8, 4, 64
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    dy = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, generator=g)
    flops_fb = 4 * B * T * T * H * D / 2 * 3.5  # causal; backward ~2.5x forward
    rows = []
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    ref = None
    for name, be in backends.items():
        for gqa in ("enable_gqa", "repeat_kv"):
            def run(be=be, gqa=gqa):
                qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                with sdpa_kernel([be]):
                    if gqa == "repeat_kv":
                        kr, vr = kt.repeat_interleave(2, 1), vt.repeat_interleave(2, 1)
                        y = F.scaled_dot_product_attention(qt, kr, vr, is_causal=True)
                    else:
                        y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
                y = y.transpose(1, 2)
                torch.autograd.backward(y, dy)
                return y
            try:
                y = run()
                if ref is None:
                    ref = y.detach().float()
                err = ((y.detach().float() - ref).norm() / ref.norm()).item()
                ms = cuda_time_ms(run)
                rows.append((f"attn {name}+{gqa} fwd+bwd", f"{ms:.2f} ms  {flops_fb / ms / 1e9:.0f} TFLOP/s  "
                                                           f"rel.err {err:.1e}"))
            except Exception as e:  # noqa: BLE001
                rows.append((f"attn {name}+{gqa}", f"unsupported: {str(e).splitlines()[0][:70]}"))
            q.grad = k.grad = v.grad = None
    report["attention"] = rows
    return rows


def write_synthetic_shard(directory: str, n_tokens: int, vocab: int) -> str:
    rng = np.random.default_rng(0)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, n_tokens)
    path = os.path.join(directory, "fineweb_train_000000.bin")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(rng.integers(0, vocab, n_tokens, dtype=np.uint16).astype("<u2").tobytes())
    return os.path.join(directory, "fineweb_train_*.bin")


def step_times(events: list[dict]) -> list[tuple[int, float]]:
    tr = [e for e in events if e["event"] == "train"]
    out, prev = [], 0.0
    for e in tr:
        out.append((e["step"], e["train_time_ms"] - prev))
        prev = e["train_time_ms"]
    return out


def profile_micro_step(runner, model, h, on: bool, path: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    model.set_recurrence(on)
    ids = torch.randint(0, h.vocab_size, (h.train_batch_tokens // 8 // h.train_seq_len, h.train_seq_len + 1),
                        device="cuda")
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def micro():
        with autocast_context(x.device):
            loss = runner(x, y)
        loss.backward()

    for _ in range(2):
        micro()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        micro()
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    classes: dict[str, float] = {}
    lines = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if t <= 0 or ev.key.startswith(("ProfilerStep", "aten::", "autograd", "cudaDeviceSynchronize")):
            continue
        k = ev.key.lower()
        if "attn" in k or "fmha" in k or "flash" in k or "cudnn" in k or "sdpa" in k:
            c = "attention"
        elif "gemm" in k or "nvjet" in k or "cutlass" in k or "xmma" in k or "matmul" in k:
            c = "gemm"
        elif k.startswith("triton"):
            c = "triton (fused elementwise/norm/CE)"
        else:
            c = "other"
        classes[c] = classes.get(c, 0.0) + t / 1000.0
        lines.append((t / 1000.0, ev.key[:100], ev.count))
    lines.sort(reverse=True)
    with open(path, "w") as f:
        for t, k, n in lines[:60]:
            f.write(f"{t:9.3f} ms  x{n:<4d} {k}\n")
    return classes


VARIANTS = {
    # name: (inductor options for the training compile, phases measured)
    "default": ({}, "both"),
    "multi_kernel": ({"triton.multi_kernel": 1}, "rec"),
    "fusion_cap32": ({"max_fusion_unique_io_buffers": 32}, "rec"),
    "fusion_cap32_both": ({"max_fusion_unique_io_buffers": 32}, "both"),
}


def run_variant(name: str, args, pattern: str, table: list, report: dict) -> None:
    import trainer.train as train_mod

    options, phases = VARIANTS[name]
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    train_mod.COMPILE_OPTIONS.clear()
    train_mod.COMPILE_OPTIONS.update(options)
    dev = torch.device("cuda")
    if phases == "both":
        steps, half = args.steps, args.steps // 2
        env = {"ITERATIONS": str(steps), "WARMUP_STEPS": str(args.warmup),
               "ENABLE_LOOPING_AT": str(half / steps)}
    else:  # recurrence from step 0, no warm-up: only the looped graph is compiled (during step 1)
        steps, half = args.rec_steps, 0
        env = {"ITERATIONS": str(steps), "WARMUP_STEPS": "0", "ENABLE_LOOPING_AT": "0"}
    h = Hyperparameters.from_env({"PRESET": "record", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_LOG_EVERY": "1",
                                  "VAL_LOSS_EVERY": "0", "RUN_ID": name, "OUTPUT_DIR": args.out, **env})
    log_path = os.path.join(args.out, f"train_{name}.log")
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    t0 = time.time()
    out = run_training(h, dist, RunLog(log_path), validate=None, train_pattern=pattern)
    wall = time.time() - t0
    st = step_times(parse_json_lines(open(log_path).read()))
    parts = []
    if phases == "both":  # skip the first 2 steps of each phase (allocator / cache settling)
        parts.append(("before recurrence", [ms for s_, ms in st if 3 <= s_ <= half], False))
    parts.append(("recurrence on", [ms for s_, ms in st if s_ >= half + 3 + (1 if half == 0 else 0)], True))
    res = {"options": options, "wall_s": wall, "peak_mem_mib": out.peak_mem_mib}
    for label, xs, on in parts:
        med = statistics.median(xs)
        tok_s = h.train_batch_tokens / (med / 1000.0)
        mfu = ""
        if train_flops_per_token is not None:
            mfu = f"  {train_flops_per_token(h, on) * tok_s / 1e12:.0f} TFLOP/s model"
        res[label] = dict(step_ms_median=med, step_ms_all=xs, tok_s=tok_s)
        table.append((f"[{name}] {label}", f"{med:.1f} ms/step  {tok_s / 1e6:.3f}M tok/s{mfu}"))
    table.append((f"[{name}] peak mem / wall",
                  f"{out.peak_mem_mib:.0f} MiB / {wall:.0f} s (compile+warmup+steps)"))
    report[name] = res
    if name == "default":
        for on in (False, True):
            try:
                prof_path = os.path.join(args.out, f"profile_rec{int(on)}.txt")
                cls = profile_micro_step(out.runner, out.model, h, on, prof_path)
                tot = sum(cls.values())
                table.append((f"[{name}] micro-step kernels (rec {'on' if on else 'off'})",
                              f"{tot:.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cls.items()))))
                report[f"profile_rec{int(on)}"] = cls
            except Exception as e:  # noqa: BLE001
                table.append(("profile", f"failed: {str(e)[:80]}"))
        model = out.model
        opt = build_optimizers(h, model)
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        ms_opt = cuda_time_ms(opt.step, iters=10)
        ema = [p.detach().float().clone() for p in params]
        detached = [p.detach() for p in params]
        ms_ema = cuda_time_ms(lambda: torch._foreach_lerp_(ema, detached, 0.0035), iters=10)
        table.append(("optimizer step / EMA update", f"{ms_opt:.2f} ms / {ms_ema:.2f} ms"))
        report["opt_ms"], report["ema_ms"] = ms_opt, ms_ema
    del out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24, help="steps of a two-phase variant (half without loops)")
    ap.add_argument("--rec-steps", type=int, default=10, help="steps of a recurrence-only variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="default", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--budget-s", type=float, default=400.0, help="start no variant after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--attn", action="store_true", help="also run the attention micro-benchmark")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    report: dict = {}
    table: list[tuple[str, str]] = []
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    cudnn = torch.backends.cudnn.version()
    report["env"] = dict(torch=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn,
                         device=props.name, sms=props.multi_processor_count)
    table.append(("device", f"{props.name}, torch {torch.__version__}, cuDNN {cudnn}"))
    print(json.dumps(report["env"]), flush=True)
    if args.attn:
        table += attention_bench(report)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    select_attention_backend(dev)
    table.append(("attention backend", attention_backend()))
    pattern = write_synthetic_shard(tempfile.mkdtemp(), 40_000_000, 8192)
    for name in [v for v in args.variants.split(",") if v]:
        if time.time() - t_start > args.budget_s:
            table.append((f"[{name}]", "skipped: time budget"))
            continue
        try:
            run_variant(name, args, pattern, table, report)
        except Exception as e:  # noqa: BLE001 - report and go on with the next variant
            table.append((f"[{name}]", f"failed: {type(e).__name__}: {str(e)[:120]}"))
        print("\n".join(f"{a}: {b}" for a, b in table[-4:]), flush=True)
    report["table"] = table
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n=== throughput ({time.time() - t_start:.0f} s total) ===")
    w = max(len(a) for a, _ in table)
    for a, b in table:
        print(f"{a:<{w}}  {b}")


if __name__ == "__main__":
    main()
