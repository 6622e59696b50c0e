"""Shared pieces for the CaseOps tests: CaseOps tokenizers trained on real text (the project's
settings, and a lossless variant whose normalizer changes nothing), documents with the awkward
cases (literal operator characters, runs of ESC, capitals of every kind), and ../shared lookup."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
from pathlib import Path

import pytest
import sentencepiece as spm

from pgolf.caseops import OPERATORS, encode_caseops
from pgolf.corpus import pydoc_topic_documents
from pgolf.tokenizer import FINEWEB_SETTINGS, train_tokenizer_bytes, training_sentences

REPO = Path(__file__).resolve().parents[1]
CASEOPS_VOCAB = 768
TITLE, ALLCAPS, CAPNEXT, ESC = OPERATORS

EDGE_DOCS = [
    "The NASA Launch",
    "iPhone OpenAI McDonald's XMLHttpRequest ABCdef aBC A I a",
    f"literal operators {TITLE} and {ALLCAPS}{CAPNEXT} in the Text, {ESC} alone, {ESC}{ESC}{ESC} three",
    f"{ESC}{TITLE}starts with literals and ends with one {ESC}",
    "Ünïcödé Wörds stay: Éclair ÀBC, straße STRASSE, Ωmega, 中文 Text 😀 Emoji",
    "   Leading spaces,\tTabs\n\nand   Newlines   ",
    "ﬁnal LIGATURE, FULL-WIDTH ＡＢＣ１２３, ™ and Ⅻ: NFKC Changes These",
    "digits 1234567890 and 3.14159 MiXeD123CaSe",
    "x",
    "Q",
]


def shared_dir() -> Path:
    """../shared beside the checkout (PGOLF_SHARED overrides); the test is skipped without it."""
    for cand in (os.environ.get("PGOLF_SHARED"), REPO.parent / "shared"):
        if cand and (Path(cand) / "reference" / "sota_1.0611" / "lossless_caps.py").is_file():
            return Path(cand)
    pytest.skip("../shared (reference/sota_1.0611) is not present: no parity check against the record")


@functools.cache
def reference_caps():
    """The 1.0611 record's lossless_caps.py, imported from ../shared (an oracle, not project code)."""
    path = shared_dir() / "reference" / "sota_1.0611" / "lossless_caps.py"
    spec = importlib.util.spec_from_file_location("reference_lossless_caps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def record_tokenizer_path() -> Path:
    return shared_dir() / "reference" / "sota_1.0611" / "tokenizers" / \
        "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


@functools.cache
def topic_documents() -> tuple[str, ...]:
    return tuple(pydoc_topic_documents())


@functools.cache
def caseops_model_proto() -> bytes:
    """A CaseOps tokenizer with the project's settings, trained on the transformed manual topics."""
    docs = [encode_caseops(d) for d in topic_documents()]
    return train_tokenizer_bytes(docs, CASEOPS_VOCAB, num_threads=1, reserved=OPERATORS)


@functools.cache
def lossless_caseops_model_proto() -> bytes:
    """The same with an identity normalizer that keeps every space: decode(encode(t)) == t."""
    docs = [encode_caseops(d) for d in topic_documents()]
    buf = io.BytesIO()
    settings = {**FINEWEB_SETTINGS, "normalization_rule_name": "identity", "remove_extra_whitespaces": False}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(training_sentences(docs))), model_writer=buf,
                                   vocab_size=CASEOPS_VOCAB, minloglevel=2, num_threads=1,
                                   user_defined_symbols=list(OPERATORS), **settings)
    return buf.getvalue()


def caseops_sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=caseops_model_proto())


def lossless_caseops_sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=lossless_caseops_model_proto())


def caseops_stream(sp, docs) -> list[int]:
    """Validation layout: each document transformed, encoded, preceded by BOS."""
    out: list[int] = []
    for d in docs:
        out.append(sp.bos_id())
        out.extend(sp.encode(encode_caseops(d)))
    return out
