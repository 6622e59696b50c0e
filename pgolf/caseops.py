"""CaseOps (``lossless_caps_caseops_v1``): a reversible case transform applied before tokenization.

Upper-case ASCII letters become lower-case letters plus operator characters from Unicode's private
use area, so one lower-case piece serves "the", "The" and "THE". Over every maximal run of ASCII
letters (a "word"):

- a lower-case word is kept;
- an all-capitals word of two or more letters becomes ALLCAPS + the word in lower case;
- any other word with capitals: TITLE first when its first letter is a capital, then the word in
  lower case with CAPNEXT before each later letter that was a capital
  ("The" -> TITLE "the", "iPhone" -> "i" CAPNEXT "phone", "OpenAI" -> TITLE "open" CAPNEXT "a"
  CAPNEXT "i");
- an operator character that occurs in the text itself is written as ESC + that character;
- everything else (digits, punctuation, whitespace, non-ASCII letters) is kept.

``decode_caseops(encode_caseops(s)) == s`` for every string ``s`` (surrogates included). The
decoder accepts exactly the inputs the 1.0611 record's decoder accepts, with the same result
(tests/test_caseops.py checks both against it when ../shared is present); on malformed operator
sequences it raises ``CaseOpsError``.

The tokenizer keeps each operator as one reserved piece (a SentencePiece user-defined symbol), so
bytes per token can be credited to the original text: trainer/bpb.py counts an operator piece as
zero bytes unless it is escaped.
"""

from __future__ import annotations

import re

from trainer.bpb import CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC, CASEOPS_OPERATORS, CASEOPS_TITLE

TRANSFORM_NAME = "lossless_caps_caseops_v1"
# suffix of the record's file names: the transform, with its operators reserved in the tokenizer
NAME_SUFFIX = "lossless_caps_caseops_v1_reserved"
OPERATORS = CASEOPS_OPERATORS

# a maximal ASCII letter run holding a capital (runs without one are kept as they are), or an operator
_NEEDS_WORK = re.compile("(?<![A-Za-z])[a-z]*[A-Z][A-Za-z]*|[" + "".join(OPERATORS) + "]")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class CaseOpsError(ValueError):
    """A string that is not the CaseOps transform of any text."""


def encode_caseops(text: str) -> str:
    """The CaseOps transform of ``text`` (see the module docstring)."""
    return _NEEDS_WORK.sub(_encode_match, text)


def _encode_match(m: re.Match) -> str:
    word = m.group()
    if word in OPERATORS:
        return CASEOPS_ESC + word
    low = word.lower()
    if len(word) >= 2 and word.isupper():
        return CASEOPS_ALLCAPS + low
    head = CASEOPS_TITLE + low[0] if word[0] != low[0] else low[0]
    if word[1:] == low[1:]:
        return head + low[1:]
    return head + "".join(CASEOPS_CAPNEXT + lo if ch != lo else ch for ch, lo in zip(word[1:], low[1:]))


def decode_caseops(text: str) -> str:
    """The inverse of ``encode_caseops``; raises CaseOpsError on a malformed operator sequence.

    Lenient where the record's decoder is: a capital letter without an operator is kept as is.
    """
    out: list[str] = []
    escape = False  # the previous character was ESC: this one is literal
    word_op = None  # TITLE or ALLCAPS read, waiting for the first letter of a word
    capnext = False  # CAPNEXT read, waiting for a letter
    in_word = False  # inside a run of ASCII letters
    allcaps = False  # the current word is all capitals
    for i, ch in enumerate(text):
        letter = ch in _ASCII_LETTERS
        if escape:
            if word_op and not letter:
                raise CaseOpsError(f"character {i}: an escaped {ch!r} cannot start the word announced "
                                   f"by {word_op!r}")
            out.append(ch)
            escape = False
            in_word = letter
            allcaps = allcaps and letter
            continue
        if ch == CASEOPS_ESC:
            escape = True
        elif ch == CASEOPS_TITLE or ch == CASEOPS_ALLCAPS:
            if word_op or in_word or capnext:
                raise CaseOpsError(f"character {i}: word operator {ch!r} inside a word or after another "
                                   f"operator")
            word_op = ch
        elif ch == CASEOPS_CAPNEXT:
            if capnext:
                raise CaseOpsError(f"character {i}: two CAPNEXT operators in a row")
            capnext = True
        elif letter:
            if not in_word:  # first letter of a word
                upper = word_op is not None or capnext
                allcaps = word_op == CASEOPS_ALLCAPS
                word_op = None
                in_word = True
            elif word_op:
                raise CaseOpsError(f"character {i}: a word operator inside a word")
            else:
                upper = allcaps or capnext
            capnext = False
            out.append(ch.upper() if upper else ch)
        else:
            if word_op or capnext:
                raise CaseOpsError(f"character {i}: an operator not followed by an ASCII letter")
            out.append(ch)
            in_word = allcaps = False
    if escape:
        raise CaseOpsError("ESC at the end of the text")
    if word_op or capnext:
        raise CaseOpsError("an operator at the end of the text")
    return "".join(out)


def is_caseops_tokenizer(sp) -> bool:
    """Whether a SentencePiece model holds the four operators as pieces of their own."""
    from trainer.bpb import caseops_operator_ids

    return caseops_operator_ids(sp) is not None
