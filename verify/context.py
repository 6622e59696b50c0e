"""Everything the checks read, loaded once: the folder's files, its code, its parsed logs, the submission
JSON and which logged runs it claims."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from verify.claimmatch import Match, match_claim
from verify.claims import Claim, read_claim
from verify.logparse import RunSummary, parse_log, seed_from_name
from verify.sources import CodeSet, load_code
from verify.unpack import Source

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
_NOT_LOGS = re.compile(
    r"(?i)^(requirements|readme|license|notice|commit_message|changelog)\b|\.(md|tsv|csv)$"
)
_LOG_EXT = (".log", ".txt", ".out", ".stdout", ".stderr")
MAX_DEPTH = 3
MAX_LOG_BYTES = 64 * 1024 * 1024


@dataclass
class Options:
    sota: str | None = None  # a val_loss value (nats) or a records folder
    data: str | None = None  # folder with the val shards (fineweb_val_*.bin)
    tokenizer: str | None = None  # the tokenizer the shards were made with
    deep: bool = False
    deep_timeout_s: float = 1800.0
    deep_tolerance_bpb: float | None = None  # None: 1e-4, or 1e-3 for a TTT score (as pgolf reproduce)
    pr_changes: list[tuple[str, str]] | None = None  # (status, path), status '?' when unknown
    pr_source: str = ""  # where the list came from, for the evidence
    min_improvement: float = 0.005
    alpha: float = 0.01


@dataclass
class Context:
    folder: Path | None
    options: Options = field(default_factory=Options)
    files: list[str] = field(default_factory=list)  # relative posix paths
    logs: list[RunSummary] = field(default_factory=list)  # every parsed log-like file that is a run
    other_logs: list[RunSummary] = field(default_factory=list)  # log files that hold no run (summaries)
    empty_logs: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped log, kept log)
    submission: dict | None = None
    submission_raw: object = None  # whatever json.loads gave (may not be a dict)
    submission_error: str | None = None
    submission_name: str | None = None  # the JSON file holding the claim
    code: CodeSet = field(default_factory=CodeSet)
    _match: Match | None = None
    _claim: Claim | None = None

    def rel(self, path: str | os.PathLike) -> str:
        try:
            return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except (ValueError, AttributeError, OSError):
            return os.fspath(path)

    @property
    def train_gpt(self) -> Path | None:
        """The trainer's file (train_gpt.py, or the file that is clearly the trainer)."""
        if self.folder is None or self.code.trainer is None:
            return None
        return self.folder / self.code.trainer.rel

    def source(self) -> Source | None:
        """The trainer's source, decoded when it is a packed wrapper (never executed)."""
        return self.code.trainer.source if self.code.trainer is not None else None

    @property
    def runs(self) -> list[RunSummary]:
        """Logs with a finite score (identical copies such as train.log dropped)."""
        return [s for s in self.logs if s.val_bpb is not None and math.isfinite(s.val_bpb)]

    @property
    def claim(self) -> Claim | None:
        if self._claim is None and self.submission is not None:
            self._claim = read_claim(self.submission)
        return self._claim

    @property
    def match(self) -> Match:
        """The claimed runs (verify/claimmatch.py)."""
        if self._match is None:
            self._match = match_claim(self.claim, self.logs)
        return self._match

    @property
    def claimed_logs(self) -> list[RunSummary]:
        """The logs the rules apply to: the claimed runs, or every run log when the claim matched none."""
        if self.match.matched:
            out: list[RunSummary] = []
            for c in self.match.runs:
                if all(c.log is not o for o in out):
                    out.append(c.log)
            return out
        return list(self.logs)

    def is_non_record(self) -> bool:
        track = (self.submission or {}).get("track")
        text = f"{track or ''} {self.folder or ''}".lower()
        return "non-record" in text or "non_record" in text or "unlimited" in text


def _walk(folder: Path) -> list[str]:
    out = []
    base = len(folder.parts)
    for root, dirs, names in os.walk(folder):
        depth = len(Path(root).parts) - base
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and depth < MAX_DEPTH)
        for n in sorted(names):
            out.append((Path(root) / n).relative_to(folder).as_posix())
    return out


def is_log_name(rel: str) -> bool:
    """A file that may hold a run's log: *.log/*.txt/*.out (not requirements, README, tables)."""
    name = PurePosixPath(rel).name
    return name.endswith(_LOG_EXT) and not _NOT_LOGS.search(name)


def _submission_file(folder: Path, files: list[str]) -> str | None:
    top = [f for f in files if "/" not in f]
    if "submission.json" in top:
        return "submission.json"
    cands = sorted(f for f in top if f.lower().startswith("submission") and f.lower().endswith(".json"))
    return cands[0] if cands else None


def load_context(folder: Path | None, options: Options | None = None) -> Context:
    ctx = Context(folder=folder, options=options or Options())
    if folder is None or not folder.is_dir():
        return ctx
    ctx.files = _walk(folder)
    parsed, hashes = [], {}
    for rel in ctx.files:
        if not is_log_name(rel):
            continue
        p = folder / rel
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if size == 0:
            ctx.empty_logs.append(rel)
            continue
        if size > MAX_LOG_BYTES:
            continue
        s = parse_log(p)
        s.path = rel
        try:
            digest = hashlib.sha1(p.read_bytes()).hexdigest()
        except OSError:
            digest = rel
        if digest in hashes:
            ctx.duplicates.append((rel, hashes[digest]))
            continue
        hashes[digest] = rel
        parsed.append(s)
    runs = [s for s in parsed if s.is_run]
    ctx.other_logs = [
        s for s in parsed if not s.is_run and (s.path.endswith(".log") or "log" in s.path.lower())
    ]
    # the same run under two names (train.log next to train_seed1337.log): count it once, keep the seed-named
    runs.sort(key=lambda s: (seed_from_name(s.path) is None, s.path))
    kept: dict[tuple, RunSummary] = {}
    for s in runs:
        key = (
            (s.seed, s.val_bpb, s.val_loss, s.total_bytes, s.train_time_ms)
            if s.val_bpb is not None
            else (s.path,)
        )
        if key in kept:
            ctx.duplicates.append((s.path, kept[key].path))
        else:
            kept[key] = s
    ctx.logs = sorted(kept.values(), key=lambda s: s.path)
    name = _submission_file(folder, ctx.files)
    if name is not None:
        ctx.submission_name = name
        _load_submission(ctx, folder / name)
    logged_code = {s.code_bytes for s in ctx.logs if s.code_bytes} | {
        s.code_bytes_uncompressed for s in ctx.logs if s.code_bytes_uncompressed
    }
    ctx.code = load_code(folder, ctx.files, logged_code)
    return ctx


def _load_submission(ctx: Context, path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        ctx.submission_error = f"cannot read: {e.strerror or e}"
        return
    if not data.strip():
        ctx.submission_error = "the file is empty"
        return
    try:
        ctx.submission_raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        ctx.submission_error = f"not UTF-8 ({e.reason} at byte {e.start})"
    except json.JSONDecodeError as e:
        ctx.submission_error = f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
    except RecursionError:
        ctx.submission_error = "invalid JSON: nested too deeply"
    else:
        if isinstance(ctx.submission_raw, dict):
            ctx.submission = ctx.submission_raw
        else:
            ctx.submission_error = f"top level is a JSON {type(ctx.submission_raw).__name__}, not an object"
