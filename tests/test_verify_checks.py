"""verify's checks 1-9 on generated records folders: one passing folder, and for each check a folder
that fails it for the right reason (the evidence names the file, the line and the numbers)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest_verify import (
    CLEAN_TRAIN_GPT,
    LIMIT,
    LOSSES,
    PREQUANT_TTT_TRAIN_GPT,
    make_record,
    packed,
    run_cli,
)

from verify.context import Options
from verify.runner import verify_folder


def by_id(results):
    return {r.id: r for r in results}


def texts(result, status=None):
    return [f.text for f in result.findings if status is None or f.status == status]


@pytest.mark.parametrize("fmt", ["pgolf", "conventional"])
def test_passing_folder_has_no_fail_and_the_evidence(tmp_path, fmt):
    folder = make_record(tmp_path, fmt=fmt, artifacts=True)
    res = by_id(verify_folder(folder))
    assert [r.id for r in res.values()] == [
        "files",
        "schema",
        "consistency",
        "size",
        "time",
        "significance",
        "legality",
        "tokenizer",
        "deep",
    ]
    for cid in ("files", "schema", "consistency", "size", "time", "legality"):
        assert res[cid].status == "PASS", (cid, texts(res[cid]))
    assert res["significance"].status == "SKIP" and res["deep"].status == "SKIP"
    # the evidence names files, lines and numbers
    assert any("train_seed42.log:" in t and "<= 16000000" in t for t in texts(res["size"]))
    assert any(
        t.startswith("val_bpb ") and "the mean of 3 claimed runs" in t for t in texts(res["consistency"])
    )
    assert any("hardware 8x NVIDIA H100" in t for t in texts(res["time"]))


def test_cli_exit_codes_and_formats(tmp_path):
    good = make_record(tmp_path / "a")
    p = run_cli(good)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert sum(ln[:4] in ("PASS", "WARN", "FAIL", "SKIP") for ln in lines) == 9
    assert lines[-1].startswith("result: PASS")
    j = json.loads(run_cli(good, "--json").stdout)
    assert j["status"] == "PASS" and len(j["checks"]) == 9 and j["checks"][3]["id"] == "size"
    md = run_cli(good, "--markdown").stdout
    assert md.startswith("### Parameter Golf verify") and "| 4 | size |" in md
    bad = make_record(tmp_path / "b", train_ms={42: 590_000.0, 314: 612_000.0, 999: 590_000.0})
    p = run_cli(bad)
    assert p.returncode == 1 and "FAIL  5. time" in p.stdout
    assert run_cli(tmp_path / "nope").returncode == 2
    assert run_cli(good / "README.md").returncode == 2
    p = run_cli()
    assert p.returncode == 2 and "error:" in p.stderr
    assert run_cli("--pr-files", tmp_path / "missing.txt").returncode == 2


def test_static_verify_imports_neither_torch_nor_scipy(tmp_path):
    folder = make_record(tmp_path, fmt="conventional")
    verify_folder(folder)  # imports warm
    t0 = time.perf_counter()
    verify_folder(folder)
    dt = time.perf_counter() - t0
    print(f"static verify of a 3-seed folder: {dt * 1000:.1f} ms (not asserted)")
    t0 = time.perf_counter()
    p = run_cli(folder)
    print(f"python -m verify (new process): {time.perf_counter() - t0:.2f} s")
    assert p.returncode == 0
    code = (
        "import sys, verify.cli; verify.cli.main([sys.argv[1]]); "
        "print(sorted(m for m in sys.modules if m in ('torch','scipy')))"
    )
    out = subprocess.run(
        [__import__("sys").executable, "-c", code, str(folder)], capture_output=True, text=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"  # the static path imports neither torch nor scipy


# ---------------------------------------------------------------------------- check 1: files


def test_empty_folder_fails_files(tmp_path):
    (tmp_path / "empty").mkdir()
    res = by_id(verify_folder(tmp_path / "empty"))
    assert res["files"].status == "FAIL" and "empty" in res["files"].summary
    p = run_cli(tmp_path / "empty")
    assert p.returncode == 1


def test_missing_files_are_named(tmp_path):
    folder = make_record(tmp_path)
    (folder / "README.md").unlink()
    for f in folder.glob("*.log"):
        f.unlink()
    res = by_id(verify_folder(folder))["files"]
    assert any("README.md missing" in x for x in texts(res, "WARN"))
    assert any("no train log" in x for x in texts(res, "FAIL"))
    (folder / "train_gpt.py").write_text("")
    fail = texts(by_id(verify_folder(folder))["files"], "FAIL")
    assert any("train_gpt.py is empty" in x for x in fail) and any(x.startswith("no code") for x in fail)


def test_code_and_json_under_other_names_are_found(tmp_path):
    folder = make_record(tmp_path)
    (folder / "train_gpt.py").rename(folder / "train_gpt_v5.py")
    (folder / "submission.json").rename(folder / "submission_v5.json")
    res = by_id(verify_folder(folder))
    assert res["files"].status == "WARN" and not any(r.status == "FAIL" for r in res.values())
    assert any("the trainer is train_gpt_v5.py" in x for x in texts(res["files"], "WARN"))
    assert any("named submission_v5.json" in x for x in texts(res["files"], "WARN"))
    assert res["consistency"].status == "PASS", texts(res["consistency"])


def test_pr_file_list_with_a_file_outside_records_fails(tmp_path):
    folder = make_record(tmp_path)
    rel = folder.relative_to(tmp_path).as_posix()
    ok = tmp_path / "ok.txt"
    ok.write_text("".join(f"A\t{rel}/{n}\n" for n in ("README.md", "submission.json", "train_gpt.py")))
    res = by_id(
        verify_folder(
            folder, Options(pr_changes=__import__("verify.pr").pr.read_pr_file(str(ok)), pr_source="ok.txt")
        )
    )
    assert res["files"].status == "PASS", texts(res["files"])
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{rel}/README.md\n{rel}/train_gpt.py\nREADME.md\n")
    p = run_cli("--pr-files", bad, "--repo", tmp_path)
    assert p.returncode == 1
    assert "README.md (?) is outside a records/<track>/<name>/ folder" in p.stdout
    only = run_cli("--pr-files", bad, "--json")  # the folder is not here: only the list is checked
    j = json.loads(only.stdout)
    assert only.returncode == 1 and j["checks"][0]["status"] == "FAIL"
    assert all(c["status"] == "SKIP" and "no folder to check" in c["summary"] for c in j["checks"][1:])
    # the PR's folder is found under --repo and checked too
    assert "consistency" in p.stdout and "PASS  3." in p.stdout


def test_git_range_adding_one_folder_passes_and_touching_others_fails(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*a):
        subprocess.run(
            ["git", "-C", str(repo), *a],
            check=True,
            capture_output=True,
            env={
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@t",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t",
                "PATH": __import__("os").environ["PATH"],
                "HOME": str(tmp_path),
            },
        )

    git("init", "-q")
    (repo / "README.md").write_text("challenge\n")
    git("add", "-A")
    git("commit", "-qm", "base")
    folder = make_record(repo)
    git("add", "-A")
    git("commit", "-qm", "record")
    p = run_cli(folder, "--git-range", "HEAD~1..HEAD", "--repo", repo)
    assert p.returncode == 0, p.stdout
    assert "all in the new folder records/track_10min_16mb/2026-05-01_Test_Record" in p.stdout
    (repo / "README.md").write_text("changed\n")
    (folder / "README.md").write_text("# changed\n")
    git("add", "-A")
    git("commit", "-qm", "touch more")
    p = run_cli(folder, "--git-range", "HEAD~2..HEAD", "--repo", repo)
    assert p.returncode == 1 and "README.md (M) is outside" in p.stdout
    p = run_cli(folder, "--git-range", "HEAD~1..HEAD", "--repo", repo)
    assert "modifies records/track_10min_16mb/2026-05-01_Test_Record/README.md" in p.stdout
    assert run_cli(folder, "--git-range", "nope..HEAD", "--repo", repo).returncode == 2


# ---------------------------------------------------------------------------- check 2: schema


def test_malformed_json_fails_schema(tmp_path):
    folder = make_record(tmp_path)
    (folder / "submission.json").write_text('{"author": "x",\n "val_bpb": 1.1,,}\n')
    res = by_id(verify_folder(folder))
    assert res["schema"].status == "FAIL"
    assert "invalid JSON at line 2" in res["schema"].summary
    assert res["consistency"].status in ("SKIP", "FAIL")


def test_schema_deviations_warn_and_are_named(tmp_path):
    folder = make_record(tmp_path, sub_overrides={"date": "May 1st", "val_bpb": "1.1", "bytes_total": -3})
    res = by_id(verify_folder(folder))["schema"]
    t = texts(res, "WARN")
    assert res.status == "WARN"
    assert any(x.startswith("submission.json $.date") for x in t)
    assert any("$.val_bpb: '1.1' is not of type 'number'" in x for x in t)
    assert any("$.bytes_total" in x for x in t)


def test_tolerated_shapes_warn_and_the_claim_is_still_read(tmp_path):
    folder = make_record(tmp_path)
    sub = json.loads((folder / "submission.json").read_text())
    for k in ("author", "github_id", "date"):
        del sub[k]
    sub["val_loss_std"] = None
    sub["seeds"] = {k: v for k, v in sub.pop("seed_results").items()}  # an object keyed by seed
    (folder / "submission.json").write_text(json.dumps(sub))
    res = by_id(verify_folder(folder))
    assert res["schema"].status == "WARN" and res["consistency"].status == "PASS", texts(res["consistency"])
    assert any("'seeds' is an object keyed by seed" in x for x in texts(res["schema"], "WARN"))
    assert sum("seeds." in x and "val_bpb" in x for x in texts(res["consistency"], "PASS")) == 3


# ---------------------------------------------------------------------------- check 3: consistency


def test_stale_bytes_total_warns_with_both_values(tmp_path):
    folder = make_record(tmp_path, sub_overrides={"bytes_total": 15_123_456})
    res = by_id(verify_folder(folder))["consistency"]
    assert res.status == "WARN"
    warn = texts(res, "WARN")
    assert len(warn) == 1 and "bytes_total is 15123456 but" in warn[0]
    assert "train_seed42.log:" in warn[0] and str(15_000_000 + len(CLEAN_TRAIN_GPT)) in warn[0]


def test_invented_val_bpb_and_per_seed_value_fail(tmp_path):
    sr_bad = {
        "val_loss": 2.1,
        "val_bpb": 0.95,
        "artifact_bytes": 15_000_000 + len(CLEAN_TRAIN_GPT),
        "steps": 5000,
    }
    folder = make_record(tmp_path, sub_overrides={"val_bpb": 1.01234})
    sub = json.loads((folder / "submission.json").read_text())
    sub["seed_results"]["314"] = sr_bad
    (folder / "submission.json").write_text(json.dumps(sub))
    fail = texts(by_id(verify_folder(folder))["consistency"], "FAIL")
    assert any(x.startswith("val_bpb is 1.01234, better than every claimed run's score") for x in fail), fail
    assert any(
        x.startswith("seed_results.314.val_bpb is 0.95, better than every logged final score of seed 314 ")
        and "train_seed314.log:" in x
        for x in fail
    ), fail


def test_a_claim_worse_than_the_log_warns(tmp_path):
    folder = make_record(tmp_path)
    sub = json.loads((folder / "submission.json").read_text())
    sub["seed_results"]["314"]["val_bpb"] = 1.2
    sub["val_bpb"] = 1.3
    (folder / "submission.json").write_text(json.dumps(sub))
    res = by_id(verify_folder(folder))["consistency"]
    assert res.status == "WARN", texts(res)
    assert any("seed_results.314.val_bpb is 1.2 but no log line has it" in x for x in texts(res, "WARN"))


def test_claimed_seed_without_log_and_unclaimed_log(tmp_path):
    folder = make_record(tmp_path)
    (folder / "train_seed999.log").rename(folder / "train_seed7.log")
    text = (folder / "train_seed7.log").read_text().replace('"seed": 999', '"seed": 7')
    (folder / "train_seed7.log").write_text(text)
    res = by_id(verify_folder(folder))["consistency"]
    assert res.status == "WARN", texts(res)  # the claimed score is in a log: a mislabelled seed, not a FAIL
    assert any(
        "seed_results.999.val_bpb" in x and "train_seed7.log" in x and "not 999: a mislabelled seed" in x
        for x in texts(res, "WARN")
    )


def test_a_claimed_seed_whose_log_is_unfinished_fails_consistency(tmp_path):
    folder = make_record(tmp_path, fmt="conventional", truncated_seed=314)
    res = by_id(verify_folder(folder))["consistency"]
    assert any(x.startswith("train_seed314.log: unfinished") for x in texts(res, "WARN"))
    assert any(
        x.startswith("seed_results.314.val_bpb is") and "no log has that score" in x
        for x in texts(res, "FAIL")
    )


def test_value_of_one_seed_instead_of_the_mean_warns(tmp_path):
    from conftest_verify import BPB_PER_LOSS

    folder = make_record(tmp_path, sub_overrides={"val_bpb": round(LOSSES[42] * BPB_PER_LOSS, 8)})
    res = by_id(verify_folder(folder))["consistency"]
    assert (
        res.status == "WARN"
        and "equals train_seed42.log's value" in res.summary
        and "not the mean" in res.summary
    )


# ---------------------------------------------------------------------------- check 4: size


def test_over_limit_by_one_byte_fails_size(tmp_path):
    code = len(CLEAN_TRAIN_GPT.encode())
    folder = make_record(tmp_path, model_bytes={42: 15_000_000, 314: LIMIT - code + 1, 999: 15_000_000})
    res = by_id(verify_folder(folder))["size"]
    assert res.status == "FAIL"
    fail = texts(res, "FAIL")
    assert any(x.startswith("train_seed314.log:") and "total 16000001 > 16000000 by 1" in x for x in fail)
    ok = make_record(tmp_path / "ok", model_bytes=LIMIT - code)
    assert by_id(verify_folder(ok))["size"].status == "PASS"


def test_artifact_files_and_real_code_size_count(tmp_path):
    code = len(CLEAN_TRAIN_GPT.encode())
    folder = make_record(tmp_path, model_bytes=LIMIT - code, artifacts=True)
    assert by_id(verify_folder(folder))["size"].status == "PASS"
    # the folder's train_gpt.py grew after the runs: the logs' own totals decide, the files warn
    (folder / "train_gpt.py").write_text(CLEAN_TRAIN_GPT + "# one more line\n")
    res = by_id(verify_folder(folder))["size"]
    assert res.status == "WARN"
    assert any(
        f"train_gpt.py {code + 16} + train_seed42.ptz" in x and "> 16000000 by 16" in x
        for x in texts(res, "WARN")
    )
    assert any("the folder's code is not the code that ran" in x for x in texts(res, "WARN"))


def test_readable_code_beside_a_log_that_counts_compressed_code_passes(tmp_path):
    folder = make_record(tmp_path, fmt="conventional", model_bytes=15_900_000)
    big = CLEAN_TRAIN_GPT + "#" * 150_000 + "\n"  # the readable source: 150 KB
    (folder / "train_gpt.py").write_text(big)
    for log in folder.glob("*.log"):
        t = log.read_text().replace(
            f"Code size: {len(CLEAN_TRAIN_GPT)} bytes",
            f"Code size (uncompressed): {len(big)} bytes\nCode size (compressed): 30000 bytes",
        )
        t = t.replace(f"int6+zstd: {15_900_000 + len(CLEAN_TRAIN_GPT)} bytes", "int6+zstd: 15930000 bytes")
        log.write_text(t)
    res = by_id(verify_folder(folder))["size"]
    assert res.status == "PASS", texts(res)
    assert any(
        "counts the compressed code (30000 bytes); train_gpt.py ships the readable source" in x
        for x in texts(res, "PASS")
    )


# ---------------------------------------------------------------------------- check 5: time


def test_a_seed_over_600_s_fails_time(tmp_path):
    folder = make_record(
        tmp_path, fmt="conventional", train_ms={42: 590_000.0, 314: 612_345.0, 999: 590_000.0}
    )
    res = by_id(verify_folder(folder))["time"]
    assert res.status == "FAIL"
    assert texts(res, "FAIL") == [x for x in texts(res, "FAIL") if "train_seed314.log:" in x]
    assert "training 612.345 s > 600 s" in res.summary


def test_eval_over_600_s_fails_and_small_overshoot_warns(tmp_path):
    folder = make_record(
        tmp_path,
        eval_ms={42: 601_000.0, 314: 400_000.0, 999: 400_000.0},
        train_ms={42: 590_000.0, 314: 600_021.0, 999: 590_000.0},
    )
    res = by_id(verify_folder(folder))["time"]
    assert any("train_seed42.log:" in x and "evaluation 601.000 s > 600 s" in x for x in texts(res, "FAIL"))
    assert any(
        "train_seed314.log:" in x and "21 ms past 600 s, within the 1 s grace" in x
        for x in texts(res, "PASS")
    )


def test_other_hardware_warns(tmp_path):
    from conftest_verify import pgolf_log

    folder = make_record(tmp_path)
    code = (folder / "train_gpt.py").stat().st_size
    for seed in (42, 314, 999):
        (folder / f"train_seed{seed}.log").unlink()
        pgolf_log(
            folder / f"train_seed{seed}.log",
            seed,
            LOSSES[seed],
            round(LOSSES[seed] * 0.45678, 8),
            train_ms=590_000.0,
            eval_ms=420_000.0,
            code_bytes=code,
            model_bytes=15_000_000,
            device="NVIDIA A100-SXM4-80GB",
            devices=4,
        )
    res = by_id(verify_folder(folder))["time"]
    assert res.status == "WARN" and "4x NVIDIA A100-SXM4-80GB: not the 8xH100" in res.summary


# ---------------------------------------------------------------------------- check 6: significance


def test_significance_against_a_folder_and_a_value(tmp_path):
    ours = make_record(tmp_path / "ours", losses={42: 2.3000, 314: 2.3010, 999: 2.2990})
    sota = make_record(tmp_path / "sota", losses={42: 2.3300, 314: 2.3310, 999: 2.3290})
    res = by_id(verify_folder(ours, Options(sota=str(sota))))["significance"]
    assert res.status == "PASS", res.summary
    assert "one-sided Welch t-test" in res.summary and "ours n=3" in res.summary and "SOTA n=3" in res.summary
    res = by_id(verify_folder(ours, Options(sota="2.33")))["significance"]
    assert res.status == "PASS" and "one-sample" in res.summary


def test_p_value_above_001_fails_significance(tmp_path):
    ours = make_record(tmp_path / "ours", losses={42: 2.300, 314: 2.310, 999: 2.290})
    sota = make_record(tmp_path / "sota", losses={42: 2.320, 314: 2.330, 999: 2.310})
    res = by_id(verify_folder(ours, Options(sota=str(sota))))["significance"]
    assert res.status == "FAIL"
    assert "improvement 0.020000 nats" in res.summary and ">= 0.01" in res.summary
    from scipy import stats

    want = stats.ttest_ind(
        [2.32, 2.33, 2.31], [2.305, 2.315, 2.295], equal_var=False, alternative="greater"
    ).pvalue
    assert f"p={want:.3g}" in res.summary and want > 0.01


def test_too_small_improvement_and_one_seed_fail(tmp_path):
    ours = make_record(tmp_path / "ours", losses={42: 2.3000, 314: 2.3001, 999: 2.2999})
    res = by_id(verify_folder(ours, Options(sota="2.303")))["significance"]
    assert res.status == "FAIL" and "improvement 0.003000 < 0.005" in res.summary
    one = make_record(tmp_path / "one", seeds=(42,))
    res = by_id(verify_folder(one, Options(sota="2.5")))["significance"]
    assert res.status == "FAIL" and "only 1 seed" in res.summary
    res = by_id(verify_folder(one, Options(sota="not-a-folder")))["significance"]
    assert res.status == "SKIP"


# ---------------------------------------------------------------------------- check 7: legality


def test_prequant_ttt_code_warns_legality(tmp_path):
    folder = make_record(tmp_path, train_gpt=PREQUANT_TTT_TRAIN_GPT)
    res = by_id(verify_folder(folder))["legality"]
    assert res.status == "WARN"
    t = texts(res, "WARN")
    line = PREQUANT_TTT_TRAIN_GPT.splitlines().index("    adapt(model, opt, val_tokens, 3)") + 1
    assert any(
        x.startswith(f"[C3 val-training] train_gpt.py:{line}:")
        and "adapt()" in x
        and "quantize() at line" in x
        for x in t
    ), t


def test_packed_train_gpt_is_decoded_not_run(tmp_path):
    folder = make_record(tmp_path, train_gpt=packed(PREQUANT_TTT_TRAIN_GPT + "\nraise SystemExit('ran!')\n"))
    res = by_id(verify_folder(folder))["legality"]
    assert res.status == "WARN"
    assert any("packed: b85+lzma" in x and "[C3 val-training]" in x for x in texts(res, "WARN"))
    clean = make_record(tmp_path / "c", train_gpt=packed(CLEAN_TRAIN_GPT))
    res = by_id(verify_folder(clean))["legality"]
    assert res.status == "PASS" and "packed: b85+lzma" in res.summary


# ---------------------------------------------------------------------------- checks 8, 9: skip reasons


def test_tokenizer_and_deep_say_why_they_skip(tmp_path):
    folder = make_record(tmp_path)
    (folder / "custom.model").write_bytes(b"not the official model")
    res = by_id(verify_folder(folder, Options(deep=True)))
    tok = texts(res["tokenizer"])
    assert any("not an official tokenizer" in x and "--data" in x for x in tok), tok
    assert any("custom.model: not a SentencePiece model" in x for x in texts(res["tokenizer"], "WARN"))
    assert res["deep"].status == "SKIP" and "--data" in res["deep"].summary
    conv = make_record(tmp_path / "conv", fmt="conventional")
    res = by_id(
        verify_folder(conv, Options(deep=True, data=str(tmp_path), tokenizer=str(folder / "custom.model")))
    )
    assert res["deep"].status == "SKIP" and "does not use our trainer" in res["deep"].summary
    res = by_id(
        verify_folder(folder, Options(deep=True, data=str(tmp_path), tokenizer=str(folder / "custom.model")))
    )
    assert res["deep"].status == "SKIP" and "no validation shards" in res["deep"].summary


# A submission script that honours the eval-only contract (EVAL_ONLY, ARTIFACT, OUTPUT_DIR, RUN_ID) and
# logs a final event; the check runs it for real in a subprocess.
EVAL_ONLY_SCRIPT = """import json, os, sys
assert os.environ["EVAL_ONLY"] == "1" and os.path.isfile(os.environ["ARTIFACT"])
assert os.path.isdir(os.environ["DATA_PATH"]) and os.path.isfile(os.environ["TOKENIZER_PATH"])
bpb = {42: 1.05064531, 314: 1.05115285, 999: 1.05029004}[int(os.environ["SEED"])] + SHIFT
ev = {"event": "final", "seed": int(os.environ["SEED"]), "phase": "sliding_window", "val_loss": 2.3,
      "val_bpb": bpb, "eval_time_ms": 1.0}
with open(os.path.join(os.environ["OUTPUT_DIR"], os.environ["RUN_ID"] + ".log"), "a") as f:
    f.write("pgolf_json " + json.dumps(ev) + "\\n")
"""


@pytest.mark.parametrize("shift,status", [(0.0, "PASS"), (0.002, "FAIL")])
def test_deep_reproduction_runs_the_folders_script(tmp_path, shift, status):
    folder = make_record(tmp_path, artifacts=True, model_bytes=1000)
    (folder / "train_gpt.py").write_text(EVAL_ONLY_SCRIPT.replace("SHIFT", repr(shift)))
    data = tmp_path / "data"
    data.mkdir()
    (data / "fineweb_val_000000.bin").write_bytes(b"\0" * 1024)
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"x")
    res = by_id(verify_folder(folder, Options(deep=True, data=str(data), tokenizer=str(tok))))["deep"]
    repro = [f for f in res.findings if "eval-only val_bpb" in f.text]
    assert len(repro) == 3 and {f.status for f in repro} == {status}, [f.text for f in res.findings]
    assert any("train_seed314.ptz: eval-only val_bpb 1.05115285" in f.text for f in repro) == (shift == 0.0)
    assert any(f.text.startswith("probe") for f in res.findings)  # probes ran or said why not
