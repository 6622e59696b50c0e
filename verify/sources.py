"""The folder's code: which file is the trainer, and the decoded sources to scan.

The trainer is ``train_gpt.py`` when it holds code; otherwise the ``*.py`` that is clearly a trainer
(``train_gpt_v5.py``, ``train_gpt_cuda_ternary.py``, ``train_mdlm.py`` ...): it mentions the score
(``val_bpb``/``bpb``) and takes optimizer steps. A tiny ``train_gpt.py`` that execs a sibling file
(``exec(open(... "train_gpt_decode.py").read())``) brings that file in. The scan set is every trainer-like
file plus the folder's modules they import (``import ngram_tilt``); data-preparation scripts that the
trainer does not import are not scanned. Packed files are decoded (verify/unpack.py), never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from verify.pysource import Parsed, parse_source
from verify.unpack import Source, unpack_source

_TRAINER_SIGNS = (
    re.compile(r"val_bpb|bits.per.byte|\bbpb\b"),
    re.compile(r"\.backward\(|optimizer|\.step\(\)|Muon|AdamW?\b"),
)
_IMPORT = re.compile(r"(?m)(?:^|[;:])\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))")
_SIBLING = re.compile(r"[\"']([\w\-.]+\.py)[\"']")
MAX_SCAN_BYTES = 3_000_000


@dataclass
class CodeFile:
    rel: str  # posix path relative to the folder
    size: int
    raw: str  # the file's text
    source: Source  # decoded when packed
    trainer_like: bool = False
    _parsed: Parsed | None = None

    @property
    def text(self) -> str:
        return self.source.text

    @property
    def parsed(self) -> Parsed:
        if self._parsed is None:
            self._parsed = parse_source(self.text)
        return self._parsed

    @property
    def where(self) -> str:
        if self.source.layers:
            return f"{self.rel} (packed: {' then '.join(self.source.layers)}; lines of the decoded source)"
        return self.rel


@dataclass
class CodeSet:
    files: list[CodeFile] = field(default_factory=list)  # every *.py of the folder (depth <= 2)
    trainer: CodeFile | None = None
    scan: list[CodeFile] = field(default_factory=list)  # what the legality scan reads
    empty: list[str] = field(default_factory=list)  # *.py files of size 0


def is_trainer_like(text: str, name: str = "") -> bool:
    """Takes optimizer steps, and reports the score or is named like a trainer (train*.py)."""
    trains = bool(_TRAINER_SIGNS[1].search(text))
    return trains and (bool(_TRAINER_SIGNS[0].search(text)) or PurePosixPath(name).name.startswith("train"))


def load_code(folder: Path, rels: list[str], logged_code_sizes: set[int] | None = None) -> CodeSet:
    cs = CodeSet()
    for rel in rels:
        if not rel.endswith(".py") or rel.count("/") > 1:
            continue
        p = folder / rel
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if not data.strip():
            cs.empty.append(rel)
            continue
        text = data[:MAX_SCAN_BYTES].decode("utf-8", errors="replace")
        src = unpack_source(text)
        cf = CodeFile(rel, len(data), text, src, trainer_like=is_trainer_like(src.text, rel))
        cs.files.append(cf)
    by_name = {PurePosixPath(f.rel).name: f for f in cs.files}
    # a tiny launcher that execs a sibling file: the sibling is the code
    for f in list(cs.files):
        if f.size < 2048 and re.search(r"\bexec\s*\(|runpy|subprocess|os\.system", f.raw):
            for name in _SIBLING.findall(f.raw):
                sib = by_name.get(name)
                if sib is not None and sib is not f:  # noqa: SIM102
                    sib.trainer_like = sib.trainer_like or is_trainer_like(sib.text, sib.rel)
    top = [f for f in cs.files if "/" not in f.rel]
    cs.trainer = _pick_trainer(top or cs.files, logged_code_sizes or set())
    trainers = [f for f in cs.files if f.trainer_like]
    if cs.trainer is not None and cs.trainer not in trainers:
        trainers.insert(0, cs.trainer)
    # the folder's modules imported by the trainers
    scan = list(trainers)
    modules = {PurePosixPath(f.rel).stem: f for f in cs.files}
    i = 0
    while i < len(scan):
        for m in _IMPORT.finditer(scan[i].text):
            names = (
                [m.group(1)] if m.group(1) else [n.strip().split(" as ")[0] for n in m.group(2).split(",")]
            )
            for n in names:
                mod = modules.get(n.split(".")[0].strip())
                if mod is not None and mod not in scan:
                    scan.append(mod)
        i += 1
    cs.scan = scan
    return cs


def _pick_trainer(files: list[CodeFile], logged: set[int]) -> CodeFile | None:
    named = next((f for f in files if PurePosixPath(f.rel).name == "train_gpt.py"), None)
    if named is not None:
        if named.trainer_like or named.source.layers or named.size >= 2048:
            return named
        # a launcher: the sibling it runs is the trainer
        for name in _SIBLING.findall(named.raw):
            sib = next((f for f in files if PurePosixPath(f.rel).name == name and f is not named), None)
            if sib is not None:
                return sib
        return named
    cands = [f for f in files if f.trainer_like]
    if not cands:
        return None
    sized = [f for f in cands if f.size in logged]
    if sized:
        return sized[0]
    train_named = [f for f in cands if PurePosixPath(f.rel).name.startswith("train")]
    pool = train_named or cands
    return max(pool, key=lambda f: (PurePosixPath(f.rel).name.startswith("train_gpt"), f.size))
