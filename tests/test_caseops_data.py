"""pgolf data for CaseOps: ``--from-text/--embedded --caseops`` offline, and ``--variant sp8192_caseops``
against a local HTTP server on 127.0.0.1 that mimics the Hugging Face Hub (tests/test_pgolf_download.py):
the record's prepared shards (``--prebuilt``) and shards built here from the challenge's raw
documents (``docs_selected.jsonl``)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from conftest_caseops import EDGE_DOCS, caseops_model_proto, topic_documents
from conftest_eval import sp_model_proto
from test_pgolf_download import REPO_ID, Hub, HubHandler

from pgolf.caseops import OPERATORS, decode_caseops, encode_caseops
from pgolf.cli import main as cli
from pgolf.corpus import text_file_documents
from pgolf.dataset import split_documents
from pgolf.download import PINNED_SHA256
from pgolf.reproduce_cmd import val_only_dir
from pgolf.shards import write_shard
from trainer.bpb import ByteCounter, position_bytes
from trainer.data import load_shard

CASEOPS_DS = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_TOK = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def docs_of(stream: np.ndarray, bos: int) -> list[np.ndarray]:
    starts = list(np.flatnonzero(stream == bos)) + [stream.size]
    return [stream[s + 1:e] for s, e in zip(starts, starts[1:])]


def check_sidecars(ds: Path, sp) -> int:
    """Every val shard has its sidecar of the same length; over the whole val stream (a document
    may span two shards) the sidecar is the byte tables' count, i.e. the decoded original text."""
    shards = sorted(p for p in ds.glob("fineweb_val_*.bin") if "bytes" not in p.name)
    assert shards
    toks, side = [], []
    for shard in shards:
        toks.append(load_shard(str(shard)))
        side.append(load_shard(str(ds / shard.name.replace("fineweb_val_", "fineweb_val_bytes_"))))
        assert toks[-1].size == side[-1].size
    stream = torch.from_numpy(np.concatenate(toks).astype(np.int64))
    want = position_bytes(ByteCounter(sp, sp.vocab_size()), stream).numpy()
    assert np.array_equal(np.concatenate(side), want)
    return int(want.sum())


# --- offline ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("text")
    p = d / "topics.txt"
    p.write_text("\n\n".join(list(topic_documents()) + EDGE_DOCS) + "\n", encoding="utf-8")
    return [str(p)]


def test_from_text_caseops_writes_the_record_layout(tmp_path, capsys, text_files):
    out = tmp_path / "data"
    rc, stdout, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", out, "--vocab-size", 600,
                              "--caseops")
    assert rc == 0, err
    ds = out / "datasets" / "fineweb10B_sp600_lossless_caps_caseops_v1_reserved"
    tok = out / "tokenizers" / "text_600_bpe_lossless_caps_caseops_v1_reserved.model"
    assert sorted(p.name for p in ds.iterdir()) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin",
                                                    "fineweb_val_bytes_000000.bin", "info.json"]
    assert f"DATA_PATH={ds} TOKENIZER_PATH={tok} VOCAB_SIZE=600" in stdout
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(OPERATORS)
    info = json.loads((ds / "info.json").read_text())
    assert info["text_transform"] == "lossless_caps_caseops_v1"
    assert "fineweb_val_bytes_000000.bin" in info["sha256"]
    # the val split decodes, through the inverse transform, to the documents (as normalized)
    _, val_docs = split_documents(text_file_documents(text_files), 0.1)
    val = load_shard(str(ds / "fineweb_val_000000.bin"))
    decoded = [decode_caseops(sp.decode(d.tolist())) for d in docs_of(val, sp.bos_id())]
    assert decoded == [decode_caseops(sp.decode(sp.encode(encode_caseops(d)))) for d in val_docs]
    assert any(any(c.isupper() for c in d) for d in decoded)
    total = check_sidecars(ds, sp)
    assert total == info["val_bytes"] == sum(len(d.encode()) for d in decoded)
    assert f"{total:,} bytes of original text" in stdout
    # no capital letter reaches the tokens
    train = load_shard(str(ds / "fineweb_train_000000.bin"))
    assert not any(c.isupper() and c.isascii() for c in sp.decode(train[:20000].tolist()))


def test_tokenizer_kind_must_match(tmp_path, capsys, text_files):
    plain, case = tmp_path / "plain.model", tmp_path / "case.model"
    plain.write_bytes(sp_model_proto())
    case.write_bytes(caseops_model_proto())
    build = ["data", "--from-text", *text_files, "--out", tmp_path / "d", "--vocab-size", 768]
    rc, _, err = run_cli(capsys, *build, "--tokenizer", plain, "--caseops")
    assert rc == 1 and err == f"error: {plain}: not a CaseOps tokenizer (it lacks the operators " \
                              "U+E001-U+E004 as pieces of their own)\n"
    rc, _, err = run_cli(capsys, *build, "--tokenizer", case)
    assert rc == 1 and err == f"error: {case}: a CaseOps tokenizer: pass --caseops to build CaseOps data " \
                              "with it\n"
    rc, _, err = run_cli(capsys, "data", "--variant", "sp8192", "--caseops", "--out", tmp_path / "d")
    assert rc == 1 and "--caseops goes with --from-text or --embedded" in err
    assert not (tmp_path / "d").exists()
    # with a given CaseOps tokenizer the build works and copies it under its own name
    rc, stdout, err = run_cli(capsys, *build, "--tokenizer", case, "--caseops")
    assert rc == 0, err
    assert (tmp_path / "d" / "tokenizers" / "case.model").read_bytes() == case.read_bytes()


def test_reproduce_links_the_sidecars_into_the_val_only_folder(tmp_path):
    ds = tmp_path / "ds"
    for name in ("fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"):
        write_shard(ds / name, np.arange(10, dtype=np.uint16))
    linked = Path(val_only_dir(str(ds), str(tmp_path / "work")))
    assert sorted(p.name for p in linked.iterdir()) == ["fineweb_val_000000.bin",
                                                        "fineweb_val_bytes_000000.bin"]


# --- download routes against a local fake Hub ---------------------------------------------------

@pytest.fixture
def hub(tmp_path):
    root = tmp_path / "remote" / "datasets"
    root.mkdir(parents=True)
    h = Hub(root.parent)
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.hub = h
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    h.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    h.prefix_root = root
    yield h
    server.shutdown()
    server.server_close()


def dl(capsys, hub, out, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "data", "--variant", "sp8192_caseops", "--repo", REPO_ID, "--endpoint",
                   hub.endpoint, "--out", out, "--no-progress", *extra)


def test_prebuilt_download_fetches_the_sidecars_and_pins_the_tokenizer(tmp_path, capsys, hub):
    root = hub.prefix_root
    ds = root / "datasets" / CASEOPS_DS
    rng = np.random.default_rng(1)
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "fineweb_train_000000.bin",
                 "fineweb_train_000001.bin"):
        write_shard(ds / name, rng.integers(0, 8192, 3000).astype(np.uint16))
    (root / "tokenizers").mkdir()
    (root / "tokenizers" / CASEOPS_TOK).write_bytes(b"not the record's tokenizer")
    tok_name = "sp_bpe_8192_lossless_caps_caseops_v1_reserved"
    manifest = {"datasets": [{"name": CASEOPS_DS, "tokenizer_name": tok_name,
                              "val_bytes_glob": f"datasets/{CASEOPS_DS}/fineweb_val_bytes_*.bin",
                              "stats": {"files_train": 2, "files_val": 1}}],
                "tokenizers": [{"name": tok_name, "model_path": f"tokenizers/{CASEOPS_TOK}"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "data"
    # the tokenizer is checked against the record's sha256: a different file is refused and removed
    rc, _, err = dl(capsys, hub, out, "--prebuilt", "--train-shards", 1)
    assert rc == 1 and err.count("\n") == 1
    assert f"{CASEOPS_TOK}: sha256 mismatch (expected {PINNED_SHA256['tokenizers/' + CASEOPS_TOK]}" in err
    assert not (out / "tokenizers" / CASEOPS_TOK).exists()
    # a checksums file wins over the pin (a mirror with another tokenizer, say)
    sums = tmp_path / "sums.txt"
    fake = hashlib.sha256((root / "tokenizers" / CASEOPS_TOK).read_bytes()).hexdigest()
    sums.write_text(f"{fake}  tokenizers/{CASEOPS_TOK}\n")
    rc, stdout, err = dl(capsys, hub, out, "--prebuilt", "--train-shards", 1, "--checksums", sums)
    assert rc == 0, err
    got = sorted(p.name for p in (out / "datasets" / CASEOPS_DS).iterdir())
    assert got == ["fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    for name in got:
        assert (out / "datasets" / CASEOPS_DS / name).read_bytes() == (ds / name).read_bytes()
    assert f"DATA_PATH={out}/datasets/{CASEOPS_DS} TOKENIZER_PATH={out}/tokenizers/{CASEOPS_TOK} " \
           "VOCAB_SIZE=8192" in stdout


def _serve_docs(hub, docs: list[str], docs_val: int | None) -> None:
    root = hub.prefix_root
    (root / "docs_selected.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs),
                                              encoding="utf-8")
    if docs_val is not None:
        (root / "docs_selected.source_manifest.json").write_text(json.dumps({"num_docs": len(docs),
                                                                              "docs_val": docs_val}))


def test_caseops_shards_built_from_the_raw_documents(tmp_path, capsys, hub):
    docs = EDGE_DOCS + list(topic_documents())[:70]
    _serve_docs(hub, docs, docs_val=12)
    tok = tmp_path / "case.model"
    tok.write_bytes(caseops_model_proto())
    out = tmp_path / "data"
    rc, stdout, err = dl(capsys, hub, out, "--tokenizer", tok, "--train-shards", 2, "--shard-tokens", 4000,
                         "--workers", 2)
    assert rc == 0, err
    ds = out / "datasets" / "fineweb10B_sp768_lossless_caps_caseops_v1_reserved"
    assert (out / "docs_selected.jsonl").is_file() and (out / "tokenizers" / "case.model").is_file()
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    # the first docs_val documents are the val split, decoded back through the inverse transform
    val = np.concatenate([load_shard(str(p)) for p in sorted(ds.glob("fineweb_val_0*.bin"))])
    decoded = [decode_caseops(sp.decode(d.tolist())) for d in docs_of(val, sp.bos_id())]
    assert decoded == [decode_caseops(sp.decode(sp.encode(encode_caseops(d)))) for d in docs[:12]]
    assert decoded[0] == "The NASA Launch"
    total = check_sidecars(ds, sp)
    info = json.loads((ds / "info.json").read_text())
    assert total == info["val_bytes"] == sum(len(d.encode()) for d in decoded)
    assert info["val_docs"] == 12 and info["text_transform"] == "lossless_caps_caseops_v1"
    # exactly --train-shards full train shards, the documents in order from the 13th on
    train = sorted(ds.glob("fineweb_train_*.bin"))
    assert [p.name for p in train] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    stream = np.concatenate([load_shard(str(p)) for p in train])
    assert stream.size == 8000 and stream[0] == sp.bos_id()
    first = docs_of(stream, sp.bos_id())[0]
    want = decode_caseops(sp.decode(sp.encode(encode_caseops(docs[12]))))
    assert decode_caseops(sp.decode(first.tolist())) == want
    assert f"DATA_PATH={ds}" in stdout and "VOCAB_SIZE=768" in stdout
    # every document when the train shards are not enough: a shorter last shard, one process
    rc, _, err = dl(capsys, hub, out, "--tokenizer", tok, "--train-shards", 1000, "--shard-tokens", 4000,
                    "--workers", 1, "--force")
    assert rc == 0, err
    stream = np.concatenate([load_shard(str(p)) for p in sorted(ds.glob("fineweb_train_*.bin"))])
    assert int((stream == sp.bos_id()).sum()) == len(docs) - 12 and stream.size % 4000 != 0
    # an existing dataset is kept without --force
    rc, _, err = dl(capsys, hub, out, "--tokenizer", tok, "--train-shards", 1)
    assert rc == 1 and "already exists; pass --force" in err


def test_raw_documents_route_errors(tmp_path, capsys, hub):
    tok = tmp_path / "case.model"
    tok.write_bytes(caseops_model_proto())
    # without --tokenizer the record's is downloaded and pinned: the fake Hub has none
    _serve_docs(hub, ["Some Text", "More Text"], docs_val=None)
    rc, _, err = dl(capsys, hub, tmp_path / "d0", "--tokenizer-repo", REPO_ID)
    assert rc == 1 and f"tokenizers/{CASEOPS_TOK}: not found (HTTP 404)" in err
    # no metadata: 50,000 val docs assumed, more than the file has
    rc, _, err = dl(capsys, hub, tmp_path / "d1", "--tokenizer", tok)
    assert rc == 1 and err.count("\n") == 1
    assert "2 documents, fewer than the 50000 validation documents" in err
    assert not (tmp_path / "d1" / "datasets" / "fineweb10B_sp768_lossless_caps_caseops_v1_reserved").exists()
    # a bad line names the file and the line
    (hub.prefix_root / "docs_selected.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    rc, _, err = dl(capsys, hub, tmp_path / "d2", "--tokenizer", tok, "--val-docs", 1)
    assert rc == 1 and err.strip().endswith('docs_selected.jsonl:2: expected an object with a "text" string')
    # a plain tokenizer is refused before anything is built
    plain = tmp_path / "plain.model"
    plain.write_bytes(sp_model_proto())
    rc, _, err = dl(capsys, hub, tmp_path / "d3", "--tokenizer", plain, "--val-docs", 1)
    assert rc == 1 and "not a CaseOps tokenizer" in err
