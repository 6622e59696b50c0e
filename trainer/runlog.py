"""The run log: conventional challenge lines for humans, one JSON line per result for tools.

Conventional lines (``step:N/M train_loss:...``, ``quantized_ttt val_loss:... val_bpb:...``)
keep reviewers' habits working; lines starting with ``JSON_PREFIX`` carry the same numbers
at full precision for the record pipeline and the verifier.
"""

from __future__ import annotations

import json
import os
import sys

JSON_PREFIX = "pgolf_json "


class RunLog:
    """Writes on rank 0 only: to stdout and appended to ``path`` (flushed per line)."""

    def __init__(self, path: str | None, is_main: bool = True):
        self.path = path
        self.is_main = is_main
        if is_main and path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def line(self, msg: str) -> None:
        if not self.is_main:
            return
        print(msg, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(msg + "\n")

    def event(self, event: str, **fields) -> None:
        """One machine-readable line: ``pgolf_json {"event": ..., ...}``."""
        self.line(JSON_PREFIX + json.dumps({"event": event, **fields}, sort_keys=True))


def parse_json_lines(text: str) -> list[dict]:
    """Every ``pgolf_json`` event in a log's text, in order; malformed lines are skipped."""
    out = []
    for raw in text.splitlines():
        if raw.startswith(JSON_PREFIX):
            try:
                obj = json.loads(raw[len(JSON_PREFIX):])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def die(msg: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit (for bad input, missing GPU, ...)."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(code)
