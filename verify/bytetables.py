"""Static byte accounting of a custom tokenizer: which bytes the score divides by, without data.

val_bpb divides by the UTF-8 bytes of the ORIGINAL validation text. A custom tokenizer can inflate that
count: pieces that stand for no text (user-defined markers such as CaseOps' case controls) still have
a text of their own that the usual byte table (``len(piece.encode())``) counts; a shipped byte table
(``.npz``/``.npy``, JSON, a literal list in the code) can say anything. Read here:

- ``*.model`` (SentencePiece, read by verify/spmodel.py) and ``*.vocab`` files: user-defined pieces, and
  the bytes each would count;
- byte tables in ``*.npz``/``*.npy``, in tokenizer JSON files, and literal lists of >= 256 integers
  assigned to a ``*byte*`` name in the code, compared with the pieces' text when a tokenizer is there;
- whether the code counts bytes from per-token sidecars of the original text
  (``fineweb_val_bytes_*.bin``, CaseOps-style): then markers count nothing and that is legal.
Findings: (status, text) pairs for check 8.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

from verify.limits import OFFICIAL_TOKENIZERS
from verify.result import PASS, WARN
from verify.spmodel import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    ModelError,
    Piece,
    read_pieces,
)

SIDECAR = re.compile(
    r"fineweb_val_bytes|val_token_bytes|byte_sidecar|token_bytes_\w*\.bin|val_bytes_\w*\.bin"
)
BYTE_NAME = re.compile(r"(?i)byte")
MAX_TABLE_FILE = 64 * 1024 * 1024


def _vocab_pieces(text: str) -> list[Piece]:
    out = []
    for ln in text.splitlines():
        piece = ln.split("\t", 1)[0]
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            out.append(Piece(piece, BYTE))
        elif piece in ("<unk>",):
            out.append(Piece(piece, UNKNOWN))
        elif re.fullmatch(r"<(?:s|/s|pad|bos|eos|mask)>", piece):
            out.append(Piece(piece, CONTROL))
        else:
            out.append(Piece(piece, NORMAL))
    return out


def _int_arrays_npz(data: bytes) -> dict[str, list[int]]:
    import numpy as np

    out = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for k in z.files:
                a = z[k]
                if a.ndim == 1 and a.dtype.kind in "iu" and a.size >= 256:
                    out[k] = a.astype("int64").tolist()
    except (ValueError, OSError, zipfile.BadZipFile):
        pass
    return out


def _int_array_npy(data: bytes) -> list[int] | None:
    import numpy as np

    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError):
        return None
    if getattr(a, "ndim", 0) == 1 and a.dtype.kind in "iu" and a.size >= 256:
        return a.astype("int64").tolist()
    return None


def _json_tables(obj, prefix="") -> dict[str, list[int]]:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if (
                BYTE_NAME.search(str(k))
                and isinstance(v, list)
                and len(v) >= 256
                and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            ):
                out[key] = v
            elif isinstance(v, dict | list):
                out.update(_json_tables(v, key))
    return out


_LITERAL_TABLE = re.compile(r"(?m)^[ \t]*(\w*[Bb][Yy][Tt][Ee]\w*)\s*=\s*[\[(]\s*(?:-?\d+\s*,\s*){255,}")


def _code_tables(text: str) -> list[tuple[int, str, int]]:
    """(line, name, entries) of literal integer lists of >= 256 entries assigned to a *byte* name."""
    out = []
    for m in _LITERAL_TABLE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        opening = m.end(1) + text[m.end(1):m.end()].find("=") + 1
        close = {"[": "]", "(": ")"}
        start = min(i for i in (text.find("[", opening), text.find("(", opening)) if i >= 0)
        end = text.find(close[text[start]], start)
        body = text[start + 1: end if end > 0 else m.end()]
        out.append((line, m.group(1), len(re.findall(r"-?\d+", body))))
    return out


def _compare(table: list[int], pieces: list[Piece], what: str, tok: str) -> tuple[str, str]:
    n = min(len(table), len(pieces))
    over = [
        (i, pieces[i].piece, table[i], pieces[i].text_bytes())
        for i in range(n)
        if pieces[i].type not in (CONTROL, UNKNOWN, UNUSED) and table[i] > pieces[i].text_bytes()
    ]
    if over:
        ex = ", ".join(f"id {i} {p!r}: {t} > {b}" for i, p, t, b in over[:4])
        return WARN, (
            f"[bytes] {what} counts more bytes than the text of {len(over)} piece(s) of {tok} ({ex}): "
            "the score's byte count is inflated; recount with --data"
        )
    return PASS, f"{what} agrees with the pieces of {tok} ({n} entries; no piece counts more than its text)"


def analyse(folder: Path, files: list[str], code_texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Findings about the byte accounting of the folder's tokenizer (empty when nothing to say)."""
    out: list[tuple[str, str]] = []
    code = "\n".join(t for _, t in code_texts)
    sidecar = SIDECAR.search(code)
    tokenizers: list[tuple[str, list[Piece]]] = []
    import hashlib

    for rel in files:
        p = folder / rel
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if size > MAX_TABLE_FILE:
            continue
        if rel.endswith(".model"):
            data = p.read_bytes()
            if hashlib.sha256(data).hexdigest() in OFFICIAL_TOKENIZERS:
                continue
            try:
                tokenizers.append((rel, read_pieces(data)))
            except ModelError as e:
                out.append((WARN, f"[bytes] {rel}: not a SentencePiece model ({e})"))
        elif rel.endswith(".vocab"):
            stem = rel[: -len(".vocab")]
            if any(f == stem + ".model" for f in files):
                continue  # the model beside it is what counts
            tokenizers.append((rel, _vocab_pieces(p.read_text(encoding="utf-8", errors="replace"))))
    for rel, pieces in tokenizers:
        markers = [x for x in pieces if x.type == USER_DEFINED]
        if not markers:
            continue
        ex = ", ".join(f"{m.piece!r} ({m.text_bytes()} B)" for m in markers[:4])
        if sidecar:
            out.append(
                (
                    PASS,
                    f"{rel}: {len(markers)} user-defined piece(s) ({ex}) stand for no original text; the "
                    f"code counts the original bytes from per-token sidecars ({sidecar.group(0)}): legal",
                )
            )
        else:
            out.append(
                (
                    WARN,
                    f"[bytes] {rel}: {len(markers)} user-defined piece(s) ({ex}) would count their own "
                    "text's bytes in the usual byte table, and the code reads no byte sidecar of the "
                    "original text: if they stand for no text the byte count is inflated; recount "
                    "with --data",
                )
            )
    ref = tokenizers[0] if tokenizers else None
    for rel in files:
        tables: dict[str, list[int]] = {}
        p = folder / rel
        try:
            if rel.endswith(".npz") and p.stat().st_size <= MAX_TABLE_FILE:
                tables = {f"{rel}:{k}": v for k, v in _int_arrays_npz(p.read_bytes()).items()}
            elif rel.endswith(".npy") and p.stat().st_size <= MAX_TABLE_FILE:
                a = _int_array_npy(p.read_bytes())
                tables = {rel: a} if a is not None else {}
            elif rel.endswith(".json") and p.stat().st_size <= MAX_TABLE_FILE:
                try:
                    obj = json.loads(p.read_bytes().decode("utf-8", errors="replace"))
                except (json.JSONDecodeError, RecursionError):
                    obj = None
                tables = {f"{rel}:{k}": v for k, v in _json_tables(obj).items()}
        except OSError:
            continue
        for what, table in tables.items():
            if ref is not None:
                out.append(_compare(table, ref[1], f"the byte table {what}", ref[0]))
            else:
                out.append(
                    (
                        WARN,
                        f"[bytes] the byte table {what} ({len(table)} entries) cannot be compared with a "
                        "tokenizer in the folder: recount with --data",
                    )
                )
    for rel, text in code_texts:
        for line, name, n in _code_tables(text):
            out.append(
                (
                    WARN,
                    f"[bytes] {rel}:{line}: a hard-coded byte table {name} ({n} entries): the byte "
                    "count does not come from the tokenizer's pieces; recount with --data",
                )
            )
    return out
