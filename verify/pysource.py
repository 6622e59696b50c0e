"""Parse Python source of any recent version on this interpreter, for static scanning only.

``parse_source(text)`` returns an ``ast`` tree with the original line numbers, or ``None`` with a note.
Python 3.12 lifted the f-string restrictions (the same quote inside a replacement field, e.g.
``f"{", ".join(xs)}"``); such files do not parse on 3.11. When ``ast.parse`` fails, each f-string that
reuses its own quote inside a field is rewritten with triple quotes of the same kind (the text of the
fields is untouched, so names and calls survive) and parsing is retried; failing that, the caller falls
back to line-level text scanning.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_PREFIX = re.compile(r"(?i)(rb|br|fr|rf|b|r|u|f)?('''|\"\"\"|'|\")")


@dataclass
class Parsed:
    tree: ast.Module | None
    note: str = ""  # how it was parsed ("" plain, "rewrote N f-strings", or why it failed)


def parse_source(text: str) -> Parsed:
    try:
        return Parsed(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        first = e
    try:
        fixed, n = modernize_fstrings(text)
    except (IndexError, ValueError, RecursionError):
        fixed, n = text, 0
    if n:
        try:
            return Parsed(ast.parse(fixed), f"parsed after rewriting {n} f-string(s) of newer Python syntax")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            first = e
    where = f" (line {first.lineno})" if isinstance(first, SyntaxError) and first.lineno else ""
    return Parsed(None, f"does not parse on this Python{where}: scanned as text")


def _scan_string(src: str, i: int) -> tuple[int, bool]:
    """End index of the string literal starting at ``i`` (prefix included) and whether it is an
    f-string that reuses its own quote inside a replacement field."""
    m = _PREFIX.match(src, i)
    prefix, quote = (m.group(1) or "").lower(), m.group(2)
    j = m.end()
    is_f, is_raw = "f" in prefix, "r" in prefix
    reuse = False
    depth = 0
    n = len(src)
    while j < n:
        c = src[j]
        if depth == 0:
            if c == "\\" and j + 1 < n:
                j += 2
                continue
            if src.startswith(quote, j):
                return j + len(quote), reuse
            if is_f and c == "{":
                if src.startswith("{{", j):
                    j += 2
                    continue
                depth = 1
            elif len(quote) == 1 and c == "\n":
                return j, reuse  # unterminated: stop at the line end
            j += 1
            continue
        # inside a replacement field: nested strings, brackets
        if c in "\"'" or (c.isalpha() and _PREFIX.match(src, j) and (j == 0 or not src[j - 1].isalnum())):
            m2 = _PREFIX.match(src, j)
            if m2 and (c in "\"'" or m2.group(1)):
                if m2.group(2)[0] == quote[0] and len(quote) == 1:
                    reuse = True
                end, inner_reuse = _scan_string(src, j)
                reuse = reuse or inner_reuse
                j = end
                continue
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
        j += 1
    _ = is_raw
    return n, reuse


def modernize_fstrings(src: str) -> tuple[str, int]:
    """``src`` with 3.12-style f-strings made parseable by 3.11 (same line numbers); and how many."""
    out: list[str] = []
    i, n, count = 0, len(src), 0
    while i < n:
        c = src[i]
        if c == "#":
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(src[i:j])
            i = j
            continue
        if c.isalpha() or c == "_":
            m = _PREFIX.match(src, i)
            if m and m.group(1) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
                pass  # a prefixed string literal: handled below
            else:
                j = i
                while j < n and (src[j].isalnum() or src[j] == "_"):
                    j += 1
                out.append(src[i:j])
                i = j
                continue
        m = _PREFIX.match(src, i)
        if m and (c in "\"'" or m.group(1)):
            end, reuse = _scan_string(src, i)
            lit = src[i:end]
            quote = m.group(2)
            if reuse and len(quote) == 1 and "f" in (m.group(1) or "").lower() and lit.endswith(quote):
                body = lit[m.end() - i : len(lit) - 1]
                lit = (m.group(1) or "") + quote * 3 + body + quote * 3
                count += 1
            out.append(lit)
            i = end
            continue
        out.append(c)
        i += 1
    return "".join(out), count
