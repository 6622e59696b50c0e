"""pgolf record through real torchrun subprocesses running the fixture trainer: a crashed seed keeps
the seeds already done, re-running skips complete seeds, --force re-runs them without losing the old
files, --keep-going runs past a crash, and submission.json is written from the logs."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from pgolf.cli import main as cli
from pgolf.runs import scratch_dir
from trainer.runlog import parse_json_lines
from verify.schema import validate_submission

_spec = importlib.util.spec_from_file_location("pgolf_helpers",
                                               Path(__file__).parent / "fixtures" / "pgolf" / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

pytestmark = pytest.mark.slow


def finals(folder: Path) -> dict[int, dict]:
    """The final events of the folder's logs, read directly (the expected numbers)."""
    out = {}
    for log in folder.glob("train_seed*.log"):
        ev = [e for e in parse_json_lines(log.read_text()) if e["event"] == "final"]
        out[ev[-1]["seed"]] = ev[-1]
    return out


def launches(count_file: Path) -> list[str]:
    return count_file.read_text().split("\n")[:-1] if count_file.exists() else []


@pytest.fixture
def setup(tmp_path, monkeypatch):
    data = helpers.make_data(tmp_path / "data")
    count = tmp_path / "launches.txt"
    monkeypatch.setenv("FAKE_COUNT_FILE", str(count))
    monkeypatch.delenv("FAKE_CRASH_SEEDS", raising=False)
    folder = tmp_path / "records"

    def record(*extra, crash: str = "") -> tuple[int, str, str]:
        monkeypatch.setenv("FAKE_CRASH_SEEDS", crash)
        return cli(["record", "--out", str(folder), "--script", str(helpers.FAKE_TRAINER), "--nproc", "1",
                    "--data-path", str(data[0]), "--tokenizer-path", str(data[1]), "--env", "PRESET=tiny",
                    *extra])

    return folder, count, record


def test_crash_keeps_done_seeds_then_resume_then_force(setup, capsys):
    folder, count, record = setup
    meta = ["--author", "Ada Lovelace", "--github-id", "ada", "--name", "Fixture record"]

    rc = record(*meta, crash="314")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "seed 314 failed: exit code 1: RuntimeError: boom: simulated crash for seed 314" in err
    assert "complete and kept: 42; not complete: 314 999" in err
    assert launches(count) == ["42 train", "314 train"]  # stopped at the crash (default)
    assert (folder / "train_seed42.log").is_file() and (folder / "train_seed42.ptz").is_file()
    assert not (folder / "train_seed314.log").exists() and not (folder / "submission.json").exists()
    attempt = next((Path(scratch_dir(str(folder))) / "attempts").iterdir())
    assert sorted(p.name for p in attempt.iterdir()) == ["train_seed314.console.txt", "train_seed314.log"]
    assert "RuntimeError: boom" in (attempt / "train_seed314.console.txt").read_text()
    seed42_log = (folder / "train_seed42.log").read_bytes()

    rc = record()
    out = capsys.readouterr().out
    assert rc == 0
    assert launches(count)[2:] == ["314 train", "999 train"]  # 42 skipped
    assert "seed 42: complete, skipped" in out
    assert (folder / "train_seed42.log").read_bytes() == seed42_log
    sub = json.loads((folder / "submission.json").read_text())
    assert validate_submission(sub) == []
    f = finals(folder)
    assert sub["seeds"] == [42, 314, 999] and sorted(f) == [42, 314, 999]
    assert sub["val_bpb"] == round(statistics.fmean(f[s]["val_bpb"] for s in f), 8)
    assert sub["val_bpb_std"] == round(statistics.stdev(f[s]["val_bpb"] for s in f), 8)
    assert sub["val_loss"] == round(statistics.fmean(f[s]["val_loss"] for s in f), 8)
    assert sub["author"] == "Ada Lovelace" and sub["track"] == "10min_16mb"
    for s in (42, 314, 999):
        r = sub["seed_results"][str(s)]
        assert r["val_bpb"] == round(f[s]["val_bpb"], 8) and r["artifact_bytes"] == f[s]["total_bytes"]
        assert r["train_time_s"] == f[s]["train_time_ms"] / 1000
        assert r["eval_time_s"] == f[s]["eval_time_ms"] / 1000
    assert sub["bytes_code"] == (folder / "train_gpt.py").stat().st_size
    assert (folder / "train_gpt.py").read_bytes() == helpers.FAKE_TRAINER.read_bytes()
    assert "torch==2.13.0+fake" in (folder / "requirements.txt").read_text()
    readme = (folder / "README.md").read_text()
    assert "# Fixture record" in readme and "<!-- pgolf:results:begin -->" in readme
    # the commands name the challenge's layout and the container's mounts, not this machine's paths
    assert "PRESET=tiny DATA_PATH=./data/datasets/fineweb10B_sp1024 " \
           "TOKENIZER_PATH=./data/tokenizers/text_1024_bpe.model" in readme
    assert "torchrun --standalone --nproc_per_node=1 records/track_10min_16mb/records/train_gpt.py" in readme
    assert "pgolf reproduce records" in readme and str(folder.parent) not in readme

    rc = record()  # everything complete: nothing runs, submission.json is rebuilt identically
    capsys.readouterr()
    assert rc == 0 and len(launches(count)) == 4
    assert json.loads((folder / "submission.json").read_text()) == sub

    rc = record("--force", "--seeds", "42", "314", "999")
    capsys.readouterr()
    assert rc == 0 and launches(count)[4:] == ["42 train", "314 train", "999 train"]
    attempts = Path(scratch_dir(str(folder))) / "attempts"
    moved = sorted(p.name for d in attempts.iterdir() for p in d.iterdir())
    assert moved.count("train_seed42.log") == 1 and moved.count("train_seed42.ptz") == 1  # old files kept
    events = parse_json_lines((folder / "train_seed42.log").read_text())
    assert [e["event"] for e in events].count("final") == 1  # a fresh log, not appended to the old one


def test_keep_going_runs_past_a_crash_and_missing_meta_blocks_the_json(setup, capsys):
    folder, count, record = setup
    rc = record("--seeds", "42", "314", "--keep-going", crash="42")
    err = capsys.readouterr().err
    assert rc == 1 and "seed 42 failed" in err and "complete and kept: 314; not complete: 42" in err
    assert launches(count) == ["42 train", "314 train"]
    assert (folder / "train_seed314.log").is_file()
    # all seeds complete, but nobody filled in the author: no submission.json, a clear line instead
    rc = record("--seeds", "42", "314")
    captured = capsys.readouterr()
    assert rc == 1 and "note: fill in author, github_id, name" in captured.out
    assert f"{folder / 'submission.meta.json'}: author, github_id, name not filled in" in captured.err
    assert not (folder / "submission.json").exists()
    meta = json.loads((folder / "submission.meta.json").read_text())
    meta.update(author="Ada", github_id="ada", name="Fixture")
    (folder / "submission.meta.json").write_text(json.dumps(meta))
    assert record("--seeds", "42", "314") == 0
    assert launches(count) == ["42 train", "314 train", "42 train"]
    assert json.loads((folder / "submission.json").read_text())["seeds"] == [42, 314]


def test_bad_invocations_fail_before_running(setup, capsys, tmp_path):
    folder, count, record = setup
    rc = cli(["record", "--out", str(folder), "--script", str(tmp_path / "missing.py")])
    assert rc == 1 and "missing.py: training script not found" in capsys.readouterr().err
    rc = record("--env", "SEED=1")
    assert rc == 1 and "--env SEED: set by the pipeline itself" in capsys.readouterr().err
    rc = cli(["record", "--out", str(folder), "--script", str(helpers.FAKE_TRAINER), "--nproc", "1",
              "--data-path", str(tmp_path / "nowhere"), "--env", "PRESET=tiny"])
    assert rc == 1 and "nowhere: data folder not found" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():  # the record preset needs a GPU per process
        rc = record("--env", "PRESET=pr1493")
        err = capsys.readouterr().err
        assert rc == 1 and "PRESET=pr1493 needs 1 CUDA GPU(s) for --nproc 1, found 0" in err
    assert launches(count) == []
    assert not folder.exists()  # every check comes before the first write


def _section(**kw) -> str:
    from pgolf.record import reproduce_section

    sub = {"seeds": [42, 314, 999], "track": "10min_16mb", "author": "Ada L", "github_id": "ada",
           "name": "My run"}
    args = {"name": "2026-05-01_my_run", "sub": sub, "nproc": 8, "run_env": {},
            "hparams": {"preset": "pr1855", "vocab_size": 8192,
                        "data_path": "/mnt/scratch/me/data/datasets/fineweb10B_sp8192/",
                        "tokenizer_path": "/mnt/scratch/me/data/tokenizers/fineweb_8192_bpe.model"}}
    args.update(kw)
    return reproduce_section(**args)


def test_reproduce_section_uses_the_challenge_layout_and_the_container():
    text = _section()
    assert "/mnt/scratch" not in text
    assert ("PRESET=pr1855 VOCAB_SIZE=8192 DATA_PATH=./data/datasets/fineweb10B_sp8192 "
            "TOKENIZER_PATH=./data/tokenizers/fineweb_8192_bpe.model \\\n") in text
    folder = "records/track_10min_16mb/2026-05-01_my_run"
    assert f"torchrun --standalone --nproc_per_node=8 {folder}/train_gpt.py" in text
    # training again in the container: the folder's own script, the data read-only, a new folder
    assert ('docker run --rm --gpus all --ipc=host --user "$(id -u):$(id -g)" \\\n'
            '  -v "$PWD/data:/data:ro" -v "$PWD/records/track_10min_16mb:/records" -e PRESET=pr1855 '
            "-e VOCAB_SIZE=8192 \\\n  pgolf record 2026-05-01_my_run_rerun --script "
            "/records/2026-05-01_my_run/train_gpt.py --seeds 42 314 999 --nproc 8 \\\n"
            "  --author 'Ada L' --github-id ada --name 'My run (re-run)'") in text
    # the score from the artifacts: val shards + tokenizer read-only, no network, the folder read-only
    assert ('VAL+=(-v "$PWD/$f:/data/datasets/fineweb10B_sp8192/${f##*/}:ro")' in text
            and "docker run --rm --gpus all --ipc=host --network none" in text)
    tok = "fineweb_8192_bpe.model"
    assert f'-v "$PWD/data/tokenizers/{tok}:/data/tokenizers/{tok}:ro"' in text
    assert '-v "$PWD/records/track_10min_16mb/2026-05-01_my_run:/records/2026-05-01_my_run:ro"' in text
    assert "pgolf reproduce 2026-05-01_my_run\n" in text


def test_reproduce_section_other_data_cpu_preset_and_machine_paths():
    text = _section(hparams={"preset": "tiny", "vocab_size": 1024,
                             "data_path": "/tmp/x/data/datasets/fineweb10B_sp1024",
                             "tokenizer_path": "/tmp/x/data/tokenizers/text_1024_bpe.model"},
                    run_env={"ITERATIONS": "20", "CODE_PATH": "/home/me/train_gpt.py", "SEED": "1"}, nproc=1)
    assert "/tmp/x" not in text and "/home/me" not in text
    assert "--gpus" not in text  # PRESET=tiny runs on CPU
    # the data are not the container's default names: the mounts are named with -e
    assert ("-e PRESET=tiny -e VOCAB_SIZE=1024 -e ITERATIONS=20 "
            "-e DATA_PATH=/data/datasets/fineweb10B_sp1024 "
            "-e TOKENIZER_PATH=/data/tokenizers/text_1024_bpe.model") in text
    assert "ITERATIONS=20 DATA_PATH=./data/datasets/fineweb10B_sp1024" in text
    assert "Left out of the commands: CODE_PATH (paths on the machine that recorded this run)." in text
    assert "SEED=1" not in text
