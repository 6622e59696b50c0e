"""Check 7: each C1-C4 detector on a synthetic records folder (tests/verify_cases.py), the legal designs
that must pass (score-first TTT, phased LoRA TTT, full-distribution blends, a causal cache, a SLOT path
switched off), the log-proven breaks (FAIL), and the project's own trainer and the 1.0611 record (no
finding)."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from verify_cases import build_case
from verify_fixtures import Case, write_record

from verify.checks.legality import code_hits
from verify.runner import verify_folder
from verify.unpack import unpack_source

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")


def legality(folder: Path):
    return next(r for r in verify_folder(folder) if r.id == "legality")


@pytest.mark.parametrize(
    "case,tag",
    [
        ("c1_val_in_artifact", "[C1 val-in-artifact]"),
        ("c1_val_calibration", "[C1 val-in-artifact]"),
        ("c1_cache_from_unscored", "[C1 cache-from-unscored]"),
        ("c1_cache_updated_before_score", "[C1 cache-from-unscored]"),
        ("c1_val_file_and_network", "[C1 network]"),
        ("c1_val_file_and_network", "[C1 val-file]"),
        ("c2_oracle_gate", "[C2 oracle-gate]"),
        ("c2_gold_logit_bias", "[C2 gold-logit-bias]"),
        ("c2_gold_only_blend", "[C2 gold-only-blend]"),
        ("c3_prequant_ttt", "[C3 val-training]"),
        ("c3_slot", "[C3 update-before-score]"),
        ("c3_train_then_score", "[C3 train-then-score]"),
        ("c3_rescore_after_ttt", "[C3 val-training]"),
        ("c4_two_pass", "[C4 multi-pass]"),
    ],
)
def test_each_code_pattern_warns_with_its_condition(tmp_path, case, tag):
    res = legality(build_case(tmp_path, case))
    assert res.status == "WARN", [f.text for f in res.findings]
    hits = [f.text for f in res.findings if f.status == "WARN" and f.text.startswith(tag)]
    assert hits, [f.text for f in res.findings]
    assert all("train_gpt.py:" in h for h in hits)  # file:line


def test_the_warning_names_the_lines_and_what_follows(tmp_path):
    folder = build_case(tmp_path, "c3_prequant_ttt")
    res = legality(folder)
    text = next(f.text for f in res.findings if f.text.startswith("[C3 val-training]"))
    src = (folder / "train_gpt.py").read_text().splitlines()
    line = src.index("    ttt_adapt(model, val_tokens)") + 1
    assert line == 55  # main()'s call of ttt_adapt(), after the scaffold and the pattern
    assert f"train_gpt.py:{line}:" in text and "ttt_adapt()" in text and "pre-quant TTT" in text
    rescore = next(
        f.text
        for f in legality(build_case(tmp_path, "c3_rescore_after_ttt")).findings
        if "val-training" in f.text
    )
    assert "then scores them with eval_val()" in rescore


@pytest.mark.parametrize(
    "case",
    [
        "legal_score_first_ttt",
        "legal_phased_lora_ttt",
        "legal_full_blend_and_causal_cache",
        "legal_disabled_slot",
    ],
)
def test_legal_designs_pass(tmp_path, case):
    res = legality(build_case(tmp_path, case))
    assert res.status == "PASS", [f.text for f in res.findings]


def test_the_scaffold_alone_is_a_clean_record(tmp_path):
    """What the cases share gets no finding from any check: a case's finding comes from what it adds."""
    results = verify_folder(write_record(tmp_path / "plain", Case()))
    bad = {r.id: [f.text for f in r.findings] for r in results if r.status not in ("PASS", "SKIP")}
    assert not bad and legality(tmp_path / "plain").status == "PASS", bad


def test_a_path_the_claimed_runs_switch_off_is_reported_not_warned(tmp_path):
    res = legality(build_case(tmp_path, "legal_disabled_slot"))
    note = [f.text for f in res.findings if "not run:" in f.text]
    assert note and "[C3 update-before-score]" in note[0] and "SLOT_ENABLED" in note[0] and "'0'" in note[0]


def test_a_logged_setting_turns_the_path_on(tmp_path):
    folder = build_case(tmp_path, "legal_disabled_slot")
    log = folder / "train_seed42.log"
    log.write_text("Hyperparameters:\n  slot_enabled: True\n" + log.read_text())
    res = legality(folder)
    assert res.status == "WARN" and any(f.text.startswith("[C3 update-before-score]") for f in res.findings)


@pytest.mark.parametrize(
    "case,tag",
    [("c3_log_ttt_before_artifact", "[C3 ttt-before-artifact]"), ("c4_log_second_pass", "[C4 second-pass]")],
)
def test_a_break_the_log_proves_fails(tmp_path, case, tag):
    res = legality(build_case(tmp_path, case))
    fails = [f.text for f in res.findings if f.status == "FAIL"]
    assert res.status == "FAIL" and fails and fails[0].startswith(tag) and "train_seed42.log:" in fails[0]


def test_the_projects_own_trainer_gets_no_finding():
    readable = "".join(Path(p).read_text() + "\n" for p in sorted(glob.glob(str(REPO / "trainer" / "*.py"))))
    on, off, note = code_hits(readable)
    assert on == [] and off == [], [h.render("trainer") for h in on]
    for p in sorted(glob.glob(str(REPO / "trainer" / "*.py"))):
        on, off, _ = code_hits(Path(p).read_text())
        assert on == [], [h.render(p) for h in on]
    packed = unpack_source((REPO / "submission" / "train_gpt.py").read_text())
    assert packed.layers and not packed.note
    on, off, _ = code_hits(packed.text)
    assert on == [], [h.render("submission/train_gpt.py") for h in on]


@pytest.mark.skipif(
    not (SHARED / "reference" / "sota_1.0611").is_dir(),
    reason="../shared/reference/sota_1.0611 absent: the 1.0611 reference cannot be scanned",
)
def test_the_1_0611_reference_record_passes():
    on, off, _ = code_hits((SHARED / "reference" / "sota_1.0611" / "train_gpt.py").read_text())
    assert on == [], [h.render("sota_1.0611/train_gpt.py") for h in on]
    real = glob.glob(str(SHARED / "records-real" / "track_10min_16mb" / "*_1.0611"))
    if real:
        res = legality(Path(real[0]))
        assert res.status == "PASS", [f.text for f in res.findings]



_HELPER_SCORED = '''
import torch


def train_on(model, tokens, opt):
    for i in range(0, len(tokens), 64):
        model(tokens[i:i + 64], tokens[i + 1:i + 65]).mean().backward()
        opt.step()


class Runner:
    def _score(self, nll, mask):
        self.sums[0] += (nll.detach().double() * mask).sum()

    def batch(self, model, x, y, opt):
        nll = model(x, y)
        self._score(nll, torch.ones_like(nll))
        nll.mean().backward()
        opt.step()

    def run(self, model, val_tokens, opt):
        {pre}
        for i in range(0, len(val_tokens), 64):
            self.batch(model, val_tokens[i:i + 64], val_tokens[i + 1:i + 65], opt)


def eval_phased(model, val_tokens, opt):
    r = Runner()
    r.run(model, val_tokens, opt)
    return r.sums
'''


def test_scoring_inside_helpers_counts_as_scoring_first():
    """A score accumulated in a helper method (``run -> batch -> _score``) before the update is
    score-first; training on the split before that scoring pass is still flagged."""
    on, _off, _ = code_hits(_HELPER_SCORED.format(pre="pass"))
    assert not [h for h in on if h.condition == "C3"], [h.render("x") for h in on]
    on, _off, _ = code_hits(_HELPER_SCORED.format(pre="train_on(model, val_tokens, opt)"))
    assert [h for h in on if h.condition == "C3"], "training on the split before scoring not caught"
