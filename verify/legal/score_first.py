"""C3, score before update: no token's score may come from a model that has already trained on it.

Legal (no finding): score-first test-time training, where each chunk's loss is accumulated into the score
(under ``no_grad``) before the gradient step on that chunk, in the same loop; LoRA/phased TTT whose global
SGD phase trains, from inside the scoring function, on documents it has already scored.

Findings (WARN, with the lines):
- ``update-before-score``: inside a loop that both trains on validation tokens and scores them, the
  gradient step comes first and both use the same tokens (per-sample optimisation, SLOT-like);
- ``train-then-score``: a scoring function trains on validation tokens before its first score, outside
  any loop that scores (epochs over the split, then the scored pass);
- ``val-training``: a call that takes gradient steps on validation tokens from code that scores nothing
  before it (pre-quantization TTT, or TTT followed by re-scoring the same tokens); the text names what
  follows the call (quantisation/serialisation or an evaluation);
- ``trains-on-val``: a training loop that reads validation data itself and scores nothing.
"""

from __future__ import annotations

import ast
import re

from verify.legal import Hit
from verify.legal.facts import VAL_NAME, Facts, Func, names_in

QUANTISH = re.compile(r"(?i)quantiz|gptq|serializ|compress|save_artifact|pack_model|export|torch\.save|save")
EVALISH = re.compile(r"(?i)eval|score|valid|test|bpb")


def _val_backward(f: Func):
    return [b for b in f.backward if any(VAL_NAME.search(n) for n in b.deps)]


def _loops_around(f: Func, line: int):
    return [(lo, hi) for lo, hi, _ in f.loops if lo <= line <= hi]


def score_first_ok(f: Func) -> bool:
    """``f`` trains on validation tokens only after scoring them (or not at all)."""
    return not _update_before_score(f) and not _train_then_score(f)


def _update_before_score(f: Func) -> tuple[int, int, int] | None:
    """(loop line, backward line, score line) of a loop that steps before scoring the same tokens."""
    vb = _val_backward(f)
    if not vb or not f.scores:
        return None
    for lo, hi, _node in sorted(f.loops, key=lambda x: (x[0], -x[1])):
        s = f.first_score_in(lo, hi)
        bs = [b for b in vb if lo <= b.line <= hi]
        if s is None or not bs:
            continue
        b = min(bs, key=lambda x: x.line)
        if b.line >= s:
            continue
        score_deps = set().union(*(x.deps for x in f.scores if lo <= x.line <= hi))
        shared = {n for n in (b.deps & score_deps) if n in f.val or VAL_NAME.search(n)}
        shared -= {
            n for n in shared if VAL_NAME.search(n) and n in f.params
        }  # the whole split, not one batch
        if shared:
            return lo, b.line, s
    return None


def _train_then_score(f: Func) -> tuple[int, int] | None:
    vb = _val_backward(f)
    if not vb or not f.scores:
        return None
    first_s = min(s.line for s in f.scores)
    for b in sorted(vb, key=lambda x: x.line):
        if b.line >= first_s:
            break
        if not any(f.first_score_in(lo, hi) is not None for lo, hi in _loops_around(f, b.line)):
            return b.line, first_s
    return None


def _val_args(caller: Func, callee: Func, call) -> list[str]:
    """Names of the validation data the call passes to parameters the callee trains on."""
    out = []
    offset = 1 if callee.params[:1] == ["self"] and isinstance(call.func, ast.Attribute) else 0
    for i, a in enumerate(call.args):
        j = i + offset
        if (
            j < len(callee.params)
            and callee.params[j] in callee.grad_params
            and caller.is_val(a, call.lineno)
        ):
            out.append(callee.params[j])
    for k in call.keywords:
        if k.arg in callee.grad_params and caller.is_val(k.value, call.lineno):
            out.append(k.arg)
    return out


def _fn_args(facts: Facts, caller: Func, call) -> list[tuple[Func, bool]]:
    """Functions passed as arguments (``timed_eval("x", ttt_fn, model, val_tokens)``) that train, and
    whether the call hands them validation data."""
    out = []
    for i, a in enumerate(call.args):
        if hasattr(a, "id"):
            for g in facts.callee(a.id):
                if g.grad_params:
                    rest = call.args[i + 1 :] + [k.value for k in call.keywords]
                    out.append((g, any(caller.is_val(x, call.lineno) for x in rest)))
    return out


def detect(facts: Facts) -> list[Hit]:
    hits: list[Hit] = []
    for f in facts.funcs:
        ubs = _update_before_score(f)
        if ubs:
            lo, b, s = ubs
            hits.append(
                Hit(
                    "C3",
                    "update-before-score",
                    b,
                    f"{f.name}(): the loop at line {lo} takes a gradient step on validation tokens "
                    f"(line {b}) before scoring the same tokens (line {s})",
                )
            )
            continue
        tts = _train_then_score(f)
        if tts:
            b, s = tts
            hits.append(
                Hit(
                    "C3",
                    "train-then-score",
                    b,
                    f"{f.name}(): trains on validation tokens (line {b}) before its first score "
                    f"(line {s}), outside the scoring loop",
                )
            )
            continue
        vb = _val_backward(f)
        if vb and not f.scores:
            val_params = {p for p in f.params if VAL_NAME.search(p)}
            own = {n for b in vb for n in b.deps if VAL_NAME.search(n)} - set(f.params)
            own = {n for n in own if not (f.closure({n}) & val_params)}
            if own:
                hits.append(
                    Hit(
                        "C3",
                        "trains-on-val",
                        vb[0].line,
                        f"{f.name}(): gradient steps on validation data it reads itself "
                        f"({', '.join(sorted(own)[:3])}) and scores nothing first",
                    )
                )
    for caller in facts.funcs:
        first_score = min((s.line for s in caller.scores), default=None)
        for line, name, _args, call in caller.calls:
            targets = [(g, bool(_val_args(caller, g, call))) for g in facts.callee(name) if g.grad_params]
            targets += _fn_args(facts, caller, call)
            for g, with_val in targets:
                if not with_val or g is caller or g.scores:
                    continue  # a scoring function is judged where it is defined
                if first_score is not None and first_score <= line:
                    continue  # trains on tokens this function has already scored (phased TTT)
                later = [(ln, n) for ln, n, _, _ in caller.calls if ln > line]
                q = next(((ln, n) for ln, n in later if QUANTISH.search(n)), None)
                e = next(
                    (
                        (ln, n)
                        for ln, n in later
                        if EVALISH.search(n) or any(x.scores for x in facts.callee(n))
                    ),
                    None,
                )
                if q and (not e or q[0] <= e[0]):
                    then = (
                        f", before the model is quantised/serialised by {q[1]}() at line {q[0]} "
                        "(pre-quant TTT)"
                    )
                elif e:
                    then = f", then scores them with {e[1]}() at line {e[0]}"
                else:
                    then = ""
                hits.append(
                    Hit(
                        "C3",
                        "val-training",
                        line,
                        f"{caller.name}() calls {g.name}(), which takes gradient steps on validation "
                        f"tokens, with nothing scored first{then}",
                    )
                )
                break
    return hits


__all__ = ["detect", "score_first_ok", "names_in"]
