"""Check 6: against a SOTA, our mean val_loss improves by >= 0.005 nats with p < 0.01.

``--sota`` is either a number, read as the SOTA's mean val_loss in nats per token, or a records
folder, whose per-seed val_loss comes from its logs (else its seed_results, else its val_loss).
Test: one-sided Welch t-test on per-seed val_loss (``scipy.stats.ttest_ind(sota, ours + 0.005,
equal_var=False, alternative='greater')``), i.e. H1: mean(SOTA) - mean(ours) > 0.005; with a single
SOTA number, the one-sample test ``ttest_1samp(ours, sota - 0.005, alternative='less')``.
PASS needs both the mean improvement >= 0.005 and p < 0.01. val_loss is nats per token, so it is
only comparable between runs with the same tokenizer (a WARN when the logs name different ones).
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from verify.context import Context, load_context
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "significance", 6
RULE = "mean val_loss improves on the SOTA by >= 0.005 nats with p < 0.01 (one-sided Welch t-test)"


def per_seed_val_loss(ctx: Context) -> tuple[list[float], str, set[str]]:
    """(values, where they came from, tokenizer names the logs mention): the claimed runs' val_loss."""
    sub = ctx.submission or {}
    runs = [c for c in ctx.match.runs if c.score.val_loss is not None and math.isfinite(c.score.val_loss)]
    toks = {os.path.basename(c.log.tokenizer_path) for c in runs if c.log.tokenizer_path}
    if runs:
        return [c.score.val_loss for c in runs], "logs " + ", ".join(c.where for c in runs), toks
    sr = sub.get("seed_results")
    if isinstance(sr, dict):
        vals = [v.get("val_loss") for v in sr.values() if isinstance(v, dict)]
        vals = [
            float(v)
            for v in vals
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if vals:
            return vals, "submission.json seed_results", toks
    v = sub.get("val_loss")
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return [float(v)], "submission.json val_loss (one value)", toks
    return [], "", toks


def _describe(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"n={len(vals)} mean {statistics.fmean(vals):.6f} sd {sd:.6f}"


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    sota_arg = ctx.options.sota
    if not sota_arg:
        r.add(SKIP, "no --sota given (a SOTA mean val_loss in nats, or its records folder)")
        return r
    delta, alpha = ctx.options.min_improvement, ctx.options.alpha
    ours, src, our_toks = per_seed_val_loss(ctx)
    if not ours:
        r.add(SKIP, "no per-seed val_loss in the logs or submission.json")
        return r
    sota_toks: set[str] = set()
    try:
        sota_vals, sota_src = [float(sota_arg)], f"--sota {sota_arg} (a mean val_loss, nats)"
        if not math.isfinite(sota_vals[0]):
            raise ValueError
    except ValueError:
        p = Path(sota_arg)
        if not p.is_dir():
            r.add(SKIP, f"--sota {sota_arg!r} is neither a number nor a folder")
            return r
        sctx = load_context(p)
        sota_vals, sota_src, sota_toks = per_seed_val_loss(sctx)
        if not sota_vals:
            r.add(SKIP, f"--sota {sota_arg}: no per-seed val_loss found")
            return r
        sota_src = f"{sota_arg} ({sota_src})"
    if our_toks and sota_toks and our_toks != sota_toks:
        r.add(
            WARN,
            f"val_loss is nats per token: ours uses {sorted(our_toks)}, the SOTA {sorted(sota_toks)}; "
            "compare val_bpb as well",
        )
    if len(ours) < 2:
        r.add(FAIL, f"only {len(ours)} seed ({src}): a t-test needs at least 2 (the challenge asks for 3)")
        return r
    import warnings

    from scipy import stats  # lazy: scipy takes ~0.3 s to import

    m_ours, m_sota = statistics.fmean(ours), statistics.fmean(sota_vals)
    improvement = m_sota - m_ours
    shifted = [x + delta for x in ours]
    with warnings.catch_warnings():  # absurd inputs overflow; the p-value then says nan
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(sota_vals) >= 2:
            res = stats.ttest_ind(sota_vals, shifted, equal_var=False, alternative="greater")
            test = (
                f"one-sided Welch t-test, H1: mean(SOTA) - mean(ours) > {delta} "
                f"(t={res.statistic:.3f}, df={getattr(res, 'df', float('nan')):.2f})"
            )
        else:
            res = stats.ttest_1samp(ours, m_sota - delta, alternative="less")
            test = (
                f"one-sided one-sample t-test (SOTA is a single value), H1: mean(ours) < SOTA - {delta} "
                f"(t={res.statistic:.3f}, df={len(ours) - 1})"
            )
    p = float(res.pvalue)
    head = (
        f"ours {_describe(ours)} ({src}); SOTA {_describe(sota_vals)} ({sota_src}); "
        f"improvement {improvement:.6f} nats; {test}"
    )
    if math.isnan(p):
        ok = improvement > delta
        r.add(
            WARN if ok else FAIL,
            f"{head}: p undefined (no variance); the means {'do' if ok else 'do not'} "
            f"differ by more than {delta}",
        )
    elif improvement >= delta and p < alpha:
        r.add(PASS, f"{head}: p={p:.3g} < {alpha}")
    else:
        why = []
        if improvement < delta:
            why.append(f"improvement {improvement:.6f} < {delta}")
        if p >= alpha:
            why.append(f"p={p:.3g} >= {alpha}")
        r.add(FAIL, f"{head}: {'; '.join(why)}")
    return r
