"""pgolf data offline: embedded corpus, tokenizer training, shard writing, --from-text, errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.cli import main as cli
from pgolf.corpus import default_documents, pydoc_topic_documents, text_file_documents
from pgolf.dataset import build_dataset, split_documents
from pgolf.errors import PgolfError
from pgolf.shards import encode_documents, write_shard
from pgolf.tokenizer import BOS_ID, train_tokenizer, train_tokenizer_bytes
from trainer.data import SHARD_MAGIC, load_shard, read_shard_header

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def topics() -> list[str]:
    return pydoc_topic_documents()


@pytest.fixture(scope="module")
def text_files(tmp_path_factory, topics) -> list[str]:
    """Two UTF-8 text files of real English (the manual's topics), paragraphs separated by blank lines."""
    d = tmp_path_factory.mktemp("text")
    half = len(topics) // 2
    paths = []
    for i, docs in enumerate((topics[:half], topics[half:])):
        p = d / f"part{i}.txt"
        p.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        paths.append(str(p))
    return paths


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_embedded_corpus_is_deterministic_and_real_english():
    a, b = default_documents(), default_documents()
    assert a == b
    text = "\n".join(a)
    assert len(a) > 300 and len(text) > 1_000_000
    words = text.lower().split()
    # real prose: the commonest English words are frequent, and the manual's own sentences are there
    assert words.count("the") / len(words) > 0.03
    assert any("statement is used for conditional execution" in d for d in a)
    assert all(len(d) >= 200 and d == d.strip() for d in a)


def test_tokenizer_trains_with_official_settings_and_round_trips(tmp_path, topics):
    model = train_tokenizer(topics, 512, tmp_path / "t.model")
    sp = spm.SentencePieceProcessor(model_file=model)
    assert sp.get_piece_size() == 512
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.id_to_piece(4) == "<0x00>"  # byte fallback pieces follow the specials
    for s in ["The if statement is used for conditional execution.", "x = 12345 + 6789",
              "naïve café 漢字 ✓ emoji 🐍"]:  # unseen characters go through byte fallback, never <unk>
        ids = sp.encode(s)
        assert sp.unk_id() not in ids
        assert sp.decode(ids) == s
    assert sp.encode("12", out_type=str) == ["1", "2"]  # split_digits
    assert not sp.encode("word", out_type=str)[0].startswith("▁")  # no dummy prefix
    # deterministic: the same text gives a byte-identical model
    assert train_tokenizer_bytes(topics, 512) == Path(model).read_bytes()


def test_shards_readable_by_trainer_and_byte_identical(tmp_path, topics):
    a = build_dataset(topics, tmp_path / "a", 512, val_fraction=0.2, shard_tokens=50_000)
    b = build_dataset(topics, tmp_path / "b", 512, val_fraction=0.2, shard_tokens=50_000)
    assert len(a.train_shards) > 1 and len(a.val_shards) == 1
    for pa, pb in zip(a.train_shards + a.val_shards + [a.tokenizer_path],
                      b.train_shards + b.val_shards + [b.tokenizer_path]):
        assert Path(pa).read_bytes() == Path(pb).read_bytes(), pa
    train = np.concatenate([load_shard(p) for p in a.train_shards])
    val = np.concatenate([load_shard(p) for p in a.val_shards])
    assert train.dtype == np.uint16 and train.size == a.train_tokens and val.size == a.val_tokens
    assert all(read_shard_header(p) <= 50_000 for p in a.train_shards)
    raw = np.fromfile(a.val_shards[0], dtype="<i4", count=3)
    assert list(raw) == [SHARD_MAGIC, 1, a.val_tokens]
    # documents are separated by BOS, each one preceded by it, as in the challenge's val shards
    train_docs, val_docs = split_documents(topics, 0.2)
    assert val[0] == BOS_ID and int((val == BOS_ID).sum()) == len(val_docs) == a.val_docs
    assert int((train == BOS_ID).sum()) == len(train_docs)
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer_path)
    first_doc = val[1:np.flatnonzero(val == BOS_ID)[1]].tolist()
    assert sp.decode(first_doc) == sp.decode(sp.encode(val_docs[0]))
    assert int(train.max()) < 512


def test_from_text_cli_builds_the_official_layout(tmp_path, capsys, text_files):
    out = tmp_path / "data"
    rc, stdout, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", str(out),
                              "--vocab-size", "400")
    assert rc == 0, err
    ds = out / "datasets" / "fineweb10B_sp400"
    assert sorted(p.name for p in ds.iterdir()) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin",
                                                    "info.json"]
    tok = out / "tokenizers" / "text_400_bpe.model"
    assert tok.is_file()
    assert f"DATA_PATH={ds}" in stdout and f"TOKENIZER_PATH={tok}" in stdout and "VOCAB_SIZE=400" in stdout
    # the documents are the files' paragraphs, in order: the val split decodes back to them
    docs = text_file_documents(text_files)
    _, val_docs = split_documents(docs, 0.1)
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    val = load_shard(str(ds / "fineweb_val_000000.bin"))
    starts = list(np.flatnonzero(val == BOS_ID)) + [val.size]
    decoded = [sp.decode(val[s + 1:e].tolist()) for s, e in zip(starts, starts[1:])]
    assert decoded == [sp.decode(sp.encode(d)) for d in val_docs]
    # same input, same bytes; an existing dataset is kept unless --force
    before = {p.name: sha(p) for p in ds.iterdir()}
    rc, _, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", str(out), "--vocab-size", "400")
    assert rc == 1 and err.count("\n") == 1 and "already exists; pass --force" in err
    rc, _, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", str(out), "--vocab-size", "400",
                         "--force")
    assert rc == 0, err
    assert {p.name: sha(p) for p in ds.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["datasets", "tokenizers"]  # no staging left


def test_wrong_vocab_size_is_one_clear_line(tmp_path, capsys, text_files, topics):
    model = train_tokenizer(topics, 400, tmp_path / "t400.model")
    rc, _, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", str(tmp_path / "d"),
                         "--tokenizer", model, "--vocab-size", "512")
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {model}: tokenizer has 400 pieces but vocab size 512")
    rc, _, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", str(tmp_path / "d"),
                         "--vocab-size", "70000")
    assert rc == 1 and "does not fit the shard format (uint16 token ids: 1..65536)" in err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    # ids beyond the declared vocabulary are refused, never silently written
    sp = spm.SentencePieceProcessor(model_file=model)
    with pytest.raises(PgolfError, match=r"token id \d+ >= vocab size 300"):
        encode_documents(sp, topics[:5], 300, model)
    with pytest.raises(PgolfError, match="cannot be stored as uint16"):
        write_shard(tmp_path / "x.bin", np.array([1, 70000]))
    assert not (tmp_path / "x.bin").exists()
    # a text too small for the vocabulary is caught, not written with fewer pieces
    small = tmp_path / "small.txt"
    small.write_text("one tiny paragraph.\n\nand another one.\n")
    rc, _, err = run_cli(capsys, "data", "--from-text", str(small), "--out", str(tmp_path / "d2"),
                         "--split", "lines", "--vocab-size", "4000")
    assert rc == 1 and err.count("\n") == 1
    assert "pieces, fewer than vocab size 4000; use more text or a smaller --vocab-size" in err
    rc, _, err = run_cli(capsys, "data", "--from-text", *text_files, "--out", str(tmp_path / "d2"),
                         "--vocab-size", "300")
    assert rc == 1 and err.count("\n") == 1 and "vocab size 300 is too small" in err


def test_bad_text_input_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    rc, _, err = run_cli(capsys, "data", "--from-text", str(missing), "--out", str(tmp_path / "d"))
    assert rc == 1 and err == f"error: {missing}: No such file or directory\n"
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    rc, _, err = run_cli(capsys, "data", "--from-text", str(binary), "--out", str(tmp_path / "d"))
    assert rc == 1 and err.startswith(f"error: {binary}: not UTF-8")


def _userns_tmpfs_available() -> bool:
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _userns_tmpfs_available(),
                    reason="needs a user+mount namespace to mount a tiny tmpfs (unshare -r -m)")
def test_full_disk_is_one_line_and_keeps_the_old_dataset(tmp_path, text_files):
    """A real full disk: a 600 KiB tmpfs. A first small dataset fits; replacing it with the embedded
    corpus (about 1.4 MB of shards) runs out of space: one error line, the old dataset intact."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = mnt / "data"
    ds = out / "datasets" / "fineweb10B_sp512"
    py = [sys.executable, "-m", "pgolf", "data"]
    script = f"""
set -u
mount -t tmpfs -o size=600k tmpfs {mnt}
{' '.join(py)} --from-text {text_files[0]} --out {out} --vocab-size 512 >/dev/null || exit 90
sha256sum {ds}/* > {tmp_path}/before.txt
{' '.join(py)} --embedded --out {out} --vocab-size 512 --force 2> {tmp_path}/err.txt
echo $? > {tmp_path}/rc.txt
sha256sum {ds}/* > {tmp_path}/after.txt
find {out} -name '*.tmp' -o -name '.*staging*' > {tmp_path}/leftovers.txt
"""
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    err = (tmp_path / "err.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "1"
    assert err.count("\n") == 1 and err.startswith("error: ") and "no space left on device" in err
    assert (tmp_path / "before.txt").read_text() == (tmp_path / "after.txt").read_text()
    assert (tmp_path / "leftovers.txt").read_text() == ""
