"""bench/eval_budget.py: from a measured run's log to the evaluation time on N GPUs. The run here
is timed by a clock that counts model work (no wall time), so the prediction for the same set
on the same "GPU count" must come back close to what the clock measured."""

from __future__ import annotations

import json

import pytest
import torch
from conftest_eval import (
    cpu_dist,
    lora_hparams,
    make_sp,
    paragraph_val_tokens,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_gpt,
)

from bench.eval_budget import extrapolate, fit_rows_passes, main, parse_eval_log
from pgolf.shards import write_shard
from trainer.bpb import ByteCounter, position_bytes
from trainer.runlog import JSON_PREFIX
from trainer.ttt_phased import eval_ttt_phased, find_documents


class WorkClock:
    """Seconds = window tokens through the model (+1.5x for the tokens of training steps)."""

    def __init__(self, model):
        self.t = 0.0
        model.register_forward_hook(self.tick)

    def tick(self, mod, args, out):
        self.t += 1e-4 * args[0].numel()

    def on_score(self, ids):
        pass

    def on_train(self, ids):
        self.t += 1.5e-4 * ids.numel()

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def measured():
    tokens = paragraph_val_tokens(40, 1)
    vb = position_bytes(ByteCounter(make_sp(), 768), tokens)
    h = lora_hparams(ttt_lora_batch_docs=4, phased_ttt_prefix_docs=12, phased_ttt_phases=2)
    model = tiny_gpt()
    clock = WorkClock(model)
    lines = [JSON_PREFIX + json.dumps({"event": "run_start", "world_size": 1, "hparams": h.as_dict()})]
    for part, sec in (("load_decompress", 3.0), ("model_build", 1.0), ("compile_warmup", 20.0)):
        lines.append(JSON_PREFIX + json.dumps({"event": "eval_part", "part": part, "seconds": sec}))
    eval_ttt_phased(h, model, cpu_dist(), tokens, vb, recorder=clock, clock=clock, log=lines.append)
    return h, tokens, "\n".join(lines), clock.t


def test_log_is_parsed(measured):
    h, tokens, text, _ = measured
    m = parse_eval_log(text)
    assert m["world_size"] == 1 and m["hparams"]["ttt_lora_rank"] == h.ttt_lora_rank
    assert m["parts"] == {"load_decompress": 3.0, "model_build": 1.0, "compile_warmup": 20.0}
    assert len(m["lora"]) == text.count("\nttt_lora ") and len(m["global"]) == 2 and len(m["score"]) == 1
    a, b = fit_rows_passes([(10, 100, 1.0 * 10 + 0.01 * 100), (5, 300, 5 + 3.0), (20, 50, 20 + 0.5)])
    assert a == pytest.approx(1.0) and b == pytest.approx(0.01)


def test_prediction_on_the_measured_setup_comes_back(measured):
    h, tokens, text, ttt_seconds = measured
    m = parse_eval_log(text)
    docs = find_documents(tokens)
    parts, _ = extrapolate(m, h, docs, 1, keep_first=True)
    ttt = sum(v for k, v in parts.items() if k.startswith(("lora_segment", "global", "doc_ends")))
    assert ttt == pytest.approx(ttt_seconds, rel=0.15)
    assert parts["compile_warmup"] == 20.0 and parts["load_decompress"] == 3.0
    more, _ = extrapolate(m, h, docs, 4, keep_first=True)
    assert sum(more.values()) < sum(parts.values())
    assert more["compile_warmup"] == parts["compile_warmup"]  # fixed parts do not shrink with GPUs


def test_command_line(measured, tmp_path, capsys):
    h, tokens, text, _ = measured
    (tmp_path / "run.log").write_text(text)
    write_shard(tmp_path / "fineweb_val_000000.bin", torch.cat([tokens] * 3).numpy().astype("uint16"))
    assert main([str(tmp_path / "run.log"), "--val", str(tmp_path / "fineweb_val_*.bin"), "--gpus", "2",
                 "--budget", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "extrapolated total_eval_time:" in out and "fits" in out and "lora_segment_3" in out
    assert main([str(tmp_path / "run.log"), "--val", str(tmp_path / "fineweb_val_*.bin"), "--budget", "1e-3",
                 "--set", "PHASED_TTT_PHASES=3"]) == 0
    out = capsys.readouterr().out
    assert "global_3" in out and "phases 3)" in out and "OVER by" in out
