"""Decode a self-extracting ``train_gpt.py`` WITHOUT running it.

Packed submissions look like ``exec(lzma.decompress(base64.b85decode("...")))``, with any aliasing
(``import lzma as L, base64 as B``), raw LZMA streams (``format=L.FORMAT_RAW, filters=[{"id":
L.FILTER_LZMA2}]``), other codecs (zlib, gzip, bz2, brotli, zstd), payloads split over adjacent string
literals, and wrappers inside wrappers. Nothing is executed: the string/bytes literals of the file are
collected (via ``ast``, or a tokenizer when the file does not parse), adjacent literals joined, each text
decoding (b85, a85, b64, urlsafe b64, hex) tried with each decompressor, and a result kept when it is
UTF-8 text that looks like Python source (it need not parse on this interpreter: a payload may use
newer syntax). Up to four nested layers are unwrapped. The raw LZMA filter chain is read from the
wrapper's own text (``FILTER_*`` names, ``dict_size``/``preset``/``lc``/``lp``/``pb``/``dist``
literals), then common chains are tried.
"""

from __future__ import annotations

import ast
import base64
import binascii
import bz2
import gzip
import io
import lzma
import re
import tokenize
import zlib
from dataclasses import dataclass, field

_MIN_BLOB = 48  # shorter literals are not payloads
_MAX_OUT = 64 * 1024 * 1024
_WRAPPER_HINT = re.compile(r"\b(?:exec|eval|compile)\s*\(|__import__|runpy|importlib")
_CODEC_HINT = re.compile(r"b85decode|b64decode|a85decode|b32decode|unhexlify|fromhex|decompress|decode\(")
_DEFS = re.compile(r"(?m)^\s*(?:def|class)\s+\w")
_PY_HINT = re.compile(r"(?m)^(?:import |from [\w.]+ import |def |class |if __name__)")


@dataclass
class Source:
    text: str  # the source to scan (decoded when the file was packed)
    layers: list[str] = field(default_factory=list)  # e.g. ['b85+lzma'] when unwrapped
    note: str = ""  # why a packed-looking file could not be decoded


def _decoders():
    return [
        ("b85", base64.b85decode),
        ("a85", base64.a85decode),
        ("b64", lambda b: base64.b64decode(b, validate=True)),
        ("b64url", lambda b: base64.urlsafe_b64decode(b)),
        ("b32", base64.b32decode),
        ("hex", binascii.unhexlify),
        ("raw", lambda b: b),
    ]


_FILTER_IDS = {name: getattr(lzma, name) for name in dir(lzma) if name.startswith("FILTER_")}


def _lzma_chains(hint: str) -> list[list[dict]]:
    """Raw LZMA filter chains: the one the wrapper names first, then common ones."""
    chains: list[list[dict]] = []
    names = re.findall(r"FILTER_\w+", hint)
    if names:
        opts = {
            k: int(v)
            for k, v in re.findall(
                r"[\"'](dict_size|preset|lc|lp|pb|dist|start_offset)[\"']\s*:"
                r"\s*(\d+)",
                hint,
            )
        }
        chain = []
        for n in names:
            fid = _FILTER_IDS.get(n)
            if fid is None:
                continue
            f: dict = {"id": fid}
            if fid in (lzma.FILTER_LZMA1, lzma.FILTER_LZMA2):
                f.update({k: v for k, v in opts.items() if k in ("dict_size", "lc", "lp", "pb")})
                if "preset" in opts:
                    f["preset"] = opts["preset"]
            elif fid == lzma.FILTER_DELTA and "dist" in opts:
                f["dist"] = opts["dist"]
            chain.append(f)
        if chain:
            chains.append(chain)
    big = 1 << 26  # a large dictionary decodes anything a smaller one encoded
    chains += [
        [{"id": lzma.FILTER_LZMA2, "dict_size": big}],
        [{"id": lzma.FILTER_LZMA1, "dict_size": big}],
        [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "dict_size": big}],
    ]
    chains += [
        [{"id": lzma.FILTER_DELTA, "dist": d}, {"id": lzma.FILTER_LZMA2, "dict_size": big}] for d in (1, 2, 4)
    ]
    return chains


def _decompressors(hint: str):
    def lzma_any(b: bytes) -> bytes:
        try:
            return lzma.LZMADecompressor().decompress(b, max_length=_MAX_OUT)
        except lzma.LZMAError:
            pass
        for chain in _lzma_chains(hint):
            try:
                return lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=chain).decompress(
                    b, max_length=_MAX_OUT
                )
            except (lzma.LZMAError, ValueError):
                continue
        raise lzma.LZMAError("no filter chain decodes it")

    def zlib_any(b: bytes) -> bytes:
        for wbits in (15, -15, 31, 47):  # zlib, raw deflate, gzip, auto
            try:
                return zlib.decompressobj(wbits).decompress(b, _MAX_OUT)
            except zlib.error:
                continue
        raise zlib.error("not deflate")

    out = [("lzma", lzma_any), ("zlib", zlib_any), ("gzip", gzip.decompress), ("bz2", bz2.decompress)]
    try:
        import brotli

        out.append(("brotli", brotli.decompress))
    except ImportError:
        pass
    try:
        import zstandard

        out.append(("zstd", lambda b: zstandard.ZstdDecompressor().decompress(b, max_output_size=_MAX_OUT)))
    except ImportError:
        pass
    out.append(("raw", lambda b: b))
    return out


def _literals_ast(text: str) -> list[bytes] | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    vals = []
    for node in ast.walk(tree):  # adjacent literals are one Constant already
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            v = node.value
            vals.append(v.encode("latin-1", "ignore") if isinstance(v, str) else v)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "a" + "b" + ...
            parts = []
            stack = [node]
            while stack:
                n = stack.pop()
                if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
                    stack += [n.right, n.left]
                elif isinstance(n, ast.Constant) and isinstance(n.value, str | bytes):
                    parts.append(
                        n.value if isinstance(n.value, bytes) else n.value.encode("latin-1", "ignore")
                    )
                else:
                    parts = []
                    break
            if len(parts) > 1:
                vals.append(b"".join(parts))
    return vals


def _literals_tokens(text: str) -> list[bytes]:
    """String literals by tokenizing (for files ``ast`` rejects); adjacent ones are joined."""
    vals: list[bytes] = []
    run: list[bytes] = []
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        toks = []
    for tok in toks:
        if tok.type == tokenize.STRING:
            try:
                v = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                v = re.sub(r"^[rbuRBU]*(['\"]{1,3})|(['\"]{1,3})$", "", tok.string)
            run.append(v if isinstance(v, bytes) else str(v).encode("latin-1", "ignore"))
        elif tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT) or tok.string in ("+", "(", ")"):
            continue
        else:
            if run:
                vals.append(b"".join(run))
            run = []
    if run:
        vals.append(b"".join(run))
    if not vals:  # last resort: quoted runs of payload characters
        vals = [
            m.group(2).encode("latin-1", "ignore")
            for m in re.finditer(r"([\"'])([A-Za-z0-9+/=!#$%&()*\-;<>?@^_`{|}~.:,\[\]]{48,})\1", text)
        ]
    return vals


def _literals(text: str) -> list[bytes]:
    vals = _literals_ast(text)
    if vals is None:
        vals = _literals_tokens(text)
    return sorted((v for v in vals if len(v) >= _MIN_BLOB), key=len, reverse=True)[:4]


def looks_like_python(text: str) -> bool:
    """UTF-8 text that is Python source (parsing on this interpreter not required)."""
    if not text.strip() or "\x00" in text:
        return False
    try:
        ast.parse(text)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    printable = sum(c.isprintable() or c in "\n\t\r" for c in text[:20000]) / max(1, len(text[:20000]))
    return printable > 0.98 and bool(_PY_HINT.search(text))


def _try_blob(blob: bytes, hint: str) -> tuple[str, str] | None:
    compact = re.sub(rb"\s+", b"", blob)
    for dname, dec in _decoders():
        try:
            raw = dec(compact) if dname != "raw" else blob
        except (ValueError, binascii.Error, TypeError):
            continue
        if not raw:
            continue
        for cname, dcomp in _decompressors(hint):
            if dname == "raw" and cname == "raw":
                continue
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
            if looks_like_python(txt):
                layer = "+".join(p for p in (dname, cname) if p != "raw")
                return layer, txt
    return None


PACKED_MAX_LINES = 100  # wrappers are a few lines around one literal; a decoded trainer is thousands


def looks_packed(text: str) -> bool:
    """A short file that execs/evals a decoded payload (a full source that merely calls
    ``torch.compile`` and ``brotli.decompress`` is not one)."""
    if not (_WRAPPER_HINT.search(text) and _CODEC_HINT.search(text)):
        return False
    # short, or long only because its payload is split over many lines of literals
    return text.count("\n") <= PACKED_MAX_LINES or len(_DEFS.findall(text)) < 3


def unpack_source(text: str, max_layers: int = 4) -> Source:
    """The source to scan: ``text`` itself, or the decoded payload of a packed wrapper."""
    src = Source(text=text)
    for _ in range(max_layers):
        if not looks_packed(src.text):
            break
        found = None
        for blob in _literals(src.text):
            found = _try_blob(blob, src.text)
            if found:
                break
        if not found:
            src.note = "the file looks packed (exec of a decoded payload) but no payload could be decoded"
            break
        layer, decoded = found
        src.layers.append(layer)
        src.text = decoded
    return src
