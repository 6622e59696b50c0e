"""Which runs a submission claims (verify/claimmatch.py), the claim's tolerated shapes (verify/claims.py),
and the resource rules of check 5 that the logs reveal: training data after the cap, time outside the
evaluation timer."""

from __future__ import annotations

import json

from conftest_verify import make_record
from verify_cases import build_case

from verify.claims import read_claim
from verify.context import load_context
from verify.runner import verify_folder


def by_id(results):
    return {r.id: r for r in results}


def texts(result, status=None):
    return [f.text for f in result.findings if status is None or f.status == status]


def test_claim_shapes_real_submissions_use():
    c = read_claim(
        {"mean_val_bpb": 1.17475315, "seed_results": {"7": {"val_bpb": 1.17443456, "steps": 10498}}}
    )
    assert c.mean_bpb.key == "mean_val_bpb" and c.per_seed[0].seed == 7 and c.per_seed[0].steps.value == 10498
    c = read_claim({"val_bpb": 1.0912, "seeds": [42, 0, 1337], "seed_scores": [1.09057, 1.09084, 1.0923]})
    assert [(p.seed, p.val_bpb.value) for p in c.per_seed] == [(42, 1.09057), (0, 1.09084), (1337, 1.0923)]
    c = read_claim({"val_bpb": 1.0798, "seeds": {"0": {"val_bpb": 1.0792, "train_time_ms": 588052}}})
    assert c.seeds == [0] and c.per_seed[0].train_time_s.value == 588.052 and c.notes
    c = read_claim({"val_bpb": None, "val_loss": None, "seed_results": [{"seed": 3, "val_bpb": 1.2}]})
    assert c.mean_bpb is None and c.per_seed[0].seed == 3 and not c.empty


def test_an_unclaimed_extra_score_line_is_not_chosen(tmp_path):
    folder = make_record(tmp_path, fmt="conventional")
    log = folder / "train_seed42.log"
    log.write_text(
        log.read_text() + "final_int6_ttt val_loss:3.07421378 val_bpb:1.33603200 eval_time:405410ms\n"
    )
    ctx = load_context(folder)
    run = next(c for c in ctx.match.runs if c.log.path == "train_seed42.log")
    assert run.score.label == "final_int6_sliding_window_exact"  # the line the claim names
    assert ctx.runs[0].final_phase  # the log's own summary is still there for other tools
    res = by_id(verify_folder(folder))
    assert not any(r.status == "FAIL" for r in res.values()), {k: texts(v, "FAIL") for k, v in res.items()}


def test_a_mean_without_per_seed_values_is_matched_to_one_label_over_the_seeds(tmp_path):
    folder = make_record(tmp_path, fmt="conventional")
    sub = json.loads((folder / "submission.json").read_text())
    del sub["seed_results"]
    (folder / "submission.json").write_text(json.dumps(sub))
    ctx = load_context(folder)
    assert ctx.match.matched and len(ctx.match.runs) == 3
    assert {c.score.label for c in ctx.match.runs} == {"final_int6_sliding_window_exact"}


def test_several_runs_of_one_seed_only_the_claimed_one_counts(tmp_path):
    folder = make_record(tmp_path, fmt="conventional", seeds=(42,))
    text = (folder / "train_seed42.log").read_text()
    # an earlier attempt of the same seed, 2400 s on other hardware: evidence, not the claim
    other = text.replace("train_time:590000ms", "train_time:2400107ms").replace("2.30011234", "2.29011234")
    (folder / "train_v1.txt").write_text(other.replace("val_bpb:1.05064531", "val_bpb:1.04607831"))
    res = by_id(verify_folder(folder))
    assert res["time"].status != "FAIL", texts(res["time"])
    assert any(
        "train_v1.txt" in x and "2400.107 s > 600 s (a run the submission does not claim)" in x
        for x in texts(res["time"], "WARN")
    )


def test_training_data_after_the_cap_fails_when_the_log_says_so(tmp_path):
    res = by_id(verify_folder(build_case(tmp_path, "r_gptq_after_cap")))["time"]
    fail = texts(res, "FAIL")
    assert fail and fail[0].startswith("[R-data] train_seed42.log:") and "until 609.1 s > 600 s" in fail[0]


def test_training_data_after_the_cap_warns_when_only_the_code_shows_it(tmp_path):
    folder = build_case(tmp_path, "r_gptq_after_cap")
    log = folder / "train_seed42.log"
    log.write_text(
        log.read_text()
        .replace(
            "gptq:calibrating with 64 batches (training data)...",
            "GPTQ:collecting Hessians from calibration data...",
        )
        .replace("gptq:calibrated 66 layers in 9.5s", "GPTQ:collected 66 Hessians in 9.5s")
    )
    assert by_id(verify_folder(folder))["time"].status != "FAIL"
    code = folder / "train_gpt.py"
    code.write_text(
        code.read_text() + "\n\ndef collect_hessians(model, train_loader, n=64):\n    return {}\n"
    )
    res = by_id(verify_folder(folder))["time"]
    assert res.status == "WARN" and any(
        x.startswith("[R-data]") and "takes a training loader" in x for x in texts(res, "WARN")
    )
    # self-generated calibration data is no training data
    log.write_text(
        log.read_text().replace(
            "GPTQ:collecting Hessians from calibration data...",
            "gptq:generating autoregressive calibration data (64 seqs)...",
        )
    )
    res = by_id(verify_folder(folder))["time"]
    assert any("self-generated tokens" in x for x in texts(res, "PASS"))


def test_time_outside_the_eval_timer_warns_with_the_numbers(tmp_path):
    folder = make_record(tmp_path, fmt="conventional", eval_ms=440_000.0)
    for log in folder.glob("*.log"):
        t = log.read_text().replace(
            "Serialized model int6+zstd",
            "Deserialize: decompression done in 24.0s\nttt:compile warmup done (150.0s)\n"
            "Serialized model int6+zstd",
        )
        log.write_text(t)
    res = by_id(verify_folder(folder))["time"]
    assert res.status == "WARN"
    w = [x for x in texts(res, "WARN") if "outside its evaluation timer" in x]
    assert w and "174.0 s" in w[0] and "> 600 s" in w[0]
