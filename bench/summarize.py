"""Tables from the logs of bench/gpu_runs.py: throughput, quality, quantization, eval time, reproduction.

    python bench/summarize.py --record R.log --baseline B.log --reproduce P.log [--val-tokens-full N]

Throughput: per-step times from the ``train`` events (logged every TRAIN_LOG_EVERY steps; the first
interval of each phase dropped), median, before and after depth recurrence switches on. MFU counts
the model FLOPs of bench/flops.py against the H100's 989 dense bf16 TFLOP/s. Eval extrapolation:
plain and sliding times scale with the tokens and divide by the GPU count; TTT runs with
TTT_CHUNK_TOKENS = 32768 / 8 on one GPU, so one chunk here is one rank's share of a chunk on 8 GPUs:
the steady per-chunk time (from the ``ttt_progress`` lines, first chunk excluded) times the number
of 32K chunks of the full split.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.flops import mfu, train_flops_per_token  # noqa: E402
from trainer.runlog import parse_json_lines  # noqa: E402

FULL_VAL_TOKENS_SP8192 = 40_540_160  # the challenge's validation split, sp8192 (about 40.5M)
GPUS = 8
_PROGRESS = re.compile(r"ttt_progress chunk:(\d+)/(\d+) elapsed:([\d.]+)s")


PHASES = ("prequant_ema", "quantized", "sliding_window", "ttt")


def _steady(xs: list[float]) -> float | None:
    """Median, the first interval dropped (it holds the phase's first steps)."""
    if not xs:
        return None
    return statistics.median(xs[1:] if len(xs) > 2 else xs)


class Run:
    def __init__(self, path: str):
        self.path = path
        self.text = Path(path).read_text()
        self.events = parse_json_lines(self.text)
        start = self.one("run_start")
        self.h = SimpleNamespace(**start["hparams"])

    def all(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def one(self, kind: str) -> dict | None:
        found = self.all(kind)
        return found[-1] if found else None

    def phase(self, name: str) -> dict | None:
        return next((e for e in self.all("eval") if e["phase"] == name), None)

    def step_ms(self) -> tuple[float | None, float | None]:
        """Median ms per step before / after recurrence switched on."""
        rec = self.one("recurrence_on")
        rec_step = rec["step"] if rec else None
        pts = [(e["step"], e["train_time_ms"]) for e in self.all("train")]
        before, after = [], []
        for (s0, t0), (s1, t1) in zip(pts, pts[1:]):
            if s1 - s0 < 2:
                continue  # the first steps are logged one by one: skip them
            per = (t1 - t0) / (s1 - s0)
            if rec_step is None or s1 <= rec_step:
                before.append(per)
            elif s0 >= rec_step:
                after.append(per)
        return _steady(before), _steady(after)

    def best_val(self) -> dict | None:
        vals = self.all("val")
        return min(vals, key=lambda e: e["val_bpb"]) if vals else None

    def ttt_chunk_s(self) -> tuple[float, int] | None:
        pts = [(int(a), int(n), float(s)) for a, n, s in _PROGRESS.findall(self.text)]
        if len(pts) < 2:
            return None
        (c0, n, t0), (c1, _, t1) = pts[0], pts[-1]
        return (t1 - t0) / (c1 - c0), n


def fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def throughput_table(runs: dict[str, Run]) -> list[str]:
    out = ["| run | phase | step time | tokens/s | model TFLOP/token | MFU | peak memory |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in runs.items():
        before, after = r.step_ms()
        peak = r.one("train_end")["peak_mem_mib"]
        for label, ms, rec in (("before recurrence", before, False), ("recurrence on", after, True)):
            if ms is None:
                continue
            tok_s = r.h.train_batch_tokens / (ms / 1000.0)
            out.append(f"| {name} | {label} | {ms:.1f} ms | {tok_s / 1e6:.3f}M | "
                       f"{train_flops_per_token(r.h, rec) / 1e9:.3f} G | {100 * mfu(r.h, tok_s, rec):.1f}% | "
                       f"{peak:,.0f} MiB |")
    return out


def quality_table(runs: dict[str, Run]) -> list[str]:
    out = ["| run | steps | tokens seen | best val_bpb (step) | last val_bpb | pre-quant EMA | quantized | "
           "sliding | TTT (score) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in runs.items():
        end = r.one("train_end")
        best = r.best_val()
        last = r.all("val")[-1] if r.all("val") else None
        ph = {p: (r.phase(p) or {}).get("val_bpb") for p in PHASES}
        out.append(f"| {name} | {end['steps']} | {end['steps'] * r.h.train_batch_tokens / 1e6:.0f}M | "
                   f"{fmt(best and best['val_bpb'], '.4f')} ({best and best['step']}) | "
                   f"{fmt(last and last['val_bpb'], '.4f')} | {fmt(ph['prequant_ema'], '.4f')} | "
                   f"{fmt(ph['quantized'], '.4f')} | {fmt(ph['sliding_window'], '.4f')} | "
                   f"{fmt(ph['ttt'], '.4f')} |")
    return out


def quant_table(r: Run) -> list[str]:
    art = r.one("artifact")
    pre, q = r.phase("prequant_ema"), r.phase("quantized")
    cls = art["bytes_by_class"]
    return ["| what | value |", "| --- | --- |",
            f"| pre-quantization EMA val_bpb | {pre['val_bpb']:.5f} |",
            f"| quantized (int6 GPTQ attn+MLP, int8 embed, fp16 small), same eval | {q['val_bpb']:.5f} |",
            f"| quantization cost | {q['val_bpb'] - pre['val_bpb']:+.5f} bpb (target <= +0.012) |",
            f"| code bytes (packed train_gpt.py) | {art['code_bytes']:,} |",
            f"| model bytes ({art['codec']}) | {art['model_bytes']:,} |",
            f"| total / limit / headroom | {art['total_bytes']:,} / {art['limit_bytes']:,} / "
            f"{art['headroom_bytes']:,} |",
            "| bytes by class | " + ", ".join(f"{k} {v:,}" for k, v in cls.items()) + " |",
            f"| pruned ±1 values | {art['pruned_values']} |",
            f"| calibration + GPTQ + compression + write | {art['quant_ms'] / 1000:.1f} s |"]


def eval_table(r: Run, full_tokens: int) -> list[str]:
    n = r.phase("quantized")["tokens"]
    scale = full_tokens / n
    rows = [f"| phase | here (1 GPU, {n:,} tokens) | full split on 8 GPUs (extrapolated) |",
            "| --- | --- | --- |"]
    total = 0.0
    for p in ("quantized", "sliding_window"):
        e = r.phase(p)
        if e:
            est = e["eval_time_ms"] / 1000 * scale / GPUS
            total += est
            rows.append(f"| {p} | {e['eval_time_ms'] / 1000:.2f} s | {est:.0f} s |")
    tc = r.ttt_chunk_s()
    e = r.phase("ttt")
    if tc and e:
        per, n_chunks = tc
        chunks_full = -(-full_tokens // 32768)
        est = per * chunks_full
        total += est
        rows.append(f"| ttt ({n_chunks} chunks of {r.h.ttt_chunk_tokens} tokens; "
                    f"{per * 1000:.0f} ms/chunk) | "
                    f"{e['eval_time_ms'] / 1000:.2f} s | {est:.0f} s ({chunks_full} chunks of 32768) |")
    rows.append(f"| total (+ model load/compile, measured {r.one('final')['eval_time_ms'] / 1000:.1f} s "
                f"here for all phases) | - | {total:.0f} s of 600 s |")
    return rows


def reproduce_table(r: Run, p: Run) -> list[str]:
    rows = ["| phase | logged val_bpb | eval-only val_bpb (val shards only) | difference |",
            "| --- | --- | --- | --- |"]
    for ph in ("quantized", "sliding_window", "ttt"):
        a, b = r.phase(ph), p.phase(ph)
        if a and b:
            d = b["val_bpb"] - a["val_bpb"]
            rows.append(f"| {ph} | {a['val_bpb']:.8f} | {b['val_bpb']:.8f} | {d:+.2e} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", required=True)
    ap.add_argument("--baseline")
    ap.add_argument("--reproduce")
    ap.add_argument("--val-tokens-full", type=int, default=FULL_VAL_TOKENS_SP8192)
    a = ap.parse_args()
    rec = Run(a.record)
    runs = {"record (ours)": rec}
    if a.baseline:
        runs["baseline preset"] = Run(a.baseline)
    out = ["### Throughput", *throughput_table(runs), "", "### Quality at equal wallclock",
           *quality_table(runs), "", "### Quantization and bytes (record run)", *quant_table(rec), "",
           "### Final evaluation time", *eval_table(rec, a.val_tokens_full)]
    if a.reproduce:
        out += ["", "### Reproduction (EVAL_ONLY=1 on the saved artifact)",
                *reproduce_table(rec, Run(a.reproduce))]
    print("\n".join(out))


if __name__ == "__main__":
    main()
