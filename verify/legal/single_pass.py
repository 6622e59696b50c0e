"""C4, a single pass: each token is scored once, and that score is reported.

Findings (WARN):
- ``multi-pass``: a loop over passes/epochs/rounds (``for p in range(2)``) around scoring the validation
  tokens (score statements, or a call to a scoring function with validation data): the tokens are scored
  again and the later pass reported;
- ``rescore``: a scoring function called twice on validation data in one function with test-time
  training in between is reported under C3 (``val-training``).
"""

from __future__ import annotations

import ast
import re

from verify.legal import Hit
from verify.legal.facts import Facts

PASS_VAR = re.compile(r"(?i)pass|epoch|round|rep(?:eat)?|sweep|attempt")


def detect(facts: Facts) -> list[Hit]:
    hits: list[Hit] = []
    for f in facts.funcs:
        for lo, hi, node in f.loops:
            if not isinstance(node, ast.For | ast.AsyncFor):
                continue
            var = ast.unparse(node.target)
            if not PASS_VAR.search(var):
                continue
            s = f.first_score_in(lo, hi)
            scoring_calls = [
                (ln, n)
                for ln, n, args, _ in f.calls
                if lo <= ln <= hi
                and any(g.scores for g in facts.callee(n))
                and any(f.is_val(a, ln) for a in args)
            ]
            if s is None and not scoring_calls:
                continue
            where = f"line {s}" if s is not None else f"{scoring_calls[0][1]}() at line {scoring_calls[0][0]}"
            hits.append(
                Hit(
                    "C4",
                    "multi-pass",
                    lo,
                    f"{f.name}(): the loop 'for {var} in {ast.unparse(node.iter)[:40]}' scores the "
                    f"validation tokens on every pass ({where}): a token scored more than once",
                )
            )
    return hits
