"""What a submission JSON claims, read tolerantly (the field names and shapes real submissions use).

Mean score: ``val_bpb`` (else ``mean_val_bpb``, ``val_bpb_mean``, ``mean_bpb``, ``bpb``). Per seed:
``seed_results`` (an object keyed by seed, or a list of objects with a ``seed``), ``seeds`` as an object
keyed by seed, or ``seeds`` as a list with a parallel list of scores (``seed_scores``, ``seed_bpbs``,
``per_seed_val_bpb``, ...), or a single ``seed`` with the mean. Bytes: ``bytes_total`` (else
``artifact_bytes_max``, ``artifact_bytes``, ``artifact_size_bytes``, ``total_bytes``), per seed
``artifact_bytes``/``bytes_total``/``total_bytes``. Nothing here judges: the checks compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

MEAN_BPB_KEYS = ("val_bpb", "mean_val_bpb", "val_bpb_mean", "mean_bpb", "bpb")
MEAN_LOSS_KEYS = ("val_loss", "mean_val_loss", "val_loss_mean", "mean_val_loss_nats", "val_loss_nats")
STD_BPB_KEYS = ("val_bpb_std", "std_bpb", "std_val_bpb", "bpb_std")
STD_LOSS_KEYS = ("val_loss_std", "std_val_loss", "std_val_loss_nats", "val_loss_nats_std")
TOTAL_KEYS = (
    "bytes_total",
    "artifact_bytes_max",
    "artifact_bytes",
    "artifact_size_bytes",
    "total_bytes",
    "submission_bytes",
)
CODE_KEYS = ("bytes_code", "code_bytes")
SEED_BPB_KEYS = ("val_bpb", "bpb", "post_ttt_val_bpb", "final_val_bpb")
SEED_LOSS_KEYS = ("val_loss", "val_loss_nats", "post_ttt_val_loss", "final_val_loss")
SEED_TOTAL_KEYS = ("artifact_bytes", "bytes_total", "total_bytes", "artifact_size_bytes", "submission_bytes")
PARALLEL_SCORE_KEYS = ("seed_scores", "seed_bpbs", "per_seed_val_bpb", "seed_val_bpb", "val_bpbs", "bpbs")


def number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def unit(v) -> float:
    """One unit in the last decimal place ``v`` is written with (1 for integers)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0.0
    if isinstance(v, int):
        return 1.0
    if not math.isfinite(v):
        return 0.0
    try:
        exp = Decimal(repr(v)).as_tuple().exponent
    except (InvalidOperation, ValueError):
        return 0.0
    return 10.0**exp if isinstance(exp, int) and exp < 0 else 1.0


@dataclass
class Value:
    value: float
    key: str  # JSON path, e.g. "seed_results.42.val_bpb"

    @property
    def unit(self) -> float:
        return unit(self.value)


@dataclass
class SeedClaim:
    seed: int | None
    where: str  # JSON path of the entry
    val_bpb: Value | None = None
    val_loss: Value | None = None
    total_bytes: Value | None = None
    steps: Value | None = None
    train_time_s: Value | None = None
    eval_time_s: Value | None = None


@dataclass
class Claim:
    mean_bpb: Value | None = None
    mean_loss: Value | None = None
    std_bpb: Value | None = None
    std_loss: Value | None = None
    total_bytes: Value | None = None
    code_bytes: Value | None = None
    seeds: list[int] = field(default_factory=list)  # the seeds it names
    per_seed: list[SeedClaim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shapes it tolerated, for a WARN

    @property
    def empty(self) -> bool:
        return self.mean_bpb is None and not any(s.val_bpb for s in self.per_seed)


def _first(d: dict, keys, prefix: str = "") -> Value | None:
    for k in keys:
        v = number(d.get(k))
        if v is not None:
            return Value(d[k], prefix + k)
    return None


def _int(x) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x.strip())
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return None


def _seed_entry(seed, entry: dict, where: str) -> SeedClaim:
    sc = SeedClaim(_int(seed), where)
    sc.val_bpb = _first(entry, SEED_BPB_KEYS, where + ".")
    sc.val_loss = _first(entry, SEED_LOSS_KEYS, where + ".")
    sc.total_bytes = _first(entry, SEED_TOTAL_KEYS, where + ".")
    sc.steps = _first(entry, ("steps", "train_steps", "step_stop"), where + ".")
    sc.train_time_s = _first(entry, ("train_time_s", "train_time_seconds", "training_time_s"), where + ".")
    if sc.train_time_s is None:
        ms = _first(entry, ("train_time_ms",), where + ".")
        if ms is not None:
            sc.train_time_s = Value(ms.value / 1000.0, ms.key)
    sc.eval_time_s = _first(entry, ("eval_time_s", "eval_time_seconds"), where + ".")
    return sc


def read_claim(sub: dict) -> Claim:
    c = Claim()
    c.mean_bpb = _first(sub, MEAN_BPB_KEYS)
    c.mean_loss = _first(sub, MEAN_LOSS_KEYS)
    c.std_bpb = _first(sub, STD_BPB_KEYS)
    c.std_loss = _first(sub, STD_LOSS_KEYS)
    c.total_bytes = _first(sub, TOTAL_KEYS)
    c.code_bytes = _first(sub, CODE_KEYS)
    if c.mean_bpb is not None and c.mean_bpb.key != "val_bpb":
        c.notes.append(f"the score is under {c.mean_bpb.key!r}, not 'val_bpb'")
    seeds = sub.get("seeds")
    sr = sub.get("seed_results")
    if isinstance(sr, dict):
        for k, v in sr.items():
            if isinstance(v, dict):
                c.per_seed.append(_seed_entry(k, v, f"seed_results.{k}"))
            elif number(v) is not None:  # {"42": 1.0811}
                c.per_seed.append(
                    SeedClaim(_int(k), f"seed_results.{k}", val_bpb=Value(v, f"seed_results.{k}"))
                )
    elif isinstance(sr, list):
        for i, v in enumerate(sr):
            if isinstance(v, dict):
                c.per_seed.append(_seed_entry(v.get("seed"), v, f"seed_results[{i}]"))
    if isinstance(seeds, dict):
        c.notes.append("'seeds' is an object keyed by seed, not a list")
        for k, v in seeds.items():
            if isinstance(v, dict) and not any(p.seed == _int(k) for p in c.per_seed):
                c.per_seed.append(_seed_entry(k, v, f"seeds.{k}"))
        c.seeds = [s for s in (_int(k) for k in seeds) if s is not None]
    elif isinstance(seeds, list):
        c.seeds = [s for s in (_int(x) for x in seeds) if s is not None]
        par = next((k for k in PARALLEL_SCORE_KEYS if isinstance(sub.get(k), list)), None)
        if par and not c.per_seed and len(sub[par]) == len(seeds):
            for i, (sd, v) in enumerate(zip(seeds, sub[par], strict=True)):
                if number(v) is not None:
                    c.per_seed.append(SeedClaim(_int(sd), f"{par}[{i}]", val_bpb=Value(v, f"{par}[{i}]")))
    if not c.seeds:
        c.seeds = [p.seed for p in c.per_seed if p.seed is not None]
        single = _int(sub.get("seed"))
        if not c.seeds and single is not None:
            c.seeds = [single]
    return c
