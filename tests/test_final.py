"""After training (trainer/final.py via trainer/main.py): artifact, byte accounting, the final
evaluation phases from the file, EVAL_ONLY=1 reproduction without training data, and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest_eval import single_thread  # noqa: F401 - autouse fixture

from pgolf.corpus import pydoc_topic_documents
from pgolf.dataset import build_dataset
from trainer.runlog import parse_json_lines

REPO = str(Path(__file__).resolve().parents[1])
V = 512
RUN_ENV = {"PRESET": "tiny", "VOCAB_SIZE": str(V), "MODEL_DIM": "32", "ITERATIONS": "8",
           "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512", "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "32",
           "TTT_CHUNK_TOKENS": "512", "VAL_MAX_TOKENS": "3000", "GPTQ_CALIBRATION_BATCHES": "2"}


def trainer(env_over: dict, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PRESET")}
    env.update({"OUTPUT_DIR": str(out), "RUN_ID": "t", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    env.update(RUN_ENV)
    env.update(env_over)
    return subprocess.run([sys.executable, "-m", "trainer"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def events_of(log: Path, kind: str) -> list[dict]:
    return [e for e in parse_json_lines(log.read_text()) if e["event"] == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    info = build_dataset(pydoc_topic_documents(), root, V, val_fraction=0.1, source="test")
    return {"DATA_PATH": info.dataset_dir, "TOKENIZER_PATH": info.tokenizer_path}


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("run")
    r = trainer(data, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_artifact_is_written_and_accounted(run):
    (art,) = events_of(run / "t.log", "artifact")
    path = run / "t.ptz"
    assert art["artifact"] == "t.ptz" and path.stat().st_size == art["model_bytes"]
    code = Path(REPO, "trainer", "__main__.py").stat().st_size  # the file being run is the counted code
    assert art["code_bytes"] == code and art["total_bytes"] == code + art["model_bytes"]
    assert art["headroom_bytes"] == 16_000_000 - art["total_bytes"] and art["pruned_values"] == 0
    assert sum(art["bytes_by_class"].values()) <= art["model_bytes"]
    text = (run / "t.log").read_text()
    assert art["codec"] == "pergroup"  # the tiny preset runs the default stack's codec
    assert f"Total submission size quantized+pergroup: {art['total_bytes']} bytes" in text


def test_final_phases_score_from_the_artifact(run):
    log = run / "t.log"
    phases = [e["phase"] for e in events_of(log, "eval")]
    # the default stack: no sliding window, the phased LoRA TTT pass is the score
    assert phases == ["prequant_ema", "quantized", "ttt"]
    (final,) = events_of(log, "final")
    ttt = events_of(log, "eval")[-1]
    assert final["phase"] == "ttt" and final["val_bpb"] == ttt["val_bpb"]
    (train_end,) = events_of(log, "train_end")
    (art,) = events_of(log, "artifact")
    # GPTQ calibration reads training data: its time is training time
    assert final["train_time_ms"] == pytest.approx(train_end["train_time_ms"] + art["quant_ms"])
    timed = [e["eval_time_ms"] for e in events_of(log, "eval")[1:]]
    assert final["eval_time_ms"] >= sum(timed) > 0  # the diagnostic pre-quant eval is not counted
    text = log.read_text()
    assert "total_eval_time:" in text and "ttt_lora segment:1/" in text and "ttt_phased_done" in text


def test_eval_only_reproduces_without_training_data(run, data, tmp_path):
    val_only = tmp_path / "val"
    val_only.mkdir()
    for p in Path(data["DATA_PATH"]).glob("fineweb_val_*.bin"):
        shutil.copy(p, val_only)
    # a wrong MODEL_DIM in the environment: the artifact's architecture wins
    r = trainer({**data, "DATA_PATH": str(val_only), "EVAL_ONLY": "1", "ARTIFACT": str(run / "t.ptz"),
                 "MODEL_DIM": "48"}, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (again,) = events_of(tmp_path / "t.log", "final")
    (logged,) = events_of(run / "t.log", "final")
    assert again["phase"] == "ttt" and again["train_time_ms"] is None
    assert again["val_bpb"] == pytest.approx(logged["val_bpb"], abs=1e-6)
    assert "model_dim=32" in (tmp_path / "t.log").read_text()


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    return lines[0]


def test_eval_only_rejects_a_corrupt_or_missing_artifact(run, data, tmp_path):
    bad = tmp_path / "bad.ptz"
    blob = bytearray((run / "t.ptz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad.write_bytes(bytes(blob))
    line = one_error_line(trainer({**data, "EVAL_ONLY": "1", "ARTIFACT": str(bad)}, tmp_path))
    assert str(bad) in line and "corrupted" in line
    missing = str(tmp_path / "nope.ptz")
    line = one_error_line(trainer({**data, "EVAL_ONLY": "1", "ARTIFACT": missing}, tmp_path))
    assert "nope.ptz" in line and "not found" in line


def test_over_the_limit_fails_in_one_line_and_writes_no_artifact(data, tmp_path):
    line = one_error_line(trainer({**data, "ARTIFACT_LIMIT_BYTES": "3000", "ITERATIONS": "2"}, tmp_path))
    assert "limit" in line and "3000" in line
    assert not list(tmp_path.glob("*.ptz"))


def test_phased_lora_ttt_scores_the_artifact(run, data, tmp_path):
    r = trainer({**data, "EVAL_ONLY": "1", "ARTIFACT": str(run / "t.ptz"), "TTT_MODE": "lora_phased",
                 "SLIDING_WINDOW": "0", "TTT_LORA_RANK": "4", "TTT_LORA_BATCH_DOCS": "8",
                 "PHASED_TTT_PREFIX_DOCS": "2", "PHASED_TTT_PHASES": "2", "GLOBAL_TTT_CHUNK_TOKENS": "256",
                 "GLOBAL_TTT_BATCH_SEQS": "2"}, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    log = tmp_path / "t.log"
    text = log.read_text()
    (final,) = events_of(log, "final")
    ttt = events_of(log, "eval")[-1]
    assert final["phase"] == ttt["phase"] == "ttt" and final["val_bpb"] == ttt["val_bpb"]
    assert "quantized_ttt_phased val_loss:" in text and "ttt_phased_done adapted_docs:" in text
    globals_ = [ln for ln in text.splitlines() if ln.startswith("ttt_global phase:")]
    assert len(globals_) == 2 and all(" steps:0 " not in ln for ln in globals_)
    assert "ttt_doc_ends targets:" in text and "ttt_part:lora_segment_3 time:" in text
    parts = [e["part"] for e in events_of(log, "eval_part")]
    assert parts == ["startup", "load_decompress", "model_build", "quantized", "compile_warmup", "ttt_phased"]
    assert final["eval_time_ms"] >= 1000 * sum(e["seconds"] for e in events_of(log, "eval_part")) - 1.0
    assert text.index("eval_timer:") < text.index("eval_part:load_decompress")
    assert "eval_budget: total_eval_time:" in text and "within EVAL_BUDGET_SECONDS=600" in text


def test_a_bad_ttt_mode_is_one_clear_error(data, tmp_path):
    line = one_error_line(trainer({**data, "TTT_MODE": "lora"}, tmp_path))
    assert "TTT_MODE='lora'" in line and "lora_phased" in line


def test_the_eval_timer_covers_loading_and_warmup(run, data, tmp_path, monkeypatch):
    """With an injected clock (no wall time): the timer's first reading comes before the artifact
    is read and decompressed, its last after the LoRA compile warm-up and the last phase, and
    total_eval_time is exactly their difference."""
    import trainer.final as final
    from trainer.bpb import ByteCounter, position_bytes
    from trainer.config import Hyperparameters
    from trainer.data import load_validation_tokens
    from trainer.dist import DistInfo
    from trainer.main import load_tokenizer
    from trainer.runlog import RunLog

    events: list[tuple[str, float]] = []

    def clock() -> float:
        events.append(("tick", float(len(events))))
        return float(len(events))

    def traced(name, fn):
        def wrapper(*a, **k):
            events.append((name + "_begin", 0.0))
            out = fn(*a, **k)
            events.append((name + "_end", 0.0))
            return out
        return wrapper

    monkeypatch.setattr(final, "load_artifact", traced("load", final.load_artifact))
    monkeypatch.setattr(final, "lora_warmup", traced("warmup", final.lora_warmup))
    env = {**RUN_ENV, **data, "TTT_MODE": "lora_phased", "TTT_LORA_RANK": "4", "TTT_LORA_BATCH_DOCS": "8",
           "VAL_MAX_TOKENS": "800", "EVAL_BUDGET_SECONDS": "1000000", "SLIDING_WINDOW": "0"}
    h = Hyperparameters.from_env(env)
    val = load_validation_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), h.val_max_tokens)
    vb = position_bytes(ByteCounter(load_tokenizer(h), h.vocab_size), val)
    log = RunLog(str(tmp_path / "timer.log"))
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    score = final.evaluate_artifact(h, dist, log, str(run / "t.ptz"), val, vb, clock=clock)
    names = [n for n, _ in events]
    ticks = [i for i, n in enumerate(names) if n == "tick"]
    first, last = ticks[0], ticks[-1]
    assert first < names.index("load_begin") < names.index("load_end") < names.index("warmup_begin")
    assert names.index("warmup_end") < last
    total = events[last][1] - events[first][1]
    assert score.eval_ms == 1000.0 * total
    text = (tmp_path / "timer.log").read_text()
    assert f"total_eval_time:{total:.1f}s" in text
    parts = [float(ln.split("time:")[1].rstrip("s")) for ln in text.splitlines()
             if ln.startswith("eval_part:")]
    assert len(parts) == 5 and 0 < sum(parts) <= total
