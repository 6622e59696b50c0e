"""The numbers of a set of seeds: mean and std, the markdown table, and the README's results section.

Std is the sample standard deviation (n - 1 in the denominator; 0 for one seed). Scores are
rounded to 8 decimals in submission.json and the table, as the challenge's records write them.
"""

from __future__ import annotations

import math
import os
import statistics

from verify.logparse import RunSummary

BEGIN = "<!-- pgolf:results:begin -->"
END = "<!-- pgolf:results:end -->"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def seed_table(runs: dict[int, RunSummary]) -> str:
    """Markdown: one row per seed, then mean and std over the seeds."""
    head = ("| seed | val_loss | val_bpb | steps | train s | eval s | bytes |\n"
            "|---:|---:|---:|---:|---:|---:|---:|")
    rows = [head]
    cols: dict[str, list[float]] = {k: [] for k in ("loss", "bpb", "steps", "train", "eval", "bytes")}
    for seed, r in runs.items():
        train_s = r.train_time_ms / 1000 if r.train_time_ms is not None else None
        eval_s = r.eval_time_ms / 1000 if r.eval_time_ms is not None else None
        rows.append(f"| {seed} | {_fmt(r.val_loss, '.8f')} | {_fmt(r.val_bpb, '.8f')} | {_fmt(r.steps, 'd')} "
                    f"| {_fmt(train_s, '.1f')} | {_fmt(eval_s, '.1f')} | {_fmt(r.total_bytes, ',d')} |")
        for key, v in (("loss", r.val_loss), ("bpb", r.val_bpb), ("steps", r.steps), ("train", train_s),
                       ("eval", eval_s), ("bytes", r.total_bytes)):
            if v is not None:
                cols[key].append(float(v))
    stats = {k: mean_std(v) for k, v in cols.items()}
    for label, i in (("mean", 0), ("std", 1)):
        rows.append(f"| **{label}** | {_fmt(stats['loss'][i], '.8f')} | {_fmt(stats['bpb'][i], '.8f')} "
                    f"| {_fmt(stats['steps'][i], '.1f')} | {_fmt(stats['train'][i], '.1f')} "
                    f"| {_fmt(stats['eval'][i], '.1f')} | {_fmt(stats['bytes'][i], ',.0f')} |")
    return "\n".join(rows) + "\n"


def results_section(runs: dict[int, RunSummary], images: dict[int, str] | None = None) -> str:
    """The text between the README markers: the table, a summary line, and the curves if drawn."""
    bpb_mean, bpb_std = mean_std([r.val_bpb for r in runs.values() if r.val_bpb is not None])
    phases = sorted({r.final_phase for r in runs.values() if r.final_phase})
    out = [f"val_bpb **{bpb_mean:.8f}** (sample std {bpb_std:.8f}) over {len(runs)} seed(s)"
           + (f"; scored phase: {', '.join(phases)}" if phases else "") + ".", "", seed_table(runs)]
    for seed, img in (images or {}).items():
        out.append(f"![loss curve, seed {seed}]({os.path.basename(img)})")
    return "\n".join(out).rstrip() + "\n"


def curve_image(folder: str, seed: int) -> str:
    return os.path.join(folder, f"loss_seed{seed}.png")


def existing_images(folder: str, seeds) -> dict[int, str]:
    return {s: curve_image(folder, s) for s in seeds if os.path.isfile(curve_image(folder, s))}


def replace_section(text: str, body: str) -> str | None:
    """``text`` with the marked section's body replaced; None when the markers are missing."""
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < b:
        return None
    return text[:b + len(BEGIN)] + "\n" + body + text[e:]
