"""trainer/export.py: the architecture fields, the calibration batch shape, and the budget split
(calibration inside MAX_WALLCLOCK_SECONDS, export_time apart) with an injected clock."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pgolf.shards import write_shard
from trainer.config import Hyperparameters
from trainer.dist import DistInfo
from trainer.export import ARCH_FIELDS, calibration_batch_shape, quantize_and_save
from trainer.runlog import RunLog, parse_json_lines
from trainer.train import build_model


def test_arch_fields_name_real_settings_and_the_new_model_options():
    names = {f.name for f in dataclasses.fields(Hyperparameters)}
    assert set(ARCH_FIELDS) <= names and len(set(ARCH_FIELDS)) == len(ARCH_FIELDS)
    assert {"parallel_lanes", "parallel_final_lane", "sparse_attn_gate", "attn_gate_window",
            "sparse_attn_gate_scale", "varlen_attn"} <= set(ARCH_FIELDS)


def test_calibration_batch_shape():
    h = Hyperparameters.from_env({"PRESET": "pr1855"})
    assert h.gptq_calib_seqs == 0 and h.gptq_calibration_batches == 16 and h.gptq_reserve_seconds == 10.0
    g, seq, accum = calibration_batch_shape(h, 8)  # one training micro-batch per rank, as the record
    assert (g, seq, accum) == (786_432, 2048, 1) and g // (8 * accum) == 48 * 2048
    assert calibration_batch_shape(h, 1) == (786_432, 2048, 8)
    old = Hyperparameters.from_env({"PRESET": "pr1493"})
    assert calibration_batch_shape(old, 8) == (2048 * 8, 2048, 1)  # one sequence per rank, as before


class StepClock:
    """Each call returns the time so far, then advances ``step`` seconds."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        t = self.t
        self.t += self.step
        return t


@pytest.fixture
def env(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "fineweb_train_000000.bin", np.random.default_rng(0).integers(0, 64, 50_000))
    code = tmp_path / "train_gpt.py"
    code.write_text("# counted code\n")
    monkeypatch.setenv("CODE_PATH", str(code))
    h = Hyperparameters.from_env({"PRESET": "tiny", "VOCAB_SIZE": "64", "MODEL_DIM": "32",
                                  "OUTPUT_DIR": str(tmp_path), "RUN_ID": "e", "GPTQ_CALIBRATION_BATCHES": "4",
                                  "TRAIN_SEQ_LEN": "32", "MAX_WALLCLOCK_SECONDS": "100",
                                  "GPTQ_RESERVE_SECONDS": "10"})
    torch.manual_seed(0)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return h, dist, str(data / "fineweb_train_*.bin"), tmp_path


def test_calibration_is_training_time_and_stops_at_the_cap(env):
    h, dist, pattern, out = env
    log = RunLog(str(out / "e.log"))
    # training used 88 s of the 100 s cap; every clock read advances 5 s: batches start at 0, 5,
    # 10 s; at 15 s the cap (12 s after the start) is passed, so 3 of the 4 batches are used
    saved = quantize_and_save(h, dist, log, build_model(h, dist.device), pattern, train_time_ms=88_000.0,
                              clock=StepClock(5.0))
    text = (out / "e.log").read_text()
    (art,) = [e for e in parse_json_lines(text) if e["event"] == "artifact"]
    assert saved.calib_batches == 3 == art["calib_batches"]
    assert saved.calib_ms == 20_000.0 == art["calib_ms"] == art["quant_ms"]
    assert art["export_ms"] == saved.export_ms > 0 and saved.export_ms % 5000 == 0
    assert "gptq: calibration stopped after 3 of 4 batches at MAX_WALLCLOCK_SECONDS=100" in text
    assert "gptq: calibration overran the reserve: training 88.0s + calibration 20.0s = 108.0s" in text
    assert "export_time:" in text and "counted in neither budget" in text
    assert "Quantized weights:" in text and "bytes_by_group " in text


def test_calibration_within_the_reserve_says_nothing_more(env):
    h, dist, pattern, out = env
    log = RunLog(str(out / "e.log"))
    saved = quantize_and_save(h, dist, log, build_model(h, dist.device), pattern, train_time_ms=50_000.0,
                              clock=StepClock(0.5))
    text = (out / "e.log").read_text()
    assert saved.calib_batches == 4 and saved.calib_ms == 2_000.0  # reads at 0, 0.5, 1, 1.5; end 2
    assert "overran" not in text and "stopped after" not in text
    assert "gptq: calibration 4 batches x 32 tokens/rank in 2.0s" in text
