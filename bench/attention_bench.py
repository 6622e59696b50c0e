"""Attention kernels on one GPU: forward+backward time, TFLOP/s and error, dense and packed.

    python3 bench/attention_bench.py --out $OUT/attention_bench.md [--batch 24 --seq 2048]

Dense: causal GQA at B x T tokens, 8 query / 4 KV heads, head dim 64, bf16 (the issue's shape,
B=24, T=2048): FA4 (through the project's custom op), FA3 when installed, cuDNN SDPA with
enable_gqa, flash SDPA with repeated k/v. Packed (varlen): the same B*T tokens as one stream cut
into documents (lengths drawn from a log-normal around 700 tokens, cut at T, like the loader's
cu_seqlens, padded to a multiple of 64 entries): FA4 varlen, FA3 varlen, FlexAttention with the
document block mask (compiled), and, for scale, dense cuDNN over B x T (no document mask).
Times: median of CUDA-event timings after warm-up; TFLOP/s counts the causal (per-document) score
and value products, forward 2 GEMMs, backward 5 (3.5x forward in all). Error: ||out - ref|| /
||ref|| and max |out - ref| against float64 attention on the first 2 sequences (dense) or the first
4096 tokens' documents (packed). Prints the table; writes it with the device, torch version and
command to --out (markdown).
"""

from __future__ import annotations

import argparse
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


def cuda_ms(fn, iters: int, warmup: int = 3) -> float:
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


def ref_dense(q, k, v):
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    t = q.size(2)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def errors(out, ref) -> tuple[float, float]:
    d = out.double() - ref
    return float(d.norm() / ref.norm()), float(d.abs().max())


def doc_lengths(n: int, t: int, seed: int) -> list[int]:
    """Document pieces filling n tokens: log-normal lengths (median ~500, mean ~700), cut at t and
    at every row boundary of t tokens (as the loader's cu_seqlens)."""
    g = torch.Generator().manual_seed(seed)
    out, pos = [], 0
    while pos < n:
        length = max(1, int(math.exp(6.2 + 0.8 * float(torch.randn(1, generator=g)))))
        while length > 0 and pos < n:
            piece = min(length, t - pos % t, n - pos)
            out.append(piece)
            pos += piece
            length -= piece
    return out


def cu_from(lengths: list[int], device, bucket: int = 64) -> torch.Tensor:
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    pad = (-len(bounds)) % bucket
    return torch.tensor(bounds + [bounds[-1]] * pad, dtype=torch.int32, device=device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "attention_bench.md"))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_bench: needs CUDA", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    B, T, H, HKV, D = a.batch, a.seq, a.heads, a.kv_heads, a.head_dim
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, T, H, D, device=dev, generator=g).to(torch.bfloat16).requires_grad_()
    k = torch.randn(B, T, HKV, D, device=dev, generator=g).to(torch.bfloat16).requires_grad_()
    v = torch.randn(B, T, HKV, D, device=dev, generator=g).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(B, T, H, D, device=dev, generator=g).to(torch.bfloat16)
    fwd_flops = 4 * B * H * D * T * T / 2  # QK^T and PV, causal half
    refs = ref_dense(q[:2].detach(), k[:2].detach(), v[:2].detach())
    rows, notes = [], []

    def run_dense(label: str, backend: str, fn=None) -> None:
        try:
            if fn is None:
                A.select_attention_backend(dev, backend, varlen=False, heads=H, kv_heads=HKV, head_dim=D)
                fn = A.causal_attention
            t0 = time.perf_counter()
            out = fn(q, k, v)
            out.backward(dy)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            fwd = cuda_ms(lambda: fn(q, k, v), a.iters)

            def step():
                q.grad = k.grad = v.grad = None
                fn(q, k, v).backward(dy)

            fb = cuda_ms(step, a.iters)
            rel, mx = errors(fn(q[:2], k[:2], v[:2]).detach(), refs)
            rows.append((f"dense {label}", f"{fwd:.3f}", f"{fb:.3f}", f"{3.5 * fwd_flops / fb / 1e9:.0f}",
                         f"{rel:.2e}", f"{mx:.2e}", f"{first:.1f}"))
        except Exception as e:  # noqa: BLE001 - a backend that does not run here is reported, not fatal
            notes.append(f"dense {label}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")

    def flash_repeat(q_, k_, v_):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        rep = q_.size(2) // k_.size(2)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            y = torch.nn.functional.scaled_dot_product_attention(
                q_.transpose(1, 2), k_.repeat_interleave(rep, 2).transpose(1, 2),
                v_.repeat_interleave(rep, 2).transpose(1, 2), is_causal=True)
        return y.transpose(1, 2)

    run_dense("FA4 (custom op)", "fa4")
    run_dense("FA3", "fa3")
    run_dense("cuDNN SDPA + enable_gqa", "sdpa_cudnn")
    torch.backends.cuda.enable_flash_sdp(True)
    run_dense("flash SDPA + repeated k/v", "", fn=flash_repeat)

    # packed
    n = B * T
    lengths = doc_lengths(n, T, seed=1)
    cu = cu_from(lengths, dev)
    qp, kp, vp = (x.detach().reshape(n, x.size(2), D).requires_grad_() for x in (q, k, v))
    dyp = dy.reshape(n, H, D)
    pfwd = sum(4 * H * D * m * m / 2 for m in lengths)
    first_n = next(i for i, b in enumerate(cu.tolist()) if b >= 4096)
    bounds = cu.tolist()[:first_n + 1]
    pref = torch.cat([ref_dense(qp[None, s:e].detach(), kp[None, s:e].detach(), vp[None, s:e].detach())[0]
                      for s, e in zip(bounds[:-1], bounds[1:]) if e > s])
    stop = bounds[-1]

    def run_packed(label: str, backend: str) -> None:
        try:
            A.select_attention_backend(dev, backend, heads=H, kv_heads=HKV, head_dim=D)
            got = A._ATTN_STATE["varlen_name"]
            fn = A.varlen_causal_attention
            t0 = time.perf_counter()
            fn(qp, kp, vp, cu, T).backward(dyp)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            fwd = cuda_ms(lambda: fn(qp, kp, vp, cu, T), a.iters)

            def step():
                qp.grad = kp.grad = vp.grad = None
                fn(qp, kp, vp, cu, T).backward(dyp)

            fb = cuda_ms(step, a.iters)
            rel, mx = errors(fn(qp, kp, vp, cu, T)[:stop].detach(), pref)
            rows.append((f"packed {label} ({got})", f"{fwd:.3f}", f"{fb:.3f}", f"{3.5 * pfwd / fb / 1e9:.0f}",
                         f"{rel:.2e}", f"{mx:.2e}", f"{first:.1f}"))
        except Exception as e:  # noqa: BLE001
            notes.append(f"packed {label}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")

    run_packed("FA4 varlen", "fa4")
    run_packed("FA3 varlen", "fa3")
    run_packed("FlexAttention + document mask", "sdpa_cudnn")
    try:
        bm_ms = cuda_ms(lambda: A.document_block_mask(cu, n), 10)
        notes.append(f"document_block_mask (eager) for {n} tokens, {len(lengths)} documents: {bm_ms:.3f} ms")
    except Exception as e:  # noqa: BLE001
        notes.append(f"document_block_mask: {type(e).__name__}: {e}")

    head = ("what", "fwd ms", "fwd+bwd ms", "TFLOP/s", "rel err", "max abs err", "first call s")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    env = (f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, "
           f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
           f"Python {platform.python_version()}")
    try:
        from importlib.metadata import version

        env += f", flash-attn-4 {version('flash-attn-4')}, nvidia-cutlass-dsl {version('nvidia-cutlass-dsl')}"
    except Exception:  # noqa: BLE001
        env += ", flash-attn-4 not installed"
    args = argv if argv is not None else sys.argv[1:]
    cmd = "python3 " + " ".join([os.path.relpath(__file__, ROOT), *args])
    shape = (f"dense: B={B} T={T} H={H} Hkv={HKV} D={D} bf16 causal; packed: {n} tokens in {len(lengths)} "
             f"documents (mean {n / len(lengths):.0f}, max {max(lengths)}), "
             f"cu_seqlens of {cu.numel()} entries")
    text = "\n".join([f"# Attention kernels: {shape}", "", f"{env}", "", f"command: `{cmd}`", "", *lines, "",
                      *(f"- {x}" for x in notes), ""])
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
