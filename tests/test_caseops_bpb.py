"""Bytes per token with CaseOps: the byte tables and the val byte sidecars count the ORIGINAL text
(decode the tokens, undo the transform, count UTF-8 bytes), on real text, on the demo corpus through
the evaluators, and against the record's sidecar values; build_val_bytes picks and checks the
sidecar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_caseops import (
    EDGE_DOCS,
    caseops_sp,
    caseops_stream,
    lossless_caseops_sp,
    record_tokenizer_path,
    reference_caps,
    topic_documents,
)
from conftest_eval import TinyCausalLM, cpu_dist, eval_hparams, make_sp
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.caseops import OPERATORS, decode_caseops, encode_caseops
from pgolf.corpus import default_documents
from pgolf.dataset import build_dataset, split_documents
from pgolf.shards import write_shard
from trainer.bpb import ByteCounter, build_val_bytes, load_val_byte_sidecar, position_bytes
from trainer.config import Hyperparameters
from trainer.data import ShardError, load_shard, load_validation_tokens
from trainer.evaluate import eval_plain, eval_sliding

TITLE, ALLCAPS, CAPNEXT, ESC = OPERATORS


def original_bytes(sp, ids) -> int:
    """Ground truth: decode, undo the transform, count UTF-8 bytes."""
    return len(decode_caseops(sp.decode(list(ids))).encode("utf-8"))


def doc_bytes(counter, sp, doc: str) -> int:
    ids = torch.tensor([sp.bos_id()] + sp.encode(encode_caseops(doc)))
    return int(position_bytes(counter, ids).sum())


def test_the_counter_knows_a_caseops_tokenizer():
    sp = caseops_sp()
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(OPERATORS)  # reserved right after specials
    c = ByteCounter(sp, sp.vocab_size())
    assert c.caseops and c.esc_id == 7
    assert c.base_bytes[4:8].tolist() == [0, 0, 0, 0] and c.literal_bytes[4:8].tolist() == [3, 3, 3, 3]
    assert not c.is_boundary[4:8].any()
    plain = ByteCounter(make_sp(), 768)
    assert not plain.caseops and plain.esc_id == -1 and int(plain.literal_bytes.sum()) == 0


def test_every_document_counts_its_decoded_original_bytes():
    sp = caseops_sp()
    c = ByteCounter(sp, sp.vocab_size())
    docs = list(topic_documents()) + EDGE_DOCS
    total = 0
    for d in docs:
        ids = [sp.bos_id()] + sp.encode(encode_caseops(d))
        want = original_bytes(sp, ids[1:])
        assert int(position_bytes(c, torch.tensor(ids)).sum()) == want, d[:50]
        assert c.stream_bytes(ids) == want
        total += want
    stream = torch.tensor(caseops_stream(sp, docs))
    assert int(position_bytes(c, stream).sum()) == total > 400_000
    # without any escaped operator, the pairwise rule alone is already exact
    plain_docs = torch.tensor(caseops_stream(sp, topic_documents()))
    pairwise = int(c.token_bytes(plain_docs[:-1], plain_docs[1:]).sum())
    assert pairwise == int(position_bytes(c, plain_docs).sum())


def test_escaped_operators_and_esc_runs():
    sp = caseops_sp()
    c = ByteCounter(sp, sp.vocab_size())
    a = sp.piece_to_id("a")
    bos, ti, ac, cn, es = sp.bos_id(), *[sp.piece_to_id(o) for o in OPERATORS]
    ids = [bos, es, ti, ti, a, es, es, es, es, a, es, es, es, cn, cn, a, es, bos, es, ac, a]
    want = [0, 0, 3, 0, 1, 0, 3, 0, 3, 1, 0, 3, 0, 3, 0, 1, 0, 0, 0, 3, 1]
    assert position_bytes(c, torch.tensor(ids)).tolist() == want
    text = f"{TITLE}{ESC}{ESC}{ESC}{ESC}x{ESC}{ESC}{ESC}{CAPNEXT}Ab{ESC}"
    ids = [bos] + sp.encode(encode_caseops(text))
    got = int(position_bytes(c, torch.tensor(ids)).sum())
    assert got == len(text.encode()) == original_bytes(sp, ids[1:])


no_surrogates = st.characters(exclude_categories=["Cs"], exclude_characters="\u2581")  # ▁ decodes as " "
edgy = st.text(st.sampled_from(list("aAzZ .,\n\t1é😀") + list(OPERATORS)), max_size=30)
docs_strategy = st.lists(st.one_of(edgy, st.text(no_surrogates, max_size=30)), max_size=4).map("".join)


@settings(max_examples=300, deadline=None)
@given(docs_strategy)
def test_lossless_tokenizer_counts_exactly_the_original_document(doc):
    """With a normalizer that changes nothing, the count is the document's own UTF-8 length
    (a leading space is the one exception: the challenge's rule never counts it, and the official
    normalizer removes it)."""
    doc = doc.lstrip(" ")
    sp = lossless_caseops_sp()
    c = ByteCounter(sp, sp.vocab_size())
    assert sp.decode(sp.encode(encode_caseops(doc))) == encode_caseops(doc)
    assert doc_bytes(c, sp, doc) == len(doc.encode("utf-8"))


def test_lossless_tokenizer_on_real_text():
    sp = lossless_caseops_sp()
    c = ByteCounter(sp, sp.vocab_size())
    for d in list(topic_documents())[:80] + EDGE_DOCS:
        d = d.lstrip(" ")
        assert doc_bytes(c, sp, d) == len(d.encode("utf-8")), d[:40]


def test_same_totals_as_the_record_sidecar_where_the_normalizer_changes_nothing():
    """The record's exporter credits each piece with the original bytes of its surface; where the
    tokenizer's normalizer leaves the text unchanged (single spaces, no NFKC change) the two
    definitions agree per document, and per piece except inside byte-fallback sequences."""
    ref = reference_caps()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(record_tokenizer_path()))
    c = ByteCounter(sp, sp.vocab_size())
    checked = 0
    for d in list(topic_documents()) + EDGE_DOCS:
        d = " ".join(d.split())
        t = encode_caseops(d)
        r = sp.encode(t, return_type="offset_mapping")
        if sp.decode(r["ids"]) != t:
            continue  # NFKC changed something: the record counts pre-normalization bytes there
        theirs = ref.surface_piece_original_byte_counts([t[a:b] for a, b in r["offsets"]],
                                                        text_transform_name="lossless_caps_caseops_v1")
        ours = position_bytes(c, torch.tensor([sp.bos_id()] + r["ids"]))[1:].tolist()
        assert sum(ours) == sum(theirs) == len(d.encode()), d[:40]
        assert [o for o, i in zip(ours, r["ids"]) if not sp.is_byte(i)] == \
            [x for x, i in zip(theirs, r["ids"]) if not sp.is_byte(i)]
        checked += 1
    assert checked > 50


# --- the demo corpus through the data builder, the sidecar loader and the evaluators -------------

@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's data: the embedded corpus, CaseOps, vocab 1024, val in several shards."""
    root = tmp_path_factory.mktemp("demo_data")
    info = build_dataset(default_documents(), root, 1024, caseops=True, shard_tokens=20_000)
    return info


def _hparams(info, **over) -> Hyperparameters:
    h = Hyperparameters.from_env({"PRESET": "tiny"})
    h.data_path, h.tokenizer_path, h.vocab_size = info.dataset_dir, info.tokenizer_path, 1024
    for k, v in over.items():
        setattr(h, k, v)
    return h


def _pattern(info) -> str:
    return f"{info.dataset_dir}/fineweb_val_*.bin"


def test_demo_sidecar_is_the_decoded_original_text(demo_data):
    import sentencepiece as spm

    info = demo_data
    sp = spm.SentencePieceProcessor(model_file=info.tokenizer_path)
    assert len(info.val_shards) == len(info.val_byte_shards) > 1
    val = load_validation_tokens(_pattern(info))  # the sidecars, matched by the same glob, are left out
    assert val.numel() == info.val_tokens
    side = load_val_byte_sidecar(_pattern(info), val.numel())
    assert side.dtype == torch.int32 and side.numel() == val.numel() and int(side[0]) == 0
    assert side.equal(position_bytes(ByteCounter(sp, 1024), val))
    _, val_docs = split_documents(default_documents(), 0.1)
    assert int(side.sum()) == info.val_bytes == sum(len(d.encode()) for d in
                                                    (decode_caseops(sp.decode(sp.encode(encode_caseops(x))))
                                                     for x in val_docs))
    starts = list(np.flatnonzero(val.numpy() == sp.bos_id())) + [val.numel()]
    for s, e in zip(starts, starts[1:]):
        assert int(side[s:e].sum()) == original_bytes(sp, val[s + 1:e].tolist())


@pytest.mark.parametrize("phase", ["plain", "sliding"])
def test_evaluators_count_the_original_bytes(demo_data, phase):
    import sentencepiece as spm

    info = demo_data
    sp = spm.SentencePieceProcessor(model_file=info.tokenizer_path)
    n = 6001  # every target 1..n-1 is scored exactly once
    h = _hparams(info, val_max_tokens=n)
    val = load_validation_tokens(_pattern(info), n)
    vb = build_val_bytes(h, sp, val, _pattern(info))
    assert vb.numel() == n  # VAL_MAX_TOKENS cuts the sidecar like the tokens
    e = eval_hparams(vocab_size=1024, eval_seq_len=64, eval_stride=64 if phase == "plain" else 16)
    fn = eval_plain if phase == "plain" else eval_sliding
    res = fn(e, TinyCausalLM(vocab=1024), cpu_dist(), val, vb)
    # ground truth: the scored stream's documents decoded, the transform undone, bytes counted
    ids = val.tolist()
    cuts = [i for i, t in enumerate(ids) if t == sp.bos_id()] + [n]
    truth = sum(original_bytes(sp, ids[a + 1:b]) for a, b in zip(cuts, cuts[1:]))
    assert res.bytes == truth and res.tokens == n - 1
    assert res.val_bpb == pytest.approx(res.nll_sum / np.log(2) / truth, rel=1e-12)
    # the transformed text has more bytes (3 per operator): counting it would flatter the score
    transformed = sum(len(sp.decode(ids[a + 1:b]).encode()) for a, b in zip(cuts, cuts[1:]))
    assert transformed > truth * 1.02


def test_build_val_bytes_sources_and_errors(demo_data, tmp_path):
    import shutil

    import sentencepiece as spm

    info = demo_data
    sp = spm.SentencePieceProcessor(model_file=info.tokenizer_path)
    ds = tmp_path / "ds"
    shutil.copytree(info.dataset_dir, ds)
    pattern = f"{ds}/fineweb_val_*.bin"
    h = _hparams(info, data_path=str(ds))
    val = load_validation_tokens(pattern)
    assert build_val_bytes(h, sp, val, pattern).equal(position_bytes(ByteCounter(sp, 1024), val))
    # a sidecar shorter than its token shard: one line naming the file
    side1 = ds / "fineweb_val_bytes_000001.bin"
    write_shard(side1, load_shard(str(side1))[:-1])
    with pytest.raises(ShardError, match=r"fineweb_val_bytes_000001\.bin: \d+ byte counts but "
                                         r"fineweb_val_000001\.bin holds \d+ tokens"):
        build_val_bytes(h, sp, val, pattern)
    side1.unlink()
    with pytest.raises(ShardError, match=r"fineweb_val_bytes_000001\.bin: missing"):
        build_val_bytes(h, sp, val, pattern)
    # no sidecar at all with a CaseOps tokenizer: refused, never counted on the transformed text
    for p in ds.glob("fineweb_val_bytes_*.bin"):
        p.unlink()
    with pytest.raises(ValueError, match="a CaseOps tokenizer, but .* has no byte sidecar fineweb_val_bytes"):
        build_val_bytes(h, sp, val, pattern)
    # a plain tokenizer without sidecars: the tables
    plain = make_sp()
    toks = torch.tensor([1, 50, 60, 1, 70])
    hp = _hparams(info, vocab_size=768)
    assert build_val_bytes(hp, plain, toks, pattern).equal(position_bytes(ByteCounter(plain, 768), toks))
    # only sidecars in a folder: not taken for tokens
    only = tmp_path / "only"
    only.mkdir()
    write_shard(only / "fineweb_val_bytes_000000.bin", np.ones(5, dtype=np.uint16))
    with pytest.raises(ShardError, match="only byte sidecars"):
        load_validation_tokens(f"{only}/fineweb_val_*.bin")
