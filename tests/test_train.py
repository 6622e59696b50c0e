"""The training loop (trainer/train.py) and the entry point (trainer/main.py), on CPU."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pgolf.shards import write_shard
from trainer.attention import select_attention_backend
from trainer.config import PRESETS, Hyperparameters
from trainer.dist import DistInfo
from trainer.runlog import RunLog, parse_json_lines
from trainer.train import mean_loss_validator, resolve_grad_accum, run_training, warmup_buckets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 128


def markov_stream(n: int, seed: int, vocab: int = V) -> np.ndarray:
    """Mostly-deterministic successor chain (next = 5*cur + 3 mod V, 10% random): learnable fast."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    noise = rng.random(n) < 0.1
    rand = rng.integers(0, vocab, n)
    for i in range(1, n):
        out[i] = rand[i] if noise[i] else (5 * out[i - 1] + 3) % vocab
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for i in range(2):
        write_shard(d / f"fineweb_train_{i:06d}.bin", markov_stream(40_000, seed=i))
    write_shard(d / "fineweb_val_000000.bin", markov_stream(4_000, seed=99))
    return str(d)


@pytest.fixture(autouse=True, scope="module")
def _cpu_attention():
    select_attention_backend(torch.device("cpu"))


def hparams(data_dir: str, **over) -> Hyperparameters:
    env = {"PRESET": "tiny", "VOCAB_SIZE": str(V), "MODEL_DIM": "64", "NUM_LAYERS": "4",
           "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "1024", "ITERATIONS": "30",
           "TRAIN_LOG_EVERY": "1", "DATA_PATH": data_dir}
    env.update({k.upper(): str(v) for k, v in over.items()})
    return Hyperparameters.from_env(env)


def cpu() -> DistInfo:
    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def train(tmp_path, h, validate=None):
    path = str(tmp_path / f"{h.run_id}.log")
    if os.path.exists(path):
        os.remove(path)
    out = run_training(h, cpu(), RunLog(path), validate=validate)
    text = open(path).read()
    return out, text, parse_json_lines(text)


def test_tiny_run_trains_and_logs(tmp_path, data_dir):
    out, text, events = train(tmp_path, hparams(data_dir, iterations=40))
    losses = [e["train_loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 40
    assert losses[-1] < losses[0] - 1.5  # ln 128 = 4.85 -> well under 3
    assert out.steps == 40 and out.stop_reason == "iterations" and out.grad_accum_steps == 1
    assert re.search(r"^step:40/40 train_loss:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d\dms tok/s:\d+$",
                     text, re.M)
    assert re.search(r"^model_params:\d+$", text, re.M)
    end = [e for e in events if e["event"] == "train_end"]
    assert end and end[0]["steps"] == 40 and end[0]["stop_reason"] == "iterations"
    assert set(end[0]) == {"event", "steps", "iterations", "train_time_ms", "stop_reason", "peak_mem_mib"}
    assert set(events[0]) == {"event", "step", "iterations", "train_loss", "train_time_ms", "tok_s"}
    assert "ema: applied" in text
    # the EMA model (returned) is a good model too
    val = torch.from_numpy(markov_stream(2_000, seed=5))
    loss, _ = mean_loss_validator(out.model and hparams(data_dir), cpu(), val)(out.model)
    assert loss < 3.3


def test_recurrence_switches_on_at_the_set_fraction(tmp_path, data_dir):
    out, text, events = train(tmp_path, hparams(data_dir, iterations=20, enable_looping_at=0.5))
    rec = [e for e in events if e["event"] == "recurrence_on"]
    assert len(rec) == 1 and rec[0]["step"] == 10 and rec[0]["frac"] == pytest.approx(0.5)
    assert out.recurrence_step == 10 and out.model.recurrence_on
    assert "layer_loop:enabled step:10 frac:0.500 encoder:[0, 1, 2, 1] decoder:[2, 1, 2, 3]" in text


class StepClock:
    """A fake ``time.perf_counter``: every reading is ``tick`` seconds after the previous one, so the
    cap's logic is tested without depending on how fast this machine runs."""

    def __init__(self, tick: float):
        self.tick, self.now, self.reads = tick, 1000.0, 0

    def __call__(self) -> float:
        self.now += self.tick
        self.reads += 1
        return self.now


def test_wallclock_cap_stops_training_and_says_so(tmp_path, data_dir):
    h = hparams(data_dir, iterations=1_000_000, max_wallclock_seconds=2.0, gptq_reserve_seconds=0.5,
                enable_looping_at=0.5, train_log_every=1000)
    clock = StepClock(0.125)
    path = str(tmp_path / "cap.log")
    out = run_training(h, cpu(), RunLog(path), clock=clock)
    text = open(path).read()
    events = parse_json_lines(text)
    assert out.stop_reason == "wallclock_cap" and 0 < out.steps < h.iterations
    # stops at the first reading at or past 1500 ms (2 s cap - 0.5 s reserve); the reported time is
    # one more reading (the end of training): at most two ticks past the cap
    assert 1500 <= out.train_time_ms <= 1500 + 2 * 125
    assert out.steps < clock.reads  # every step read the clock at least once
    m = re.search(r"^stopping_early: wallclock_cap train_time:(\d+)ms step:(\d+)/1000000$", text, re.M)
    assert m and int(m.group(2)) == out.steps and int(m.group(1)) == round(out.train_time_ms)
    end = [e for e in events if e["event"] == "train_end"][0]
    assert end["stop_reason"] == "wallclock_cap" and end["steps"] == out.steps
    rec = [e for e in events if e["event"] == "recurrence_on"]  # progress by wallclock, not steps
    assert len(rec) == 1 and 0.5 <= rec[0]["frac"] < 0.5 + 2 * 125 / 1500


def test_a_spent_cap_trains_no_step(tmp_path, data_dir):
    h = hparams(data_dir, iterations=100, max_wallclock_seconds=2.0, gptq_reserve_seconds=0.5)
    out = run_training(h, cpu(), RunLog(str(tmp_path / "spent.log")), clock=StepClock(10.0))
    assert out.steps == 0 and out.stop_reason == "wallclock_cap" and out.train_time_ms >= 1500


def test_min_lr_floor_holds_in_the_loop(tmp_path, data_dir):
    """With MIN_LR=1 the warmdown never lowers the LR: the run equals one without warmdown."""
    runs = {}
    for name, over in {"floor": dict(warmdown_frac=1.0, min_lr=1.0), "flat": dict(warmdown_frac=0.0),
                       "decay": dict(warmdown_frac=1.0, min_lr=0.0)}.items():
        _, _, ev = train(tmp_path, hparams(data_dir, iterations=4, run_id=name, **over))
        runs[name] = [e["train_loss"] for e in ev if e["event"] == "train"]
    assert runs["floor"] == runs["flat"]
    assert runs["decay"] != runs["flat"]  # the control: a decaying LR does change training


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_a_step_at_tiny_width(tmp_path, data_dir, preset):
    env = {"PRESET": preset, "VOCAB_SIZE": str(V), "MODEL_DIM": "128", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
           "ROPE_DIMS": "16", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512", "GRAD_ACCUM_STEPS": "1",
           "ITERATIONS": "1", "WARMUP_STEPS": "0", "MAX_WALLCLOCK_SECONDS": "0", "COMPILE": "0",
           "EMA_DECAY": "0", "TRAIN_LOG_EVERY": "1", "DATA_PATH": data_dir, "RUN_ID": preset}
    h = Hyperparameters.from_env(env)
    from trainer.train import build_model

    init = {n: p.detach().clone() for n, p in build_model(h, torch.device("cpu")).named_parameters()}
    out, _, events = train(tmp_path, h)
    assert out.steps == 1 and np.isfinite(out.final_train_loss)
    assert [e["step"] for e in events if e["event"] == "train"] == [1]
    moved = [n for n, p in out.model.named_parameters() if not torch.equal(p, init[n])]
    # (the zero-init output projections are what a first step can move among the matrices)
    assert {"blocks.0.attn.proj.weight", "blocks.0.mlp.proj.weight", "tok_emb.weight"} <= set(moved)


def test_warmup_is_undone(tmp_path, data_dir):
    """Warm-up steps (both graphs) leave no trace: same losses as a run without them."""
    _, _, ev0 = train(tmp_path, hparams(data_dir, iterations=8, enable_looping_at=0.5, run_id="a"))
    _, text, ev3 = train(tmp_path, hparams(data_dir, iterations=8, enable_looping_at=0.5, warmup_steps=3,
                                           run_id="b"))
    assert "loop_warmup:enabled" in text
    l0 = [e["train_loss"] for e in ev0 if e["event"] == "train"]
    l3 = [e["train_loss"] for e in ev3 if e["event"] == "train"]
    assert l0 == pytest.approx(l3, rel=1e-6)


def test_ema_is_swapped_in(tmp_path, data_dir):
    raw, _, _ = train(tmp_path, hparams(data_dir, iterations=1, ema_decay=0.0))
    ema, _, _ = train(tmp_path, hparams(data_dir, iterations=1, ema_decay=0.5))
    torch.manual_seed(hparams(data_dir).seed)
    from trainer.model import GPT

    init = GPT(hparams(data_dir))
    pairs = zip(raw.model.named_parameters(), ema.model.parameters(), init.parameters())
    for (n, p_raw), p_ema, p_init in pairs:
        assert torch.allclose(p_ema, 0.5 * p_init + 0.5 * p_raw, atol=1e-6), n


def test_validation_is_pluggable_and_excluded_from_train_time(tmp_path, data_dir):
    calls = []

    class Res:
        val_loss, val_bpb = 1.25, 0.5

    def validate(model):
        calls.append(model.training)
        return Res()

    out, text, events = train(tmp_path, hparams(data_dir, iterations=10, val_loss_every=5), validate)
    assert len(calls) == 3  # steps 0, 5 and the last
    vals = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in vals] == [0, 5, 10]
    assert set(vals[0]) == {"event", "step", "val_loss", "val_bpb", "train_time_ms"}
    assert "step:10/10 val_loss:1.2500 val_bpb:0.5000 train_time:" in text
    # the simple validator: mean loss, no bpb
    h = hparams(data_dir)
    val = torch.from_numpy(markov_stream(1_000, seed=7))
    loss, bpb = mean_loss_validator(h, cpu(), val)(out.model)
    assert bpb is None and 0 < loss < 5


def test_warmup_buckets_cover_the_observed_cu_seqlens_lengths():
    # 48 rows need at least 49 entries -> 64; observed 128..256: one bucket of margin each side
    assert warmup_buckets([192, 128, 256, 192], rows=48) == [64, 128, 192, 256, 320]
    assert warmup_buckets([64, 64], rows=48) == [64, 128]
    assert warmup_buckets([256], rows=200) == [256, 320]


def test_grad_accum_resolution():
    h = Hyperparameters.from_env({})
    assert [resolve_grad_accum(h, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="TRAIN_BATCH_TOKENS"):
        resolve_grad_accum(Hyperparameters.from_env({"TRAIN_BATCH_TOKENS": "1000"}), 1)


# --- several processes -----------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    from trainer.attention import select_attention_backend
    from trainer.config import PRESETS, Hyperparameters
    from trainer.dist import barrier, init_distributed, shutdown
    from trainer.runlog import RunLog
    from trainer.train import run_training
    dist = init_distributed()
    select_attention_backend(dist.device)
    h = Hyperparameters.from_env()
    out = run_training(h, dist, RunLog(sys.argv[1] if dist.is_main else None, dist.is_main))
    if dist.is_main:
        with torch.no_grad(), open(sys.argv[2], "w") as f:
            json.dump({"loss": out.final_train_loss, "ga": out.grad_accum_steps,
                       "checksum": sum(float(p.double().sum()) for p in out.model.parameters())}, f)
    barrier()  # nobody tears the group down while a peer still uses it
    shutdown()
""")


def _run_world(tmp_path, data_dir, world: int, port: int) -> tuple[list[float], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update({"PRESET": "tiny", "VOCAB_SIZE": str(V), "MODEL_DIM": "64", "NUM_LAYERS": "5",
                "TRAIN_SEQ_LEN": "32", "TRAIN_BATCH_TOKENS": "512", "GRAD_ACCUM_STEPS": "0",
                "ITERATIONS": "6", "ENABLE_LOOPING_AT": "0.5", "TRAIN_LOG_EVERY": "1", "DATA_PATH": data_dir,
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO})
    log, res = tmp_path / f"w{world}.log", tmp_path / f"w{world}.json"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(log), str(res)], cwd=REPO,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    events = parse_json_lines(log.read_text())
    return [e["train_loss"] for e in events if e["event"] == "train"], json.loads(res.read_text())


@pytest.mark.slow
def test_one_and_two_processes_train_the_same(tmp_path, data_dir):
    """Same seed and global batch: 1 process x 8 micro-steps == 2 processes (gloo) x 4 (the tiny
    preset: shuffled windows, document packing, two lanes, Polar Express, Muon's reduce-scatter /
    all-gather with 5 layers, so some same-shape buckets do not split evenly over the ranks)."""
    port = 29500 + os.getpid() % 1000
    l1, r1 = _run_world(tmp_path, data_dir, 1, port)
    l2, r2 = _run_world(tmp_path, data_dir, 2, port + 1)
    assert (r1["ga"], r2["ga"]) == (8, 4)
    assert len(l1) == len(l2) == 6
    assert l1 == pytest.approx(l2, rel=2e-5)
    assert r1["loss"] == pytest.approx(r2["loss"], rel=2e-5)
    assert r1["checksum"] == pytest.approx(r2["checksum"], rel=1e-5)


# --- the entry point -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_data(tmp_path_factory):
    """A small SentencePiece model trained on stdlib text, and shards of that text."""
    import pydoc_data.topics

    import sentencepiece as spm

    text = [ln.strip() for t in pydoc_data.topics.topics.values() for ln in t.split("\n") if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=V,
                                   model_type="bpe", minloglevel=2, num_threads=1, bos_id=1, eos_id=2,
                                   pad_id=0, unk_id=3, hard_vocab_limit=False)
    d = tmp_path_factory.mktemp("spdata")
    (d / "tok.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    ids = []
    for line in text[:3000]:
        ids.append(1)
        ids.extend(sp.encode(line))
    ids = np.array(ids)
    write_shard(d / "fineweb_train_000000.bin", ids[:-5000])
    write_shard(d / "fineweb_val_000000.bin", ids[-5000:])
    return d


def _main(env_over: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PRESET")}
    env.update({"OUTPUT_DIR": str(tmp_path), "RUN_ID": "t", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    env.update(env_over)
    return subprocess.run([sys.executable, "-m", "trainer"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def test_main_runs_a_tiny_training(tmp_path, sp_data):
    r = _main({"PRESET": "tiny", "VOCAB_SIZE": str(V), "DATA_PATH": str(sp_data), "MODEL_DIM": "32",
               "TOKENIZER_PATH": str(sp_data / "tok.model"), "ITERATIONS": "6", "TRAIN_SEQ_LEN": "64",
               "TRAIN_BATCH_TOKENS": "512", "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "64"}, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    events = parse_json_lines((tmp_path / "t.log").read_text())
    start = events[0]
    assert start["event"] == "run_start"
    for key in ("seed", "run_id", "world_size", "grad_accum_steps", "device_name", "device_count",
                "torch_version", "python_version", "cuda_version", "attention_backend",
                "eval_only", "hparams"):
        assert key in start, key
    assert start["attention_backend"] == "sdpa_cpu" and start["hparams"]["iterations"] == 6
    kinds = [e["event"] for e in events]
    assert kinds.count("train") == 6 and "train_end" in kinds and "val" in kinds


@pytest.mark.parametrize("case", ["no_shards", "vocab_mismatch", "token_out_of_range", "no_gpu"])
def test_main_bad_input_is_one_line_and_nonzero(tmp_path, sp_data, case):
    env = {"PRESET": "tiny", "VOCAB_SIZE": str(V), "DATA_PATH": str(sp_data),
           "TOKENIZER_PATH": str(sp_data / "tok.model")}
    expect = {"no_shards": "no shard files match", "vocab_mismatch": "VOCAB_SIZE=200",
              "token_out_of_range": "token id", "no_gpu": "CUDA"}[case]
    if case == "no_shards":
        env["DATA_PATH"] = str(tmp_path / "empty")
    elif case == "vocab_mismatch":
        env["VOCAB_SIZE"] = "200"
    elif case == "token_out_of_range":
        bad = tmp_path / "bad"
        bad.mkdir()
        write_shard(bad / "fineweb_train_000000.bin", [1, 2, 500])
        write_shard(bad / "fineweb_val_000000.bin", [1, 2, 3])
        env["DATA_PATH"] = str(bad)
    else:
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        env["PRESET"] = "pr1493"
    r = _main(env, tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
