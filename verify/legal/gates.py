"""Is a code path switched on in the claimed runs? For findings behind ``if slot_enabled:``.

A finding's line is looked up in the tree; the ``if``/``while``/conditional expressions around it, and,
for a finding inside a function, the conditions around every call of that function, are evaluated with
what the folder shows about each flag: the claimed runs' logged hyperparameters first, then ``KEY=value``
settings in the README and run scripts, then the code's own default (``os.environ.get("SLOT_ENABLED",
"0")``, ``slot_enabled: bool = False``). A path is "off" only when that evidence decides it; anything
unknown counts as on, so a finding is never dropped on a guess.
"""

from __future__ import annotations

import ast
import re

from verify.legal.facts import Facts, Func, name_of

_TRUE = {"true", "yes", "on", "enabled"}
_FALSE = {"false", "no", "off", "disabled", "none", ""}


def _literal(v: str):
    s = str(v).strip().strip("'\"")
    low = s.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


class Flags:
    """Values of configuration names as the folder documents them."""

    def __init__(self, source: str, hparams: list[dict], settings_text: str):
        self.source = source
        self.hparams = hparams
        self.settings = settings_text
        self.evidence: dict[str, str] = {}

    def value(self, key: str):
        if not key or not re.match(r"^\w+$", key):
            return None
        low = key.lower()
        vals = set()
        for hp in self.hparams:
            for k, v in hp.items():
                if str(k).lower() == low:
                    vals.add(repr(_literal(v)))
        if len(vals) == 1:
            v = _literal(eval_repr(next(iter(vals))))
            self.evidence[key] = f"{key} = {v!r} in the claimed runs' logs"
            return v
        if len(vals) > 1:
            return None
        env = self._env_name(key)
        for name in {n for n in (env, key.upper()) if n}:
            m = re.search(rf"(?<![\w.]){re.escape(name)}=([\w.\-]+)", self.settings)
            if m:
                self.evidence[key] = f"{name}={m.group(1)} in the README/run scripts"
                return _literal(m.group(1))
        m = re.search(
            rf"(?<![\w.]){re.escape(key)}\s*(?::\s*[\w\[\]|. ]+)?=\s*[^\n;]*?(?:environ\.get|getenv)\(\s*"
            rf"['\"](\w+)['\"]\s*,\s*['\"]?([\w.\-]*)['\"]?\s*\)",
            self.source,
        )
        if m:
            self.evidence[key] = f"{key} defaults to {m.group(2)!r} (env {m.group(1)}, not set in the logs)"
            return _literal(m.group(2))
        m = re.search(
            rf"(?m)(?:^|[;\s(,])(?:self\.)?{re.escape(key)}\s*(?::\s*[\w\[\]|. ]+)?=\s*"
            r"(True|False|-?\d+(?:\.\d+)?)\b",
            self.source,
        )
        if m:
            self.evidence[key] = f"{key} defaults to {m.group(1)} in the code (not set in the logs)"
            return _literal(m.group(1))
        return None

    def _env_name(self, key: str) -> str | None:
        m = re.search(
            rf"(?<![\w.]){re.escape(key)}\s*(?::\s*[\w\[\]|. ]+)?=\s*[^\n;]*?(?:environ\.get|getenv)\(\s*"
            rf"['\"](\w+)['\"]",
            self.source,
        )
        return m.group(1) if m else None


def eval_repr(r: str):
    try:
        return ast.literal_eval(r)
    except (ValueError, SyntaxError):
        return r


def _truth(node: ast.AST, flags: Flags, func: Func | None, depth: int = 0):
    """True/False when the evidence decides the expression's truth, else None."""
    if depth > 6:
        return None
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        t = _truth(node.operand, flags, func, depth + 1)
        return None if t is None else not t
    if isinstance(node, ast.BoolOp):
        vals = [_truth(v, flags, func, depth + 1) for v in node.values]
        if isinstance(node.op, ast.And):
            return False if False in vals else (True if all(v is True for v in vals) else None)
        return True if True in vals else (False if all(v is False for v in vals) else None)
    v = _value(node, flags, func, depth)
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        left = _value(node.left, flags, func, depth)
        right = _value(node.comparators[0], flags, func, depth)
        if left is None or right is None or isinstance(left, str) != isinstance(right, str):
            return None
        op = node.ops[0]
        try:
            return {
                ast.Gt: left > right,
                ast.GtE: left >= right,
                ast.Lt: left < right,
                ast.LtE: left <= right,
                ast.Eq: left == right,
                ast.NotEq: left != right,
            }.get(type(op))
        except TypeError:
            return None
    if v is None:
        return None
    return bool(v)


def _value(node: ast.AST, flags: Flags, func: Func | None, depth: int):
    if depth > 6:
        return None
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Call):
        n = name_of(node.func)
        if n in ("bool", "int", "float") and node.args:
            v = _value(node.args[0], flags, func, depth + 1)
            try:
                return {"bool": bool, "int": int, "float": float}[n](v) if v is not None else None
            except (TypeError, ValueError):
                return None
        if n == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            v = flags.value(str(node.args[1].value))
            if v is None and len(node.args) == 3:
                return _value(node.args[2], flags, func, depth + 1)
            return v
        return None
    if (
        isinstance(node, ast.Name)
        and func is not None
        and node.id in func.assigns
        and len(func.assigns[node.id]) == 1
    ):
        return _value(func.assigns[node.id][0][1], flags, func, depth + 1)
    if isinstance(node, ast.Name | ast.Attribute):
        return flags.value(name_of(node))
    return None


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    out = {}
    for p in ast.walk(tree):
        for c in ast.iter_child_nodes(p):
            out[id(c)] = p
    return out


class Gates:
    def __init__(self, facts: Facts, flags: Flags):
        self.facts = facts
        self.flags = flags
        self.parents = _parents(facts.tree)
        self.stmts: dict[int, list[ast.stmt]] = {}
        for n in ast.walk(facts.tree):
            if isinstance(n, ast.stmt):
                self.stmts.setdefault(n.lineno, []).append(n)

    def _enclosing_func(self, node: ast.AST) -> Func | None:
        p = self.parents.get(id(node))
        while p is not None and not isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef):
            p = self.parents.get(id(p))
        if p is None:
            return None
        return next((f for f in self.facts.funcs if f.node is p), None)

    def guard_off(self, node: ast.AST) -> str | None:
        """Why ``node`` does not run in the claimed runs (an enclosing condition the evidence makes false)."""
        func = self._enclosing_func(node)
        child, p = node, self.parents.get(id(node))
        while p is not None and not isinstance(p, ast.Module):
            test = None
            if isinstance(p, ast.If | ast.While | ast.IfExp):
                test = p.test
                in_body = child in (p.body if isinstance(p.body, list) else [p.body])
                self.flags.evidence.clear()
                t = _truth(test, self.flags, func)
                if t is not None and t != in_body and child is not test:
                    ev = "; ".join(dict.fromkeys(self.flags.evidence.values()))
                    return (
                        f"behind `{ast.unparse(test)[:60]}`, {'false' if in_body else 'true'} in the "
                        "claimed runs" + (f" ({ev})" if ev else "")
                    )
            if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef):
                break
            child, p = p, self.parents.get(id(p))
        return None

    def line_off(self, line: int) -> str | None:
        for st in self.stmts.get(line, []):
            why = self.guard_off(st)
            if why:
                return why
        return None

    def func_off(self, func: Func) -> str | None:
        """Why a function never runs in the claimed runs: every call of it (or use as a value) is off."""
        sites = []
        for n in ast.walk(self.facts.tree):
            if isinstance(n, ast.Name) and n.id == func.name and isinstance(n.ctx, ast.Load):
                sites.append(n)
            elif isinstance(n, ast.Attribute) and n.attr == func.name and isinstance(n.ctx, ast.Load):
                sites.append(n)
        if not sites:
            return None
        whys = []
        for s in sites:
            why = self.guard_off(s)
            if why is None:
                return None
            whys.append(why)
        return f"{func.name}() is only used {whys[0]}"

    def off(self, line: int) -> str | None:
        why = self.line_off(line)
        if why:
            return why
        for f in self.facts.funcs:
            if f.line <= line <= f.end:
                inner = [g for g in self.facts.funcs if g.line <= line <= g.end]
                g = min(inner, key=lambda x: x.end - x.line)
                return self.func_off(g)
        return None
