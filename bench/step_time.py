"""Compiled training-step time of a preset, attention backends and fused kernels side by side.

    python3 bench/step_time.py --preset pr1855 \
        --configs fa4:fused,sdpa_cudnn:fused,fa4:eager,sdpa_cudnn:eager --out $OUT/step_time.md

One process, one GPU. Per config (ATTENTION_BACKEND : fused kernels on/off), the model is built
by the trainer's own code (Hyperparameters.from_env with PRESET, ATTENTION_BACKEND, FUSED_CE,
FUSED_MLP set; trainer.train.build_model; trainer.optim.build_optimizers), compiled as the trainer
compiles it (fullgraph, static shapes, trainer.train.COMPILE_OPTIONS), and timed before and after
depth recurrence (set_recurrence(True): the second graph). A step is --grad-accum micro-steps of
the preset's micro-batch (TRAIN_BATCH_TOKENS / GRAD_ACCUM_STEPS tokens on one GPU, 8 micro-steps
for the presets) under bf16 autocast, forward+backward, then the optimizer step, as
trainer/train.py does; the first step of each graph (compilation) and one more are not timed;
the median of --steps timed steps is reported, with the full-batch step it implies
(micro-step time x the preset's accumulation + optimizer). Tokens are random with a BOS token at
document starts (log-normal lengths around 700 tokens); where model.forward takes cu_seqlens /
max_seqlen (document packing), it gets them (segments cut at every row of TRAIN_SEQ_LEN tokens,
padded to a multiple of 64 entries, max_seqlen = TRAIN_SEQ_LEN). A config that cannot run here
(FA4 not installed, say) is reported with its one-line reason. --budget-s stops starting new
graphs when the next one would not fit (compilation takes ~30-60 s a graph).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import math
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from trainer import attention as A  # noqa: E402
from trainer import kernels as K  # noqa: E402
from trainer.config import Hyperparameters  # noqa: E402
from trainer.optim import build_optimizers  # noqa: E402
from trainer.train import autocast_context, build_model, resolve_grad_accum  # noqa: E402

BOS_ID = 1


def random_batch(b: int, t: int, vocab: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(x, y) [b, t] int64 and the document starts in the flattened x (BOS there)."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(2, vocab, (b * t + 1,), generator=g)
    starts, pos = [], 0
    while pos < b * t + 1:
        starts.append(pos)
        pos += max(1, int(math.exp(6.2 + 0.8 * float(torch.randn(1, generator=g)))))
    stream[torch.tensor(starts)] = BOS_ID
    x, y = stream[:-1].view(b, t), stream[1:].view(b, t)
    return x.to(device), y.to(device), [s for s in starts if s < b * t]


def cu_seqlens_for(starts: list[int], b: int, t: int, device, bucket: int = 64) -> torch.Tensor:
    cuts = sorted(set(starts) | set(range(0, b * t, t)))  # segments never cross a row
    bounds = cuts + [b * t]
    bounds += [b * t] * ((-len(bounds)) % bucket)
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def model_uses_kernels() -> str:
    import trainer.model as M

    wanted = ("softcapped_cross_entropy", "linear_leaky_relu2", "leaky_relu2_mlp", "varlen_causal_attention")
    names = [n for n in wanted if n in vars(M)]
    return ", ".join(names) if names else "none"


def compile_options() -> dict:
    import trainer.train as T

    opts = getattr(T, "COMPILE_OPTIONS", {}) or {}
    has = getattr(T, "_inductor_has", lambda k: True)
    return {k: v for k, v in opts.items() if has(k)}


def run_config(backend: str, fused: bool, a, dev, budget_end: float, rows: list, notes: list) -> None:
    label = f"{backend}:{'fused' if fused else 'eager'}"
    env = dict(os.environ)
    env.update(PRESET=a.preset, ATTENTION_BACKEND=backend, FUSED_CE=str(int(fused)),
               FUSED_MLP=str(int(fused)))
    try:
        h = Hyperparameters.from_env(env)
    except ValueError as e:
        notes.append(f"{label}: {e}")
        return
    torch._dynamo.reset()
    try:
        attn = A.select_attention_backend(dev, backend, heads=h.num_heads, kv_heads=h.num_kv_heads,
                                          head_dim=h.model_dim // h.num_heads)
    except Exception as e:  # noqa: BLE001 - not available / failed probe: reported
        notes.append(f"{label}: {' '.join(str(e).split())[:300]}")
        return
    if fused:
        kern = K.enable_fused_kernels(dev)
    else:
        K.disable_fused_kernels("off in this config")
        kern = K.fused_kernel_status()
    ga_real = resolve_grad_accum(h, 1)
    micro_tokens = h.train_batch_tokens // ga_real
    b, t = micro_tokens // h.train_seq_len, h.train_seq_len
    model = build_model(h, dev)
    opt = build_optimizers(h, model)
    runner = torch.compile(model, dynamic=False, fullgraph=True, options=compile_options() or None)
    takes_cu = "cu_seqlens" in inspect.signature(model.forward).parameters
    batches = []
    for i in range(2):
        x, y, starts = random_batch(b, t, h.vocab_size, seed=i, device=dev)
        kw = dict(cu_seqlens=cu_seqlens_for(starts, b, t, dev), max_seqlen=t) if takes_cu else {}
        batches.append((x, y, kw))
    ga = a.grad_accum or ga_real

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(i: int) -> float:
        sync()
        t0 = time.perf_counter()
        opt.zero_grad()
        for j in range(ga):
            x, y, kw = batches[(i + j) % len(batches)]
            with autocast_context(dev):
                loss = runner(x, y, **kw)
            (loss / ga).backward()
        opt.step()
        sync()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {float(loss)}")
        return time.perf_counter() - t0

    def opt_ms() -> float:
        times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    phases = (False, True) if getattr(model, "has_loops", False) else (False,)
    for rec in phases:
        if time.perf_counter() + a.graph_s > budget_end:
            notes.append(f"{label} recurrence={'on' if rec else 'off'}: skipped (time budget)")
            continue
        try:
            if hasattr(model, "set_recurrence"):
                model.set_recurrence(rec)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            compile_s = step(0)
            step(1)
            times = [step(2 + i) for i in range(a.steps)]
            o_ms = opt_ms()
        except Exception as e:  # noqa: BLE001 - one config failing must not lose the others
            notes.append(f"{label} recurrence={'on' if rec else 'off'}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:400]}")
            continue
        s = statistics.median(times)
        micro_ms = (1000 * s - o_ms) / ga
        full_ms = micro_ms * ga_real + o_ms
        rows.append((label, attn, f"ce {kern['ce']}, mlp {kern['mlp']}", "on" if rec else "off",
                     f"{compile_s:.0f}",
                     f"{1000 * s:.1f} ({ga} micro)", f"{micro_ms:.2f}", f"{full_ms:.1f}",
                     f"{micro_tokens * ga_real / full_ms * 1000 / 1e6:.3f}",
                     f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f}" if dev.type == "cuda" else "-",
                     f"{min(times) * 1000:.1f}..{max(times) * 1000:.1f}"))
        print(" | ".join(rows[-1]), flush=True)
    # the model, optimizer and graphs go with this frame; main() collects them


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="pr1855")
    ap.add_argument("--configs", default="fa4:fused,sdpa_cudnn:fused,fa4:eager,sdpa_cudnn:eager",
                    help="comma list of ATTENTION_BACKEND:fused|eager")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per graph")
    ap.add_argument("--grad-accum", type=int, default=2,
                    help="micro-steps per timed step (0: the preset's, 8 on one GPU)")
    ap.add_argument("--budget-s", type=float, default=520.0, help="start no graph after this many seconds")
    ap.add_argument("--graph-s", type=float, default=75.0, help="expected seconds per graph (budget check)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "step_time.md"))
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script (PRESET tiny)")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("step_time: needs CUDA", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    budget_end = time.perf_counter() + a.budget_s
    rows: list = []
    notes: list = []
    for spec in [c.strip() for c in a.configs.split(",") if c.strip()]:
        backend, _, mode = spec.partition(":")
        run_config(backend, mode != "eager", a, dev, budget_end, rows, notes)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    head = ("config", "attention", "kernels", "recurrence", "compile s", "step ms", "ms / micro-step",
            "full step ms", "M tok/s", "peak MiB", "step range ms")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    h = Hyperparameters.from_env({**os.environ, "PRESET": a.preset})
    ga_real = resolve_grad_accum(h, 1)
    micro = h.train_batch_tokens // ga_real
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    env = (f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
           f"cuDNN {torch.backends.cudnn.version()}, Python {platform.python_version()}")
    try:
        from importlib.metadata import version

        env += f", triton {version('triton')}"
        env += f", flash-attn-4 {version('flash-attn-4')}"
    except Exception:  # noqa: BLE001
        env += " (flash-attn-4 not installed)"
    args = argv if argv is not None else sys.argv[1:]
    cmd = "python3 " + " ".join([os.path.relpath(__file__, ROOT), *args])
    text = "\n".join([
        f"# Compiled training step, preset {a.preset}", "", env, "", f"command: `{cmd}`", "",
        f"micro-batch {micro} tokens ({micro // h.train_seq_len} x {h.train_seq_len}), {ga_real} micro-steps "
        f"per optimizer step on one GPU; model uses from "
        f"trainer.kernels/attention: {model_uses_kernels()}", "", *lines, "", *(f"- {n}" for n in notes), ""])
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
