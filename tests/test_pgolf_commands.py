"""pgolf size / budget / schema / report and submission.json building, on records folders made by
running the fixture trainer (no torchrun: these commands only read the folder)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from pgolf.cli import main as cli
from pgolf.errors import PgolfError
from pgolf.record import write_outputs
from pgolf.submission import build, load_meta
from verify.logparse import parse_log
from verify.schema import validate_submission

_spec = importlib.util.spec_from_file_location("pgolf_helpers",
                                               Path(__file__).parent / "fixtures" / "pgolf" / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

H100 = {"FAKE_DEVICE_NAME": "NVIDIA H100 80GB HBM3", "FAKE_DEVICE_COUNT": "8"}
LIMIT = 16_000_000


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli(list(argv))
    o = capsys.readouterr()
    return rc, o.out, o.err


def code_size() -> int:
    return helpers.FAKE_TRAINER.stat().st_size


def test_submission_is_built_from_the_logs(tmp_path, capsys):
    folder = helpers.make_folder(tmp_path / "rec", per_seed={314: {"FAKE_MODEL_BYTES": "2500"}}, **H100)
    assert write_outputs(str(folder), [42, 314, 999], 8) == 0
    capsys.readouterr()
    sub = json.loads((folder / "submission.json").read_text())
    assert validate_submission(sub) == []
    runs = {s: parse_log(folder / f"train_seed{s}.log") for s in (42, 314, 999)}
    assert sub["val_bpb"] == round(statistics.fmean(r.val_bpb for r in runs.values()), 8)
    assert sub["val_loss_std"] == round(statistics.stdev(r.val_loss for r in runs.values()), 8)
    assert sub["bytes_total"] == code_size() + 2500 == sub["seed_results"]["314"]["artifact_bytes"]
    assert sub["seed_results"]["42"]["artifact_bytes"] == code_size() + 1000
    assert sub["hardware"] == "8xNVIDIA H100 80GB HBM3" and sub["pytorch_version"] == "2.13.0+fake"
    assert (sub["author"], sub["github_id"], sub["name"]) == ("Ada", "ada", "Fixture run")
    assert sub["seed_results"]["999"]["steps"] == 20
    # the README keeps the author's text; only the marked section is refreshed
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("## Reproduce", "My own notes.\n\n## Reproduce"))
    assert write_outputs(str(folder), [42, 314, 999], 8) == 0
    assert "My own notes." in readme.read_text()


def test_submission_refuses_inconsistent_inputs(tmp_path):
    folder = helpers.make_folder(tmp_path / "rec", seeds=(42,))
    (folder / "submission.meta.json").write_text('{"author": "A", "val_bpb": 0.5}')
    with pytest.raises(PgolfError, match="sets val_bpb, which come from the logs"):
        load_meta(str(folder))
    (folder / "submission.meta.json").write_text("{not json")
    with pytest.raises(PgolfError, match=r"submission.meta.json: invalid JSON \(line 1"):
        load_meta(str(folder))
    with (folder / "train_seed42.ptz").open("ab") as f:
        f.write(b"x")
    with pytest.raises(PgolfError, match="1001 bytes but its log says 1000"):
        build(str(folder), [42], {})
    with (folder / "train_gpt.py").open("a") as f:
        f.write("# edited after the run\n")
    with pytest.raises(PgolfError, match="the seed ran another script"):
        build(str(folder), [42], {})
    with pytest.raises(PgolfError, match="train_seed7.log: log not found"):
        build(str(folder), [7], {})


def test_size_fails_over_the_limit_by_one_byte(tmp_path, capsys):
    over = helpers.make_folder(tmp_path / "over", seeds=(42,), FAKE_MODEL_BYTES=str(LIMIT + 1 - code_size()))
    rc, out, _ = run(capsys, "size", str(over))
    assert rc == 1
    assert f"{code_size():,} {LIMIT + 1 - code_size():,}" in " ".join(out.split())
    assert "FAIL: over the limit by 1 bytes" in out and "size: FAIL (1 of 1 seed(s))" in out
    at = helpers.make_folder(tmp_path / "at", seeds=(42,), FAKE_MODEL_BYTES=str(LIMIT - code_size()))
    rc, out, _ = run(capsys, "size", str(at))
    assert rc == 0 and " 16,000,000 " in out and "size: ok" in out
    # an artifact that is not the one its log describes fails even under the limit
    small = helpers.make_folder(tmp_path / "small", seeds=(42, 314))
    assert run(capsys, "size", str(small))[0] == 0
    with (small / "train_seed314.ptz").open("ab") as f:
        f.write(b"x")
    rc, out, _ = run(capsys, "size", str(small))
    assert rc == 1 and "model bytes 1,001 on disk but 1,000 in" in out
    (small / "train_seed314.ptz").unlink()
    rc, out, _ = run(capsys, "size", str(small))
    assert rc == 1 and "train_seed314.ptz not found" in out
    rc, _, err = run(capsys, "size", str(tmp_path / "nothing"))
    assert rc == 1 and err == f"error: {tmp_path / 'nothing'}: not a folder\n"


def test_budget_checks_8xh100_and_labels_other_hardware(tmp_path, capsys):
    cpu = helpers.make_folder(tmp_path / "cpu", seeds=(42,), FAKE_TRAIN_MS="900000")
    rc, out, _ = run(capsys, "budget", str(cpu))
    assert rc == 0
    assert "NOT CHECKED (not 8xH100); would fail: training 900.0 s > 600 s" in out
    assert "the 600 s limits were NOT checked for 1 of 1 seed(s)" in out and "budget: ok" not in out
    ok = helpers.make_folder(tmp_path / "ok", seeds=(42, 314), FAKE_TRAIN_MS="599000", FAKE_EVAL_MS="420000",
                             **H100)
    rc, out, _ = run(capsys, "budget", str(ok))
    assert rc == 0 and "budget: ok" in out and "8x NVIDIA H100 80GB HBM3" in out
    slow = helpers.make_folder(tmp_path / "slow", seeds=(42, 314), per_seed={314: {"FAKE_EVAL_MS": "600500"}},
                               **H100)
    rc, out, _ = run(capsys, "budget", str(slow))
    assert rc == 1 and "FAIL: evaluation 600.5 s > 600 s" in out and "budget: FAIL (1 seed(s)" in out


def test_schema_command(tmp_path, capsys):
    folder = helpers.make_folder(tmp_path / "rec", seeds=(42,))
    write_outputs(str(folder), [42], 1)
    capsys.readouterr()
    rc, out, _ = run(capsys, "schema", str(folder))
    assert rc == 0 and "is valid (Draft 2020-12" in out
    sub = json.loads((folder / "submission.json").read_text())
    sub["val_bpb"] = "1.2"
    del sub["author"]
    (folder / "submission.json").write_text(json.dumps(sub))
    rc, out, _ = run(capsys, "schema", str(folder / "submission.json"))
    assert rc == 1 and "$.val_bpb: '1.2' is not of type 'number'" in out and "'author' is a required" in out
    (folder / "submission.json").write_text('{"author": ')
    rc, _, err = run(capsys, "schema", str(folder))
    assert rc == 1 and err.count("\n") == 1 and "submission.json: invalid JSON at line 1" in err


def test_report_writes_pngs_table_and_readme_section(tmp_path, capsys):
    folder = helpers.make_folder(tmp_path / "rec", per_seed={999: {"FAKE_TRAIN_MS": "2000"}})
    write_outputs(str(folder), [42, 314, 999], 1)
    readme = folder / "README.md"
    readme.write_text(readme.read_text() + "\nTail written by the author.\n")
    capsys.readouterr()
    rc, out, _ = run(capsys, "report", str(folder))
    assert rc == 0
    for s in (42, 314, 999):
        png = (folder / f"loss_seed{s}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    runs = [parse_log(folder / f"train_seed{s}.log") for s in (42, 314, 999)]
    bpb = [r.val_bpb for r in runs]
    mean_row = next(line for line in out.splitlines() if line.startswith("| **mean**"))
    std_row = next(line for line in out.splitlines() if line.startswith("| **std**"))
    assert f"| {statistics.fmean(bpb):.8f} |" in mean_row and f"| {statistics.stdev(bpb):.8f} |" in std_row
    assert "| 1.7 |" in mean_row  # train seconds: (1.5 + 1.5 + 2.0) / 3 = 1.67
    table = (folder / "results.md").read_text()
    assert table in readme.read_text() and table.count("\n") == 2 + 3 + 2
    text = readme.read_text()
    assert "![loss curve, seed 314](loss_seed314.png)" in text
    assert text.endswith("Tail written by the author.\n")
    # a README without the markers gets the section appended, nothing else changes
    readme.write_text("# Hand-written\n\nSome text.\n")
    assert run(capsys, "report", str(folder), "--no-plots")[0] == 0
    text = readme.read_text()
    assert text.startswith("# Hand-written\n\nSome text.\n\n## Results\n\n<!-- pgolf:results:begin -->")


def test_cli_usage_and_unknown_subcommand(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for name in ("data", "record", "size", "budget", "schema", "reproduce", "report", "demo", "pack"):
        assert f"  {name} " in out
    rc, _, err = run(capsys, "frobnicate")
    assert rc == 2 and "unknown subcommand 'frobnicate'" in err
