"""Documents of real English text: the embedded default, or the user's text files.

The default corpus needs no download: Python ships its reference manual's topics
(``pydoc_data.topics``) and its standard library carries docstrings. Both are read in a fixed
order, so the same Python version always yields the same documents (another Python version ships
other text, and so yields another corpus).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
import warnings

# stdlib folders without prose worth training on (tests, generated code, GUI demos)
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__",
              "turtledemo", "ensurepip", "tkinter", "pydoc_data", "encodings"}
MIN_DOC_CHARS = 200


def pydoc_topic_documents() -> list[str]:
    """One document per topic of Python's reference manual (sorted by topic name)."""
    from pydoc_data.topics import topics

    return [_clean(topics[name]) for name in sorted(topics) if len(topics[name].strip()) >= MIN_DOC_CHARS]


def stdlib_docstring_documents(stdlib_dir: str | None = None) -> list[str]:
    """One document per stdlib source file: its docstrings (module, classes, functions) in source order.

    Files are parsed, never imported (importing some stdlib modules has side effects).
    """
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            text = _file_docstrings(os.path.join(dirpath, name))
            if len(text) >= MIN_DOC_CHARS:
                docs.append(text)
    return docs


def default_documents() -> list[str]:
    """The embedded default corpus: the manual's topics, then the stdlib docstrings."""
    return pydoc_topic_documents() + stdlib_docstring_documents()


def text_file_documents(paths: list[str], split: str = "paragraphs", min_chars: int = 1) -> list[str]:
    """Documents from text files, in the order given.

    ``split``: ``file`` (one document per file), ``lines`` (one per non-empty line, e.g. JSONL-free
    dumps with one document per line) or ``paragraphs`` (blocks separated by blank lines; runs of
    short paragraphs are joined until they reach ``MIN_DOC_CHARS``).
    """
    from pgolf.errors import PgolfError, os_error_message

    docs: list[str] = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise PgolfError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise PgolfError(os_error_message(e, p)) from None
        if split == "file":
            parts = [text]
        elif split == "lines":
            parts = text.splitlines()
        elif split == "paragraphs":
            parts = _join_short(re.split(r"\n\s*\n", text))
        else:
            raise ValueError(f"unknown split {split!r}")
        docs.extend(d for d in (_clean(x) for x in parts) if len(d) >= min_chars)
    return docs


def _file_docstrings(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 40:
                found.append((getattr(node, "lineno", 0), doc))
    found.sort(key=lambda x: x[0])
    return _clean("\n\n".join(doc for _, doc in found))


def _join_short(parts: list[str]) -> list[str]:
    out, buf = [], []
    for p in parts:
        p = p.strip()
        if not p:
            continue
        buf.append(p)
        if sum(len(x) for x in buf) >= MIN_DOC_CHARS:
            out.append("\n\n".join(buf))
            buf = []
    if buf:
        out.append("\n\n".join(buf))
    return out


def _clean(text: str) -> str:
    # trailing spaces and CRLF carry no information; keep everything else as written
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip()
