"""Build a dataset folder in the official layout from documents (no download).

``ROOT/datasets/fineweb10B_sp{V}/fineweb_{train,val}_NNNNNN.bin`` (the challenge's layout, so the
trainer's DATA_PATH conventions work unchanged) and ``ROOT/tokenizers/text_{V}_bpe.model`` (not the
official file name: it is not the official tokenizer), plus ``info.json`` in the dataset folder
saying where the text came from. Validation documents are every k-th document
(k = round(1 / val_fraction)), so both splits sample the whole corpus.

An existing dataset or tokenizer is never replaced without ``force``; with it, the new one is built
in a temporary folder first and swapped in only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass

from pgolf.errors import PgolfError, os_error_message
from pgolf.fsutil import copy_file, sha256_file, write_bytes, write_text
from pgolf.shards import DEFAULT_SHARD_TOKENS, encode_documents, write_split
from pgolf.tokenizer import check_vocab_size, load_tokenizer, tokenizer_filename, train_tokenizer_bytes


@dataclass
class DatasetInfo:
    dataset_dir: str
    tokenizer_path: str
    vocab_size: int
    train_docs: int
    val_docs: int
    train_tokens: int
    val_tokens: int
    train_shards: list[str]
    val_shards: list[str]


def dataset_name(vocab_size: int) -> str:
    return f"fineweb10B_sp{vocab_size}"


def split_documents(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val): every k-th document (k = round(1/val_fraction), starting with the first) is val."""
    if not 0 < val_fraction < 1:
        raise PgolfError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if len(documents) < 2:
        raise PgolfError(f"need at least 2 documents for a train and a val split, got {len(documents)}")
    k = max(2, round(1 / val_fraction))
    val = [d for i, d in enumerate(documents) if i % k == 0]
    train = [d for i, d in enumerate(documents) if i % k != 0]
    return train, val


def build_dataset(documents: list[str], root: str | os.PathLike, vocab_size: int, *,
                  val_fraction: float = 0.1, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                  tokenizer: str | None = None, name: str | None = None, force: bool = False,
                  source: str = "") -> DatasetInfo:
    """Tokenize ``documents`` and write shards + tokenizer under ``root`` (see module docstring).

    ``tokenizer``: an existing SentencePiece model to use (its vocabulary must be ``vocab_size``);
    otherwise one is trained on the training documents.
    """
    root = os.fspath(root)
    check_vocab_size(vocab_size, "--vocab-size")
    ds_dir = os.path.join(root, "datasets", name or dataset_name(vocab_size))
    tok_name = os.path.basename(tokenizer) if tokenizer else tokenizer_filename(vocab_size)
    tok_path = os.path.join(root, "tokenizers", tok_name)
    for existing in (ds_dir, tok_path):
        if os.path.exists(existing) and not force and not _same_file(existing, tokenizer):
            raise PgolfError(f"{existing}: already exists; pass --force to replace it")

    train_docs, val_docs = split_documents(documents, val_fraction)
    sp = load_tokenizer(tokenizer, vocab_size) if tokenizer else None  # a wrong one fails before any write
    staging = os.path.join(root, f".{os.path.basename(ds_dir)}.staging")
    _rmtree(staging)
    try:
        os.makedirs(staging)
    except OSError as e:
        raise PgolfError(os_error_message(e, staging)) from None
    try:
        staged_tok = os.path.join(staging, tok_name)
        if tokenizer:
            copy_file(tokenizer, staged_tok)
        else:
            write_bytes(staged_tok, train_tokenizer_bytes(train_docs, vocab_size, tok_path))
            sp = load_tokenizer(staged_tok, vocab_size)
        where = tokenizer or tok_path
        train = encode_documents(sp, train_docs, vocab_size, where)
        val = encode_documents(sp, val_docs, vocab_size, where)
        train_paths = write_split(staging, "train", train, shard_tokens)
        val_paths = write_split(staging, "val", val, shard_tokens)
        info = {
            "source": source, "vocab_size": vocab_size, "tokenizer": tok_name,
            "val_fraction": val_fraction, "train_docs": len(train_docs), "val_docs": len(val_docs),
            "train_tokens": int(train.size), "val_tokens": int(val.size),
            "sha256": {os.path.basename(p): sha256_file(p) for p in train_paths + val_paths + [staged_tok]},
        }
        write_text(os.path.join(staging, "info.json"), json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, ds_dir, staged_tok, tok_path)
    finally:
        _rmtree(staging)
    final_train = [os.path.join(ds_dir, os.path.basename(p)) for p in train_paths]
    final_val = [os.path.join(ds_dir, os.path.basename(p)) for p in val_paths]
    return DatasetInfo(ds_dir, tok_path, vocab_size, len(train_docs), len(val_docs), int(train.size),
                       int(val.size), final_train, final_val)


def _swap_in(staging: str, ds_dir: str, staged_tok: str, tok_path: str) -> None:
    try:
        os.makedirs(os.path.dirname(tok_path), exist_ok=True)
        os.makedirs(os.path.dirname(ds_dir), exist_ok=True)
        os.replace(staged_tok, tok_path)
        old = None
        if os.path.exists(ds_dir):
            old = ds_dir + ".old"
            _rmtree(old)
            os.rename(ds_dir, old)
        os.rename(staging, ds_dir)
        if old:
            _rmtree(old)
    except OSError as e:
        raise PgolfError(os_error_message(e)) from None


def _same_file(a: str, b: str | None) -> bool:
    return bool(b) and os.path.exists(b) and os.path.samefile(a, b)


def _rmtree(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def info_dict(info: DatasetInfo) -> dict:
    return asdict(info)
