"""Build a dataset folder in the official layout from documents (no download).

``ROOT/datasets/fineweb10B_sp{V}/fineweb_{train,val}_NNNNNN.bin`` (the challenge's layout, so the
trainer's DATA_PATH conventions work unchanged) and ``ROOT/tokenizers/text_{V}_bpe.model`` (not the
official file name: it is not the official tokenizer), plus ``info.json`` in the dataset folder
saying where the text came from. Validation documents are every k-th document
(k = round(1 / val_fraction)), so both splits sample the whole corpus.

With ``caseops`` the documents go through the CaseOps transform (pgolf/caseops.py) first, the
tokenizer reserves its operators, the names get the record's suffix
(``fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved``, ``text_{V}_bpe_lossless_caps_caseops_v1_
reserved.model``) and each val shard gets its byte sidecar ``fineweb_val_bytes_NNNNNN.bin``.

``build_from_jsonl`` does the same from a JSON-lines file of documents (the challenge's
``docs_selected.jsonl``: one ``{"text": ...}`` per line, validation documents first) with a given
tokenizer, streaming, on several processes, for corpora that do not fit in memory.

An existing dataset or tokenizer is never replaced without ``force``; with it, the new one is built
in a temporary folder first and swapped in only when complete.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from dataclasses import asdict, dataclass, field

import numpy as np

from pgolf.caseops import NAME_SUFFIX, OPERATORS, TRANSFORM_NAME, encode_caseops, is_caseops_tokenizer
from pgolf.errors import PgolfError, os_error_message
from pgolf.fsutil import copy_file, sha256_file, write_bytes, write_text
from pgolf.shards import DEFAULT_SHARD_TOKENS, byte_sidecar, encode_documents, write_split
from pgolf.tokenizer import check_vocab_size, load_tokenizer, tokenizer_filename, train_tokenizer_bytes
from trainer.bpb import ByteCounter, val_byte_sidecar_path


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
    val_byte_shards: list[str] = field(default_factory=list)  # CaseOps sidecars
    val_bytes: int = 0  # original-text bytes of the val split (CaseOps), from the sidecars


def dataset_name(vocab_size: int, caseops: bool = False) -> str:
    return f"fineweb10B_sp{vocab_size}_{NAME_SUFFIX}" if caseops else f"fineweb10B_sp{vocab_size}"


def check_tokenizer_kind(sp, path: str, caseops: bool) -> None:
    """A CaseOps dataset needs a CaseOps tokenizer and a plain one a plain tokenizer."""
    if caseops and not is_caseops_tokenizer(sp):
        raise PgolfError(f"{path}: not a CaseOps tokenizer (it lacks the operators U+E001-U+E004 as "
                         f"pieces of their own)")
    if not caseops and is_caseops_tokenizer(sp):
        raise PgolfError(f"{path}: a CaseOps tokenizer: pass --caseops to build CaseOps data with it")


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
                  source: str = "", caseops: bool = False) -> DatasetInfo:
    """Tokenize ``documents`` and write shards + tokenizer under ``root`` (see module docstring).

    ``tokenizer``: an existing SentencePiece model to use (its vocabulary must be ``vocab_size``);
    otherwise one is trained on the training documents. ``caseops``: CaseOps data (see above).
    """
    root = os.fspath(root)
    check_vocab_size(vocab_size, "--vocab-size")
    ds_dir = os.path.join(root, "datasets", name or dataset_name(vocab_size, caseops))
    tok_name = os.path.basename(tokenizer) if tokenizer else tokenizer_filename(vocab_size, caseops)
    tok_path = os.path.join(root, "tokenizers", tok_name)
    for existing in (ds_dir, tok_path):
        if os.path.exists(existing) and not force and not _same_file(existing, tokenizer):
            raise PgolfError(f"{existing}: already exists; pass --force to replace it")

    train_docs, val_docs = split_documents(documents, val_fraction)
    sp = load_tokenizer(tokenizer, vocab_size) if tokenizer else None  # a wrong one fails before any write
    if sp is not None:
        check_tokenizer_kind(sp, tokenizer, caseops)
    if caseops:
        train_docs, val_docs = [encode_caseops(d) for d in train_docs], [encode_caseops(d) for d in val_docs]
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
            write_bytes(staged_tok, train_tokenizer_bytes(train_docs, vocab_size, tok_path,
                                                          reserved=OPERATORS if caseops else ()))
            sp = load_tokenizer(staged_tok, vocab_size)
        where = tokenizer or tok_path
        train = encode_documents(sp, train_docs, vocab_size, where)
        val = encode_documents(sp, val_docs, vocab_size, where)
        train_paths = write_split(staging, "train", train, shard_tokens)
        val_paths = write_split(staging, "val", val, shard_tokens)
        side_paths, val_bytes = [], 0
        if caseops:
            side = byte_sidecar(ByteCounter(sp, vocab_size), val)
            side_paths, val_bytes = write_split(staging, "val_bytes", side, shard_tokens), int(side.sum())
        info = {
            "source": source, "vocab_size": vocab_size, "tokenizer": tok_name,
            "text_transform": TRANSFORM_NAME if caseops else "identity",
            "val_fraction": val_fraction, "train_docs": len(train_docs), "val_docs": len(val_docs),
            "train_tokens": int(train.size), "val_tokens": int(val.size),
            **({"val_bytes": val_bytes} if caseops else {}),
            "sha256": {os.path.basename(p): sha256_file(p)
                       for p in train_paths + val_paths + side_paths + [staged_tok]},
        }
        write_text(os.path.join(staging, "info.json"), json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, ds_dir, staged_tok, tok_path)
    finally:
        _rmtree(staging)
    final_train = [os.path.join(ds_dir, os.path.basename(p)) for p in train_paths]
    final_val = [os.path.join(ds_dir, os.path.basename(p)) for p in val_paths]
    final_side = [os.path.join(ds_dir, os.path.basename(p)) for p in side_paths]
    return DatasetInfo(ds_dir, tok_path, vocab_size, len(train_docs), len(val_docs), int(train.size),
                       int(val.size), final_train, final_val, final_side, val_bytes)


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


# --- streaming, from a JSON-lines file of documents ------------------------------------------

_WORKER_SP = None


def _worker_init(model_path: str) -> None:
    global _WORKER_SP
    import sentencepiece as spm

    _WORKER_SP = spm.SentencePieceProcessor(model_file=model_path)


def _encode_batch(job: tuple[list[str], bool]) -> list:
    """BOS + tokens of each (transformed) document, as uint16 arrays (runs in a worker process)."""
    texts, caseops = job
    if caseops:
        texts = [encode_caseops(t) for t in texts]
    bos = _WORKER_SP.bos_id()
    return [np.asarray([bos, *ids], dtype=np.uint16) for ids in _WORKER_SP.encode(texts)]


def iter_jsonl_texts(path: str):
    """The ``text`` of each line of a JSON-lines file; a bad line is a one-line PgolfError."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise PgolfError(os_error_message(e, path)) from None
    with f:
        n = 0
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PgolfError(f"{path}:{n}: not JSON ({e.msg})") from None
                text = obj.get("text") if isinstance(obj, dict) else obj
                if not isinstance(text, str):
                    raise PgolfError(f'{path}:{n}: expected an object with a "text" string')
                yield text
        except UnicodeDecodeError as e:
            raise PgolfError(f"{path}:{n + 1}: not UTF-8 ({e.reason})") from None


def _batches(texts, size: int):
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ordered_map(pool, fn, jobs, ahead: int):
    """``pool.imap`` with at most ``ahead`` jobs in flight (imap reads its whole input at once,
    which for a corpus of tens of gigabytes means all of it in memory)."""
    pending: collections.deque = collections.deque()
    for job in jobs:
        pending.append(pool.apply_async(fn, (job,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def build_from_jsonl(jsonl: str, root: str | os.PathLike, tokenizer: str, *, caseops: bool, val_docs: int,
                     train_shards: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                     name: str | None = None, force: bool = False, workers: int = 1, batch_docs: int = 256,
                     source: str = "", log=print) -> DatasetInfo:
    """Shards (and CaseOps val sidecars) from ``jsonl`` with the SentencePiece model ``tokenizer``.

    The first ``val_docs`` documents are the val split (the challenge's convention), the rest the
    train split, until ``train_shards`` full train shards are written (None: every document; the
    last shard is then shorter). The tokenizer is copied to ``ROOT/tokenizers/`` under its name.
    """
    from pgolf.shards import ShardWriter
    from trainer.data import load_shard, read_shard_header

    root = os.fspath(root)
    sp = load_tokenizer(tokenizer)
    vocab_size = int(sp.get_piece_size())
    check_tokenizer_kind(sp, tokenizer, caseops)
    counter = ByteCounter(sp, vocab_size) if caseops else None
    if val_docs < 1:
        raise PgolfError(f"--val-docs must be at least 1, got {val_docs}")
    ds_dir = os.path.join(root, "datasets", name or dataset_name(vocab_size, caseops))
    tok_path = os.path.join(root, "tokenizers", os.path.basename(tokenizer))
    if os.path.exists(ds_dir) and not force:
        raise PgolfError(f"{ds_dir}: already exists; pass --force to replace it")
    staging = os.path.join(root, f".{os.path.basename(ds_dir)}.staging")
    _rmtree(staging)
    try:
        os.makedirs(staging)
    except OSError as e:
        raise PgolfError(os_error_message(e, staging)) from None
    pool = None
    try:
        val = ShardWriter(staging, "val", shard_tokens, sidecar=caseops)
        train = ShardWriter(staging, "train", shard_tokens)
        jobs = ((b, caseops) for b in _batches(iter_jsonl_texts(jsonl), batch_docs))
        if workers > 1:
            import multiprocessing as mp

            # spawn: the parent has run torch (OpenMP threads), which fork does not survive reliably
            pool = mp.get_context("spawn").Pool(workers, _worker_init, (tokenizer,))
            results = _ordered_map(pool, _encode_batch, jobs, ahead=4 * workers)
        else:
            _worker_init(tokenizer)
            results = map(_encode_batch, jobs)
        n_val = n_train = 0
        full = train_shards == 0
        for docs in results:
            k = min(len(docs), val_docs - n_val)
            if k > 0:  # validation documents: a batch's stream at once (each starts with BOS)
                stream = np.concatenate(docs[:k])
                val.add(stream, byte_sidecar(counter, stream) if caseops else None)
                n_val += k
            for toks in docs[max(k, 0):]:
                train.add(toks)
                n_train += 1
                if train_shards is not None and len(train.paths) >= train_shards:
                    full = True
                    break
            if n_train and n_train % 100_000 < len(docs):
                log(f"   {n_val + n_train:,} documents read, {len(train.paths)} train shards written")
            if full and n_val >= val_docs:
                break
        if n_val < val_docs:
            raise PgolfError(f"{jsonl}: {n_val} documents, fewer than the {val_docs} validation documents")
        val_paths = val.close()
        train_paths = train.close(partial=not full)
        side_paths = [val_byte_sidecar_path(p) for p in val_paths] if caseops else []
        val_bytes = sum(int(load_shard(p).sum(dtype=np.int64)) for p in side_paths)
        info = {
            "source": source, "vocab_size": vocab_size, "tokenizer": os.path.basename(tokenizer),
            "tokenizer_sha256": sha256_file(tokenizer),
            "text_transform": TRANSFORM_NAME if caseops else "identity",
            "val_docs": n_val, "train_docs": n_train, "val_tokens": val.tokens,
            "train_tokens": sum(read_shard_header(p) for p in train_paths),
            **({"val_bytes": val_bytes} if caseops else {}),
        }
        write_text(os.path.join(staging, "info.json"), json.dumps(info, indent=2, sort_keys=True) + "\n")
        staged_tok = os.path.join(staging, os.path.basename(tokenizer))
        copy_file(tokenizer, staged_tok)
        _swap_in(staging, ds_dir, staged_tok, tok_path)
    finally:
        if pool is not None:
            pool.terminate()
        _rmtree(staging)

    def moved(paths: list[str]) -> list[str]:
        return [os.path.join(ds_dir, os.path.basename(p)) for p in paths]

    return DatasetInfo(ds_dir, tok_path, vocab_size, n_train, n_val, info["train_tokens"], val.tokens,
                       moved(train_paths), moved(val_paths), moved(side_paths), val_bytes)
