"""verify on the accepted record folders of ../shared/records-real: each gets the verdict of LABELS.tsv
("no FAIL", or "fail: CHECK" with that check among the FAILs); at most 10% of the folders get a legality
WARN. The confusion table (expected vs got) is printed (pytest -s, or in the report of a failure).
Skips with a message when ../shared is absent: the product never needs it."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from verify.result import FAIL, WARN
from verify.runner import verify_folder

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [REPO.parent / "shared" / "records-real", Path("/work/shared/records-real")]
ROOT = next((p for p in CANDIDATES if (p / "LABELS.tsv").is_file()), None)
pytestmark = pytest.mark.skipif(
    ROOT is None, reason="../shared/records-real/LABELS.tsv absent: corpus test skipped"
)


def _labels() -> list[tuple[str, str]]:
    with open(ROOT / "LABELS.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["folder"], r["expected"].split(" (")[0].strip()) for r in rows]


def test_every_labelled_folder_gets_its_verdict():
    table: dict[tuple[str, str], int] = {}
    wrong, legal_warn, times = [], [], []
    labels = _labels()
    for folder, expected in labels:
        t0 = time.perf_counter()
        res = verify_folder(ROOT / folder)
        times.append(time.perf_counter() - t0)
        fails = sorted(r.id for r in res if r.status == FAIL)
        got = "no FAIL" if not fails else "FAIL"
        exp = "no FAIL" if expected == "no FAIL" else "FAIL"
        table[exp, got] = table.get((exp, got), 0) + 1
        ok = not fails if expected == "no FAIL" else expected.split(":", 1)[1].strip() in fails
        if not ok:
            wrong.append(f"{folder}: expected {expected}, got {', '.join(fails) or 'no FAIL'}")
        if any(r.id == "legality" and r.status == WARN for r in res):
            legal_warn.append(folder)
    lines = ["confusion table (rows expected, columns got):", f"{'':10}{'no FAIL':>10}{'FAIL':>10}"]
    for exp in ("no FAIL", "FAIL"):
        lines.append(f"{exp:10}{table.get((exp, 'no FAIL'), 0):>10}{table.get((exp, 'FAIL'), 0):>10}")
    lines.append(f"legality WARN: {len(legal_warn)}/{len(labels)} folders {legal_warn}")
    lines.append(
        f"static verify per folder: max {max(times):.2f} s, mean {sum(times) / len(times):.2f} s "
        "(wall clock, this machine's load included; not asserted)"
    )
    print("\n" + "\n".join(lines))
    assert not wrong, "\n".join(lines + wrong)
    assert len(legal_warn) <= 0.10 * len(labels), "\n".join(lines)


def test_the_claimed_runs_are_found_by_matching_the_claim():
    """Folders whose logs hold more than the claim: the claimed line is chosen, not the last one."""
    from verify.context import load_context

    cases = {
        "track_10min_16mb/2026-04-04_SP4096_DepthRecurrence_ParallelResid_MuonEqR": (
            "train_seed42.log",
            "final_int6_sliding_window",
        ),
        "track_10min_16mb/2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE": (  # noqa: E501
            "ttt_pr1767/seed_42.log",
            "quantized_ttt_phased",
        ),
        "track_10min_16mb/2026-03-17_LoRA_TTT": ("train_v3.txt", "final_int8_ttt_lora"),
    }
    for folder, (log, label) in cases.items():
        if not (ROOT / folder).is_dir():
            continue
        ctx = load_context(ROOT / folder)
        assert ctx.match.matched
        assert any(c.log.path == log and c.score.label == label for c in ctx.match.runs), (
            folder,
            [(c.log.path, c.score.label) for c in ctx.match.runs],
        )
