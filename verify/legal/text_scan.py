"""Line-level fallbacks for sources that do not parse on this interpreter (the AST detectors need a tree).

Only patterns that are specific on a single line: an oracle minimum of two losses, logits changed at the
gold token, a pre-quantization TTT call. Each names its condition like the AST detectors.
"""

from __future__ import annotations

import re

from verify.legal import Hit

_T = r"(?:y|tgt|tgts|targets?|target_ids|labels?|gold\w*|next_tok\w*)"
PATTERNS = [
    (
        "C2",
        "oracle-gate",
        re.compile(r"\b(?:torch|np)\.minimum\(\s*\w*(?:nll|loss)\w*\s*,\s*\w*(?:nll|loss)\w*\s*\)"),
        "the per-token minimum of two losses: an oracle gate",
    ),
    (
        "C2",
        "gold-logit-bias",
        re.compile(
            rf"\blogits?\w*\[[^\]]*\b{_T}\b[^\]]*\]\s*[+\-*]=|\blogits?\w*\.scatter_add_?\([^)]*\b{_T}\b"
        ),
        "the logits are changed at the gold token",
    ),
    (
        "C3",
        "val-training",
        re.compile(r"(?i)^\s*(?!def\b)\w*pre_?quant\w*ttt\w*\s*\(|^\s*(?!def\b)\w*ttt\w*pre_?quant\w*\s*\("),
        "a pre-quantization TTT call",
    ),
]


def scan(text: str) -> list[Hit]:
    hits = []
    for i, ln in enumerate(text.splitlines(), 1):
        code = ln.split("#", 1)[0]
        for cond, kind, rx, what in PATTERNS:
            if rx.search(code):
                hits.append(Hit(cond, kind, i, f"{what}: {ln.strip()[:90]}"))
    return hits
