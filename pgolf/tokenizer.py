"""Train a SentencePiece BPE tokenizer with the settings of the challenge's fineweb tokenizers.

The official ``fineweb_{1024,8192}_bpe.model`` files were trained with: BPE, character coverage
0.999, ``split_digits``, no hard vocabulary limit, ids pad=0 bos=1 eos=2 unk=3, normalizer
``nmt_nfkc`` without the dummy leading-space prefix; sp8192 also with byte fallback, which we
always use so that any UTF-8 text encodes without ``<unk>``. Training is deterministic: the same
sentences and settings give a byte-identical model.

A CaseOps tokenizer (pgolf/caseops.py) is trained the same way on transformed text, with the four
operator characters reserved as user-defined symbols (ids 4-7, right after the special pieces, as
in the record's ``fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model``): each is always a
piece of its own, never merged with letters.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence

from pgolf.caseops import NAME_SUFFIX
from pgolf.errors import PgolfError
from pgolf.fsutil import write_bytes

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_UINT16_VOCAB = 65536  # shards store token ids as uint16

FINEWEB_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    hard_vocab_limit=False,
    pad_id=PAD_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
)


def tokenizer_filename(vocab_size: int, caseops: bool = False) -> str:
    """``text_{V}_bpe.model``: named apart from the official ``fineweb_{V}_bpe.model`` on purpose, so
    that no tool (or reviewer) takes a tokenizer trained on other text for the official one.
    CaseOps: ``text_{V}_bpe_lossless_caps_caseops_v1_reserved.model``."""
    return f"text_{vocab_size}_bpe_{NAME_SUFFIX}.model" if caseops else f"text_{vocab_size}_bpe.model"


def training_sentences(documents: Iterable[str]) -> Iterator[str]:
    """SentencePiece trains on lines; its default 4192-byte limit would silently drop whole documents."""
    for doc in documents:
        for line in doc.split("\n"):
            line = line.strip()
            if line:
                yield line


def train_tokenizer_bytes(documents: Iterable[str], vocab_size: int, where: str = "<tokenizer>",
                          input_sentence_size: int = 0, num_threads: int | None = None,
                          reserved: Sequence[str] = ()) -> bytes:
    """Train on ``documents``; return the serialized model. ``reserved``: user-defined symbols
    (the CaseOps operators for a CaseOps tokenizer; the documents must then be transformed already).

    Raises PgolfError (naming ``where``) when the vocabulary cannot be stored as uint16 or the text
    is too small to reach exactly ``vocab_size`` pieces.
    """
    import sentencepiece as spm

    check_vocab_size(vocab_size, where)
    sentences = list(training_sentences(documents))
    if not sentences:
        raise PgolfError(f"{where}: no text to train the tokenizer on")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=input_sentence_size > 0,
            num_threads=num_threads or min(8, os.cpu_count() or 1), minloglevel=2,
            **({"user_defined_symbols": list(reserved)} if reserved else {}), **FINEWEB_SETTINGS)
    except RuntimeError as e:
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m:
            raise PgolfError(f"{where}: vocab size {vocab_size} is too small: the text needs {m.group(2)} "
                             f"pieces for its characters, bytes and special tokens; use a larger --vocab-size"
                             ) from None
        raise PgolfError(f"{where}: sentencepiece training failed: {_one_line(e)}") from None
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    if sp.get_piece_size() != vocab_size:
        raise PgolfError(f"{where}: the text yields only {sp.get_piece_size()} pieces, fewer than "
                         f"vocab size {vocab_size}; use more text or a smaller --vocab-size")
    return buf.getvalue()


def train_tokenizer(documents: Iterable[str], vocab_size: int, model_path: str | os.PathLike,
                    input_sentence_size: int = 0, num_threads: int | None = None,
                    reserved: Sequence[str] = ()) -> str:
    """Train on ``documents`` and write the model atomically to ``model_path``; return the path."""
    model_path = os.fspath(model_path)
    data = train_tokenizer_bytes(documents, vocab_size, model_path, input_sentence_size, num_threads,
                                 reserved)
    write_bytes(model_path, data)
    return model_path


def load_tokenizer(model_path: str | os.PathLike, vocab_size: int | None = None):
    """Load a SentencePiece model; when ``vocab_size`` is given, it must match the model exactly."""
    import sentencepiece as spm

    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise PgolfError(f"{model_path}: tokenizer model not found")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(model_path)
    except (OSError, RuntimeError) as e:
        raise PgolfError(f"{model_path}: not a SentencePiece model ({_one_line(e)})") from None
    n = sp.get_piece_size()
    check_vocab_size(n, model_path)
    if vocab_size is not None and n != vocab_size:
        raise PgolfError(f"{model_path}: tokenizer has {n} pieces but vocab size {vocab_size} was asked for")
    if sp.bos_id() < 0:
        raise PgolfError(f"{model_path}: tokenizer has no BOS piece (documents are separated by BOS)")
    return sp


def check_vocab_size(vocab_size: int, where: str) -> None:
    if not 1 <= vocab_size <= MAX_UINT16_VOCAB:
        raise PgolfError(f"{where}: vocab size {vocab_size} does not fit the shard format "
                         f"(uint16 token ids: 1..{MAX_UINT16_VOCAB})")


def _one_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__
