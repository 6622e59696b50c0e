"""Bundle the readable trainer (``trainer/*.py``) into the counted ``submission/train_gpt.py``.

Bundling concatenates the modules in ``MODULE_ORDER`` (dependency order), drops their one-line
``from trainer.X import a, b`` lines and their ``from __future__`` lines (hoisted once to the
top), strips comments and docstrings (the readable source stays in trainer/), and appends
``if __name__ == "__main__": main()``. ``ast`` checks guard the result: top-level names unique
across modules, no other form of import of the package, no ``trainer.`` attribute access, every
imported name defined at the top of an earlier module.

Packing wraps the bundle in a few lines that lzma-decompress its base85 text, register it in
``linecache`` under a fake file name (so tracebacks and ``inspect`` show source) and ``exec`` it in
the file's own globals (so ``__file__`` is still the counted file); ``sys.excepthook`` is the
``traceback`` module's printer, which reads ``linecache`` (CPython's built-in one reads only real
files before 3.13). Same input -> same bytes.
``python -m pgolf pack [--out PATH] [--check]``; ``--check`` compares with the committed file.
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import io
import lzma
import os
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError

PACKAGE = "trainer"
# Dependency order: a module may import only from modules before it.
MODULE_ORDER: list[str] = [
    "config", "dist", "runlog", "data", "bpb", "attention", "kernels", "model", "optim", "quant", "pergroup",
    "artifact", "accounting", "evaluate", "ttt", "ttt_lora", "ttt_phased", "train", "export", "final", "main",
]
# trainer modules deliberately left out of the counted file (verifier-side tools)
NOT_BUNDLED: list[str] = ["probes"]
IGNORED_FILES = {"__init__.py", "__main__.py"}
DEFAULT_OUT = "submission/train_gpt.py"
BUNDLE_FILENAME = "<train_gpt bundle>"  # the source's name in tracebacks (registered in linecache)
_WRAPPER_NAMES = {"_pgolf_src", "_pgolf_name", "base64", "linecache", "lzma", "sys", "traceback"}


class PackError(PgolfError):
    """The trainer cannot be bundled (the message names the file and the problem)."""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# module set


def trainer_modules(src_dir: Path) -> list[str]:
    """Module names of the ``.py`` files in ``src_dir`` (except __init__/__main__)."""
    return sorted(p.stem for p in src_dir.glob("*.py") if p.name not in IGNORED_FILES)


def check_module_set(src_dir: Path, modules: list[str], not_bundled: list[str]) -> None:
    """Every module in ``src_dir`` is listed (bundled or not), and every bundled one exists."""
    present = set(trainer_modules(src_dir))
    listed = set(modules) | set(not_bundled)
    unlisted = sorted(present - listed)
    missing = sorted(set(modules) - present)
    dup = sorted({m for m in modules if modules.count(m) > 1})
    problems = []
    if unlisted:
        problems.append(f"modules not in pgolf/pack.py MODULE_ORDER: {', '.join(unlisted)}")
    if missing:
        problems.append(f"MODULE_ORDER lists modules that do not exist: {', '.join(missing)}")
    if dup:
        problems.append(f"MODULE_ORDER lists modules twice: {', '.join(dup)}")
    if problems:
        raise PackError(f"{src_dir}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# checks on one module


def _top_level_bindings(body: list[ast.stmt]) -> list[tuple[str, str, int]]:
    """(name, signature, line) for each name a module binds at top level; import bindings carry
    a signature so identical imports in two modules are not a conflict."""
    out: list[tuple[str, str, int]] = []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Name):
            return [node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return [n for e in node.elts for n in targets(e)]
        if isinstance(node, ast.Starred):
            return targets(node.value)
        return []

    for st in body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((st.name, "def", st.lineno))
        elif isinstance(st, ast.Assign):
            out += [(n, "assign", st.lineno) for t in st.targets for n in targets(t)]
        elif isinstance(st, (ast.AnnAssign, ast.AugAssign)):
            out += [(n, "assign", st.lineno) for n in targets(st.target)]
        elif isinstance(st, ast.Import):
            for a in st.names:
                bound = a.asname or a.name.split(".")[0]
                out.append((bound, f"import {a.name} as {a.asname}", st.lineno))
        elif isinstance(st, ast.ImportFrom):
            for a in st.names:
                out.append((a.asname or a.name, f"from {st.module} import {a.name}", st.lineno))
        elif isinstance(st, (ast.For, ast.AsyncFor)):
            out += [(n, "assign", st.lineno) for n in targets(st.target)]
            out += _top_level_bindings(st.body + st.orelse)
        elif isinstance(st, (ast.With, ast.AsyncWith)):
            out += [(n, "assign", st.lineno) for it in st.items if it.optional_vars is not None
                    for n in targets(it.optional_vars)]
            out += _top_level_bindings(st.body)
        elif isinstance(st, (ast.If, ast.While)):
            out += _top_level_bindings(st.body + st.orelse)
        elif isinstance(st, ast.Try) or type(st).__name__ == "TryStar":
            out += _top_level_bindings(st.body + st.orelse + st.finalbody)
            for hd in st.handlers:
                if hd.name:
                    out.append((hd.name, "assign", hd.lineno))
                out += _top_level_bindings(hd.body)
    return out


@dataclass
class _Module:
    name: str
    path: Path
    source: str
    tree: ast.Module
    drop_lines: set[int]  # 1-based lines removed when bundling
    futures: set[str]
    imports: list[tuple[str, list[str], int]]  # (module, names, line) of trainer imports


def _is_main_guard(st: ast.stmt) -> bool:
    if not isinstance(st, ast.If) or not isinstance(st.test, ast.Compare):
        return False
    parts = [st.test.left, *st.test.comparators]
    return any(isinstance(p, ast.Name) and p.id == "__name__" for p in parts)


def _read_module(path: Path, name: str, package: str) -> _Module:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PackError(f"{path}: cannot read ({e})") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise PackError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    drop, futures, imports = set(), set(), []
    top = {id(st) for st in tree.body}

    def fail(line: int, msg: str):
        raise PackError(f"{path}:{line}: {msg}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == package or a.name.startswith(package + "."):
                    fail(node.lineno, f"`import {a.name}`: write `from {package}.MODULE import name` instead")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                fail(node.lineno, f"relative import: write `from {package}.MODULE import name` instead")
            if mod == "__future__":
                if id(node) not in top or node.lineno != node.end_lineno:
                    fail(node.lineno, "`from __future__` must be a one-line top-level statement")
                futures.update(a.name for a in node.names)
                drop.add(node.lineno)
            elif mod == package:
                fail(node.lineno, f"`from {package} import ...`: write `from {package}.MODULE import name`")
            elif mod.startswith(package + "."):
                target = mod[len(package) + 1:]
                if id(node) not in top:
                    fail(node.lineno, f"`from {mod} import` must be at the top level of the module")
                if node.lineno != node.end_lineno:
                    fail(node.lineno, f"`from {mod} import` must fit on one line (the bundler drops it)")
                if "." in target:
                    fail(node.lineno, f"`from {mod} import`: trainer has no subpackages")
                for a in node.names:
                    if a.asname or a.name == "*":
                        fail(node.lineno, f"`from {mod} import {a.name}`"
                                          f"{' as ' + a.asname if a.asname else ''}: no aliases or * "
                                          "(the bundle has one namespace)")
                imports.append((target, [a.name for a in node.names], node.lineno))
                drop.add(node.lineno)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == package):
            fail(node.lineno, f"`{package}.{node.attr}`: attribute access on the package cannot be bundled")
        elif isinstance(node, ast.Name) and node.id == package:
            fail(node.lineno, f"name `{package}` used: it does not exist in the bundle")
    for st in tree.body:
        if _is_main_guard(st):
            fail(st.lineno, "`if __name__ == ...` block: the bundler appends the single entry point")
    return _Module(name, path, source, tree, drop, futures, imports)


# ---------------------------------------------------------------------------------------------
# stripping comments and docstrings


def strip_source(source: str) -> str:
    """``source`` without comments, docstrings and blank lines (string contents untouched).
    A docstring that is a body's only statement becomes ``pass``."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    doc_ranges: list[tuple[int, int, bool]] = []  # (first, last, only statement)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                continue
            doc = body[0]
            before = lines[doc.lineno - 1][: doc.col_offset]
            after = lines[doc.end_lineno - 1][doc.end_col_offset :].strip()
            if before.strip() or (after and not after.startswith("#")):
                continue  # shares its line with other code (`def f(): """doc"""`): leave it
            doc_ranges.append((doc.lineno, doc.end_lineno, len(body) == 1))
    protected: set[int] = set()  # rows inside multi-line strings: never edited
    comments: dict[int, int] = {}  # row -> column where a comment starts
    fstring_starts: list[int] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.start[1]
        elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            protected.update(range(tok.start[0] + 1, tok.end[0] + 1))
        elif tok.type == getattr(tokenize, "FSTRING_START", -1):
            fstring_starts.append(tok.start[0])
        elif tok.type == getattr(tokenize, "FSTRING_END", -1):
            start = fstring_starts.pop()
            protected.update(range(start + 1, tok.end[0] + 1))
    out = list(lines)
    for first, last, only in doc_ranges:
        indent = lines[first - 1][: len(lines[first - 1]) - len(lines[first - 1].lstrip())]
        for row in range(first, last + 1):
            out[row - 1] = ""
            protected.discard(row)
        if only:
            out[first - 1] = indent + "pass\n"
    result = []
    for row, text in enumerate(out, start=1):
        if row in protected:
            result.append(text)
            continue
        if row in comments:
            text = text[: comments[row]]
        text = text.rstrip()
        if text:
            result.append(text + "\n")
    return "".join(result)


# ---------------------------------------------------------------------------------------------
# bundle and pack


def bundle_source(src_dir: str | Path | None = None, modules: list[str] | None = None, *,
                  package: str = PACKAGE, not_bundled: list[str] | None = None, strict: bool = True,
                  strip: bool = True, entry: str | None = "main") -> str:
    """The single-file trainer. ``strict`` also checks that ``modules`` + ``not_bundled`` are
    exactly the modules of ``src_dir`` (the pack does; a test on a partial tree may not).
    ``entry``: the top-level function called under ``if __name__ == "__main__"`` (None: none)."""
    src = Path(src_dir) if src_dir is not None else repo_root() / package
    modules = list(MODULE_ORDER if modules is None else modules)
    not_bundled = list(NOT_BUNDLED if not_bundled is None else not_bundled)
    if strict:
        check_module_set(src, modules, not_bundled)
    mods = [_read_module(src / f"{m}.py", m, package) for m in modules]
    defined: dict[str, tuple[str, str, int]] = {}  # name -> (module, signature, line)
    top_names: dict[str, set[str]] = {}
    for m in mods:
        names = set()
        for name, sig, line in _top_level_bindings(m.tree.body):
            names.add(name)
            if sig.startswith(f"from {package}."):
                continue  # the defining module's binding is the one that counts
            prev = defined.get(name)
            if prev and prev[0] != m.name and (prev[1] != sig or sig in ("def", "assign")):
                raise PackError(f"{m.path}:{line}: top-level name `{name}` is also defined in "
                                f"{src / (prev[0] + '.py')}:{prev[2]} (names must be unique across modules)")
            defined.setdefault(name, (m.name, sig, line))
        top_names[m.name] = names
    position = {m: i for i, m in enumerate(modules)}
    for m in mods:
        for target, names, line in m.imports:
            if target not in position:
                why = "is not bundled" if target in not_bundled else "is not in MODULE_ORDER"
                raise PackError(f"{m.path}:{line}: imports from {package}.{target}, which {why}")
            if position[target] >= position[m.name]:
                raise PackError(f"{m.path}:{line}: imports from {package}.{target}, which comes later in "
                                f"MODULE_ORDER (move it earlier)")
            for n in names:
                if n not in top_names[target]:
                    raise PackError(f"{m.path}:{line}: `{n}` is not defined at the top level of "
                                    f"{package}/{target}.py")
    if entry is not None and defined.get(entry, ("", ""))[1] != "def":
        raise PackError(f"{src}: no bundled module defines a top-level {entry}()")
    clash = sorted(n for n in _WRAPPER_NAMES & set(defined) if defined[n][1] != f"import {n} as None")
    if clash:
        raise PackError(f"{src}: top-level names {clash} are reserved by the packed wrapper")
    futures = sorted(set().union(*(m.futures for m in mods)) if mods else set())
    parts = [f"from __future__ import {', '.join(futures)}\n"] if futures else []
    for m in mods:
        kept = "".join(line for i, line in enumerate(m.source.splitlines(keepends=True), start=1)
                       if i not in m.drop_lines)
        body = strip_source(kept) if strip else kept
        parts.append(f"# ---- {package}/{m.name}.py ----\n{body}")
    if entry is not None:
        parts.append(f'if __name__ == "__main__":\n    {entry}()\n')
    bundle = "".join(parts)
    try:
        tree = ast.parse(bundle, filename=BUNDLE_FILENAME)
        compile(bundle, BUNDLE_FILENAME, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise PackError(f"{BUNDLE_FILENAME}:{e.lineno}: the bundle does not compile: {e.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == package:
            raise PackError(f"{BUNDLE_FILENAME}:{node.lineno}: `{package}` still referenced in the bundle")
    return bundle


def pack_source(bundle: str, header: str = "") -> str:
    """The self-extracting file's text for ``bundle`` (deterministic)."""
    data = lzma.compress(bundle.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                         preset=9 | lzma.PRESET_EXTREME)
    blob = base64.b85encode(data).decode("ascii")
    return (
        f"{header}import base64,linecache,lzma,sys,traceback\n"
        f'_pgolf_src=lzma.decompress(base64.b85decode("{blob}")).decode()\n'
        f'_pgolf_name="{BUNDLE_FILENAME}"\n'
        "linecache.cache[_pgolf_name]=(len(_pgolf_src),None,_pgolf_src.splitlines(True),_pgolf_name)\n"
        "sys.excepthook=traceback.print_exception\n"
        "exec(compile(_pgolf_src,_pgolf_name,\"exec\"))\n"
    )


def unpack_source(packed: bytes) -> str | None:
    """The bundled source inside a packed file (None if it is not one of ours)."""
    m = re.search(rb'b85decode\("([^"]*)"\)', packed)
    if not m:
        return None
    try:
        return lzma.decompress(base64.b85decode(m.group(1))).decode("utf-8")
    except (ValueError, lzma.LZMAError):
        return None


PACK_HEADER = "# packed by `python -m pgolf pack` from trainer/*.py (the readable source)\n"


@dataclass
class PackResult:
    out_path: Path
    packed_bytes: int  # size of the self-extracting file
    bundle_bytes: int  # size of the bundled source it holds
    sha256: str
    matches: bool | None = None  # with check=True: the committed file equals the fresh pack
    message: str = ""


def pack(out_path: str | Path | None = None, check: bool = False, *, src_dir: str | Path | None = None,
         modules: list[str] | None = None, package: str = PACKAGE, not_bundled: list[str] | None = None,
         strict: bool = True) -> PackResult:
    """Write the packed file (or, with ``check``, compare it with the file at ``out_path``)."""
    out = Path(out_path) if out_path is not None else repo_root() / DEFAULT_OUT
    bundle = bundle_source(src_dir, modules, package=package, not_bundled=not_bundled, strict=strict)
    text = pack_source(bundle, PACK_HEADER).encode("utf-8")
    digest = hashlib.sha256(text).hexdigest()
    res = PackResult(out, len(text), len(bundle.encode("utf-8")), digest)
    if check:
        try:
            old = out.read_bytes()
        except OSError:
            old = None
        res.matches = old == text
        if res.matches:
            res.message = f"{out}: up to date ({len(text)} bytes, sha256 {digest[:16]})"
        elif old is None:
            res.message = (f"{out}: missing; packing the trainer gives {len(text)} bytes "
                           "(run python -m pgolf pack)")
        else:
            same_source = unpack_source(old) == bundle
            why = ("it holds the same source, so the compressor's output differs (another liblzma?)"
                   if same_source else "run python -m pgolf pack")
            res.message = (f"{out}: stale: it has {len(old)} bytes (sha256 "
                           f"{hashlib.sha256(old).hexdigest()[:16]}), packing the trainer gives {len(text)} "
                           f"bytes (sha256 {digest[:16]}); {why}")
        return res
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(text)
        os.replace(tmp, out)
    except OSError as e:
        raise PackError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    res.message = f"{out}: {len(text)} bytes (bundle {res.bundle_bytes} bytes, sha256 {digest[:16]})"
    return res


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pgolf pack", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help=f"packed file (default: {DEFAULT_OUT} in the repo)")
    ap.add_argument("--check", action="store_true",
                    help="do not write: compare a fresh pack with the file and fail if they differ")
    args = ap.parse_args(argv)
    res = pack(args.out, check=args.check)
    print(res.message)
    return 0 if res.matches is not False else 1
