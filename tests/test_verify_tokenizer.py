"""Check 8 with a real SentencePiece model trained on stdlib text and real shards: a tokenizer that is
not official gets its validation byte count recomputed (trainer.bpb.ByteCounter) and compared with
the bytes the logs imply."""

from __future__ import annotations

import hashlib
import io
import math
import pydoc_data.topics

import numpy as np
import pytest
import sentencepiece as spm
from conftest_verify import make_record, pgolf_log
from verify_cases import build_case

from trainer.bpb import ByteCounter
from trainer.data import HEADER_INTS, SHARD_MAGIC, SHARD_VERSION
from verify.context import Options
from verify.limits import OFFICIAL_TOKENIZERS
from verify.runner import verify_folder


def _text() -> list[str]:
    topics = pydoc_data.topics.topics
    return [topics[k] for k in sorted(topics)][:60]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> tuple[str, spm.SentencePieceProcessor]:
    d = tmp_path_factory.mktemp("tok")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_text()),
        model_writer=buf,
        vocab_size=600,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_id=0,
        add_dummy_prefix=False,
        character_coverage=0.999,
    )
    path = d / "custom_600.model"
    path.write_bytes(buf.getvalue())
    return str(path), spm.SentencePieceProcessor(model_file=str(path))


def write_shard(path, tokens: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


@pytest.fixture(scope="module")
def val_data(tmp_path_factory, sp_model):
    _, sp = sp_model
    ids = []
    for doc in _text()[:20]:
        ids += [sp.bos_id()] + sp.encode(doc)
    tokens = np.array(ids, dtype=np.uint16)
    d = tmp_path_factory.mktemp("data")
    half = tokens.size // 2
    write_shard(d / "fineweb_val_000000.bin", tokens[:half])
    write_shard(d / "fineweb_val_000001.bin", tokens[half:])
    import torch

    t = torch.from_numpy(tokens.astype(np.int64))
    true_bytes = int(ByteCounter(sp, sp.vocab_size()).token_bytes(t[:-1], t[1:]).sum())
    return str(d), tokens.size - 1, true_bytes


def _folder_with(tmp_path, model_path, n_targets, logged_bytes):
    folder = make_record(tmp_path)
    (folder / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    code = (folder / "train_gpt.py").stat().st_size
    for seed in (42, 314, 999):
        (folder / f"train_seed{seed}.log").unlink()
        loss = 2.3
        bpb = round(n_targets * loss / math.log(2) / logged_bytes, 8)
        pgolf_log(
            folder / f"train_seed{seed}.log",
            seed,
            loss,
            bpb,
            train_ms=590_000.0,
            eval_ms=400_000.0,
            code_bytes=code,
            model_bytes=15_000_000,
            eval_tokens=n_targets,
            eval_bytes=logged_bytes,
        )
    return folder


def test_honest_custom_tokenizer_passes(tmp_path, sp_model, val_data):
    model_path, _ = sp_model
    data, n, true_bytes = val_data
    assert hashlib.sha256(open(model_path, "rb").read()).hexdigest() not in OFFICIAL_TOKENIZERS
    folder = _folder_with(tmp_path, model_path, n, true_bytes)
    res = {r.id: r for r in verify_folder(folder, Options(data=data))}["tokenizer"]
    assert res.status == "PASS", res.summary
    assert f"recounted {true_bytes} bytes" in res.summary and "(+0.000%)" in res.summary


def test_inflated_byte_count_fails(tmp_path, sp_model, val_data):
    model_path, _ = sp_model
    data, n, true_bytes = val_data
    folder = _folder_with(tmp_path, model_path, n, int(true_bytes * 1.05))
    res = {r.id: r for r in verify_folder(folder, Options(data=data))}["tokenizer"]
    assert res.status == "FAIL"
    assert f"recounted {true_bytes} bytes" in res.summary and "+5.0" in res.summary
    assert "train_seed314.log:" in " ".join(f.text for f in res.findings)


def test_bytes_implied_by_val_loss_and_val_bpb(tmp_path, sp_model, val_data):
    """Conventional logs have no byte count: tokens * val_loss / ln 2 / val_bpb stands for it."""
    model_path, _ = sp_model
    data, n, true_bytes = val_data
    folder = make_record(tmp_path, fmt="conventional", seeds=(42,))
    (folder / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    log = folder / "train_seed42.log"
    bpb = n * 2.5 / math.log(2) / true_bytes
    log.write_text(
        f"seed:42\nval_tokens: {n}\nstep:1/10 train_loss:5.0 train_time:1ms step_avg:1ms\n"
        f"quantized_sliding_window val_loss:2.50000000 val_bpb:{bpb:.8f} eval_time:10ms\n"
    )
    res = {r.id: r for r in verify_folder(folder, Options(data=data))}["tokenizer"]
    assert res.status == "PASS", res.summary
    assert f"{n} tokens x val_loss 2.5" in res.summary


def test_shards_of_another_tokenizer_fail(tmp_path, sp_model):
    model_path, _ = sp_model
    d = tmp_path / "data"
    d.mkdir()
    write_shard(d / "fineweb_val_000000.bin", np.array([1, 5, 9000, 7], dtype=np.uint16))
    folder = _folder_with(tmp_path, model_path, 3, 10)
    res = {r.id: r for r in verify_folder(folder, Options(data=str(d)))}["tokenizer"]
    _, sp = sp_model
    assert res.status == "FAIL" and f"past the tokenizer's vocabulary {sp.vocab_size()}" in res.summary


# ---------------------------------------------------------------------------- static byte accounting

def _tok(root, case: str):
    return next(r for r in verify_folder(build_case(root, case)) if r.id == "tokenizer")


def test_marker_pieces_counted_as_text_warn(tmp_path):
    res = _tok(tmp_path, "tok_markers_counted")
    warn = [f.text for f in res.findings if f.status == "WARN"]
    assert res.status == "WARN" and warn[0].startswith("[bytes] custom_caps.model: 2 user-defined piece(s)")
    assert "no byte sidecar" in warn[0]


def test_marker_pieces_with_original_byte_sidecars_pass(tmp_path):
    res = _tok(tmp_path, "tok_markers_sidecar")
    assert res.status != "WARN", [f.text for f in res.findings]
    assert any(
        "per-token sidecars (fineweb_val_bytes)" in f.text and f.status == "PASS" for f in res.findings
    )


def test_a_shipped_byte_table_is_compared_with_the_pieces(tmp_path):
    res = _tok(tmp_path, "tok_npz_table")
    warn = [f.text for f in res.findings if f.status == "WARN"]
    assert any(
        "byte_table.npz:base_bytes counts more bytes than the text of 1 piece" in w and "'ly': 6 > 2" in w
        for w in warn
    ), warn


def test_a_byte_table_written_into_the_code_warns(tmp_path):
    res = _tok(tmp_path, "tok_code_table")
    assert any(
        f.text.startswith("[bytes] train_gpt.py:")
        and "hard-coded byte table BASE_BYTES (260 entries)" in f.text
        for f in res.findings
        if f.status == "WARN"
    ), [f.text for f in res.findings]
