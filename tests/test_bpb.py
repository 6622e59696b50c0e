"""Bytes per token: the lookup tables against decoding the token stream and counting UTF-8 bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_eval import VOCAB, make_sp, stdlib_documents, val_stream

from trainer.bpb import ByteCounter, decoded_text_bytes

EDGE_DOCS = [
    "日本語のテキストと中文，한국어도 있습니다。",  # CJK: byte fallback
    "emoji 😀🎉👩‍👩‍👧 mixed with text",  # 4-byte characters and ZWJ sequences
    "   leading spaces,\ttabs\n\nand   newlines   ",  # whitespace that the normalizer collapses
    "",  # empty document
    " ",  # whitespace only: no tokens at all
    "😀 starts with an emoji",
    "ﬁnal ligature, full-width ＡＢＣ１２３, Ⅻ, e\u0301 combining",  # NFKC changes these
    "digits 1234567890 and 3.14159",
    "a literal \u2581 marker and \u2581\u2581 two",
    "x",
    "\u00e9\u00e8\u00ea accents \u00df \u00f8 \u0142",
]


@pytest.fixture(scope="module")
def sp():
    return make_sp()


@pytest.fixture(scope="module")
def counter(sp):
    return ByteCounter(sp, VOCAB)


def _truth(sp, docs) -> int:
    """Independent ground truth: decode each document alone, count its UTF-8 bytes."""
    return sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)


def test_official_settings_shape(sp):
    assert sp.bos_id() == 1 and sp.is_control(1) and sp.is_byte(4) and sp.id_to_piece(4) == "<0x00>"


def test_real_text_total_matches_decoding(sp, counter):
    docs = stdlib_documents()
    ids = val_stream(sp, docs)
    truth = _truth(sp, docs)
    assert truth > 400_000  # real text, not a toy
    assert counter.stream_bytes(ids) == truth
    assert decoded_text_bytes(sp, ids) == truth
    t = torch.tensor(ids)
    # the evaluation's view: every token after the first is a target with its predecessor
    assert int(counter.token_bytes(t[:-1], t[1:]).sum()) == truth


def test_per_document_and_prefix_sums(sp, counter):
    """Each document alone, and every BOS-aligned prefix of the stream, count exactly."""
    docs = stdlib_documents()[:12] + EDGE_DOCS
    ids, running = [], 0
    for d in docs:
        ids += [sp.bos_id()] + sp.encode(d)
        running += _truth(sp, [d])
        assert counter.stream_bytes(ids) == running, d[:40]
        assert counter.stream_bytes([sp.bos_id()] + sp.encode(d)) == _truth(sp, [d]), d[:40]


@pytest.mark.parametrize("doc", EDGE_DOCS)
def test_edge_cases(sp, counter, doc):
    ids = [sp.bos_id()] + sp.encode(doc) + [sp.bos_id()] + sp.encode(doc)
    assert counter.stream_bytes(ids) == 2 * _truth(sp, [doc])
    assert decoded_text_bytes(sp, ids) == 2 * _truth(sp, [doc])


def test_byte_fallback_is_used_and_counts_one(sp, counter):
    ids = sp.encode("日本😀")
    assert all(sp.is_byte(i) or sp.id_to_piece(i) == "\u2581" for i in ids)
    assert counter.stream_bytes(ids) == len("日本😀".encode()) == 10
    byte_ids = [i for i in range(VOCAB) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(int(counter.base_bytes[i]) == 1 for i in byte_ids)


def test_leading_space_depends_on_predecessor(sp, counter):
    the = sp.piece_to_id("\u2581the")
    assert the != sp.unk_id()
    word = sp.encode("word")[-1]
    prev = torch.tensor([sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id(), word, 4])
    got = counter.token_bytes(prev, torch.full_like(prev, the)).tolist()
    assert got == [3, 3, 3, 3, 4, 4]  # after a boundary the space is the decoder's to drop


def test_control_and_padding_ids_count_zero(sp):
    counter = ByteCounter(sp, VOCAB + 64)  # model vocabulary padded past the tokenizer's
    assert counter.vocab_size == VOCAB + 64
    for i in (sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id(), VOCAB, VOCAB + 63):
        assert int(counter.base_bytes[i]) == 0 and bool(counter.is_boundary[i])
    assert counter.stream_bytes([]) == 0
    assert counter.stream_bytes([sp.bos_id(), sp.bos_id(), sp.eos_id()]) == 0
    # EOS closes a document like BOS opens one
    ids = [sp.bos_id()] + sp.encode("one doc") + [sp.eos_id()] + sp.encode("two docs")
    assert counter.stream_bytes(ids) == decoded_text_bytes(sp, ids) == len("one doctwo docs")


def test_matches_the_challenge_lookup_rule(sp, counter):
    """The challenge's rule, written out independently: base bytes without the marker, +1 for
    the marker unless the previous token is control/unknown/unused."""
    for i in range(VOCAB):
        piece = sp.id_to_piece(i)
        special = sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
        if special:
            want = 0
        elif sp.is_byte(i):
            want = 1
        else:
            want = len(piece.removeprefix("\u2581").encode("utf-8"))
        assert int(counter.base_bytes[i]) == want, piece
        assert bool(counter.has_space[i]) == (not special and piece.startswith("\u2581")), piece
        assert bool(counter.is_boundary[i]) == special, piece


def test_token_bytes_shapes_dtypes_and_inputs(sp, counter):
    ids = torch.tensor(val_stream(sp, stdlib_documents()[:3]))
    n = (ids.numel() - 1) // 8 * 8
    prev, tgt = ids[:n].view(8, -1), ids[1:n + 1].view(8, -1)
    out = counter.token_bytes(prev, tgt)
    assert out.shape == tgt.shape and out.dtype == torch.int32 and out.device == tgt.device
    assert int(out.sum()) == int(counter.token_bytes(ids[:n], ids[1:n + 1]).sum())
    assert counter.token_bytes(prev.int(), tgt.to(torch.int32)).equal(out)
    # numpy / list inputs to the whole-stream count
    assert counter.stream_bytes(ids.numpy().astype(np.uint16)) == counter.stream_bytes(ids.tolist())
    with pytest.raises(ValueError, match="outside"):
        counter.stream_bytes([1, VOCAB + 5])
