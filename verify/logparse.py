"""Read a train log, ours or another competitor's, into one ``RunSummary``.

Two families of logs exist:

* ``pgolf``: our trainer's logs carry ``pgolf_json {...}`` lines (docs/design.md, trainer/runlog.py);
  those are taken first, at full precision. Conventional lines of the same log only fill fields the
  JSON lines left empty (e.g. the GPU table).
* ``conventional``: the formats the challenge's scripts print, with their variants:
  ``step:N/M train_loss:L train_time:Tms step_avg:Ams``, ``N/M train_loss: L train_time: 0.8m tok/s: K``,
  ``step:N/M val_loss:L val_bpb:B train_time:Tms``, ``N/M val_loss: L val_bpb: B``,
  ``LABEL val_loss:L val_bpb:B [stride:S] [eval_time:Tms]`` for results (``final_int8_zlib_roundtrip``,
  ``final_int6_sliding_window_exact``, ``final_sliding_window_eval_exact stride:64 ...``,
  ``quantized_ttt_phased``, ``pre-quantization post-ema`` ...), ``stopping_early: wallclock_cap
  train_time:Tms step:S/N`` (spaces after colons allowed), ``Code size: N bytes``, ``Code size
  (compressed): N bytes``, ``Serialized model int6+zstd: N bytes``, ``Total submission size ...: N bytes``,
  ``total_eval_time:508.8s``, ``seed:42`` / ``  seed: 42``, ``world_size:8``, nvidia-smi tables.

Many logs begin with the training script's own source code; numbers are never taken from it: the
source block (from a first line that looks like Python up to the first ``=====`` rule) is skipped,
and every pattern is anchored at the start of a line and needs literal numbers, so an f-string
template such as ``log0(f"final_int6 val_loss:{x:.8f}")`` never matches.

Final-score precedence (``final_phase``/``val_loss``/``val_bpb`` of a conventional log): among the
result lines, the one with the highest (kind, exact, position):
kind: test-time training (label contains ``ttt``) 4 > sliding window (``sliding``) 3 > any other
post-training result (``roundtrip``, ``quantized``, ``final_*``) 2 > pre-quantization or
``diagnostic`` lines 1; then ``*_exact`` lines (8 decimals) over the rounded ones; then the last one
in the file. A pgolf log's score is its ``final`` event (the trainer names the phase).

``eval_time_ms``: a pgolf ``final`` event's value; else ``total_eval_time:S s``; else the sum of the
``eval_time`` of the post-training result lines of kind >= 2 (diagnostic lines excluded).
``train_time_ms``: ``train_end``/``final`` event; else the ``stopping_early`` line; else the last
``train_time`` of a step line (minutes in the ``N/M ... train_time: 0.8m`` format).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

JSON_PREFIX = "pgolf_json "  # == trainer.runlog.JSON_PREFIX (a test checks); no trainer import here

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_P = r"^(?:\[rank\d+\]:\s*)?"  # torchrun may prefix lines with the rank

_RE_STEP_TRAIN = re.compile(
    _P + rf"step:\s*(\d+)/(\d+)\s+train_loss:\s*({_NUM})(?:\s+train_time:\s*({_NUM})ms)?", re.I
)
_RE_BARE_TRAIN = re.compile(
    _P + rf"(\d+)/(\d+)\s+train_loss:\s*({_NUM})(?:\s+train_time:\s*({_NUM})(ms|m|s)\b)?", re.I
)
_RE_STEP_VAL = re.compile(
    _P + rf"(?:step:\s*)?(\d+)/(\d+)\s+val_loss:\s*({_NUM})\s+val_bpb:\s*({_NUM})"
    rf"(?:\s+train_time:\s*({_NUM})ms)?",
    re.I,
)
_RE_RESULT = re.compile(
    _P + rf"([A-Za-z][\w\-+. ]*?)\s+(?:stride:\s*\d+\s+)?val_loss:\s*({_NUM})\s+val_bpb:\s*({_NUM})(.*)$",
    re.I,
)
_RE_EVAL_TIME = re.compile(rf"eval_time:\s*({_NUM})\s*(ms|s)\b", re.I)
_RE_STOP = re.compile(
    _P + rf"stopping_early:\s*(\w+)\s+train_time:\s*({_NUM})\s*ms\s+step:\s*(\d+)/(\d+)", re.I
)
_RE_CODE = re.compile(_P + r"code size(?:\s*\((\w+)\))?\s*:\s*(\d+)\s*bytes", re.I)
_RE_MODEL = re.compile(_P + r"serialized model(?:\s+([^:]+?))?\s*:\s*(\d+)\s*bytes", re.I)
_RE_TOTAL = re.compile(_P + r"total submission size(?:\s+([^:]+?))?\s*:\s*(\d+)\s*bytes", re.I)
_RE_TOTAL_EVAL = re.compile(_P + rf"total_eval_time:\s*({_NUM})\s*(ms|s)\b", re.I)
_RE_SEED = re.compile(_P + r"\s*seed\s*[:=]\s*(\d+)\s*$", re.I)
_RE_WORLD = re.compile(_P + r"\s*world_size\s*[:=]\s*(\d+)\b", re.I)
_RE_ITERS = re.compile(r"(?:^|\s)iterations\s*[:=]\s*(\d+)\b", re.I)
_RE_HPARAM = re.compile(r"^\s{2,}([A-Za-z_][\w.]*):\s?(.*)$")
_RE_SMI_GPU = re.compile(r"^\|\s+(\d+)\s+(.+?)\s{2,}(?:On|Off)\s+\|")
_RE_VAL_TOKENS = re.compile(_P + r"(?:val_tokens:\s*(\d+)|val_loader:.*\btokens:\s*(\d+))", re.I)
_RE_TOKENIZER = re.compile(r"tokenizer_path[=:]\s*(\S+)", re.I)
_RE_TORCH = re.compile(_P + r"running pytorch\s+(\S+)", re.I)
_RE_SEED_NAME = re.compile(r"seed[_\-]?(\d+)", re.I)
_RE_RULE = re.compile(r"^\s*={20,}\s*$")
_PY_START = re.compile(r'^(?:"""|\'\'\'|#!|import \w|from [\w.]+ import |def \w|class \w)')


@dataclass
class RunSummary:
    path: str
    format: str  # 'pgolf' (our pgolf_json lines) | 'conventional' | 'unknown'
    seed: int | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    final_phase: str | None = None
    train_time_ms: float | None = None
    eval_time_ms: float | None = None
    steps: int | None = None
    iterations: int | None = None
    stop_reason: str | None = None
    code_bytes: int | None = None
    model_bytes: int | None = None
    total_bytes: int | None = None
    world_size: int | None = None
    device_name: str | None = None
    device_count: int | None = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, val_loss, val_bpb)
    eval_phases: dict[str, dict] = field(default_factory=dict)  # phase -> {val_loss, val_bpb, eval_time_ms}
    problems: list[str] = field(default_factory=list)
    # --- extras (evidence for the checks; all optional) ---
    lines: dict[str, int] = field(default_factory=dict)  # field name -> 1-based line it came from
    val_tokens: int | None = None  # tokens scored, when the log says
    eval_bytes: int | None = None  # UTF-8 bytes scored by the final phase (pgolf logs)
    code_bytes_uncompressed: int | None = None
    tokenizer_path: str | None = None
    torch_version: str | None = None
    eval_only: bool | None = None
    artifact_name: str | None = None
    hparams: dict = field(default_factory=dict)
    code_region: tuple[int, int] | None = None  # lines of embedded source code that were skipped
    seed_source: str | None = None  # 'json' | 'log' | 'filename'


def parse_log(path: str | os.PathLike) -> RunSummary:
    """Parse the log at ``path``; never raises on content; unreadable files land in ``problems``."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as e:
        s = RunSummary(path=p, format="unknown")
        s.problems.append(f"cannot read: {e.strerror or e}")
        return s
    return parse_log_text(raw.decode("utf-8", errors="replace"), path=p)


def parse_log_text(text: str, path: str = "<text>") -> RunSummary:
    """Parse a log's text (see the module docstring for formats and precedence)."""
    s = RunSummary(path=str(path), format="unknown")
    try:
        _parse(text, s)
    except Exception as e:  # a parser bug must not take the verifier down; say so instead
        s.problems.append(f"parser error: {type(e).__name__}: {e}")
    return s


# ------------------------------------------------------------------------------------------------


def _f(x: str | None) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except ValueError:
        return None


def _i(x) -> int | None:
    try:
        if isinstance(x, bool):
            return None
        if isinstance(x, float):
            return int(x) if math.isfinite(x) else None
        return int(x)
    except (TypeError, ValueError):
        return None


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _code_region(lines: list[str]) -> tuple[int, int] | None:
    """0-based [start, end) of source code printed at the top of a log, if any."""
    start = None
    for i, ln in enumerate(lines[:60]):
        if _PY_START.match(ln):
            start = i
            break
        if _RE_RULE.match(ln) or ln.startswith(JSON_PREFIX):
            return None
    if start is None:
        return None
    in_main = False
    for j in range(start + 1, len(lines)):
        ln = lines[j]
        if _RE_RULE.match(ln):
            return (start, j)
        if ln.startswith("if __name__"):
            in_main = True
        elif in_main and ln.strip() and not ln[0].isspace():
            return (start, j)  # the source ends with its __main__ block, even without a rule after it
    return (start, len(lines))


def _kind_rank(label: str) -> int:
    low = label.lower()
    if "diagnostic" in low or "pre-quant" in low or "prequant" in low or "pre_quant" in low:
        return 1
    if "ttt" in low:
        return 4
    if "sliding" in low:
        return 3
    return 2


def _is_result_label(label: str) -> bool:
    low = label.lower()
    return low.startswith("final") or any(
        k in low for k in ("quantiz", "ttt", "sliding", "roundtrip", "post-ema", "pre-quant", "prequant")
    )


def _parse(text: str, s: RunSummary) -> None:
    lines = text.splitlines()
    region = _code_region(lines)
    if region:
        s.code_region = (region[0] + 1, region[1])
    events: list[tuple[int, dict]] = []
    conv_hits = 0
    # (lineno, label, val_loss, val_bpb, eval_time_ms, rest of the line)
    results: list[tuple[int, str, float, float, float | None, str]] = []
    train_pts: list[tuple[int, float]] = []
    val_pts: list[tuple[int, float, float]] = []
    last_train_ms: tuple[int, float] | None = None
    last_step: tuple[int, int] | None = None  # (step, iterations)
    gpus: dict[int, str] = {}
    sizes: dict[tuple[str, bool], tuple[int, int]] = {}  # (model|total, labelled) -> (line, bytes)
    code_plain: tuple[int, int] | None = None
    code_compressed: tuple[int, int] | None = None
    in_hparams = False

    for idx, ln in enumerate(lines):
        no = idx + 1
        if region and region[0] <= idx < region[1]:
            continue
        if ln.startswith(JSON_PREFIX):
            try:
                obj = json.loads(ln[len(JSON_PREFIX) :])
            except (json.JSONDecodeError, RecursionError):
                s.problems.append(f"line {no}: malformed pgolf_json line")
                continue
            if isinstance(obj, dict):
                events.append((no, obj))
            continue
        if ln.strip().lower().startswith("hyperparameters:"):
            in_hparams = True
            continue
        if in_hparams:
            m = _RE_HPARAM.match(ln)
            if m:
                s.hparams.setdefault(m.group(1), m.group(2).strip())
                continue
            in_hparams = False
        m = _RE_SMI_GPU.match(ln)
        if m:
            if not gpus:
                s.lines["device_name"] = no
            gpus.setdefault(int(m.group(1)), m.group(2).strip())
            continue
        m = _RE_STEP_TRAIN.match(ln)
        if m:
            conv_hits += 1
            step, iters, loss = int(m.group(1)), int(m.group(2)), _f(m.group(3))
            if loss is not None:
                train_pts.append((step, loss))
            last_step = (step, iters)
            ms = _f(m.group(4))
            if ms is not None:
                last_train_ms = (no, ms)
            continue
        m = _RE_BARE_TRAIN.match(ln)
        if m:
            conv_hits += 1
            step, iters, loss = int(m.group(1)), int(m.group(2)), _f(m.group(3))
            if loss is not None:
                train_pts.append((step, loss))
            last_step = (step, iters)
            t = _f(m.group(4))
            if t is not None:
                unit = m.group(5).lower()
                last_train_ms = (no, t * {"ms": 1.0, "s": 1000.0, "m": 60000.0}[unit])
            continue
        m = _RE_STEP_VAL.match(ln)
        if m:
            conv_hits += 1
            step, iters = int(m.group(1)), int(m.group(2))
            loss, bpb = _f(m.group(3)), _f(m.group(4))
            if loss is not None and bpb is not None:
                val_pts.append((step, loss, bpb))
            last_step = (step, iters)
            ms = _f(m.group(5))
            if ms is not None:
                last_train_ms = (no, ms)
            continue
        m = _RE_STOP.match(ln)
        if m:
            conv_hits += 1
            s.stop_reason = m.group(1)
            s.train_time_ms = _f(m.group(2))
            s.steps, s.iterations = int(m.group(3)), int(m.group(4))
            s.lines["train_time_ms"] = s.lines["steps"] = s.lines["stop_reason"] = no
            continue
        m = _RE_RESULT.match(ln)
        if m and not ln.lstrip().lower().startswith("step"):
            label = m.group(1).strip()
            loss, bpb = _f(m.group(2)), _f(m.group(3))
            rest = m.group(4) or ""
            et = _RE_EVAL_TIME.search(rest)
            ms = None
            if et:
                v = _f(et.group(1))
                ms = None if v is None else v * (1000.0 if et.group(2).lower() == "s" else 1.0)
            if loss is not None and bpb is not None:
                conv_hits += 1
                results.append((no, label, loss, bpb, ms, rest))
            continue
        m = _RE_CODE.match(ln)
        if m:
            conv_hits += 1
            kind = (m.group(1) or "").lower()
            if kind == "compressed":
                code_compressed = (no, int(m.group(2)))
            elif kind == "uncompressed":
                s.code_bytes_uncompressed = int(m.group(2))
            else:
                code_plain = (no, int(m.group(2)))
            continue
        hit = next(((key, m) for key, rx in (("model", _RE_MODEL), ("total", _RE_TOTAL))
                    if (m := rx.match(ln))), None)
        if hit:  # "Serialized model ..." / "Total submission size ...": the labelled form wins
            conv_hits += 1
            key, m = hit
            sizes[key, bool(m.group(1))] = (no, int(m.group(2)))
            continue
        m = _RE_TOTAL_EVAL.match(ln)
        if m:
            v = _f(m.group(1))
            if v is not None:
                s.eval_time_ms = v * (1000.0 if m.group(2).lower() == "s" else 1.0)
                s.lines["eval_time_ms"] = no
            continue
        m = _RE_SEED.match(ln)
        if m and s.seed is None:
            s.seed, s.seed_source = int(m.group(1)), "log"
            s.lines["seed"] = no
            continue
        m = _RE_WORLD.match(ln)
        if m and s.world_size is None:
            s.world_size = int(m.group(1))
            s.lines["world_size"] = no
        m = _RE_VAL_TOKENS.match(ln)
        if m and s.val_tokens is None:
            s.val_tokens = int(m.group(1) or m.group(2))
        m = _RE_TOKENIZER.search(ln)
        if m and s.tokenizer_path is None:
            s.tokenizer_path = m.group(1)
        m = _RE_TORCH.match(ln)
        if m and s.torch_version is None:
            s.torch_version = m.group(1)
        if s.iterations is None:
            m = _RE_ITERS.search(ln)
            if m and "=" not in ln and "(" not in ln:
                s.iterations = int(m.group(1))

    # --- conventional values -------------------------------------------------------------------
    s.train_curve, s.val_curve = train_pts, val_pts
    for no, label, loss, bpb, ms, _rest in results:
        ph = {"val_loss": loss, "val_bpb": bpb, "eval_time_ms": ms, "line": no}
        old = s.eval_phases.get(label)
        if old is not None and ms is None and old.get("eval_time_ms") is not None:
            ph["eval_time_ms"] = old["eval_time_ms"]
        s.eval_phases[label] = ph
    finals = [r for r in results if _is_result_label(r[1])]
    if finals:
        best = max(
            finals,
            key=lambda r: (
                _kind_rank(r[1]),
                r[1].lower().endswith("_exact") or "_exact " in r[1].lower(),
                r[0],
            ),
        )
        s.final_phase, s.val_loss, s.val_bpb = best[1], best[2], best[3]
        s.lines["val_bpb"] = s.lines["val_loss"] = s.lines["final_phase"] = best[0]
    if s.eval_time_ms is None:
        timed = [r for r in results if _is_result_label(r[1]) and _kind_rank(r[1]) >= 2 and r[4] is not None]
        if timed:
            s.eval_time_ms = sum(r[4] for r in timed)
            s.lines["eval_time_ms"] = timed[-1][0]
    if s.train_time_ms is None and last_train_ms is not None:
        s.lines["train_time_ms"], s.train_time_ms = last_train_ms
    if s.steps is None and last_step is not None:
        s.steps = last_step[0]
        if s.iterations is None:
            s.iterations = last_step[1]
        if s.stop_reason is None and last_step[0] >= last_step[1] > 0:
            s.stop_reason = "iterations"
    code = code_compressed or code_plain
    if code:
        s.lines["code_bytes"], s.code_bytes = code
    if code_plain and code_compressed:
        s.code_bytes_uncompressed = code_plain[1]
    model = sizes.get(("model", True)) or sizes.get(("model", False))
    if model:
        s.lines["model_bytes"], s.model_bytes = model
    total = sizes.get(("total", True)) or sizes.get(("total", False))
    if total:
        s.lines["total_bytes"], s.total_bytes = total
    if gpus:
        s.device_count = len(gpus)
        s.device_name = gpus[min(gpus)]
    _from_hparams(s)

    # --- pgolf JSON events take precedence ---------------------------------------------------------
    if events:
        s.format = "pgolf"
        _apply_events(events, s)
    elif conv_hits:
        s.format = "conventional"

    # --- the seed from the file name, as a last resort ---------------------------------------------
    m = _RE_SEED_NAME.search(os.path.basename(s.path))
    if m:
        fseed = int(m.group(1))
        if s.seed is None:
            s.seed, s.seed_source = fseed, "filename"
        elif s.seed != fseed:
            s.problems.append(
                f"seed {s.seed} in the log (line {s.lines.get('seed', '?')}) but {fseed} in the file name"
            )

    # --- problems -----------------------------------------------------------------------------------
    if s.format == "unknown":
        s.problems.append("unknown format: no known step, result or pgolf_json lines")
    if s.val_bpb is None:
        s.problems.append("no final val_bpb line")
        started = s.train_curve or s.val_curve or any(e.get("event") == "run_start" for _, e in events)
        if started:
            last = s.train_curve[-1][0] if s.train_curve else (s.val_curve[-1][0] if s.val_curve else 0)
            s.problems.append(
                f"truncated: the run started (last step seen {last}) but no final evaluation "
                f"was logged ({len(lines)} lines)"
            )
    elif s.val_bpb is not None and not math.isfinite(s.val_bpb):
        s.problems.append(f"final val_bpb is {s.val_bpb} (line {s.lines.get('val_bpb', '?')})")
    if text and not text.endswith("\n") and lines:
        tail = lines[-1]
        if not (_RE_RESULT.match(tail) or _RE_TOTAL_EVAL.match(tail) or tail.startswith(JSON_PREFIX)):
            s.problems.append(f"truncated: the file ends mid-line (line {len(lines)}: {tail[:60]!r})")


def _from_hparams(s: RunSummary) -> None:
    """Fill gaps from a ``Hyperparameters:`` block (``  seed: 42``, ``  world_size: 8``, ...)."""
    hp = s.hparams
    if s.seed is None and _i(hp.get("seed")) is not None:
        s.seed, s.seed_source = _i(hp["seed"]), "log"
    if s.world_size is None and _i(hp.get("world_size")) is not None:
        s.world_size = _i(hp["world_size"])
    if s.iterations is None and _i(hp.get("iterations")) is not None:
        s.iterations = _i(hp["iterations"])
    if s.tokenizer_path is None and isinstance(hp.get("tokenizer_path"), str) and hp["tokenizer_path"]:
        s.tokenizer_path = hp["tokenizer_path"]


def _apply_events(events: list[tuple[int, dict]], s: RunSummary) -> None:
    train_pts: list[tuple[int, float]] = []
    val_pts: list[tuple[int, float, float]] = []
    phases: dict[str, dict] = {}
    final_seen = False
    for no, e in events:
        ev = e.get("event")
        if ev == "run_start":
            seed = _i(e.get("seed"))
            if seed is not None:
                s.seed, s.seed_source = seed, "json"
                s.lines["seed"] = no
            for key in ("world_size", "device_count"):
                v = _i(e.get(key))
                if v is not None:
                    setattr(s, key, v)
                    s.lines[key] = no
            if isinstance(e.get("device_name"), str):
                s.device_name = e["device_name"]
                s.lines["device_name"] = no
            if isinstance(e.get("torch_version"), str):
                s.torch_version = e["torch_version"]
            if isinstance(e.get("eval_only"), bool):
                s.eval_only = e["eval_only"]
            hp = e.get("hparams")
            if isinstance(hp, dict):
                s.hparams.update(hp)
                if isinstance(hp.get("tokenizer_path"), str):
                    s.tokenizer_path = hp["tokenizer_path"]
                it = _i(hp.get("iterations"))
                if it is not None:
                    s.iterations = it
        elif ev == "train":
            step, loss = _i(e.get("step")), _num(e.get("train_loss"))
            if step is not None and loss is not None:
                train_pts.append((step, loss))
            it = _i(e.get("iterations"))
            if it is not None:
                s.iterations = it
        elif ev == "val":
            step, loss, bpb = _i(e.get("step")), _num(e.get("val_loss")), _num(e.get("val_bpb"))
            if step is not None and loss is not None and bpb is not None:
                val_pts.append((step, loss, bpb))
        elif ev == "train_end":
            for key in ("steps", "iterations"):
                v = _i(e.get(key))
                if v is not None:
                    setattr(s, key, v)
                    s.lines[key] = no
            v = _num(e.get("train_time_ms"))
            if v is not None:
                s.train_time_ms = v
                s.lines["train_time_ms"] = no
            if isinstance(e.get("stop_reason"), str):
                s.stop_reason = e["stop_reason"]
                s.lines["stop_reason"] = no
        elif ev == "artifact":
            _take_bytes(e, s, no)
            if isinstance(e.get("artifact"), str):
                s.artifact_name = e["artifact"]
        elif ev == "eval":
            ph = e.get("phase")
            if isinstance(ph, str):
                phases[ph] = {
                    "val_loss": _num(e.get("val_loss")),
                    "val_bpb": _num(e.get("val_bpb")),
                    "eval_time_ms": _num(e.get("eval_time_ms")),
                    "tokens": _i(e.get("tokens")),
                    "bytes": _i(e.get("bytes")),
                    "line": no,
                }
        elif ev == "final":
            final_seen = True
            seed = _i(e.get("seed"))
            if seed is not None:
                s.seed, s.seed_source = seed, "json"
                s.lines["seed"] = no
            loss, bpb = _num(e.get("val_loss")), _num(e.get("val_bpb"))
            s.val_loss, s.val_bpb = loss, bpb
            s.final_phase = e.get("phase") if isinstance(e.get("phase"), str) else None
            s.lines["val_bpb"] = s.lines["val_loss"] = s.lines["final_phase"] = no
            v = _num(e.get("eval_time_ms"))
            if v is not None:
                s.eval_time_ms = v
                s.lines["eval_time_ms"] = no
            v = _num(e.get("train_time_ms"))
            if v is not None:
                s.train_time_ms = v
                s.lines["train_time_ms"] = no
            _take_bytes(e, s, no)
    if train_pts:
        s.train_curve = train_pts
    if val_pts:
        s.val_curve = val_pts
    if phases:
        s.eval_phases = phases
    if not final_seen:
        # conventional result lines of a pgolf log are not its score: the final event is
        s.val_loss = s.val_bpb = s.final_phase = None
    elif s.final_phase in s.eval_phases:
        ph = s.eval_phases[s.final_phase]
        s.val_tokens = ph.get("tokens") or s.val_tokens
        s.eval_bytes = ph.get("bytes")


def _take_bytes(e: dict, s: RunSummary, no: int) -> None:
    for key in ("code_bytes", "model_bytes", "total_bytes"):
        v = _i(e.get(key))
        if v is not None:
            setattr(s, key, v)
            s.lines[key] = no
