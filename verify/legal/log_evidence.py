"""What the logs themselves prove about C1-C4 (a FAIL when the claimed run shows it).

- C3 ``ttt-before-artifact``: the claimed run's log shows test-time training progress (``ttt ... epoch``/
  ``step``/``loss`` lines) after training stopped and before the artifact's size is logged: the exported
  model was trained on the validation tokens it is then scored on (pre-quantization TTT). A FAIL.
- C3 ``prequant-ttt-enabled``: the logged hyperparameters switch a pre-quantization TTT on (a WARN: the
  log shows the setting, not the pass).
- C4 ``second-pass``: the claimed score line is a later pass (``pass 2``, ``second``, ``rescore``) of an
  evaluation whose first pass is logged too. A FAIL.
"""

from __future__ import annotations

import re

from verify.legal import Hit
from verify.logparse import RunSummary, Score, strip_prefix

TTT_PROGRESS = re.compile(
    r"(?i)^(?!.*warm)(?:.*\b(?:pre[-_ ]?quant\w*[-_ ]?)?ttt\w*|.*test[-_ ]time[-_ ]train\w*)\b.*"
    r"\b(?:epoch|step|iter|chunk)\w*\s*[:=]?\s*\d+.*\b(?:loss|bpb|nll)\w*\s*[:=]\s*\d"
)
PREQUANT_KEY = re.compile(r"(?i)pre[-_]?quant\w*ttt|ttt\w*pre[-_]?quant")
LATER_PASS = re.compile(r"(?i)(?:pass|round|sweep)[\s_:-]*([2-9])\b|\bsecond\b|\b2nd\b|re-?scor")
FIRST_PASS = re.compile(r"(?i)(?:pass|round|sweep)[\s_:-]*1\b|\bfirst\b|\b1st\b")
_TRUE = re.compile(r"(?i)^(?:true|1|yes|on|enabled)$|^[1-9]\d*$")


def detect(log: RunSummary, text: str | None, score: Score | None) -> list[Hit]:
    hits: list[Hit] = []
    if text is not None and log.stop_line is not None and log.artifact_line is not None:
        lines = text.splitlines()
        for no in range(log.stop_line + 1, min(log.artifact_line, len(lines) + 1)):
            ln = strip_prefix(lines[no - 1])
            if TTT_PROGRESS.search(ln):
                hits.append(
                    Hit(
                        "C3",
                        "ttt-before-artifact",
                        no,
                        f"test-time training on validation data logged after training stopped (line "
                        f"{log.stop_line}) and before the artifact's size (line {log.artifact_line}): "
                        f"{ln.strip()[:90]!r}",
                    )
                )
                break
    for key, val in log.hparams.items():
        if PREQUANT_KEY.search(str(key)) and _TRUE.search(str(val).strip()):
            hits.append(
                Hit(
                    "C3",
                    "prequant-ttt-enabled",
                    log.lines.get("seed", 0) or 1,
                    f"the logged setting {key} = {val} switches pre-quantization TTT on",
                )
            )
    if score is not None and LATER_PASS.search(score.label):
        base = LATER_PASS.sub("", score.label).strip("_:- ").lower()
        first = [
            s
            for s in log.scores
            if s.line < score.line
            and (FIRST_PASS.search(s.label) or LATER_PASS.sub("", s.label).strip("_:- ").lower() == base)
        ]
        if first:
            hits.append(
                Hit(
                    "C4",
                    "second-pass",
                    score.line,
                    f"the claimed score {score.label} {score.val_bpb} is a later pass over the tokens "
                    f"that line {first[0].line} ({first[0].label} {first[0].val_bpb}) already scored",
                )
            )
    return hits
