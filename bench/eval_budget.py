"""Extrapolate the final evaluation's time (TTT_MODE=lora_phased) to the full validation set on N GPUs.

    python bench/eval_budget.py RUN.log --val 'DATA/fineweb_val_*.bin' [--gpus 8] [--budget 600]
        [--set PHASED_TTT_PREFIX_DOCS=2500]

RUN.log is a measured run (any GPU count, any VAL_MAX_TOKENS), e.g. EVAL_ONLY=1 on one or two GPUs.
From its lines (trainer/final.py, trainer/ttt_phased.py) this fits
- per-document LoRA batches (``ttt_lora ... adapt:1``): seconds = a * row_iters + b * passes
  (a row-iteration: one document's adapter state updated; a pass: one window token through
  forward+backward), least squares over the batches (the run's first batch dropped: it pays for
  lazy initialisation);
- scoring without adaptation (``ttt_doc_ends``, ``adapt:0`` batches): the same two-term model,
  or the adapt fit scaled by the measured ratio when there are too few points;
- global SGD phases (``ttt_global``): seconds per token on the measured GPUs, divided by N / W
  (sequences are split over ranks; the all-reduce is assumed to scale);
- fixed parts measured once: load+decompress, model build, compile warm-up (the same on every
  rank, so the same on N GPUs), and the plain quantized eval scaled by tokens and GPUs.
Then it builds the real schedule of the full validation set on N ranks with the trainer's own plan
(trainer/ttt_phased.plan_phased: the same segments, batches and rank assignment the run would use)
and sums, per segment, the slowest rank's predicted time (ranks wait for each other at every
global phase). Prints each part and the total against the budget.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import Hyperparameters  # noqa: E402
from trainer.data import load_validation_tokens  # noqa: E402
from trainer.runlog import parse_json_lines  # noqa: E402
from trainer.ttt_phased import find_documents, padded_len, plan_phased, rank_batches  # noqa: E402

_KV = re.compile(r"(\w+(?:/s)?):([-\w.]+)")


def _fields(line: str) -> dict[str, str]:
    return dict(_KV.findall(line))


def _num(s: str) -> float:
    return float(s.rstrip("s"))


def parse_eval_log(text: str) -> dict:
    """The measured numbers of one run's log."""
    out: dict = {"lora": [], "score": [], "global": [], "parts": {}, "hparams": None, "world_size": 1,
                 "eval": {}}
    for e in parse_json_lines(text):
        if e.get("event") == "run_start":
            out["hparams"], out["world_size"] = e.get("hparams"), int(e.get("world_size", 1))
        elif e.get("event") == "eval_part":
            out["parts"][e["part"]] = float(e["seconds"])
        elif e.get("event") == "eval":
            out["eval"][e["phase"]] = e
    for line in text.splitlines():
        if line.startswith("ttt_lora "):
            f = _fields(line)
            row = (int(f["row_iters"]), int(f["passes"]), _num(f["time"]))
            (out["lora"] if f["adapt"] == "1" else out["score"]).append(row)
        elif line.startswith("ttt_doc_ends "):
            f = _fields(line)
            out["score"].append((int(f["row_iters"]), int(f["passes"]), _num(f["time"])))
        elif line.startswith("ttt_global "):
            f = _fields(line)
            out["global"].append((int(f["tokens"]), _num(f["time"])))
    return out


def fit_rows_passes(rows: list[tuple[int, int, float]]) -> tuple[float, float]:
    """Least-squares (a, b) with seconds = a * row_iters + b * passes, both >= 0."""
    if not rows:
        raise ValueError("no batches to fit")
    x = torch.tensor([[r, p] for r, p, _ in rows], dtype=torch.float64)
    y = torch.tensor([t for _, _, t in rows], dtype=torch.float64)
    if len(rows) >= 3:
        sol = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        if bool((sol >= 0).all()):
            return float(sol[0]), float(sol[1])
    return 0.0, float(y.sum() / x[:, 1].sum())  # one term: seconds per pass


def doc_end_work(docs: torch.Tensor, seq_len: int, rows: int, world: int) -> list[tuple[int, int]]:
    """(row_iters, passes) of each rank's share of the document-end scoring (as trainer/ttt_phased)."""
    lens = docs[:-1, 1].clamp(max=seq_len).tolist()
    order = sorted(range(len(lens)), key=lambda i: (-lens[i], i))
    out = []
    for r in range(world):
        mine = order[r::world]
        ri = ps = 0
        for b0 in range(0, len(mine), rows):
            n = max(len(mine[b0:b0 + rows]), min(2, rows))
            t = padded_len(lens[mine[b0]], seq_len)
            ri, ps = ri + n, ps + n * t
        out.append((ri, ps))
    return out


def extrapolate(m: dict, h, docs: torch.Tensor, gpus: int, keep_first: bool = False
                ) -> tuple[dict[str, float], tuple[float, ...]]:
    """Predicted seconds per part of the evaluation of ``docs`` on ``gpus`` ranks, and the fit
    (adapt s/row-iter, s/pass, score s/row-iter, s/pass, global s/token on ``gpus``)."""
    lora = m["lora"] if keep_first else m["lora"][1:] or m["lora"]
    a, b = fit_rows_passes(lora)
    if len(m["score"]) >= 3:
        sa, sb = fit_rows_passes(m["score"])
    else:  # too few points: the adapt fit, scaled by the measured ratio
        pred = sum(a * r + b * p for r, p, _ in m["score"]) or 1.0
        k = sum(t for _, _, t in m["score"]) / pred if m["score"] else 0.4
        sa, sb = a * k, b * k
    g_rate = sum(t for _, t in m["global"]) / max(sum(n for n, _ in m["global"]), 1)  # s/token at W
    g_rate *= m["world_size"] / gpus
    plan = plan_phased(h, docs, gpus)
    parts: dict[str, float] = {}
    for key in ("load_decompress", "model_build", "compile_warmup"):
        parts[key] = m["parts"].get(key, 0.0)
    for key in ("quantized", "sliding_window"):  # whole-stream passes: scale with tokens and GPUs
        if key in m["parts"] and key in m["eval"]:
            parts[key] = m["parts"][key] * (docs[:, 1].sum().item() / m["eval"][key]["tokens"]) \
                * m["world_size"] / gpus
    parts["doc_ends"] = max(sa * r + sb * p for r, p in
                            doc_end_work(docs, h.eval_seq_len, max(1, h.ttt_lora_batch_docs), gpus))
    lengths = docs[:, 1].tolist()
    for si, _seg in enumerate(plan.segments):
        per_rank = [sum(a * plan.adapt_work[si][k][1] + b * plan.adapt_work[si][k][2]
                        for k in rank_batches(plan, si, r)) for r in range(gpus)]
        parts[f"lora_segment_{si + 1}"] = max(per_rank) if per_rank else 0.0
        if si < len(plan.bounds) and si < len(plan.segments) - 1:
            tokens = sum(lengths[j] for j in plan.order[:plan.bounds[si]])
            parts[f"global_{si + 1}"] = g_rate * tokens
    return parts, (a, b, sa, sb, g_rate)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="log of a measured run with TTT_MODE=lora_phased")
    ap.add_argument("--val", required=True, help="validation shards of the full set (glob)")
    ap.add_argument("--max-tokens", type=int, default=0, help="cap the validation tokens (0 = all)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--budget", type=float, default=600.0)
    ap.add_argument("--keep-first", action="store_true", help="fit on the run's first batch too")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the full-set plan instead of the log's (e.g. "
                         "PHASED_TTT_PREFIX_DOCS=2500 when the measured run scaled it down)")
    a = ap.parse_args(argv)
    m = parse_eval_log(Path(a.log).read_text())
    if m["hparams"] is None or not m["lora"]:
        print(f"{a.log}: no run_start event or no 'ttt_lora ... adapt:1' lines (TTT_MODE=lora_phased?)")
        return 1
    h = Hyperparameters()
    for k, v in m["hparams"].items():
        if hasattr(h, k):
            setattr(h, k, v)
    over = dict(kv.split("=", 1) for kv in a.set)
    h2 = Hyperparameters.from_env({"PRESET": h.preset, **over})
    for k in over:
        setattr(h, k.lower(), getattr(h2, k.lower()))
    docs = find_documents(load_validation_tokens(a.val, a.max_tokens))
    parts, (fa, fb, sa, sb, g) = extrapolate(m, h, docs, a.gpus, a.keep_first)
    n_tok = int(docs[:, 1].sum())
    print(f"measured on {m['world_size']} GPU(s): {len(m['lora'])} adapt batches, {len(m['score'])} "
          f"score-only, {len(m['global'])} global phases")
    print(f"fit: adapt {fa * 1e6:.2f} us/row-iter + {fb * 1e9:.2f} ns/pass; score {sa * 1e6:.2f} us/row-iter "
          f"+ {sb * 1e9:.2f} ns/pass; global {g * 1e9:.1f} ns/token on {a.gpus} GPUs")
    print(f"full set: {n_tok} tokens, {docs.shape[0]} documents, {a.gpus} GPUs "
          f"(settings from the log: rank {h.ttt_lora_rank}, chunk {h.ttt_lora_chunk_tokens}, batch "
          f"{h.ttt_lora_batch_docs}, prefix {h.phased_ttt_prefix_docs}, phases {h.phased_ttt_phases})")
    total = 0.0
    for k, v in parts.items():
        total += v
        print(f"  {k:<22} {v:8.1f} s")
    verdict = "fits" if total <= a.budget else f"OVER by {total - a.budget:.1f} s"
    print(f"extrapolated total_eval_time: {total:.1f} s on {a.gpus} GPUs; budget {a.budget:.0f} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
