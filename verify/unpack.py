"""Decode a self-extracting ``train_gpt.py`` (base85/base64 + lzma/zlib/... + exec) WITHOUT running it.

Packed submissions look like ``exec(lzma.decompress(base64.b85decode("...")))``. We never execute
anything: we take the string/bytes literals of the file (via ``ast``, or a regex when the file does
not parse), try each text decoding (b85, a85, b64) followed by each decompressor (lzma, zlib, gzip,
bz2, brotli, zstd) and keep the result when it is UTF-8 text that parses as Python. Up to three
nested layers are unwrapped.
"""

from __future__ import annotations

import ast
import base64
import binascii
import bz2
import gzip
import lzma
import re
import zlib
from dataclasses import dataclass, field

_MIN_BLOB = 48  # shorter literals are not payloads
_MAX_OUT = 64 * 1024 * 1024
_LITERAL_RE = re.compile(r'(?s)(?:[rbRB]{0,2})("""(.*?)"""|\'\'\'(.*?)\'\'\'|"([^"\n]*)"|\'([^\'\n]*)\')')
_WRAPPER_HINT = re.compile(r"\b(?:exec|eval|compile)\s*\(|__import__|runpy|importlib")


@dataclass
class Source:
    text: str  # the source to scan (decoded when the file was packed)
    layers: list[str] = field(default_factory=list)  # e.g. ['b85+lzma'] when unwrapped
    note: str = ""  # why a packed-looking file could not be decoded


def _decoders():
    out = [
        ("b85", base64.b85decode),
        ("a85", base64.a85decode),
        ("b64", lambda b: base64.b64decode(b, validate=False)),
    ]
    return out


def _decompressors():
    out = [
        ("lzma", lambda b: lzma.LZMADecompressor().decompress(b, max_length=_MAX_OUT)),
        ("zlib", lambda b: zlib.decompressobj().decompress(b, _MAX_OUT)),
        ("gzip", gzip.decompress),
        ("bz2", bz2.decompress),
        ("raw", lambda b: b),
    ]
    try:
        import brotli

        out.insert(4, ("brotli", brotli.decompress))
    except ImportError:
        pass
    try:
        import zstandard

        out.insert(
            4, ("zstd", lambda b: zstandard.ZstdDecompressor().decompress(b, max_output_size=_MAX_OUT))
        )
    except ImportError:
        pass
    return out


def _literals(text: str) -> list[bytes]:
    vals: list[bytes] = []
    try:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                v = node.value
                vals.append(v.encode("latin-1", "ignore") if isinstance(v, str) else v)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        for m in _LITERAL_RE.finditer(text):
            v = next(g for g in m.groups()[1:] if g is not None) if any(m.groups()[1:]) else ""
            vals.append(v.encode("latin-1", "ignore"))
    return sorted((v for v in vals if len(v) >= _MIN_BLOB), key=len, reverse=True)[:4]


def _is_python(text: str) -> bool:
    try:
        ast.parse(text)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def _try_blob(blob: bytes) -> tuple[str, str] | None:
    compact = re.sub(rb"\s+", b"", blob)
    for dname, dec in _decoders():
        try:
            raw = dec(compact)
        except (ValueError, binascii.Error, TypeError):
            continue
        for cname, dcomp in _decompressors():
            try:
                out = dcomp(raw)
            except Exception:  # every codec has its own error type
                continue
            if not out:
                continue
            try:
                txt = out.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if _is_python(txt):
                return f"{dname}+{cname}" if cname != "raw" else dname, txt
    return None


PACKED_MAX_LINES = 100  # wrappers are a few lines around one literal; a decoded trainer is thousands


def looks_packed(text: str) -> bool:
    """A short file that execs/evals a decoded payload (a full source that merely calls
    ``torch.compile`` and ``brotli.decompress`` is not one)."""
    return text.count("\n") <= PACKED_MAX_LINES and bool(_WRAPPER_HINT.search(text)) and bool(
        re.search(r"b85decode|b64decode|a85decode|decompress", text)
    )


def unpack_source(text: str, max_layers: int = 3) -> Source:
    """The source to scan: ``text`` itself, or the decoded payload of a packed wrapper."""
    src = Source(text=text)
    for _ in range(max_layers):
        if not looks_packed(src.text):
            break
        found = None
        for blob in _literals(src.text):
            found = _try_blob(blob)
            if found:
                break
        if not found:
            src.note = "the file looks packed (exec of a decoded payload) but no payload could be decoded"
            break
        layer, decoded = found
        src.layers.append(layer)
        src.text = decoded
    return src
