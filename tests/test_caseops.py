"""The CaseOps transform: exact round trips on every code point, every byte value, every Unicode
category and real text; its documented outputs; malformed input; parity with the 1.0611 record's
transform (when ../shared is present)."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from conftest_caseops import EDGE_DOCS, reference_caps, topic_documents
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.caseops import OPERATORS, CaseOpsError, decode_caseops, encode_caseops
from pgolf.corpus import stdlib_docstring_documents

TITLE, ALLCAPS, CAPNEXT, ESC = OPERATORS
# characters where the transform's decisions happen: letters of both cases, operators, boundaries
_EDGE = list("aZbYzAmM") + list(OPERATORS) + [" ", "\n", "1", "_", "'", "é", "É", "ß", "\ue000", "\ue005",
                                              "😀", "\ud800", "\x00", "\u2581"]
edgy_text = st.text(st.sampled_from(_EDGE), max_size=40)
any_text = st.text(st.characters(), max_size=60)  # every code point, surrogates included
mixed_text = st.lists(st.one_of(edgy_text, any_text), max_size=4).map("".join)


def roundtrip(s: str) -> None:
    enc = encode_caseops(s)
    assert decode_caseops(enc) == s
    assert not any("A" <= c <= "Z" for c in enc)  # no capital letter survives the transform


@pytest.mark.parametrize("text,encoded", [
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
    ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i"),
    ("A I a", f"{TITLE}a {TITLE}i a"),  # one capital letter is a title, not ALLCAPS
    ("ABc aBC", f"{TITLE}a{CAPNEXT}bc a{CAPNEXT}b{CAPNEXT}c"),
    ("HTTP2Server", f"{ALLCAPS}http2{TITLE}server"),  # digits end an ASCII word
    ("Éclair ÀBC straße", f"Éclair À{ALLCAPS}bc straße"),  # non-ASCII letters are kept as they are
    (f"x{TITLE}y {ESC}", f"x{ESC}{TITLE}y {ESC}{ESC}"),  # operators in the text are escaped
    ("", ""),
])
def test_documented_outputs(text, encoded):
    assert encode_caseops(text) == encoded
    assert decode_caseops(encoded) == text


def test_every_code_point_and_byte_value_round_trip():
    every = "".join(chr(c) for c in range(sys.maxunicode + 1))  # surrogates and private use included
    roundtrip(every)
    roundtrip(every[::-1])
    raw = bytes(range(256))
    for text in (raw.decode("latin-1"), raw.decode("utf-8", "surrogateescape"),
                 raw.decode("cp1252", "replace")):
        roundtrip(text)
        roundtrip(text.upper())


def test_every_unicode_category_edge_round_trips():
    """First and last code point of each general category, beside capitals, words and operators."""
    first, last = {}, {}
    for c in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(c))
        first.setdefault(cat, c)
        last[cat] = c
    assert len(first) >= 29
    for cat in first:
        for c in (first[cat], last[cat]):
            ch = chr(c)
            for s in (ch, f"A{ch}B", f"ab{ch}CD", f"{ch}Word{ch}", f"{TITLE}{ch}{ESC}", f"X{ch}{CAPNEXT}y",
                      ch * 3):
                roundtrip(s)


@settings(max_examples=400, deadline=None)
@given(mixed_text)
def test_hypothesis_round_trip(s):
    roundtrip(s)


@settings(max_examples=200, deadline=None)
@given(mixed_text)
def test_transform_lowercases_ascii_and_keeps_the_rest(s):
    enc = encode_caseops(s)
    assert enc.count(ESC) >= s.count(ESC)  # every literal operator is escaped
    letters = [c for c in enc if c.isascii() and c.isalpha()]
    assert "".join(letters) == "".join(c for c in s if c.isascii() and c.isalpha()).lower()
    if not any(c in OPERATORS or "A" <= c <= "Z" for c in s):
        assert enc == s  # text without capitals or operators is left alone


def test_real_text_round_trips():
    docs = list(topic_documents()) + stdlib_docstring_documents()[:150] + EDGE_DOCS
    text = "\n\n".join(docs)
    assert len(text) > 1_000_000
    enc = encode_caseops(text)
    assert decode_caseops(enc) == text
    # the transform does work on real English: capitals are common, and it removes every one
    assert sum(enc.count(op) for op in (TITLE, ALLCAPS, CAPNEXT)) > 20_000
    for d in docs:
        assert decode_caseops(encode_caseops(d)) == d


@pytest.mark.parametrize("bad", [
    TITLE, ESC, CAPNEXT, f"a{ESC}", f"{TITLE} x", f"{TITLE}1", f"{CAPNEXT}{CAPNEXT}a", f"a{TITLE}b",
    f"{TITLE}{ALLCAPS}a", f"{CAPNEXT}{TITLE}a", f"{ALLCAPS}{ESC}{TITLE}", f"x{CAPNEXT}", f"{TITLE}{ESC}ab",
])
def test_malformed_operator_sequences_raise(bad):
    with pytest.raises(CaseOpsError):
        decode_caseops(bad)


def test_decoder_is_lenient_where_the_text_could_not_come_from_the_transform():
    # capitals without operators (e.g. NFKC's "TM" for "™" inside the tokenizer) are kept
    assert decode_caseops("TM and Ab") == "TM and Ab"
    assert decode_caseops(f"{TITLE}{CAPNEXT}ab") == "Ab"
    assert decode_caseops(f"{ESC}a{CAPNEXT}b") == "aB"


# --- parity with the 1.0611 record's lossless_caps.py (read from ../shared) -----------------------

def test_parity_with_the_record_on_real_text():
    ref = reference_caps()
    docs = list(topic_documents()) + stdlib_docstring_documents()[:150] + EDGE_DOCS
    for d in docs:
        enc = encode_caseops(d)
        assert enc == ref.encode_lossless_caps_v2(d)
        assert ref.get_text_transform("lossless_caps_caseops_v1")(d) == enc
        assert ref.decode_lossless_caps_v2(enc) == d
    assert list(OPERATORS) == ref.get_text_transform_control_symbols("lossless_caps_caseops_v1")


def _ref_or_error(fn, s):
    try:
        return fn(s)
    except ValueError:
        return "<error>"


@settings(max_examples=1500, deadline=None)
@given(st.one_of(edgy_text, mixed_text))
def test_parity_with_the_record_on_any_string(s):
    """Same transform everywhere, and the decoders accept and reject the same strings alike."""
    ref = reference_caps()
    assert encode_caseops(s) == ref.encode_lossless_caps_v2(s)
    assert _ref_or_error(decode_caseops, s) == _ref_or_error(ref.decode_lossless_caps_v2, s)
