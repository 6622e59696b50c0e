"""C1, strict causality: the prediction at position t depends only on the artifact and the tokens before t.

Findings (WARN):
- ``val-in-artifact``: validation data passed to what writes the artifact (``torch.save``, ``pickle.dump``,
  ``np.save``, a compressor) or to the quantisation calibration (Hessians from validation tokens);
- ``cache-from-unscored``: an n-gram/count/cache table filled from validation tokens (``bincount``,
  ``index_add_``, ``scatter_add_``, ``Counter``, ``table[..] += 1``) outside any scoring loop before the first
  score, or inside a scoring loop before that iteration's score;
- ``val-file``: a file other than the official validation shards, named for validation data, read by
  the code (a precomputed cache of the answers);
- ``network``: downloads at run time (``urlopen``, ``hf_hub_download``, ``requests.get`` ...).
"""

from __future__ import annotations

import ast
import re

from verify.legal import Hit
from verify.legal.facts import TARGET_NAME, Facts, Func, name_of, names_in

WRITERS = re.compile(r"^(?:save|dump|dumps|savez|savez_compressed|compress|write|tofile)$")
CALIB = re.compile(r"(?i)hessian|calib|gptq")
TABLE = re.compile(r"(?i)n_?gram|gram|count|cnt|freq|cache|table|hist|memo|prior|bigram|trigram|unigram")
NOT_TABLE = re.compile(r"(?i)byte|lut|len|space|boundary|mask|bpb|token_count|tok_count|step|scale|ema")
COUNTERS = re.compile(r"^(?:bincount|index_add_?|scatter_add_?|index_put_?|Counter|add\.at|histc|histogram)$")
LOADERS = re.compile(r"^(?:open|load|fromfile|memmap|load_file|read_bytes|read_text|loadtxt|genfromtxt)$")
VAL_FILE = re.compile(r"(?i)(?:^|[_/.\-])val(?:id|idation)?(?:[_/.\-]|$)")
OFFICIAL_VAL = re.compile(r"(?i)fineweb_val")
NETWORK = re.compile(
    r"^(?:urlopen|urlretrieve|hf_hub_download|snapshot_download|load_dataset|create_connection)$"
)


def _writes(f: Func) -> list[Hit]:
    hits = []
    for line, name, args, _call in f.calls:
        if (
            WRITERS.search(name)
            and name not in ("write", "dumps")
            and any(f.is_val_tokens(a, line) for a in args)
        ):
            hits.append(
                Hit(
                    "C1",
                    "val-in-artifact",
                    line,
                    f"{f.name}() passes validation data to {name}(): validation tokens carried in what "
                    "is written",
                )
            )
        elif CALIB.search(name) and any(f.is_val_tokens(a, line) for a in args):
            hits.append(
                Hit(
                    "C1",
                    "val-in-artifact",
                    line,
                    f"{f.name}() calibrates quantisation with validation data ({name}()): the artifact "
                    "is fitted to the tokens it is scored on",
                )
            )
    return hits


def _table_of(node: ast.AST) -> str:
    n = name_of(node)
    return n if n and TABLE.search(n) and not NOT_TABLE.search(n) else ""


def _caches(f: Func) -> list[Hit]:
    hits = []
    first_score = min((s.line for s in f.scores), default=None)
    for n in f.nodes:
        line = getattr(n, "lineno", None)
        if line is None:
            continue
        what = None
        if isinstance(n, ast.Call) and COUNTERS.search(name_of(n.func) or ""):
            recv = n.func.value if isinstance(n.func, ast.Attribute) else None
            table = _table_of(recv) if recv is not None else ""
            if any(f.is_val(a, line) for a in list(n.args) + [k.value for k in n.keywords]) and (
                table or name_of(n.func) in ("bincount", "Counter")
            ):
                what = f"{name_of(n.func)}() over validation tokens"
        elif (
            isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Subscript) and _table_of(n.target.value)
        ):
            if f.is_val(n.target.slice, line) or any(
                f.is_val(e, line) for e in ast.walk(n.target.slice) if isinstance(e, ast.Name)
            ):
                what = f"{_table_of(n.target.value)}[...] += over validation tokens"
        if what is None:
            continue
        loops = [(lo, hi) for lo, hi, _ in f.loops if lo <= line <= hi]
        scoring_loops = [(lo, hi) for lo, hi in loops if f.first_score_in(lo, hi) is not None]
        if scoring_loops:
            lo, hi = min(scoring_loops, key=lambda x: x[1] - x[0])
            s = f.first_score_in(lo, hi)
            if line < s:
                hits.append(
                    Hit(
                        "C1",
                        "cache-from-unscored",
                        line,
                        f"{f.name}(): {what} at line {line}, before that iteration's score (line {s}): "
                        "the cache holds tokens not yet scored",
                    )
                )
        elif first_score is None or line < first_score:
            hits.append(
                Hit(
                    "C1",
                    "cache-from-unscored",
                    line,
                    f"{f.name}(): {what} at line {line}, outside any scoring loop"
                    + (f" and before the first score (line {first_score})" if first_score else "")
                    + ": a table of the whole split, built before its tokens are scored",
                )
            )
    return hits


def _files(f: Func) -> list[Hit]:
    hits = []
    for line, name, args, _call in f.calls:
        if NETWORK.search(name) or (
            name in ("get", "post")
            and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("http")
                for a in args
            )
        ):
            hits.append(Hit("C1", "network", line, f"{f.name}() downloads at run time ({name}())"))
            continue
        if not LOADERS.search(name):
            continue
        for a in args[:1]:
            for c in ast.walk(a):
                if (
                    isinstance(c, ast.Constant)
                    and isinstance(c.value, str)
                    and VAL_FILE.search(c.value)
                    and not OFFICIAL_VAL.search(c.value)
                    and len(c.value) < 200
                    and "." in c.value
                ):
                    hits.append(
                        Hit(
                            "C1",
                            "val-file",
                            line,
                            f"{f.name}() reads {c.value!r}: a file of validation data other than the "
                            "official shards",
                        )
                    )
    return hits


def detect(facts: Facts) -> list[Hit]:
    hits: list[Hit] = []
    for f in facts.funcs:
        hits += _writes(f) + _caches(f) + _files(f)
    return hits


__all__ = ["detect", "TARGET_NAME", "names_in"]
