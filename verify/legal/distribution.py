"""C2, a full normalised distribution: the score is -log p(x_t) of a distribution over the whole vocabulary.

Legal (no finding): a LoRA head added to the logits (``logits + lora.lm_head_lora(x)``), temperature,
softcap, an exponential tilt towards a hinted token renormalised over the vocabulary, mixing two full
distributions before reading the gold token.

Findings (WARN):
- ``oracle-gate``: the per-token minimum of two predictors' losses (``torch.minimum(nll_a, nll_b)``,
  ``torch.min(torch.stack([nll_a, nll_b]), 0)``, ``torch.where(nll_a < nll_b, nll_a, nll_b)``): the better
  predictor is picked with the answer in hand;
- ``gold-logit-bias``: logits changed at the gold token (``logits[..., y] += b``, ``logits.scatter_add_(-1, y,
  ..)``, ``logits + b * one_hot(y)``) before the loss;
- ``gold-only-blend``: a table probability read only at the gold token (``table[ctx, y]``) that feeds the
  score: a blend computed for one token has no mass over the rest of the vocabulary.
"""

from __future__ import annotations

import ast
import re

from verify.legal import Hit
from verify.legal.causality import NOT_TABLE, TABLE
from verify.legal.facts import TARGET_NAME, Facts, Func, name_of, names_in

LOSSY = re.compile(r"(?i)nll|loss|(?:^|_)ce(?:_|$)|bits|logp|log_prob|logprob|neglog|surprisal")
NOT_LOSSY = re.compile(r"(?i)cap|clip|max|min|limit|thresh|floor|ceil|eps|scale|lr|grad|prev|best_|old")
LOGITS = re.compile(r"(?i)logit|scores?$|^z$")


def _lossy(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return False
    names = names_in(node)
    return any(LOSSY.search(n) for n in names) and not any(NOT_LOSSY.search(n) for n in names)


def _targety(node: ast.AST) -> bool:
    return any(TARGET_NAME.search(n) for n in names_in(node))


def _oracle(f: Func) -> list[Hit]:
    hits = []
    for n in f.nodes:
        if not isinstance(n, ast.Call):
            continue
        name = name_of(n.func)
        args = n.args
        pair = None
        if name in ("minimum", "fmin") and len(args) == 2:
            pair = args
        elif (
            name in ("min", "amin")
            and len(args) >= 1
            and isinstance(args[0], ast.Call)
            and name_of(args[0].func) in ("stack", "cat")
            and args[0].args
            and isinstance(args[0].args[0], ast.List | ast.Tuple)
            and len(args[0].args[0].elts) >= 2
        ):
            pair = args[0].args[0].elts
        elif (
            name == "where"
            and len(args) == 3
            and isinstance(args[0], ast.Compare)
            and len(args[0].comparators) == 1
            and isinstance(args[0].ops[0], ast.Lt | ast.LtE | ast.Gt | ast.GtE)
        ):
            a, b = args[0].left, args[0].comparators[0]
            if {ast.unparse(a), ast.unparse(b)} == {ast.unparse(args[1]), ast.unparse(args[2])}:
                pair = [a, b]
        if pair and all(_lossy(p) for p in pair) and len({ast.unparse(p) for p in pair}) >= 2:
            hits.append(
                Hit(
                    "C2",
                    "oracle-gate",
                    n.lineno,
                    f"{f.name}(): the per-token minimum of {', '.join(ast.unparse(p)[:40] for p in pair)}: "
                    "an oracle picks the better predictor with the answer in hand",
                )
            )
    return hits


def _gold_bias(f: Func) -> list[Hit]:
    hits = []
    for n in f.nodes:
        line = getattr(n, "lineno", 0)
        if (
            isinstance(n, ast.AugAssign)
            and isinstance(n.target, ast.Subscript)
            and LOGITS.search(name_of(n.target.value) or "")
            and _targety(n.target.slice)
        ):
            hits.append(
                Hit(
                    "C2",
                    "gold-logit-bias",
                    line,
                    f"{f.name}(): {ast.unparse(n)[:80]}: the logits are changed at the gold token",
                )
            )
        elif (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and name_of(n.func)
            in ("scatter_add_", "scatter_add", "scatter_", "index_add_", "index_put_", "index_fill_")
            and LOGITS.search(name_of(n.func.value) or "")
            and any(_targety(a) for a in n.args)
        ):
            hits.append(
                Hit(
                    "C2",
                    "gold-logit-bias",
                    line,
                    f"{f.name}(): {ast.unparse(n)[:80]}: the logits are changed at the gold token",
                )
            )
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add | ast.Sub):
            sides = (n.left, n.right)
            if any(LOGITS.search(name_of(s) or "") for s in sides):
                for s in sides:
                    for c in ast.walk(s):
                        if (
                            isinstance(c, ast.Call)
                            and name_of(c.func) == "one_hot"
                            and c.args
                            and _targety(c.args[0])
                        ):
                            hits.append(
                                Hit(
                                    "C2",
                                    "gold-logit-bias",
                                    line,
                                    f"{f.name}(): {ast.unparse(n)[:80]}: the logits are shifted by a "
                                    "one-hot of the gold token",
                                )
                            )
    return hits


def _gold_blend(f: Func) -> list[Hit]:
    """A table value read at the gold token that the score depends on."""
    if not f.scores:
        return []
    score_deps = set().union(*(s.deps for s in f.scores))
    hits = []
    for n in f.nodes:
        if not (isinstance(n, ast.Assign) and len(n.targets) == 1):
            continue
        for sub in ast.walk(n.value):
            if isinstance(sub, ast.Subscript) and isinstance(sub.ctx, ast.Load):
                tname = name_of(sub.value)
                if tname and TABLE.search(tname) and not NOT_TABLE.search(tname) and _targety(sub.slice):
                    tgt = name_of(n.targets[0])
                    if tgt in score_deps:
                        hits.append(
                            Hit(
                                "C2",
                                "gold-only-blend",
                                n.lineno,
                                f"{f.name}(): {tgt} = ...{ast.unparse(sub)[:60]}... reads the table only "
                                "at the gold token and feeds the score: no distribution over the vocabulary",
                            )
                        )
                    break
    return hits


def detect(facts: Facts) -> list[Hit]:
    hits: list[Hit] = []
    for f in facts.funcs:
        hits += _oracle(f) + _gold_bias(f) + _gold_blend(f)
    return hits
