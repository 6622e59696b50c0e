"""A check's outcome: a status, the rule it checks, and the evidence (file, line, numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
_SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}


@dataclass
class Finding:
    """One piece of evidence; the check's status is the worst of its findings."""

    status: str
    text: str  # e.g. "train_seed42.log:191 total 15988983 = code 15516 + model 15973467 <= 16000000"


@dataclass
class CheckResult:
    id: str  # 'files', 'schema', ...
    number: int  # the rule's number in issue 6 (1..9)
    rule: str  # one line: what is checked
    status: str = SKIP
    findings: list[Finding] = field(default_factory=list)

    def add(self, status: str, text: str) -> None:
        self.findings.append(Finding(status, text))
        if _SEVERITY[status] > _SEVERITY[self.status]:
            self.status = status

    @property
    def summary(self) -> str:
        """The evidence that decided the status (the first finding of that status)."""
        same = [f for f in self.findings if f.status == self.status]
        if not same:
            return ""
        return same[0].text + (f" (+{len(same) - 1} more {self.status})" if len(same) > 1 else "")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary
        return d


def worst(statuses) -> str:
    out = SKIP
    for s in statuses:
        if _SEVERITY[s] > _SEVERITY[out]:
            out = s
    return out
