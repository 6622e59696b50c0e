"""A stand-in for the shape of the full validation split: N BOS-started documents, T tokens in all.

The eval-time extrapolation (bench/eval_budget.py) needs the document lengths of the full split
(50,000 FineWeb documents: 40.54M sp8192 tokens, 47.85M CaseOps tokens), which these machines do
not have. This writes a shard with that many documents and tokens, lengths log-normal (sigma
--sigma) scaled to the exact total; the token ids are random (only the lengths matter there).

    python bench/synth_val.py --out /tmp/fullval --docs 50000 --tokens 47851520
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.shards import write_shard  # noqa: E402


def doc_lengths(docs: int, tokens: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, sigma, docs)
    lens = np.maximum(2, np.floor(raw / raw.sum() * tokens)).astype(np.int64)
    lens[-1] += tokens - int(lens.sum())
    return lens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--tokens", type=int, default=47_851_520)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    lens = doc_lengths(a.docs, a.tokens, a.sigma, a.seed)
    toks = np.random.default_rng(a.seed + 1).integers(8, a.vocab, a.tokens).astype(np.uint16)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    toks[starts] = 1  # BOS
    os.makedirs(a.out, exist_ok=True)
    write_shard(os.path.join(a.out, "fineweb_val_000000.bin"), toks)
    print(f"{a.docs} docs, {a.tokens} tokens, mean {lens.mean():.0f}, median {np.median(lens):.0f}, "
          f"max {lens.max()} -> {a.out}")


if __name__ == "__main__":
    main()
