"""Facts about a Python source for the legality detectors: per function, what it reads, trains and scores.

Only the AST is read (never executed). Per function (nested functions are their own):
- ``val``: names holding validation data: names matching ``VAL_NAME`` and names assigned (flow-
  insensitively) from expressions that use them (``all_tokens = val_data.val_tokens``; ``x = all_tokens[i]``);
- ``backward``: statements with ``.backward()``/``torch.autograd.grad``, and the names each one's loss
  depends on (following the function's assignments);
- ``scores``: statements that accumulate a score (``loss_sum += ...`` under ``no_grad``/``inference_mode``,
  or into a score-named accumulator anywhere; calls such as ``_accumulate_bpb(...)``);
- ``calls``: (line, callee, argument expressions);
- ``loops``: their line spans.
``grad_params``: the parameters a function's gradient steps depend on, through one level of calls
(fixed point over the module), so a call ``ttt(model, val_tokens)`` is known to train on ``val_tokens``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

VAL_NAME = re.compile(
    r"(?i)^(?:val|valid|validation)_?(?:tokens?|toks?|data|files?|loader|ids|x|y|batch(?:es)?|seqs?|set|stream"
    r"|shards?|chunks?|docs?|text|targets?|inputs?)\w*$|fineweb_val|^val_tok\w*$"
)
TARGET_NAME = re.compile(
    r"(?i)^(?:y|ys|y_?true|y_?tgt|tgts?|targets?|target_ids|tgt_ids|target_tokens?|labels?|gold\w*|next_toks?|"
    r"next_tokens?|next_ids|true_tok\w*|answer\w*)$"
)
SCORE_ACC = re.compile(
    r"(?i)^(?:(?:val_)?(?:loss|nll|bits?|bytes?|byte|tokens?|tok|ce)_?(?:sum|total|count|acc\w*)|"
    r"(?:total|sum|n|num)_(?:loss|nll|bits|bytes|tokens|toks|byte_count)|byte_count|token_count|tok_count|"
    r"nll_total|bpb_sum)$"
)
NLL_NAME = re.compile(r"(?i)^(?:nll|token_nll|tok_nll|nll_\w+)$")
SCORE_CALL = re.compile(r"(?i)accumulate|add_score|record_score|score_chunk|_bpb_update")
OPTIM_RECV = re.compile(r"(?i)opt|optim|optimizer|sgd|adam|muon")


def name_of(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return name_of(node.func)
    if isinstance(node, ast.Subscript):
        return name_of(node.value)
    return ""


def names_in(node: ast.AST) -> set[str]:
    """Every Name id and Attribute attr under ``node``."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


_INDEX_FUNCS = {
    "range",
    "len",
    "numel",
    "size",
    "min",
    "max",
    "int",
    "float",
    "round",
    "abs",
    "isinstance",
    "getattr",
}
TOKEN_OPS = re.compile(
    r"^(?:cat|concat|concatenate|stack|hstack|vstack|clone|to|cpu|cuda|numpy|tolist|contiguous|view|reshape|int|long|"
    r"tensor|as_tensor|from_numpy|array|asarray|flatten|copy|deepcopy|detach|type|split|chunk|narrow|index_select|"
    r"masked_select|unsqueeze|squeeze|expand|repeat|list|tuple|bytes|tobytes|pin_memory|load_validation_tokens|"
    r"load_data_shard|load_shard|memmap|fromfile)$"
)


def data_names(node: ast.AST) -> set[str]:
    """The names whose *values* flow into ``node``: subscript indices and sizes (``len``, ``range``) are
    positions, not data, so they are skipped."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name):
            out.add(n.id)
            continue
        if isinstance(n, ast.Attribute):
            out.add(n.attr)
            stack.append(n.value)
            continue
        if isinstance(n, ast.Subscript):
            stack.append(n.value)
            continue
        if isinstance(n, ast.Call) and name_of(n.func) in _INDEX_FUNCS:
            continue
        if isinstance(n, ast.Constant):
            if isinstance(n.value, str) and "fineweb_val" in n.value:
                out.add("fineweb_val")  # a literal path of the validation shards
            continue
        stack.extend(ast.iter_child_nodes(n))
    return out


def token_names(node: ast.AST) -> set[str] | None:
    """Names ``node`` is a copy/slice/concatenation of, or None when it computes something new (a model's
    output, a loss, a statistic)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
            stack.append(n.value)
        elif isinstance(n, ast.Subscript):
            stack.append(n.value)
        elif isinstance(n, ast.Starred | ast.Tuple | ast.List):
            stack.extend(ast.iter_child_nodes(n))
        elif isinstance(n, ast.Call):
            if not TOKEN_OPS.search(name_of(n.func) or ""):
                return None
            if isinstance(n.func, ast.Attribute):
                stack.append(n.func.value)
            stack.extend(n.args)
        elif isinstance(n, ast.Dict):
            stack.extend(v for v in n.values if v is not None)
        elif isinstance(n, ast.Constant | ast.keyword):
            continue
        else:
            return None
    return out


def has_val_literal(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and "fineweb_val" in n.value
        for n in ast.walk(node)
    )


def own_nodes(fn: ast.AST):
    """The nodes of a function, not descending into nested functions/classes."""
    for n, _stmt in own_nodes_with_stmt(fn):
        yield n


def own_nodes_with_stmt(fn: ast.AST):
    """(node, the innermost statement holding it) for the nodes of a function, not descending into nested
    functions/classes."""
    stack = [(c, c if isinstance(c, ast.stmt) else None) for c in ast.iter_child_nodes(fn)]
    while stack:
        n, st = stack.pop()
        yield n, st
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for c in ast.iter_child_nodes(n):
            stack.append((c, c if isinstance(c, ast.stmt) else st))


def _targets(t: ast.AST) -> list[str]:
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, ast.Tuple | ast.List):
        return [x for e in t.elts for x in _targets(e)]
    if isinstance(t, ast.Starred):
        return _targets(t.value)
    if isinstance(t, ast.Attribute | ast.Subscript):
        n = name_of(t)
        return [n] if n else []
    return []


@dataclass
class Stmt:
    line: int
    node: ast.AST
    deps: set[str] = field(default_factory=set)  # names it depends on (closure over assignments)


@dataclass
class Func:
    name: str
    node: ast.AST
    line: int
    end: int
    params: list[str]
    assigns: dict[str, list[tuple[tuple[int, int], ast.AST]]] = field(
        default_factory=dict
    )  # name -> ((line, col), RHS)
    val: set[str] = field(default_factory=set)
    backward: list[Stmt] = field(default_factory=list)
    scores: list[Stmt] = field(default_factory=list)
    calls: list[tuple[int, str, list[ast.AST], ast.Call]] = field(default_factory=list)
    loops: list[tuple[int, int, ast.AST]] = field(default_factory=list)
    no_grad: list[tuple[int, int]] = field(default_factory=list)
    grad_params: set[str] = field(default_factory=set)
    nodes: list[ast.AST] = field(default_factory=list)  # own nodes (not those of nested functions)

    @property
    def is_scorer(self) -> bool:
        return bool(self.scores)

    def deps_at(
        self, names: set[str], at: int | tuple[int, int], limit: int = 600, tokens_only: bool = False
    ) -> set[str]:
        """``names`` and every name their values at ``at`` (a line, or (line, col)) are computed from inside
        this function: the latest assignment before ``at``, or all of them when none precedes it (as in a
        loop). With ``tokens_only``, only through copies/slices/concatenations."""
        where = at if isinstance(at, tuple) else (at, 10**6)
        out: set[str] = set()
        visited: set[tuple] = set()
        todo = [(n, where) for n in names]
        while todo and len(visited) < limit:
            n, w = todo.pop()
            out.add(n)
            asg = self.assigns.get(n)
            if not asg:
                continue
            prior = [a for a in asg if a[0] < w]
            chosen = [max(prior, key=lambda a: a[0])] if prior else asg
            for apos, rhs in chosen:
                if (n, apos) in visited:
                    continue
                visited.add((n, apos))
                nxt = token_names(rhs) if tokens_only else data_names(rhs)
                if nxt is None:
                    continue
                todo.extend((m, apos) for m in nxt)
        return out

    def closure(self, names: set[str], at: int | tuple[int, int] = 10**9) -> set[str]:
        return self.deps_at(names, at)

    def is_val(self, node: ast.AST, line: int | None = None) -> bool:
        """``node`` (at ``line``) holds validation data, through what it is computed from."""
        ln = line if line is not None else getattr(node, "lineno", 10**9)
        return any(VAL_NAME.search(n) for n in self.deps_at(data_names(node), ln))

    def is_val_tokens(self, node: ast.AST, line: int | None = None) -> bool:
        """``node`` is validation tokens themselves (a copy/slice), not something computed from them."""
        ln = line if line is not None else getattr(node, "lineno", 10**9)
        start = token_names(node)
        if start is None:
            return False
        return any(VAL_NAME.search(n) for n in self.deps_at(start, ln, tokens_only=True))

    def in_no_grad(self, line: int) -> bool:
        return any(a <= line <= b for a, b in self.no_grad)

    def first_score_in(self, lo: int, hi: int) -> int | None:
        ls = [s.line for s in self.scores if lo <= s.line <= hi]
        return min(ls) if ls else None

    def first_backward_in(self, lo: int, hi: int) -> int | None:
        ls = [s.line for s in self.backward if lo <= s.line <= hi]
        return min(ls) if ls else None


@dataclass
class Facts:
    funcs: list[Func]
    by_name: dict[str, list[Func]]
    tree: ast.Module

    def callee(self, name: str) -> list[Func]:
        return self.by_name.get(name, [])


def _pos(n: ast.AST) -> tuple[int, int]:
    return (getattr(n, "lineno", 0) or 0, getattr(n, "col_offset", 0) or 0)


def _is_backward(call: ast.Call) -> bool:
    n = name_of(call.func)
    if n == "backward":
        return True
    return n == "grad" and isinstance(call.func, ast.Attribute) and name_of(call.func.value) == "autograd"


def _is_no_grad(w: ast.With) -> bool:
    for item in w.items:
        n = name_of(item.context_expr)
        if n in ("no_grad", "inference_mode"):
            return True
    return False


def _func_facts(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Func:
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    f = Func(fn.name, fn, fn.lineno, getattr(fn, "end_lineno", fn.lineno) or fn.lineno, params)
    pairs = list(own_nodes_with_stmt(fn))
    nodes = [n for n, _ in pairs]
    f.nodes = nodes
    for n in nodes:
        if isinstance(n, ast.Assign):
            for t in n.targets:
                for name in _targets(t):
                    f.assigns.setdefault(name, []).append((_pos(n), n.value))
        elif isinstance(n, ast.AnnAssign | ast.AugAssign) and n.value is not None:
            for name in _targets(n.target):
                f.assigns.setdefault(name, []).append((_pos(n), n.value))
        elif isinstance(n, ast.For | ast.AsyncFor):
            for name in _targets(n.target):
                f.assigns.setdefault(name, []).append((_pos(n), n.iter))
        elif isinstance(n, ast.comprehension):
            for name in _targets(n.target):
                f.assigns.setdefault(name, []).append((_pos(n.iter), n.iter))
        elif isinstance(n, ast.withitem) and n.optional_vars is not None:
            for name in _targets(n.optional_vars):
                f.assigns.setdefault(name, []).append((_pos(n.context_expr), n.context_expr))
        if isinstance(n, ast.For | ast.AsyncFor | ast.While):
            f.loops.append((n.lineno, getattr(n, "end_lineno", n.lineno) or n.lineno, n))
        if isinstance(n, ast.With | ast.AsyncWith) and _is_no_grad(n):
            f.no_grad.append((n.lineno, getattr(n, "end_lineno", n.lineno) or n.lineno))
    # validation taint, flow-insensitive to a fixed point
    val = {p for p in params if VAL_NAME.search(p)}
    rhs_names = {name: [data_names(rhs) for _pos_, rhs in rhss] for name, rhss in f.assigns.items()}
    for name, sets in rhs_names.items():
        if any(VAL_NAME.search(m) for ns in sets for m in ns):
            val.add(name)
    changed = True
    while changed:
        changed = False
        for name, sets in rhs_names.items():
            if name not in val and any(ns & val for ns in sets):
                val.add(name)
                changed = True
    f.val = val
    # calls, backward statements, score statements
    stmts = [n for n in nodes if isinstance(n, ast.stmt)]
    seen_back: set[int] = set()
    for n, st in pairs:
        if isinstance(n, ast.Call):
            f.calls.append((n.lineno, name_of(n.func), list(n.args) + [k.value for k in n.keywords], n))
            if (
                st is not None
                and id(st) not in seen_back
                and _is_backward(n)
                and not isinstance(st, ast.For | ast.While | ast.If | ast.With | ast.Try)
            ):
                seen_back.add(id(st))
                f.backward.append(Stmt(st.lineno, st, f.closure(data_names(n), _pos(st))))
    f.backward.sort(key=lambda b: b.line)
    for st in stmts:
        if isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(st, ast.AugAssign) and isinstance(st.op, ast.Add):
            tgt = name_of(st.target)
            if SCORE_ACC.search(tgt) or (
                f.in_no_grad(st.lineno) and re.search(r"(?i)loss|nll|bits|byte|tok", tgt)
            ) or (
                # an accumulator (``sums[0] += ...``) of a per-token NLL: a score, grad or not
                # (score-first TTT may score with the detached loss of the forward it then trains on)
                re.search(r"(?i)sum|total|acc", tgt)
                and any(NLL_NAME.search(n) for n in data_names(st.value))
            ):
                f.scores.append(Stmt(st.lineno, st, f.closure(data_names(st.value), _pos(st))))
        elif isinstance(st, ast.Expr) and isinstance(st.value, ast.Call):
            c = st.value
            n = name_of(c.func)
            recv = name_of(c.func.value) if isinstance(c.func, ast.Attribute) else ""
            if SCORE_CALL.search(n) or (n == "add_" and SCORE_ACC.search(recv)):
                f.scores.append(Stmt(st.lineno, st, f.closure(data_names(c), _pos(st))))
    return f


def _propagate_scores(facts: Facts, rounds: int = 4) -> None:
    """A call to a function that accumulates a score is a score at the call's line (to a fixed
    point): scoring split over helpers (``run() -> batch() -> _score()``) is still scoring."""
    for _ in range(rounds):
        changed = False
        for f in facts.funcs:
            have = {s.line for s in f.scores}
            for line, name, _args, call in f.calls:
                if line in have:
                    continue
                if any(g is not f and g.scores for g in facts.callee(name)):
                    f.scores.append(Stmt(line, call, f.closure(data_names(call), line)))
                    have.add(line)
                    changed = True
            f.scores.sort(key=lambda x: x.line)
        if not changed:
            return


def collect(tree: ast.Module) -> Facts:
    funcs = [_func_facts(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    by_name: dict[str, list[Func]] = {}
    for f in funcs:
        by_name.setdefault(f.name, []).append(f)
    facts = Facts(funcs, by_name, tree)
    # the parameters each function's gradient steps depend on (one level of calls, to a fixed point)
    for f in funcs:
        deps = set().union(*(b.deps for b in f.backward)) if f.backward else set()
        f.grad_params = {p for p in f.params if p in deps}
    _propagate_scores(facts)
    for _ in range(3):
        changed = False
        for f in funcs:
            for _line, name, _args, call in f.calls:
                for g in facts.callee(name):
                    if g is f or not g.grad_params:
                        continue
                    for i, a in enumerate(call.args):
                        if i < len(g.params) and g.params[i] in g.grad_params:
                            new = {
                                p for p in f.params if p in f.closure(data_names(a), _line)
                            } - f.grad_params
                            if new:
                                f.grad_params |= new
                                changed = True
                    for k in call.keywords:
                        if k.arg in g.grad_params:
                            new = {
                                p for p in f.params if p in f.closure(data_names(k.value), _line)
                            } - f.grad_params
                            if new:
                                f.grad_params |= new
                                changed = True
        if not changed:
            break
    return facts
