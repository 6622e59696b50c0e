"""verify.logparse on our pgolf logs and on excerpts of the formats other competitors' scripts print."""

from __future__ import annotations

import math

import pytest

from trainer.runlog import JSON_PREFIX, RunLog
from verify import logparse
from verify.logparse import parse_log, parse_log_text

# The 2026-03 scripts: the source code first (with result-looking templates), a GPU table, then results.
OLD_FORMAT = '''"""
train_gpt_submit.py - a record script; logs begin with its own source.
"""
import os
def main():
    log0(f"final_int6_sliding_window_exact val_loss:{sw_val_loss:.8f} val_bpb:{sw_val_bpb:.8f}")
    log0(
        f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
    )
final_int8_zlib_roundtrip_exact val_loss:9.87654321 val_bpb:9.87654321
if __name__ == "__main__":
    main()
====================================================================================================
Running Python 3.12.3 (main, Nov  6 2025, 13:44:16) [GCC 13.3.0]
Running PyTorch 2.9.1+cu128
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |
| N/A   33C    P0            121W /  700W |    1521MiB /  81559MiB |      0%      Default |
|   1  NVIDIA H100 80GB HBM3          On  |   00000000:2A:00.0 Off |                    0 |
|   2  NVIDIA H100 80GB HBM3          On  |   00000000:3A:00.0 Off |                    0 |
|   3  NVIDIA H100 80GB HBM3          On  |   00000000:5D:00.0 Off |                    0 |
|    0   N/A  N/A          106002      C   /usr/local/bin/python                  1512MiB |
====================================================================================================
val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./data/tokenizers/fineweb_1024_bpe.model
val_loader:shards pattern=./data/datasets/fineweb10B_sp1024/fineweb_val_*.bin tokens:62021632
world_size:8 grad_accum_steps:1
train_batch_tokens:786432 train_seq_len:2048 iterations:9000 warmup_steps:20 max_wallclock_seconds:600.000
seed:1337
warmup_step:1/20
step:1/9000 train_loss:6.9357 train_time:146ms step_avg:145.51ms
step:200/9000 train_loss:2.4018 train_time:17153ms step_avg:85.77ms
step:7103/9000 val_loss:1.9293 val_bpb:1.1427 train_time:600021ms step_avg:84.47ms
stopping_early: wallclock_cap train_time:600021ms step:7103/9000
peak memory allocated: 20600 MiB reserved: 20660 MiB
Serialized model: 105783807 bytes
Code size: 66133 bytes
Total submission size: 105849940 bytes
Serialized model int6+zstd: 15468512 bytes
Total submission size int6+zstd: 15534645 bytes
final_int6_roundtrip val_loss:1.9408 val_bpb:1.1494 eval_time:5637ms
final_int6_roundtrip_exact val_loss:1.94077647 val_bpb:1.14943715
final_int6_sliding_window val_loss:1.9030 val_bpb:1.1271 stride:64 eval_time:69809ms
final_int6_sliding_window_exact val_loss:1.90301335 val_bpb:1.12707468
final_int8_zlib_roundtrip val_loss:1.9999 val_bpb:1.1999 eval_time:1356ms
'''

# The 2026-04 scripts: a hyperparameter block, `N/M` steps with minutes, spaces after colons.
NEW_FORMAT = """W0426 19:59:28.614000 762659 torch/distributed/run.py:803] *****
Hyperparameters:
  iterations: 20000
  seed: 42
  tokenizer_path: ./data/tokenizers/fineweb_8192_bpe.model
  world_size: 8
====================================================================================================
val_tokens: 40540160
model_params:35943512
0/20000 val_loss: 9.0090 val_bpb: 3.4877
1/20000 train_loss: 9.0111 train_time: 0.0m tok/s: 8242436
500/20000 train_loss: 3.3339 train_time: 0.8m tok/s: 7726831
layer_loop:enabled step:2888 frac:0.500 encoder:[0, 1, 2, 3, 4, 5, 4] decoder:[5, 4, 5, 6, 7, 8, 9, 10]
4986/20000 val_loss: 2.8178 val_bpb: 1.0909
stopping_early: wallclock_cap train_time: 588136ms step: 4986/20000
pre-quantization post-ema val_loss:2.81543002 val_bpb:1.08994070 eval_time:6006ms
Code size (uncompressed): 157868 bytes
Code size (compressed): 31999 bytes
Serialized model quantized+pergroup: 15865260 bytes
Total submission size quantized+pergroup: 15897259 bytes
diagnostic quantized val_loss:2.34727563 val_bpb:1.07254371 eval_time:49995ms
quantized_sliding_window val_loss:2.80691494 val_bpb:1.08664424 eval_time:84115ms
ttp: b728/782 bl:2.3616 bb:1.0812 rl:2.2175 rb:1.0326 dl:2306-2324 gd:1
quantized_ttt_phased val_loss:2.31944212 val_bpb:1.05989454 eval_time:508785ms
total_eval_time:508.8s
"""


def test_old_format_skips_source_and_takes_the_most_final_exact_line():
    s = parse_log_text(OLD_FORMAT, "records/x/train.log")
    assert s.format == "conventional" and s.problems == []
    assert s.code_region == (1, 12)
    # sliding window beats roundtrip (even the later int8 roundtrip line); _exact beats rounded
    assert (s.final_phase, s.val_loss, s.val_bpb) == (
        "final_int6_sliding_window_exact",
        1.90301335,
        1.12707468,
    )
    assert (
        s.lines["val_bpb"]
        == OLD_FORMAT.splitlines().index(
            "final_int6_sliding_window_exact val_loss:1.90301335 val_bpb:1.12707468"
        )
        + 1
    )
    assert s.seed == 1337 and s.seed_source == "log"
    assert (s.train_time_ms, s.steps, s.iterations, s.stop_reason) == (600021.0, 7103, 9000, "wallclock_cap")
    assert (s.code_bytes, s.model_bytes, s.total_bytes) == (66133, 15468512, 15534645)  # labeled sizes win
    assert s.eval_time_ms == 5637 + 69809 + 1356  # post-training result lines with an eval_time
    assert (s.device_name, s.device_count, s.world_size) == ("NVIDIA H100 80GB HBM3", 4, 8)
    assert s.val_tokens == 62021632 and s.torch_version == "2.9.1+cu128"
    assert s.tokenizer_path.endswith("fineweb_1024_bpe.model")
    assert s.train_curve == [(1, 6.9357), (200, 2.4018)] and s.val_curve == [(7103, 1.9293, 1.1427)]
    assert set(s.eval_phases) >= {"final_int6_roundtrip", "final_int6_sliding_window_exact"}
    assert s.eval_phases["final_int6_roundtrip"]["eval_time_ms"] == 5637.0


def test_new_format_ttt_phased_and_total_eval_time():
    s = parse_log_text(NEW_FORMAT, "train_seed42.log")
    assert s.format == "conventional" and s.problems == []
    assert (s.final_phase, s.val_loss, s.val_bpb) == ("quantized_ttt_phased", 2.31944212, 1.05989454)
    assert s.eval_time_ms == 508800.0
    assert (s.train_time_ms, s.steps, s.iterations) == (588136.0, 4986, 20000)
    assert s.code_bytes == 31999 and s.code_bytes_uncompressed == 157868  # the compressed code counts
    assert (s.model_bytes, s.total_bytes) == (15865260, 15897259)
    assert s.seed == 42 and s.world_size == 8 and s.device_name is None
    assert s.train_curve == [(1, 9.0111), (500, 3.3339)]
    assert s.val_curve == [(0, 9.009, 3.4877), (4986, 2.8178, 1.0909)]
    assert s.eval_phases["diagnostic quantized"]["val_bpb"] == 1.07254371


def test_without_total_eval_time_diagnostic_and_prequant_lines_are_not_counted():
    text = NEW_FORMAT.replace("total_eval_time:508.8s\n", "").replace("quantized_ttt_phased", "quantized_ttt")
    s = parse_log_text(text)
    assert s.final_phase == "quantized_ttt"
    assert s.eval_time_ms == 84115 + 508785


@pytest.mark.parametrize(
    "line,loss,bpb",
    [
        (
            "final_sliding_window_eval_exact stride:64 val_loss:1.95110428 val_bpb:1.15555486",
            1.95110428,
            1.15555486,
        ),
        ("final_int8_zlib_roundtrip_exact val_loss:2.03860961 val_bpb:1.20737944", 2.03860961, 1.20737944),
        (
            "quantized_sliding_window val_loss:2.80691494 val_bpb:1.08664424 eval_time:84115ms",
            2.80691494,
            1.08664424,
        ),
        ("quantized_ttt val_loss: 2.3 val_bpb: 1.05 eval_time: 500ms", 2.3, 1.05),
    ],
)
def test_result_line_variants(line, loss, bpb):
    s = parse_log_text("step:1/10 train_loss:5.0 train_time:1ms step_avg:1ms\n" + line + "\n")
    assert (s.val_loss, s.val_bpb) == (loss, bpb) and s.problems == []


def test_seed_from_file_name_and_a_mismatch(tmp_path):
    p = tmp_path / "train_seed2025.log"
    p.write_text("step:1/10 train_loss:5.0\nquantized val_loss:2.0 val_bpb:1.0 eval_time:5ms\n")
    s = parse_log(p)
    assert s.seed == 2025 and s.seed_source == "filename"
    p.write_text("seed:7\nquantized val_loss:2.0 val_bpb:1.0\n")
    s = parse_log(p)
    assert s.seed == 7 and any("2025 in the file name" in x for x in s.problems)


def test_unfinished_and_unknown_and_unreadable(tmp_path):
    cut = OLD_FORMAT[: OLD_FORMAT.index("stopping_early")] + "step:7200/9000 train_lo"
    s = parse_log_text(cut)
    assert s.val_bpb is None and "no final val_bpb line" in s.problems
    assert any(x.startswith("unfinished: the run started (last step seen 200)") for x in s.problems)
    # a log that ends without a newline after its final line is complete, not truncated
    whole = parse_log_text(OLD_FORMAT.rstrip("\n"))
    assert whole.val_bpb == 1.12707468 and whole.problems == []
    s = parse_log_text("hello\nworld\n")
    assert s.format == "unknown" and any(x.startswith("unknown format") for x in s.problems)
    s = parse_log(tmp_path / "missing.log")
    assert s.format == "unknown" and s.problems[0].startswith("cannot read")
    s = parse_log_text(OLD_FORMAT.replace("val_bpb:1.12707468", "val_bpb:nan"))
    assert math.isnan(s.val_bpb) and any("final val_bpb is nan" in x for x in s.problems)


def test_our_runlog_output_round_trips(tmp_path, capsys):
    assert logparse.JSON_PREFIX == JSON_PREFIX
    path = tmp_path / "train_seed314.log"
    log = RunLog(str(path))
    log.event(
        "run_start",
        seed=314,
        run_id="train_seed314",
        world_size=8,
        grad_accum_steps=1,
        device_name="NVIDIA H100 80GB HBM3",
        device_count=8,
        torch_version="2.9.1",
        eval_only=False,
        hparams={"iterations": 20000, "tokenizer_path": "tok.model", "seed": 314},
    )
    log.line("step:1/20000 train_loss:9.0000 train_time:10ms step_avg:10.00ms tok/s:1")
    log.event("train", step=1, iterations=20000, train_loss=9.0, train_time_ms=10.0, tok_s=1.0)
    log.event("val", step=4000, val_loss=2.9, val_bpb=1.13, train_time_ms=400000.0)
    log.event("train_end", steps=5000, iterations=20000, train_time_ms=599000.5, stop_reason="wallclock_cap")
    log.event(
        "artifact", artifact="train_seed314.ptz", code_bytes=30000, model_bytes=15900000, total_bytes=15930000
    )
    log.line("quantized val_loss:2.90000000 val_bpb:1.20000000 eval_time:9000ms")
    log.event(
        "eval", phase="quantized", val_loss=2.9, val_bpb=1.2, eval_time_ms=9000.0, tokens=100, bytes=300
    )
    log.event("eval", phase="ttt", val_loss=2.8, val_bpb=1.1, eval_time_ms=400000.0, tokens=99, bytes=290)
    log.event(
        "final",
        seed=314,
        phase="ttt",
        val_loss=2.8,
        val_bpb=1.1,
        eval_time_ms=409000.0,
        train_time_ms=599000.5,
        code_bytes=30000,
        model_bytes=15900000,
        total_bytes=15930000,
    )
    s = parse_log(path)
    assert s.format == "pgolf" and s.problems == []
    assert (s.seed, s.final_phase, s.val_loss, s.val_bpb, s.eval_time_ms) == (314, "ttt", 2.8, 1.1, 409000.0)
    assert (s.train_time_ms, s.steps, s.stop_reason, s.total_bytes) == (
        599000.5,
        5000,
        "wallclock_cap",
        15930000,
    )
    assert s.eval_phases["quantized"]["eval_time_ms"] == 9000.0 and s.eval_phases["ttt"]["tokens"] == 99
    assert (s.val_tokens, s.eval_bytes, s.artifact_name) == (99, 290, "train_seed314.ptz")
    assert s.val_curve == [(4000, 2.9, 1.13)] and s.train_curve == [(1, 9.0)]
    assert s.device_count == 8 and s.hparams["iterations"] == 20000 and s.tokenizer_path == "tok.model"
    assert s.lines["val_bpb"] == len(path.read_text().splitlines())
    # a pgolf log without its final event has no score, even with conventional result lines
    text = "\n".join(ln for ln in path.read_text().splitlines() if '"final"' not in ln) + "\n"
    s = parse_log_text(text)
    assert s.val_bpb is None and any(x.startswith("unfinished") for x in s.problems)


def test_source_without_a_rule_ends_at_its_main_block():
    text = OLD_FORMAT.replace("=" * 100 + "\nRunning Python", "Running Python", 1)
    s = parse_log_text(text)
    assert s.code_region == (1, 12) and s.val_bpb == 1.12707468


# ---------------------------------------------------------------------------- formats of real records


@pytest.mark.parametrize(
    "prefix",
    [
        "[19:23:20] ",
        "2026-04-23 19:23:20,123 - ",
        "2026-04-23T19:23:20Z | ",
        "INFO: ",
        "[rank0]: ",
        "[2026-04-23 19:23:20] INFO: ",
    ],
)
def test_timestamp_and_level_prefixes_are_stripped(prefix):
    lines = [
        "seed:42",
        "step:100/200 train_loss:3.0000 train_time:1000ms step_avg:10.00ms",
        "stopping_early: wallclock_cap train_time:599000ms step:200/200",
        "Code size: 1000 bytes",
        "Total submission size int6+brotli: 15001000 bytes",
        "final_int6_sliding_window val_loss:2.40000000 val_bpb:1.10000000 eval_time:90000ms",
    ]
    s = parse_log_text("".join(prefix + ln + "\n" for ln in lines))
    assert (s.seed, s.train_time_ms, s.total_bytes, s.val_bpb, s.eval_time_ms) == (
        42,
        599000.0,
        15001000,
        1.1,
        90000.0,
    )


@pytest.mark.parametrize(
    "line,label,bpb",
    [
        (
            "final_sliding val_loss:2.9877 val_bpb:1.1568 (stride=16, T=0.90) eval_time:428712ms",
            "final_sliding",
            1.1568,
        ),
        ("sliding val_bpb: 1.0912 eval_time: 81s", "sliding", 1.0912),
        ("final_sliding_window val_bpb:1.12345678 val_loss:1.90000000", "final_sliding_window", 1.12345678),
        ("ttt_sliding:done val_loss=1.889768 val_bpb=1.119230 elapsed=409.8s", "ttt_sliding:done", 1.11923),
    ],
)
def test_sliding_and_ttt_variants(line, label, bpb):
    s = parse_log_text("step:1/10 train_loss:5.0 train_time:1ms\n" + line + "\n")
    assert [(x.label, x.val_bpb) for x in s.scores] == [(label, bpb)]


def test_progress_lines_are_not_scores():
    text = (
        "step:1/10 train_loss:5.0 train_time:1ms\n"
        "ttt_progress: batch 214/782 batch_loss:2.9381 batch_bpb:1.1303 running_loss:2.7832 running_bpb:1.0715\n"  # noqa: E501
        "  ttt_chunk [1171/1389] bpb=1.348314 time=341.6s\n"
        "quantized_ttt_lora val_loss:2.77059090 val_bpb:1.07258208 eval_time:338190ms\n"
    )
    s = parse_log_text(text)
    assert [x.label for x in s.scores] == ["quantized_ttt_lora"]


def test_every_result_line_is_kept_and_side_scores_rank_low():
    text = (
        "step:1/10 train_loss:5.0 train_time:1ms\n"
        "final_int6_sliding_window val_loss:2.50671564 val_bpb:1.08938974 eval_time:76195ms\n"
        "ngram_mix val_loss:2.40000000 val_bpb:1.02000000 eval_time:1000ms\n"
    )
    s = parse_log_text(text)
    assert [x.label for x in s.scores] == ["final_int6_sliding_window", "ngram_mix"]
    assert s.final_phase == "final_int6_sliding_window"  # an n-gram side line is not the log's own score


def test_source_echoed_after_a_header_is_skipped():
    src = [
        "import os",
        "def main():",
        "    seed = 1337",
        '    log0("x")',
        "final_int6_roundtrip val_loss:9.9 val_bpb:9.9",
        "if __name__ == '__main__':",
        "    main()",
    ]
    text = (
        "\n".join(
            ["=" * 40, "Hyperparameters:", "  seed: 7", "=" * 40]
            + src
            + [
                "=" * 40,
                "step:1/10 train_loss:5.0 train_time:1ms",
                "final_int6_roundtrip val_loss:2.0 val_bpb:1.2 eval_time:5ms",
            ]
        )
        + "\n"
    )
    s = parse_log_text(text)
    assert s.seed == 7 and [x.val_bpb for x in s.scores] == [1.2]


def test_outside_timer_and_calibration_lines():
    text = (
        "step:1/10 train_loss:5.0 train_time:1ms\n"
        "stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000\n"
        "GPTQ:collecting Hessians from calibration data...\n"
        "GPTQ:collected 67 Hessians in 4.7s\n"
        "Total submission size quantized+brotli: 15897259 bytes\n"
        "Deserialize: decompression done in 24.0s\n"
        "ttt_lora:compile warmup done (137.6s)\n"
        "quantized_ttt_phased val_loss:2.31944212 val_bpb:1.05989454 eval_time:508785ms\n"
        "total_eval_time:508.8s\n"
    )
    s = parse_log_text(text)
    assert [(w, sec) for _, w, sec in s.outside_timer] == [("deserialize", 24.0), ("compile warmup", 137.6)]
    assert [sec for _, _, sec in s.calibration] == [None, 4.7] and s.eval_time_ms == 508800.0
