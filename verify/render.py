"""Output formats: text (one line per check, evidence indented), JSON, markdown (a PR comment)."""

from __future__ import annotations

import json

from verify.result import FAIL, PASS, SKIP, WARN, CheckResult, worst

ICON = {PASS: "✅", WARN: "⚠️", FAIL: "❌", SKIP: "⏭️"}


def overall(results: list[CheckResult]) -> str:
    return worst(r.status for r in results)


def as_text(results: list[CheckResult], target: str, verbose: bool = True) -> str:
    """One line per check (status, rule, the deciding evidence); with ``verbose`` every finding
    follows its check, indented."""
    out = [f"verify {target}"]
    for r in results:
        out.append(f"{r.status:4}  {r.number}. {r.id:<12} {r.rule}: {r.summary}")
        if verbose and len(r.findings) > 1:
            out += [f"        {f.status:4} {f.text}" for f in r.findings]
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL, SKIP)}
    out.append(f"result: {overall(results)} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    return "\n".join(out) + "\n"


def as_json(results: list[CheckResult], target: str) -> str:
    return json.dumps(
        {"target": target, "status": overall(results), "checks": [r.as_dict() for r in results]},
        indent=2,
        default=str,
    )


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def as_markdown(results: list[CheckResult], target: str) -> str:
    out = [
        f"### Parameter Golf verify: {ICON[overall(results)]} {overall(results)}",
        "",
        f"`{_md(target)}`",
        "",
        "| | # | check | rule | evidence |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        out.append(
            f"| {ICON[r.status]} {r.status} | {r.number} | {r.id} | {_md(r.rule)} | {_md(r.summary)} |"
        )
    details = [r for r in results if r.findings]
    if details:
        out += ["", "<details><summary>All evidence</summary>", ""]
        for r in details:
            out.append(f"**{r.number}. {r.id}** ({r.status})")
            out += [f"- {f.status}: {_md(f.text)}" for f in r.findings]
            out.append("")
        out.append("</details>")
    return "\n".join(out)
