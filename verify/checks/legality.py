"""Check 7: static heuristics on the code, for a human to judge (WARN with line numbers).

train_gpt.py (and any other .py of the folder) is scanned as text and, when it parses, as an AST;
a self-extracting wrapper is decoded first (verify/unpack.py, never executed) and its payload's line
numbers are reported. Patterns:
- val-in-train: validation data referenced inside a training loop (a loop calling ``.backward()``
  outside eval/TTT functions), other than through an eval call;
- val-grad: a function that takes gradient steps while touching validation data (TTT): legal only
  when every token is scored before it is trained on;
- pre-quant-ttt: such a function called before quantization/serialization, or named pre-quant TTT;
- ttt-epochs: a TTT epoch count >= 2 (passes over the validation data);
- ngram-cache: n-gram count/cache tables; logit-bias: logits shifted by an added term;
- network: urllib/requests/socket/huggingface_hub/...; outside-files: absolute, ``~`` or ``..`` paths.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from verify.context import Context
from verify.result import PASS, SKIP, WARN, CheckResult
from verify.unpack import unpack_source

ID, NUMBER = "legality", 7
RULE = "no training on unscored validation data, n-gram caches, logit biasing, network or outside files"

VAL_NAME = re.compile(
    r"(?i)^(val|valid|validation)_?(tokens?|data|files?|loader|ids|x|y|batch(es)?|seqs?|set|"
    r"stream|shards?|chunks?)\w*$|fineweb_val|^val_tok\w*"
)
EVALISH = re.compile(r"(?i)eval|valid|val_loss|score|test|ttt")
QUANTISH = re.compile(r"(?i)quantiz|gptq|serializ|compress|save_artifact|pack_model|export")
NET_IMPORT = re.compile(
    r"^\s*(?:import|from)\s+(urllib3?|requests|socket|http\.client|httpx|aiohttp|ftplib|"
    r"paramiko|huggingface_hub|boto3|gdown|wget|datasets)\b"
)
NET_CALL = re.compile(
    r"\b(urlopen|hf_hub_download|snapshot_download|requests\.(?:get|post)|torch\.hub\.load|"
    r"load_dataset|socket\.socket|urlretrieve)\s*\(|\b(?:curl|wget)\s+-?\w*\s*https?://"
)
NGRAM = re.compile(
    r"(?i)\b\w*(?:n_?gram|bigram|trigram|unigram)\w*(?:cache|count|table|freq|stat|memo|lookup)\w*|"
    r"\b\w*(?:cache|count|freq)\w*_(?:n_?gram|bigram|trigram)\w*"
)
LOGIT_BIAS = re.compile(
    r"(?i)logit_?bias|bias_?logits?|\blogits?\s*[+\-]=|\blogits?\s*=\s*logits?\s*[+\-]\s*(?!\d)|"
    r"\blogits?\[[^\]]*\]\s*[+\-]=|\blogits?\.add_\("
)
PREQUANT_TTT = re.compile(r"(?i)pre_?quant\w*ttt|ttt\w*pre_?quant|prequant_?ttt")
EPOCHS = re.compile(
    r"(?i)\b(\w*ttt\w*epochs?)\b[^=\n]*(?:=|:)\s*(?:int\()?\s*(?:os\.environ\.get\(\s*[\"']\w+[\"']\s*,"
    r"\s*)?[\"']?(\d+)"
)
PATHLIKE = re.compile(
    r"^(?:/(?!dev/(?:null|shm)\b|proc/)[A-Za-z_.~][\w.\-/]*|~/?[\w.\-/]*|(?:\.\./)+[\w.\-/]*)$"
)


@dataclass
class Hit:
    kind: str
    line: int
    text: str


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if ctx.folder is None:
        r.add(SKIP, "no folder")
        return r
    pys = [f for f in ctx.files if f.endswith(".py") and "/" not in f]
    if not pys:
        r.add(SKIP, "no train_gpt.py to scan")
        return r
    pys.sort(key=lambda f: f != "train_gpt.py")
    for rel in pys:
        try:
            text = (ctx.folder / rel).read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            r.add(WARN, f"{rel}: cannot read ({e.strerror})")
            continue
        src = ctx.source() if rel == "train_gpt.py" and ctx.source() is not None else unpack_source(text)
        where = rel
        if src.layers:
            where = f"{rel} (packed: {' then '.join(src.layers)}; line numbers of the decoded source)"
        if src.note:
            r.add(WARN, f"{rel}: {src.note}: not scanned inside")
        hits = scan_source(src.text)
        by_kind: dict[str, list[Hit]] = {}
        for h in hits:
            by_kind.setdefault(h.kind, []).append(h)
        for kind, hs in by_kind.items():
            lines = ", ".join(str(h.line) for h in hs[:8]) + (
                f" (+{len(hs) - 8} more)" if len(hs) > 8 else ""
            )
            r.add(WARN, f"{where}: {kind} at line(s) {lines}: {hs[0].text}")
        if not hits:
            r.add(PASS, f"{where}: none of the patterns in {src.text.count(chr(10)) + 1} lines")
    return r


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def _is_backward(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) in ("backward",)


def _is_step(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) in ("backward", "step")


def _val_refs(node: ast.AST, skip_eval_calls: bool) -> list[int]:
    """Lines where validation data is referenced under ``node`` (not inside eval calls if asked)."""
    out: list[int] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if skip_eval_calls and isinstance(n, ast.Call) and EVALISH.search(_name(n.func) or ""):
            continue
        if isinstance(n, ast.Name | ast.Attribute) and VAL_NAME.search(_name(n)):
            out.append(n.lineno)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and "fineweb_val" in n.value:
            out.append(n.lineno)
        stack.extend(ast.iter_child_nodes(n))
    return sorted(set(out))


def _ast_hits(tree: ast.AST) -> list[Hit]:
    hits: list[Hit] = []
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    val_grad_funcs: dict[str, int] = {}
    for f in funcs:
        body_nodes = list(ast.walk(f))
        steps = any(_is_step(n) for n in body_nodes)
        refs = _val_refs(f, skip_eval_calls=False)
        if steps and refs and any(_is_backward(n) for n in body_nodes):
            val_grad_funcs[f.name] = f.lineno
            hits.append(
                Hit(
                    "val-grad",
                    f.lineno,
                    f"{f.name}() takes gradient steps and touches validation data "
                    f"(lines {', '.join(map(str, refs[:5]))}): is every token "
                    "scored before it is trained on?",
                )
            )
        if not EVALISH.search(f.name):
            for loop in (n for n in body_nodes if isinstance(n, ast.For | ast.While)):
                if any(_is_backward(n) for n in ast.walk(loop)):
                    for ln in _val_refs(loop, skip_eval_calls=True):
                        hits.append(
                            Hit(
                                "val-in-train",
                                ln,
                                f"validation data inside the training loop of "
                                f"{f.name}() (loop at line {loop.lineno})",
                            )
                        )
    # a val-gradient function called before the model is quantized/serialized: pre-quant TTT
    for f in funcs:
        calls = sorted((n.lineno, _name(n.func)) for n in ast.walk(f) if isinstance(n, ast.Call))
        for ln, name in calls:
            if name in val_grad_funcs:
                later = [(l2, n2) for l2, n2 in calls if l2 > ln and QUANTISH.search(n2)]
                if later:
                    hits.append(
                        Hit(
                            "pre-quant-ttt",
                            ln,
                            f"{name}() (gradient steps on validation data) runs at "
                            f"line {ln}, before {later[0][1]}() at line {later[0][0]}",
                        )
                    )
    return hits


def scan_source(text: str) -> list[Hit]:
    hits: list[Hit] = []
    lines = text.splitlines()
    for i, ln in enumerate(lines, 1):
        code = ln.split("#", 1)[0] if not ln.lstrip().startswith(("'", '"')) else ln
        if NET_IMPORT.search(code) or NET_CALL.search(code):
            hits.append(Hit("network", i, f"network access: {ln.strip()[:100]}"))
        if NGRAM.search(code):
            hits.append(Hit("ngram-cache", i, f"n-gram table: {ln.strip()[:100]}"))
        if LOGIT_BIAS.search(code):
            hits.append(Hit("logit-bias", i, f"logits shifted: {ln.strip()[:100]}"))
        if PREQUANT_TTT.search(code):
            hits.append(Hit("pre-quant-ttt", i, f"pre-quantization TTT: {ln.strip()[:100]}"))
        m = EPOCHS.search(code)
        if m and int(m.group(2)) >= 2:
            hits.append(
                Hit(
                    "ttt-epochs",
                    i,
                    f"{m.group(1)} = {m.group(2)}: passes over validation data must "
                    "each score tokens before training on them",
                )
            )
        if re.search(r"expanduser|Path\.home\(\)|os\.environ\[?\.?get?\(?[\"']HOME", code):
            hits.append(Hit("outside-files", i, f"home directory: {ln.strip()[:100]}"))
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return sorted(hits, key=lambda h: h.line)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and len(node.value) < 200
            and PATHLIKE.match(node.value)
            and "/" in node.value
        ):
            hits.append(Hit("outside-files", node.lineno, f"path outside the folder: {node.value!r}"))
    try:
        hits.extend(_ast_hits(tree))
    except RecursionError:
        pass
    return sorted(hits, key=lambda h: (h.kind, h.line))
