"""Legality detectors, organised by the four conditions for a valid score (issue #1017 of the challenge):

- C1 strict causality: a prediction depends only on the artifact and the tokens before it
  (verify/legal/causality.py);
- C2 a full normalised distribution over the vocabulary (verify/legal/distribution.py);
- C3 score before update: no token is scored by a model that already trained on it
  (verify/legal/score_first.py);
- C4 a single pass: each token is scored once and that score is reported (verify/legal/single_pass.py);

plus what a log proves (verify/legal/log_evidence.py). Code findings are WARNs (a static pattern for a
human to judge); a FAIL needs the log's own evidence. The resource rules (bytes, time, training data
after the cap, tokenizer byte accounting) are checks 4, 5 and 8.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Hit:
    condition: str  # "C1".."C4"
    kind: str  # short id, e.g. "oracle-gate"
    line: int
    text: str

    def render(self, where: str) -> str:
        return f"[{self.condition} {self.kind}] {where}:{self.line}: {self.text}"
