"""Hypothesis: no submission.json and no log text crashes the verifier (every check returns a status,
none reports an internal error)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from conftest_verify import make_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify.context import Options
from verify.logparse import parse_log_text
from verify.runner import verify_folder
from verify.schema import validate_submission

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=20,
)
KEYS = [
    "author",
    "github_id",
    "name",
    "date",
    "val_bpb",
    "val_loss",
    "val_bpb_std",
    "val_loss_std",
    "bytes_total",
    "bytes_code",
    "seeds",
    "seed_results",
    "hardware",
    "track",
    "seed",
]
submissions = (
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=10) | json_values
)

NUM = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 10**9).map(str),
    st.sampled_from(["nan", "inf", "-0", "1e999", "", "x", "1.2.3"]),
)
TEMPLATES = [
    "step:{a}/{b} train_loss:{c} train_time:{d}ms step_avg:{e}ms",
    "{a}/{b} train_loss: {c} train_time: {d}m tok/s: {e}",
    "step:{a}/{b} val_loss:{c} val_bpb:{d} train_time:{e}ms",
    "final_int8_zlib_roundtrip_exact val_loss:{c} val_bpb:{d}",
    "quantized_ttt val_loss:{c} val_bpb:{d} eval_time:{e}ms",
    "final_sliding_window_eval_exact stride:{a} val_loss:{c} val_bpb:{d}",
    "stopping_early: wallclock_cap train_time: {d}ms step: {a}/{b}",
    "Total submission size int6+zstd: {a} bytes",
    "Code size: {a} bytes",
    "Serialized model int6: {a} bytes",
    "total_eval_time:{c}s",
    "seed:{a}",
    "  seed: {c}",
    "world_size:{a}",
    "Hyperparameters:",
    "|   {a}  NVIDIA H100 80GB HBM3          On  |",
    'pgolf_json {{"event": "final", "seed": {a}, "val_loss": {c}, "val_bpb": {d}, "total_bytes": {e}}}',
    'pgolf_json {{"event": "train_end", "steps": {c}, "train_time_ms": {d}}}',
    'pgolf_json {{"event": "eval", "phase": {c}, "val_bpb": {d}}}',
    'pgolf_json {{"event": "run_start", "seed": "{c}", "hparams": {d}}}',
    "pgolf_json {{not json",
    '"""',
    "import os",
    "=" * 100,
]
log_lines = st.one_of(
    st.builds(
        lambda t, a, b, c, d, e: t.format(a=a, b=b, c=c, d=d, e=e),
        st.sampled_from(TEMPLATES),
        NUM,
        NUM,
        NUM,
        NUM,
        NUM,
    ),
    st.text(max_size=60),
)
logs = st.lists(log_lines, max_size=25).map("\n".join)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(text=logs | st.text(max_size=300))
def test_parse_log_text_never_raises(text):
    s = parse_log_text(text, "train_seed1.log")
    assert s.format in ("pgolf", "conventional", "unknown")
    assert not any(p.startswith("parser error") for p in s.problems), s.problems


@FAST
@given(obj=submissions)
def test_validate_submission_never_raises(obj):
    assert isinstance(validate_submission(obj), list)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sub=submissions, log=logs, raw=st.booleans())
def test_verify_folder_never_crashes(sub, log, raw):
    root = Path(tempfile.mkdtemp(prefix="verify_fuzz_"))
    try:
        folder = make_record(root, seeds=(1,), losses={1: 2.3})
        text = json.dumps(sub) if not raw else json.dumps(sub)[: max(1, len(json.dumps(sub)) // 2)]
        (folder / "submission.json").write_text(text)
        (folder / "train_seed2.log").write_text(log)
        results = verify_folder(folder, Options(sota="2.5"))
        assert len(results) == 9
        for r in results:
            assert r.status in ("PASS", "WARN", "FAIL", "SKIP")
            assert not any("internal error" in f.text for f in r.findings), [f.text for f in r.findings]
    finally:
        shutil.rmtree(root, ignore_errors=True)
