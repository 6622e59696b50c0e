"""Read a train log, ours or another competitor's, into one ``RunSummary``.

Two families of logs exist:

* ``pgolf``: our trainer's logs carry ``pgolf_json {...}`` lines (docs/design.md, trainer/runlog.py);
  those are taken first, at full precision. Conventional lines of the same log only fill fields the
  JSON lines left empty (e.g. the GPU table).
* ``conventional``: the formats the challenge's scripts print, with their variants:
  ``step:N/M train_loss:L train_time:Tms step_avg:Ams``, ``N/M train_loss: L train_time: 0.8m tok/s: K``,
  ``step:N/M loss:L t:Tms``, ``step:N/M val_loss:L val_bpb:B train_time:Tms``, ``N/M val_loss: L val_bpb: B``,
  ``LABEL [stride:S] val_loss:L val_bpb:B [...] [eval_time:Tms]`` for results (``final_int8_zlib_roundtrip``,
  ``final_int6_sliding_window_exact``, ``quantized_ttt_phased``, ``legal_ttt``, ``final_sliding val_bpb:B``,
  ``ttt_sliding:done val_loss=L val_bpb=B`` ...), ``stopping_early: wallclock_cap train_time:Tms [step:S/N]``,
  ``Code size[ (compressed|uncompressed)]: N bytes``, ``Serialized model ...: N bytes``, ``Total submission
  size ...: N bytes``, ``budget:N/16000000``, ``total_eval_time:508.8s``, ``seed:42`` / ``  seed: 42``,
  ``world_size:8``, nvidia-smi tables.

Lines may carry a prefix: a timestamp (``[19:23:20]``, ``2026-04-23 19:23:20,123``, ISO), a log level
(``INFO:``), a torchrun rank (``[rank0]:``); it is stripped before matching.

Many logs echo the training script's own source code; numbers are never taken from it: every block
of source (from a line that starts like Python up to the next ``=====`` rule, or past its
``if __name__`` block) is skipped, anywhere in the file, and every pattern is anchored at the start of
a line and needs literal numbers, so an f-string template such as ``log0(f"final val_bpb:{x:.8f}")``
never matches.

Every result line is kept (``scores``), so the checks can find the line a submission claims. The
summary's own score (``final_phase``/``val_loss``/``val_bpb``) is the line with the highest (kind,
exact, position), for tools that want one number per log:
kind: test-time training (label contains ``ttt``) 4 > sliding window (``sliding``) 3 > any other
post-training result (``roundtrip``, ``quantized``, ``final_*``) 2 > side scores (n-gram, cache, slot,
oracle, blend lines) 1.5 > pre-quantization or ``diagnostic`` lines 1; then ``*_exact`` lines over the
rounded ones; then the last one in the file. A pgolf log's score is its ``final`` event.

``eval_time_ms``: a pgolf ``final`` event's value; else ``total_eval_time:S s``; else the sum of the
``eval_time`` of the post-training result lines of kind >= 2. ``train_time_ms``: ``train_end``/``final``
event; else the ``stopping_early`` line; else the last ``train_time`` of a step line.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

JSON_PREFIX = "pgolf_json "  # == trainer.runlog.JSON_PREFIX (a test checks); no trainer import here

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_SEP = r"\s*[:=]\s*"

# a timestamp, a log level or a torchrun rank before the message (repeated prefixes are stripped)
_LINE_PREFIX = re.compile(
    r"^(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?\]?"
    r"|\[\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\]|\d{1,2}:\d{2}:\d{2}[.,]\d+"
    r"|\[rank\d+\]:?|\[?(?:INFO|DEBUG|WARNING|WARN|ERROR)\]?:?(?=\s)"
    r")\s*(?:[-|>]\s+|:\s+)?"
)
_RE_STEP_TRAIN = re.compile(rf"^(?:step{_SEP})?(\d+)/(\d+)\s+(?:train_)?loss{_SEP}({_NUM})(.*)$", re.I)
_RE_STEP_TIME = re.compile(rf"(?:\btrain_time|(?<![\w])t){_SEP}({_NUM})\s*(ms|m|s)\b", re.I)
_RE_STEP_VAL = re.compile(
    rf"^(?:step{_SEP})?(\d+)/(\d+)\s+val_loss{_SEP}({_NUM})[,\s]+val_bpb{_SEP}({_NUM})(.*)$", re.I
)
_LABEL = r"([A-Za-z][\w\-+. :/()]*?)"
_RE_RESULT = re.compile(
    rf"^{_LABEL}[\s,]+(?:stride{_SEP}\d+\s+)?val_loss{_SEP}({_NUM})[,\s]+val_bpb{_SEP}({_NUM})(.*)$", re.I
)
_RE_RESULT_BPB_FIRST = re.compile(
    rf"^{_LABEL}[\s,]+val_bpb{_SEP}({_NUM})[,\s]+val_loss{_SEP}({_NUM})(.*)$", re.I
)
_RE_RESULT_BPB_ONLY = re.compile(rf"^{_LABEL}[\s_]+(?:val_)?bpb{_SEP}({_NUM})(.*)$", re.I)
_BAD_LABEL = re.compile(r"\d+\s*/\s*\d+|[:=]\s*[-+]?\d")
_RE_EVAL_TIME = re.compile(rf"\b(?:eval_)?time{_SEP}({_NUM})\s*(ms|s)\b", re.I)
_RE_STOP = re.compile(
    rf"^stopping_early{_SEP}(\w+)\s+train_time{_SEP}({_NUM})\s*ms(?:\s+step{_SEP}(\d+)/(\d+))?", re.I
)
_RE_CODE = re.compile(r"^code(?:[ _]size|_bytes)(?:\s*\((\w+)\))?\s*[:=]\s*(\d+)\s*(?:bytes)?\b", re.I)
_RE_MODEL = re.compile(r"^serialized model(?:\s+([^:]+?))?\s*:\s*(\d+)\s*bytes", re.I)
_RE_TOTAL = re.compile(r"^total submission size(?:\s+([^:]+?))?\s*:\s*(\d+)\s*bytes", re.I)
_RE_BUDGET = re.compile(r"^(?:budget|artifact_budget|submission_bytes)\s*[:=]\s*(\d+)\s*/\s*(\d{7,})\b", re.I)
_RE_TOTAL_EVAL = re.compile(rf"^total_eval_time{_SEP}({_NUM})\s*(ms|s)\b", re.I)
_RE_SEED = re.compile(r"^\s*seed\s*[:=]\s*(\d+)\s*$", re.I)
_RE_WORLD = re.compile(r"^\s*world_size\s*[:=]\s*(\d+)\b", re.I)
_RE_ITERS = re.compile(r"(?:^|\s)iterations\s*[:=]\s*(\d+)\b", re.I)
_RE_HPARAM = re.compile(r"^\s{2,}([A-Za-z_][\w.]*):\s?(.*)$")
_RE_KV_HPARAMS = re.compile(r"(?:^|\s)([a-z_][a-z0-9_]*)=(\S+)")
_RE_SMI_GPU = re.compile(r"^\|\s+(\d+)\s+(.+?)\s{2,}(?:On|Off)\s+\|")
_RE_VAL_TOKENS = re.compile(r"^(?:val_tokens\s*[:=]\s*(\d+)|val_loader:.*\btokens:\s*(\d+))", re.I)
_RE_TOKENIZER = re.compile(r"tokenizer_path[=:]\s*(\S+)", re.I)
_RE_TORCH = re.compile(r"^running pytorch\s+(\S+)", re.I)
_RE_SEED_NAME = re.compile(r"seed[_\-]?(\d+)|(?:^|[_\-])s(\d+)(?=\.\w+$)", re.I)
_RE_RULE = re.compile(r"^\s*[=\-#*]{20,}\s*$")
_PY_START = re.compile(r'^(?:"""|\'\'\'|#!|import \w|from [\w.]+ import |def \w+\(|class \w+[(:]|@\w)')
_RE_EVAL_ONLY = re.compile(r"(?i)\beval[_ -]?only\b.*(?:skip|load)|skipping training")
# time the log shows outside an evaluation timer, after training (compile warm-up, decompression, ...)
_RE_OUTSIDE = re.compile(
    rf"(?i)\b(compile warm-?up|warm(?:ing)?[ -]?up|decompress\w*|precompute\w*|deserializ\w*)\b"
    rf".*?(?:\bin\s+|\(|elapsed\s*[:=]\s*|done\s+\(?|time\s*[:=]\s*)({_NUM})\s*(ms|s)\b"
)
# GPTQ / quantisation calibration lines: "gptq:calibrating with 64 batches (training data)...",
# "GPTQ:collected 67 Hessians in 4.7s", "gptq:generated 64 sequences in 196.7s"
_RE_CALIB = re.compile(r"(?i)^(?:gptq|quant\w*|calib\w*|hessian\w*)\b.*(?:calibrat|hessian|generat)")
_RE_SECONDS = re.compile(rf"(?i)\bin\s+({_NUM})\s*s\b|\(({_NUM})\s*s\)|\bdone in\s+({_NUM})\s*s\b")


@dataclass
class Score:
    """One result line: a score the log reports for the run (post-training or diagnostic)."""

    line: int
    label: str
    val_loss: float | None
    val_bpb: float
    eval_time_ms: float | None
    kind: float  # see the module docstring (4 ttt, 3 sliding, 2 other final, 1.5 side, 1 diagnostic)
    exact: bool = False
    digits: int = 0  # decimals the value was printed with

    @property
    def final(self) -> bool:
        """A score of the exported model (not of the pre-quantization / EMA weights)."""
        return not is_prequant_label(self.label)


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
    code_compressed: bool = False  # the code size the log counts is the compressed code
    tokenizer_path: str | None = None
    torch_version: str | None = None
    eval_only: bool | None = None
    artifact_name: str | None = None
    hparams: dict = field(default_factory=dict)
    code_region: tuple[int, int] | None = None  # first block of embedded source code that was skipped
    seed_source: str | None = None  # 'json' | 'log' | 'filename'
    scores: list[Score] = field(default_factory=list)  # every result line, in file order
    seeds_seen: list[int] = field(default_factory=list)  # every seed the log names (several runs)
    started: bool = False  # the log shows training progress (steps) or a run_start event
    outside_timer: list[tuple[int, str, float]] = field(default_factory=list)  # (line, what, seconds)
    calibration: list[tuple[int, str, float | None]] = field(default_factory=list)  # (line, text, s)
    stop_line: int | None = None  # the line where training stopped (stopping_early / train_end)
    artifact_line: int | None = None  # the first line reporting the artifact's size
    total_eval_time_ms: float | None = None  # the log's own total_eval_time line
    timed_eval_ms: float | None = None  # sum of eval_time of the post-training result lines

    @property
    def is_run(self) -> bool:
        """The file is the log of a run (it trains or scores), not a summary or a table."""
        return self.started or bool(self.scores)

    def at(self, key: str) -> str:
        """``path:line`` of a field's evidence (``path`` when the line is unknown)."""
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path


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


def _digits(num: str) -> int:
    m = re.match(r"[-+]?\d*\.(\d+)", num)
    return len(m.group(1)) if m else 0


def strip_prefix(line: str) -> str:
    """The message of a log line without its timestamp / level / rank prefixes."""
    for _ in range(4):
        m = _LINE_PREFIX.match(line)
        if not m or m.end() == 0:
            break
        line = line[m.end() :]
    return line


def code_regions(lines: list[str]) -> list[tuple[int, int]]:
    """0-based [start, end) blocks of source code echoed into a log, anywhere in the file."""
    out = []
    i, n = 0, len(lines)
    while i < n:
        if not _PY_START.match(lines[i]):
            i += 1
            continue
        start, in_main, j = i, False, i + 1
        while j < n:
            ln = lines[j]
            if _RE_RULE.match(ln) or ln.startswith(JSON_PREFIX):
                break
            if ln.startswith("if __name__"):
                in_main = True
            elif in_main and ln.strip() and not ln[0].isspace():
                break  # the source ends with its __main__ block, even without a rule after it
            j += 1
        out.append((start, j))
        i = j
    return out


_PREQUANT = re.compile(
    r"(?i)pre[-_ ]?quant|prequant|post[-_ ]?ema|\bema\b|pre[-_ ]?export|unquantized|fp32|bf16"
)


def is_prequant_label(label: str) -> bool:
    return bool(_PREQUANT.search(label))


def kind_rank(label: str) -> float:
    low = label.lower()
    if "diagnostic" in low or re.search(r"pre[-_ ]?quant|prequant|post[-_ ]?ema|\bema\b|pre_ttt", low):
        return 1
    if re.search(r"n[-_]?gram|\bslot|oracle|cache|blend|\bmix|tilt|unigram|bigram|trigram", low):
        return 1.5
    if "ttt" in low:
        return 4
    if "sliding" in low:
        return 3
    return 2


def is_result_label(label: str) -> bool:
    low = label.lower()
    return low.startswith("final") or any(
        k in low
        for k in (
            "quantiz",
            "ttt",
            "sliding",
            "roundtrip",
            "post-ema",
            "pre-quant",
            "prequant",
            "diagnostic",
            "post_ema",
            "int6",
            "int8",
            "int4",
            "eval",
            "legal",
            "ngram",
            "n-gram",
            "slot",
            "test",
        )
    )


def _result(ln: str) -> tuple[str, float | None, float, str] | None:
    """(label, val_loss, val_bpb, rest) of a result line, else None."""
    m = _RE_RESULT.match(ln)
    if m:
        return m.group(1).strip(" ,:"), _f(m.group(2)), _f(m.group(3)), m.group(4) or ""
    m = _RE_RESULT_BPB_FIRST.match(ln)
    if m:
        return m.group(1).strip(" ,:"), _f(m.group(3)), _f(m.group(2)), m.group(4) or ""
    m = _RE_RESULT_BPB_ONLY.match(ln)
    if m and is_result_label(m.group(1)):
        return m.group(1).strip(" ,:_"), None, _f(m.group(2)), m.group(3) or ""
    return None


def _parse(text: str, s: RunSummary) -> None:
    lines = text.splitlines()
    regions = code_regions(lines)
    if regions:
        s.code_region = (regions[0][0] + 1, regions[0][1])
    skip = [False] * len(lines)
    for a, b in regions:
        for k in range(a, b):
            skip[k] = True
    events: list[tuple[int, dict]] = []
    conv_hits = 0
    results: list[Score] = []
    train_pts: list[tuple[int, float]] = []
    val_pts: list[tuple[int, float, float]] = []
    last_train_ms: tuple[int, float] | None = None
    last_step: tuple[int, int] | None = None  # (step, iterations)
    gpus: dict[int, str] = {}
    sizes: dict[str, tuple[int, int]] = {}  # model|total -> (line, bytes): the last one of each
    code_plain: tuple[int, int] | None = None
    code_compressed: tuple[int, int] | None = None
    in_hparams = False
    hp_lines: dict[str, int] = {}

    for idx, raw in enumerate(lines):
        no = idx + 1
        if skip[idx]:
            continue
        if raw.startswith(JSON_PREFIX):
            try:
                obj = json.loads(raw[len(JSON_PREFIX) :])
            except (json.JSONDecodeError, RecursionError):
                s.problems.append(f"line {no}: malformed pgolf_json line")
                continue
            if isinstance(obj, dict):
                events.append((no, obj))
            continue
        if raw.strip().lower().strip("-= ").startswith("hyperparameters"):
            in_hparams = True
            continue
        if in_hparams:
            m = _RE_HPARAM.match(raw)
            if m:
                s.hparams.setdefault(m.group(1), m.group(2).strip())
                hp_lines.setdefault(m.group(1), no)
                continue
            kv = _RE_KV_HPARAMS.findall(raw)
            if len(kv) >= 3:  # "a=1 b=2 c=3 ..." on one line
                for k, v in kv:
                    s.hparams.setdefault(k, v)
                continue
            in_hparams = False
        m = _RE_SMI_GPU.match(raw)
        if m:
            if not gpus:
                s.lines["device_name"] = no
            gpus.setdefault(int(m.group(1)), m.group(2).strip())
            continue
        ln = strip_prefix(raw)
        m = _RE_STEP_VAL.match(ln)
        if m:
            conv_hits += 1
            step, iters = int(m.group(1)), int(m.group(2))
            loss, bpb = _f(m.group(3)), _f(m.group(4))
            if loss is not None and bpb is not None:
                val_pts.append((step, loss, bpb))
            last_step = (step, iters)
            t = _RE_STEP_TIME.search(m.group(5) or "")
            if t and _f(t.group(1)) is not None:
                last_train_ms = (
                    no,
                    _f(t.group(1)) * {"ms": 1.0, "s": 1000.0, "m": 60000.0}[t.group(2).lower()],
                )
            continue
        m = _RE_STEP_TRAIN.match(ln)
        if m:
            conv_hits += 1
            step, iters, loss = int(m.group(1)), int(m.group(2)), _f(m.group(3))
            if loss is not None:
                train_pts.append((step, loss))
            last_step = (step, iters)
            t = _RE_STEP_TIME.search(m.group(4) or "")
            if t and _f(t.group(1)) is not None:
                last_train_ms = (
                    no,
                    _f(t.group(1)) * {"ms": 1.0, "s": 1000.0, "m": 60000.0}[t.group(2).lower()],
                )
            continue
        m = _RE_STOP.match(ln)
        if m:
            conv_hits += 1
            s.stop_reason = m.group(1)
            s.train_time_ms = _f(m.group(2))
            s.stop_line = no
            s.lines["train_time_ms"] = s.lines["stop_reason"] = no
            if m.group(3):
                s.steps, s.iterations = int(m.group(3)), int(m.group(4))
                s.lines["steps"] = no
            continue
        res = _result(ln) if not ln.lstrip().lower().startswith("step") else None
        if res is not None and _BAD_LABEL.search(res[0]):
            res = None  # a progress line ("batch 12/782 ... batch_bpb:1.1") is not a result
        if res is not None and res[2] is not None:
            label, loss, bpb, rest = res
            et = _RE_EVAL_TIME.search(rest)
            ms = None
            if et:
                v = _f(et.group(1))
                ms = None if v is None else v * (1000.0 if et.group(2).lower() == "s" else 1.0)
            bpb_txt = re.search(rf"bpb{_SEP}({_NUM})", ln, re.I)
            conv_hits += 1
            low = label.lower()
            results.append(
                Score(
                    no,
                    label,
                    loss,
                    bpb,
                    ms,
                    kind_rank(label),
                    exact=low.endswith("_exact") or "_exact " in low or low.endswith(" exact"),
                    digits=_digits(bpb_txt.group(1)) if bpb_txt else 0,
                )
            )
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
        hit = next(
            ((key, m) for key, rx in (("model", _RE_MODEL), ("total", _RE_TOTAL)) if (m := rx.match(ln))),
            None,
        )
        if hit:  # "Serialized model ..." / "Total submission size ...": the last one is the artifact's
            conv_hits += 1
            key, m = hit
            sizes[key] = (no, int(m.group(2)))
            if key == "total" or m.group(1):
                s.artifact_line = s.artifact_line or no
            continue
        m = _RE_BUDGET.match(ln)
        if m:
            sizes["total"] = (no, int(m.group(1)))
            s.artifact_line = s.artifact_line or no
            continue
        m = _RE_TOTAL_EVAL.match(ln)
        if m:
            v = _f(m.group(1))
            if v is not None:
                s.total_eval_time_ms = v * (1000.0 if m.group(2).lower() == "s" else 1.0)
                s.lines["total_eval_time_ms"] = no
            continue
        m = _RE_SEED.match(ln)
        if m:
            seed = int(m.group(1))
            if seed not in s.seeds_seen:
                s.seeds_seen.append(seed)
            if s.seed is None:
                s.seed, s.seed_source = seed, "log"
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
        if _RE_EVAL_ONLY.search(ln):
            s.eval_only = True
        m = _RE_OUTSIDE.search(ln)
        if m and s.stop_line is not None and "eval_time" not in ln.lower():
            v = _f(m.group(2))
            if v is not None:
                s.outside_timer.append((no, m.group(1).lower(), v / 1000.0 if m.group(3) == "ms" else v))
        if _RE_CALIB.match(ln):
            t = _RE_SECONDS.search(ln)
            secs = next((_f(g) for g in t.groups() if g), None) if t else None
            s.calibration.append((no, ln.strip()[:160], secs))

    # --- conventional values -------------------------------------------------------------------
    s.train_curve, s.val_curve = train_pts, val_pts
    s.scores = results
    for r in results:
        ph = {"val_loss": r.val_loss, "val_bpb": r.val_bpb, "eval_time_ms": r.eval_time_ms, "line": r.line}
        old = s.eval_phases.get(r.label)
        if old is not None and r.eval_time_ms is None and old.get("eval_time_ms") is not None:
            ph["eval_time_ms"] = old["eval_time_ms"]
        s.eval_phases[r.label] = ph
    best = best_score(results)
    if best is not None:
        s.final_phase, s.val_loss, s.val_bpb = best.label, best.val_loss, best.val_bpb
        s.lines["val_bpb"] = s.lines["val_loss"] = s.lines["final_phase"] = best.line
    timed = [r for r in results if r.kind >= 2 and r.eval_time_ms is not None]
    if timed:
        s.timed_eval_ms = sum(r.eval_time_ms for r in timed)
    if s.total_eval_time_ms is not None:
        s.eval_time_ms = s.total_eval_time_ms
        s.lines["eval_time_ms"] = s.lines["total_eval_time_ms"]
    elif timed:
        s.eval_time_ms = s.timed_eval_ms
        s.lines["eval_time_ms"] = timed[-1].line
    if s.train_time_ms is None and last_train_ms is not None:
        s.lines["train_time_ms"], s.train_time_ms = last_train_ms
    if last_step is not None:
        if s.steps is None:
            s.steps = last_step[0]
            s.lines.setdefault("steps", last_train_ms[0] if last_train_ms else 0)
            if not s.lines["steps"]:
                del s.lines["steps"]
        if s.iterations is None:
            s.iterations = last_step[1]
        if s.stop_reason is None and last_step[0] >= last_step[1] > 0:
            s.stop_reason = "iterations"
    s.started = bool(train_pts or val_pts or s.stop_line)
    code = code_compressed or code_plain
    if code:
        s.lines["code_bytes"], s.code_bytes = code
        s.code_compressed = code_compressed is not None
    if code_plain and code_compressed:
        s.code_bytes_uncompressed = code_plain[1]
    if "model" in sizes:
        s.lines["model_bytes"], s.model_bytes = sizes["model"]
    if "total" in sizes:
        s.lines["total_bytes"], s.total_bytes = sizes["total"]
    if gpus:
        s.device_count = len(gpus)
        s.device_name = gpus[min(gpus)]
    _from_hparams(s)
    if s.seed_source == "log" and "seed" not in s.lines and "seed" in hp_lines:
        s.lines["seed"] = hp_lines["seed"]

    # --- pgolf JSON events take precedence ---------------------------------------------------------
    if events:
        s.format = "pgolf"
        _apply_events(events, s)
    elif conv_hits:
        s.format = "conventional"

    # --- the seed from the file name, as a last resort ---------------------------------------------
    fseed = seed_from_name(s.path)
    if fseed is not None:
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
        if s.started:
            last = s.train_curve[-1][0] if s.train_curve else (s.val_curve[-1][0] if s.val_curve else 0)
            s.problems.append(
                f"unfinished: the run started (last step seen {last}) but no final evaluation "
                f"was logged ({len(lines)} lines)"
            )
    elif not math.isfinite(s.val_bpb):
        s.problems.append(f"final val_bpb is {s.val_bpb} (line {s.lines.get('val_bpb', '?')})")


def seed_from_name(path: str) -> int | None:
    m = _RE_SEED_NAME.search(os.path.basename(path))
    if not m:
        return None
    return int(m.group(1) or m.group(2))


def best_score(results: list[Score]) -> Score | None:
    """The summary score of a log (highest kind, exact, position), see the module docstring."""
    if not results:
        return None
    return max(results, key=lambda r: (r.kind, r.exact, r.line))


def _from_hparams(s: RunSummary) -> None:
    """Fill gaps from a ``Hyperparameters:`` block (``  seed: 42``, ``  world_size: 8``, ...)."""
    hp = s.hparams
    if s.seed is None and _i(hp.get("seed")) is not None:
        s.seed, s.seed_source = _i(hp["seed"]), "log"
        if s.seed not in s.seeds_seen:
            s.seeds_seen.append(s.seed)
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
    scores: list[Score] = []
    final_seen = False
    for no, e in events:
        ev = e.get("event")
        if ev == "run_start":
            s.started = True
            seed = _i(e.get("seed"))
            if seed is not None:
                s.seed, s.seed_source = seed, "json"
                s.lines["seed"] = no
                if seed not in s.seeds_seen:
                    s.seeds_seen.append(seed)
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
            s.stop_line = no
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
            s.artifact_line = s.artifact_line or no
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
                bpb = _num(e.get("val_bpb"))
                if bpb is not None:
                    kind = 1 if ph.startswith("prequant") else kind_rank(ph)
                    scores.append(
                        Score(
                            no,
                            ph,
                            _num(e.get("val_loss")),
                            bpb,
                            _num(e.get("eval_time_ms")),
                            kind,
                            exact=True,
                            digits=12,
                        )
                    )
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
            if bpb is not None:
                scores.append(
                    Score(
                        no,
                        f"final {s.final_phase or ''}".strip(),
                        loss,
                        bpb,
                        _num(e.get("eval_time_ms")),
                        5,
                        exact=True,
                        digits=12,
                    )
                )
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
    if scores:
        s.scores = scores
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
