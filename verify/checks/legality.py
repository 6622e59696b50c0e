"""Check 7: the four conditions for a valid score (C1 causality, C2 a normalised distribution, C3 score
before update, C4 a single pass), from the code and from the claimed runs' logs.

The code scanned is the trainer and the folder's modules it imports (verify/sources.py), decoded when
packed, parsed even when written for a newer Python (verify/pysource.py); a source that still does not
parse is scanned line by line (verify/legal/text_scan.py). Code findings are WARNs for a human to judge
(verify/legal/{causality,distribution,score_first,single_pass}.py); a FAIL needs the log of a claimed run to
show the break (verify/legal/log_evidence.py). Each finding names its condition: ``[C3 val-training]``.
"""

from __future__ import annotations

from verify.context import Context
from verify.legal import Hit, causality, distribution, log_evidence, score_first, single_pass, text_scan
from verify.legal.facts import collect
from verify.legal.gates import Flags, Gates
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "legality", 7
RULE = "C1 causal, C2 normalised, C3 score before update, C4 single pass (code: WARN; proven by a log: FAIL)"
MAX_PER_KIND = 3


def code_hits(
    text: str, flags: Flags | None = None, parsed=None
) -> tuple[list[Hit], list[tuple[Hit, str]], str]:
    """(findings, findings on paths the claimed runs switch off with the reason, how the source was read)."""
    from verify.pysource import parse_source

    parsed = parsed or parse_source(text)
    if parsed.tree is None:
        return text_scan.scan(text), [], parsed.note
    try:
        facts = collect(parsed.tree)
        hits = (
            causality.detect(facts)
            + distribution.detect(facts)
            + score_first.detect(facts)
            + single_pass.detect(facts)
        )
        gates = Gates(facts, flags or Flags(text, [], "")) if hits else None
        on, off = [], []
        for h in hits:
            why = gates.off(h.line)
            if why:
                off.append((h, why))
            else:
                on.append(h)
    except RecursionError:
        return text_scan.scan(text), [], "too deeply nested for the AST scan: scanned as text"
    return on, off, parsed.note


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if ctx.folder is None:
        r.add(SKIP, "no folder")
        return r
    if not ctx.code.scan:
        r.add(SKIP, "no trainer code to scan")
    hparams = [s.hparams for s in ctx.claimed_logs if s.hparams]
    settings = _settings_text(ctx)
    for f in ctx.code.scan:
        if f.source.note:
            r.add(WARN, f"{f.rel}: {f.source.note}: not scanned inside")
            continue
        hits, off, note = code_hits(f.text, Flags(f.text, hparams, settings), f.parsed)
        _report(r, hits, f.where, WARN)
        for h, why in off[:6]:
            r.add(PASS, f"{h.render(f.where)}; not run: {why}")
        if not hits:
            how = f"; {note}" if note else ""
            what = "on a path the claimed runs use " if off else ""
            r.add(PASS, f"{f.where}: no C1-C4 pattern {what}in {f.text.count(chr(10)) + 1} lines{how}")
    _logs(ctx, r)
    return r


def _settings_text(ctx: Context) -> str:
    """README and run scripts: where ``KEY=value`` settings of the runs are written down."""
    out = []
    for rel in ctx.files:
        if rel.count("/") == 0 and (rel.lower().startswith("readme") or rel.endswith((".sh", ".md"))):
            try:
                out.append((ctx.folder / rel).read_text(encoding="utf-8", errors="replace")[:200_000])
            except OSError:
                continue
    return "\n".join(out)


def _report(r: CheckResult, hits: list[Hit], where: str, status: str) -> None:
    seen: dict[str, int] = {}
    for h in sorted(hits, key=lambda h: (h.condition, h.kind, h.line)):
        seen[h.kind] = seen.get(h.kind, 0) + 1
        if seen[h.kind] <= MAX_PER_KIND:
            r.add(status, h.render(where))
    for kind, n in seen.items():
        if n > MAX_PER_KIND:
            r.add(status, f"[{kind}] {where}: {n - MAX_PER_KIND} more")


def _logs(ctx: Context, r: CheckResult) -> None:
    scores = {}
    for c in ctx.match.runs:
        scores.setdefault(id(c.log), c.score)
    for s in ctx.claimed_logs:
        try:
            text = (ctx.folder / s.path).read_bytes().decode("utf-8", errors="replace")
        except OSError:
            text = None
        for h in log_evidence.detect(s, text, scores.get(id(s))):
            r.add(FAIL if h.kind in ("ttt-before-artifact", "second-pass") else WARN, h.render(s.path))
