"""Everything the checks read, loaded once: the folder's files, its parsed logs and submission.json."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from verify.logparse import RunSummary, parse_log
from verify.unpack import Source, unpack_source

_LOG_TXT = re.compile(r"(log|train|seed)", re.I)
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
MAX_DEPTH = 3


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
    logs: list[RunSummary] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped log, kept log)
    submission: dict | None = None
    submission_raw: object = None  # whatever json.loads gave (may not be a dict)
    submission_error: str | None = None
    _source: Source | None = None

    def rel(self, path: str | os.PathLike) -> str:
        try:
            return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except (ValueError, AttributeError, OSError):
            return os.fspath(path)

    @property
    def train_gpt(self) -> Path | None:
        if self.folder is None:
            return None
        p = self.folder / "train_gpt.py"
        return p if p.is_file() else None

    def source(self) -> Source | None:
        """train_gpt.py's source, decoded when it is a packed wrapper (never executed)."""
        if self._source is None and self.train_gpt is not None:
            try:
                text = self.train_gpt.read_bytes().decode("utf-8", errors="replace")
            except OSError:
                return None
            self._source = unpack_source(text)
        return self._source

    @property
    def runs(self) -> list[RunSummary]:
        """Logs with a score, one per seed (identical copies such as train.log dropped)."""
        return [s for s in self.logs if s.val_bpb is not None and math.isfinite(s.val_bpb)]

    def is_non_record(self) -> bool:
        track = (self.submission or {}).get("track")
        text = f"{track or ''} {self.folder or ''}".lower()
        return "non-record" in text or "non_record" in text


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
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".log"):
        return True
    return name.endswith(".txt") and bool(_LOG_TXT.search(name)) and name != "requirements.txt"


def _seed_in_name(path: str) -> bool:
    return bool(re.search(r"seed[_\-]?\d+", os.path.basename(path), re.I))


def load_context(folder: Path | None, options: Options | None = None) -> Context:
    ctx = Context(folder=folder, options=options or Options())
    if folder is None or not folder.is_dir():
        return ctx
    ctx.files = _walk(folder)
    parsed = [parse_log(folder / rel) for rel in ctx.files if is_log_name(rel)]
    for s in parsed:
        s.path = ctx.rel(s.path)
    # identical runs (train.log next to train_seed1337.log) count once; prefer the seed-named file
    parsed.sort(key=lambda s: (not _seed_in_name(s.path), s.path))
    kept: dict[tuple, RunSummary] = {}
    for s in parsed:
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
    sub = folder / "submission.json"
    if sub.is_file():
        try:
            ctx.submission_raw = json.loads(sub.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            ctx.submission_error = f"not UTF-8 ({e.reason} at byte {e.start})"
        except json.JSONDecodeError as e:
            ctx.submission_error = f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        except RecursionError:
            ctx.submission_error = "invalid JSON: nested too deeply"
        except OSError as e:
            ctx.submission_error = f"cannot read: {e.strerror or e}"
        else:
            if isinstance(ctx.submission_raw, dict):
                ctx.submission = ctx.submission_raw
            else:
                ctx.submission_error = (
                    f"top level is a JSON {type(ctx.submission_raw).__name__}, not an object"
                )
    return ctx
