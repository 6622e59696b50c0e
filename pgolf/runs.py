"""A records folder's per-seed files, read through the verifier's log parser (one parser, not two).

Layout written by ``pgolf record``: ``DIR/train_seed{SEED}.log``, ``DIR/train_seed{SEED}.ptz``,
``DIR/train_gpt.py``, ``DIR/submission.json``. Scratch files of the pipeline (console captures,
earlier attempts, reproduce runs) live outside the folder, in the hidden sibling
``.{name}.pgolf/``, so that nothing but the submission's own files is inside it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from pgolf.errors import PgolfError
from trainer.runlog import parse_json_lines
from verify.logparse import RunSummary, parse_log

_SEED_LOG = re.compile(r"^train_seed(-?\d+)\.log$")


@dataclass
class SeedFiles:
    seed: int
    log: str
    artifact: str


def seed_files(folder: str, seed: int) -> SeedFiles:
    return SeedFiles(seed, os.path.join(folder, f"train_seed{seed}.log"),
                     os.path.join(folder, f"train_seed{seed}.ptz"))


def scratch_dir(folder: str) -> str:
    """Where the pipeline keeps what is not part of the submission (outside ``folder``)."""
    folder = os.path.abspath(folder)
    return os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.pgolf")


def logged_seeds(folder: str) -> list[int]:
    """Seeds with a ``train_seed{N}.log`` in ``folder``, sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _SEED_LOG.match(n)))


def folder_seeds(folder: str) -> list[int]:
    """The seeds of a records folder: submission.json's ``seeds`` when present, else the logs'."""
    if not os.path.isdir(folder):
        raise PgolfError(f"{folder}: not a folder")
    sub = os.path.join(folder, "submission.json")
    if os.path.isfile(sub):
        try:
            with open(sub, encoding="utf-8") as f:
                seeds = json.load(f).get("seeds")
            if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
                return list(seeds)
        except (OSError, ValueError, AttributeError):
            pass  # the schema command reports a broken submission.json; here the logs suffice
    seeds = logged_seeds(folder)
    if not seeds:
        raise PgolfError(f"{folder}: no train_seed*.log files (run `python -m pgolf record --out {folder}`)")
    return seeds


def load_run(path: str) -> RunSummary:
    """Parse one log; a missing or unreadable log is a one-line error."""
    if not os.path.isfile(path):
        raise PgolfError(f"{path}: log not found")
    return parse_log(path)


def has_final_event(path: str) -> bool:
    """A seed's run is complete when its log carries the ``final`` pgolf_json event."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return any(e.get("event") == "final" for e in parse_json_lines(text))


def require_score(run: RunSummary) -> None:
    if run.val_bpb is None or run.val_loss is None:
        why = f" ({'; '.join(run.problems)})" if run.problems else ""
        raise PgolfError(f"{run.path}: no final val_loss/val_bpb in the log (incomplete run?){why}")
